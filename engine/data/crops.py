"""Recognizer crops: every non-ignored text line cut out by a perspective transform.

Written as ``crops/<split>/NNNNNN.png`` (RGB PNG, lossless so the recognizer sees what the detector
would hand it) plus ``labels.tsv`` (``NNNNNN.png<TAB>text``), the layout in the contract.  The cut
uses the runtime's `crop_polygon` so training crops and device crops are made the same way.
Recognition-only records are already crops: the image itself is written.

Training crops keep context: each train crop is cut from the polygon grown by `TRAIN_CONTEXT` of
the line height on every side (recognition-only images get replicated borders instead), and
``crops/train/context.json`` records that fraction.  The recognizer's dataset cuts a random
margin out of it per sample, so it learns to read the loose or tight boxes a detector hands it at
run time; without it the recognizer, trained on exact boxes, mis-reads every detected box that
carries a few pixels of plate around the text.  Validation crops stay exact (ground-truth boxes).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from engine.runtime.geometry import crop_polygon, min_area_quad

from .manifest import ManifestRecord, atomic_write_text, load_image_rgb

MIN_CROP_SIDE = 2
TRAIN_CONTEXT = 0.5  # context around train crops, as a fraction of the line's short side
CONTEXT_FILE = "context.json"


def expand_quad(quad: np.ndarray, margin: float) -> np.ndarray:
    """Grow an ordered quadrilateral (top-left, top-right, bottom-right, bottom-left) by
    ``margin`` pixels along its own reading and line directions (so rotated lines grow along
    themselves, not along the image axes)."""
    q = np.asarray(quad, dtype=np.float64).reshape(4, 2)
    along = (q[1] - q[0]) + (q[2] - q[3])
    down = (q[3] - q[0]) + (q[2] - q[1])
    u = along / max(float(np.linalg.norm(along)), 1e-6)
    v = down / max(float(np.linalg.norm(down)), 1e-6)
    signs = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    return (q + margin * (signs[:, :1] * u + signs[:, 1:] * v)).astype(np.float32)


def context_crop(image: np.ndarray, points, pad: float) -> np.ndarray:
    """`crop_polygon` of ``points`` grown by ``pad`` × the line's short side on every side."""
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    quad = pts if len(pts) == 4 else min_area_quad(pts)
    w = max(np.linalg.norm(quad[0] - quad[1]), np.linalg.norm(quad[3] - quad[2]))
    h = max(np.linalg.norm(quad[0] - quad[3]), np.linalg.norm(quad[1] - quad[2]))
    return crop_polygon(image, expand_quad(quad, pad * float(min(w, h))))


def pad_crop(crop: np.ndarray, pad: float) -> np.ndarray:
    """A recognition-only image given the same context by replicating its border."""
    m = round(pad * min(crop.shape[:2]))
    return cv2.copyMakeBorder(crop, m, m, m, m, cv2.BORDER_REPLICATE)


def write_crops(
    records: list[ManifestRecord], crops_dir: str | Path, warnings: list[str] | None = None
) -> dict[str, int]:
    """Write crops for all records, grouped by split; returns {split: number of crops}.

    Crops smaller than 2 px on a side are skipped with a warning (nothing to read in them).
    """
    crops_dir = Path(crops_dir)
    counts: dict[str, int] = {}
    rows: dict[str, list[str]] = {}
    for rec in records:
        todo = [ln for ln in rec.lines if not ln.ignore]
        if not todo:
            continue
        img = load_image_rgb(rec.image)
        split_dir = crops_dir / rec.split
        split_dir.mkdir(parents=True, exist_ok=True)
        for ln in todo:
            if rec.split == "train":
                crop = (pad_crop(img, TRAIN_CONTEXT) if rec.recognition_only
                        else context_crop(img, ln.points, TRAIN_CONTEXT))
            else:
                crop = img if rec.recognition_only else crop_polygon(img, np.asarray(ln.points))
            if min(crop.shape[:2]) < MIN_CROP_SIDE:
                if warnings is not None:
                    warnings.append(f"{rec.image}: crop of {ln.text!r} is {crop.shape[1]}x"
                                    f"{crop.shape[0]} px, skipped")
                continue
            k = counts.get(rec.split, 0)
            name = f"{k:06d}.png"
            ok, buf = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
            if not ok:
                raise RuntimeError(f"cannot encode crop {name} of {rec.image}")
            (split_dir / name).write_bytes(buf.tobytes())
            rows.setdefault(rec.split, []).append(f"{name}\t{ln.text}\n")
            counts[rec.split] = k + 1
    for split in ("train", "val"):
        (crops_dir / split).mkdir(parents=True, exist_ok=True)
        atomic_write_text(crops_dir / split / "labels.tsv", "".join(rows.get(split, [])))
    atomic_write_text(crops_dir / "train" / CONTEXT_FILE, json.dumps({"pad": TRAIN_CONTEXT}) + "\n")
    return counts
