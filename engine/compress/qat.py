"""Quantization-aware fine-tuning of the weights (the `qat` stage, engine/stages/qat.py).

Why: static int8 of the PP-OCRv6 recognizer loses far more than the 0.5-point budget, and the
loss is in the weights. Measured on the flagship's fine-tuned recognizer (418 val crops, line
accuracy 0.880 in fp32): its conv and linear weights rounded per channel to onnxruntime's grid
alone give 0.856 with 8-bit weights and 0.849 with the 7-bit weights `reduce_range` uses, while
the activations quantized on top cost little more (onnxruntime static QDQ of every op: 0.816 of
0.897 through the runtime). Keeping the sensitive layers in float does not fit the budget
either (the guard's 8 exclusions still left an int8 recognizer at 0.48x the fp32 size).

So the recognizer is fine-tuned a little longer with its weights fake-quantized exactly as
onnxruntime will quantize them - per output channel, symmetric, scale = max|w| / qmax with
qmax = 64 under reduce_range and 127 otherwise, rounded to nearest - through a straight-through
estimator (PaddleSlim's and TAO's answer when calibrated PTQ cannot hold the bar). The stage
hands on the weights snapped to that grid, so quantizing them again in `build` is exact: what
int8 still loses is the activations' rounding. The fp32 candidate is the same snapped model, so
fp32 and int8 are held to each other on the same weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

QUANTIZED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


class WeightFakeQuant(nn.Module):
    """Per-output-channel symmetric rounding with a straight-through gradient."""

    def __init__(self, qmax: int):
        super().__init__()
        self.qmax = int(qmax)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (snap(w.detach(), self.qmax) - w).detach()


def snap(w: torch.Tensor, qmax: int) -> torch.Tensor:
    """``w`` rounded to the int8 grid onnxruntime gives it (per channel along dim 0)."""
    dims = tuple(range(1, w.dim()))
    scale = w.abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) / qmax
    return (w / scale).round().clamp(-qmax, qmax) * scale


def add_weight_fake_quant(model: nn.Module, qmax: int) -> int:
    """Fake-quantize the weight of every conv and linear layer of ``model``; returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, QUANTIZED_LAYERS) and not parametrize.is_parametrized(module, "weight"):
            parametrize.register_parametrization(module, "weight", WeightFakeQuant(qmax))
            count += 1
    return count


def remove_weight_fake_quant(model: nn.Module) -> None:
    """Drop the parametrizations, leaving each weight snapped to its grid."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
