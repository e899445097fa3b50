"""Nameplate layout: where the maker, title, fields, footer, rivets, borders and tables go.

Real plates vary a lot — a single column of "KEY: VALUE" rows, two columns, ruled tables with
keys and values in separate cells, a coloured header band with the maker name, stamped serial
numbers on a blank field, corner rivets — and a detector must see all of them, so each plate
draws its layout from these options.  Sizes derive from the plate size and the number of rows,
and every text item is measured before it is placed, so nothing overflows its cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .content import PlateContent
from .effects import (
    _MAT_P,
    MATERIALS,
    dirt,
    draw_rivet,
    edge_rim,
    material_base,
    plate_texture,
    rounded_rect_mask,
)
from .fonts import FontFace, FontPicker
from .render import PlateText, TextItem, draw_item, ink_palette, text_bbox

Rng = np.random.Generator
MIN_BODY_PX = 9  # smallest font size (em, px) used for readable body text


@dataclass
class Plate:
    """A rendered flat plate: image (float32 HxWx3), shape alpha, text quads (plate coords)."""

    image: np.ndarray
    alpha: np.ndarray
    texts: list[PlateText]
    mask: np.ndarray | None
    material: str


def _fit_size(face: FontFace, text: str, max_w: float, max_h: float, hi: int) -> int:
    """Largest font size <= hi whose ink box fits (max_w x max_h); 0 if even MIN does not."""
    size = hi
    while size >= MIN_BODY_PX:
        lft, t, r, b = text_bbox(face, size, text)
        if r - lft <= max_w and b - t <= max_h:
            return size
        ratio = min(max_w / max(r - lft, 1), max_h / max(b - t, 1))
        size = min(size - 1, int(size * max(0.5, ratio)))
    return 0


def _cap(face: FontFace, size: int) -> tuple[float, float]:
    """(cap top offset, cap height) for vertical alignment on a common baseline."""
    _, t, _, b = text_bbox(face, size, "H")
    return t, b - t


def _place(
    face: FontFace,
    size: int,
    text: str,
    x: float,
    yc: float,
    style: str,
    align: str = "l",
    width: float = 0.0,
    angle: float = 0.0,
    ignore: bool = False,
) -> TextItem:
    """Item whose cap-height band is centred on ``yc``; x is left, centre or right per align."""
    t, ch = _cap(face, size)
    lft, _, r, _ = text_bbox(face, size, text)
    if align == "c":
        x = x + (width - (r - lft)) / 2
    elif align == "r":
        x = x + width - (r - lft)
    return TextItem(text, face, size, x - lft, yc - ch / 2 - t, style, angle, ignore)


def _styles(rng: Rng, material: str) -> tuple[str, str]:
    """(label style, value style) for a material."""
    r = rng.random()
    if material in ("sticker", "painted"):
        return ("print", "dot") if r < 0.1 else ("print", "print")
    if material == "anodised":
        return (
            ("laser", "laser")
            if r < 0.5
            else (("print", "print") if r < 0.8 else ("engrave", "engrave"))
        )
    if r < 0.4:
        return "print", "print"
    if r < 0.6:
        return "engrave", "engrave"
    if r < 0.66:
        return "emboss", "emboss"
    if r < 0.92:
        return ("print" if rng.random() < 0.6 else "engrave"), "stamp"
    return "print", "dot"


def _logo(
    rng: Rng, img: np.ndarray, x: float, y: float, s: float, colour: tuple[float, ...]
) -> None:
    """An abstract logo (no letters: unlabelled text would teach the detector to miss text)."""
    c = (int(x + s / 2), int(y + s / 2))
    k = rng.random()
    if k < 0.35:
        cv2.circle(img, c, int(s / 2), colour, -1, cv2.LINE_AA)
        cv2.circle(img, c, int(s / 4), tuple(255 - v for v in colour), -1, cv2.LINE_AA)
    elif k < 0.7:
        pts = np.array(
            [[x + s / 2, y], [x + s, y + s / 2], [x + s / 2, y + s], [x, y + s / 2]], np.int32
        )
        cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
    else:
        pts = np.array([[x, y + s], [x + s / 2, y], [x + s, y + s]], np.int32)
        cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
        cv2.line(
            img,
            (int(x + s * 0.2), int(y + s * 0.7)),
            (int(x + s * 0.8), int(y + s * 0.7)),
            tuple(255 - v for v in colour),
            max(1, int(s / 8)),
            cv2.LINE_AA,
        )


def _barcode(
    rng: Rng, img: np.ndarray, x: int, y: int, w: int, h: int, colour: tuple[float, ...]
) -> None:
    xx = x
    while xx < x + w:
        bw = int(rng.integers(1, 4))
        if rng.random() < 0.55:
            img[y : y + h, xx : min(x + w, xx + bw)] = colour
        xx += bw


def compose_plate(
    rng: Rng, content: PlateContent, wp: int, hp: int, picker: FontPicker, with_mask: bool = False
) -> Plate:
    """Render a flat plate of wp x hp pixels showing ``content``."""
    material = MATERIALS[int(rng.choice(len(MATERIALS), p=_MAT_P))]
    base, brush, grain = material_base(rng, material)
    img = plate_texture(rng, hp, wp, base, brush, grain)
    alpha = rounded_rect_mask(hp, wp, int(rng.uniform(0, 0.06) * min(wp, hp)))
    mask = np.zeros((hp, wp), np.uint8) if with_mask else None
    lum = float(base @ [0.299, 0.587, 0.114])
    dark = lum < 115
    line_col = tuple(
        float(v)
        for v in ((np.full(3, 230.0) if dark else np.full(3, 30.0)) * rng.uniform(0.85, 1.0))
    )
    key_style, val_style = _styles(rng, material)
    items: list[TextItem] = []
    s = min(wp, hp)
    margin = s * rng.uniform(0.03, 0.06)
    x0, x1, y0, y1 = margin, wp - margin, margin, hp - margin

    # rivets / screws in the corners, border
    if rng.random() < 0.55:
        r = float(np.clip(s * rng.uniform(0.018, 0.03), 3, 10))
        screw = rng.random() < 0.4
        ins = margin * 0.5 + r
        for cx, cy in ((ins, ins), (wp - ins, ins), (wp - ins, hp - ins), (ins, hp - ins)):
            draw_rivet(img, cx, cy, r, rng, screw)
        x0, x1 = x0 + 2.2 * r, x1 - 2.2 * r
    if rng.random() < 0.5:
        bi = int(margin * rng.uniform(0.3, 0.7))
        cv2.rectangle(
            img,
            (bi, bi),
            (wp - 1 - bi, hp - 1 - bi),
            line_col,
            int(rng.integers(1, 4)),
            cv2.LINE_AA,
        )

    # header: maker (maybe on a band, maybe with a logo), then title
    title_face = picker.pick(rng, "title")
    header_h = (y1 - y0) * rng.uniform(0.13, 0.2)
    band = rng.random() < 0.3
    if band:
        bcol = tuple(
            float(v)
            for v in ((25, 45, 110), (20, 20, 22), (150, 25, 30), (60, 65, 70), (230, 230, 230))[
                int(rng.integers(5))
            ]
        )
        cv2.rectangle(
            img,
            (int(x0 - margin * 0.4), int(y0)),
            (int(x1 + margin * 0.4), int(y0 + header_h)),
            bcol,
            -1,
        )
    lx = x0
    if rng.random() < 0.4:
        ls = header_h * 0.8
        _logo(
            rng,
            img,
            x0,
            y0 + header_h * 0.1,
            ls,
            tuple(float(v) for v in rng.uniform(0, 255, 3)) if not band else (240.0, 240.0, 240.0),
        )
        lx = x0 + ls * 1.3
    if content.maker:
        size = _fit_size(title_face, content.maker, x1 - lx, header_h * 0.75, int(header_h * 0.95))
        if size:
            centred = rng.random() < 0.5 and lx == x0
            items.append(
                _place(
                    title_face,
                    size,
                    content.maker,
                    lx,
                    y0 + header_h / 2,
                    "print",
                    "c" if centred else "l",
                    x1 - lx,
                )
            )
    y = y0 + header_h * 1.08
    if content.title and rng.random() < 0.85:
        th = header_h * rng.uniform(0.45, 0.7)
        size = _fit_size(title_face, content.title, x1 - x0, th, int(th * 1.2))
        if size:
            items.append(
                _place(title_face, size, content.title, x0, y + th / 2, key_style, "c", x1 - x0)
            )
            y += th * 1.15
    if rng.random() < 0.5:
        cv2.line(
            img,
            (int(x0), int(y)),
            (int(x1), int(y)),
            line_col,
            int(rng.integers(1, 3)),
            cv2.LINE_AA,
        )
        y += s * 0.01

    # footer: small lines, tiny unreadable print, certification marks, barcode
    body_face = picker.pick(rng, "body")
    fy = y1
    fine_size = int(rng.integers(5, 7))
    for fp in content.fine_print:
        _, ch = _cap(body_face, fine_size)
        it = _place(body_face, fine_size, fp, x0, fy - ch, "print", "c", x1 - x0, ignore=True)
        lft, _, r, _ = text_bbox(body_face, fine_size, fp)
        if r - lft < x1 - x0:
            items.append(it)
            fy -= ch * 2.2
    foot_h = (y1 - y0) * 0.07
    for ft in content.footer:
        size = _fit_size(body_face, ft, (x1 - x0) * 0.8, foot_h, int(foot_h * 1.1))
        if size:
            items.append(
                _place(
                    body_face, size, ft, x0, fy - foot_h / 2, key_style, pick_align(rng), x1 - x0
                )
            )
            fy -= foot_h * 1.3
    if content.marks and fy - y > (y1 - y0) * 0.3:
        ms = foot_h * 1.6
        mx = x1
        for mk in content.marks:
            size = _fit_size(title_face, mk, (x1 - x0) * 0.2, ms, int(ms * 1.3))
            if size:
                lft, _, r, _ = text_bbox(title_face, size, mk)
                mx -= (r - lft) + ms * 0.4
                items.append(_place(title_face, size, mk, mx, fy - ms / 2, key_style))
        fy -= ms * 1.2
    if rng.random() < 0.12 and fy - y > (y1 - y0) * 0.35:
        bh = int((y1 - y0) * 0.08)
        _barcode(rng, img, int(x0), int(fy - bh), int((x1 - x0) * 0.35), bh, line_col)
        fy -= bh * 1.2

    _layout_fields(
        rng, img, content, items, picker, body_face, key_style, val_style, line_col, x0, x1, y, fy
    )

    if rng.random() < 0.5:
        dirt(rng, img, rng.uniform(0.2, 1.0))
    if rng.random() < 0.6:
        edge_rim(rng, img, alpha)
    texts = []
    palette = ink_palette(rng)
    palette["plate_lum"] = np.array([lum], np.float32)
    for it in items:
        pt = draw_item(rng, img, it, palette, mask)
        if pt is not None:
            texts.append(pt)
    return Plate(img, alpha, texts, mask, material)


def pick_align(rng: Rng) -> str:
    return "c" if rng.random() < 0.6 else "l"


def _layout_fields(
    rng: Rng,
    img: np.ndarray,
    content: PlateContent,
    items: list[TextItem],
    picker: FontPicker,
    body_face: FontFace,
    key_style: str,
    val_style: str,
    line_col: tuple[float, ...],
    x0: float,
    x1: float,
    y0: float,
    y1: float,
) -> None:
    """Key/value rows in one or two columns, as 'KEY: VALUE', tab-aligned or in a ruled table."""
    fields = list(content.fields)
    if not fields or y1 - y0 < 12:
        return
    wide = (x1 - x0) / max(y1 - y0, 1) > 1.6
    ncols = (
        2
        if (len(fields) > 6 and wide and rng.random() < 0.75)
        or (len(fields) > 10 and rng.random() < 0.5)
        else 1
    )
    if ncols == 1 and (y1 - y0) / len(fields) < 20 and x1 - x0 > 220:
        ncols = 2  # a single column would need rows too thin to read
    mode = "table" if rng.random() < 0.3 else ("tab" if rng.random() < 0.5 else "colon")
    nrows = math.ceil(len(fields) / ncols)
    row_h = min((y1 - y0) / nrows, max(26.0, (y1 - y0) * 0.09))  # few rows: keep them together
    max_rows = int((y1 - y0) // 17)  # rows under ~17 px cannot hold legible text
    if max_rows < 1:
        return
    if nrows > max_rows:
        fields = fields[: max_rows * ncols]
        nrows = max_rows
        row_h = (y1 - y0) / nrows
    val_face = (
        picker.pick(rng, "mono")
        if val_style in ("stamp", "dot") or rng.random() < 0.2
        else body_face
    )
    size0 = max(MIN_BODY_PX + 2, int(min(row_h * rng.uniform(0.55, 0.8), (x1 - x0) * 0.06 + 10)))
    col_w = (x1 - x0) / ncols
    gap = col_w * 0.04
    if mode == "table":
        for i in range(nrows + 1):
            yy = int(y0 + i * row_h)
            cv2.line(
                img, (int(x0 - gap / 2), yy), (int(x1 + gap / 2), yy), line_col, 1, cv2.LINE_AA
            )
        for c in range(ncols + 1):
            xx = int(x0 + c * col_w - (gap / 2 if c == ncols else 0))
            cv2.line(img, (xx, int(y0)), (xx, int(y0 + nrows * row_h)), line_col, 1, cv2.LINE_AA)
    key_frac = rng.uniform(0.35, 0.5)
    ksize0 = int(size0 * rng.uniform(0.75, 1.0))
    # (row id, role, face, text, x, yc, max width, style, angle, fitted size)
    cands: list[tuple[int, str, FontFace, str, float, float, float, str, float, int]] = []
    for idx, fd in enumerate(fields):
        c, rr = divmod(idx, nrows)
        cx = x0 + c * col_w + (gap if mode == "table" else 0)
        cw = col_w - gap * (2 if mode == "table" else 1)
        yc = y0 + (rr + 0.5) * row_h
        key = fd.key
        if mode == "colon" or not key:
            text = content.join(key, fd.value, colon=rng.random() < 0.85)
            style = val_style if not key else key_style
            cands.append(
                (
                    idx,
                    "line",
                    body_face,
                    text,
                    cx,
                    yc,
                    cw,
                    style,
                    0.0,
                    _fit_size(body_face, text, cw, row_h * 0.9, size0),
                )
            )
            continue
        kw = cw * key_frac
        if mode == "table":
            xx = int(cx + kw - gap / 2)
            cv2.line(
                img, (xx, int(yc - row_h / 2)), (xx, int(yc + row_h / 2)), line_col, 1, cv2.LINE_AA
            )
        cands.append(
            (
                idx,
                "key",
                body_face,
                key,
                cx,
                yc,
                kw - gap,
                key_style,
                0.0,
                _fit_size(body_face, key, kw - gap, row_h * 0.9, ksize0),
            )
        )
        angle = float(np.clip(rng.normal(0, 1.0), -3, 3)) if val_style == "stamp" else 0.0
        jitter = float(rng.normal(0, row_h * 0.04)) if val_style == "stamp" else 0.0
        cands.append(
            (
                idx,
                "value",
                val_face,
                fd.value,
                cx + kw,
                yc + jitter,
                cw - kw,
                val_style,
                angle,
                _fit_size(val_face, fd.value, cw - kw, row_h * 0.9, size0),
            )
        )
    # one size per role, as on a real plate; a row that would force tiny text is left out
    # whole (a key without its value would be a strange plate)
    common: dict[str, int] = {}
    for role in ("line", "key", "value"):
        fits = sorted(cd[9] for cd in cands if cd[1] == role and cd[9])
        if fits:
            common[role] = max(fits[0], int(fits[len(fits) // 2] * 0.8), MIN_BODY_PX)

    def fitted(cd: tuple[int, str, FontFace, str, float, float, float, str, float, int]) -> bool:
        return bool(cd[9]) and cd[9] >= common[cd[1]]

    # a value that does not fit drops its row; a key that does not fit just goes missing
    bad = {cd[0] for cd in cands if cd[1] != "key" and not fitted(cd)}
    for cd in cands:
        row, role, face, text, x, yc, _, style, angle, _ = cd
        if row not in bad and fitted(cd):
            items.append(_place(face, common[role], text, x, yc, style, angle=angle))
