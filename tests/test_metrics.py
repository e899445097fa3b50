"""Metrics against hand-computed cases: ICDAR 2015 matching, ignored regions, recognition, e2e."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from engine.training.metrics import (
    detection_metrics,
    edit_distance,
    end_to_end_metrics,
    match_image,
    polygon_area,
    polygon_iou,
    recognition_metrics,
)


def box(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def gt(points, text="TEXT", ignore=False) -> dict:
    return {"points": points, "text": text, "ignore": ignore}


def test_polygon_area_and_iou() -> None:
    assert polygon_area(box(0, 0, 10, 10)) == pytest.approx(100)
    assert polygon_iou(box(0, 0, 10, 10), box(0, 0, 10, 6)) == pytest.approx(0.6)
    assert polygon_iou(box(0, 0, 10, 10), box(20, 20, 30, 30)) == 0.0
    # A rotated square against cv2's convex intersection.
    a = np.array(box(0, 0, 10, 10), dtype=np.float32)
    c, s = math.cos(0.3), math.sin(0.3)
    b = ((a - 5) @ np.array([[c, -s], [s, c]], dtype=np.float32).T + 7).astype(np.float32)
    inter, _ = cv2.intersectConvexConvex(a, b)
    expected = inter / (200 - inter)
    assert polygon_iou(a, b) == pytest.approx(expected, rel=1e-3)
    # Non-quadrilateral polygon (an L shape, area 75) and a self-intersecting bow tie (area 50).
    ell = [[0, 0], [10, 0], [10, 5], [5, 5], [5, 10], [0, 10]]
    assert polygon_area(ell) == pytest.approx(75)
    assert polygon_area([[0, 0], [10, 10], [10, 0], [0, 10]]) == pytest.approx(50)
    assert polygon_area([[0, 0], [1, 1]]) == 0.0


def test_iou_threshold_is_strict_like_the_official_script() -> None:
    g = [gt(box(0, 0, 10, 10))]
    assert detection_metrics([g], [[box(0, 0, 10, 5)]])["recall"] == 0.0  # IoU exactly 0.5
    assert detection_metrics([g], [[box(0, 0, 10, 6)]])["recall"] == 1.0  # IoU 0.6


def test_one_to_one_matching() -> None:
    g = [gt(box(0, 0, 10, 10))]
    # Two detections on the same GT: only one is matched, the other is a false positive.
    m = detection_metrics([g], [[box(0, 0, 10, 10), box(0, 0, 10, 9)]])
    assert (m["precision"], m["recall"]) == (0.5, 1.0)
    assert m["hmean"] == pytest.approx(2 / 3)
    # One detection spanning two GTs (IoU 0.5 minus the gap with each): no match at all.
    g2 = [gt(box(0, 0, 10, 10)), gt(box(12, 0, 22, 10))]
    m2 = detection_metrics([g2], [[box(0, 0, 22, 10)]])
    assert (m2["precision"], m2["recall"], m2["hmean"]) == (0.0, 0.0, 0.0)
    # A detection can serve one GT only, even when it overlaps two by > 0.5.
    g3 = [gt(box(0, 0, 10, 10)), gt(box(0, 0, 10, 9))]
    m3 = match_image(g3, [box(0, 0, 10, 10)])
    assert [(i, j) for i, j, _ in m3.pairs] == [(0, 0)]


def test_ignored_regions() -> None:
    care = gt(box(0, 0, 10, 10))
    dont = gt(box(20, 0, 30, 10), text="###")  # '###' is don't-care even without ignore=True
    dets = [
        box(0, 0, 10, 10),  # matches the care GT
        box(16, 0, 26, 10),  # 60% of its area inside the ### region -> discarded
        box(15, 0, 25, 10),  # exactly 50% -> kept (rule is "> 0.5") -> false positive
        box(20, 0, 30, 10),  # on the ### region -> discarded
    ]
    m = match_image([care, dont], dets)
    assert m.det_ignored == [False, True, False, True]
    assert m.gt_care == 1 and m.det_care == 2
    out = detection_metrics([[care, dont]], [dets])
    assert out["precision"] == 0.5 and out["recall"] == 1.0
    assert out["hmean"] == pytest.approx(2 / 3)
    # An image with only ignored GT and a detection on it counts for nothing.
    empty = detection_metrics([[gt(box(0, 0, 10, 10), ignore=True)]], [[box(0, 0, 10, 10)]])
    assert (empty["gt"], empty["det"], empty["hmean"]) == (0.0, 0.0, 0.0)


def test_totals_are_summed_over_images_not_averaged() -> None:
    gts = [
        [gt(box(0, 0, 10, 10))],
        [gt(box(0, 0, 10, 10)), gt(box(20, 0, 30, 10)), gt(box(40, 0, 50, 10))],
    ]
    dets = [[box(0, 0, 10, 10)], [box(0, 0, 10, 10)]]
    out = detection_metrics(gts, dets)
    assert out["recall"] == pytest.approx(2 / 4)
    assert out["precision"] == 1.0
    # db_boxes-style (points, score) tuples are accepted as detections.
    assert detection_metrics(gts, [[(np.array(box(0, 0, 10, 10)), 0.9)], []])["recall"] == 0.25


def test_recognition_metrics_hand_computed() -> None:
    preds = ["AB 12", "CD", "E F"]
    gts = ["AB 12", "CX", "EF"]
    out = recognition_metrics(preds, gts)
    assert out["line_accuracy"] == pytest.approx(1 / 3)
    assert out["whitespace_insensitive_accuracy"] == pytest.approx(2 / 3)
    assert out["word_accuracy"] == pytest.approx(2 / 4)  # AB, 12 right; CX, EF wrong
    assert out["cer"] == pytest.approx(2 / 9)  # one substitution + one insertion over 9 chars
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    one_word = recognition_metrics(["A1", "B2", "C"], ["A1", "B3", "C"])
    assert one_word["word_accuracy"] == one_word["line_accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        recognition_metrics(["a"], [])


def test_end_to_end_metrics() -> None:
    img1 = [gt(box(0, 0, 10, 10), "HELLO"), gt(box(20, 0, 30, 10), "###", ignore=True)]
    det1 = [(box(0, 0, 10, 10), "HELLO"), (box(20, 0, 30, 10), "XX")]
    img2 = [gt(box(0, 0, 10, 10), "12"), gt(box(20, 0, 30, 10), "34")]
    det2 = [
        {"points": box(0, 0, 10, 10), "text": "13"},
        {"points": box(20, 0, 30, 10), "text": "34"},
        {"points": box(40, 0, 50, 10), "text": "56"},
    ]
    out = end_to_end_metrics([img1, img2], [det1, det2])
    # care GTs: HELLO, 12, 34 -> correct HELLO, 34; care dets: 1 + 3
    assert out["e2e_line_accuracy"] == pytest.approx(2 / 3)
    assert out["e2e_precision"] == pytest.approx(2 / 4)
    p, r = 0.5, 2 / 3
    assert out["e2e_hmean"] == pytest.approx(2 * p * r / (p + r))
    assert out["e2e_detected"] == 3.0
