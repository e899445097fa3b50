"""Training datasets built on the canonical manifest and the recognizer crops.

Both datasets apply the *same* preprocessing the device applies (engine.runtime.preprocess:
``detector_input`` / ``recognizer_input``), after augmentation on uint8 RGB images, so training
never sees a normalisation the deployed model does not get.

Randomness: each sample draws a fresh ``numpy.random.Generator`` seeded from torch's RNG. The
training loop re-seeds torch at every epoch (and torch seeds each DataLoader worker from the
epoch's generator), so a resumed run augments epoch k exactly like the uninterrupted run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from engine.data.crops import CONTEXT_FILE
from engine.data.errors import DatasetError, Problem
from engine.data.manifest import ManifestRecord, load_image_rgb, read_crop_labels, read_manifest

from .augment import (
    DetAugConfig,
    RecAugConfig,
    augment_crop,
    augment_detection,
    cut_context,
    fit_to_size,
)


def sample_rng() -> np.random.Generator:
    """A per-sample generator derived from torch's (epoch-seeded, worker-seeded) RNG."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


# ---------------------------------------------------------------------------------------------
# Detection


def detection_records(
    manifest: str | Path | Sequence[ManifestRecord], split: str
) -> list[ManifestRecord]:
    """Records of ``split`` usable by the detector (recognition-only records are skipped)."""
    records = read_manifest(manifest) if isinstance(manifest, str | Path) else list(manifest)
    return [r for r in records if r.split == split and not r.recognition_only]


class DetectionDataset(Dataset):
    """Manifest images -> (normalised image, DBNet targets) at a fixed square ``size``.

    Items are dicts of tensors: ``image`` 3xSxS float32 (ImageNet-normalised by
    ``detector_input``), ``shrink_map``, ``shrink_mask``, ``thresh_map``, ``thresh_mask`` SxS
    float32 (and ``shrink_weight`` with ``gap_weight`` > 0: engine/models/dbnet/labels.py), and
    ``index`` (the record's position). The default collate stacks them.
    With ``augment=False`` the image is only fitted into ``size`` and padded (validation loss,
    overfitting checks).
    """

    def __init__(
        self,
        manifest: str | Path | Sequence[ManifestRecord],
        split: str = "train",
        size: int = 640,
        augment: bool = True,
        aug: DetAugConfig | None = None,
        shrink_ratio: float = 0.4,
        thresh_min: float = 0.3,
        thresh_max: float = 0.7,
        min_text_size: float = 8.0,
        inputs: dict[str, Any] | None = None,
        gap_weight: float = 0.0,
    ):
        if size % 32:
            raise ValueError(f"detector training size must be a multiple of 32, got {size}")
        self.records = detection_records(manifest, split)
        self.size = int(size)
        self.augment = augment
        self.aug = aug or DetAugConfig(size=size)
        self.aug.size = self.size
        self.inputs = dict(inputs or {})  # the detector's input convention (registry)
        self.label_args = {
            "shrink_ratio": shrink_ratio,
            "thresh_min": thresh_min,
            "thresh_max": thresh_max,
            "min_text_size": min_text_size,
            "gap_weight": gap_weight,
        }

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> tuple[np.ndarray, list[np.ndarray], list[bool]]:
        rec = self.records[index]
        image = load_image_rgb(rec.image)
        if image.shape[:2] != (rec.height, rec.width):
            raise DatasetError(
                [
                    Problem(
                        rec.image,
                        None,
                        f"image is {image.shape[1]}x{image.shape[0]} but the "
                        f"manifest says {rec.width}x{rec.height}; rerun the data stage",
                    )
                ]
            )
        polys = [np.asarray(ln.points, dtype=np.float32).reshape(-1, 2) for ln in rec.lines]
        ignore = [bool(ln.ignore or ln.text == "###") for ln in rec.lines]
        return image, polys, ignore

    def __getitem__(self, index: int) -> dict[str, Any]:
        from engine.models.dbnet.labels import make_db_targets

        image, polys, ignore = self.load(index)
        if self.augment:
            image, polys, ignore = augment_detection(image, polys, ignore, sample_rng(), self.aug)
        else:
            image, polys, _ = fit_to_size(image, polys, self.size)
        targets = make_db_targets(polys, ignore, self.size, self.size, **self.label_args)
        item: dict[str, Any] = {"image": torch.from_numpy(detector_canvas(image, self.size, self.inputs))}
        for key, value in targets.items():
            item[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        item["index"] = index
        return item


def detector_canvas(image: np.ndarray, size: int, inputs: dict[str, Any] | None = None) -> np.ndarray:
    """Normalise an image no larger than ``size`` at scale 1 and pad it to 3 x size x size.

    ``detector_input`` does the normalisation and its own stride padding; padding further with
    zeros continues that padding exactly (0 after normalisation is the mean colour), so training
    inputs look like the device's, bottom/right padding included.
    """
    from engine.runtime.preprocess import detector_input, norm_of

    h, w = image.shape[:2]
    if h > size or w > size:
        raise ValueError(f"image {w}x{h} is larger than the training size {size}")
    if max(h, w) < 32:  # detector_input's minimum side; only for tiny images
        grown = np.zeros((h, max(w, 32), 3), dtype=np.uint8)
        grown[:, :w] = image
        image, w = grown, grown.shape[1]
    tensor, scale = detector_input(image, max(h, w), **norm_of(inputs))
    if scale != 1.0:
        raise RuntimeError(f"detector_input rescaled a {w}x{h} image by {scale}")
    out = np.zeros((3, size, size), dtype=np.float32)
    th, tw = min(tensor.shape[2], size), min(tensor.shape[3], size)
    out[:, :th, :tw] = tensor[0, :, :th, :tw]
    return out


# ---------------------------------------------------------------------------------------------
# Recognition


def _label_line(labels_tsv: Path, name: str) -> int | None:
    try:
        with open(labels_tsv, encoding="utf-8") as fh:
            for n, raw in enumerate(fh, 1):
                if raw.split("\t", 1)[0] == name:
                    return n
    except OSError:
        return None
    return None


class RecognitionDataset(Dataset):
    """``crops/<split>/labels.tsv`` -> (augmented uint8 crop, class ids).

    Class ids follow the contract: blank is 0 and ``charset[i]`` is ``i + 1``. A text with a
    character outside the charset raises `DatasetError` naming labels.tsv and its line
    (``unknown="skip"`` drops such samples instead and counts them in ``skipped``). Empty texts are
    dropped (CTC cannot learn from them). Use `RecognitionCollate` as the DataLoader's collate_fn.
    """

    def __init__(
        self,
        crops_dir: str | Path,
        charset: str,
        augment: bool = True,
        aug: RecAugConfig | None = None,
        unknown: str = "error",
    ):
        if unknown not in ("error", "skip"):
            raise ValueError(f"unknown must be 'error' or 'skip', got {unknown!r}")
        self.crops_dir = Path(crops_dir)
        self.charset = charset
        self.index = {c: i + 1 for i, c in enumerate(charset)}
        self.augment = augment
        self.aug = aug or RecAugConfig()
        self.samples: list[tuple[Path, str, list[int]]] = []
        context = self.crops_dir / CONTEXT_FILE  # train crops carry context (engine.data.crops)
        self.context_pad = float(json.loads(context.read_text())["pad"]) if context.exists() else 0.0
        self.skipped: list[tuple[Path, str]] = []
        labels_tsv = self.crops_dir / "labels.tsv"
        problems: list[Problem] = []
        for path, text in read_crop_labels(self.crops_dir):
            if not text:
                self.skipped.append((path, text))
                continue
            bad = sorted({c for c in text if c not in self.index})
            if bad:
                if unknown == "skip":
                    self.skipped.append((path, text))
                    continue
                problems.append(
                    Problem(
                        str(labels_tsv),
                        _label_line(labels_tsv, path.name),
                        f"{path.name}: characters {bad!r} of {text!r} are not in the charset",
                    )
                )
                continue
            self.samples.append((path, text, [self.index[c] for c in text]))
        if problems:
            raise DatasetError(problems)

    def __len__(self) -> int:
        return len(self.samples)

    def bucket_keys(self) -> list[float]:
        """Width/height of every crop (PNG headers only), for batching similar widths."""
        from PIL import Image

        keys = []
        for path, _, _ in self.samples:
            with Image.open(path) as im:
                keys.append(im.width / max(im.height, 1))
        return keys

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, text, ids = self.samples[index]
        crop = load_image_rgb(path)
        rng = sample_rng() if self.augment else None
        if self.context_pad:
            crop = cut_context(crop, self.context_pad, rng, self.aug)
        if rng is not None:
            crop = augment_crop(crop, rng, self.aug)
        return {
            "image": crop,
            "text": text,
            "label": torch.tensor(ids, dtype=torch.long),
            "index": index,
        }


class RecognitionCollate:
    """Batch crops with ``recognizer_input`` (resize to ``height``, pad to the widest).

    Returns ``image`` Nx3xHxW float32, ``targets`` (concatenated class ids), ``target_lengths``,
    ``widths`` (each crop's width before padding) and ``input_lengths`` = widths // downsample
    (the CRNN emits one step per 4 input columns, PP-OCRv6 per 8), plus ``texts`` for
    logging/validation. ``inputs``: the recognizer's input convention (registry). A class (not
    a closure) so DataLoader workers can pickle it.
    """

    def __init__(self, height: int = 32, max_width: int = 320, downsample: int = 4,
                 inputs: dict[str, Any] | None = None):
        self.height = int(height)
        self.max_width = int(max_width)
        self.downsample = int(downsample)
        self.inputs = dict(inputs or {})

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        from engine.runtime.preprocess import norm_of, recognizer_input, recognizer_widths

        crops = [it["image"] for it in items]
        widths = recognizer_widths(crops, self.height, self.max_width)
        batch = recognizer_input(crops, self.height, self.max_width, **norm_of(self.inputs))
        labels = [it["label"] for it in items]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(batch)),
            "targets": torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long),
            "target_lengths": torch.tensor([len(x) for x in labels], dtype=torch.long),
            "widths": torch.tensor(widths, dtype=torch.long),
            "input_lengths": torch.tensor(
                [max(1, w // self.downsample) for w in widths], dtype=torch.long
            ),
            "texts": [it["text"] for it in items],
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        }
