"""What every dataset reader produces, and small helpers they share.

Readers only *parse*: they turn label files into `Sample`s that still remember where each
image and each text line came from (file + line), so that validation — which opens images,
checks polygons against image sizes, paths against the dataset root and text against the
charset — can report every problem as ``file:line: message``.  Validation then turns samples
into canonical `ManifestRecord`s.  Keeping parsing and checking apart means five formats share
one set of checks instead of five slightly different ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DatasetError, ProblemList

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IGNORE_TEXTS = frozenset({"###"})


@dataclass
class LabelLine:
    """A text region as parsed, with its source.  `points` None means "the whole image"."""

    points: list[list[float]] | None
    text: str
    ignore: bool
    file: str
    line: int | None
    where: str | None = None


@dataclass
class Sample:
    """One image as a label file describes it.

    `raw_path` is the image path exactly as written in the label (or as found on disk), kept so
    validation can reject absolute paths and ``..`` escapes; `image` is where the reader resolved
    it.  `size_hint` is the (width, height) the label file claims, checked against the image.
    """

    image: Path
    raw_path: str
    file: str
    line: int | None
    lines: list[LabelLine] = field(default_factory=list)
    where: str | None = None
    size_hint: tuple[int, int] | None = None
    recognition_only: bool = False


class DatasetReader:
    """Base class: subclasses implement `parse`; `read` raises one DatasetError for all problems."""

    name: str = ""
    #: Default label file name (relative to the dataset root) for formats with a single label file.
    default_label_file: str | None = None

    def parse(self, root: Path, label_file: Path | None = None) -> tuple[list[Sample], ProblemList]:
        raise NotImplementedError

    def read(self, root: str | Path, label_file: str | Path | None = None) -> list[Sample]:
        samples, problems = self.parse(Path(root), Path(label_file) if label_file else None)
        problems.raise_if_any()
        return samples


def looks_absolute(raw: str) -> bool:
    """POSIX absolute, Windows drive (``C:\\``) or UNC (``\\\\host``) paths."""
    return raw.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:[\\/]", raw))


def normalise_label_path(raw: str) -> str:
    """Label files written on Windows use backslashes; make them POSIX."""
    return raw.strip().replace("\\", "/")


def find_image_by_stem(directory: Path, stem: str) -> Path | None:
    """The image named `stem` with any known extension (any case) in `directory`."""
    for ext in IMAGE_EXTENSIONS:
        for cand in (directory / f"{stem}{ext}", directory / f"{stem}{ext.upper()}"):
            if cand.is_file():
                return cand
    return None


def list_images(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def first_existing_dir(root: Path, names: tuple[str, ...]) -> Path:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return root


def read_text_lines(path: Path, problems: ProblemList) -> list[str] | None:
    """Read a UTF-8 (optionally BOM-prefixed) text file as lines; report bad encoding with its line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        problems.add(path, None, f"cannot read label file: {e.strerror or e}")
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        problems.add(path, line, f"not valid UTF-8 (byte {e.start}); save the file as UTF-8")
        return None
    return text.splitlines()


def fmt_num(v: float) -> str:
    """Shortest faithful text for a coordinate: integers without '.0', else up to 3 decimals."""
    v = float(v)
    if v.is_integer():
        return str(int(v))
    return f"{round(v, 3):.3f}".rstrip("0").rstrip(".")


def check_root(root: Path, problems: ProblemList) -> bool:
    if not root.is_dir():
        problems.add(root, None, "dataset directory does not exist")
        return False
    return True


__all__ = [
    "IGNORE_TEXTS",
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "DatasetReader",
    "LabelLine",
    "ProblemList",
    "Sample",
    "check_root",
    "find_image_by_stem",
    "first_existing_dir",
    "fmt_num",
    "list_images",
    "looks_absolute",
    "normalise_label_path",
    "read_text_lines",
]
