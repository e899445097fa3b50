"""Scoring a trained detector + recognizer pair on the validation split, in torch.

The evaluate stage's measurements: detection (ICDAR 2015 hmean-IoU), recognition on the
ground-truth crops (accuracy, CER) and end to end (detected boxes cropped and read), all with
the device runtime's own post-processing, so these fp32 numbers are the baseline that verify and
check hold the exported, quantized bundles to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def evaluate_models(
    detector_ckpt: Path, recognizer_ckpt: Path, manifest: Path, crops_root: Path,
    postprocess: dict[str, Any], limit: int | None = None,
) -> dict[str, Any]:
    """Detection (ICDAR hmean), recognition (accuracy, CER) and end-to-end metrics on val."""
    from ..data.manifest import load_image_rgb
    from ..runtime.postprocess import crop_polygon
    from .metrics import detection_metrics, end_to_end_metrics
    from .tasks import DetectorTask, RecognizerTask, detection_records, model_from_checkpoint

    det_model, det_meta = model_from_checkpoint(detector_ckpt)
    rec_model, rec_meta = model_from_checkpoint(recognizer_ckpt)
    det_task = DetectorTask(
        manifest, det_meta["arch"], det_meta["backbone"], det_meta.get("model_options"),
        input_size=det_meta["input_size"], postprocess=postprocess, model=det_model,
    )
    rec_task = RecognizerTask(
        crops_root, rec_meta["charset"], rec_meta["arch"], rec_meta["sequence"],
        rec_meta["height"], rec_meta["max_width"], rec_meta.get("model_options"), model=rec_model,
    )
    records = detection_records(manifest, "val")[: limit or None]
    gts, dets, e2e = [], [], []
    for rec in records:
        image = load_image_rgb(rec.image)
        boxes = det_task.predict(det_model, image)
        crops = [crop_polygon(image, pts) for pts, _ in boxes]
        texts = rec_task.predict(rec_model, crops) if crops else []
        gts.append([ln.to_dict() for ln in rec.lines])
        dets.append(boxes)
        e2e.append([{"points": pts, "text": t} for (pts, _), (t, _) in zip(boxes, texts, strict=True)])
    metrics: dict[str, Any] = {"val_images": len(records), "val_crops": len(rec_task.val_samples)}
    metrics.update(detection_metrics(gts, dets))
    metrics.update(rec_task.validate(rec_model))
    metrics.update(end_to_end_metrics(gts, e2e))
    return metrics
