"""Synthetic equipment-nameplate photos with exact text polygons (ICDAR 2015 layout on disk).

Nothing can be downloaded where this engine runs, so it makes its own training data.  One sample
is: field grammars -> a flat plate (material, layout, text styles, dirt) -> a cluttered machine
background -> a homography (tilt, rotation, scale) that warps the plate into the photo -> camera
degradations (shadow, glare, blur, noise, low contrast, JPEG).  The text quads are mapped with
the same homography as the pixels, so labels are exact; lines that leave the frame or become too
small / washed out to read are marked ignore ("###") instead of being silently wrong.

Determinism: each image uses ``np.random.default_rng([seed, index])`` and noise comes from
banks built from a fixed seed, so a dataset is byte-identical for a seed however many workers
produce it.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .content import DEFAULT_CHARSET, Sanitizer, make_content
from .effects import (
    background,
    finish,
    jpeg,
    mul_map,
    photometric,
    plate_homography,
    transform_points,
)
from .fonts import FontPicker, discover_fonts
from .layout import compose_plate

STYLES = ("nameplate",)
LEVELS = ("line", "word")
MIN_TEXT_PX = 10.0  # text quads (padded ink) shorter than this in the photo are labelled ignore
MIN_CONTRAST = 22.0  # grey levels between dark and bright parts of a readable line (after blur)
IGNORE_TEXT = "###"

Line = dict[str, Any]  # {"points": [[x, y] x4], "text": str, "ignore": bool}


@lru_cache(maxsize=1)
def tune_allocator() -> bool:
    """Keep freed image buffers in the heap instead of returning them to the OS.

    Every sample allocates a few dozen 1-4 MB float arrays; glibc serves those with mmap and
    unmaps them on free, so each new array page-faults in fresh zeroed pages.  On the machines
    measured that doubled the time per image (~50 ms -> ~25 ms with this).  Raising the mmap and
    trim thresholds (32 MB / 128 MB) keeps the pages.  No-op off glibc or when
    ENGINE_SYNTH_NO_MALLOPT is set.  Returns whether the thresholds were changed.
    """
    if os.environ.get("ENGINE_SYNTH_NO_MALLOPT") or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 << 20) == 1
        return libc.mallopt(m_trim_threshold, 128 << 20) == 1 and ok
    except (OSError, AttributeError):
        return False


@lru_cache(maxsize=16)
def _sanitizer(charset: str) -> Sanitizer:
    return Sanitizer(charset)


@lru_cache(maxsize=8)
def _picker(font_dirs: tuple[str, ...] | None = None) -> FontPicker:
    """Faces from the system font directories, or from ``font_dirs`` alone (a held-out set of
    typefaces no training split uses: bench/unseen_fonts.py)."""
    if font_dirs is None:
        return FontPicker()
    return FontPicker(discover_fonts(tuple(font_dirs), fallback=False))


def _check(style: str, level: str, charset: str) -> None:
    if style not in STYLES:
        raise ValueError(f"unknown synthetic style {style!r}; known styles: {', '.join(STYLES)}")
    if level not in LEVELS:
        raise ValueError(f"unknown annotation level {level!r}; use one of {', '.join(LEVELS)}")
    if not any(c.isalnum() for c in charset):
        raise ValueError(f"charset {charset!r} has no letters or digits to render")


def _quad_height(q: np.ndarray) -> float:
    return float((np.linalg.norm(q[3] - q[0]) + np.linalg.norm(q[2] - q[1])) / 2)


def line_contrast(gray: np.ndarray, q: np.ndarray) -> float:
    """Grey-level spread (95th - 5th percentile) inside a text quad, read from the quad itself
    (rectified to 12 px high) so that neighbouring text or borders do not count."""
    w = max(4, int(np.linalg.norm(q[1] - q[0]) * 12 / max(_quad_height(q), 1)))
    dst = np.array([[0, 0], [w - 1, 0], [w - 1, 11], [0, 11]], np.float32)
    m = cv2.getPerspectiveTransform(q.astype(np.float32), dst)
    crop = cv2.warpPerspective(
        gray, m, (w, 12), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    lo, hi = np.percentile(crop, (5, 95))
    return float(hi - lo)


def _label(
    q: np.ndarray,
    text: str,
    w: int,
    h: int,
    glare_map: np.ndarray | None,
    min_px: float = MIN_TEXT_PX,
    gray: np.ndarray | None = None,
) -> Line | None:
    """A label for a quad in photo coordinates, or None when it is entirely outside."""
    lo, hi = -0.5, np.array([w - 0.5, h - 0.5])
    inside = np.all((q >= lo) & (q <= hi), axis=1)
    ignore = False
    if not inside.all():
        if (
            q[:, 0].max() < lo
            or q[:, 1].max() < lo
            or q[:, 0].min() > hi[0]
            or q[:, 1].min() > hi[1]
        ):
            return None
        ignore = True  # cut by the frame: the visible part is not the transcription
        q = np.clip(q, lo, hi)
    if _quad_height(q) < min_px:
        ignore = True
    if glare_map is not None and not ignore:
        cx, cy = np.clip(q.mean(0), 0, [w - 1, h - 1]).astype(int)
        if glare_map[cy, cx] > 0.55:
            ignore = True
    if gray is not None and not ignore and line_contrast(gray, q) < MIN_CONTRAST:
        ignore = True  # washed out by glare / shadow / low contrast: the pixels tell
    return {
        "points": [[float(x), float(y)] for x, y in q],
        "text": IGNORE_TEXT if ignore else text,
        "ignore": ignore,
    }


def _warp(img: np.ndarray, hm: np.ndarray, w: int, h: int) -> np.ndarray:
    """Plate -> photo with the homography used for the labels (bilinear, zero outside)."""
    return np.asarray(
        cv2.warpPerspective(img, hm, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    )


def _plate_size(rng: np.random.Generator, w: int, h: int) -> tuple[int, int, bool]:
    closeup = rng.random() < 0.12
    aspect = rng.uniform(0.65, 0.95) if rng.random() < 0.15 else rng.uniform(1.15, 2.3)
    # people photograph a plate to read it: it usually fills most of the frame
    if closeup:
        frac = rng.uniform(0.75, 1.0)
    else:
        frac = rng.uniform(0.65, 0.98) if rng.random() < 0.75 else rng.uniform(0.4, 0.65)
    wp = frac * min(w, h * aspect)
    hp = wp / aspect
    return max(int(wp), 120), max(int(hp), 80), closeup


def generate_sample(
    rng: np.random.Generator,
    charset: str = DEFAULT_CHARSET,
    size: tuple[int, int] = (640, 480),
    level: str = "line",
    style: str = "nameplate",
    return_mask: bool = False,
    font_dirs: tuple[str, ...] | None = None,
) -> tuple[np.ndarray, list[Line]] | tuple[np.ndarray, list[Line], np.ndarray]:
    """One synthetic photo: (RGB uint8 HxWx3, lines) where lines are manifest-style dicts
    ``{"points": 4x[x, y] clockwise from the text's top-left, "text", "ignore"}``.

    ``size`` is (width, height).  With ``return_mask`` a third element is the text ink mask
    (uint8 HxW) warped by the same homography, before photometric effects (used by tests).
    ``font_dirs``: render only with the fonts found there (default: the system's).
    """
    _check(style, level, charset)
    tune_allocator()
    w, h = int(size[0]), int(size[1])
    content = make_content(rng, _sanitizer(charset))
    wp, hp, closeup = _plate_size(rng, w, h)
    plate = compose_plate(rng, content, wp, hp, _picker(font_dirs), with_mask=return_mask)
    scene = background(rng, h, w)
    hm = plate_homography(rng, wp, hp, w, h, closeup)
    pimg = _warp(plate.image, hm, w, h)
    alpha = _warp(plate.alpha, hm, w, h)
    if rng.random() < 0.7:  # the plate sits on the machine and shades it a little
        d = float(rng.integers(1, 5))
        sh = cv2.GaussianBlur(alpha, (0, 0), rng.uniform(1.5, 4))
        sh = cv2.warpAffine(sh, np.array([[1, 0, d], [0, 1, d]], np.float32), (w, h))
        scene = mul_map(scene, 1 - sh * np.float32(rng.uniform(0.2, 0.5)))
    img = cv2.add(scene, mul_map(cv2.subtract(pimg, scene), alpha))
    img, glare_map, blur = photometric(rng, img, alpha, hard=rng.random() < 0.15)
    min_px = MIN_TEXT_PX + 4.5 * blur  # blurrier photo: larger text needed to read it
    out = finish(img)
    if rng.random() < 0.8:
        out = jpeg(rng, out)
    gray = cv2.blur(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY), (3, 3))
    lines: list[Line] = []
    for pt in plate.texts:
        if level == "word" and not pt.ignore and pt.words:
            parts = [(t, q) for t, q in pt.words]
        else:
            parts = [(pt.text, pt.quad)]
        for text, quad in parts:
            lab = _label(transform_points(quad, hm), text, w, h, glare_map, min_px, gray)
            if lab is None:
                continue
            if pt.ignore:
                lab["text"], lab["ignore"] = IGNORE_TEXT, True
            lines.append(lab)
    if return_mask:
        assert plate.mask is not None
        mask = _warp(plate.mask, hm, w, h)
        return out, lines, mask
    return out, lines


# ------------------------------------------------------------------ files
def icdar_line(line: Line) -> str:
    """``x1,y1,...,x4,y4,transcription`` with integer pixel coordinates (ICDAR 2015)."""
    coords = ",".join(str(round(v)) for p in line["points"] for v in p)
    return f"{coords},{IGNORE_TEXT if line['ignore'] else line['text']}"


def _rounded_area(points: Any) -> float:
    pts = np.round(np.asarray(points, dtype=np.float64))
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_one(args: tuple[Path, str, int, int, str, tuple[int, int], str]) -> Path:
    out_dir, style, seed, index, charset, size, level = args
    rng = np.random.default_rng([seed, index])
    img, lines = generate_sample(rng, charset=charset, size=size, level=level, style=style)[:2]
    stem = f"{style}_{index:06d}"
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]
    )
    if not ok:  # pragma: no cover
        raise RuntimeError(f"could not encode {stem}.jpg")
    img_path = out_dir / "images" / f"{stem}.jpg"
    _atomic_write(img_path, buf.tobytes())
    # Integer coordinates can collapse a sliver clipped at the frame edge to zero area: drop it
    # (the validator rightly rejects degenerate polygons).
    gt = "".join(icdar_line(ln) + "\n" for ln in lines if _rounded_area(ln["points"]) >= 4.0)
    _atomic_write(out_dir / "gt" / f"gt_{stem}.txt", gt.encode("utf-8"))
    return img_path


def _init_worker() -> None:
    cv2.setNumThreads(1)


def generate_dataset(
    out_dir: str | os.PathLike[str],
    style: str = "nameplate",
    count: int = 100,
    seed: int = 0,
    charset: str = DEFAULT_CHARSET,
    size: tuple[int, int] = (640, 480),
    level: str = "line",
    workers: int = 1,
    start: int = 0,
) -> list[Path]:
    """Write ``count`` images to ``out_dir/images/<stem>.jpg`` and ICDAR 2015 labels to
    ``out_dir/gt/gt_<stem>.txt``; return the image paths in index order.

    Image ``i`` depends only on (seed, start + i), so datasets are reproducible and can be
    extended or split across machines with ``start``.
    """
    _check(style, level, charset)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "gt").mkdir(parents=True, exist_ok=True)
    jobs = [
        (out, style, int(seed), start + i, charset, (int(size[0]), int(size[1])), level)
        for i in range(count)
    ]
    if workers <= 1 or count < 2:
        return [_write_one(j) for j in jobs]
    # spawn, not fork: a forked child inherits OpenCV's thread-pool locks and can deadlock
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as ex:
        return list(ex.map(_write_one, jobs, chunksize=max(1, count // (workers * 8))))


def read_icdar_gt(path: str | os.PathLike[str]) -> list[Line]:
    """Parse an ICDAR 2015 gt file (8 coordinates, then the transcription, which may contain
    commas).  Errors name the file and line."""
    lines = []
    p = Path(path)
    for n, raw in enumerate(p.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not raw.strip():
            continue
        parts = raw.split(",", 8)
        if len(parts) != 9:
            raise ValueError(f"{p}:{n}: expected 8 coordinates and a transcription, got {raw!r}")
        try:
            xy = [float(v) for v in parts[:8]]
        except ValueError as e:
            raise ValueError(f"{p}:{n}: bad coordinate in {raw!r}") from e
        text = parts[8]
        lines.append(
            {
                "points": [xy[i : i + 2] for i in range(0, 8, 2)],
                "text": text,
                "ignore": text == IGNORE_TEXT,
            }
        )
    return lines
