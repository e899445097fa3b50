"""The `qat` stage: fine-tune the weights on the int8 grid the targets will quantize them to.

Why and how: engine/compress/qat.py. Per model in ``optimize.quantize.qat.models``, the latest
upstream model (pruned, else trained) is fine-tuned with its conv and linear weights
fake-quantized to the grid of the recipe's int8 targets (the ``qat.reduce_range`` fact: 7-bit
when any of them quantizes with reduce_range) and, with ``qat.activations``, the input of each of
those layers fake-quantized to uint8; it is handed on with its weights snapped to that grid.

On a 2-core build machine one validation of the PP-OCRv6 recognizer costs about as much as the
60 QAT steps, so the stage validates twice: the float model before, and (inside ``fit``, on its
last epoch) the fake-quantized one.
"""

from __future__ import annotations

from typing import Any

from .contract import StageContext, StageResult
from .inputs import build_spec, load_model, resume_or_start, task_for, train_config


def run(ctx: StageContext) -> StageResult:
    from ..compress.grid import qmax_for
    from ..compress.prune import save_pruned
    from ..compress.qat import (
        add_activation_fake_quant,
        add_weight_fake_quant,
        remove_activation_fake_quant,
        remove_weight_fake_quant,
    )
    from ..training.loop import fit

    spec = ctx.recipe.optimize.quantize.qat
    reduce_range = ctx.fact("qat.reduce_range")
    qmax = qmax_for(reduce_range)
    outputs, metrics, artifacts = [], {"reduce_range": reduce_range, "qmax": qmax}, {}
    for model_name in spec.models:
        model, meta = load_model(ctx, model_name)
        task = task_for(ctx, model_name, model, backbone_lr=spec.backbone_lr)
        key = task.metric
        fp32 = task.validate(model.eval()) if key else {}
        layers = add_weight_fake_quant(model, qmax)
        hooks = add_activation_fake_quant(model) if spec.activations else []
        work = ctx.out_dir / model_name
        resume_or_start(ctx, work)
        cfg = train_config(ctx, model_name, epochs=spec.epochs, run_dir=work)
        cfg.name = f"qat:{model_name}"
        cfg.lr, cfg.warmup_epochs = spec.lr, spec.warmup_epochs
        cfg.limit_train_batches = spec.steps_per_epoch
        task.model = model
        result = fit(task, cfg)
        model = task.model.eval()
        after = result.history[-1].get(f"val_{key}") if key and result.history else None
        if key and after is None:  # a history without the last epoch's validation
            after = task.validate(model).get(key)
        remove_activation_fake_quant(model, hooks)
        remove_weight_fake_quant(model)
        out = ctx.out_dir / f"{model_name}.qat.pt"
        m: dict[str, Any] = {"layers": layers, f"{key}_fp32": fp32.get(key), f"{key}_after": after,
                             "activations": spec.activations}
        save_pruned(out, model, build_spec(meta), extra={"meta": meta, "metrics": m, "qmax": qmax})
        outputs.append(out)
        metrics.update({f"{model_name}_{k}": v for k, v in m.items()})
        artifacts[f"{model_name}_qat"] = str(out)
    return StageResult(outputs=outputs, metrics=metrics, artifacts=artifacts)
