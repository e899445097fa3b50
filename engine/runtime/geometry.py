"""Polygon geometry shared by the data stage (recognizer crops) and the device runtime.

Only numpy and cv2 — this module is shipped to devices.  The crops the recognizer trains on and
the crops it sees on the device must be cut the same way, so there is one `crop_polygon`.
"""

from __future__ import annotations

import cv2
import numpy as np


def order_quad(points: np.ndarray) -> np.ndarray:
    """Order 4 points clockwise (y down) starting from the top-left (smallest x + y).

    Used for polygons that carry no reading order of their own (cv2.minAreaRect output).
    """
    pts = np.asarray(points, dtype=np.float32).reshape(4, 2)
    c = pts.mean(axis=0)
    ang = np.arctan2(pts[:, 1] - c[1], pts[:, 0] - c[0])
    pts = pts[np.argsort(ang)]  # increasing angle == clockwise on screen
    start = int(np.argmin(pts.sum(axis=1)))
    return np.roll(pts, -start, axis=0)


def min_area_quad(points: np.ndarray) -> np.ndarray:
    """The minimum-area rotated rectangle around any polygon, as an ordered quadrilateral."""
    rect = cv2.minAreaRect(np.asarray(points, dtype=np.float32).reshape(-1, 2))
    return order_quad(cv2.boxPoints(rect))


def crop_size(quad: np.ndarray) -> tuple[int, int]:
    """(width, height) of ``crop_polygon``'s cut of a quadrilateral: the longer of each pair of
    opposite edges."""
    w = int(np.rint(max(np.linalg.norm(quad[0] - quad[1]), np.linalg.norm(quad[3] - quad[2]))))
    h = int(np.rint(max(np.linalg.norm(quad[0] - quad[3]), np.linalg.norm(quad[1] - quad[2]))))
    return max(w, 1), max(h, 1)


def turned(width: int, height: int) -> bool:
    """Whether ``crop_polygon`` turns a cut of this size (a vertical text line)."""
    return height >= 1.5 * width


def crop_polygon(image: np.ndarray, points, rotate_vertical: bool = True) -> np.ndarray:
    """Cut the text region `points` out of `image` by a perspective transform.

    A quadrilateral is used as given, its first point taken as the text's top-left (so upside-down
    or rotated text labelled in reading order comes out upright); any other polygon is replaced by
    its minimum-area rectangle.  Output size is the longer of each pair of opposite edges.  With
    `rotate_vertical`, crops at least 1.5x taller than wide are turned 90° counter-clockwise
    (vertical text lines), as PaddleOCR does.
    """
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    quad = pts if len(pts) == 4 else min_area_quad(pts)
    w, h = crop_size(quad)
    dst = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(quad.astype(np.float32), dst)
    crop = cv2.warpPerspective(
        image, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
    )
    if rotate_vertical and turned(w, h):
        crop = np.ascontiguousarray(np.rot90(crop))
    return crop


def sub_quad(quad: np.ndarray, start: float, end: float) -> np.ndarray:
    """The part of a reading-order quadrilateral (top-left, top-right, bottom-right,
    bottom-left) between fractions ``start`` and ``end`` of its length: top and bottom edges cut
    at the same fractions, as ``crop_polygon``'s columns run."""
    q = np.asarray(quad, dtype=np.float32).reshape(4, 2)
    top, bottom = q[1] - q[0], q[2] - q[3]
    return np.stack([q[0] + start * top, q[0] + end * top,
                     q[3] + end * bottom, q[3] + start * bottom]).astype(np.float32)


def line_frame(quad: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(unit vector along the text, unit vector across it, line height) of a reading-order
    quadrilateral: the mean direction of its top and bottom edges and of its two sides."""
    q = np.asarray(quad, dtype=np.float32).reshape(4, 2)
    along = (q[1] - q[0]) + (q[2] - q[3])
    along = along / max(float(np.linalg.norm(along)), 1e-6)
    across = np.array([-along[1], along[0]], dtype=np.float32)
    height = (float(np.linalg.norm(q[3] - q[0])) + float(np.linalg.norm(q[2] - q[1]))) / 2
    return along, across, height


def continuing(first: np.ndarray, others: np.ndarray, max_gap: float = 2.0) -> np.ndarray:
    """Which of the quadrilaterals ``others`` (n x 4 x 2) go on along ``first``'s line: parallel,
    heights within 1.67x, centres within 0.4 of a line height across the line, and starting
    between one height before ``first``'s end (detected boxes are grown, so the pieces of a cut
    line overlap) and ``max_gap`` heights after it.  Vectorised: the pipeline asks it of every
    box of a plate."""
    a = np.asarray(first, np.float32).reshape(4, 2)
    q = np.asarray(others, np.float32).reshape(-1, 4, 2)
    along, across, ha = line_frame(a)
    directions = (q[:, 1] - q[:, 0]) + (q[:, 2] - q[:, 3])
    directions /= np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-6)
    hb = (np.linalg.norm(q[:, 3] - q[:, 0], axis=1) + np.linalg.norm(q[:, 2] - q[:, 1], axis=1)) / 2
    h = np.minimum(ha, hb)
    offset = np.abs((q.mean(axis=1) - a.mean(axis=0)) @ across)
    gap = (q @ along).min(axis=1) - float((a @ along).max())
    ratio = ha / np.maximum(hb, 1e-6)
    return ((directions @ along >= 0.95) & (ratio >= 0.6) & (ratio <= 1.67) & (offset <= 0.4 * h)
            & (gap >= -h) & (gap <= max_gap * h))


def joined_quad(quads: list[np.ndarray]) -> np.ndarray:
    """The rectangle along the first quadrilateral's line around all of ``quads``' corners, in
    reading order (top-left, top-right, bottom-right, bottom-left)."""
    along, across, _ = line_frame(quads[0])
    pts = np.concatenate([np.asarray(q, np.float32).reshape(-1, 2) for q in quads])
    a, c = pts @ along, pts @ across
    corners = [(a.min(), c.min()), (a.max(), c.min()), (a.max(), c.max()), (a.min(), c.max())]
    return np.array([x * along + y * across for x, y in corners], dtype=np.float32)
