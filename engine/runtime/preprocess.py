"""Image -> network input, the one implementation used by training, export, calibration,
evaluation and the device (numpy + cv2 only: this file is shipped in every bundle).

Both take the network's input convention as keywords: ``channels`` ("rgb" or "bgr": the order
the network was trained on; images here are always RGB) and the per-channel ``mean`` / ``std``
of the [0, 1]-scaled image. They come from the model's registry entry (engine/models/registry.py)
through the bundle manifest, never from constants at a call site; the defaults are those of this
project's own DBNet (ImageNet statistics) and CRNN ([-1, 1]).

Detector: aspect-preserving resize so the longer side is ``max_side``, normalisation, then zero
padding at the bottom/right up to multiples of 32 (the detectors' stride).  Padding is applied
*after* normalisation, i.e. it is the mean colour, so it looks like neither text nor a dark
border.  Boxes found in the padded map are divided by ``scale`` to get back to the original
image; padding never shifts coordinates because it is only at the bottom/right.

Recognizer: each crop resized to ``height`` keeping aspect, width clamped to
[max(8, height // 2), max_width] and rounded up to a multiple of 8 (a small horizontal stretch,
at most 7 px, rather than padding inside the text), normalised, then right-padded with 0 (mid
grey) to the widest crop in the batch.  ``recognizer_widths`` gives each crop's valid width so
the decoder can ignore the padded tail (T_i = W_i / the architecture's ``downsample``).
``batch_by_width`` decides which crops share a batch: neighbours in width, and no more padding
than the target profile allows (padding is computed like text, and an attention recognizer
reads it).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SIGNED = (0.5, 0.5, 0.5)  # mean = std = 0.5: [0, 1] -> [-1, 1]
DET_STRIDE = 32
REC_WIDTH_MULTIPLE = 8
NORM_KEYS = ("channels", "mean", "std")


def norm_of(spec: dict | None) -> dict:
    """The normalisation keywords (channels, mean, std) of a registry / manifest entry."""
    return {k: spec[k] for k in NORM_KEYS if spec and k in spec}


Stats = Sequence[float] | np.ndarray


def _normalise(img: np.ndarray, channels: str, mean: Stats, std: Stats) -> np.ndarray:
    """RGB uint8 H×W×3 -> float32 3×H×W in the network's channel order; ``mean`` / ``std`` are
    per channel of that order."""
    if channels not in ("rgb", "bgr"):
        raise ValueError(f"channels must be 'rgb' or 'bgr', got {channels!r}")
    x = (img[:, :, ::-1] if channels == "bgr" else img).astype(np.float32)
    out: np.ndarray
    if tuple(map(float, mean)) == SIGNED and tuple(map(float, std)) == SIGNED:
        out = x / 127.5 - 1.0
    else:
        out = (x / 255.0 - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def _as_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    elif img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 RGB image, got shape {img.shape}")
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    return img


def _round_up(v: int, m: int) -> int:
    return (v + m - 1) // m * m


def detector_input(
    image_rgb_uint8: np.ndarray, max_side: int, *, channels: str = "rgb",
    mean: Stats = IMAGENET_MEAN, std: Stats = IMAGENET_STD,
) -> tuple[np.ndarray, float]:
    """RGB uint8 H×W×3 -> (float32 1×3×H'×W', scale) with H', W' multiples of 32.

    ``scale`` = max_side / max(H, W): original coordinates = network coordinates / scale.
    """
    if max_side < DET_STRIDE:
        raise ValueError(f"max_side must be >= {DET_STRIDE}, got {max_side}")
    img = _as_rgb(image_rgb_uint8)
    h, w = img.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"empty image of shape {img.shape}")
    scale = float(max_side) / float(max(h, w))
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    resized = cv2.resize(img, (nw, nh), interpolation=interp) if (nh, nw) != (h, w) else img
    ph, pw = _round_up(nh, DET_STRIDE), _round_up(nw, DET_STRIDE)
    out = np.zeros((1, 3, ph, pw), dtype=np.float32)
    out[0, :, :nh, :nw] = _normalise(resized, channels, mean, std)
    return out, scale


def recognizer_widths(
    crops_rgb_uint8: Sequence[np.ndarray], height: int, max_width: int
) -> list[int]:
    """The resized width of each crop (before batch padding), a multiple of 8."""
    max_w = max_width // REC_WIDTH_MULTIPLE * REC_WIDTH_MULTIPLE
    min_w = _round_up(max(REC_WIDTH_MULTIPLE, height // 2), REC_WIDTH_MULTIPLE)
    if max_w < min_w:
        raise ValueError(f"max_width {max_width} is below the minimum crop width {min_w}")
    widths = []
    for crop in crops_rgb_uint8:
        h, w = np.asarray(crop).shape[:2]
        target = round(w * height / h) if h > 0 else min_w
        target = _round_up(max(target, 1), REC_WIDTH_MULTIPLE)
        widths.append(int(min(max(target, min_w), max_w)))
    return widths


def batch_by_width(widths: Sequence[int], batch: int, max_padding: float = 1.0) -> list[list[int]]:
    """Indices grouped in order of width (stable) into chunks of at most ``batch``.

    A chunk also closes before a crop that would make more than ``max_padding`` of the columns
    it computes padding (every crop is padded to the chunk's widest).  1.0 never closes one
    early: the fewest calls, the most padding.  On CPUs padding costs as much as text: the
    flagship's int8 PP-OCRv6 recognizer read a nameplate's ~15 lines in 73.5 ms padded to the
    widest (47 % of the columns padding), in 51.9 ms with at most 30 % per batch (21 %; 2.7
    calls), in 65.3 ms one by one (``python bench/rec_batching.py``, 2 cores).
    """
    order = sorted(range(len(widths)), key=lambda i: widths[i])
    step = max(1, int(batch))
    chunks: list[list[int]] = []
    for i in order:
        chunk = chunks[-1] if chunks else None
        if chunk is not None and len(chunk) < step:
            # widths are ascending, so the new crop is the chunk's widest
            computed = widths[i] * (len(chunk) + 1)
            padded = computed - widths[i] - sum(widths[k] for k in chunk)
            if padded <= max_padding * computed:
                chunk.append(i)
                continue
        chunks.append([i])
    return chunks


def recognizer_input(
    crops_rgb_uint8: Sequence[np.ndarray], height: int, max_width: int, *, channels: str = "rgb",
    mean: Stats = SIGNED, std: Stats = SIGNED,
) -> np.ndarray:
    """List of RGB uint8 crops -> float32 N×3×height×W (normalised), right-padded with 0."""
    widths = recognizer_widths(crops_rgb_uint8, height, max_width)
    batch_w = max(widths) if widths else _round_up(max(8, height // 2), REC_WIDTH_MULTIPLE)
    out = np.zeros((len(widths), 3, height, batch_w), dtype=np.float32)
    for i, (crop, w) in enumerate(zip(crops_rgb_uint8, widths, strict=True)):
        img = _as_rgb(crop)
        if img.shape[0] == 0 or img.shape[1] == 0:
            continue  # an empty crop stays mid grey; the decoder returns "" for it
        resized = cv2.resize(img, (w, height), interpolation=cv2.INTER_LINEAR)
        out[i, :, :, :w] = _normalise(resized, channels, mean, std)
    return out
