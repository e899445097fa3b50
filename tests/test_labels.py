"""DB label geometry on hand-checkable cases.

The reference rectangle is 40×20 at (20, 30)-(60, 50): area 800, perimeter 120, so with r = 0.4
the Vatti offset is D = 800 · (1 - 0.16) / 120 = 5.6 px.  Shrunk: x 25.6..54.4, y 35.6..44.4 ->
pixel centres 26..54 × 36..44; dilated: 14.4..65.6 × 24.4..55.6.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from engine.models.dbnet.labels import make_db_targets, offset_polygon, shrink_distance

RECT = np.array([[20, 30], [60, 30], [60, 50], [20, 50]], dtype=float)


def test_shrink_distance_matches_formula():
    assert shrink_distance(RECT, 0.4) == pytest.approx(5.6)


def test_shrink_map_of_rectangle():
    t = make_db_targets([RECT], [False], 80, 100)
    assert set(t) == {"shrink_map", "shrink_mask", "thresh_map", "thresh_mask"}
    for v in t.values():
        assert v.dtype == np.float32 and v.shape == (80, 100)
    ys, xs = np.nonzero(t["shrink_map"])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (26, 54, 36, 44)
    assert t["shrink_map"].sum() == 29 * 9  # a filled axis-aligned rectangle
    assert np.all(t["shrink_mask"] == 1.0)  # nothing ignored: background is supervised


def test_threshold_map_of_rectangle():
    t = make_db_targets([RECT], [False], 80, 100, thresh_min=0.3, thresh_max=0.7)
    tm, mask = t["thresh_map"], t["thresh_mask"]
    # on the border the target is thresh_max, at the centre (10 px from any edge > D) thresh_min
    assert tm[40, 20] == pytest.approx(0.7)
    assert tm[30, 40] == pytest.approx(0.7)
    assert tm[40, 40] == pytest.approx(0.3)
    # 3 px from the left edge, inside and outside: 0.3 + 0.4 * (1 - 3 / 5.6)
    expect = 0.3 + 0.4 * (1 - 3 / 5.6)
    assert tm[40, 23] == pytest.approx(expect, abs=1e-5)
    assert tm[40, 17] == pytest.approx(expect, abs=1e-5)
    # outside the dilated region: thresh_min and unsupervised
    assert tm[5, 5] == pytest.approx(0.3) and mask[5, 5] == 0
    ys, xs = np.nonzero(mask)
    assert abs(xs.min() - 14.4) <= 1 and abs(xs.max() - 65.6) <= 1
    assert abs(ys.min() - 24.4) <= 1 and abs(ys.max() - 55.6) <= 1
    assert tm.min() >= 0.3 - 1e-6 and tm.max() <= 0.7 + 1e-6


def test_ignored_and_small_polygons_are_masked_out():
    small = np.array([[70, 10], [90, 10], [90, 15], [70, 15]], dtype=float)  # 5 px tall < 8
    t = make_db_targets([RECT, small, RECT + np.array([0, 20])], [True, False, False], 80, 100)
    # the ignored rectangle: no positives, masked out, no threshold supervision
    assert t["shrink_map"][30:51, 20:61].sum() == 0
    assert t["shrink_mask"][40, 40] == 0 and t["shrink_mask"][30, 20] == 0
    # the too-small one: masked out too
    assert t["shrink_map"][10:16, 70:91].sum() == 0 and t["shrink_mask"][12, 80] == 0
    # the third is kept: positives in its shrunk core, mask 1 there
    assert t["shrink_map"][60, 40] == 1 and t["shrink_mask"][60, 40] == 1
    assert t["thresh_mask"][60, 20] == 1


def test_no_polygons_gives_empty_targets():
    t = make_db_targets([], [], 32, 48)
    assert t["shrink_map"].sum() == 0 and t["shrink_mask"].min() == 1
    assert t["thresh_mask"].sum() == 0 and np.allclose(t["thresh_map"], 0.3)


def test_polygon_partly_outside_the_image_and_degenerate_input():
    off = RECT + np.array([70, 0])  # x 90..130 on a 100-wide image
    line = np.array([[5, 5], [30, 5], [30, 5], [5, 5]], dtype=float)  # zero area
    t = make_db_targets([off, line], None, 80, 100)
    assert t["shrink_map"][40, 95:].sum() > 0
    assert np.isfinite(t["thresh_map"]).all()
    assert t["shrink_mask"][5, 10] == 0  # the degenerate polygon is masked, not labelled
    with pytest.raises(ValueError, match="ignore flags"):
        make_db_targets([RECT], [False, True], 10, 10)


def test_offset_polygon_round_trip_area():
    shrunk = offset_polygon(RECT, -5.6)
    assert len(shrunk) == 1
    w = shrunk[0][:, 0].max() - shrunk[0][:, 0].min()
    h = shrunk[0][:, 1].max() - shrunk[0][:, 1].min()
    assert w == pytest.approx(28.8, abs=0.05) and h == pytest.approx(8.8, abs=0.05)
    assert offset_polygon(np.array([[0, 0], [10, 0], [10, 2], [0, 2]], float), -3) == []


def test_gap_weight_marks_the_background_between_neighbours_only():
    # RECT and its twin 10 px to its right: shrunk, 21.2 px apart (54.4 to 75.6), 1.06 text heights
    twin = RECT + np.array([50, 0])
    t = make_db_targets([RECT, twin], [False, False], 80, 160, gap_weight=10)
    w = t["shrink_weight"]
    assert w.dtype == np.float32 and w.shape == (80, 160)
    gap = w[40, 56:75]
    # midway: 1 + 10 * exp(-(21.2 / 20)^2 / (2 * 0.5^2)) = 2.06, up to the distance transform's
    # pixel rounding
    assert gap.min() > 1.5 and abs(float(w[40, 65]) - 2.06) < 0.2
    assert np.all(w[t["shrink_map"] > 0] == 1.0)  # text pixels keep their weight
    assert w[5, 5] == pytest.approx(1.0, abs=1e-3) and w[75, 150] == pytest.approx(1.0, abs=1e-3)
    # a text alone has no neighbour to be split from
    alone = make_db_targets([RECT], [False], 80, 160, gap_weight=10)["shrink_weight"]
    assert np.all(alone == 1.0)
    # ignored texts are no neighbours either, and the weight is off by default
    ignored = make_db_targets([RECT, twin], [False, True], 80, 160, gap_weight=10)["shrink_weight"]
    assert np.all(ignored == 1.0)
    assert "shrink_weight" not in make_db_targets([RECT, twin], [False, False], 80, 160)
    # a text cut off by a training crop's edge entirely (its polygon lies outside the image)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        beyond = make_db_targets([RECT, RECT + np.array([500, 0])], None, 80, 160, gap_weight=10)
    assert np.all(beyond["shrink_weight"] == 1.0)


def test_farther_neighbours_weigh_less():
    near = make_db_targets([RECT, RECT + np.array([50, 0])], None, 80, 200, gap_weight=10)["shrink_weight"]
    far = make_db_targets([RECT, RECT + np.array([80, 0])], None, 80, 200, gap_weight=10)["shrink_weight"]
    assert near[40, 57:66].mean() > far[40, 70:85].mean() > 1.0
