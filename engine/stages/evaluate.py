"""The `evaluate` stage: the fp32 torch models scored on the validation split.

Detection, recognition on the ground-truth crops and end to end (`engine.training.evaluate`),
with the recipe's post-processing, on up to ``verify.samples`` validation images. These are the
numbers verify holds each target's bundle to, and the recognizer's own bars
(``verify.min_word_accuracy``, ``verify.max_cer``) are judged here, before any compression.
"""

from __future__ import annotations

from pathlib import Path

from ..fsutil import atomic_write_json
from .contract import StageContext, StageFailed, StageResult
from .inputs import dataset


def run(ctx: StageContext) -> StageResult:
    from ..training.evaluate import evaluate_models

    det = Path(ctx.upstream_artifact("train:detector", "detector_checkpoint"))
    rec = Path(ctx.upstream_artifact("train:recognizer", "recognizer_checkpoint"))
    data = dataset(ctx)
    pp = ctx.recipe.models.postprocess
    postprocess = {"thresh": pp.thresh, "box_thresh": pp.box_thresh, "unclip_ratio": pp.unclip_ratio,
                   "shrink_ratio": pp.shrink_ratio}
    v = ctx.recipe.verify
    metrics = evaluate_models(det, rec, Path(data["manifest"]), Path(data["crops"]), postprocess, v.samples)
    out = ctx.out_dir / "metrics.json"
    atomic_write_json(out, metrics)
    missed = [
        f"{name} {metrics[key]:.4g} {op} {bar}"
        for name, key, bar, op in (("word_accuracy", "word_accuracy", v.min_word_accuracy, "<"),
                                   ("cer", "cer", v.max_cer, ">"))
        if bar is not None and (metrics[key] < bar if op == "<" else metrics[key] > bar)
    ]
    if missed:
        raise StageFailed(f"recognizer below the verify bars: {'; '.join(missed)} (see {out})")
    return StageResult(outputs=[out], metrics=metrics, artifacts={"fp32_metrics": str(out)})
