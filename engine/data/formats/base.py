"""What every dataset reader produces, and small helpers they share.

Readers only *parse*: they turn label files into `Sample`s that still remember where each
image and each text line came from (file + line), so that validation — which opens images,
checks polygons against image sizes, paths against the dataset root and text against the
charset — can report every problem as ``file:line: message``.  Validation then turns samples
into canonical `ManifestRecord`s.  Keeping parsing and checking apart means five formats share
one set of checks instead of five slightly different ones.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...fsutil import InputTooLarge, NotRegularFile, describe_excess, read_bounded
from ..errors import DatasetError, ProblemList
from ..limits import MAX_LABEL_FILE_BYTES, MAX_LINE_CHARS, MAX_POINTS_PER_POLYGON

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


def inside_root(path: Path, root: Path) -> bool:
    """True when ``path``, ``..`` and symlinks followed, lies inside ``root`` (also resolved)."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return False


def read_label_bytes(path: Path, root: Path, problems: ProblemList,
                     limit: int = MAX_LABEL_FILE_BYTES) -> bytes | None:
    """The bytes of a label file, or None with a problem naming it.

    The one way every reader opens a label file: it must lie inside the dataset root once
    symlinks are followed (a ``gt_a.txt -> /etc/shadow`` link is refused, not read), be a
    regular file (a FIFO would block, ``/dev/zero`` never end) and hold at most ``limit`` bytes;
    nothing past ``limit + 1`` bytes is read.
    """
    if not inside_root(path, root):
        problems.add(path, None, f"label file resolves outside the dataset root {root} "
                     "(a symlink or '..'); copy it into the dataset")
        return None
    try:
        return read_bounded(path, limit, regular_only=True)
    except InputTooLarge as e:
        problems.add(path, None, f"label file is {describe_excess(limit, e.size)}; "
                     "split the dataset")
    except NotRegularFile:
        problems.add(path, None, "label file is not a regular file (a FIFO, device or socket)")
    except OSError as e:
        problems.add(path, None, f"cannot read label file: {e.strerror or e}")
    return None


def decode_label_text(data: bytes, path: Path, problems: ProblemList) -> str | None:
    """UTF-8 (optionally BOM-prefixed) text; bad encoding is a problem naming its line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        problems.add(path, line, f"not valid UTF-8 (byte {e.start}); save the file as UTF-8")
        return None


def read_text_lines(path: Path, root: Path, problems: ProblemList,
                    limit: int = MAX_LABEL_FILE_BYTES) -> list[str] | None:
    """A line-oriented label file as lines (numbered as editors number them: by ``\\n``).

    A line longer than `MAX_LINE_CHARS` is reported with its number and returned empty, so the
    reader skips it like a blank line and goes on with the next.
    """
    data = read_label_bytes(path, root, problems, limit)
    if data is None:
        return None
    text = decode_label_text(data, path, problems)
    if text is None:
        return None
    lines = text.split("\n")
    for n, line in enumerate(lines, 1):
        if len(line) > MAX_LINE_CHARS:
            problems.add(path, n, f"line is {len(line):,} characters long, more than the limit "
                         f"of {MAX_LINE_CHARS:,}")
            lines[n - 1] = ""
    return lines


def json_value(text: str, start: int = 0) -> tuple[Any, int]:
    """``json.JSONDecoder.raw_decode`` that fails only with ValueError.

    Its `json.JSONDecodeError` keeps ``lineno``/``colno`` of the whole text; a document nested
    too deeply for the decoder (``[[[[...``: a RecursionError from the C scanner) becomes a
    plain ValueError saying so.
    """
    try:
        return _DECODER.raw_decode(text, start)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


_DECODER = json.JSONDecoder()


def parse_points(raw: Any, sx: float = 1.0, sy: float = 1.0) -> list[list[float]]:
    """``[[x, y], ...]`` (numbers) -> float points scaled by (sx, sy); ValueError saying why not.

    The one parser of JSON polygons (PPOCRLabel, Label Studio), so both bound the point count
    (`MAX_POINTS_PER_POLYGON`) and take no other shape.
    """
    if not isinstance(raw, list):
        raise ValueError(f"points must be a list [[x, y], ...], got {raw!r:.60}")
    if len(raw) > MAX_POINTS_PER_POLYGON:
        raise ValueError(f"polygon has {len(raw):,} points, more than the limit of "
                         f"{MAX_POINTS_PER_POLYGON}")
    out: list[list[float]] = []
    for p in raw:
        try:
            if not isinstance(p, list | tuple) or len(p) != 2:
                raise TypeError
            out.append([float(p[0]) * sx, float(p[1]) * sy])
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"points must be [[x, y], ...], got {raw!r:.60}") from None
    return out


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
    "decode_label_text",
    "find_image_by_stem",
    "first_existing_dir",
    "fmt_num",
    "inside_root",
    "json_value",
    "list_images",
    "looks_absolute",
    "normalise_label_path",
    "parse_points",
    "read_label_bytes",
    "read_text_lines",
]
