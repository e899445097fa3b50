"""The body of the `data` stage: read, validate, split, crop, summarise — all or nothing.

`prepare_dataset` reads the train (and optional val) dataset in the recipe's format, validates it
against the charset, splits train by a seeded hash when there is no val set, and writes

    out_dir/manifest.jsonl     canonical records (engine/data/manifest.py)
    out_dir/crops/{train,val}/NNNNNN.png + labels.tsv
    out_dir/summary.json

Every problem of both splits is collected and raised as one `DatasetError` before anything is
written.  Output is built in a temp directory next to `out_dir` and renamed into place, so a
failure (or Ctrl-C) leaves the previous out_dir untouched or no out_dir at all — never a half-
written one that doit would take for up to date.  Extra files that belong to the same stage
(the preview sheet) can be written into the temp dir through `before_commit`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..fsutil import replace_dir
from .charset import expand_charset
from .crops import write_crops
from .errors import DatasetError, ProblemList
from .formats import canonical_format, get_reader
from .manifest import ManifestRecord, write_manifest
from .split import split_by_hash
from .summary import summarize, write_summary
from .validate import ValidationOptions, ValidationResult, find_duplicates, validate_samples

DUPLICATE_POLICIES = ("warn", "error")


def load_split(
    fmt: str,
    root: str | Path,
    split: str,
    options: ValidationOptions,
    label_file: str | Path | None = None,
) -> ValidationResult:
    """Read one dataset directory and validate it; parse problems are merged into the result."""
    root = Path(root)
    samples, parse_problems = get_reader(fmt).parse(root, Path(label_file) if label_file else None)
    res = validate_samples(samples, root, split, options)
    res.problems[:0] = parse_problems
    return res


def dataset_inputs(fmt: str, root: str | Path, label_file: str | Path | None = None) -> list[Path]:
    """Every file the data stage reads for one dataset dir (label files and the images they name
    that exist), sorted — for doit's ``file_dep`` so editing a label or an image reruns the stage.
    Parse problems are ignored here; `prepare_dataset` reports them."""
    samples, _ = get_reader(fmt).parse(Path(root), Path(label_file) if label_file else None)
    files = {Path(s.file) for s in samples} | {s.image for s in samples}
    if label_file:
        files.add(Path(label_file))
    return sorted(p.absolute() for p in files if p.is_file())


def _assign_hash_split(records: list[ManifestRecord], root: Path, val_fraction: float,
                       seed: int) -> None:
    """Split records by hashed relative path; identical images (sha256) share one split."""
    real_root = root.resolve()
    names = {id(r): Path(r.image).relative_to(real_root).as_posix() for r in records}
    _, val = split_by_hash(sorted(names.values()), val_fraction, seed)
    val_set = set(val)
    by_sha: dict[str, str] = {}
    for r in sorted(records, key=lambda r: names[id(r)]):
        by_sha.setdefault(r.sha256, "val" if names[id(r)] in val_set else "train")
        r.split = by_sha[r.sha256]


def prepare_dataset(
    fmt: str,
    train: str | Path,
    val: str | Path | None,
    out_dir: str | Path,
    charset: str,
    on_unknown_char: str = "error",
    val_fraction: float = 0.1,
    split_seed: int = 0,
    label_file: str | Path | None = None,
    val_label_file: str | Path | None = None,
    placeholder: str | None = None,
    duplicates: str = "warn",
    tolerance_px: float = 1.0,
    before_commit: Callable[[Path, list[ManifestRecord]], None] | None = None,
) -> dict:
    """Run the data stage; returns the summary dict (also written to out_dir/summary.json).

    `charset` is the recipe's charset spec (``"0-9A-Z -:"``; an already expanded string works
    too).  `duplicates`: ``warn`` lists images with the same sha256 in the summary, ``error``
    makes a train/val duplicate a problem.  `label_file`/`val_label_file` override the format's
    default label file (or gt directory).  Raises DatasetError listing every problem.
    """
    fmt = canonical_format(fmt)
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {duplicates!r}")
    chars = expand_charset(charset)
    opts = ValidationOptions(chars, on_unknown_char, placeholder, tolerance_px)
    train_root = Path(train)
    results = [load_split(fmt, train_root, "train", opts, label_file)]
    if val is not None:
        results.append(load_split(fmt, Path(val), "val", opts, val_label_file))
    problems = ProblemList(p for r in results for p in r.problems)
    records = [rec for r in results for rec in r.records]
    if val is None and not problems:
        _assign_hash_split(records, train_root, val_fraction, split_seed)
    dups = find_duplicates(records)
    if duplicates == "error":
        for d in dups:
            if d["cross_split"]:
                problems.add(d["images"][0], None, "same image (sha256) in train and val: "
                             + ", ".join(d["images"]))
    if not records and not problems:
        problems.add(train_root, None, "dataset has no images")
    problems.raise_if_any()

    warnings = [w for r in results for w in r.warnings]
    warnings += [f"duplicate image ({d['sha256'][:12]}) in {'/'.join(d['splits'])}: "
                 + ", ".join(d["images"]) for d in dups]
    unknown: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    for r in results:
        for c, n in r.unknown_chars.items():
            unknown[c] = unknown.get(c, 0) + n
        for c, ex in r.unknown_examples.items():
            examples.setdefault(c, []).extend(ex)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        write_manifest(tmp / "manifest.jsonl", records)
        crop_counts = write_crops(records, tmp / "crops", warnings)
        summary = summarize(
            records,
            chars,
            format=fmt,
            train=str(train_root.resolve()),
            val=str(Path(val).resolve()) if val is not None else None,
            split={"source": "dirs" if val is not None else "hash",
                   "val_fraction": None if val is not None else val_fraction,
                   "seed": None if val is not None else split_seed},
            crops=crop_counts,
            unknown_chars={"policy": on_unknown_char, "counts": unknown,
                           "examples": {c: ex[:3] for c, ex in examples.items()},
                           "skipped_lines": sum(r.skipped_lines for r in results),
                           "replaced_lines": sum(r.replaced_lines for r in results)},
            duplicates=dups,
            warnings=warnings,
        )
        write_summary(tmp / "summary.json", summary)
        if before_commit is not None:
            before_commit(tmp, records)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


__all__ = ["DatasetError", "dataset_inputs", "load_split", "prepare_dataset"]
