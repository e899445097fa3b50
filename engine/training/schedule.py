"""Optimizers and per-iteration learning-rate schedules whose position survives a resume.

The schedule is a small explicit object rather than a ``torch.optim.lr_scheduler.LambdaLR``
because its whole state (kind, base lr, min lr, warm-up, total steps, current step) must go into a
``weights_only`` checkpoint and come back unchanged. On resume the checkpointed schedule wins over
the recipe: the PaddleOCR#2827 class of bug — a resumed run whose LR jumps back to the configured
value — cannot happen, because the configured value is simply not consulted again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant", "step")


class ScheduleError(ValueError):
    """An unknown optimizer / schedule name or an impossible setting."""


def build_optimizer(
    name: str,
    params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
    lr: float = 2e-4,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (with Nesterov momentum) by name."""
    key = name.lower()
    if key == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if key == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay or 1e-2)
    if key == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0
        )
    raise ScheduleError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


@dataclass
class LRSchedule:
    """Learning rate as a function of the global iteration.

    * warm-up: linear from ``lr * warmup_start`` to ``lr`` over ``warmup_iters`` iterations
      (applies to every kind);
    * ``cosine``: from ``lr`` down to ``min_lr`` at ``total_iters``;
    * ``constant``: ``lr``;
    * ``step``: multiplied by ``gamma`` every ``step_iters`` iterations after warm-up.
    """

    kind: str = "cosine"
    lr: float = 2e-4
    min_lr: float = 1e-6
    total_iters: int = 1
    warmup_iters: int = 0
    warmup_start: float = 0.01
    step_iters: int = 0
    gamma: float = 0.1
    step: int = 0  # iterations already taken

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ScheduleError(f"unknown schedule {self.kind!r}; known: {', '.join(SCHEDULES)}")
        if self.lr <= 0:
            raise ScheduleError(f"lr must be positive, got {self.lr}")
        self.total_iters = max(1, int(self.total_iters))
        self.warmup_iters = max(0, min(int(self.warmup_iters), self.total_iters))

    def lr_at(self, step: int) -> float:
        if self.warmup_iters > 0 and step < self.warmup_iters:
            frac = step / self.warmup_iters
            return self.lr * (self.warmup_start + (1.0 - self.warmup_start) * frac)
        if self.kind == "constant":
            return self.lr
        after = step - self.warmup_iters
        if self.kind == "step":
            if self.step_iters <= 0:
                return self.lr
            return self.lr * (self.gamma ** (after // self.step_iters))
        span = max(1, self.total_iters - self.warmup_iters)
        progress = min(1.0, after / span)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    @property
    def current_lr(self) -> float:
        return self.lr_at(self.step)

    def apply(self, optimizer: torch.optim.Optimizer) -> float:
        """Set the lr for the coming iteration on every param group (scaled by ``lr_scale``)."""
        lr = self.current_lr
        for group in optimizer.param_groups:
            group["lr"] = lr * float(group.get("lr_scale", 1.0))
        return lr

    def advance(self) -> None:
        self.step += 1

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> LRSchedule:
        return cls(**{k: state[k] for k in cls.__dataclass_fields__ if k in state})


def make_schedule(
    kind: str,
    lr: float,
    epochs: int,
    iters_per_epoch: int,
    *,
    min_lr: float = 1e-6,
    warmup_epochs: float = 0.0,
    warmup_iters: int | None = None,
    step_epochs: int = 0,
    gamma: float = 0.1,
) -> LRSchedule:
    """Build a schedule from epoch-level settings (what a recipe speaks) in iterations."""
    ipe = max(1, int(iters_per_epoch))
    warm = int(warmup_iters) if warmup_iters is not None else round(warmup_epochs * ipe)
    return LRSchedule(
        kind=kind,
        lr=float(lr),
        min_lr=float(min_lr),
        total_iters=max(1, int(epochs) * ipe),
        warmup_iters=warm,
        step_iters=int(step_epochs) * ipe,
        gamma=float(gamma),
    )
