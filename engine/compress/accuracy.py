"""Accuracy of exported ONNX models before they are bundled: what build's int8 guard and
bench/compress.py measure.

The device runtime (`engine.runtime.pipeline.OCRPipeline`) reads whole bundles; these helpers
take bare onnxruntime sessions, so a candidate detector or recognizer can be scored while the
bundle is still being decided.  Pre- and post-processing are the runtime's own functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..runtime.geometry import crop_polygon
from ..runtime.pipeline import read_lines
from ..runtime.postprocess import db_boxes
from ..runtime.preprocess import detector_input, norm_of
from ..training.metrics import detection_metrics, end_to_end_metrics

__all__ = ["end_to_end_accuracy", "read_crops"]


def read_crops(session: Any, crops: Sequence[np.ndarray], charset: str, height: int, max_width: int,
               batch: int = 16, max_padding: float = 1.0, inputs: dict[str, Any] | None = None) -> list[str]:
    """Texts of RGB crops (in their order) through a recognizer session (input "input"), greedy
    CTC, batched as the device batches them (``batch_by_width`` with the target's ``batch`` and
    ``max_padding``). ``inputs``: the recognizer's input convention (registry: channels, mean,
    std, downsample)."""
    lines = read_lines(lambda x: session.run(None, {"input": x})[0], crops, charset, height=height,
                       max_width=max_width, batch=batch, max_padding=max_padding,
                       downsample=int((inputs or {}).get("downsample", 4)), norm=norm_of(inputs))
    return [text for text, _ in lines]


def end_to_end_accuracy(detector: Any, recognizer: Any, images: Sequence[np.ndarray],
                        gts: Sequence[Sequence[dict[str, Any]]], charset: str, *, max_side: int,
                        height: int, max_width: int, postprocess: dict[str, Any],
                        det_inputs: dict[str, Any] | None = None, rec_inputs: dict[str, Any] | None = None,
                        batch: int = 16, max_padding: float = 1.0) -> dict[str, float]:
    """{"hmean", "e2e_line_accuracy"}: the detector session's boxes, cut and read by the
    recognizer session, scored against ``gts`` (the manifest's line dicts per image).
    ``postprocess``: db_boxes keyword arguments (thresh, box_thresh, unclip_ratio, ...);
    ``det_inputs`` / ``rec_inputs``: the models' input conventions (engine.models.registry);
    ``batch`` / ``max_padding``: the target's recognizer batching (see ``read_crops``)."""
    dets, lines = [], []
    for img in images:
        x, scale = detector_input(img, max_side, **norm_of(det_inputs))
        boxes = db_boxes(detector.run(None, {"input": x})[0][0, 0], scale, img.shape[:2], **postprocess)
        crops = [crop_polygon(img, pts) for pts, _ in boxes]
        texts = read_crops(recognizer, crops, charset, height, max_width, batch, max_padding, rec_inputs)
        dets.append(boxes)
        lines.append([{"points": pts, "text": t} for (pts, _), t in zip(boxes, texts, strict=True)])
    return {"hmean": float(detection_metrics(gts, dets)["hmean"]),
            "e2e_line_accuracy": float(end_to_end_metrics(gts, lines)["e2e_line_accuracy"])}
