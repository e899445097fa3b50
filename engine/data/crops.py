"""Recognizer crops: every non-ignored text line cut out by a perspective transform.

Written as ``crops/<split>/NNNNNN.png`` (RGB PNG, lossless so the recognizer sees what the detector
would hand it) plus ``labels.tsv`` (``NNNNNN.png<TAB>text``), the layout in the contract.  The cut
uses the runtime's `crop_polygon` so training crops and device crops are made the same way.
Recognition-only records are already crops: the image itself is written.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import cv2
import numpy as np

from engine.runtime.geometry import crop_polygon as _geometry_crop

from .manifest import ManifestRecord, atomic_write_text, load_image_rgb


def _crop_function():
    """The runtime's crop_polygon: engine.runtime.postprocess's once it exists (the contract's
    home for it), else engine.runtime.geometry's — the same function the device uses."""
    try:
        postprocess = importlib.import_module("engine.runtime.postprocess")
    except ModuleNotFoundError as e:
        if e.name != "engine.runtime.postprocess":
            raise
        return _geometry_crop
    return getattr(postprocess, "crop_polygon", _geometry_crop)


MIN_CROP_SIDE = 2


def write_crops(
    records: list[ManifestRecord], crops_dir: str | Path, warnings: list[str] | None = None
) -> dict[str, int]:
    """Write crops for all records, grouped by split; returns {split: number of crops}.

    Crops smaller than 2 px on a side are skipped with a warning (nothing to read in them).
    """
    crops_dir = Path(crops_dir)
    crop_polygon = _crop_function()
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
    return counts
