"""The whole recipe for real on a tiny dataset: generate, train a few steps, evaluate, prune,
fine-tune on the int8 grid (qat), export, quantize, bundle, verify through the device runtime,
ship (local transport), check — every stage kind, with the strict recipe view (tests/conftest.py):
a stage that reads a recipe field its stage-table row does not declare fails here.

Small sizes keep it to a couple of minutes on 2 CPU cores; the recipe's accuracy bars are off
because a few training steps learn little — the point is that every stage really runs and hands
real files to the next, and that a rerun does nothing.  The models start from the shipped base
weights, so boxes are really found and read: the test holds accuracy floors measured on this run
(a stage that broke the models would fall through them), and accuracy comparisons (the int8
guard) compare something.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pipeline_run import run_recipe_text

from engine.graph import Pipeline
from engine.recipe import load_recipe

RECIPE = """\
name: tiny
dataset:
  synthetic: {count: 6, val_count: 2, seed: 11, image_size: [320, 240]}
models:
  detector: {arch: dbnet, input_size: 320, train_size: 192, init: base}
  recognizer: {arch: crnn, sequence: conv, max_width: 160, init: base}
train:
  epochs: 1
  detector: {batch_size: 4}
  recognizer: {batch_size: 16}
optimize:
  prune: {amount: 0.25, allocation: sensitivity, finetune_epochs: 1, finetune_ema: 0.9, finetune_warmup: 0}
  quantize: {qat: {models: [recognizer], steps_per_epoch: 4}}
  calibration: {samples: 4}
targets: [local-cpu, rpi4, jetson-nano]
verify:
  max_drop: 1.0
  samples: 2
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Pipeline:
    return run_recipe_text(tmp_path_factory.mktemp("e2e"), RECIPE)


def test_every_stage_ran_and_produced_artifacts(finished):
    from engine.stages import BY_KIND

    summary = json.loads((finished.run_dir / "summary.json").read_text())
    assert summary["failed"] == {}
    # every stage kind ran, each through its strict recipe view: none read an undeclared field
    assert {n.split(":")[0] for n in summary["executed"]} == set(BY_KIND)
    assert summary["metrics"]["qat"]["recognizer_layers"] > 0
    assert "check:local-cpu" in summary["executed"]
    assert summary["not_applicable"]["ship:rpi4"] == "no hosts in deploy.rpi4.hosts"
    for target in ("local-cpu", "rpi4", "jetson-nano"):
        art = summary["artifacts"][target]
        assert Path(art["bundle"], "manifest.json").exists()
        assert art["size_bytes"] > 0
    assert summary["artifacts"]["rpi4"]["precision"] == "int8"
    assert "fp16" in summary["artifacts"]["jetson-nano"]["candidates"]
    prune = summary["metrics"]["prune"]
    assert prune["detector_params_after"] < prune["detector_params_before"]
    # Accuracy floors a broken stage would miss: the models start from the base weights, and on
    # this run's 2 val images (7 lines) this machine measured evaluate hmean 0.923 (12/13),
    # recognizer line accuracy 0.571 (4/7 crops), end to end 0.429 (3/7), pruned hmean 0.923,
    # and through the device runtime (check:local-cpu, int8 at the profile's max_side 640)
    # hmean 0.50. Each floor leaves a line or more of margin.
    ev = summary["metrics"]["evaluate"]
    assert ev["hmean"] >= 0.6 and ev["line_accuracy"] >= 0.4, ev
    assert ev["e2e_line_accuracy"] >= 0.25, ev  # whole lines of real text read end to end
    # the metric right after pruning, with whichever BatchNorm statistics scored better
    assert prune["detector_hmean_pruned"] >= 0.6 and prune["detector_hmean_after"] >= 0.6, prune
    assert isinstance(prune["detector_batchnorm_reestimated"], bool)
    assert summary["metrics"]["check:local-cpu"]["hmean"] >= 0.3, summary["metrics"]["check:local-cpu"]
    # allocation: sensitivity - which layers lost what is recorded, and the report shows it
    plan = json.loads((finished.run_dir / "prune" / "detector.channels.json").read_text())
    assert plan["allocation"] == "sensitivity" and plan["channels"]
    assert "sensitivity allocation" in (finished.run_dir / "report.md").read_text()
    # finetune_ema: the fine-tune kept a moving average, and that average is the pruned model
    import torch

    from engine.compress.prune import load_pruned
    from engine.training.checkpoint import load_checkpoint

    last = load_checkpoint(finished.run_dir / "prune" / "detector" / "checkpoints" / "last.pt")
    assert last["ema"]["updates"] > 0 and "raw_model" in last
    # finetune_warmup: the fine-tune's own warm-up, the train stage keeps the recipe's (1 epoch)
    assert last["config"]["warmup_epochs"] == 0
    trained = load_checkpoint(finished.run_dir / "train" / "detector" / "checkpoints" / "last.pt")
    assert trained["config"]["warmup_epochs"] == 1.0
    pruned = load_pruned(finished.run_dir / "prune" / "detector.pruned.pt")[0].state_dict()
    assert all(torch.equal(pruned[k], v) for k, v in last["model"].items())


def test_int8_targets_of_one_run_share_the_calibration(finished):
    """local-cpu and rpi4 quantize the same exports at the same input size: one calibration
    per model serves both (reduce_range differs, but it is applied after calibrating)."""
    entries = sorted(p.name.split("-")[0] for p in (finished.run_dir / "cache" / "calibration").iterdir())
    assert entries == ["detector", "recognizer"]
    for target in ("local-cpu", "rpi4"):
        manifest = json.loads(Path(finished.run_dir, "build", target, "bundle", "manifest.json").read_text())
        assert manifest["int8_guard"]["detector"]["calibration"]["method"] == "minmax"
        assert manifest["spin_threads"] is False  # the built-in profiles' default


def test_int8_detector_guard_scores_the_int8_pair(finished):
    """The detector's int8 guard reads its boxes with the guarded int8 recognizer and holds the
    pair to the fp32 pair's end-to-end accuracy on val: what verify measures."""
    from engine.compress.accuracy import end_to_end_accuracy
    from engine.compress.latency import make_session
    from engine.data.manifest import load_image_rgb
    from engine.training.datasets import detection_records

    bundle = finished.run_dir / "build" / "local-cpu" / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    guard = manifest["int8_guard"]
    assert guard["detector"]["read_by"] == "int8 recognizer" and "read_by" not in guard["recognizer"]
    records = detection_records(finished.run_dir / "data" / "manifest.jsonl", "val")
    images = [load_image_rgb(r.image) for r in records]
    gts = [[ln.to_dict() for ln in r.lines] for r in records]
    post = {k: v for k, v in manifest["postprocess"].items() if k != "min_text_score"}
    rec = manifest["recognizer"]

    def pair(precision: str) -> dict[str, float]:
        models = bundle / "models" / precision
        return end_to_end_accuracy(
            make_session(models / "detector.onnx", 2), make_session(models / "recognizer.onnx", 2), images, gts,
            manifest["charset"], max_side=manifest["detector"]["max_side"], height=rec["height"],
            max_width=rec["max_width"], postprocess=post)

    fp32, int8 = pair("fp32"), pair("int8")
    assert fp32["hmean"] > 0 and int8["hmean"] > 0  # real boxes were cut and read
    assert guard["detector"]["fp32_metric"] == pytest.approx(fp32["e2e_line_accuracy"])
    assert guard["detector"]["final_metric"] == pytest.approx(int8["e2e_line_accuracy"])


def test_local_release_is_installed_and_checked(finished):
    releases = finished.run_dir / "releases" / "local-cpu"
    current = releases / "current"
    assert current.is_symlink()
    manifest = json.loads((current / "manifest.json").read_text())
    assert manifest["precision"] in ("fp32", "int8")
    measured = manifest["verify"]["candidates"]  # auto: both measured, the faster passing one won
    assert set(measured) == {"fp32", "int8"}
    # verify.candidates: chosen - only the winner's model files travel to the device
    assert set(manifest["candidates"]) == {manifest["precision"]}
    onnx_files = sorted(p.relative_to(current).as_posix() for p in current.rglob("*.onnx"))
    assert onnx_files == sorted(manifest["candidates"][manifest["precision"]].values())
    hosts = json.loads((finished.run_dir / "check" / "local-cpu" / "hosts.json").read_text())
    assert hosts["local"]["status"] == "ok"
    assert hosts["local"]["latency_p50_ms"] > 0


def test_rerun_executes_nothing(finished):
    again = Pipeline(finished.loaded)
    report = again.run()
    assert report.executed == []
    assert report.ok


def test_recognizer_bar_fails_evaluate_and_stops_downstream(finished):
    from engine.recipe import load_recipe

    strict = load_recipe(finished.loaded.path, [*finished.loaded.overrides, "verify.min_word_accuracy=0.99"])
    report = Pipeline(strict).run()
    assert "recognizer below the verify bars: word_accuracy" in report.failed["evaluate"]
    assert "train:detector" not in report.executed


def test_changed_prune_settings_fine_tune_from_the_start(finished):
    """The prune stage's fine-tune resumes only an attempt with the same settings: a finished
    fine-tune of other settings must not be taken as done."""
    changed = load_recipe(finished.loaded.path, [*finished.loaded.overrides, "optimize.prune.distill=0.5"])
    pipeline = Pipeline(changed)
    report = pipeline.run(only=["prune"])
    assert report.executed == ["prune"], report.failed
    log = (pipeline.run_dir / "prune" / "detector" / "train.log").read_text()
    assert "resumed" not in log and "nothing to do" not in log
    assert "loss_distill" in (pipeline.run_dir / "prune" / "detector" / "metrics.csv").read_text()


def test_epochs_zero_uses_init_as_it_is(tmp_path: Path) -> None:
    """`train: {epochs: 0}` (re-quantizing an existing model): the base weights become best.pt
    without an optimizer step, and evaluate scores them."""
    import torch

    from engine.training.checkpoint import load_checkpoint
    from engine.training.pretrained import base_weights

    recipe = tmp_path / "requantize.yaml"
    recipe.write_text(RECIPE.replace("epochs: 1", "epochs: 0"))
    loaded = load_recipe(recipe, [f"workdir={tmp_path / 'runs'}", "verify.samples=1"])
    pipeline = Pipeline(loaded)
    report = pipeline.run(only=["evaluate"])
    assert report.ok, report.failed
    result = json.loads((pipeline.run_dir / "train" / "detector" / "result.json").read_text())
    assert result["metrics"]["epochs"] == 0
    best = load_checkpoint(pipeline.run_dir / "train" / "detector" / "checkpoints" / "best.pt")
    base = load_checkpoint(base_weights("detector", loaded.recipe.models.detector))
    assert all(torch.equal(best["model"][k], v) for k, v in base["model"].items())
    assert (pipeline.run_dir / "evaluate" / "metrics.json").exists()


def test_epochs_zero_at_a_height_the_weights_do_not_fit_names_both(finished, tmp_path: Path) -> None:
    """A 32-px CRNN (its last conv collapses 32 px) cannot ship untrained as a 48-px model."""
    trained = finished.run_dir / "train" / "recognizer" / "checkpoints" / "best.pt"
    loaded = load_recipe(finished.loaded.path, [f"workdir={tmp_path}", "train.epochs=0",
                                                f"models.recognizer.init={trained}", "models.recognizer.height=48"])
    report = Pipeline(loaded).run(only=["train:recognizer"])
    message = report.failed["train:recognizer"]
    assert "models.recognizer.height 48: best.pt was trained on 32-px lines" in message, message
    assert "set models.recognizer.height: 32" in message


def test_epochs_zero_without_init_is_a_recipe_error(tmp_path: Path) -> None:
    from engine.config import ConfigError

    recipe = tmp_path / "bad.yaml"
    recipe.write_text(RECIPE.replace("init: base", "init: null").replace("epochs: 1", "epochs: 0"))
    with pytest.raises(ConfigError, match=r"models\.detector\.init"):
        load_recipe(recipe)


def test_new_data_under_the_same_recipe_trains_fresh(tmp_path: Path) -> None:
    """Same recipe text, different prepared data (or init weights): the train stage re-runs
    (file_dep) and must start over, not resume the finished checkpoint of the old data."""
    import logging

    from engine.rundir import RunDir
    from engine.stages import StageContext
    from engine.stages.inputs import resume_or_start
    from engine.stages.view import RecipeView

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE)
    loaded = load_recipe(recipe, [f"workdir={tmp_path / 'runs'}"])
    out = tmp_path / "train" / "detector"
    out.mkdir(parents=True)

    def ctx(data_digest: str) -> StageContext:
        view = RecipeView.of(loaded.recipe, [], "train:detector")
        return StageContext("train:detector", "train", "detector", view, RunDir(tmp_path), out,
                            {"data": {"outputs": {"data/manifest.jsonl": data_digest}}},
                            logging.getLogger("test"), key="k1")

    assert resume_or_start(ctx("aaa"), out) is True
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.pt").write_bytes(b"finished")
    assert resume_or_start(ctx("aaa"), out) is False  # an interrupted attempt on the same inputs
    assert (out / "checkpoints" / "last.pt").exists()
    assert resume_or_start(ctx("bbb"), out) is True  # new data: the old checkpoint must go
    assert not (out / "checkpoints").exists()
    (out / "attempt.json").write_text('{"key": "k1", "upstr')  # torn write
    assert resume_or_start(ctx("bbb"), out) is True


def test_interrupted_prune_resumes_from_its_recorded_pruned_model(finished):
    """A prune stage that died after pruning re-runs from the model it pruned (prune/<model>/
    pruned.pt), not from a new pruning: Taylor ranks come from gradients and need not repeat."""
    pipeline = Pipeline(finished.loaded)
    pipeline.run(only=["prune"])  # settings may have been changed by an earlier test
    work = pipeline.run_dir / "prune" / "detector"
    started = (work / "pruned.pt").read_bytes()
    (pipeline.run_dir / "prune" / "result.json").unlink()  # as if it died before finishing
    report = pipeline.run(only=["prune"])
    assert report.executed == ["prune"], report.failed
    assert (work / "pruned.pt").read_bytes() == started
    assert "resumed at epoch 1" in (work / "train.log").read_text()


def test_verify_reuses_identical_checks_and_checks_other_archs_in_one_pass(finished):
    """rpi4's fp32 candidate is local-cpu's export read with the same settings: its verify takes
    local-cpu's check from the run's cache. Its int8 models differ (reduce_range), so those are
    checked, like the Jetson's, once over the val images on this host's cores."""
    import os

    candidates = {t: json.loads((finished.run_dir / "verify" / t / "bundle" / "manifest.json").read_text())
                  ["verify"]["candidates"] for t in ("local-cpu", "rpi4", "jetson-nano")}
    assert not any("reused" in m for m in candidates["local-cpu"].values())
    assert candidates["rpi4"]["fp32"]["reused"].startswith("cache/verify/fp32-")
    assert candidates["rpi4"]["fp32"]["e2e_line_accuracy"] == candidates["local-cpu"]["fp32"]["e2e_line_accuracy"]
    assert "reused" not in candidates["rpi4"]["int8"] and "reused" not in candidates["jetson-nano"]["fp16"]
    entries = [json.loads(p.read_text()) for p in (finished.run_dir / "cache" / "verify").iterdir()]
    own = {(e["report"]["target"], e["report"]["precision"]): e for e in entries}
    assert set(own) == {("local-cpu", "fp32"), ("local-cpu", "int8"), ("rpi4", "int8"),
                        ("jetson-nano", "fp32"), ("jetson-nano", "fp16")}
    for (target, _), entry in own.items():
        foreign = target != "local-cpu"
        assert entry["runs"] == (1 if foreign else 2)
        assert entry["report"]["threads"] == (min(4, os.cpu_count() or 1) if foreign else 2)


def test_int8_targets_with_the_same_settings_share_the_guarded_model(finished):
    """reduce_range set for every target: rpi4 would build local-cpu's int8 models again, guard
    search included; it takes them from the run's int8 cache instead, byte for byte."""
    same = load_recipe(finished.loaded.path, [*finished.loaded.overrides, "optimize.quantize.reduce_range=true"])
    pipeline = Pipeline(same)
    assert pipeline.run(only=["build:local-cpu"]).ok
    report = pipeline.run(only=["build:rpi4"])
    assert report.executed == ["build:rpi4"], report.failed
    bundles = [pipeline.run_dir / "build" / t / "bundle" for t in ("local-cpu", "rpi4")]
    guards = [json.loads((b / "manifest.json").read_text())["int8_guard"] for b in bundles]
    assert guards[1]["detector"]["reused"].startswith("cache/int8/detector-")  # local-cpu's entry
    assert guards[1]["recognizer"]["excluded"] == guards[0]["recognizer"]["excluded"]
    for model in ("detector", "recognizer"):
        assert (bundles[0] / "models" / "int8" / f"{model}.onnx").read_bytes() == (bundles[1] / "models" / "int8" / f"{model}.onnx").read_bytes()
