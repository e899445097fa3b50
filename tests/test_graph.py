"""The spine end to end: real doit state, small real stage functions, real files.

The stage functions registered here do genuine (tiny) work: each writes an output derived from
its inputs and its recipe sections, so downstream stages only re-run when that output changes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine import stages
from engine.graph import GraphError, Pipeline
from engine.recipe import load_recipe
from engine.rundir import RunBusy, RunDir

RECIPE = """\
name: spine
dataset:
  synthetic: {count: 4, val_count: 2, seed: 1}
train:
  epochs: 2
optimize:
  prune: {amount: 0.25}
  calibration: {samples: 8}
targets: [local-cpu, rpi4]
deploy:
  rpi4: {hosts: ["pi@plate-reader-01"]}
"""

CALLS: list[str] = []


def _write(ctx: stages.StageContext, name: str, payload: dict) -> Path:
    path = ctx.out_dir / name
    path.write_text(json.dumps(payload, sort_keys=True))
    return path


def _stage(ctx: stages.StageContext) -> stages.StageResult:
    """Writes an output that depends on the stage's own sections and its inputs' outputs."""
    CALLS.append(ctx.name)
    reads = {  # each kind reads only what its stage-table entry declares (the view is strict)
        "data": lambda: ctx.recipe.section("dataset"),
        "train": lambda: ctx.recipe.train.for_model(ctx.param),
        "build": lambda: ctx.recipe.section("optimize.calibration"),
    }
    sections = reads[ctx.kind]() if ctx.kind in reads else None
    ups = {name: res["outputs"] for name, res in sorted(ctx.upstream.items())}
    out = _write(ctx, "out.json", {"sections": sections, "upstream": ups})
    artifacts = {ctx.param: {"bundle": str(out)}} if ctx.kind == "build" else {}
    return stages.StageResult(outputs=[out], metrics={"n_upstream": len(ups)}, artifacts=artifacts)


@pytest.fixture
def registered():
    CALLS.clear()
    for kind in stages.BY_KIND:
        stages.register(kind, _stage)
    yield CALLS
    stages.unregister()


@pytest.fixture
def recipe_file(tmp_path: Path) -> Path:
    path = tmp_path / "spine.yaml"
    path.write_text(RECIPE)
    return path


def _pipeline(recipe_file: Path, *sets: str) -> Pipeline:
    workdir = recipe_file.parent / "runs"
    loaded = load_recipe(recipe_file, [f"workdir={workdir}", *sets])
    return Pipeline(loaded)


ALL = [
    "data", "train:detector", "train:recognizer", "evaluate", "prune", "export",
    "build:local-cpu", "verify:local-cpu", "ship:local-cpu", "check:local-cpu",
    "build:rpi4", "verify:rpi4", "ship:rpi4", "check:rpi4",
]
AFTER_CALIBRATION = [n for n in ALL if n.split(":")[0] in ("build", "verify", "ship", "check")]


def _summary(p: Pipeline) -> dict:
    return json.loads((p.run_dir / "summary.json").read_text())


def test_first_run_runs_everything_second_run_nothing(recipe_file, registered):
    p = _pipeline(recipe_file)
    report = p.run()
    assert report.ok, report.failed
    assert sorted(report.executed) == sorted(ALL)
    summary = _summary(p)
    assert sorted(summary["executed"]) == sorted(ALL)
    assert summary["artifacts"]["local-cpu"]["bundle"].endswith("build/local-cpu/out.json")
    assert summary["metrics"]["export"]["n_upstream"] >= 4

    registered.clear()
    report = _pipeline(recipe_file).run()
    assert report.executed == [] and registered == []
    summary = _summary(p)
    assert summary["executed"] == []
    assert sorted(summary["skipped"]) == sorted(ALL)
    assert "local-cpu" in summary["artifacts"]  # artifacts survive a no-op run


def test_calibration_change_reruns_exactly_build_verify_ship_check(recipe_file, registered):
    _pipeline(recipe_file).run()
    registered.clear()
    p = _pipeline(recipe_file, "optimize.calibration.samples=16")
    plan = {row["stage"]: row for row in p.plan()}
    assert plan["build:rpi4"]["status"] == "run"
    assert plan["build:rpi4"]["reasons"][0] == "changed: optimize.calibration"
    assert plan["train:detector"]["status"] == "up-to-date"
    report = p.run()
    assert sorted(report.executed) == sorted(AFTER_CALIBRATION)
    assert sorted(registered) == sorted(AFTER_CALIBRATION)


def test_recognizer_epochs_do_not_retrain_detector(recipe_file, registered):
    _pipeline(recipe_file).run()
    registered.clear()
    report = _pipeline(recipe_file, "train.recognizer.epochs=5").run()
    assert "train:recognizer" in report.executed
    assert "train:detector" not in report.executed
    assert "data" not in report.executed
    # prune fine-tunes the detector only (prune.models defaults to [detector]): not affected.
    assert "prune" in report.skipped


def test_force_reruns_stage_and_dependants_only(recipe_file, registered):
    _pipeline(recipe_file).run()
    registered.clear()
    report = _pipeline(recipe_file).run(force=["train:detector"])
    expected = [n for n in ALL if n not in ("data", "train:recognizer")]
    assert sorted(report.executed) == sorted(expected)


def test_only_runs_what_the_stage_needs(recipe_file, registered):
    report = _pipeline(recipe_file).run(only=["train:recognizer"])
    assert report.executed == ["data", "train:recognizer"]


def test_a_stage_that_cannot_be_imported_fails_loudly(recipe_file, monkeypatch):
    import dataclasses

    stages.unregister()
    broken = dataclasses.replace(stages.BY_KIND["data"], run="engine.stages.no_such_module:run")
    monkeypatch.setitem(stages.BY_KIND, "data", broken)
    p = _pipeline(recipe_file)
    report = p.run()
    assert report.failed["data"].startswith("ModuleNotFoundError: No module named 'engine.stages.no_such_module'")
    assert "train:detector" in report.not_run
    assert not (p.run_dir / "data" / "result.json").exists()
    assert _summary(p)["failed"] == report.failed


def test_failed_stage_is_retried_and_independent_targets_continue(recipe_file, registered):
    def failing_build(ctx):
        if ctx.param == "rpi4":
            raise stages.StageFailed("calibration images missing")
        return _stage(ctx)

    stages.register("build", failing_build)
    p = _pipeline(recipe_file)
    report = p.run()
    assert report.failed == {"build:rpi4": "calibration images missing"}
    assert "check:local-cpu" in report.executed
    assert {"verify:rpi4", "ship:rpi4", "check:rpi4"} <= set(report.not_run)
    stages.register("build", _stage)
    registered.clear()
    report = _pipeline(recipe_file).run()
    assert sorted(report.executed) == ["build:rpi4", "check:rpi4", "ship:rpi4", "verify:rpi4"]


def test_bug_in_stage_keeps_traceback_in_log(recipe_file, registered):
    def buggy(ctx):
        return 1 / 0

    stages.register("data", buggy)
    p = _pipeline(recipe_file)
    report = p.run()
    assert "ZeroDivisionError" in report.failed["data"]
    log = (p.run_dir / "logs" / "data.log").read_text()
    assert "Traceback" in log and "1 / 0" in log


def test_unknown_stage_name_suggests(recipe_file):
    p = _pipeline(recipe_file)
    with pytest.raises(GraphError, match='did you mean "train:detector"'):
        p.run(force=["train:detecter"])


def test_ship_without_hosts_is_left_out_with_notice(recipe_file):
    p = _pipeline(recipe_file, "deploy.rpi4.hosts=[]")
    assert "ship:rpi4" not in p.by_name
    assert p.notices["ship:rpi4"] == "no hosts in deploy.rpi4.hosts"
    assert "ship:local-cpu" in p.by_name  # local transport needs no hosts


def test_lock_names_the_holder(recipe_file, registered):
    p = _pipeline(recipe_file)
    with RunDir(p.run_dir).lock(), pytest.raises(RunBusy, match=r"in progress \(pid \d+"):
        p.run()


def test_cli_run_plan_status_in_subprocess(recipe_file, registered, tmp_path):
    """The CLI against state written by an in-process run: a no-op rerun needs no stage code."""
    _pipeline(recipe_file).run()
    cmd = [sys.executable, "-m", "engine.cli"]
    sets = ["--set", f"workdir={tmp_path / 'runs'}"]
    out = subprocess.run([*cmd, "run", str(recipe_file), *sets], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "0 executed" in out.stdout
    out = subprocess.run([*cmd, "plan", str(recipe_file), *sets, "--json"], capture_output=True, text=True)
    rows = json.loads(out.stdout)["stages"]
    assert all(r["status"] == "up-to-date" for r in rows)
    out = subprocess.run(
        [*cmd, "plan", str(recipe_file), *sets, "--set", "optimize.calibration.method=entropy", "--json"],
        capture_output=True, text=True,
    )
    will = [r["stage"] for r in json.loads(out.stdout)["stages"] if r["status"] == "run"]
    assert sorted(will) == sorted(AFTER_CALIBRATION)


NO_TORCH = """
import sys
from engine.cli import main
codes = [main(args) for args in {commands!r}]
heavy = sorted(m for m in ("torch", "onnxruntime", "cv2") if m in sys.modules)
print(codes, heavy)
"""


def test_validate_plan_and_a_noop_run_import_no_torch(recipe_file, registered, tmp_path):
    """What a user runs most (and CI on every pull request) stays fast: the stage table names its
    implementations as strings, and keys, file dependencies and plans are torch-free."""
    _pipeline(recipe_file).run()
    sets = ["--set", f"workdir={tmp_path / 'runs'}"]
    commands = [["validate", str(recipe_file)], ["plan", str(recipe_file), *sets], ["run", str(recipe_file), *sets]]
    out = subprocess.run([sys.executable, "-c", NO_TORCH.format(commands=commands)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[0, 0, 0] []"
    assert "0 executed" in out.stdout


def test_cli_run_failing_stage_exit_code(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\ndataset:\n  train: {tmp_path / 'missing'}\n")
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "run", str(recipe), "--set", f"workdir={tmp_path}/runs"],
        capture_output=True, text=True,
    )
    assert out.returncode == 1
    assert "✗ data" in out.stdout and "missing" in out.stdout
    summary = json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())
    assert list(summary["failed"]) == ["data"]
    assert "train:detector" in summary["not_run"]


KILLER = """
import os, sys
sys.path.insert(0, {root!r})
from engine import stages
from engine.graph import Pipeline
from engine.recipe import load_recipe
import tests.test_graph as t

def dies(ctx):
    os._exit(9)  # the machine loses power mid-stage

for kind in stages.BY_KIND:
    stages.register(kind, t._stage)
stages.register("export", dies)
Pipeline(load_recipe({recipe!r}, ["workdir={workdir}"])).run()
"""


def test_killed_run_keeps_finished_stages(recipe_file, registered, tmp_path):
    root = Path(__file__).resolve().parent.parent
    script = KILLER.format(root=str(root), recipe=str(recipe_file), workdir=tmp_path / "runs")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    registered.clear()
    report = _pipeline(recipe_file).run()
    done_before = {"data", "train:detector", "train:recognizer", "evaluate", "prune"}
    assert done_before.isdisjoint(report.executed), report.executed
    assert "export" in report.executed and report.ok


def test_base_weights_are_a_file_dependency_of_training() -> None:
    """New shipped base weights must retrain a recipe that fine-tunes from them (`init: base`)."""
    from engine.graph import compile_stages
    from engine.training.pretrained import base_weights

    loaded = load_recipe(Path(__file__).parent.parent / "recipes" / "nameplates.yaml")
    by_name = {s.name: s for s in compile_stages(loaded)[0]}
    for model in ("detector", "recognizer"):
        path = base_weights(model, getattr(loaded.recipe.models, model))
        assert by_name[f"train:{model}"].inputs == (str(path),)
