"""ICDAR 2015 incidental-text format.

Layout: images ``<stem>.<ext>`` and one ground-truth file per image ``gt_<stem>.txt`` whose lines
are ``x1,y1,x2,y2,x3,y3,x4,y4,transcription``.  The transcription is everything after the eighth
comma, so it may itself contain commas (``12,5 kW``).  ``###`` marks a region that must be ignored
(unreadable).  The official files start with a UTF-8 BOM, hence ``utf-8-sig``.

Where files live: images in ``root/images`` or ``root/imgs``, else the one ``*_images``
directory (the official ``ch4_training_images``), else ``root``; ground truth in ``root/gt``,
``root/labels``, ``root/annotations``, else the one ``*_gt`` directory
(``ch4_training_localization_transcription_gt``), else ``root``.  `label_file`, when given,
names the ground-truth directory instead.  An image without a gt file and a gt file without an
image are both problems: in this format an image with no text has an *empty* gt file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import ProblemList
from ..manifest import ManifestRecord, atomic_write_text
from .base import (
    IGNORE_TEXTS,
    DatasetReader,
    LabelLine,
    Sample,
    check_root,
    find_image_by_stem,
    first_existing_dir,
    fmt_num,
    list_images,
    read_text_lines,
)

N_COORDS = 8


def _single(root: Path, pattern: str) -> tuple[str, ...]:
    """The name of the only directory in `root` matching `pattern`, if exactly one does."""
    found = [p.name for p in root.glob(pattern) if p.is_dir()]
    return tuple(found) if len(found) == 1 else ()


def parse_gt_line(raw: str) -> tuple[list[list[float]], str]:
    """Parse one gt line -> (4 points, transcription); raises ValueError with a user message."""
    fields = raw.split(",")
    nums: list[float] = []
    for f in fields[:N_COORDS]:
        try:
            nums.append(float(f.strip()))
        except ValueError:
            break
    if len(nums) < N_COORDS:
        if len(nums) % 2 == 0 and len(nums) >= 2:
            raise ValueError(f"polygon has {len(nums) // 2} points (need >= 4)")
        raise ValueError(
            f"expected 8 comma-separated coordinates then the transcription, "
            f"found {len(nums)} number(s)"
        )
    if len(fields) <= N_COORDS:
        raise ValueError("missing transcription after the 8 coordinates (use ### to ignore)")
    text = ",".join(fields[N_COORDS:])
    points = [[nums[i], nums[i + 1]] for i in range(0, N_COORDS, 2)]
    return points, text


class Icdar2015Reader(DatasetReader):
    name = "icdar2015"

    def parse(self, root: Path, label_file: Path | None = None) -> tuple[list[Sample], ProblemList]:
        problems = ProblemList()
        if not check_root(root, problems):
            return [], problems
        gt_dir = label_file or first_existing_dir(
            root, ("gt", "labels", "annotations", *_single(root, "*_gt"))
        )
        img_dir = first_existing_dir(root, ("images", "imgs", *_single(root, "*_images")))
        if not gt_dir.is_dir():
            problems.add(gt_dir, None, "ground-truth directory does not exist")
            return [], problems
        samples: list[Sample] = []
        seen_stems: set[str] = set()
        gt_files = sorted(gt_dir.glob("gt_*.txt"))
        if not gt_files:
            problems.add(gt_dir, None, "no gt_<image>.txt files found (is this ICDAR 2015?)")
        for gt in gt_files:
            stem = gt.name[3:-4]
            seen_stems.add(stem)
            image = find_image_by_stem(img_dir, stem)
            if image is None:
                problems.add(gt, None, f"no image {stem}.* in {img_dir}")
                continue
            lines = read_text_lines(gt, root, problems)
            if lines is None:
                continue
            sample = Sample(image=image, raw_path=image.name, file=str(gt), line=None)
            for n, raw in enumerate(lines, 1):
                raw = raw.rstrip("\r")
                if not raw.strip():
                    continue
                try:
                    points, text = parse_gt_line(raw)
                except ValueError as e:
                    problems.add(gt, n, str(e))
                    continue
                sample.lines.append(
                    LabelLine(points, text, text.strip() in IGNORE_TEXTS, str(gt), n)
                )
            samples.append(sample)
        for image in list_images(img_dir):
            if image.stem not in seen_stems:
                problems.add(image, None, f"image has no ground-truth file gt_{image.stem}.txt")
        return samples, problems


def write_icdar2015(
    records: list[ManifestRecord], out_dir: str | Path, copy_images: bool = True
) -> Path:
    """Write records as ``out_dir/images/<name>`` + ``out_dir/gt/gt_<stem>.txt``.

    Ignored lines are written with the transcription ``###`` (the format has no separate flag).
    Only quadrilaterals can be written; other polygons raise ValueError naming the image.
    Returns the dataset root (out_dir).
    """
    out = Path(out_dir)
    (out / "gt").mkdir(parents=True, exist_ok=True)
    if copy_images:
        (out / "images").mkdir(parents=True, exist_ok=True)
    stems: dict[str, str] = {}
    for rec in records:
        src = Path(rec.image)
        if src.stem in stems:
            raise ValueError(f"{rec.image}: image name clashes with {stems[src.stem]} (same stem)")
        stems[src.stem] = rec.image
        rows = []
        for ln in rec.lines:
            if len(ln.points) != 4:
                raise ValueError(f"{rec.image}: ICDAR 2015 holds quadrilaterals only, "
                                 f"got a {len(ln.points)}-point polygon")
            text = "###" if ln.ignore else ln.text
            coords = ",".join(fmt_num(v) for pt in ln.points for v in pt)
            rows.append(f"{coords},{text}\n")
        atomic_write_text(out / "gt" / f"gt_{src.stem}.txt", "".join(rows))
        if copy_images:
            dst = out / "images" / src.name
            if src.resolve() != dst.resolve():
                shutil.copy2(src, dst)
    return out
