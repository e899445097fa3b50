"""Quantization-aware fine-tuning (the `qat` stage, engine/stages/qat.py).

Why: static int8 of the PP-OCRv6 recognizer loses far more than the 0.5-point budget. Measured
on the flagship's fine-tuned recognizer (418 val crops, line accuracy 0.880 in fp32): its conv
and linear weights rounded per channel to onnxruntime's grid alone give 0.856 with 8-bit weights
and 0.849 with the 7-bit weights `reduce_range` uses; onnxruntime's static QDQ of the whole net
gave 0.816 of 0.897 through the runtime. Keeping sensitive layers in float does not fit the
budget either (eight of them still left an int8 recognizer at 0.48x the fp32 size), and neither
does quantizing only the backbone or only the convolutions (0.84-0.85 of 0.87).

So the recognizer is fine-tuned a little longer as onnxruntime will run it:
- weights fake-quantized per output channel, symmetric, scale = max|w| / qmax with qmax = 64
  under reduce_range and 127 otherwise, rounded to nearest;
- the input of every conv and linear layer fake-quantized per tensor to uint8 over the running
  [min, max] it has seen (onnxruntime's min-max calibration, zero always representable),
both through straight-through gradients (PaddleSlim's and TAO's answer when calibrated PTQ
cannot hold the bar). Measured: 60 steps at lr 5e-5 took the int8 recognizer from -3.3 points
of line accuracy to -0.5 (percentile 99.99 calibration; min-max calibration -2.4).

The build then quantizes only what was simulated here: `optimize.quantize.operators: auto`
gives a QAT model onnxruntime's int8 on its conv and linear (MatMul/Gemm) nodes alone
(engine/compress/quantize.py OPERATOR_SETS). Rounding the residual adds, SE gates and GELU
products too, which this fine-tune never saw, cost 1.05 points against compute's 0.58 on
5524 fresh crops.

The stage hands on the weights snapped to their grid, so quantizing them again in `build` is
exact; the activation ranges are calibrated there as usual. The fp32 candidate is the same
snapped model, so fp32 and int8 are held to each other on the same weights.
"""

from __future__ import annotations

from typing import Any

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


class ActivationFakeQuant:
    """Forward pre-hook: the layer's input rounded to uint8 over its running [min, max]."""

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0]
        lo, hi = module.get_buffer("act_min"), module.get_buffer("act_max")
        if module.training:
            with torch.no_grad():
                lo.copy_(torch.minimum(lo, x.detach().min().clamp(max=0)))
                hi.copy_(torch.maximum(hi, x.detach().max().clamp(min=0)))
        if not bool(torch.isfinite(lo)):  # nothing seen yet (evaluated before training)
            return None
        scale = ((hi - lo) / 255.0).clamp_min(1e-8)
        zero = torch.round(-lo / scale).clamp(0, 255)
        q = (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale
        return (x + (q - x).detach(), *args[1:])


_ACT_BUFFERS = ("act_min", "act_max")


def add_activation_fake_quant(model: nn.Module) -> list[Any]:
    """Fake-quantize the input of every conv and linear layer; returns the hook handles."""
    handles = []
    for module in model.modules():
        if isinstance(module, QUANTIZED_LAYERS):
            module.register_buffer("act_min", torch.tensor(float("inf")))
            module.register_buffer("act_max", torch.tensor(float("-inf")))
            handles.append(module.register_forward_pre_hook(ActivationFakeQuant()))
    return handles


def remove_activation_fake_quant(model: nn.Module, handles: list[Any]) -> None:
    for handle in handles:
        handle.remove()
    for module in model.modules():
        for name in _ACT_BUFFERS:
            module._buffers.pop(name, None)


def remove_weight_fake_quant(model: nn.Module) -> None:
    """Drop the parametrizations, leaving each weight snapped to its grid."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
