"""Training-time augmentation for the detector (image + polygons) and the recognizer (crops).

Pure numpy + OpenCV; every function takes an explicit ``numpy.random.Generator`` so the dataset
decides where randomness comes from (it derives one per sample from torch's RNG, which the loop
re-seeds per epoch and per DataLoader worker — that is what makes augmentation reproducible and
resumable).

Geometry keeps the labels honest: polygons are transformed with the image; after a crop a
polygon entirely outside is dropped and one cut by the crop border becomes *ignored* (masked
out of the loss) rather than a positive whose visible part no longer matches its full text.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

Polygons = list[np.ndarray]


@dataclass
class DetAugConfig:
    """Detector augmentation knobs (the defaults are moderate, for nameplate-like photos)."""

    size: int = 640  # square training input (multiple of 32)
    scale: tuple[float, float] = (0.5, 1.5)  # relative to "image fits in size"
    rotate_deg: float = 10.0
    rotate_p: float = 0.5
    crop_attempts: int = 20
    color_p: float = 0.8
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue_deg: float = 5.0
    blur_p: float = 0.2
    noise_p: float = 0.2
    noise_std: float = 8.0


@dataclass
class RecAugConfig:
    """Recognizer crop augmentation knobs."""

    # Margins cut from context crops (fractions of the line height; negative eats into the text
    # box): measured detector boxes run ~0.3 h wider than the labels and up to ~0.15 h short.
    margin_x: tuple[float, float] = (-0.1, 0.45)
    margin_y: tuple[float, float] = (-0.15, 0.25)
    perspective_p: float = 0.5
    perspective: float = 0.06  # corner jitter as a fraction of the crop's height/width
    blur_p: float = 0.2
    contrast_p: float = 0.5
    contrast: float = 0.35
    noise_p: float = 0.2
    noise_std: float = 6.0


# ---------------------------------------------------------------------------------------------
# Photometric


def color_jitter(
    image: np.ndarray, rng: np.random.Generator, cfg: DetAugConfig | None = None
) -> np.ndarray:
    """Brightness, contrast, saturation and a small hue shift on an RGB uint8 image."""
    cfg = cfg or DetAugConfig()
    img = image.astype(np.float32)
    img *= 1.0 + rng.uniform(-cfg.brightness, cfg.brightness)
    mean = img.mean()
    img = (img - mean) * (1.0 + rng.uniform(-cfg.contrast, cfg.contrast)) + mean
    img = np.clip(img, 0, 255).astype(np.uint8)
    if cfg.saturation > 0 or cfg.hue_deg > 0:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 1] *= 1.0 + rng.uniform(-cfg.saturation, cfg.saturation)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-cfg.hue_deg, cfg.hue_deg) / 2.0) % 180.0
        hsv[..., 1:] = np.clip(hsv[..., 1:], 0, 255)
        img = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    return img


def gaussian_blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    k = int(rng.choice([3, 5]))
    return cv2.GaussianBlur(image, (k, k), sigmaX=float(rng.uniform(0.3, 1.2)))


def gaussian_noise(image: np.ndarray, rng: np.random.Generator, std: float) -> np.ndarray:
    sigma = float(rng.uniform(0.0, std))
    noisy = image.astype(np.float32) + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def adjust_contrast(image: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    factor = 1.0 + rng.uniform(-amount, amount)
    img = image.astype(np.float32)
    mean = img.mean()
    return np.clip((img - mean) * factor + mean, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Geometric (detector)


def _transform(polys: Polygons, matrix: np.ndarray) -> Polygons:
    out = []
    for p in polys:
        pts = np.hstack([p, np.ones((len(p), 1))]) @ matrix.T
        out.append(pts[:, :2].astype(np.float32))
    return out


def random_rotate(
    image: np.ndarray, polys: Polygons, rng: np.random.Generator, max_deg: float
) -> tuple[np.ndarray, Polygons]:
    """Rotate about the centre onto a canvas large enough to keep every corner."""
    h, w = image.shape[:2]
    angle = float(rng.uniform(-max_deg, max_deg))
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(np.ceil(h * sin + w * cos)), int(np.ceil(h * cos + w * sin))
    m[0, 2] += nw / 2.0 - w / 2.0
    m[1, 2] += nh / 2.0 - h / 2.0
    rotated = cv2.warpAffine(
        image, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    return rotated, _transform(polys, m)


def _crop_cuts(polys: Polygons, x0: float, y0: float, size: int, keep: list[bool]) -> int:
    """How many kept polygons a window would cut (partly inside, partly outside)."""
    cuts = 0
    for p, k in zip(polys, keep, strict=True):
        if not k:
            continue
        lo, hi = p.min(axis=0), p.max(axis=0)
        inside = lo[0] >= x0 and lo[1] >= y0 and hi[0] <= x0 + size and hi[1] <= y0 + size
        outside = hi[0] <= x0 or hi[1] <= y0 or lo[0] >= x0 + size or lo[1] >= y0 + size
        cuts += not (inside or outside)
    return cuts


def random_scale_crop(
    image: np.ndarray,
    polys: Polygons,
    ignore: list[bool],
    rng: np.random.Generator,
    size: int,
    scale: tuple[float, float] = (0.5, 1.5),
    attempts: int = 20,
) -> tuple[np.ndarray, Polygons, list[bool]]:
    """Rescale randomly and cut a window of at most ``size`` x ``size``.

    The window is *not* padded here: padding belongs to the preprocessing (it is the mean colour
    after normalisation, as on the device), see `engine.training.datasets`. The window avoids
    cutting text when it can (``attempts`` random tries, the best kept). Polygons outside the
    window are dropped; cut ones are marked ignored.
    """
    h, w = image.shape[:2]
    s = size / max(h, w) * float(rng.uniform(*scale))
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    resized = cv2.resize(
        image, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    )
    polys = [p * s for p in polys]
    x0 = y0 = 0
    if nw > size or nh > size:
        best: tuple[int, int, int] | None = None
        for _ in range(max(1, attempts)):
            cx = int(rng.integers(0, max(nw - size, 0) + 1))
            cy = int(rng.integers(0, max(nh - size, 0) + 1))
            cuts = _crop_cuts(polys, cx, cy, size, [not i for i in ignore])
            if best is None or cuts < best[0]:
                best = (cuts, cx, cy)
            if cuts == 0:
                break
        assert best is not None
        _, x0, y0 = best
    window = np.ascontiguousarray(resized[y0 : y0 + size, x0 : x0 + size])
    vis_w, vis_h = window.shape[1], window.shape[0]
    out_polys: Polygons = []
    out_ignore: list[bool] = []
    for p, ign in zip(polys, ignore, strict=True):
        q = (p - np.array([x0, y0], dtype=np.float32)).astype(np.float32)
        lo, hi = q.min(axis=0), q.max(axis=0)
        if hi[0] <= 0 or hi[1] <= 0 or lo[0] >= vis_w or lo[1] >= vis_h:
            continue  # entirely outside the visible window
        cut = lo[0] < 0 or lo[1] < 0 or hi[0] > vis_w or hi[1] > vis_h
        out_polys.append(q)
        out_ignore.append(bool(ign or cut))
    return window, out_polys, out_ignore


def augment_detection(
    image: np.ndarray,
    polys: Polygons,
    ignore: list[bool],
    rng: np.random.Generator,
    cfg: DetAugConfig,
) -> tuple[np.ndarray, Polygons, list[bool]]:
    """The detector pipeline: rotate -> scale/crop -> colour -> blur -> noise (unpadded)."""
    polys = [np.asarray(p, dtype=np.float32).reshape(-1, 2) for p in polys]
    if cfg.rotate_deg > 0 and rng.random() < cfg.rotate_p:
        image, polys = random_rotate(image, polys, rng, cfg.rotate_deg)
    image, polys, ignore = random_scale_crop(
        image, polys, list(ignore), rng, cfg.size, cfg.scale, cfg.crop_attempts
    )
    if rng.random() < cfg.color_p:
        image = color_jitter(image, rng, cfg)
    if rng.random() < cfg.blur_p:
        image = gaussian_blur(image, rng)
    if rng.random() < cfg.noise_p:
        image = gaussian_noise(image, rng, cfg.noise_std)
    return image, polys, ignore


def fit_to_size(
    image: np.ndarray, polys: Polygons, size: int
) -> tuple[np.ndarray, Polygons, float]:
    """Deterministic counterpart (no augmentation): resize so the longer side is ``size``."""
    h, w = image.shape[:2]
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    return resized, [np.asarray(p, dtype=np.float32).reshape(-1, 2) * s for p in polys], s


# ---------------------------------------------------------------------------------------------
# Recognizer crops


def perspective_jitter(crop: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Move each corner by up to ``amount`` of the crop size; the text stays inside."""
    h, w = crop.shape[:2]
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float32)
    jitter = rng.uniform(-amount, amount, (4, 2)) * np.array([w, h], dtype=np.float64)
    dst = np.clip(src + jitter, [0, 0], [w - 1, h - 1]).astype(np.float32)
    m = cv2.getPerspectiveTransform(dst, src)  # map the jittered quad back to the full crop
    return cv2.warpPerspective(
        crop, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def cut_context(
    crop: np.ndarray, pad: float, rng: np.random.Generator | None, cfg: RecAugConfig
) -> np.ndarray:
    """Cut a text line out of a context crop (``engine.data.crops.context_crop``).

    The crop holds the labelled box plus ``pad`` × its short side on every side.  With ``rng``
    each side gets its own random margin from ``cfg.margin_x``/``margin_y`` (× the box height);
    without, the labelled box itself is returned.
    """
    hh, ww = crop.shape[:2]
    m = pad * min(hh, ww) / (1 + 2 * pad)
    box_h = max(hh - 2 * m, 1.0)
    if rng is None:
        sides = np.zeros(4)
    else:
        sides = np.concatenate([rng.uniform(*cfg.margin_x, 2), rng.uniform(*cfg.margin_y, 2)])
    left, right, top, bottom = np.minimum(sides * box_h, m)
    x0, x1 = round(m - left), round(ww - m + right)
    y0, y1 = round(m - top), round(hh - m + bottom)
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(ww, max(x1, x0 + 2)), min(hh, max(y1, y0 + 2))
    return crop[y0:y1, x0:x1]


def augment_crop(crop: np.ndarray, rng: np.random.Generator, cfg: RecAugConfig) -> np.ndarray:
    """The recognizer pipeline: perspective -> contrast -> blur -> noise."""
    if crop.shape[0] >= 4 and crop.shape[1] >= 4 and rng.random() < cfg.perspective_p:
        crop = perspective_jitter(crop, rng, cfg.perspective)
    if rng.random() < cfg.contrast_p:
        crop = adjust_contrast(crop, rng, cfg.contrast)
    if rng.random() < cfg.blur_p:
        crop = gaussian_blur(crop, rng)
    if rng.random() < cfg.noise_p:
        crop = gaussian_noise(crop, rng, cfg.noise_std)
    return crop
