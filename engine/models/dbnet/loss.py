"""DBNet loss: L = alpha * BCE_ohem(P) + beta * L1_masked(T) + gamma * Dice(B).

Weights: the paper writes L = Ls + α·Lb + β·Lt with α = 1, β = 10, but the authors' released
code (MhLiao/DB ``L1BalanceCELoss``) and PaddleOCR both weight the probability-map BCE by 5, the
threshold L1 by 10 and the binary-map dice by 1 — that is the configuration the published
numbers were trained with, so ``alpha=5`` is the default here (``alpha=1`` gives the paper's
formula).

Hard-negative mining keeps all positives and the ``ohem_ratio``·#positives hardest negatives.
An image with no text has no positives, which would make the BCE term zero and never punish
false positives on empty images; ``min_negatives`` keeps that many hardest negatives anyway,
so the loss stays finite *and* informative on empty images.  The loss is computed in fp32 with
autocast off (``binary_cross_entropy`` is not autocast-safe).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _flat(t: torch.Tensor) -> torch.Tensor:
    """N×1×H×W or N×H×W -> N×H×W float32."""
    if t.dim() == 4:
        t = t[:, 0]
    return t.float()


def balanced_bce(
    pred: torch.Tensor,
    gt: torch.Tensor,
    mask: torch.Tensor,
    ohem_ratio: float = 3.0,
    min_negatives: int = 100,
    eps: float = 1e-6,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """OHEM-balanced BCE; ``weight`` (per pixel, e.g. labels.py's gap weights) scales each
    pixel's loss before the hardest negatives are picked, so weighted pixels are mined first."""
    positive = gt * mask
    negative = (1.0 - gt) * mask
    pos_count = int(positive.sum().item())
    neg_total = int(negative.sum().item())
    neg_count = min(neg_total, max(int(pos_count * ohem_ratio), min_negatives))
    loss = F.binary_cross_entropy(pred.clamp(eps, 1.0 - eps), gt, reduction="none")
    if weight is not None:
        loss = loss * weight
    pos_loss = (loss * positive).sum()
    if neg_count > 0:
        neg_loss = torch.topk((loss * negative).reshape(-1), neg_count).values.sum()
    else:
        neg_loss = loss.sum() * 0.0
    return (pos_loss + neg_loss) / (pos_count + neg_count + eps)


def masked_l1(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6):
    return ((pred - gt).abs() * mask).sum() / (mask.sum() + eps)


def dice_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6):
    inter = (pred * gt * mask).sum()
    union = (pred * mask).sum() + (gt * mask).sum() + eps
    return 1.0 - 2.0 * inter / union


class DBLoss(nn.Module):
    """``DBLoss()(pred, batch) -> (total, {"prob", "thresh", "binary"})``.

    pred: the train-mode dict of DBNet; batch: ``shrink_map``, ``shrink_mask``, ``thresh_map``,
    ``thresh_mask`` (N×H×W or N×1×H×W), and ``shrink_weight`` when the labels carry one.  If
    ``pred`` is a bare tensor (eval-mode output, e.g. a validation loss) only the probability
    term is computed.
    """

    def __init__(
        self,
        alpha: float = 5.0,
        beta: float = 10.0,
        gamma: float = 1.0,
        ohem_ratio: float = 3.0,
        min_negatives: int = 100,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.ohem_ratio, self.min_negatives, self.eps = ohem_ratio, min_negatives, eps

    def forward(
        self, pred: dict[str, torch.Tensor] | torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if isinstance(pred, torch.Tensor):
            pred = {"prob": pred}
        device_type = pred["prob"].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            gt, mask = _flat(batch["shrink_map"]), _flat(batch["shrink_mask"])
            prob = _flat(pred["prob"])
            parts = {
                "prob": balanced_bce(prob, gt, mask, self.ohem_ratio, self.min_negatives, self.eps,
                                     _flat(batch["shrink_weight"]) if "shrink_weight" in batch else None)
            }
            total = self.alpha * parts["prob"]
            if "thresh" in pred:
                parts["thresh"] = masked_l1(
                    _flat(pred["thresh"]),
                    _flat(batch["thresh_map"]),
                    _flat(batch["thresh_mask"]),
                    self.eps,
                )
                total = total + self.beta * parts["thresh"]
            if "binary" in pred:
                parts["binary"] = dice_loss(_flat(pred["binary"]), gt, mask, self.eps)
                total = total + self.gamma * parts["binary"]
        return total, {k: v.detach() for k, v in parts.items()}
