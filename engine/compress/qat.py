"""Quantization-aware fine-tuning of the weights: the `qat` stage.

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

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..stages import StageContext, StageResult
from .grid import qat_reduce_range, qmax_for

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


def run_qat(ctx: StageContext) -> StageResult:
    from ..training.launch import resolve_factory
    from ..training.loop import fit
    from ..training.stage import attempt_of, start_attempt, task_spec, train_config
    from .prune import save_pruned
    from .stage import build_spec, load_model

    spec = ctx.recipe.optimize.quantize.qat
    reduce_range = qat_reduce_range(ctx.loaded)
    qmax = qmax_for(reduce_range)
    outputs, metrics, artifacts = [], {"reduce_range": reduce_range, "qmax": qmax}, {}
    for model_name in spec.models:
        model, meta = load_model(ctx, model_name)
        factory, kwargs = task_spec(ctx, model_name)
        task = resolve_factory(factory)(**kwargs, model=model)
        key = task.metric
        fp32 = task.validate(model.eval()) if key else {}
        layers = add_weight_fake_quant(model, qmax)
        rounded = task.validate(model.eval()) if key else {}
        work = ctx.out_dir / model_name
        start_attempt(work, attempt_of(ctx))
        cfg = train_config(ctx, model_name, epochs=spec.epochs, run_dir=work)
        cfg.name = f"qat:{model_name}"
        cfg.lr, cfg.warmup_epochs = spec.lr, spec.warmup_epochs
        cfg.limit_train_batches = spec.steps_per_epoch
        task.model = model
        fit(task, cfg)
        model = task.model.eval()
        after = task.validate(model) if key else {}
        remove_weight_fake_quant(model)
        out = ctx.out_dir / f"{model_name}.qat.pt"
        m: dict[str, Any] = {"layers": layers, f"{key}_fp32": fp32.get(key), f"{key}_rounded": rounded.get(key),
             f"{key}_after": after.get(key)}
        save_pruned(out, model, build_spec(meta), extra={"meta": meta, "metrics": m, "qmax": qmax})
        outputs.append(out)
        metrics.update({f"{model_name}_{k}": v for k, v in m.items()})
        artifacts[f"{model_name}_qat"] = str(out)
    return StageResult(outputs=outputs, metrics=metrics, artifacts=artifacts)
