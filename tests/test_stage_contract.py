"""The stage contract: a stage's rerun key is exactly the recipe fields its stage-table row declares.

Every leaf field of the recipe schema is changed in turn (one ``--set`` each) on a finished run
of small stage functions, and the plan must re-run exactly the stages whose declarations cover
that field, for that reason (``changed: <declaration>``), with their dependants after them — and
no stage whose declarations do not cover it. A few fields are changed for real to show that the
dependants do re-run. The schema walk means a new recipe field is in this test the day it is
added: it needs a way to be changed (`CHANGES`) or a reason it cannot be (`NOT_SWEPT`).

That the stage functions read nothing beyond their declarations is shown by running every stage
kind for real with the strict recipe view on (tests/test_end_to_end.py, tests/conftest.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from engine import stages
from engine.graph import Pipeline, downstream
from engine.recipe import Recipe, load_recipe
from engine.recipe.schema import TrainSpec
from engine.stages.table import FACTS
from engine.stages.view import RecipeView, UndeclaredRead, read_value

RECIPE = """\
name: contract
dataset:
  synthetic: {count: 4, val_count: 2, seed: 1}
models:
  detector: {arch: dbnet, backbone: mobilenetv3}
  recognizer: {arch: crnn, sequence: conv, height: 32}
optimize:
  prune: {amount: 0.25}
  quantize: {qat: {models: [recognizer]}}
targets: [local-cpu, rpi4, jetson-nano]
deploy:
  rpi4: {hosts: ["pi@plate-reader-01"]}
"""

#: leaf -> the ``--set`` values that change it (beyond the generic rule in `_changes`)
CHANGES: dict[str, list[str]] = {
    "description": ["description=another"],
    "dataset.format": ["dataset.format=lines"],
    "dataset.labels": ["dataset.labels=Label.txt"],
    "dataset.synthetic.image_size": ["dataset.synthetic.image_size=[320, 240]"],
    "dataset.charset": ["dataset.charset=0-9A-Z"],
    "models.detector.arch": ["models.detector.arch=ppocrv6", "models.detector.backbone=null"],
    "models.detector.backbone": ["models.detector.backbone=resnet18"],
    "models.detector.input_size": ["models.detector.input_size=320"],
    "models.detector.train_size": ["models.detector.train_size=320"],
    "models.detector.init": ["models.detector.init=null"],
    "models.recognizer.arch": ["models.recognizer.arch=ppocrv6", "models.recognizer.sequence=null",
                               "models.recognizer.height=null"],
    "models.recognizer.sequence": ["models.recognizer.sequence=bilstm"],
    "models.recognizer.height": ["models.recognizer.height=48"],
    "models.recognizer.init": ["models.recognizer.init=null"],
    "train.host": ["train.host=gpu-box"],
    "train.remote_dir": ["train.remote_dir=~/elsewhere"],
    "train.python": ["train.python=python3.11"],
    "optimize.prune.models": ["optimize.prune.models=[detector, recognizer]"],
    "optimize.prune.keep": ["optimize.prune.keep=[head, neck]"],
    "optimize.quantize.exclude": ["optimize.quantize.exclude=[/head/Conv]"],
    "optimize.quantize.qat.models": ["optimize.quantize.qat.models=[detector, recognizer]"],
    "optimize.calibration.percentile": ["optimize.calibration.percentile=99.9"],
    "optimize.calibration.detector.percentile": ["optimize.calibration.detector.percentile=99.9"],
    "optimize.calibration.recognizer.percentile": ["optimize.calibration.recognizer.percentile=99.9"],
    "deploy.*.hosts": ["deploy.*.hosts=[pi@a, pi@b]"],
    "deploy.*.install_dir": ["deploy.*.install_dir=/opt/ocr"],
}

#: leaves the sweep does not change, and why
NOT_SWEPT = {
    "name": "names the run directory: a new name is a new, never-run directory",
    "workdir": "places the run directory: likewise",
    "profiles": "adds profile directories: which targets exist, not what a stage reads",
    "targets": "decides which per-target stages exist (test_graph covers adding and removing)",
    "dataset.train": "exclusive with `synthetic`; read by the data stage as part of `dataset`",
    "dataset.val": "likewise",
    "dataset.synthetic.style": "one choice so far (nameplate)",
}

DEPLOY_KEYS = ("rpi4", "local-cpu")  # a deploy section the recipe has, and one it adds


def _model_of(tp: Any) -> type[BaseModel] | None:
    for t in (tp, *typing.get_args(tp)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def schema_leaves(model: type[BaseModel] = Recipe, prefix: str = "") -> list[str]:
    out: list[str] = []
    for name, f in model.model_fields.items():
        if typing.get_origin(f.annotation) is dict:
            out += schema_leaves(typing.get_args(f.annotation)[1], f"{prefix}{name}.*.")
        elif (sub := _model_of(f.annotation)) is not None:
            out += schema_leaves(sub, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def _generic(field: Any, value: Any) -> Any:
    """A different valid value of a field, from its type and current value."""
    args = typing.get_args(field.annotation)
    literal = next((a for a in (field.annotation, *args) if typing.get_origin(a) is typing.Literal), None)
    if literal is not None:
        return next(c for c in reversed(typing.get_args(literal)) if c != value)  # not a default's twin
    if isinstance(value, bool) or bool in args or field.annotation is bool:
        return not value if value is not None else True
    if isinstance(value, int) or int in args or field.annotation is int:
        return (value or 0) + 1
    if isinstance(value, float) or float in args or field.annotation is float:
        return value / 2 if value else 0.5
    if Path in args or field.annotation is Path:
        return "/tmp/elsewhere"
    raise LookupError(f"no generic change for {field.annotation}")


def _field(leaf: str) -> Any:
    model: Any = Recipe
    parts = leaf.split(".")
    for part in parts[:-1]:
        if part == "*":
            continue
        ann = model.model_fields[part].annotation
        model = typing.get_args(ann)[1] if typing.get_origin(ann) is dict else _model_of(ann)
    return model.model_fields[parts[-1]]


def _changes(base: Recipe) -> dict[str, list[str]]:
    """Every swept leaf (``deploy.*`` expanded over `DEPLOY_KEYS`) -> its ``--set`` values."""
    out: dict[str, list[str]] = {}
    for leaf in schema_leaves():
        if leaf in NOT_SWEPT:
            continue
        for key in DEPLOY_KEYS if "*" in leaf else [None]:
            concrete = leaf.replace("*", key) if key else leaf
            if leaf in CHANGES:
                sets = [s.replace("*", key) if key else s for s in CHANGES[leaf]]
            else:
                section, name = concrete.rsplit(".", 1)
                current = read_value(base, section) or {}  # a deploy section the recipe lacks: {}
                field = _field(leaf)
                value = _generic(field, current.get(name, field.default))
                sets = [f"{concrete}={json.dumps(value)}"]
            out[concrete] = sets
    return out


_FOR_MODEL = set(TrainSpec().for_model("detector"))  # what `train@<model>` stands for


def covers(read: str, leaf: str) -> bool:
    """Does the declaration ``read`` cover the recipe field ``leaf``?"""
    path, _, model = read.partition("@")
    if not model:
        return leaf == path or leaf.startswith(path + ".")
    if leaf.startswith(f"{path}.{model}."):
        return True
    rest = leaf[len(path) + 1:] if leaf.startswith(path + ".") else ""
    return rest in _FOR_MODEL


def _toy(ctx: stages.StageContext) -> stages.StageResult:
    """Writes an output that changes with the stage's key and its upstream outputs (so the
    dependants of a re-run stage re-run) and reads no recipe field at all."""
    out = ctx.out_dir / "out.json"
    ups = {name: res["outputs"] for name, res in sorted(ctx.upstream.items())}
    out.write_text(json.dumps({"key": ctx.key, "upstream": ups}, sort_keys=True))
    artifacts = {ctx.param: {"bundle": str(out)}} if ctx.kind == "build" else {}
    return stages.StageResult(outputs=[out], artifacts=artifacts)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("contract")
    recipe = tmp / "contract.yaml"
    recipe.write_text(RECIPE)
    for kind in stages.BY_KIND:
        stages.register(kind, _toy)
    try:
        report = _pipeline(recipe).run()
    finally:
        stages.unregister()
    assert report.ok, report.failed
    return recipe


def _pipeline(recipe: Path, *sets: str) -> Pipeline:
    return Pipeline(load_recipe(recipe, [f"workdir={recipe.parent / 'runs'}", *sets]))


def test_every_schema_field_is_swept_or_excused():
    leaves = set(schema_leaves())
    assert set(NOT_SWEPT) <= leaves and set(CHANGES) <= leaves, "a listed field left the schema"
    assert len(leaves) > 100


def test_each_field_reruns_exactly_the_stages_that_declare_it(finished):
    base = _pipeline(finished)
    assert len(base.stages) == 17 and all(r["status"] == "up-to-date" for r in base.plan())
    swept = 0
    for leaf, sets in _changes(base.recipe).items():
        p = _pipeline(finished, *sets)
        rows = {r["stage"]: r for r in p.plan()}
        changed = [leaf] + [s.split("=", 1)[0] for s in sets if s.split("=", 1)[0] != leaf]
        for stage in p.stages:
            row = rows[stage.name]
            declared = [r for r in stage.reads if any(covers(r, c) for c in changed)]
            facts = [f for f in stage.facts if FACTS[f].compute(p.loaded) != FACTS[f].compute(base.loaded)]
            own = [r for r in row["reasons"] if r.startswith("changed: ")]
            where = f"--set {' '.join(sets)}: {stage.name} {row}"
            if declared or facts:
                assert row["status"] == "run" and own, where
                named = set(own[0][len("changed: "):].split(", "))
                assert named <= {*declared, *facts, *stage.reads} and named & {*declared, *facts}, where
                for after in downstream(p.stages, [stage.name]):
                    assert rows[after]["status"] == "run", f"{where}; dependant {after} {rows[after]}"
            else:
                assert not own, where
        swept += 1
    assert swept > 110


@pytest.mark.parametrize("sets, reran", [
    (["verify.samples=7"], ["evaluate", "build:local-cpu", "build:rpi4", "build:jetson-nano"]),
    (["optimize.calibration.samples=16"], ["build:local-cpu", "build:rpi4", "build:jetson-nano"]),
    (["train.recognizer.lr=0.001"], ["train:recognizer"]),
    (["optimize.export.simplify=false"], ["export"]),
    (["deploy.rpi4.keep_releases=5"], ["ship:rpi4", "check:rpi4"]),
    (["description=nothing reads me"], []),
])
def test_a_changed_field_reruns_the_stage_and_its_dependants(finished, sets, reran):
    """For real: the stages that declare the field run, then everything downstream of them
    (their outputs changed), and nothing else."""
    for kind in stages.BY_KIND:
        stages.register(kind, _toy)
    try:
        p = _pipeline(finished, *sets)
        report = p.run()
        again = _pipeline(finished).run()  # back to the recipe as written
    finally:
        stages.unregister()
    assert report.ok and again.ok
    assert sorted(report.executed) == sorted(downstream(p.stages, reran))


def test_plan_says_build_reruns_for_verify_samples(finished):
    """The case a new user hits: ``verify.samples`` decides how many val images the bundle
    carries, so ``recipe plan --set verify.samples=7`` must not call the bundle up to date."""
    cmd = [sys.executable, "-m", "engine.cli", "plan", str(finished), "--set",
           f"workdir={finished.parent / 'runs'}", "--set", "verify.samples=7", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    rows = {r["stage"]: r for r in json.loads(out.stdout)["stages"]}
    assert rows["build:local-cpu"]["status"] == "run"
    assert rows["build:local-cpu"]["reasons"][0] == "changed: verify.samples"
    assert rows["train:detector"]["status"] == "up-to-date"


def test_the_view_refuses_what_a_stage_did_not_declare():
    loaded = load_recipe_text(RECIPE)
    view = RecipeView.of(loaded.recipe, ["optimize.calibration", "train@detector", "deploy.rpi4"], "build:rpi4")
    assert view.optimize.calibration.samples == 64
    assert view.optimize.calibration.for_model("recognizer")["samples"] == 64
    assert view.train.for_model("detector")["epochs"] == 20
    assert view.deploy.get("rpi4").hosts == ("pi@plate-reader-01",)
    for read in (lambda: view.verify.samples, lambda: view.optimize.quantize,
                 lambda: view.train.for_model("recognizer"), lambda: view.train.lr,
                 lambda: view.deploy.get("local-cpu"), lambda: view.section("dataset"),
                 lambda: view.content_hash()):
        with pytest.raises(UndeclaredRead, match="stage build:rpi4 read recipe field"):
            read()
    with pytest.raises(TypeError, match="read-only"):
        view.optimize.calibration.samples = 3


def test_outside_strict_mode_an_undeclared_read_is_reported_not_refused():
    loaded = load_recipe_text(RECIPE)
    seen: list[str] = []
    view = RecipeView.of(loaded.recipe, ["dataset"], "data", on_undeclared=seen.append)
    assert view.verify.samples is None and view.train.for_model("detector")["lr"] == 2e-4
    assert seen == ["verify", "train"]  # the first undeclared node of each read


def load_recipe_text(text: str) -> Any:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.yaml"
        path.write_text(text)
        return load_recipe(path)
