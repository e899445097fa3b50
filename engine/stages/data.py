"""The `data` stage: read (or generate) the dataset, validate it, write the manifest and crops.

Synthetic data is generated once per spec into the run's synthetic directory (deterministic for
a seed; the validation split uses a seed derived from, and never equal to, the training seed),
then read back through the ICDAR 2015 reader like any user dataset, so it passes the same
validation. Outputs (its stage directory): manifest.jsonl, crops/{train,val}/, summary.json,
preview.png — handed on as the ``dataset`` artifact, which every later stage reads them from.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..fsutil import replace_dir
from ..rundir import read_json
from .contract import StageContext, StageFailed, StageResult

VAL_SEED_OFFSET = 1_000_003  # validation images never share a seed with training images


def synthetic_dirs(ctx: StageContext) -> tuple[Path, Path]:
    """Generate (or reuse) the synthetic train/val splits; returns their directories."""
    from ..data.synth import generate_dataset

    spec = ctx.recipe.dataset.synthetic
    charset = _expanded_charset(ctx)
    root = ctx.run.synthetic_dir()
    wanted = {"spec": spec.model_dump(mode="json"), "charset": charset, "format": 2}
    marker = root / "spec.json"
    if read_json(marker) == wanted:
        return root / "train", root / "val"
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    workers = max(1, min(4, os.cpu_count() or 1))
    size = (int(spec.image_size[0]), int(spec.image_size[1]))
    ctx.log.info("generating %d + %d synthetic %s images", spec.count, spec.val_count, spec.style)
    for split, count, seed in (
        ("train", spec.count, spec.seed),
        ("val", spec.val_count, spec.seed + VAL_SEED_OFFSET),
    ):
        generate_dataset(
            tmp / split, style=spec.style, count=count, seed=seed, charset=charset,
            size=size, level=spec.level, workers=workers,
        )
    (tmp / "spec.json").write_text(json.dumps(wanted, sort_keys=True))
    replace_dir(tmp, root)
    return root / "train", root / "val"


def _expanded_charset(ctx: StageContext) -> str:
    from ..data.charset import expand_charset

    return expand_charset(ctx.recipe.dataset.charset)


def run(ctx: StageContext) -> StageResult:
    from ..data.errors import DatasetError
    from ..data.prepare import prepare_dataset
    from ..data.preview import write_contact_sheet
    from ..data.summary import format_summary_table

    ds = ctx.recipe.dataset
    val_dir: Path | None
    if ds.synthetic is not None:
        train_dir, val_dir = synthetic_dirs(ctx)
        fmt, label_file = "icdar2015", None
    else:
        assert ds.train is not None  # the schema requires train or synthetic
        train_dir, val_dir = Path(ds.train), Path(ds.val) if ds.val else None
        fmt, label_file = ds.format, ds.labels
    val_label = (Path(val_dir) / label_file) if (val_dir and label_file) else None
    train_label = (Path(train_dir) / label_file) if label_file else None

    def preview(tmp: Path, records: list[Any]) -> None:
        val = [r for r in records if r.split == "val"] or records
        write_contact_sheet(val[:12], tmp / "preview.png")

    try:
        summary = prepare_dataset(
            fmt, train_dir, val_dir, ctx.out_dir, ds.charset,
            on_unknown_char=ds.on_unknown_char, val_fraction=ds.val_fraction,
            split_seed=ds.split_seed, label_file=train_label, val_label_file=val_label,
            duplicates=ds.on_duplicate, before_commit=preview,
        )
    except DatasetError as exc:
        raise StageFailed(f"dataset is invalid:\n{exc}") from None
    except (ValueError, OSError) as exc:
        raise StageFailed(f"dataset: {exc}") from None

    from rich.console import Console

    Console(highlight=False).print(format_summary_table(summary))
    out = ctx.out_dir
    outputs = [out / "manifest.jsonl", out / "summary.json"]
    for split in ("train", "val"):
        labels = out / "crops" / split / "labels.tsv"
        if labels.exists():
            outputs.append(labels)
    metrics = _headline(summary)
    return StageResult(
        outputs=outputs,
        metrics=metrics,
        artifacts={"dataset": {"manifest": str(out / "manifest.jsonl"), "crops": str(out / "crops"),
                               "summary": str(out / "summary.json"), "preview": str(out / "preview.png")}},
        notes=list(summary.get("warnings", []))[:20],
    )


def _headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The few numbers worth a column in `recipe status` and the report."""
    flat: dict[str, Any] = {}
    splits = summary.get("splits", {})
    for split, info in splits.items():
        if isinstance(info, dict) and split != "all":
            for key in ("images", "boxes", "ignored_boxes"):
                if key in info:
                    flat[f"{split}_{key}"] = info[key]
    return flat
