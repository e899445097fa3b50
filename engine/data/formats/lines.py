"""Recognition-only line lists: ``image<TAB>text`` per line (PaddleOCR ``rec_gt.txt`` style).

Each image is already a cropped text line, so there are no polygons: the manifest record gets one
line covering the whole image and ``recognition_only: true`` (detector training skips it), and the
recognizer crop is the image itself.  The label file is `label_file`, else the first of
``labels.txt``, ``rec_gt.txt``, ``gt.txt``, ``labels.tsv`` in the root; image paths are relative
to the label file's directory.  Text is everything after the first tab (kept verbatim, so a text
may start or end with spaces); ``###`` marks an unreadable line, which is kept but ignored.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ProblemList
from ..limits import MAX_INDEX_FILE_BYTES
from .base import (
    IGNORE_TEXTS,
    DatasetReader,
    LabelLine,
    Sample,
    check_root,
    looks_absolute,
    normalise_label_path,
    read_text_lines,
)

LABEL_NAMES = ("labels.txt", "rec_gt.txt", "gt.txt", "labels.tsv")


class LinesReader(DatasetReader):
    name = "lines"
    default_label_file = LABEL_NAMES[0]

    def parse(self, root: Path, label_file: Path | None = None) -> tuple[list[Sample], ProblemList]:
        problems = ProblemList()
        if not check_root(root, problems):
            return [], problems
        if label_file is None:
            label_file = next((root / n for n in LABEL_NAMES if (root / n).exists()), None)
            if label_file is None:
                problems.add(root, None, f"no label file ({', '.join(LABEL_NAMES)}) found")
                return [], problems
        lines = read_text_lines(label_file, root, problems, MAX_INDEX_FILE_BYTES)
        if lines is None:
            return [], problems
        samples = []
        for n, raw in enumerate(lines, 1):
            raw = raw.rstrip("\r")
            if not raw.strip():
                continue
            path_part, sep, text = raw.partition("\t")
            if not sep:
                problems.add(label_file, n, "expected IMAGE<TAB>TEXT")
                continue
            rel = normalise_label_path(path_part)
            image = Path(rel) if looks_absolute(rel) else label_file.parent / rel
            ln = LabelLine(None, text, text.strip() in IGNORE_TEXTS, str(label_file), n)
            samples.append(Sample(image, rel, str(label_file), n, [ln], recognition_only=True))
        return samples, problems
