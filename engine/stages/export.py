"""The `export` stage: the latest models (quantization-aware, pruned or trained) as fp32 ONNX.

Dynamic axes, checked against torch on real validation images at the sizes each checkpoint was
trained for. Besides ``optimize.export.opset``, one file per older opset a TensorRT target needs
(``<model>.opset13.onnx`` for TensorRT 8.2: torch then writes LayerNorm as primitive ops, which
no converter reliably does after the fact) — the ``targets.opsets`` fact. The charset the
bundles decode with is the recognizer checkpoint's own, so it cannot disagree with its classes.
"""

from __future__ import annotations

from .contract import StageContext, StageFailed, StageResult
from .inputs import detector_samples, load_model, samples_for


def run(ctx: StageContext) -> StageResult:
    from ..compress.export import ExportError, export_onnx
    from ..models.registry import input_spec

    spec = ctx.recipe.optimize.export
    outputs, metrics, artifacts = [], {}, {}
    for model_name in ("detector", "recognizer"):
        model, meta = load_model(ctx, model_name)
        model.eval()
        samples = samples_for(ctx, model_name, meta)
        if model_name == "detector":  # and a smaller image: the dynamic axes really are dynamic
            side = int(meta["input_size"])
            samples += detector_samples(ctx, max(64, side // 2), input_spec("detector", meta["arch"]), n=1)
        else:
            artifacts["charset"] = meta["charset"]
        for opset in (spec.opset, *ctx.fact("targets.opsets")):
            suffix = "" if opset == spec.opset else f"_opset{opset}"
            out = ctx.out_dir / f"{model_name}{suffix.replace('_', '.')}.onnx"
            try:
                report = export_onnx(model, model_name, out, samples, opset, spec.simplify, spec.atol)
            except ExportError as exc:
                raise StageFailed(f"export {model_name} (opset {opset}): {exc}") from None
            outputs.append(out)
            artifacts[f"{model_name}_onnx{suffix}"] = str(out)
            metrics[f"{model_name}{suffix}_max_abs_diff"] = report.get("max_abs_diff")
            metrics[f"{model_name}{suffix}_bytes"] = out.stat().st_size
        metrics[f"{model_name}_simplified"] = report.get("simplified")
    return StageResult(outputs=outputs, metrics=metrics, artifacts=artifacts)
