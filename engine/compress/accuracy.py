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
from ..runtime.preprocess import detector_input, recognizer_input, recognizer_widths
from ..training.metrics import detection_metrics, end_to_end_metrics

__all__ = ["end_to_end_accuracy", "read_crops"]


def read_crops(session: Any, crops: Sequence[np.ndarray], charset: str, height: int, max_width: int,
               batch: int = 16) -> list[str]:
    """Texts of RGB crops through a recognizer session (input "input"), greedy CTC."""
    texts: list[str] = []
    for start in range(0, len(crops), batch):
        chunk = list(crops[start : start + batch])
        logits = session.run(None, {"input": recognizer_input(chunk, height, max_width)})[0]
        lengths = [w // 4 for w in recognizer_widths(chunk, height, max_width)]
        texts += [t for t, _ in ctc_greedy_decode(logits, charset, lengths=lengths)]
    return texts


def end_to_end_accuracy(detector: Any, recognizer: Any, images: Sequence[np.ndarray],
                        gts: Sequence[Sequence[dict[str, Any]]], charset: str, *, max_side: int,
                        height: int, max_width: int, postprocess: dict[str, Any]) -> dict[str, float]:
    """{"hmean", "e2e_line_accuracy"}: the detector session's boxes, cut and read by the
    recognizer session, scored against ``gts`` (the manifest's line dicts per image).
    ``postprocess``: db_boxes keyword arguments (thresh, box_thresh, unclip_ratio, ...)."""
    dets, lines = [], []
    for img in images:
        x, scale = detector_input(img, max_side)
        boxes = db_boxes(detector.run(None, {"input": x})[0][0, 0], scale, img.shape[:2], **postprocess)
        crops = [crop_polygon(img, pts) for pts, _ in boxes]
        texts = read_crops(recognizer, crops, charset, height, max_width) if crops else []
        dets.append(boxes)
        lines.append([{"points": pts, "text": t} for (pts, _), t in zip(boxes, texts, strict=True)])
    return {"hmean": float(detection_metrics(gts, dets)["hmean"]),
            "e2e_line_accuracy": float(end_to_end_metrics(gts, lines)["e2e_line_accuracy"])}
