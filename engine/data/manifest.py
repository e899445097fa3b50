"""The canonical dataset manifest: the one file every stage after `data` reads.

Whatever format the user labelled in, the data stage writes ``manifest.jsonl`` with one JSON object
per image (absolute image path, size, sha256, split, text lines with polygons).  Training,
evaluation and calibration read this file and never the original labels, so format quirks live in
exactly one place (engine/data/formats).

Recognition-only datasets (the ``lines`` format: one cropped word image + its text) produce records
with ``"recognition_only": true`` and one line covering the whole image; the key is written only
when true, so detection manifests are exactly the shape in the contract.  Detector training must
skip such records.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..fsutil import atomic_write_bytes, atomic_write_text  # noqa: F401 - re-exported
from .errors import DatasetError, Problem

SPLITS = ("train", "val")


@dataclass
class TextLine:
    """One text region: polygon (>= 4 points, pixel floats), transcription, ignore flag."""

    points: list[list[float]]
    text: str
    ignore: bool = False

    def to_dict(self) -> dict:
        return {
            "points": [[round(float(x), 3), round(float(y), 3)] for x, y in self.points],
            "text": self.text,
            "ignore": bool(self.ignore),
        }

    @classmethod
    def from_dict(cls, d: dict) -> TextLine:
        return cls(
            points=[[float(x), float(y)] for x, y in d["points"]],
            text=str(d.get("text", "")),
            ignore=bool(d.get("ignore", False)),
        )


@dataclass
class ManifestRecord:
    """One image of the dataset with all its text lines."""

    image: str
    width: int
    height: int
    sha256: str
    split: str
    lines: list[TextLine] = field(default_factory=list)
    recognition_only: bool = False

    def to_dict(self) -> dict:
        d = {
            "image": self.image,
            "width": int(self.width),
            "height": int(self.height),
            "sha256": self.sha256,
            "split": self.split,
            "lines": [ln.to_dict() for ln in self.lines],
        }
        if self.recognition_only:
            d["recognition_only"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ManifestRecord:
        return cls(
            image=str(d["image"]),
            width=int(d["width"]),
            height=int(d["height"]),
            sha256=str(d.get("sha256", "")),
            split=str(d["split"]),
            lines=[TextLine.from_dict(x) for x in d.get("lines", [])],
            recognition_only=bool(d.get("recognition_only", False)),
        )



def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(path: str | Path, records: list[ManifestRecord]) -> None:
    """Write manifest.jsonl atomically (one compact JSON object per line, UTF-8, not ASCII-escaped)."""
    body = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records)
    atomic_write_text(path, body)


def read_manifest(path: str | Path) -> list[ManifestRecord]:
    """Read manifest.jsonl; a malformed line raises DatasetError naming file:line."""
    path = Path(path)
    records: list[ManifestRecord] = []
    problems: list[Problem] = []
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rec = ManifestRecord.from_dict(json.loads(raw))
            except (ValueError, KeyError, TypeError) as e:
                problems.append(Problem(str(path), n, f"bad manifest record: {e!r}"))
                continue
            if rec.split not in SPLITS:
                problems.append(Problem(str(path), n, f"split {rec.split!r} is not one of {SPLITS}"))
                continue
            records.append(rec)
    if problems:
        raise DatasetError(problems)
    return records


def read_crop_labels(directory: str | Path) -> list[tuple[Path, str]]:
    """Read ``<dir>/labels.tsv`` (``NNNNNN.png<TAB>text``) -> [(absolute crop path, text)]."""
    directory = Path(directory)
    label_path = directory / "labels.tsv"
    out: list[tuple[Path, str]] = []
    problems: list[Problem] = []
    with open(label_path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip("\n").rstrip("\r")
            if not line:
                continue
            name, sep, text = line.partition("\t")
            if not sep:
                problems.append(Problem(str(label_path), n, "expected NAME<TAB>TEXT"))
                continue
            out.append(((directory / name).resolve(), text))
    if problems:
        raise DatasetError(problems)
    return out


def load_image_rgb(path: str | Path) -> np.ndarray:
    """Decode an image as an HxWx3 uint8 RGB array in *stored* pixel order.

    EXIF orientation is deliberately ignored: labelling tools disagree about it, and the manifest's
    width/height and polygons are in stored pixels (validation warns about rotated-EXIF images).
    Training and evaluation should load through this function so they agree with the labels.
    """
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise DatasetError([Problem(str(path), None, "cannot decode image")])
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
