"""The data stage through the real graph: synthetic and user datasets, reruns, clear failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from engine.data.manifest import read_crop_labels, read_manifest
from engine.graph import Pipeline
from engine.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "datasets"


def _run(tmp_path: Path, dataset_yaml: str, *sets: str):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: d\nworkdir: {tmp_path / 'runs'}\ndataset:\n{dataset_yaml}")
    pipeline = Pipeline(load_recipe(recipe, list(sets)))
    return pipeline, pipeline.run(only=["data"])


def test_synthetic_dataset_end_to_end_and_rerun(tmp_path):
    p, report = _run(tmp_path, "  synthetic: {count: 6, val_count: 3, seed: 5}\n")
    assert report.executed == ["data"], report.failed
    records = read_manifest(p.run_dir / "data" / "manifest.jsonl")
    assert sum(r.split == "train" for r in records) == 6
    assert sum(r.split == "val" for r in records) == 3
    crops = read_crop_labels(p.run_dir / "data" / "crops" / "train")
    assert len(crops) > 6 and all(path.exists() and text for path, text in crops)
    assert (p.run_dir / "data" / "preview.png").stat().st_size > 10_000
    result = json.loads((p.run_dir / "data" / "result.json").read_text())
    assert result["metrics"]["train_images"] == 6

    _, report = _run(tmp_path, "  synthetic: {count: 6, val_count: 3, seed: 5}\n")
    assert report.skipped == ["data"]
    # a different seed regenerates
    _, report = _run(tmp_path, "  synthetic: {count: 6, val_count: 3, seed: 6}\n")
    assert report.executed == ["data"]


def test_user_icdar_dataset_and_label_edit_reruns(tmp_path):
    data = tmp_path / "icdar"
    shutil.copytree(EXAMPLES / "icdar2015", data)
    spec = f"  format: icdar2015\n  train: {data / 'train'}\n  val: {data / 'val'}\n"
    p, report = _run(tmp_path, spec)
    assert report.executed == ["data"], report.failed
    _, report = _run(tmp_path, spec)
    assert report.skipped == ["data"]
    gt = sorted((data / "train").rglob("gt_*.txt"))[0]
    gt.write_text(gt.read_text() + "1,1,5,1,5,5,1,5,###\n")
    plan = {r["stage"]: r for r in p.plan()}
    assert plan["data"]["status"] == "run"
    assert any(str(gt) in reason for reason in plan["data"]["reasons"])


def test_bad_label_fails_with_file_and_line(tmp_path):
    data = tmp_path / "icdar"
    shutil.copytree(EXAMPLES / "icdar2015", data)
    gt = sorted((data / "train").rglob("gt_*.txt"))[0]
    gt.write_text(gt.read_text() + "1,2,3,4,5,6,oops\n")
    line_no = len(gt.read_text().splitlines())
    p, report = _run(tmp_path, f"  train: {data / 'train'}\n")
    assert list(report.failed) == ["data"]
    assert f"{gt}:{line_no}" in report.failed["data"] or f"{gt}:{line_no}" in (
        p.run_dir / "logs" / "data.log"
    ).read_text()
    assert not (p.run_dir / "data" / "manifest.jsonl").exists()
