"""Contact sheets: thumbnails with their text polygons and transcriptions drawn on top.

A sheet is the fastest way for a person to see whether a dataset (real or synthetic) is what
they think it is — wrong polygons, swapped coordinates, empty labels or unreadable renders are
obvious at a glance — so the data stage writes one next to every manifest.

Accepted inputs, mixed freely:
- manifest records: objects or dicts with ``image`` (path) and ``lines`` (each with
  ``points``, ``text``, ``ignore`` as attributes or keys);
- pairs ``(image, lines)`` where image is a path or an RGB uint8 array.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_OK = (40, 230, 60)
_IGNORE = (240, 50, 50)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _unpack(item: Any) -> tuple[Image.Image, list[Any], str]:
    if isinstance(item, tuple | list) and len(item) == 2:
        image, lines = item
    else:
        image, lines = _get(item, "image"), _get(item, "lines", [])
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB"), list(lines or []), ""
    path = Path(image)
    try:
        with Image.open(path) as im:
            return im.convert("RGB"), list(lines or []), path.name
    except OSError as e:
        raise OSError(f"{path}: cannot open image for the contact sheet ({e})") from e


def _label_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        from engine.data.synth.fonts import discover_fonts

        faces = discover_fonts()
        mono = [f for f in faces if f.kind == "mono" and not f.bold and not f.italic] or list(faces)
        return ImageFont.truetype(mono[0].path, size)
    except Exception:  # no fonts: PIL's built-in bitmap font still labels the sheet
        return ImageFont.load_default()


def _thumb(item: Any, thumb: int, tile_h: int, font: Any, foot: int) -> Image.Image:
    im, lines, name = _unpack(item)
    s = min(thumb / im.width, (tile_h - foot) / im.height)
    tw, th = max(1, round(im.width * s)), max(1, round(im.height * s))
    canvas = Image.new("RGB", (thumb, tile_h), (24, 24, 24))
    canvas.paste(im.resize((tw, th), Image.Resampling.BILINEAR), (0, 0))
    d = ImageDraw.Draw(canvas)
    n_ok = 0
    for ln in lines:
        pts = np.asarray(_get(ln, "points"), dtype=np.float64).reshape(-1, 2) * s
        ignore = bool(_get(ln, "ignore", False))
        n_ok += not ignore
        col = _IGNORE if ignore else _OK
        d.polygon([(float(x), float(y)) for x, y in pts], outline=col, width=1)
        text = str(_get(ln, "text", ""))
        if not ignore and text:
            x, y = float(pts[:, 0].min()), float(pts[:, 1].min())
            tb = d.textbbox((x, y), text, font=font, anchor="lb")
            d.rectangle(tb, fill=(0, 0, 0))
            d.text((x, y), text, fill=(255, 255, 0), font=font, anchor="lb")
    footer = f"{name}  {n_ok} text / {len(lines) - n_ok} ignore"
    d.rectangle((0, tile_h - foot, thumb, tile_h), fill=(0, 0, 0))
    d.text((3, tile_h - foot + 1), footer, fill=(220, 220, 220), font=font)
    return canvas


def write_contact_sheet(
    records_or_pairs: Iterable[Any] | Sequence[Any],
    out_png: str | os.PathLike[str],
    cols: int = 4,
    thumb: int = 320,
) -> Path:
    """Draw every item as a ``thumb``-sized tile (polygons green, ignored red, transcriptions
    in yellow) in a grid of ``cols`` columns and write the PNG atomically.  Returns the path."""
    items = list(records_or_pairs)
    if not items:
        raise ValueError("write_contact_sheet: nothing to draw (no records)")
    cols = max(1, min(cols, len(items)))
    rows = -(-len(items) // cols)
    fs = max(8, thumb // 36)
    font = _label_font(fs)
    foot = fs + 5
    tile_h = thumb * 3 // 4 + foot  # photos are mostly 4:3; others are letterboxed
    sheet = Image.new(
        "RGB", (cols * thumb + (cols - 1) * 4, rows * tile_h + (rows - 1) * 4), (255, 255, 255)
    )
    for i, item in enumerate(items):
        r, c = divmod(i, cols)
        sheet.paste(_thumb(item, thumb, tile_h, font, foot), (c * (thumb + 4), r * (tile_h + 4)))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as f:
            sheet.save(f, format="PNG")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out
