"""Textures, backgrounds and photometric / geometric degradations (all numpy + OpenCV).

Why this module exists: a detector trained on clean renders fails on factory photos, where the
plate is brushed or painted metal, dirty, lit by a lamp that leaves a specular blob, shot at an
angle with a phone, blurred and JPEG-compressed.  Each function below models one of those
conditions cheaply: random noise is cut from per-process noise *banks* (built once from a fixed
seed, so results stay deterministic) instead of being drawn per pixel per image, and every
filter is an OpenCV call, which keeps the generator above 20 images/s on one core.

Images are float32 HxWx3 arrays in 0..255 until :func:`finish` turns them into uint8.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

Rng = np.random.Generator
BANK = 1024


@lru_cache(maxsize=1)
def noise_banks() -> dict[str, np.ndarray]:
    """Unit-variance noise fields: white ('fine'), streaked ('brushed'), blotchy ('low')."""
    g = np.random.default_rng(20240611)
    white = g.standard_normal((BANK, BANK), dtype=np.float32)
    brushed = cv2.blur(white, (61, 1))
    brushed = cv2.GaussianBlur(brushed, (0, 0), sigmaX=1.0, sigmaY=0.6)
    low = cv2.GaussianBlur(g.standard_normal((BANK // 8, BANK // 8), dtype=np.float32), (0, 0), 2.5)
    low = cv2.resize(low, (BANK, BANK), interpolation=cv2.INTER_CUBIC)
    banks = {"fine": white, "brushed": brushed, "low": low}
    for k, v in banks.items():
        banks[k] = ((v - v.mean()) / (v.std() + 1e-6)).astype(np.float32)
    return banks


def bank_crop(rng: Rng, name: str, h: int, w: int, zoom: float = 1.0) -> np.ndarray:
    """A random h x w window of a noise bank, optionally zoomed (zoom > 1 = coarser)."""
    bank = noise_banks()[name]
    ch, cw = max(2, int(h / zoom)), max(2, int(w / zoom))
    if ch > BANK or cw > BANK:  # larger than the bank: take the whole bank and stretch it
        ch, cw = min(ch, BANK), min(cw, BANK)
    y = int(rng.integers(0, BANK - ch + 1))
    x = int(rng.integers(0, BANK - cw + 1))
    out = bank[y : y + ch, x : x + cw]
    if rng.random() < 0.5:
        out = cv2.flip(out, 0)
    if (ch, cw) != (h, w):
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)
    return out


def gradient(rng: Rng, h: int, w: int, amp: float) -> np.ndarray:
    """A linear lighting ramp in a random direction, amplitude ``amp`` (0 mean)."""
    a = rng.uniform(0, 2 * np.pi)
    xs = np.linspace(-0.5, 0.5, w, dtype=np.float32) * np.float32(np.cos(a))
    ys = np.linspace(-0.5, 0.5, h, dtype=np.float32) * np.float32(np.sin(a))
    return (ys[:, None] + xs[None, :]) * np.float32(2 * amp)


# ------------------------------------------------------------------ plate materials
MATERIALS = ("brushed", "stainless", "painted", "anodised", "sticker", "brass")
_MAT_P = (0.27, 0.12, 0.2, 0.17, 0.14, 0.1)

_PAINT = (
    (235, 235, 228),
    (240, 232, 200),
    (230, 200, 40),
    (40, 80, 150),
    (30, 110, 70),
    (200, 50, 40),
    (40, 40, 42),
    (120, 125, 130),
    (225, 225, 225),
    (60, 60, 110),
)
_ANOD = (
    (210, 180, 100),
    (38, 38, 42),
    (45, 75, 145),
    (170, 40, 40),
    (195, 198, 200),
    (30, 90, 60),
    (205, 165, 70),
)


def material_base(rng: Rng, material: str) -> tuple[np.ndarray, float, float]:
    """(RGB base colour, brushing amplitude, fine-grain amplitude) for a material."""
    if material == "brushed":
        g = rng.uniform(145, 215)
        c = np.array([g, g + rng.uniform(-3, 4), g + rng.uniform(0, 8)])
        return c, rng.uniform(3, 10), rng.uniform(1, 4)
    if material == "stainless":
        g = rng.uniform(115, 190)
        return np.array([g, g + 2, g + 5]), rng.uniform(6, 14), rng.uniform(2, 5)
    if material == "painted":
        c = np.array(_PAINT[int(rng.integers(len(_PAINT)))], dtype=np.float64)
        return c + rng.uniform(-12, 12, 3), 0.0, rng.uniform(1.5, 5)
    if material == "anodised":
        c = np.array(_ANOD[int(rng.integers(len(_ANOD)))], dtype=np.float64)
        return c + rng.uniform(-10, 10, 3), rng.uniform(0, 6), rng.uniform(1, 3)
    if material == "sticker":
        c = np.array(
            ((245, 245, 242), (235, 236, 238), (250, 246, 225), (205, 208, 212))[
                int(rng.integers(4))
            ],
            dtype=np.float64,
        )
        return c + rng.uniform(-6, 4, 3), 0.0, rng.uniform(0.5, 2)
    c = np.array([190, 155, 80], dtype=np.float64) + rng.uniform(-20, 15, 3)  # brass
    return c, rng.uniform(3, 9), rng.uniform(1, 4)


def plate_texture(
    rng: Rng, h: int, w: int, base: np.ndarray, brush: float, grain: float
) -> np.ndarray:
    """Metal / paint surface: base colour + brushing streaks + grain + lighting ramp."""
    lum = gradient(rng, h, w, rng.uniform(4, 22))
    if brush > 0:
        lum = cv2.scaleAdd(bank_crop(rng, "brushed", h, w), float(brush), lum)
    if grain > 0:
        lum = cv2.scaleAdd(bank_crop(rng, "fine", h, w), float(grain), lum)
    blotch = (
        rng.uniform(1, 7) if brush == 0 else rng.uniform(0.5, 3)
    )  # strong blotches + streaks = wood
    lum = cv2.scaleAdd(bank_crop(rng, "low", h, w, zoom=rng.uniform(1, 3)), float(blotch), lum)
    return cv2.merge([lum + np.float32(c) for c in base])


def mul_map(img: np.ndarray, m: np.ndarray) -> np.ndarray:
    """img (HxWx3) times a per-pixel HxW map, via OpenCV (numpy broadcasting is ~10x slower)."""
    return cv2.multiply(img, cv2.merge([m, m, m]))


def add_map(img: np.ndarray, m: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """img (HxWx3) plus ``scale`` times a per-pixel HxW map."""
    return cv2.scaleAdd(cv2.merge([m, m, m]), float(scale), img)


def rounded_rect_mask(h: int, w: int, radius: int) -> np.ndarray:
    """float32 alpha of a plate with rounded corners (1 inside)."""
    m = np.zeros((h, w), np.uint8)
    r = max(0, min(radius, h // 2 - 1, w // 2 - 1))
    if r <= 1:
        m[:] = 255
    else:
        cv2.rectangle(m, (r, 0), (w - 1 - r, h - 1), 255, -1)
        cv2.rectangle(m, (0, r), (w - 1, h - 1 - r), 255, -1)
        for cx, cy in ((r, r), (w - 1 - r, r), (r, h - 1 - r), (w - 1 - r, h - 1 - r)):
            cv2.circle(m, (cx, cy), r, 255, -1, cv2.LINE_AA)
    return m.astype(np.float32) / 255.0


def edge_rim(rng: Rng, img: np.ndarray, alpha: np.ndarray) -> None:
    """The cut edge of the sheet: a thin light (bevel catching light) or dark rim, in place."""
    width = int(rng.integers(1, 4))
    inner = cv2.erode(alpha, np.ones((2 * width + 1, 2 * width + 1), np.uint8))
    rim = alpha - inner
    img[:] = add_map(img, rim, float(rng.uniform(25, 70) * (1 if rng.random() < 0.6 else -1)))


def draw_rivet(img: np.ndarray, cx: float, cy: float, r: float, rng: Rng, screw: bool) -> None:
    """A shaded rivet or screw head (dark rim, lit dome, specular dot, optional slot)."""
    c = (round(cx * 4), round(cy * 4))
    ri = round(r * 4)
    base = rng.uniform(90, 190)
    cv2.circle(img, c, ri + 4, (base * 0.35,) * 3, -1, cv2.LINE_AA, 2)
    cv2.circle(img, c, ri, (base,) * 3, -1, cv2.LINE_AA, 2)
    off = round(r * 1.2)
    cv2.circle(
        img,
        (c[0] - off, c[1] - off),
        max(4, ri // 3),
        (min(255, base + 60),) * 3,
        -1,
        cv2.LINE_AA,
        2,
    )
    if screw:
        a = rng.uniform(0, np.pi)
        dx, dy = np.cos(a) * r * 0.8, np.sin(a) * r * 0.8
        cv2.line(
            img,
            (int((cx - dx) * 4), int((cy - dy) * 4)),
            (int((cx + dx) * 4), int((cy + dy) * 4)),
            (base * 0.3,) * 3,
            max(1, int(r * 0.3)),
            cv2.LINE_AA,
            2,
        )


def dirt(rng: Rng, img: np.ndarray, amount: float) -> None:
    """Oil stains, grime towards the edges and scratches, applied in place (plate coords)."""
    h, w = img.shape[:2]
    if amount <= 0:
        return
    low = bank_crop(rng, "low", h, w, zoom=rng.uniform(1.5, 5))
    t = rng.uniform(0.6, 1.6)
    stain = np.clip((low - np.float32(t)) * np.float32(rng.uniform(0.4, 1.2) * amount), 0.0, 1.0)
    tint = ((60, 45, 25), (35, 30, 25), (90, 70, 40))[int(rng.integers(3))]
    # grime: darker near the rim
    yy = np.minimum(np.arange(h), np.arange(h)[::-1]).astype(np.float32) / max(h, 1)
    xx = np.minimum(np.arange(w), np.arange(w)[::-1]).astype(np.float32) / max(w, 1)
    edge = np.exp(-np.minimum(yy[:, None] * 14, xx[None, :] * 14 * w / max(h, 1)))
    gain = 1 - stain * np.float32(0.6) - edge * np.float32(amount * rng.uniform(0.1, 0.4))
    out = mul_map(img, gain)
    out += cv2.merge([stain * np.float32(0.6 * c) for c in tint])
    img[:] = out
    for _ in range(int(rng.integers(0, int(8 * amount) + 1))):  # scratches
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        a = rng.uniform(0, np.pi)
        ln = rng.uniform(0.05, 0.4) * w
        x1, y1 = x0 + np.cos(a) * ln, y0 + np.sin(a) * ln
        v = float(rng.uniform(-60, 60))
        col = tuple(
            float(x) for x in np.clip(img[int(min(y0, h - 1)), int(min(x0, w - 1))] + v, 0, 255)
        )
        cv2.line(img, (int(x0), int(y0)), (int(x1), int(y1)), col, 1, cv2.LINE_AA)


# ------------------------------------------------------------------ background
_MACHINE = (
    (70, 110, 80),
    (90, 100, 110),
    (200, 200, 195),
    (55, 75, 120),
    (220, 130, 40),
    (200, 170, 40),
    (60, 60, 62),
    (140, 140, 135),
    (180, 60, 50),
    (100, 130, 150),
    (40, 90, 70),
    (160, 150, 130),
)


def background(rng: Rng, h: int, w: int) -> np.ndarray:
    """A cluttered machine surface: paint, panel seams, pipes/cables, bolts, hazard stripes."""
    base = np.array(_MACHINE[int(rng.integers(len(_MACHINE)))], np.float32) + rng.uniform(
        -15, 15, 3
    ).astype(np.float32)
    img = plate_texture(
        rng, h, w, base, rng.uniform(0, 8) if rng.random() < 0.3 else 0.0, rng.uniform(2, 6)
    )
    img = add_map(img, gradient(rng, h, w, rng.uniform(10, 45)))
    for _ in range(int(rng.integers(1, 6))):  # other panels / parts
        c = np.array(_MACHINE[int(rng.integers(len(_MACHINE)))], np.float32) + rng.uniform(
            -20, 20, 3
        ).astype(np.float32)
        x0, y0 = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 4, h))
        x1, y1 = x0 + int(rng.integers(w // 8, w)), y0 + int(rng.integers(h // 8, h))
        kind = rng.random()
        if kind < 0.45:
            cv2.rectangle(img, (x0, y0), (x1, y1), tuple(float(v) for v in c), -1)
            cv2.rectangle(
                img, (x0, y0), (x1, y1), tuple(float(v) * 0.4 for v in c), int(rng.integers(1, 4))
            )
        elif kind < 0.75:  # pipe / cable with a highlight along it
            t = int(rng.integers(6, 40))
            cv2.line(img, (x0, y0), (x1, y1), tuple(float(v) * 0.5 for v in c), t, cv2.LINE_AA)
            cv2.line(
                img,
                (x0, y0),
                (x1, y1),
                tuple(float(v) for v in c),
                max(1, int(t * 0.6)),
                cv2.LINE_AA,
            )
            cv2.line(
                img,
                (x0, y0),
                (x1, y1),
                tuple(min(255.0, float(v) * 1.5) for v in c),
                max(1, t // 6),
                cv2.LINE_AA,
            )
        elif kind < 0.9:  # bolt heads
            r = int(rng.integers(5, 22))
            cv2.circle(img, (x0, y0), r, tuple(float(v) * 0.5 for v in c), -1, cv2.LINE_AA)
            cv2.circle(
                img,
                (x0 - r // 4, y0 - r // 4),
                max(1, r // 2),
                tuple(float(v) for v in c),
                -1,
                cv2.LINE_AA,
            )
        else:  # hazard stripes
            sw = int(rng.integers(10, 30))
            yel, blk = (230.0, 190.0, 30.0), (25.0, 25.0, 25.0)
            pts_all = []
            for i in range(-20, 40):
                x = x0 + i * sw
                pts_all.append(
                    np.array(
                        [
                            [x, y0],
                            [x + sw // 2, y0],
                            [x + sw // 2 + (y1 - y0), y1],
                            [x + (y1 - y0), y1],
                        ],
                        np.int32,
                    )
                )
            cv2.rectangle(img, (x0, y0), (x1, y1), yel, -1)
            mask = np.zeros((h, w), np.uint8)
            cv2.fillPoly(mask, pts_all[::2], 255)
            clip = np.zeros_like(mask)
            cv2.rectangle(clip, (x0, y0), (x1, y1), 255, -1)
            img[(mask > 0) & (clip > 0)] = blk
    if rng.random() < 0.5:  # grime, oil and scratches on the machine too
        dirt(rng, img, rng.uniform(0.3, 1.0))
    if rng.random() < 0.6:  # background usually out of focus (blurred at half size: cheaper)
        k = float(rng.uniform(0.8, 3.5))
        small = cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        img = cv2.resize(
            cv2.GaussianBlur(small, (0, 0), k / 2), (w, h), interpolation=cv2.INTER_LINEAR
        )
    return img


# ------------------------------------------------------------------ geometry
def plate_homography(
    rng: Rng, wp: int, hp: int, out_w: int, out_h: int, closeup: bool
) -> np.ndarray:
    """3x3 homography that takes plate pixels to the photo: a 3D tilt seen by a pinhole camera,
    an in-plane rotation (mostly within ±10°), then scale/translation into the frame."""
    rz = np.deg2rad(
        np.clip(rng.normal(0, 4.5), -10, 10) if rng.random() > 0.08 else rng.uniform(-28, 28)
    )
    rx = np.deg2rad(np.clip(rng.normal(0, 13), -38, 38))
    ry = np.deg2rad(np.clip(rng.normal(0, 15), -40, 40))
    cx, sx = np.cos(rx), np.sin(rx)
    cy, sy = np.cos(ry), np.sin(ry)
    cz, sz = np.cos(rz), np.sin(rz)
    rot = (
        np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    )
    src = np.array([[0, 0], [wp, 0], [wp, hp], [0, hp]], np.float64) - 0.5
    centred = np.c_[src - [wp / 2, hp / 2], np.zeros(4)]
    f = max(wp, hp) * rng.uniform(1.3, 3.5)
    p3 = centred @ rot.T + [0, 0, f]
    dst = p3[:, :2] * (f / p3[:, 2:3])
    lo, hi = dst.min(0), dst.max(0)
    size = hi - lo
    # the plate was rendered at about its on-photo size: keep scale ~1, shrink to fit the
    # frame, or (close-ups) overflow it so that some text is cut by the border
    fit = min(out_w / size[0], out_h / size[1])
    scale = fit * rng.uniform(1.02, 1.3) if closeup else min(1.0, fit * 0.97)
    dst = (dst - lo) * scale
    size = size * scale
    free = np.array([out_w, out_h]) - size
    off = np.array(
        [
            rng.uniform(min(0.0, free[0]), max(0.0, free[0])),
            rng.uniform(min(0.0, free[1]), max(0.0, free[1])),
        ]
    )
    dst = dst + off
    return cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32))


def transform_points(pts: np.ndarray, hmat: np.ndarray) -> np.ndarray:
    """Apply a homography to Nx2 points (the same matrix that warps the image)."""
    p = np.asarray(pts, np.float64).reshape(-1, 1, 2)
    return cv2.perspectiveTransform(p, hmat).reshape(-1, 2)


# ------------------------------------------------------------------ photometric (scene)
def glare(rng: Rng, img: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Additive specular blob (elongated Gaussian), restricted to the metal by ``where``.
    Returns the glare strength map (0..~1) so callers can mark washed-out text."""
    h, w = img.shape[:2]
    small = 8
    sh, sw = h // small, w // small
    cx, cy = rng.uniform(0.1, 0.9) * sw, rng.uniform(0.1, 0.9) * sh
    ax, ay = rng.uniform(0.05, 0.35) * sw, rng.uniform(0.04, 0.2) * sh
    a = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    u = dx * np.cos(a) + dy * np.sin(a)
    v = -dx * np.sin(a) + dy * np.cos(a)
    blob = np.exp(-0.5 * ((u / ax) ** 2 + (v / ay) ** 2)).astype(np.float32)
    blob = cv2.multiply(cv2.resize(blob, (w, h), interpolation=cv2.INTER_LINEAR), where)
    strength = float(rng.uniform(50, 170))
    img[:] = add_map(img, blob, strength)
    return blob * np.float32(strength / 255.0)


def shadow(rng: Rng, img: np.ndarray) -> None:
    """A soft-edged cast shadow (a random polygon darkened by 20-60 %)."""
    h, w = img.shape[:2]
    m = np.zeros((h // 4, w // 4), np.float32)
    n = int(rng.integers(3, 6))
    pts = np.c_[rng.uniform(-0.3, 1.3, n) * w / 4, rng.uniform(-0.3, 1.3, n) * h / 4].astype(
        np.int32
    )
    cv2.fillPoly(m, [cv2.convexHull(pts)], 1.0)
    m = cv2.GaussianBlur(m, (0, 0), rng.uniform(2, 10))
    m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
    img[:] = mul_map(img, 1 - m * np.float32(rng.uniform(0.2, 0.6)))


def motion_kernel(rng: Rng, length: int) -> np.ndarray:
    k = np.zeros((length, length), np.float32)
    a = rng.uniform(0, np.pi)
    c = (length - 1) / 2
    dx, dy = np.cos(a) * c, np.sin(a) * c
    cv2.line(
        k,
        (round(c - dx), round(c - dy)),
        (round(c + dx), round(c + dy)),
        1.0,
        1,
        cv2.LINE_AA,
    )
    return k / max(k.sum(), 1e-6)


def photometric(
    rng: Rng, img: np.ndarray, plate_alpha: np.ndarray, hard: bool
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Camera / lighting degradations in scene coordinates.

    Returns (image, glare map or None, blur in pixels): the blur is the standard deviation
    equivalent of the defocus, shake and resolution loss applied, so that callers can mark text
    too small for that blur as unreadable rather than teach the recogniser to hallucinate."""
    h, w = img.shape[:2]
    g = None
    blur2 = 0.0
    if rng.random() < 0.35:
        shadow(rng, img)
    if rng.random() < 0.35:
        g = glare(rng, img, plate_alpha)
    if rng.random() < 0.5:  # vignetting / uneven light
        img = mul_map(img, 1 + gradient(rng, h, w, rng.uniform(0.05, 0.25)))
    # exposure, contrast, white balance: one per-pixel affine colour transform
    mean = np.array(cv2.mean(img)[:3], np.float32)
    contrast = rng.uniform(0.45, 0.8) if rng.random() < 0.2 else rng.uniform(0.8, 1.15)
    expo = rng.uniform(0.75, 1.2)
    wb = rng.uniform(0.88, 1.12, 3)
    mat = np.zeros((3, 4), np.float32)
    for c in range(3):
        mat[c, c] = contrast * wb[c]
        mat[c, 3] = mean[c] * (expo - contrast) * wb[c]
    img = cv2.transform(img, mat)
    # blur: defocus or hand shake
    r = rng.random()
    if r < 0.3:
        sg = rng.uniform(0.3, 1.2 if not hard else 2.2)
        img = cv2.GaussianBlur(img, (0, 0), sg)
        blur2 += sg**2
    elif r < 0.45:
        length = int(rng.integers(3, 6 if not hard else 12))
        img = cv2.filter2D(img, -1, motion_kernel(rng, length))
        blur2 += (length * 0.29) ** 2  # std of a box of that length
    if rng.random() < 0.1:  # low-resolution sensor: down and up again
        f = rng.uniform(0.45, 0.8)
        blur2 += (0.5 / f) ** 2
        small = cv2.resize(img, (int(w * f), int(h * f)), interpolation=cv2.INTER_AREA)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    sigma = rng.uniform(1, 9) if rng.random() < 0.75 else 0.0
    if sigma > 0:
        img = add_map(img, bank_crop(rng, "fine", h, w), sigma)
        if rng.random() < 0.5:  # chroma noise
            ch = int(rng.integers(3))
            img[:, :, ch] = cv2.scaleAdd(
                bank_crop(rng, "fine", h, w), float(sigma * 0.5), img[:, :, ch].copy()
            )
    if rng.random() < 0.3:  # phone cameras over-sharpen: halos along every edge
        k = float(rng.uniform(0.3, 1.0))
        img = cv2.addWeighted(
            img, 1 + k, cv2.GaussianBlur(img, (0, 0), rng.uniform(0.8, 2.0)), -k, 0
        )
    blur = float(np.sqrt(blur2))
    if contrast < 0.6 and sigma > 5:  # faint and noisy: count it as extra blur
        blur += 0.7
    return img, g, blur


def jpeg(rng: Rng, img_u8: np.ndarray) -> np.ndarray:
    """Re-encode at a random quality (block artefacts, ringing) and decode."""
    q = int(rng.integers(25, 96)) if rng.random() < 0.85 else int(rng.integers(12, 30))
    ok, buf = cv2.imencode(".jpg", img_u8, [cv2.IMWRITE_JPEG_QUALITY, q])
    if not ok:  # pragma: no cover - cv2 always encodes uint8 BGR/RGB
        return img_u8
    out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return img_u8 if out is None else np.asarray(out)


def finish(img: np.ndarray) -> np.ndarray:
    return np.clip(img, 0, 255).astype(np.uint8)
