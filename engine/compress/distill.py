"""Knowledge distillation for the fine-tune after pruning: the unpruned model teaches its pruned copy.

Why: the pruned network starts from the parent's surviving channels, and the labels alone pull
it back only slowly.  The parent's own outputs are a denser target than the labels - every
pixel of the probability map, every time step of the CTC distribution, including what the
parent is unsure about - so the student can be trained on ``task loss + weight x
distance(student, teacher)`` on the same augmented batch (Hinton et al. 2015).

Measured on the flagship's detector (40 val images; one fine-tune differs from the next by
~1 point of hmean with another seed): 30 % L1, 4 epochs at lr 1e-3: hmean 0.904 without,
0.908 at weight 1, 0.886 at weight 10.  30 % Taylor, 6 epochs (torch-pruning's rounding, see
prune.py): 0.912 without, 0.924 and 0.903 at weight 1 with two seeds; with kept counts rounded
up, on 200 never-seen plates: -1.2 points against the unpruned model, -1.4 without (within the
seed spread).  Each epoch takes ~1.6x as long (the teacher's forward pass), so it is off by
default (`optimize.prune.distill: 0`) and in the flagship recipe.

``Distilled`` wraps a training task (the `engine.training.loop.fit` contract): it forwards every
attribute to the task and changes only ``compute_loss``.  The teacher is frozen and kept in eval
mode (running BatchNorm statistics), as it will be at inference.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Distilled", "distill_distance"]


def distill_distance(student: Any, teacher: torch.Tensor) -> torch.Tensor:
    """Distance between a student's training output and the teacher's inference output.

    * detector: student ``{"prob": N×1×H×W, ...}`` (train mode) vs the teacher's probability map
      -> binary cross-entropy with the teacher's probabilities as soft targets;
    * recognizer: student logits N×T×C vs teacher logits -> KL(teacher || student) per time step.
    Computed in float32 outside autocast (BCE on probabilities is not autocast-safe).
    """
    with torch.autocast(device_type=teacher.device.type, enabled=False):
        if isinstance(student, dict):
            prob = student["prob"].float().clamp(1e-6, 1 - 1e-6)
            return F.binary_cross_entropy(prob, teacher.float())
        s = F.log_softmax(student.float(), dim=-1)
        t = F.log_softmax(teacher.float(), dim=-1)
        return F.kl_div(s, t, log_target=True, reduction="none").sum(-1).mean()


class Distilled:
    """``task`` with ``loss = task loss + weight * distill_distance(student, teacher)``."""

    def __init__(self, task: Any, teacher: nn.Module, weight: float):
        if weight < 0:
            raise ValueError(f"distillation weight must be >= 0, got {weight}")
        self.__dict__["task"] = task
        self.__dict__["weight"] = float(weight)
        self.__dict__["teacher"] = teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

    def __getattr__(self, name: str) -> Any:  # only reached for names not set on the wrapper
        return getattr(self.__dict__["task"], name)

    def __setattr__(self, name: str, value: Any) -> None:  # fit() sets task.model
        setattr(self.task, name, value)

    def compute_loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        captured: dict[str, Any] = {}
        hook = model.register_forward_hook(lambda _m, _i, out: captured.setdefault("out", out))
        try:
            loss, parts = self.task.compute_loss(model, batch)
        finally:
            hook.remove()
        image = batch["image"]
        self.teacher.to(image.device)
        with torch.no_grad():
            target = self.teacher(image)
        distance = distill_distance(captured["out"], target)
        return loss + self.weight * distance, {**(parts or {}), "loss_distill": distance.detach()}
