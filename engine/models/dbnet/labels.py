"""DBNet training targets: shrink (probability) map and threshold (border) map.

Following Liao et al. 2020 §3.3: every text polygon G is shrunk by the Vatti clipping offset
D = A (1 - r²) / L (A area, L perimeter, r = 0.4) to give the probability target Gs, and dilated
by the same D to give Gd.  The threshold target inside Gd is the normalised distance to the
nearest edge of G — 1 on the border, falling to 0 at distance D — mapped to
[thresh_min, thresh_max]; outside any Gd it is thresh_min and the mask is 0.

Optionally (``gap_weight`` > 0) a ``shrink_weight`` map weights the probability loss of the
background between neighbouring texts, after U-Net's border weights (Ronneberger et al. 2015,
eq. 2): ``1 + gap_weight * exp(-(d1 + d2)² / (2 σ²))`` where d1, d2 are the distances to the
nearest and second-nearest shrunk text, each in units of that text's height, and σ = GAP_SIGMA.
Why: PP-OCRv6 reads a row of separate labels (`EAC | UL | CE` marks, table cells) as one line.
Fine-tuned on labels that box them apart, its probability map stayed at 0.95 across the gaps:
they are a few hundred pixels of a 384² crop, so the loss barely sees them. The flagship's
detector matched 50 of 82 such marks on fresh plates; with ``gap_weight: 10``, 68.

Pixel convention: pixel (row i, column j) has its centre at (x=j, y=i), the same convention as
cv2.fillPoly and cv2.findContours, so labels and the runtime's box extraction agree.
pyclipper works on integers, so coordinates are scaled by CLIPPER_SCALE to keep sub-pixel offsets.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import pyclipper

CLIPPER_SCALE = 256.0
GAP_SIGMA = 0.5  # the gap weight's fall-off, in text heights (d1 + d2 = 1 height: 0.14 of it)
GAP_REACH = 2.0  # text heights beyond which a text's distance is not computed (weight < 1e-3)


def polygon_area(points: np.ndarray) -> float:
    """Absolute shoelace area."""
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def polygon_perimeter(points: np.ndarray) -> float:
    return float(np.linalg.norm(points - np.roll(points, -1, axis=0), axis=1).sum())


def shrink_distance(points: np.ndarray, ratio: float) -> float:
    """The Vatti offset D = A (1 - r²) / L of the DB paper (eq. 8)."""
    perim = polygon_perimeter(points)
    if perim <= 0:
        return 0.0
    return polygon_area(points) * (1.0 - ratio**2) / perim


def offset_polygon(points: np.ndarray, delta: float) -> list[np.ndarray]:
    """Offset a polygon by ``delta`` pixels (negative shrinks) with round joins.

    Returns zero or more polygons (a thin polygon can vanish or split when shrunk).
    """
    pco = pyclipper.PyclipperOffset()
    path = np.round(points * CLIPPER_SCALE).astype(np.int64).tolist()
    pco.AddPath(path, pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    out = pco.Execute(delta * CLIPPER_SCALE)
    return [np.asarray(p, dtype=np.float64) / CLIPPER_SCALE for p in out if len(p) >= 3]


def _fill(img: np.ndarray, polys: Sequence[np.ndarray], value: float) -> None:
    if polys:
        cv2.fillPoly(img, [np.round(p).astype(np.int32).reshape(-1, 1, 2) for p in polys], value)


def _segment_distance(xs: np.ndarray, ys: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance from grid points to the segment a-b (projection clamped to it)."""
    ab = b - a
    denom = float(np.dot(ab, ab))
    if denom == 0.0:
        return np.hypot(xs - a[0], ys - a[1])
    t = np.clip(((xs - a[0]) * ab[0] + (ys - a[1]) * ab[1]) / denom, 0.0, 1.0)
    return np.hypot(xs - (a[0] + t * ab[0]), ys - (a[1] + t * ab[1]))


def _draw_border(points: np.ndarray, distance: float, canvas: np.ndarray, mask: np.ndarray) -> None:
    """Write 1 - min(dist_to_border / D, 1) into ``canvas`` (max-combined) over the dilated polygon."""
    dilated = offset_polygon(points, distance)
    if not dilated:
        return
    _fill(mask, dilated, 1.0)
    h, w = canvas.shape
    region = np.concatenate(dilated, axis=0)
    x0, y0 = np.floor(region.min(axis=0)).astype(int)
    x1, y1 = np.ceil(region.max(axis=0)).astype(int)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)
    if cx1 < cx0 or cy1 < cy0:
        return
    ys, xs = np.mgrid[cy0 : cy1 + 1, cx0 : cx1 + 1].astype(np.float64)
    dist = np.full(xs.shape, np.inf)
    n = len(points)
    for i in range(n):
        dist = np.minimum(dist, _segment_distance(xs, ys, points[i], points[(i + 1) % n]))
    value = 1.0 - np.clip(dist / distance, 0.0, 1.0)
    # only inside the dilated polygon (the bbox corners of a round-joined offset are outside)
    inside = np.zeros(xs.shape, dtype=np.uint8)
    _fill(inside, [p - [cx0, cy0] for p in dilated], 1)
    inside_crop = inside.astype(bool)
    sub = canvas[cy0 : cy1 + 1, cx0 : cx1 + 1]
    np.maximum(sub, np.where(inside_crop, value, 0.0), out=sub)


class _GapDistances:
    """The two smallest normalised distances to the shrunk texts seen so far, per pixel."""

    def __init__(self, height: int, width: int):
        self.d1 = np.full((height, width), np.inf, dtype=np.float32)
        self.d2 = np.full((height, width), np.inf, dtype=np.float32)

    def add(self, shrunk: Sequence[np.ndarray], text_height: float) -> None:
        """One text: distances computed in a window GAP_REACH text heights around it."""
        h, w = self.d1.shape
        reach = GAP_REACH * text_height
        pts = np.concatenate(shrunk, axis=0)
        x0, y0 = np.floor(pts.min(axis=0) - reach).astype(int)
        x1, y1 = np.ceil(pts.max(axis=0) + reach).astype(int)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)
        if x1 < x0 or y1 < y0:
            return
        outside = np.ones((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
        _fill(outside, [p - [x0, y0] for p in shrunk], 0)
        if outside.all():  # the text lies outside the image (a crop's edge)
            return
        dist = cv2.distanceTransform(outside, cv2.DIST_L2, 3) / text_height
        d1, d2 = self.d1[y0 : y1 + 1, x0 : x1 + 1], self.d2[y0 : y1 + 1, x0 : x1 + 1]
        np.minimum(d2, np.maximum(d1, dist), out=d2)
        np.minimum(d1, dist, out=d1)

    def weight(self, gap_weight: float, text: np.ndarray) -> np.ndarray:
        both = np.isfinite(self.d2)
        weight = np.ones(self.d1.shape, dtype=np.float32)
        gap = self.d1[both] + self.d2[both]
        weight[both] += gap_weight * np.exp(-(gap**2) / (2 * GAP_SIGMA**2))
        weight[text > 0] = 1.0
        return weight


def make_db_targets(
    polygons: Sequence[np.ndarray | Sequence[Sequence[float]]],
    ignore: Sequence[bool] | None,
    height: int,
    width: int,
    shrink_ratio: float = 0.4,
    thresh_min: float = 0.3,
    thresh_max: float = 0.7,
    min_text_size: float = 8.0,
    gap_weight: float = 0.0,
) -> dict[str, np.ndarray]:
    """Targets for one image whose polygons are already in the network-input pixel frame.

    Returns float32 H×W arrays:
      * ``shrink_map``  — 1 inside each shrunk polygon;
      * ``shrink_mask`` — 0 over ignored (``###``) polygons, polygons whose bounding box is
        shorter than ``min_text_size`` on a side, degenerate polygons and polygons that vanish
        when shrunk; 1 elsewhere (background is supervised);
      * ``thresh_map``  — thresh_min + (thresh_max - thresh_min) * (1 - d/D) inside the dilated
        polygons (d = distance to the nearest original edge), thresh_min elsewhere;
      * ``thresh_mask`` — 1 inside the dilated non-ignored polygons;
      * ``shrink_weight`` (only with ``gap_weight`` > 0) — the probability loss's per-pixel
        weight: above 1 on background between two nearby texts (module docstring), 1 elsewhere.
    """
    if ignore is None:
        ignore = [False] * len(polygons)
    if len(ignore) != len(polygons):
        raise ValueError(f"{len(polygons)} polygons but {len(ignore)} ignore flags")
    shrink_map = np.zeros((height, width), dtype=np.float32)
    shrink_mask = np.ones((height, width), dtype=np.float32)
    canvas = np.zeros((height, width), dtype=np.float64)
    thresh_mask = np.zeros((height, width), dtype=np.float32)
    gaps = _GapDistances(height, width) if gap_weight > 0 else None
    for poly, ign in zip(polygons, ignore, strict=True):
        pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if len(pts) < 3:
            continue
        size = pts.max(axis=0) - pts.min(axis=0)
        area = polygon_area(pts)
        if ign or min(size) < min_text_size or area < 1.0:
            _fill(shrink_mask, [pts], 0.0)
            continue
        d = shrink_distance(pts, shrink_ratio)
        shrunk = offset_polygon(pts, -d)
        if not shrunk:
            _fill(shrink_mask, [pts], 0.0)
            continue
        _fill(shrink_map, shrunk, 1.0)
        _draw_border(pts, d, canvas, thresh_mask)
        if gaps is not None:
            gaps.add(shrunk, max(min(cv2.minAreaRect(pts.astype(np.float32))[1]), 1.0))
    thresh_map = (canvas * (thresh_max - thresh_min) + thresh_min).astype(np.float32)
    targets = {
        "shrink_map": shrink_map,
        "shrink_mask": shrink_mask,
        "thresh_map": thresh_map,
        "thresh_mask": thresh_mask,
    }
    if gaps is not None:
        targets["shrink_weight"] = gaps.weight(gap_weight, shrink_map)
    return targets
