"""The run report: built from a run directory laid out exactly as the stages write it.

The run directory is written by the test (the file names and keys are those of summary.json,
result.json, hosts.json and the bundle manifest that a real run produces; see
tests/test_end_to_end.py for the real thing), so every branch is exercised in a second: a
failed on-device check with rollback, stages left out for want of hosts, the int8 guard's
exclusions, the precision choice. The graph hook is tested with real doit runs of small stage
functions, as tests/test_graph.py does.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine import stages
from engine.cli import main
from engine.graph import Pipeline
from engine.recipe import load_recipe
from engine.report import build_report, render_html, write_report


def _png(path: Path, color: tuple[int, int, int]) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((40, 60, 3), np.uint8)
    img[:] = color
    ok, buf = cv2.imencode(".png", img)
    assert ok
    path.write_bytes(buf.tobytes())
    return buf.tobytes()


def _json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def _result(run: Path, stage: str, metrics: dict, notes: tuple[str, ...] = (), artifacts: dict | None = None) -> None:
    kind, _, param = stage.partition(":")
    d = run / kind / param if param else run / kind
    _json(d / "result.json", {"stage": stage, "key": {}, "outputs": {}, "metrics": metrics,
                              "artifacts": artifacts or {}, "notes": list(notes)})
    _json(d / "timing.json", {"started": 0, "seconds": 1.5})


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "runs" / "plates"
    pngs = {"preview": _png(run / "data" / "preview.png", (0, 0, 255)),
            "det": _png(run / "train" / "detector" / "curves.png", (0, 255, 0)),
            "rec": _png(run / "train" / "recognizer" / "curves.png", (255, 0, 0))}
    _json(run / "data" / "summary.json", {
        "charset": "0123456789ABC", "format": "icdar2015", "split": {"source": "dirs"},
        "splits": {"train": {"images": 400, "boxes": 6123, "ignored_boxes": 12, "max_text_length": 31,
                             "charset_coverage": 0.9, "charset_missing": "Q"},
                   "val": {"images": 40, "boxes": 611, "ignored_boxes": 3, "max_text_length": 22,
                           "charset_coverage": 0.8}},
        "crops": {"train": 6111, "val": 608},
        "unknown_chars": {"policy": "skip", "skipped_lines": 4, "replaced_lines": 0}, "warnings": []})
    _result(run, "data", {"train_images": 400, "val_images": 40}, artifacts={"dataset": {
        "manifest": str(run / "data" / "manifest.jsonl"), "crops": str(run / "data" / "crops"),
        "summary": str(run / "data" / "summary.json"), "preview": str(run / "data" / "preview.png")}})
    for model, metric in (("detector", 0.925), ("recognizer", 0.713)):
        _result(run, f"train:{model}", {"epochs": 2, "steps": 100, "best_epoch": 2, "best_metric": metric,
                                        "init": f"{model}_base.pt"},
                artifacts={f"{model}_curves": str(run / "train" / model / "curves.png")})
    _result(run, "evaluate", {"hmean": 0.925, "precision": 0.94, "recall": 0.91, "word_accuracy": 0.8123,
                              "line_accuracy": 0.713, "cer": 0.062, "e2e_line_accuracy": 0.333,
                              "val_images": 40})
    _result(run, "prune", {"detector_params_before": 970490, "detector_params_after": 470000,
                           "detector_macs_before": 1_630_000_000, "detector_macs_after": 950_000_000,
                           "detector_latency_ms_before": 36.5, "detector_latency_ms_after": 26.3,
                           "detector_hmean_before": 0.925, "detector_hmean_after": 0.595},
            artifacts={f"{m}_channels": str(run / "prune" / f"{m}.channels.json") for m in ("detector", "recognizer")})
    _json(run / "prune" / "detector.channels.json", {
        "amount": 0.3, "importance": "taylor", "allocation": "sensitivity", "round_to": 8, "keep": [],
        "channels": {"neck.lateral.0": {"before": [16, 96], "after": [16, 40]},
                     "neck.smooth.0": {"before": [96, 24], "after": [40, 16]},
                     "backbone.stem.0": {"before": [3, 16], "after": [3, 16]}}})
    _json(run / "prune" / "recognizer.channels.json", {"channels": "not a table"})  # skipped, not fatal
    _result(run, "export", {"detector_bytes": 2_144_356})
    _result(run, "build:rpi4", {"candidates": ["fp32", "int8"], "active": "int8", "reduce_range": False})
    _result(run, "verify:rpi4", {"active": "int8", "int8_latency_p50_ms": 114.6, "int8_hmean": 0.553})
    _result(run, "ship:rpi4", {"hosts": 2})
    bundle = run / "verify" / "rpi4" / "bundle"
    (bundle / "models" / "int8").mkdir(parents=True)
    (bundle / "models" / "int8" / "detector.onnx").write_bytes(b"\0" * 1_330_000)
    (bundle / "runtime").mkdir()
    (bundle / "runtime" / "pipeline.py").write_text("# runtime\n")
    _json(bundle / "manifest.json", {
        "precision": "int8", "runtime": "onnxruntime", "arch": "aarch64",
        "candidates": {"fp32": {}, "int8": {}},
        "int8_guard": {"detector": {"excluded": ["/head/Conv_3"], "met": True, "fp32_metric": 0.6,
                                    "final_metric": 0.595, "read_by": "int8 recognizer"},
                       "recognizer": {"excluded": [], "met": True, "fp32_metric": 0.7, "final_metric": 0.7}},
        "verify": {"measured_on": "x86_64", "host_latency_is_device_latency": False, "candidates": {
            "fp32": {"hmean": 0.561, "e2e_line_accuracy": 0.31, "drop_vs_fp32": 0.0, "within_drop": True,
                     "latency_p50_ms": 132.2, "latency_p90_ms": 150.0, "peak_rss_mb": 165.0},
            "int8": {"hmean": 0.553, "e2e_line_accuracy": 0.3077, "drop_vs_fp32": 0.0023, "within_drop": True,
                     "latency_p50_ms": 114.6, "latency_p90_ms": 120.0, "peak_rss_mb": 126.0}}}})
    _json(run / "ship" / "rpi4" / "hosts.json", {
        "pi@plate-01": {"status": "ok", "release": "2987eab635c1", "previous": "", "uploaded_bytes": 13_181_792,
                        "seconds": 2.5},
        "pi@plate-02": {"status": "ok", "release": "2987eab635c1", "previous": "11aa", "uploaded_bytes": 0,
                        "seconds": 0.4}})
    _json(run / "check" / "rpi4" / "hosts.json", {
        "pi@plate-01": {"status": "ok", "release": "2987eab635c1", "precision": "int8", "hmean": 0.553,
                        "e2e_line_accuracy": 0.3077, "latency_p50_ms": 842.7, "latency_p90_ms": 901.0},
        "pi@plate-02": {"status": "failed", "error": "below the bar (latency_p50_ms 2301 > max_latency_ms 2000)",
                        "rolled_back_to": "11aa"}})
    _json(run / "summary.json", {
        "recipe": "plates", "recipe_path": "recipes/plates.yaml", "recipe_hash": "ab" * 32,
        "finished": "2026-11-24T01:00:00+0000",
        "executed": ["verify:rpi4", "ship:rpi4"], "skipped": ["data", "train:detector", "train:recognizer",
                                                             "evaluate", "prune", "export", "build:rpi4"],
        "failed": {"check:rpi4": "check rpi4: pi@plate-02: below the bar"}, "not_run": [],
        "not_applicable": {"ship:jetson-nano": "no hosts in deploy.jetson-nano.hosts"},
        "durations": {"verify:rpi4": 12.0, "ship:rpi4": 3.0}, "artifacts": {}, "metrics": {}})
    run.joinpath("pngs.json").write_text(json.dumps({k: base64.b64encode(v).decode() for k, v in pngs.items()}))
    return run


def test_html_is_self_contained_with_images_and_numbers(run_dir):
    html_path, _ = write_report(run_dir, profiles={"rpi4": "int8"})
    page = html_path.read_text()
    # nothing fetched from anywhere: no external src/href, no script
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", page)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    pngs = json.loads((run_dir / "pngs.json").read_text())
    for b64 in pngs.values():  # preview and both training curves, inlined byte for byte
        assert f"data:image/png;base64,{b64}" in page
    assert "FAILED" in page  # the failed on-device check makes the run fail
    for number in ("0.925", "0.812", "0.97 M", "0.47 M", "1.63 G", "0.95 G", "0.72×", "114.6 ms",
                   "132.2 ms", "/head/Conv_3", "read by the int8 recognizer", "13.18 MB", "1.33 MB", "842.7 ms"):
        assert number in page, number
    assert "rolled back to 11aa" in page
    assert "no hosts in deploy.jetson-nano.hosts" in page
    assert "Why int8: the target profile asks for int8." in page
    assert "policy skip, 4 lines skipped" in page


def test_markdown_has_the_tables(run_dir):
    _, md_path = write_report(run_dir)
    md = md_path.read_text()
    assert md.startswith("# plates — FAILED")
    assert "| stage | state | time | notes |" in md
    assert "| check:rpi4 | failed | — | check rpi4: pi@plate-02: below the bar |" in md
    assert "| ship:jetson-nano | skipped | — | no hosts in deploy.jetson-nano.hosts |" in md
    assert "| detector | params | 0.97 M | 0.47 M | 0.48× |" in md
    # the layers the allocation took channels from (the unpruned stem is not listed)
    assert "| neck.lateral.0 | 96 | 40 | 42% |" in md and "| neck.smooth.0 | 24 | 16 | 67% |" in md
    assert "backbone.stem.0" not in md and "taylor ranking, sensitivity allocation, 2 layers pruned" in md
    assert "| ✓ int8 | 0.553 | 0.308 | +0.002 | yes | 114.6 ms | 120.0 ms | 126 MB |" in md
    assert "| pi@plate-01 | 2987eab635c1 | — | 13.18 MB | 2.50 s | ok |" in md
    # numbers right-aligned, text left-aligned
    assert "| split | images | boxes | ignored | crops | longest text | charset used |\n|---|---:|---:|---:|---:|---:|---:|" in md
    assert "![validation images with their labels (data/preview.png)](data/preview.png)" in md
    assert "(train/detector/curves.png)" in md


def test_precision_choice_is_explained_from_measurements(run_dir):
    manifest = run_dir / "verify" / "rpi4" / "bundle" / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["verify"]["host_latency_is_device_latency"] = True
    manifest.write_text(json.dumps(doc))
    page = render_html(build_report(run_dir, profiles={"rpi4": "auto"}))
    assert "fastest candidate within verify.max_drop on this machine: int8 114.6 ms p50 vs fp32 132.2 ms" in page


def test_incomplete_run_without_summary(tmp_path):
    run = tmp_path / "fresh"
    _result(run, "data", {"train_images": 3})
    report = build_report(run, stages=["data", "train:detector"])
    assert report.status == "incomplete"
    md = write_report(run, stages=["data", "train:detector"], notices={"ship:rpi4": "no hosts"})[1].read_text()
    assert "| train:detector | not run | — |  |" in md
    assert "| ship:rpi4 | skipped | — | no hosts |" in md  # the graph's notices stand in for summary.json
    assert "| 1/2 |" in md  # stages done, counted from the result files


RECIPE = """\
name: hooked
description: report hook test
dataset:
  synthetic: {count: 2, val_count: 1}
targets: [local-cpu, rpi4]
"""


def _tiny_stage(ctx: stages.StageContext) -> stages.StageResult:
    out = ctx.out_dir / "out.json"
    out.write_text(json.dumps({"stage": ctx.name}))
    if ctx.name == "check:local-cpu":
        raise stages.StageFailed("local: below the bar (hmean 0.1 < min_hmean 0.5)")
    return stages.StageResult(outputs=[out], metrics={"hmean": 0.5} if ctx.kind == "evaluate" else {})


@pytest.fixture
def tiny_stages():
    for kind in stages.BY_KIND:
        stages.register(kind, _tiny_stage)
    yield
    stages.unregister()


def test_every_run_writes_the_report_and_cli_rebuilds_it(tmp_path, tiny_stages, capsys):
    recipe = tmp_path / "hooked.yaml"
    recipe.write_text(RECIPE)
    pipeline = Pipeline(load_recipe(recipe, [f"workdir={tmp_path / 'runs'}"]))
    report = pipeline.run()
    assert "check:local-cpu" in report.failed
    page = (pipeline.run_dir / "report.html").read_text()
    assert "FAILED" in page and "report hook test" in page and "below the bar (hmean 0.1" in page
    assert "no hosts in deploy.rpi4.hosts" in (pipeline.run_dir / "report.md").read_text()
    (pipeline.run_dir / "report.md").unlink()
    assert main(["report", str(recipe), "--set", f"workdir={tmp_path / 'runs'}"]) == 0
    assert "wrote" in capsys.readouterr().out and (pipeline.run_dir / "report.md").is_file()
    # a report that cannot be written is a warning, never a failed run
    (pipeline.run_dir / "report.html").unlink()
    (pipeline.run_dir / "report.html").mkdir()
    again = Pipeline(load_recipe(recipe, [f"workdir={tmp_path / 'runs'}"])).run(only=["evaluate"])
    assert again.ok
    assert "run report not written" in capsys.readouterr().out
