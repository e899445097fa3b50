"""Network output -> boxes and text; the single implementation used by evaluation and devices.

numpy + cv2 + pyclipper only (shipped in every bundle).

* ``db_boxes``: DBNet probability map -> text quadrilaterals (or polygons) in original image
  coordinates.  As in the DB paper, inference thresholds the probability map (the threshold
  branch is a training aid), takes each connected region's contour, scores it by the mean
  probability inside the contour, and grows it back by the Vatti offset D' = A·unclip_ratio/L,
  undoing the r = 0.4 shrink used for the labels.
* ``ctc_greedy_decode``: best-path CTC decoding.  Confidence = the *mean* over emitted characters
  of the max softmax probability at the step that emitted them (PaddleOCR's definition; the
  minimum is stricter but one blurred character then sinks a whole line).  An empty result gets
  the mean max-probability over all steps, i.e. the confidence that the crop holds no text.
* ``crop_polygon`` (from .geometry, shared with the data stage) and ``sort_reading_order``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import pyclipper

from .geometry import crop_polygon, min_area_quad, order_quad

__all__ = [
    "crop_polygon",
    "ctc_greedy_decode",
    "db_boxes",
    "group_lines",
    "inverse_shrink_distance",
    "min_area_quad",
    "order_quad",
    "softmax",
    "sort_reading_order",
    "unclip",
]


def inverse_shrink_distance(area: float, length: float, shrink_ratio: float) -> float:
    """The offset D that undoes the label shrink D = A(1 - r²)/L of the *original* polygon.

    Given the shrunk region's area A' and perimeter L', the original has (for a quadrilateral)
    A = A' + L'D + 4D² and L = L' + 8D; solving D·L = (1 - r²)·A gives the quadratic
    (8 - 4k)D² + (1 - k)L'D - kA' = 0 with k = 1 - r².
    """
    k = 1.0 - shrink_ratio**2
    a, b, c = 8.0 - 4.0 * k, (1.0 - k) * length, -k * area
    return float((-b + np.sqrt(b * b - 4 * a * c)) / (2 * a))


def unclip(points: np.ndarray, ratio: float, shrink_ratio: float | None = None) -> list[np.ndarray]:
    """Dilate a polygon (round joins); may return several paths or none.

    Offset D = area * ratio / perimeter (the DB paper's unclip), or, with ``shrink_ratio``, the
    exact inverse of the label shrink (see inverse_shrink_distance).
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    area = cv2.contourArea(pts.astype(np.float32))
    length = cv2.arcLength(pts.astype(np.float32), True)
    if length <= 0:
        return []
    if shrink_ratio is None:
        distance = area * ratio / length
    else:
        distance = inverse_shrink_distance(area, length, shrink_ratio)
    scale = 64.0  # pyclipper is integer-only; keep 1/64 px precision
    pco = pyclipper.PyclipperOffset()
    pco.AddPath(
        np.round(pts * scale).astype(np.int64).tolist(),
        pyclipper.JT_ROUND,
        pyclipper.ET_CLOSEDPOLYGON,
    )
    return [np.asarray(p, dtype=np.float64) / scale for p in pco.Execute(distance * scale)]


def _mean_inside(prob: np.ndarray, contour: np.ndarray) -> float:
    """Mean of ``prob`` over the pixels covered by ``contour`` (filled), computed on its bbox."""
    h, w = prob.shape
    c = contour.reshape(-1, 2)
    x0, y0 = np.clip(np.floor(c.min(axis=0)).astype(int), 0, [w - 1, h - 1])
    x1, y1 = np.clip(np.ceil(c.max(axis=0)).astype(int), 0, [w - 1, h - 1])
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
    shifted = np.round(c - [x0, y0]).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(mask, [shifted], 1)
    return float(cv2.mean(prob[y0 : y1 + 1, x0 : x1 + 1], mask)[0])


def db_boxes(
    prob_map: np.ndarray,
    scale: float,
    image_hw: tuple[int, int],
    thresh: float = 0.3,
    box_thresh: float = 0.6,
    unclip_ratio: float = 1.5,
    max_candidates: int = 1000,
    min_size: float = 3,
    box_type: str = "quad",
    shrink_ratio: float | None = None,
) -> list[tuple[np.ndarray, float]]:
    """Probability map H×W (or 1×1×H×W) -> [(points, score)] in ORIGINAL image coordinates.

    ``scale`` is the one detector_input returned (map coords = original * scale); ``image_hw``
    the original (height, width) to clip to.  ``box_type="quad"`` gives 4 points clockwise from
    the top-left (minimum-area rectangle of the unclipped region); ``"poly"`` gives the unclipped
    contour simplified to ~1 % of its perimeter (curved text).  ``min_size`` is the shorter side
    in map pixels below which a region is noise.  Results are sorted by score, highest first.

    Unclip: the paper's D' = A'·unclip_ratio/L' does not invert the r = 0.4 label shrink for
    elongated boxes (a 200×40 line comes back as ~189×29, IoU 0.68; a 10:1 line worse) because
    the offset scales with the *shrunk* region's width.  Passing ``shrink_ratio`` (the one the
    labels used) replaces it by the exact inverse for quadrilaterals (inverse_shrink_distance),
    which recovers the labelled box when the map matches the labels; ``unclip_ratio`` is then
    ignored.
    """
    if box_type not in ("quad", "poly"):
        raise ValueError(f"box_type must be 'quad' or 'poly', got {box_type!r}")
    prob = np.asarray(prob_map, dtype=np.float32)
    prob = prob.reshape(prob.shape[-2:])
    bitmap = (prob > thresh).astype(np.uint8)
    contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    img_h, img_w = image_hw
    results: list[tuple[np.ndarray, float]] = []
    for contour in contours[:max_candidates]:
        if len(contour) < 3 and box_type == "poly":
            continue
        rect = cv2.minAreaRect(contour.astype(np.float32))
        if min(rect[1]) < min_size:
            continue
        score = _mean_inside(prob, contour)
        if score < box_thresh:
            continue
        if box_type == "quad":
            src = cv2.boxPoints(rect)
        else:
            eps = 0.01 * cv2.arcLength(contour, True)
            src = cv2.approxPolyDP(contour, eps, True).reshape(-1, 2).astype(np.float64)
            if len(src) < 4:
                src = cv2.boxPoints(rect)
        grown = unclip(src, unclip_ratio, shrink_ratio)
        if len(grown) != 1:  # vanished or split: not a clean text region
            continue
        if box_type == "quad":
            rect2 = cv2.minAreaRect(grown[0].astype(np.float32))
            if min(rect2[1]) < min_size + 2:
                continue
            pts = order_quad(cv2.boxPoints(rect2)).astype(np.float64)
        else:
            pts = grown[0]
            if min(cv2.minAreaRect(pts.astype(np.float32))[1]) < min_size + 2:
                continue
        pts = pts / scale
        pts[:, 0] = np.clip(pts[:, 0], 0, img_w - 1)
        pts[:, 1] = np.clip(pts[:, 1], 0, img_h - 1)
        results.append((pts.astype(np.float32), score))
    results.sort(key=lambda r: -r[1])
    return results


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (max subtracted), float32."""
    x = np.asarray(x, dtype=np.float32)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def looks_like_probs(x: np.ndarray) -> bool:
    return bool(
        x.size and x.min() >= 0.0 and x.max() <= 1.0 and np.allclose(x.sum(-1), 1.0, atol=1e-3)
    )


def ctc_greedy_decode(
    logits_or_probs: np.ndarray,
    charset: str,
    lengths: Sequence[int] | None = None,
    is_probs: bool | None = None,
) -> list[tuple[str, float]]:
    """Best-path CTC decode of N×T×C (class 0 blank, class i = charset[i - 1]).

    Softmax is applied unless the input already looks like probabilities (non-negative rows that
    sum to 1) or ``is_probs`` says so.  ``lengths`` limits each row to its valid steps (padded
    batches: ``recognizer_widths(...)[i] // 4``).  Leading and trailing spaces are dropped: a
    detector box with a margin around the text makes the recognizer emit them, and a text line
    never starts or ends with one (engine.data.validate strips labels the same way).
    """
    x = np.asarray(logits_or_probs, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"expected N×T×C scores, got shape {x.shape}")
    if x.shape[2] != len(charset) + 1:
        raise ValueError(
            f"model has {x.shape[2]} classes but the charset has {len(charset)} characters "
            f"(+1 blank = {len(charset) + 1}): wrong charset for this model?"
        )
    probs = x if (is_probs if is_probs is not None else looks_like_probs(x)) else softmax(x)
    best = probs.argmax(axis=2)
    best_p = probs.max(axis=2)
    out: list[tuple[str, float]] = []
    for i in range(x.shape[0]):
        t = x.shape[1] if lengths is None else max(0, min(int(lengths[i]), x.shape[1]))
        ids, ps = best[i, :t], best_p[i, :t]
        if t == 0:
            out.append(("", 0.0))
            continue
        keep = ids != 0
        keep[1:] &= ids[1:] != ids[:-1]
        text = "".join(charset[j - 1] for j in ids[keep]).strip(" ")
        conf = float(ps[keep].mean()) if keep.any() else float(ps.mean())
        out.append((text, conf))
    return out


def _points_of(item: Any) -> np.ndarray:
    pts = (
        item[0]
        if isinstance(item, tuple | list) and len(item) == 2 and np.ndim(item[0]) == 2
        else item
    )
    return np.asarray(pts, dtype=np.float32).reshape(-1, 2)


def group_lines(boxes: Sequence[Any], overlap: float = 0.5) -> list[list[Any]]:
    """Group boxes into text lines, top to bottom, each line left to right.

    Items are point arrays or (points, score) pairs (db_boxes output).  A box joins a line when
    its vertical extent overlaps the line's by at least ``overlap`` of the smaller height — robust
    to the slight skew of photographed plates, unlike bucketing by a fixed y tolerance.
    """
    info = []
    for item in boxes:
        p = _points_of(item)
        info.append((float(p[:, 1].min()), float(p[:, 1].max()), float(p[:, 0].min()), item))
    info.sort(key=lambda r: (r[0] + r[1]) / 2)
    lines: list[list[tuple[float, float, float, Any]]] = []
    spans: list[tuple[float, float]] = []
    for y0, y1, x0, item in info:
        for k, (ly0, ly1) in enumerate(spans):
            inter = min(y1, ly1) - max(y0, ly0)
            if inter >= overlap * max(1e-6, min(y1 - y0, ly1 - ly0)):
                lines[k].append((y0, y1, x0, item))  # the line keeps its first box's span,
                break  # so a tall neighbour cannot chain two lines together
        else:
            lines.append([(y0, y1, x0, item)])
            spans.append((y0, y1))
    lines.sort(key=lambda line: min(r[0] + r[1] for r in line))
    return [[r[3] for r in sorted(line, key=lambda r: r[2])] for line in lines]


def sort_reading_order(boxes: Sequence[Any]) -> list[Any]:
    """Boxes in reading order: lines top to bottom, left to right within a line."""
    return [item for line in group_lines(boxes) for item in line]
