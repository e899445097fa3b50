"""Pre-labelling: read a folder of new images with a built bundle and write the predictions as
labels (ICDAR 2015, PPOCRLabel or Label Studio) for annotators to correct.

Why: labelling text from scratch means drawing every box and typing every line; correcting a
model's guesses is several times faster, and the model that makes the guesses is the one the
recipe just shipped. The predictions come from the device runtime (`OCRPipeline`), so what the
annotators see is exactly what the devices read.

Written with the project's own writers (engine/data/formats), so the output reads back with the
project's readers and can become the next recipe's ``dataset.train``. Lines the recognizer is
unsure of (text confidence below ``min_score``, or no text at all) are *kept* and flagged, each
format in its own way, because dropping them would hide exactly the boxes that need a human:

- icdar2015   the text stays in ``gt/gt_<stem>.txt`` (the format has no flag; an empty reading is
              written ``###``) and every flagged line is listed in ``review.txt``;
- ppocrlabel  ``"difficult": true`` on the box (PPOCRLabel's "check this" mark);
- labelstudio the tasks carry the regions as ``predictions`` (what Label Studio shows as
              pre-annotations, not finished work) with a per-region ``score``; flagged regions
              also get ``meta.text`` = "low confidence ..." which the annotator sees in the region
              list. Once an annotator submits a task, its export has ``annotations`` and reads
              back like any Label Studio export.

``review.txt`` (tab-separated: label file, line, text score, box score, text) is written for
every format, so one file says what to look at first.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data.formats import canonical_format, write_icdar2015, write_labelstudio, write_ppocrlabel
from .data.formats.base import list_images
from .data.manifest import ManifestRecord, TextLine
from .fsutil import atomic_write_text, sha256_file

FORMATS = ("icdar2015", "ppocrlabel", "labelstudio")
REVIEW_FILE = "review.txt"


class PrelabelError(Exception):
    """A problem the user can fix (no images, bad bundle, non-empty output directory...)."""


@dataclass
class PrelabelResult:
    format: str
    images: int
    lines: int
    flagged: int
    dataset_root: Path  # what to give a reader (or a recipe's dataset.train)
    label_file: Path | None  # the format's single label file, if it has one
    review: Path


def _flagged(line: dict[str, Any], min_score: float) -> bool:
    return not line["text"].strip() or float(line["score"]) < min_score


def predict_folder(bundle: Path, images_dir: Path, precision: str | None = None,
                   threads: int | None = None) -> list[tuple[Path, tuple[int, int], list[dict[str, Any]]]]:
    """(image path, (width, height), predicted lines) for every image of ``images_dir`` (sorted);
    images are read one at a time, so a folder of any size fits in memory."""
    from .runtime.bundle_manifest import BundleError
    from .runtime.pipeline import OCRPipeline, load_image

    if not images_dir.is_dir():
        raise PrelabelError(f"{images_dir}: not a directory of images")
    paths = list_images(images_dir)
    if not paths:
        raise PrelabelError(f"{images_dir}: no images (.jpg, .png, .bmp, .tif, .webp)")
    try:
        pipe = OCRPipeline(bundle, precision, threads)
    except BundleError as exc:
        raise PrelabelError(str(exc)) from None
    # Every box goes to the annotators: low-confidence lines are flagged below, never dropped.
    pipe.post_cfg = {**pipe.post_cfg, "min_text_score": 0.0}
    out = []
    for path in paths:
        try:
            image = load_image(path)
        except (OSError, ValueError) as exc:
            raise PrelabelError(str(exc)) from None
        out.append((path, (int(image.shape[1]), int(image.shape[0])), pipe.predict(image)))
    return out


def prelabel(
    bundle: str | Path,
    images_dir: str | Path,
    fmt: str,
    out_dir: str | Path,
    min_score: float = 0.5,
    precision: str | None = None,
    threads: int | None = None,
) -> PrelabelResult:
    """Predict every image of ``images_dir`` with ``bundle`` and write labels in ``fmt``."""
    fmt = canonical_format(fmt)
    if fmt not in FORMATS:
        raise PrelabelError(f"cannot pre-label as {fmt!r}; formats: {', '.join(FORMATS)}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PrelabelError(f"{out}: exists and is not an empty directory (labels are never merged "
                            "into an existing folder; choose a new --out)")
    predictions = predict_folder(Path(bundle), Path(images_dir), precision, threads)
    stems: dict[str, Path] = {}
    records: list[ManifestRecord] = []
    flags: list[list[bool]] = []
    for path, (width, height), lines in predictions:
        key = path.stem if fmt == "icdar2015" else path.name
        if key in stems:
            raise PrelabelError(f"{path}: same name as {stems[key]}; {fmt} keeps one folder of images")
        stems[key] = path
        flagged = [_flagged(ln, min_score) for ln in lines]
        text_lines = [
            TextLine(points=[[float(x), float(y)] for x, y in ln["points"]],
                     text=ln["text"] if ln["text"].strip() or fmt != "icdar2015" else "###",
                     ignore=bool(flag and fmt == "ppocrlabel"))
            for ln, flag in zip(lines, flagged, strict=True)
        ]
        records.append(ManifestRecord(image=str(path), width=width, height=height,
                                      sha256=sha256_file(path), split="train", lines=text_lines))
        flags.append(flagged)
    out.mkdir(parents=True, exist_ok=True)
    label_file: Path | None
    if fmt == "icdar2015":
        root = write_icdar2015(records, out)
        label_file = None
        where = [f"gt/gt_{Path(r.image).stem}.txt" for r in records]
    elif fmt == "ppocrlabel":
        root = write_ppocrlabel(records, out)
        label_file = root / "Label.txt"
        where = ["images/Label.txt"] * len(records)
    else:
        label_file = write_labelstudio(records, out, as_predictions=True, model_version=_model_version(bundle))
        root = out
        _add_scores(label_file, predictions, flags)
        where = [f"tasks.json task {i + 1}" for i in range(len(records))]
    review = out / REVIEW_FILE
    rows = ["# label file\tline\ttext score\tbox score\ttext (below --min-score "
            f"{min_score} or empty: check these first)\n"]
    for (_path, _img, lines), flagged, place in zip(predictions, flags, where, strict=True):
        for n, (ln, flag) in enumerate(zip(lines, flagged, strict=True), 1):
            if flag:
                rows.append(f"{place}\t{n}\t{ln['score']:.3f}\t{ln.get('box_score', 0.0):.3f}\t{ln['text']}\n")
    atomic_write_text(review, "".join(rows))
    return PrelabelResult(fmt, len(records), sum(len(p[2]) for p in predictions),
                          sum(sum(f) for f in flags), root, label_file, review)


def _model_version(bundle: str | Path) -> str:
    from .runtime.bundle_manifest import read_manifest

    m = read_manifest(Path(bundle))
    recipe = (m.get("recipe") or {}).get("name", "bundle")
    return f"{recipe}:{m.get('target', '?')}:{m.get('precision', '?')}:{str(m.get('bundle_hash', ''))[:12]}"


def _add_scores(tasks_path: Path, predictions: Sequence[Any], flags: list[list[bool]]) -> None:
    """Per-region ``score`` (Label Studio sorts and colours predictions by it), a task-level
    mean score, and ``meta.text`` on flagged regions (shown to the annotator in the region list)."""
    tasks = json.loads(tasks_path.read_text(encoding="utf-8"))
    for task, (_path, _img, lines), flagged in zip(tasks, predictions, flags, strict=True):
        for pred in task.get("predictions", []):
            for res in pred["result"]:
                j = int(str(res["id"]).rsplit("_", 1)[1])
                res["score"] = float(lines[j]["score"])
                if flagged[j]:
                    res["meta"] = {"text": [f"low confidence {lines[j]['score']:.2f}: check the text"]}
            scores = [float(ln["score"]) for ln in lines]
            pred["score"] = sum(scores) / len(scores) if scores else 0.0
    atomic_write_text(tasks_path, json.dumps(tasks, ensure_ascii=False, indent=1))


def prelabel_cli(argv: Sequence[str] | None = None) -> int:
    """``recipe prelabel --bundle DIR IMAGES_DIR --format F --out DIR [--min-score S]``."""
    ap = argparse.ArgumentParser(prog="recipe prelabel",
                                 description="Write a bundle's predictions as labels to correct.")
    ap.add_argument("images", metavar="IMAGES_DIR", help="folder of images to label")
    ap.add_argument("--bundle", required=True, metavar="DIR", help="a built bundle directory")
    ap.add_argument("--format", required=True, choices=FORMATS)
    ap.add_argument("--out", required=True, metavar="DIR", help="new (or empty) output directory")
    ap.add_argument("--min-score", type=float, default=0.5,
                    help="flag lines whose text confidence is below this (default 0.5)")
    ap.add_argument("--precision", help="a candidate precision of the bundle (default: its active one)")
    args = ap.parse_args(list(argv) if argv is not None else None)
    try:
        res = prelabel(args.bundle, args.images, args.format, args.out, args.min_score, args.precision)
    except (PrelabelError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{res.images} images, {res.lines} lines, {res.flagged} flagged for review -> {res.dataset_root} "
          f"({res.format}; review list {res.review})")
    return 0
