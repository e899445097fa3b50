"""Synthetic nameplate generator: determinism, exact polygons, charset, ICDAR files, preview."""

from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.data.preview import write_contact_sheet
from engine.data.synth import (
    DEFAULT_CHARSET,
    NoFontsError,
    discover_fonts,
    generate_dataset,
    generate_sample,
    icdar_line,
    read_icdar_gt,
)
from engine.data.synth_cli import synth_cli


def _sample(seed: int, index: int, **kw):
    return generate_sample(np.random.default_rng([seed, index]), **kw)


def test_sample_shape_and_lines() -> None:
    img, lines = _sample(0, 0)
    assert img.shape == (480, 640, 3) and img.dtype == np.uint8
    assert any(not ln["ignore"] for ln in lines)
    for ln in lines:
        assert len(ln["points"]) == 4
        assert ln["ignore"] == (ln["text"] == "###")
        assert ln["text"]


def test_deterministic_in_memory() -> None:
    a_img, a_lines = _sample(7, 3)
    b_img, b_lines = _sample(7, 3)
    assert np.array_equal(a_img, b_img)
    assert a_lines == b_lines
    c_img, _ = _sample(7, 4)
    assert not np.array_equal(a_img, c_img)


def test_dataset_layout_and_byte_identical(tmp_path: Path) -> None:
    a = generate_dataset(tmp_path / "a", count=3, seed=11)
    b = generate_dataset(tmp_path / "b", count=3, seed=11, workers=2)
    assert [p.name for p in a] == [
        "nameplate_000000.jpg",
        "nameplate_000001.jpg",
        "nameplate_000002.jpg",
    ]
    assert sorted(p.name for p in (tmp_path / "a" / "gt").iterdir()) == [
        f"gt_{p.stem}.txt" for p in a
    ]
    for pa, pb in zip(a, b, strict=True):
        assert pa.read_bytes() == pb.read_bytes()
        ga = tmp_path / "a" / "gt" / f"gt_{pa.stem}.txt"
        gb = tmp_path / "b" / "gt" / f"gt_{pb.stem}.txt"
        assert ga.read_bytes() == gb.read_bytes()
    assert not list((tmp_path / "a").rglob("*.tmp"))
    img = cv2.imread(str(a[0]))
    assert img is not None and img.shape == (480, 640, 3)


def test_icdar_files_parse(tmp_path: Path) -> None:
    paths = generate_dataset(tmp_path, count=2, seed=3, size=(320, 240))
    for p in paths:
        gt = tmp_path / "gt" / f"gt_{p.stem}.txt"
        raw = gt.read_text(encoding="utf-8").splitlines()
        lines = read_icdar_gt(gt)
        assert len(raw) == len(lines) > 0
        for r, ln in zip(raw, lines, strict=True):
            coords = r.split(",", 8)[:8]
            assert all(c.lstrip("-").isdigit() for c in coords)
            for x, y in ln["points"]:
                assert -1 <= x <= 320 and -1 <= y <= 240
    # transcriptions with commas survive the round trip
    line = {"points": [[1, 2], [30, 2], [30, 12], [1, 12]], "text": "0.5, 1,2 A", "ignore": False}
    gt = tmp_path / "x.txt"
    gt.write_text(icdar_line(line) + "\n", encoding="utf-8")
    assert read_icdar_gt(gt)[0]["text"] == "0.5, 1,2 A"
    gt.write_text("1,2,3\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"x\.txt:1"):
        read_icdar_gt(gt)


def _poly_mask(
    lines: list[dict], shape: tuple[int, ...], which: Callable[[dict], bool]
) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    for ln in lines:
        if which(ln):
            cv2.fillPoly(
                m, [np.round(np.array(ln["points"]) * 16).astype(np.int32)], 255, cv2.LINE_8, 4
            )
    return m


@pytest.mark.parametrize("level", ["line", "word"])
def test_polygons_are_exact(level: str) -> None:
    """Ink rendered into the plate and warped with the image's homography lies inside the
    labelled polygons, and every readable polygon really contains ink."""
    for i in range(6):
        _img, lines, mask = _sample(5, i, level=level, return_mask=True)
        ink = mask > 60
        inside_frame = [
            ln
            for ln in lines
            if all(-0.5 <= x <= 639.5 and -0.5 <= y <= 479.5 for x, y in ln["points"])
        ]
        allp = cv2.dilate(_poly_mask(lines, mask.shape, lambda _: True), np.ones((3, 3), np.uint8))
        outside = ink & (allp == 0)
        # clipped (ignored) quads at the frame border may miss a sliver of ink; nothing else may
        assert outside.sum() <= max(3, 0.01 * ink.sum()), (i, outside.sum(), ink.sum())
        for ln in inside_frame:
            if ln["ignore"]:
                continue
            one = _poly_mask([ln], mask.shape, lambda _: True) > 0
            assert one.sum() > 0
            cover = (ink & one).sum() / one.sum()
            assert cover > 0.05, (i, ln)


def test_word_level_splits_lines() -> None:
    _, lines = _sample(2, 1, level="line")
    _, words = _sample(2, 1, level="word")
    readable_lines = [ln for ln in lines if not ln["ignore"]]
    readable_words = [w for w in words if not w["ignore"]]
    assert len(readable_words) >= len(readable_lines)
    assert all(" " not in w["text"] for w in readable_words)


@pytest.mark.parametrize(
    "charset", ["0123456789", string.digits + string.ascii_uppercase + " -./", DEFAULT_CHARSET]
)
def test_charset_respected(charset: str) -> None:
    allowed = set(charset)
    n_text = 0
    for i in range(5):
        _, lines = _sample(9, i, charset=charset)
        for ln in lines:
            if not ln["ignore"]:
                n_text += 1
                assert set(ln["text"]) <= allowed, ln["text"]
    assert n_text > 0


def test_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="style"):
        generate_sample(rng, style="receipt")
    with pytest.raises(ValueError, match="level"):
        generate_sample(rng, level="char")
    with pytest.raises(ValueError, match="charset"):
        generate_sample(rng, charset=" .,")


def test_fonts() -> None:
    faces = discover_fonts()
    assert len({f.family for f in faces}) > 1
    with pytest.raises(NoFontsError, match="fonts-dejavu-core"):
        discover_fonts(("/nonexistent/fonts",), fallback=False)


def test_contact_sheet_and_cli(tmp_path: Path) -> None:
    assert (
        synth_cli(
            [
                "--count",
                "2",
                "--seed",
                "1",
                "--out",
                str(tmp_path / "ds"),
                "--size",
                "320x240",
                "--preview",
                str(tmp_path / "sheet.png"),
            ]
        )
        == 0
    )
    assert (tmp_path / "sheet.png").stat().st_size > 1000
    paths = sorted((tmp_path / "ds" / "images").glob("*.jpg"))
    assert len(paths) == 2
    img, lines = _sample(1, 0)
    records = [
        {
            "image": str(paths[0]),
            "lines": read_icdar_gt(tmp_path / "ds" / "gt" / f"gt_{paths[0].stem}.txt"),
        }
    ]
    out = write_contact_sheet([*records, (img, lines)], tmp_path / "s2.png", cols=2, thumb=160)
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        write_contact_sheet([], tmp_path / "s3.png")
