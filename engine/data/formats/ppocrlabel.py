"""PPOCRLabel (PaddleOCR's labelling tool) ``Label.txt``.

Each line is ``<folder>/<image><TAB><JSON list>`` where every item is
``{"transcription": str, "points": [[x, y], ...], "difficult": bool}``.  PPOCRLabel keeps
Label.txt *inside* the image folder and writes paths starting with that folder's name, so
``root/Label.txt`` containing ``root_name/img.jpg`` resolves against ``root``'s parent.  The
reader tries that first, then the Label.txt directory, then the dataset root.

Ignore: transcription ``###`` or ``*`` (PaddleOCR's DetLabelEncode convention) or
``"difficult": true`` (the annotator's "can't read this" box).  The transcription is kept in the
manifest either way, so a round trip through `write_ppocrlabel` is lossless.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import ProblemList
from ..limits import MAX_INDEX_FILE_BYTES
from ..manifest import ManifestRecord, atomic_write_text
from .base import (
    DatasetReader,
    LabelLine,
    Sample,
    check_root,
    json_value,
    looks_absolute,
    normalise_label_path,
    parse_points,
    read_text_lines,
)

PPOCR_IGNORE = frozenset({"###", "*"})


def _num(v: float) -> int | float:
    v = float(v)
    return int(v) if v.is_integer() else round(v, 3)


class PPOCRLabelReader(DatasetReader):
    name = "ppocrlabel"
    default_label_file = "Label.txt"

    def parse(self, root: Path, label_file: Path | None = None) -> tuple[list[Sample], ProblemList]:
        problems = ProblemList()
        if not check_root(root, problems):
            return [], problems
        label = label_file or root / self.default_label_file
        if not label.exists():  # a FIFO or a device exists: read_text_lines refuses it by name
            problems.add(label, None, "label file does not exist (PPOCRLabel writes Label.txt)")
            return [], problems
        lines = read_text_lines(label, root, problems, MAX_INDEX_FILE_BYTES)
        if lines is None:
            return [], problems
        samples: list[Sample] = []
        for n, raw in enumerate(lines, 1):
            raw = raw.rstrip("\r")
            if not raw.strip():
                continue
            path_part, sep, json_part = raw.partition("\t")
            if not sep:
                problems.add(label, n, "expected IMAGE_PATH<TAB>JSON list")
                continue
            rel = normalise_label_path(path_part)
            if looks_absolute(rel):
                image = Path(rel)
            else:
                bases = (label.parent.parent, label.parent, root)
                image = next((b / rel for b in bases if (b / rel).is_file()), bases[0] / rel)
            sample = Sample(image=image, raw_path=rel, file=str(label), line=n)
            try:
                items, end = json_value(json_part.rstrip())
                if end != len(json_part.rstrip()):
                    raise json.JSONDecodeError("Extra data", json_part, end)
            except json.JSONDecodeError as e:
                col = len(path_part) + 1 + e.colno
                problems.add(label, n, f"invalid JSON after the tab: {e.msg} (column {col})")
                continue
            except ValueError as e:
                problems.add(label, n, f"invalid JSON after the tab: {e}")
                continue
            if not isinstance(items, list):
                problems.add(label, n, "expected a JSON list of boxes after the tab")
                continue
            for k, item in enumerate(items):
                where = f"box {k}"
                if not isinstance(item, dict) or "points" not in item:
                    problems.add(label, n, "box has no \"points\"", where)
                    continue
                try:
                    points = parse_points(item["points"])
                except ValueError as e:
                    problems.add(label, n, str(e), where)
                    continue
                text = item.get("transcription", "")
                if not isinstance(text, str):
                    problems.add(label, n, "transcription must be a string", where)
                    continue
                ignore = text.strip() in PPOCR_IGNORE or bool(item.get("difficult", False))
                sample.lines.append(LabelLine(points, text, ignore, str(label), n, where))
            samples.append(sample)
        return samples, problems


def write_ppocrlabel(
    records: list[ManifestRecord],
    out_dir: str | Path,
    folder: str = "images",
    copy_images: bool = True,
) -> Path:
    """Write records as PPOCRLabel does: ``out_dir/<folder>/`` holds the images, ``Label.txt``
    (paths ``<folder>/<name>``) and ``fileState.txt`` (absolute path<TAB>1: "checked").

    Ignored lines keep their text and get ``"difficult": true`` unless the text is already ``###``.
    Returns the dataset root to read back (``out_dir/<folder>``).
    """
    root = Path(out_dir) / folder
    root.mkdir(parents=True, exist_ok=True)
    label_rows, state_rows = [], []
    names: set[str] = set()
    for rec in records:
        src = Path(rec.image)
        if src.name in names:
            raise ValueError(f"{rec.image}: two images named {src.name}")
        names.add(src.name)
        items = [
            {
                "transcription": ln.text,
                "points": [[_num(x), _num(y)] for x, y in ln.points],
                "difficult": bool(ln.ignore and ln.text.strip() not in PPOCR_IGNORE),
            }
            for ln in rec.lines
        ]
        label_rows.append(f"{folder}/{src.name}\t{json.dumps(items, ensure_ascii=False)}\n")
        dst = root / src.name
        if copy_images and src.resolve() != dst.resolve():
            shutil.copy2(src, dst)
        state_rows.append(f"{dst.resolve()}\t1\n")
    atomic_write_text(root / "Label.txt", "".join(label_rows))
    atomic_write_text(root / "fileState.txt", "".join(state_rows))
    return root
