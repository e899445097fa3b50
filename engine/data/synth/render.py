"""Nameplate rendering: layout of the fields and drawing of printed / engraved / embossed /
stamped / dot-matrix text onto a procedural metal or label surface.

Everything here happens in *plate* coordinates (pixels of the flat, unwarped plate).  Every text
item returns its exact quadrilateral (the ink box, slightly padded) in those coordinates; the
generator then warps the plate into the photo and maps the quads with the very same matrix, so
the labels stay exact after perspective and rotation.

Text is drawn per item into a small patch (PIL, basic layout: identical on machines with and
without libraqm), then composited into the plate with the item's style: compositing a patch is
far cheaper than full-plate masks, which matters for the 20 images/s budget.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .effects import (
    bank_crop,
)
from .fonts import FontFace

Rng = np.random.Generator
_WORD = re.compile(r"\S+")
_BASIC = ImageFont.Layout.BASIC


def _font(face: FontFace, size: int) -> ImageFont.FreeTypeFont:
    return _font_cached(face.path, int(size))


_FONT_CACHE: dict[tuple[str, int], ImageFont.FreeTypeFont] = {}


def _font_cached(path: str, size: int) -> ImageFont.FreeTypeFont:
    key = (path, max(4, size))
    f = _FONT_CACHE.get(key)
    if f is None:
        if len(_FONT_CACHE) > 4096:
            _FONT_CACHE.clear()
        f = _FONT_CACHE[key] = ImageFont.truetype(path, key[1], layout_engine=_BASIC)
    return f


_BBOX_CACHE: dict[tuple[str, int, str], tuple[int, int, int, int]] = {}


def text_bbox(face: FontFace, size: int, text: str) -> tuple[int, int, int, int]:
    """Cached ``font.getbbox(text)`` (layout measures the same strings several times)."""
    key = (face.path, int(size), text)
    bb = _BBOX_CACHE.get(key)
    if bb is None:
        if len(_BBOX_CACHE) > 50000:
            _BBOX_CACHE.clear()
        bb = _BBOX_CACHE[key] = tuple(int(v) for v in _font(face, size).getbbox(text))  # type: ignore[assignment]
    return bb  # type: ignore[return-value]


@dataclass
class TextItem:
    """A string to draw: PIL origin (ox, oy), face, size and drawing style."""

    text: str
    face: FontFace
    size: int
    ox: float
    oy: float
    style: str  # print | engrave | emboss | stamp | dot | laser
    angle: float = 0.0
    ignore: bool = False


@dataclass
class PlateText:
    """Where a text item ended up on the plate: line quad and per-word quads (4x2, clockwise)."""

    text: str
    quad: np.ndarray
    words: list[tuple[str, np.ndarray]] = field(default_factory=list)
    ignore: bool = False


def ink_box(item: TextItem) -> tuple[float, float, float, float]:
    """Ink bounding box (x0, y0, x1, y1) of an item in plate pixel-edge coordinates."""
    lft, t, r, b = text_bbox(item.face, item.size, item.text)
    return item.ox + lft, item.oy + t, item.ox + r, item.oy + b


def _quad(box: tuple[float, float, float, float], pad: float) -> np.ndarray:
    x0, y0, x1, y1 = box
    # pixel-edge box -> pixel-centre coordinates (-0.5), padded
    x0, y0, x1, y1 = x0 - 0.5 - pad, y0 - 0.5 - pad, x1 - 0.5 + pad, y1 - 0.5 + pad
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``a`` moved by (dy, dx) pixels, zero filled (patches are padded, so nothing is lost)."""
    out = np.zeros_like(a)
    h, w = a.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = a[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


_DOT_KERNELS: dict[int, np.ndarray] = {}


def _dot_kernel(p: int) -> np.ndarray:
    k = _DOT_KERNELS.get(p)
    if k is None:
        yy, xx = np.mgrid[0:p, 0:p].astype(np.float32) - (p - 1) / 2
        k = np.clip(p * 0.42 - np.sqrt(xx**2 + yy**2) + 0.5, 0, 1)
        _DOT_KERNELS[p] = k
    return k


def _patch(
    item: TextItem, pad: int
) -> tuple[np.ndarray, list[tuple[str, tuple[float, float, float, float]]]]:
    """Alpha patch (float32 0..1) of an item and word boxes in patch pixel-edge coordinates.
    The patch's (pad, pad) corresponds to the item's ink box top-left."""
    font = _font(item.face, item.size)
    text = item.text
    lft, t, r, b = text_bbox(item.face, item.size, text)
    w, h = r - lft + 2 * pad, b - t + 2 * pad
    img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(img).text((pad - lft, pad - t), text, font=font, fill=255)
    a = np.asarray(img, dtype=np.float32) * np.float32(1 / 255)
    words = []
    for m in _WORD.finditer(text):
        ox = font.getlength(text[: m.start()]) if m.start() else 0.0
        wl, wt, wr, wb = font.getbbox(m.group())
        words.append(
            (m.group(), (pad - lft + ox + wl, pad - t + wt, pad - lft + ox + wr, pad - t + wb))
        )
    return a, words


def _dot_patch(
    item: TextItem, pad: int
) -> tuple[np.ndarray, list[tuple[str, tuple[float, float, float, float]]], int]:
    """Dot-matrix rendering: the text drawn unaliased at ~7-9 px cap height, each pixel a dot."""
    font = _font(item.face, item.size)
    _l, t, _r, b = font.getbbox("H")
    cap = max(1, b - t)
    pitch = int(np.clip(cap // 7, 3, 6))  # >= 7 dots per capital: a real 5x7 / 7x9 code
    small_item = TextItem(item.text, item.face, max(6, round(item.size / pitch)), 0, 0, item.style)
    sfont = _font(small_item.face, small_item.size)
    sl, st, sr, sb = sfont.getbbox(item.text)
    sw, sh = int(sr - sl + 2), int(sb - st + 2)
    img = Image.new("1", (sw, sh), 0)
    d = ImageDraw.Draw(img)
    d.fontmode = "1"
    d.text((1 - sl, 1 - st), item.text, font=sfont, fill=1)
    m = np.asarray(img, dtype=np.float32)
    big = np.kron(m, _dot_kernel(pitch)).astype(np.float32)
    a = np.zeros((big.shape[0] + 2 * pad, big.shape[1] + 2 * pad), np.float32)
    a[pad : pad + big.shape[0], pad : pad + big.shape[1]] = big
    words = []
    for mt in _WORD.finditer(item.text):
        ox = sfont.getlength(item.text[: mt.start()]) if mt.start() else 0.0
        wl, wt, wr, wb = sfont.getbbox(mt.group())
        box = (1 - sl + ox + wl, 1 - st + wt, 1 - sl + ox + wr, 1 - st + wb)
        words.append((mt.group(), tuple(pad + v * pitch for v in box)))
    return a, words, pitch  # type: ignore[return-value]


def ink_palette(rng: Rng) -> dict[str, np.ndarray]:
    """The plate's ink colours: one dark and one light (chosen by the local background), and
    sometimes a coloured accent, as printed plates use one or two inks."""
    g = rng.uniform(10, 60)
    dark = np.array([g, g, g + rng.uniform(0, 10)], np.float32)
    if rng.random() < 0.15:
        dark = np.array(
            ((20, 40, 110), (120, 25, 25), (25, 70, 40))[int(rng.integers(3))], np.float32
        )
    li = rng.uniform(195, 250)
    light = np.array([li, li, li - rng.uniform(0, 15)], np.float32)
    return {"dark": dark, "light": light}


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _ink_colour(palette: dict[str, np.ndarray], bg_lum: float) -> np.ndarray:
    """The palette ink that contrasts most with the local background."""
    dark, light = float(palette["dark"] @ _LUMA), float(palette["light"] @ _LUMA)
    return palette["dark"] if bg_lum - dark >= light - bg_lum else palette["light"]


def draw_item(
    rng: Rng,
    plate: np.ndarray,
    item: TextItem,
    palette: dict[str, np.ndarray],
    mask: np.ndarray | None = None,
) -> PlateText | None:
    """Composite one text item into ``plate`` (in place) and return its quads, or None if it
    would not fit inside the plate."""
    pad = 4
    if item.style == "dot":
        _, cap_top, _, cap_bottom = text_bbox(item.face, item.size, "H")
        if (
            cap_bottom - cap_top < 21
        ):  # too small for 7 visible dots (pitch >= 3) per capital: printed instead
            item = replace(item, style="print")
    if item.style == "dot":
        a, words, _ = _dot_patch(item, pad)
    else:
        a, words = _patch(item, pad)
    ph, pw = a.shape
    hpl, wpl = plate.shape[:2]
    if item.style == "dot":
        x0, y0 = round(item.ox) - pad, round(item.oy) - pad
        line_box = (
            (
                min(wb[0] for _, wb in words),
                min(wb[1] for _, wb in words),
                max(wb[2] for _, wb in words),
                max(wb[3] for _, wb in words),
            )
            if words
            else (pad, pad, pw - pad, ph - pad)
        )
    else:
        # the patch holds the ink box at (pad, pad); integer placement avoids resampling
        lft, t, _, _ = ink_box(item)
        x0, y0 = round(lft) - pad, round(t) - pad
        line_box = (pad, pad, pw - pad, ph - pad)
    cap = line_box[3] - line_box[1]
    bpad = 1.0 + 0.06 * cap
    quads = [_quad(line_box, bpad)] + [_quad(wb, bpad) for _, wb in words]
    if item.angle:
        m = cv2.getRotationMatrix2D((pw / 2 - 0.5, ph / 2 - 0.5), item.angle, 1.0)
        cos, sin = abs(m[0, 0]), abs(m[0, 1])
        nw, nh = int(np.ceil(pw * cos + ph * sin)) + 2, int(np.ceil(pw * sin + ph * cos)) + 2
        m[0, 2] += (nw - pw) / 2
        m[1, 2] += (nh - ph) / 2
        a = cv2.warpAffine(a, m, (nw, nh), flags=cv2.INTER_LINEAR)
        quads = [q @ m[:, :2].T + m[:, 2] for q in quads]
        x0 -= (nw - pw) // 2
        y0 -= (nh - ph) // 2
        ph, pw = nh, nw
    if x0 < 0 or y0 < 0 or x0 + pw > wpl or y0 + ph > hpl:
        return None
    region = plate[y0 : y0 + ph, x0 : x0 + pw]
    bg = region.mean(axis=(0, 1))
    lum = float(bg @ _LUMA)
    # one ink per plate, chosen against the plate colour; only text on a header band or panel
    # (local colour far from the plate's) gets the other ink
    plate_lum = float(palette["plate_lum"][0])
    ink_lum = lum if abs(lum - plate_lum) > 60 else plate_lum
    _composite(rng, region, a, item.style, ink_lum, palette)
    if mask is not None:
        np.maximum(
            mask[y0 : y0 + ph, x0 : x0 + pw],
            (a * 255).astype(np.uint8),
            out=mask[y0 : y0 + ph, x0 : x0 + pw],
        )
    off = np.array([x0, y0], np.float64)
    return PlateText(
        item.text,
        quads[0] + off,
        [(w, q + off) for (w, _), q in zip(words, quads[1:], strict=True)],
        item.ignore,
    )


def _composite(
    rng: Rng,
    region: np.ndarray,
    a: np.ndarray,
    style: str,
    lum: float,
    palette: dict[str, np.ndarray],
) -> None:
    """Blend alpha ``a`` into ``region`` (float32 HxWx3, in place) according to ``style``."""
    if rng.random() < 0.25:  # uneven ink / worn letters
        worn = bank_crop(rng, "low", a.shape[0], a.shape[1], zoom=rng.uniform(0.5, 2))
        a = a * (1 - np.clip(worn * 0.2 + 0.05, 0, 0.35))
    a3 = a[:, :, None]
    if style in ("print", "dot", "laser"):
        col = _ink_colour(palette, lum)
        op = np.float32(rng.uniform(0.85, 1.0))
        region *= 1 - a3 * op
        region += a3 * op * col
        return
    d = 1 if rng.random() < 0.6 else 2
    inner = _shift(a, d, d)
    if style == "emboss":  # raised: lit top-left rim, shadow bottom-right outside
        bright = np.clip(a - inner, 0, 1)[:, :, None]
        shadow = np.clip(inner - a, 0, 1)[:, :, None]
        region += bright * np.float32(rng.uniform(60, 100)) - shadow * np.float32(
            rng.uniform(60, 100)
        )
        region += a3 * np.float32(rng.uniform(-60, -30) if lum > 110 else rng.uniform(30, 60))
        return
    # engrave / stamp: recessed, often paint-filled: dark fill, shadow on the top-left inner
    # wall, highlight on the bottom-right rim
    col = (
        _ink_colour(palette, lum)
        if lum > 115 or rng.random() < 0.5
        else np.full(3, lum * 0.4, np.float32)
    )
    op = np.float32(rng.uniform(0.55, 0.95) if style == "engrave" else rng.uniform(0.45, 0.8))
    region *= 1 - a3 * op
    region += a3 * op * col
    rim = np.clip(inner - a, 0, 1)[:, :, None]
    region += rim * np.float32(rng.uniform(30, 70))
    if style == "stamp":
        outer = _shift(a, -d, -d)
        region -= np.clip(outer - a, 0, 1)[:, :, None] * np.float32(rng.uniform(20, 50))
