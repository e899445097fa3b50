"""Validation: parsed `Sample`s -> canonical `ManifestRecord`s, collecting every problem.

Checks, each reported as ``file:line: message``:

* image paths: absolute paths are rejected, and the resolved path (``..`` and symlinks followed)
  must stay inside the dataset root — a label file must not make the engine read (and ship crops
  of) files elsewhere on the machine;
* images: missing, unreadable or truncated; not a regular file, larger than `MAX_IMAGE_BYTES`,
  or more than `MAX_IMAGE_PIXELS` by its header (checked before anything is decoded, so a
  decompression bomb costs a header read); size different from what the label claims;
  the same image listed twice; more than `MAX_BOXES_PER_IMAGE` text regions;
* polygons: fewer than 4 points, non-finite coordinates, zero area (< `min_area` px²), points
  outside the image.  A point up to `tolerance_px` (default 1 px) outside is *clipped* — tools
  routinely write ``x = width`` or ``-0.5`` for boxes touching the border — anything further out
  is rejected because it means the label belongs to another image or another resolution;
* orientation: quadrilaterals are made clockwise (y down) keeping the annotator's first point,
  which formats like ICDAR define as the text's top-left (so rotated text keeps its reading
  direction); a self-intersecting "bow-tie" quad is re-sorted by angle;
* text: leading/trailing spaces are dropped (the CTC decoder drops them too); empty
  transcriptions on non-ignored lines, tabs/newlines (they cannot go in labels.tsv),
  and characters outside the recipe's charset, with the policy:

  - ``error``: one problem per unknown character with its count and the first few file:line;
  - ``skip``: the line is marked ignore (no recognizer crop; a don't-care region for detection);
  - ``replace``: each unknown character becomes a look-alike in the charset (é -> e, a -> A for
    upper-case charsets), else `placeholder` (must be in the charset), else it is dropped; a line
    left empty is marked ignore.

Warnings (EXIF-rotated images) do not fail validation; they go into the summary.
"""

from __future__ import annotations

import hashlib
import io
import math
import os.path
import warnings as _warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..fsutil import InputTooLarge, NotRegularFile, describe_excess, read_bounded
from .charset import replace_unknown
from .errors import ProblemList
from .formats.base import LabelLine, Sample, looks_absolute
from .limits import MAX_BOXES_PER_IMAGE, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from .manifest import ManifestRecord, TextLine

POLICIES = ("error", "skip", "replace")
MAX_EXAMPLES = 3


@dataclass
class ValidationOptions:
    charset: str | None = None
    on_unknown_char: str = "error"
    placeholder: str | None = None
    tolerance_px: float = 1.0
    min_area: float = 1.0

    def __post_init__(self) -> None:
        if self.on_unknown_char not in POLICIES:
            raise ValueError(f"on_unknown_char must be one of {POLICIES}, got {self.on_unknown_char!r}")
        if self.placeholder is not None:
            if len(self.placeholder) != 1:
                raise ValueError("placeholder must be a single character")
            if self.charset is not None and self.placeholder not in self.charset:
                raise ValueError(f"placeholder {self.placeholder!r} is not in the charset")


@dataclass
class ValidationResult:
    records: list[ManifestRecord]
    problems: ProblemList
    warnings: list[str] = field(default_factory=list)
    #: char -> occurrences outside the charset (all policies), and how lines were treated.
    unknown_chars: Counter = field(default_factory=Counter)
    unknown_examples: dict[str, list[str]] = field(default_factory=dict)
    skipped_lines: int = 0
    replaced_lines: int = 0


def _ref(ln: LabelLine) -> str:
    s = ln.file + (f":{ln.line}" if ln.line is not None else "")
    return s + (f" ({ln.where})" if ln.where else "")


def signed_area(points: list[list[float]]) -> float:
    """Shoelace area; positive means clockwise on screen (y axis pointing down)."""
    s = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1], strict=True):
        s += x0 * y1 - x1 * y0
    return s / 2.0


def _segments_cross(a, b, c, d) -> bool:
    def orient(p, q, r) -> float:
        return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])

    o1, o2, o3, o4 = orient(a, b, c), orient(a, b, d), orient(c, d, a), orient(c, d, b)
    return o1 * o2 < 0 and o3 * o4 < 0


def canonical_polygon(points: list[list[float]]) -> list[list[float]]:
    """Clockwise (y down) polygon; quads keep their first point, bow-tie quads are re-sorted."""
    pts = [list(map(float, p)) for p in points]
    if len(pts) == 4 and (
        _segments_cross(pts[0], pts[1], pts[2], pts[3])
        or _segments_cross(pts[1], pts[2], pts[3], pts[0])
    ):
        cx = sum(p[0] for p in pts) / 4
        cy = sum(p[1] for p in pts) / 4
        first = pts[0]
        pts.sort(key=lambda p: math.atan2(p[1] - cy, p[0] - cx))
        k = pts.index(first)
        pts = pts[k:] + pts[:k]
    if signed_area(pts) < 0:
        pts = [pts[0], *reversed(pts[1:])]
    return pts


def _check_path(s: Sample, root: Path, problems: ProblemList) -> Path | None:
    if looks_absolute(s.raw_path):
        problems.add(s.file, s.line, f"absolute image path {s.raw_path!r} is not allowed; "
                     "write it relative to the dataset", s.where)
        return None
    if "\0" in s.raw_path:
        problems.add(s.file, s.line, f"image path {s.raw_path!r:.80} contains a NUL byte", s.where)
        return None
    real_root = root.resolve()
    try:
        resolved = s.image.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        problems.add(s.file, s.line, f"image path {s.raw_path!r} cannot be resolved: {e}", s.where)
        return None
    if not resolved.is_relative_to(real_root):
        lexical = Path(os.path.normpath(s.image.absolute()))
        why = ("resolves (through a symlink) outside" if lexical.is_relative_to(root.absolute())
               else "escapes")
        problems.add(s.file, s.line, f"image path {s.raw_path!r} {why} the dataset root {root}",
                     s.where)
        return None
    return resolved


def _open_image(path: Path, s: Sample, problems: ProblemList, warnings: list[str]):
    """(width, height, sha256) of a fully decodable image, else None (problem recorded).

    The file is read once, at most `MAX_IMAGE_BYTES`; Pillow's ``open`` reads only the header,
    so the pixel bound is checked before ``load`` decodes anything. (engine/runtime/serve.py
    sniffs upload headers with its own parser, ``image_size``; sharing it would mean moving it
    out of serve.py. Pillow's header is the one of the decoder that then reads these files, and
    it knows every extension a dataset may use, TIFF included.)
    """
    if not path.exists():
        problems.add(s.file, s.line, f"image not found: {s.raw_path}", s.where)
        return None
    try:
        data = read_bounded(path, MAX_IMAGE_BYTES, regular_only=True)
    except InputTooLarge as e:
        problems.add(s.file, s.line, f"image {s.raw_path} is {describe_excess(MAX_IMAGE_BYTES, e.size)}",
                     s.where)
        return None
    except NotRegularFile:
        problems.add(s.file, s.line, f"image {s.raw_path} is not a regular file", s.where)
        return None
    except OSError as e:
        problems.add(s.file, s.line, f"cannot read image {s.raw_path}: {e.strerror or e}", s.where)
        return None
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we bound it below
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    problems.add(s.file, s.line, f"image {s.raw_path} is {w}x{h} = "
                                 f"{w * h / 1e6:.1f} megapixels by its header, more than the "
                                 f"limit of {MAX_IMAGE_PIXELS / 1e6:g}; not decoded", s.where)
                    return None
                im.load()
                orient = im.getexif().get(0x0112, 1)
    except Image.DecompressionBombError as e:  # Pillow's own bound, past 2x its MAX_IMAGE_PIXELS
        problems.add(s.file, s.line, f"image {s.raw_path} refused by its header: {e}", s.where)
        return None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as e:
        problems.add(s.file, s.line, f"cannot decode image {s.raw_path}: {e}", s.where)
        return None
    if orient not in (None, 1):
        warnings.append(f"{path}: EXIF orientation {orient} ignored; labels are taken in stored "
                        "pixel coordinates")
    return w, h, hashlib.sha256(data).hexdigest()


def _check_polygon(ln: LabelLine, w: int, h: int, opt: ValidationOptions,
                   problems: ProblemList) -> list[list[float]] | None:
    pts = ln.points or [[0.0, 0.0], [float(w), 0.0], [float(w), float(h)], [0.0, float(h)]]
    if len(pts) < 4:
        problems.add(ln.file, ln.line, f"polygon has {len(pts)} points (need >= 4)", ln.where)
        return None
    if not all(math.isfinite(v) for p in pts for v in p):
        problems.add(ln.file, ln.line, "polygon has non-finite coordinates", ln.where)
        return None
    t = opt.tolerance_px
    for x, y in pts:
        if x < -t or y < -t or x > w + t or y > h + t:
            problems.add(ln.file, ln.line, f"point ({x:g}, {y:g}) is outside the {w}x{h} image "
                         f"by more than {t:g} px", ln.where)
            return None
    pts = [[min(max(x, 0.0), float(w)), min(max(y, 0.0), float(h))] for x, y in pts]
    pts = canonical_polygon(pts)
    area = abs(signed_area(pts))
    if area < opt.min_area:
        problems.add(ln.file, ln.line, f"polygon has zero area ({area:.2g} px²)", ln.where)
        return None
    return pts


def validate_samples(samples: list[Sample], root: str | Path, split: str,
                     options: ValidationOptions | None = None) -> ValidationResult:
    """Check `samples` read from dataset `root` and build manifest records for `split`."""
    opt = options or ValidationOptions()
    root = Path(root)
    res = ValidationResult([], ProblemList())
    allowed = set(opt.charset) if opt.charset is not None else None
    unknown_refs: dict[str, list[LabelLine]] = defaultdict(list)
    seen: dict[Path, str] = {}
    for s in samples:
        path = _check_path(s, root, res.problems)
        if path is None:
            continue
        here = s.file + (f":{s.line}" if s.line is not None else "")
        if path in seen:
            res.problems.add(s.file, s.line, f"image {s.raw_path} is listed twice "
                             f"(also at {seen[path]})", s.where)
            continue
        seen[path] = here
        if len(s.lines) > MAX_BOXES_PER_IMAGE:
            first = s.lines[MAX_BOXES_PER_IMAGE]
            res.problems.add(first.file, first.line, f"{len(s.lines):,} text regions for image "
                             f"{s.raw_path}, more than the limit of {MAX_BOXES_PER_IMAGE:,}",
                             s.where)
            continue
        info = _open_image(path, s, res.problems, res.warnings)
        if info is None:
            continue
        w, h, sha = info
        if s.size_hint is not None and tuple(s.size_hint) != (w, h):
            res.problems.add(s.file, s.line, f"label says the image is {s.size_hint[0]}x"
                             f"{s.size_hint[1]} but {s.raw_path} is {w}x{h}", s.where)
            continue
        lines: list[TextLine] = []
        for ln in s.lines:
            pts = _check_polygon(ln, w, h, opt, res.problems)
            if pts is None:
                continue
            text, ignore = ln.text, ln.ignore
            if not ignore:
                text = text.strip(" ")  # the recognizer's decoder strips the ends the same way
                if not text.strip():
                    res.problems.add(ln.file, ln.line, "empty transcription (use ### to mark an "
                                     "unreadable region)", ln.where)
                    continue
                if "\t" in text or "\n" in text:
                    res.problems.add(ln.file, ln.line, "transcription contains a tab or newline",
                                     ln.where)
                    continue
                bad = [c for c in text if c not in allowed] if allowed is not None else []
                if bad:
                    res.unknown_chars.update(bad)
                    for c in dict.fromkeys(bad):
                        if len(unknown_refs[c]) < MAX_EXAMPLES:
                            unknown_refs[c].append(ln)
                    if opt.on_unknown_char == "skip":
                        ignore = True
                        res.skipped_lines += 1
                    elif opt.on_unknown_char == "replace":
                        text = replace_unknown(text, allowed, opt.placeholder)  # type: ignore[arg-type]
                        res.replaced_lines += 1
                        if not text.strip():
                            ignore = True
            lines.append(TextLine(pts, text, ignore))
        res.records.append(ManifestRecord(str(path), w, h, sha, split, lines,
                                          recognition_only=s.recognition_only))
    res.unknown_examples = {c: [_ref(ln) for ln in lns] for c, lns in unknown_refs.items()}
    if opt.on_unknown_char == "error":
        for c, n in res.unknown_chars.most_common():
            first = unknown_refs[c][0]
            res.problems.add(first.file, first.line,
                             f"character {c!r} (U+{ord(c):04X}) is not in the charset: {n} "
                             f"occurrence(s), e.g. {', '.join(res.unknown_examples[c])} "
                             "(add it to the charset or set on_unknown_char: skip|replace)",
                             first.where)
    return res


def find_duplicates(records: list[ManifestRecord]) -> list[dict]:
    """Groups of records with the same sha256: ``{"sha256", "images", "splits", "cross_split"}``."""
    groups: dict[str, list[ManifestRecord]] = defaultdict(list)
    for r in records:
        groups[r.sha256].append(r)
    out = []
    for sha, rs in sorted(groups.items()):
        if len(rs) > 1:
            splits = sorted({r.split for r in rs})
            out.append({"sha256": sha, "images": [r.image for r in rs], "splits": splits,
                        "cross_split": len(splits) > 1})
    return out
