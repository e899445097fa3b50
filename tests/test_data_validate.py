"""Validation checks, charset expansion and policies, the hash split, polygon crops."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.data.charset import (
    DEFAULT_CHARSET,
    CharsetError,
    expand_charset,
    replace_unknown,
)
from engine.data.formats import get_reader
from engine.data.formats.base import LabelLine, Sample
from engine.data.manifest import ManifestRecord
from engine.data.split import split_by_hash
from engine.data.validate import (
    ValidationOptions,
    canonical_polygon,
    find_duplicates,
    signed_area,
    validate_samples,
)
from engine.runtime.geometry import crop_polygon

EX = Path(__file__).resolve().parents[1] / "examples" / "datasets"
IMG = EX / "icdar2015" / "train" / "images" / "plate_1.jpg"  # 320x128


def sample(points, text="AB", ignore=False, image=IMG, raw=None, root=None):
    ln = LabelLine(points, text, ignore, "labels.txt", 7)
    return Sample(image, raw or image.name, "labels.txt", 7, [ln])


def run(samples, root=IMG.parent, **opt):
    return validate_samples(samples, root, "train", ValidationOptions(**opt))


def msgs(res):
    return [str(p) for p in res.problems]


# ---------------------------------------------------------------- charset


def test_expand_charset():
    assert DEFAULT_CHARSET == (
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz -:./%()#+,")
    assert expand_charset(" -:") == " -:"
    assert expand_charset("-a-c-") == "-abc"
    assert expand_charset("a-c\\-e") == "abc-e"
    assert expand_charset("А-Г0-2") == "АБВГ012"
    assert expand_charset("aab") == "ab"
    assert expand_charset(DEFAULT_CHARSET) == DEFAULT_CHARSET  # idempotent on expanded strings
    with pytest.raises(CharsetError, match="reversed"):
        expand_charset("z-a")
    with pytest.raises(CharsetError):
        expand_charset("")


def test_replace_unknown():
    assert replace_unknown("Café ü", "Cafeu ") == "Cafe u"
    assert replace_unknown("ab", "AB") == "AB"
    assert replace_unknown("A°B", "AB?", placeholder="?") == "A?B"
    assert replace_unknown("A°B", "AB") == "AB"


# ---------------------------------------------------------------- geometry


def test_valid_quad_and_clipping_tolerance():
    inside = [[-0.8, 0], [320.9, 0], [320.9, 20], [-0.8, 20]]
    res = run([sample(inside)])
    assert not res.problems
    assert res.records[0].lines[0].points == [[0, 0], [320, 0], [320, 20], [0, 20]]
    assert res.records[0].width == 320 and len(res.records[0].sha256) == 64


def test_polygon_problems_name_file_and_line():
    cases = {
        "polygon has 3 points (need >= 4)": [[0, 0], [10, 0], [10, 10]],
        "is outside the 320x128 image by more than 1 px": [[0, 0], [322, 0], [322, 9], [0, 9]],
        "polygon has zero area": [[5, 5], [50, 5], [50, 5], [5, 5]],
        "non-finite": [[0, 0], [float("nan"), 0], [5, 5], [0, 5]],
    }
    for want, pts in cases.items():
        res = run([sample(pts)])
        assert len(res.problems) == 1 and want in msgs(res)[0], (want, msgs(res))
        assert msgs(res)[0].startswith("labels.txt:7: ")


def test_canonical_polygon_orientation():
    cw = [[0, 0], [10, 0], [10, 5], [0, 5]]
    assert canonical_polygon([cw[0], cw[3], cw[2], cw[1]]) == cw  # ccw -> cw, same start
    assert canonical_polygon([[0, 0], [10, 5], [10, 0], [0, 5]]) == cw  # bow-tie re-sorted
    rotated = [[10, 5], [0, 5], [0, 0], [10, 0]]  # upside-down text keeps its first point
    assert canonical_polygon(rotated) == rotated
    assert signed_area(cw) > 0


# ---------------------------------------------------------------- paths and images


def test_path_escapes(tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(EX / "ppocrlabel", root)
    img_root = root / "images"
    outside = tmp_path / "secret.jpg"
    shutil.copy(IMG, outside)
    os.symlink(outside, img_root / "link.jpg")
    label = (img_root / "Label.txt").read_text().splitlines()
    box = label[0].split("\t")[1]
    label += [f"../../secret.jpg\t{box}", f"{outside}\t{box}", f"images/link.jpg\t{box}",
              f"C:\\data\\x.jpg\t{box}"]
    (img_root / "Label.txt").write_text("\n".join(label) + "\n")
    samples, parse_problems = get_reader("ppocrlabel").parse(img_root)
    assert not parse_problems
    res = run(samples, root=img_root)
    m = msgs(res)
    assert len(m) == 4, m
    assert "Label.txt:4: image path '../../secret.jpg' escapes the dataset root" in m[0]
    assert "Label.txt:5: absolute image path" in m[1]
    assert "Label.txt:6: image path 'images/link.jpg' resolves (through a symlink) outside" in m[2]
    assert "Label.txt:7: absolute image path 'C:/data/x.jpg'" in m[3]
    assert len(res.records) == 3


def test_missing_corrupt_duplicate_and_size_mismatch(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(IMG.read_bytes()[:400])  # truncated
    shutil.copy(IMG, tmp_path / "ok.jpg")
    pts = [[1, 1], [20, 1], [20, 9], [1, 9]]
    s_missing = sample(pts, image=tmp_path / "nope.jpg")
    s_bad = sample(pts, image=bad)
    s_ok = sample(pts, image=tmp_path / "ok.jpg")
    s_twice = sample(pts, image=tmp_path / "ok.jpg")
    s_size = sample(pts, image=IMG)
    s_size.size_hint = (128, 320)
    shutil.copy(IMG, tmp_path / IMG.name)
    s_size.image = tmp_path / IMG.name
    res = run([s_missing, s_bad, s_ok, s_twice, s_size], root=tmp_path)
    m = msgs(res)
    assert "image not found: nope.jpg" in m[0]
    assert "cannot decode image bad.jpg" in m[1]
    assert "is listed twice (also at labels.txt:7)" in m[2]
    assert "label says the image is 128x320 but plate_1.jpg is 320x128" in m[3]
    assert len(m) == 4 and len(res.records) == 1


def test_empty_text_and_tabs():
    pts = [[1, 1], [20, 1], [20, 9], [1, 9]]
    res = run([sample(pts, text="  ")])
    assert "empty transcription" in msgs(res)[0]
    res = run([sample(pts, text="A\tB")])
    assert "tab or newline" in msgs(res)[0]
    res = run([sample(pts, text="", ignore=True)])
    assert not res.problems


# ---------------------------------------------------------------- charset policies


def _texts():
    pts = [[1, 1], [20, 1], [20, 9], [1, 9]]
    lines = [LabelLine(pts, t, False, "gt.txt", i + 1) for i, t in
             enumerate(["OK 1", "Café", "50°C", "°°"])]
    return [Sample(IMG, IMG.name, "gt.txt", None, lines)]


def test_unknown_chars_error_reports_counts_and_places():
    res = run(_texts(), charset=DEFAULT_CHARSET)
    m = msgs(res)
    assert len(m) == 2
    assert m[0].startswith("gt.txt:3: character '°' (U+00B0) is not in the charset: 3 occurrence")
    assert "e.g. gt.txt:3, gt.txt:4" in m[0]
    assert m[1].startswith("gt.txt:2: character 'é'")
    assert res.unknown_chars == {"°": 3, "é": 1}


def test_unknown_chars_skip():
    res = run(_texts(), charset=DEFAULT_CHARSET, on_unknown_char="skip")
    assert not res.problems and res.skipped_lines == 3
    assert [ln.ignore for ln in res.records[0].lines] == [False, True, True, True]


def test_unknown_chars_replace():
    res = run(_texts(), charset=DEFAULT_CHARSET, on_unknown_char="replace")
    assert [(ln.text, ln.ignore) for ln in res.records[0].lines] == [
        ("OK 1", False), ("Cafe", False), ("50C", False), ("", True)]
    res = run(_texts(), charset=DEFAULT_CHARSET, on_unknown_char="replace", placeholder="#")
    assert [ln.text for ln in res.records[0].lines] == ["OK 1", "Cafe", "50#C", "##"]
    with pytest.raises(ValueError, match="not in the charset"):
        ValidationOptions(DEFAULT_CHARSET, "replace", placeholder="°")
    with pytest.raises(ValueError, match="on_unknown_char"):
        ValidationOptions(DEFAULT_CHARSET, "drop")


def test_find_duplicates():
    a = ManifestRecord("a.jpg", 1, 1, "x", "train")
    b = ManifestRecord("b.jpg", 1, 1, "x", "val")
    c = ManifestRecord("c.jpg", 1, 1, "y", "train")
    d = find_duplicates([a, b, c])
    assert d == [{"sha256": "x", "images": ["a.jpg", "b.jpg"], "splits": ["train", "val"],
                  "cross_split": True}]


# ---------------------------------------------------------------- split


def test_split_by_hash_deterministic_and_stable():
    names = [f"img_{i}.jpg" for i in range(400)]
    t1, v1 = split_by_hash(names, 0.2, seed=3)
    _, v2 = split_by_hash(list(reversed(names)), 0.2, seed=3)
    assert sorted(v1) == sorted(v2) and sorted(t1 + v1) == sorted(names)
    assert 50 < len(v1) < 110
    # adding images never moves existing ones
    _, v3 = split_by_hash(names + [f"new_{i}.jpg" for i in range(50)], 0.2, seed=3)
    assert set(v1) == {n for n in v3 if n.startswith("img_")}
    _, v4 = split_by_hash(names, 0.2, seed=4)
    assert set(v4) != set(v1)
    # tiny dataset still gets one val image; zero fraction gets none
    assert len(split_by_hash(["a", "b"], 0.01)[1]) == 1
    assert split_by_hash(["a", "b"], 0.0)[1] == []
    assert len(split_by_hash(["a", "b"], 0.99)[0]) == 1  # nor an empty train
    with pytest.raises(ValueError):
        split_by_hash(names, 1.0)


# ---------------------------------------------------------------- crops


def test_crop_polygon_axis_aligned_and_rotated():
    img = np.zeros((100, 200, 3), np.uint8)
    img[20:40, 30:130] = 255
    crop = crop_polygon(img, [[30, 20], [130, 20], [130, 40], [30, 40]])
    assert crop.shape == (20, 100, 3) and crop.mean() > 240
    # the same box labelled upside-down (first point = text's top-left) comes out rotated 180°
    grad = np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (100, 1, 3))
    up = crop_polygon(grad, [[30, 20], [130, 20], [130, 40], [30, 40]])
    down = crop_polygon(grad, [[130, 40], [30, 40], [30, 20], [130, 20]])
    assert up[10, 5, 0] < up[10, 95, 0] and down[10, 5, 0] > down[10, 95, 0]
    # a tall crop is turned to horizontal; an n-gon uses its min-area rectangle
    assert crop_polygon(img, [[0, 0], [10, 0], [10, 60], [0, 60]]).shape[:2] == (10, 60)
    hexa = [[30, 20], [80, 18], [130, 20], [130, 40], [80, 42], [30, 40]]
    assert crop_polygon(img, hexa).shape[1] >= 100


@settings(max_examples=30, deadline=None)
@given(st.floats(-80, 80))
def test_crop_of_rotated_text_has_box_size(angle):
    from engine.data.formats.labelstudio import rect_to_points

    img = np.full((300, 300, 3), 128, np.uint8)
    pts = rect_to_points(100, 120, 80, 20, angle % 360)
    pts = [[x + 0.0, y + 0.0] for x, y in pts]
    crop = crop_polygon(img, pts)
    assert abs(crop.shape[1] - 80) <= 1 and abs(crop.shape[0] - 20) <= 1
