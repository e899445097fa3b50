"""Dataset summary: what the data stage found, per split, as JSON and as a table.

The numbers answer the questions people ask before training: how many images and boxes, how many
ignored, how long the texts are (the recognizer's max_width must fit the longest), and which
charset characters never occur (the recognizer cannot learn them — add synthetic data or shrink
the charset).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from .manifest import ManifestRecord, atomic_write_text


def split_summary(records: list[ManifestRecord], charset: str | None) -> dict:
    """Counts for one split's records."""
    chars: Counter = Counter()
    lengths: Counter = Counter()
    boxes = ignored = 0
    for r in records:
        for ln in r.lines:
            boxes += 1
            if ln.ignore:
                ignored += 1
                continue
            chars.update(ln.text)
            lengths[len(ln.text)] += 1
    out: dict[str, Any] = {
        "images": len(records),
        "recognition_only_images": sum(r.recognition_only for r in records),
        "boxes": boxes,
        "ignored_boxes": ignored,
        "text_length_histogram": {str(k): lengths[k] for k in sorted(lengths)},
        "max_text_length": max(lengths) if lengths else 0,
        "char_counts": dict(sorted(chars.items())),
    }
    if charset is not None:
        missing = "".join(c for c in charset if c not in chars)
        out["charset_missing"] = missing
        out["charset_coverage"] = round(1 - len(missing) / max(len(charset), 1), 4)
    return out


def summarize(records: list[ManifestRecord], charset: str | None = None, **extra) -> dict:
    """``{"splits": {"train": {...}, "val": {...}, "all": {...}}, "charset": ..., **extra}``."""
    splits = {s: split_summary([r for r in records if r.split == s], charset)
              for s in ("train", "val")}
    splits["all"] = split_summary(records, charset)
    return {"charset": charset, "splits": splits, **extra}


def write_summary(path: str | Path, summary: dict) -> None:
    atomic_write_text(path, json.dumps(summary, ensure_ascii=False, indent=2) + "\n")


def format_summary_table(summary: dict):
    """A rich Table of the per-split numbers (plain text if rich is missing)."""
    splits = summary["splits"]
    rows = [
        ("images", "images"), ("boxes", "boxes"), ("ignored boxes", "ignored_boxes"),
        ("max text length", "max_text_length"), ("charset coverage", "charset_coverage"),
    ]
    names = [s for s in ("train", "val", "all") if s in splits]
    cells = [[label] + [str(splits[s].get(key, "-")) for s in names] for label, key in rows]
    missing = splits.get("all", {}).get("charset_missing")
    if missing:
        cells.append(["never seen chars", "", "", repr(missing)])
    n_dup = len(summary.get("duplicates", []))
    if n_dup:
        cells.append(["duplicate images", "", "", str(n_dup)])
    try:
        from rich.table import Table
    except ImportError:  # pragma: no cover
        return "\n".join("\t".join(c) for c in [["", *names], *cells])
    table = Table(title="dataset")
    table.add_column("")
    for s in names:
        table.add_column(s, justify="right")
    for c in cells:
        table.add_row(*c)
    return table
