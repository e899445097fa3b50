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
from ..runtime.postprocess import ctc_greedy_decode, db_boxes
from ..runtime.preprocess import detector_input, norm_of, recognizer_input, recognizer_widths
from ..training.metrics import detection_metrics, end_to_end_metrics

__all__ = ["end_to_end_accuracy", "read_crops"]


def read_crops(session: Any, crops: Sequence[np.ndarray], charset: str, height: int, max_width: int,
               batch: int = 16, inputs: dict[str, Any] | None = None) -> list[str]:
    """Texts of RGB crops through a recognizer session (input "input"), greedy CTC.
    ``inputs``: the recognizer's input convention (registry: channels, mean, std, downsample)."""
    texts: list[str] = []
    downsample = int((inputs or {}).get("downsample", 4))
    for start in range(0, len(crops), batch):
        chunk = list(crops[start : start + batch])
        x = recognizer_input(chunk, height, max_width, **norm_of(inputs))
        logits = session.run(None, {"input": x})[0]
        lengths = [w // downsample for w in recognizer_widths(chunk, height, max_width)]
        texts += [t for t, _ in ctc_greedy_decode(logits, charset, lengths=lengths)]
    return texts


def end_to_end_accuracy(detector: Any, recognizer: Any, images: Sequence[np.ndarray],
                        gts: Sequence[Sequence[dict[str, Any]]], charset: str, *, max_side: int,
                        height: int, max_width: int, postprocess: dict[str, Any],
                        det_inputs: dict[str, Any] | None = None,
                        rec_inputs: dict[str, Any] | None = None) -> dict[str, float]:
    """{"hmean", "e2e_line_accuracy"}: the detector session's boxes, cut and read by the
    recognizer session, scored against ``gts`` (the manifest's line dicts per image).
    ``postprocess``: db_boxes keyword arguments (thresh, box_thresh, unclip_ratio, ...);
    ``det_inputs`` / ``rec_inputs``: the models' input conventions (engine.models.registry)."""
    dets, lines = [], []
    for img in images:
        x, scale = detector_input(img, max_side, **norm_of(det_inputs))
        boxes = db_boxes(detector.run(None, {"input": x})[0][0, 0], scale, img.shape[:2], **postprocess)
        crops = [crop_polygon(img, pts) for pts, _ in boxes]
        texts = read_crops(recognizer, crops, charset, height, max_width, inputs=rec_inputs) if crops else []
        dets.append(boxes)
        lines.append([{"points": pts, "text": t} for (pts, _), t in zip(boxes, texts, strict=True)])
    return {"hmean": float(detection_metrics(gts, dets)["hmean"]),
            "e2e_line_accuracy": float(end_to_end_metrics(gts, lines)["e2e_line_accuracy"])}
