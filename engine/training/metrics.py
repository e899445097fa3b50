"""Detection, recognition and end-to-end metrics (numpy, pyclipper and the standard library).

Detection follows the ICDAR 2015 Incidental Scene Text protocol (the official ``script.py`` of
the Robust Reading Competition), because "hmean 0.85" only means something against that
protocol:

1. A detection is *don't-care* when the area it shares with the don't-care GTs (``###`` /
   ``ignore``) is more than 0.5 of its own area (each don't-care GT is checked separately, as
   in the official script). Don't-care GTs and detections are never matched and never counted.
2. GT and detections are matched one-to-one, greedily in GT order then detection order: the
   first unmatched care detection whose IoU with the GT is above the threshold (0.5; the official
   script uses ``>``, which ``iou_thresh`` keeps) is taken.
3. Precision = matched / care detections, recall = matched / care GTs, summed over the whole
   set (not averaged per image), hmean = their harmonic mean; an empty denominator gives 0.

Polygon areas and intersections use pyclipper (integer clipping on coordinates scaled by 2^10),
so any simple or self-intersecting polygon works, not only convex quadrilaterals.

Recognition (crops are text lines, so "word" and "line" differ):

* ``line_accuracy`` — fraction of lines recognised exactly;
* ``word_accuracy`` — fraction of GT words (whitespace-separated) recognised, aligned in order
  by longest common subsequence; for one-word crops this is the literature's exact-match
  word accuracy;
* ``whitespace_insensitive_accuracy`` — exact match after removing all whitespace;
* ``cer`` — sum of character edit distances / sum of GT lengths.

End-to-end: detections carry recognised text; a care GT line is correct when the detection
matched to it by the protocol above has exactly its text. ``e2e_line_accuracy`` (= e2e recall) =
correct / care GTs, ``e2e_precision`` = correct / care detections, ``e2e_hmean``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyclipper

_SCALE = 1024.0


# ---------------------------------------------------------------------------------------------
# Geometry


def _path(points: Any) -> list[tuple[int, int]]:
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return [(round(x * _SCALE), round(y * _SCALE)) for x, y in arr]


def _net_area(paths: Sequence[Sequence[tuple[int, int]]]) -> float:
    # Clipper returns outer rings and holes with opposite orientation: the signed sum is the area.
    total = sum(pyclipper.Area(p) for p in paths)
    return abs(total) / (_SCALE * _SCALE)


def polygon_area(points: Any) -> float:
    """Area of a polygon; self-intersections are resolved with the non-zero fill rule."""
    path = _path(points)
    if len(path) < 3:
        return 0.0
    try:
        simple = pyclipper.SimplifyPolygon(path, pyclipper.PFT_NONZERO)
    except pyclipper.ClipperException:
        return 0.0
    return _net_area(simple)


def intersection_area(a: Any, b: Any) -> float:
    pa, pb = _path(a), _path(b)
    if len(pa) < 3 or len(pb) < 3:
        return 0.0
    clipper = pyclipper.Pyclipper()
    try:
        clipper.AddPath(pa, pyclipper.PT_SUBJECT, True)
        clipper.AddPath(pb, pyclipper.PT_CLIP, True)
        out = clipper.Execute(
            pyclipper.CT_INTERSECTION, pyclipper.PFT_NONZERO, pyclipper.PFT_NONZERO
        )
    except pyclipper.ClipperException:  # degenerate (zero-area) polygon
        return 0.0
    return _net_area(out)


def polygon_iou(a: Any, b: Any) -> float:
    inter = intersection_area(a, b)
    union = polygon_area(a) + polygon_area(b) - inter
    return float(inter / union) if union > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class GtLine:
    points: np.ndarray
    text: str = ""
    ignore: bool = False


def as_gt_line(line: Any) -> GtLine:
    """Accept a manifest dict, a TextLine-like object, a (points, text[, ignore]) tuple."""
    if isinstance(line, GtLine):
        return line
    if isinstance(line, Mapping):
        points, text, ignore = line["points"], line.get("text", ""), line.get("ignore", False)
    elif hasattr(line, "points"):
        points, text, ignore = (
            line.points,
            getattr(line, "text", ""),
            getattr(line, "ignore", False),
        )
    else:
        points, text = line[0], line[1] if len(line) > 1 else ""
        ignore = line[2] if len(line) > 2 else False
    text = "" if text is None else str(text)
    return GtLine(
        np.asarray(points, dtype=np.float64).reshape(-1, 2), text, bool(ignore) or text == "###"
    )


def _det_points_text(det: Any) -> tuple[np.ndarray, str]:
    if isinstance(det, Mapping):
        return np.asarray(det["points"], dtype=np.float64).reshape(-1, 2), str(det.get("text", ""))
    if hasattr(det, "points"):
        return np.asarray(det.points, dtype=np.float64).reshape(-1, 2), str(
            getattr(det, "text", "")
        )
    if isinstance(det, tuple) and len(det) >= 2 and isinstance(det[1], str):
        return np.asarray(det[0], dtype=np.float64).reshape(-1, 2), det[1]
    if isinstance(det, tuple) and len(det) == 2 and np.ndim(det[1]) == 0:
        # (points, score) as returned by engine.runtime.postprocess.db_boxes
        return np.asarray(det[0], dtype=np.float64).reshape(-1, 2), ""
    return np.asarray(det, dtype=np.float64).reshape(-1, 2), ""


# ---------------------------------------------------------------------------------------------
# Detection


@dataclass
class ImageMatch:
    """The protocol's decisions for one image (useful for previews and debugging)."""

    pairs: list[tuple[int, int, float]] = field(default_factory=list)  # (gt, det, iou)
    gt_ignored: list[bool] = field(default_factory=list)
    det_ignored: list[bool] = field(default_factory=list)

    @property
    def gt_care(self) -> int:
        return self.gt_ignored.count(False)

    @property
    def det_care(self) -> int:
        return self.det_ignored.count(False)


def match_image(
    gts: Sequence[Any],
    dets: Sequence[Any],
    iou_thresh: float = 0.5,
    ignore_area_thresh: float = 0.5,
) -> ImageMatch:
    """Apply the ICDAR 2015 matching to one image (see the module docstring)."""
    gt_lines = [as_gt_line(g) for g in gts]
    det_pts = [_det_points_text(d)[0] for d in dets]
    gt_ignored = [g.ignore for g in gt_lines]
    det_ignored = [False] * len(det_pts)
    dont_care = [g.points for g in gt_lines if g.ignore]
    if dont_care:
        for j, d in enumerate(det_pts):
            area = polygon_area(d)
            if area <= 0:
                continue
            for g in dont_care:
                if intersection_area(d, g) / area > ignore_area_thresh:
                    det_ignored[j] = True
                    break
    match = ImageMatch(gt_ignored=gt_ignored, det_ignored=det_ignored)
    det_taken = [False] * len(det_pts)
    for i, line in enumerate(gt_lines):
        if line.ignore:
            continue
        for j, d in enumerate(det_pts):
            if det_taken[j] or det_ignored[j]:
                continue
            iou = polygon_iou(line.points, d)
            if iou > iou_thresh:
                det_taken[j] = True
                match.pairs.append((i, j, iou))
                break
    return match


def _prh(hits: int, gt: int, det: int) -> dict[str, float]:
    recall = hits / gt if gt else 0.0
    precision = hits / det if det else 0.0
    hmean = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "hmean": hmean}


def detection_metrics(
    gts: Sequence[Sequence[Any]],
    dets: Sequence[Sequence[Any]],
    iou_thresh: float = 0.5,
    ignore_area_thresh: float = 0.5,
) -> dict[str, float]:
    """ICDAR 2015 precision / recall / hmean over a set of images.

    ``gts[k]`` are the GT lines of image k (manifest line dicts, TextLine objects, or
    ``(points, text, ignore)``); ``dets[k]`` its detections (points, ``(points, score)``
    tuples from ``db_boxes``, or dicts with ``points``).
    """
    if len(gts) != len(dets):
        raise ValueError(f"{len(gts)} images of ground truth but {len(dets)} of detections")
    hits = gt_care = det_care = 0
    for g, d in zip(gts, dets, strict=True):
        m = match_image(g, d, iou_thresh, ignore_area_thresh)
        hits += len(m.pairs)
        gt_care += m.gt_care
        det_care += m.det_care
    out = _prh(hits, gt_care, det_care)
    out.update({"matched": float(hits), "gt": float(gt_care), "det": float(det_care)})
    return out


# ---------------------------------------------------------------------------------------------
# Recognition


def edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def _no_space(text: str) -> str:
    return "".join(text.split())


def recognition_metrics(preds: Sequence[str], gts: Sequence[str]) -> dict[str, float]:
    """Line, word and whitespace-insensitive accuracy and CER of recognised crops."""
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions but {len(gts)} ground-truth texts")
    n = len(gts)
    if n == 0:
        return {
            "line_accuracy": 0.0,
            "word_accuracy": 0.0,
            "whitespace_insensitive_accuracy": 0.0,
            "cer": 0.0,
            "samples": 0.0,
        }
    exact = sum(p == g for p, g in zip(preds, gts, strict=True))
    nospace = sum(_no_space(p) == _no_space(g) for p, g in zip(preds, gts, strict=True))
    words_total = words_ok = 0
    edits = chars = 0
    for p, g in zip(preds, gts, strict=True):
        gw = g.split()
        words_total += len(gw)
        words_ok += _lcs(gw, p.split())
        edits += edit_distance(p, g)
        chars += len(g)
    return {
        "line_accuracy": exact / n,
        "word_accuracy": words_ok / words_total if words_total else float(exact == n),
        "whitespace_insensitive_accuracy": nospace / n,
        "cer": edits / chars if chars else float(edits > 0),
        "samples": float(n),
    }


# ---------------------------------------------------------------------------------------------
# End to end


def end_to_end_metrics(
    gts: Sequence[Sequence[Any]],
    dets: Sequence[Sequence[Any]],
    iou_thresh: float = 0.5,
    ignore_area_thresh: float = 0.5,
) -> dict[str, float]:
    """Detection matched by the ICDAR protocol, then exact text comparison per matched pair.

    ``dets[k]`` items carry text: ``{"points": ..., "text": ...}``, objects with ``points`` and
    ``text``, or ``(points, text)`` tuples.
    """
    if len(gts) != len(dets):
        raise ValueError(f"{len(gts)} images of ground truth but {len(dets)} of detections")
    correct = gt_care = det_care = hits = 0
    for g, d in zip(gts, dets, strict=True):
        gt_lines = [as_gt_line(x) for x in g]
        det_texts = [_det_points_text(x)[1] for x in d]
        m = match_image(gt_lines, d, iou_thresh, ignore_area_thresh)
        gt_care += m.gt_care
        det_care += m.det_care
        hits += len(m.pairs)
        correct += sum(gt_lines[i].text == det_texts[j] for i, j, _ in m.pairs)
    prh = _prh(correct, gt_care, det_care)
    return {
        "e2e_line_accuracy": prh["recall"],
        "e2e_precision": prh["precision"],
        "e2e_recall": prh["recall"],
        "e2e_hmean": prh["hmean"],
        "e2e_correct": float(correct),
        "e2e_detected": float(hits),
        "gt": float(gt_care),
        "det": float(det_care),
    }


def score_predictions(report: dict[str, Any], labels: dict[str, list[dict[str, Any]]],
                      text: str = "text") -> dict[str, Any]:
    """Detection + end-to-end metrics of a device's ``runtime.check`` report against the
    bundle's labels (by image name), with the report's latency and memory: what verify and
    check hold a bundle to.  ``text``: the lines' field to score (``greedy_text``: what the
    same boxes read without the bundle's language model)."""
    gts, dets, e2e = [], [], []
    for item in report["predictions"]:
        lines = item["lines"]
        gts.append(labels[item["image"]])
        dets.append([(ln["points"], ln["score"]) for ln in lines])
        e2e.append([{"points": ln["points"], "text": ln[text]} for ln in lines])
    metrics: dict[str, Any] = {"images": len(gts)}
    metrics.update({k: v for k, v in detection_metrics(gts, dets).items() if k in ("hmean", "precision", "recall")})
    metrics.update({k: v for k, v in end_to_end_metrics(gts, e2e).items() if k.startswith("e2e_")})
    metrics["latency_p50_ms"] = report["latency_ms"]["p50"]
    metrics["latency_p90_ms"] = report["latency_ms"]["p90"]
    metrics["peak_rss_mb"] = report.get("peak_rss_mb")
    return metrics


def summarize(values: Iterable[float]) -> dict[str, float]:
    """Mean / p50 / p90 / max of a series (latencies in evaluation reports)."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "max": 0.0}
    return {
        "mean": float(arr.mean()),
        "p50": float(np.percentile(arr, 50)),
        "p90": float(np.percentile(arr, 90)),
        "max": float(arr.max()),
    }


def within_drop(drop: float, max_drop: float) -> bool:
    """Whether an accuracy ``drop`` meets a ``max_drop`` bar. The metrics are ratios of counts, so
    one line in 200 lost against a 0.005 bar computes as 0.925 - 0.92 = 0.00500000000000006:
    exactly at the bar, compared with a tolerance far below any one count."""
    return drop <= max_drop + 1e-9
