"""Malformed recipes and profiles: every error names the exact file:line:col and field path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import ConfigError
from engine.recipe import load_recipe, recipe_schema
from engine.targets import load_profiles

ROOT = Path(__file__).resolve().parent.parent
BASE = "name: demo\ndataset:\n  synthetic: {count: 10}\n"

# (recipe text, overrides, expected diagnostics as "LINE:COL: error: FIELD: MESSAGE-PREFIX")
CASES: list[tuple[str, str, list[str], list[str]]] = [
    ("unknown top-level key", BASE + "modles: {}\n", [],
     ['4:1: error: modles: unknown key \'modles\' (did you mean "models"?)']),
    ("unknown nested key", BASE + "train:\n  epoch: 3\n", [],
     ['5:3: error: train.epoch: unknown key \'epoch\' (did you mean "epochs"?)']),
    ("unknown key deep", BASE + "optimize:\n  calibration: {sample: 3}\n", [],
     ['5:17: error: optimize.calibration.sample: unknown key \'sample\' (did you mean "samples"?)']),
    ("unknown key in per-model train", BASE + "train:\n  detector: {batchsize: 3}\n", [],
     ['5:14: error: train.detector.batchsize: unknown key \'batchsize\' (did you mean "batch_size"?)']),
    ("wrong type int", BASE + "train:\n  epochs: many\n", [],
     ["5:11: error: train.epochs: should be a valid integer"]),
    ("wrong type float", BASE + "train:\n  lr: fast\n", [],
     ["5:7: error: train.lr: should be a valid number"]),
    ("negative epochs", BASE + "train:\n  epochs: -3\n", [],
     ["5:11: error: train.epochs: should be greater than or equal to 0 (got -3)"]),
    ("zero batch size per model", BASE + "train:\n  recognizer:\n    batch_size: 0\n", [],
     ["6:17: error: train.recognizer.batch_size: should be greater than or equal to 1 (got 0)"]),
    ("bad backbone with suggestion", BASE + "models:\n  detector: {arch: dbnet, backbone: resnet19}\n", [],
     ["5:37: error: models.detector.backbone: unknown dbnet backbone 'resnet19'; known: mobilenetv3, resnet18 (did you mean 'resnet18'?)"]),
    ("a backbone of another architecture", BASE + "models:\n  detector: {arch: ppocrv6, backbone: mobilenetv3}\n", [],
     ["5:39: error: models.detector.backbone: unknown ppocrv6 backbone 'mobilenetv3'; known: lcnetv4"]),
    ("a line height the architecture does not read", BASE + "models:\n  recognizer: {height: 40}\n", [],
     ["5:24: error: models.recognizer.height: 40 is not one of 32, 48"]),
    ("bad enum schedule", BASE + "train:\n  schedule: cosin\n", [],
     ['5:13: error: train.schedule: \'cosin\' is not one of cosine, constant, step (did you mean "cosine"?)']),
    ("bad enum int literal", BASE + "models:\n  recognizer: {height: 40}\n", [],
     ["5:24: error: models.recognizer.height: 40 is not one of 32, 48"]),
    ("bad enum format", "name: demo\ndataset:\n  format: icdar2017\n  train: d\n", [],
     ['3:11: error: dataset.format: \'icdar2017\' is not one of icdar2015, labelimg, ppocrlabel, labelstudio, lines (did you mean "icdar2015"?)']),
    ("bad enum calibration method", BASE + "optimize:\n  calibration:\n    method: entrop\n", [],
     ['6:13: error: optimize.calibration.method: \'entrop\' is not one of minmax, entropy, percentile (did you mean "entropy"?)']),
    ("input size not multiple of 32", BASE + "models:\n  detector:\n    input_size: 100\n", [],
     ["6:17: error: models.detector.input_size: must be a multiple of 32 (got 100; try 96)"]),
    ("prune amount out of range", BASE + "optimize:\n  prune: {amount: 1.5}\n", [],
     ["5:19: error: optimize.prune.amount: should be less than 1 (got 1.5)"]),
    ("unknown target", BASE + "targets: [local-cpu, rpi44]\n", [],
     ['4:22: error: targets[1]: unknown target \'rpi44\' (did you mean "rpi4"?)']),
    ("unknown target block list", BASE + "targets:\n  - jetson-nan\n", [],
     ['5:5: error: targets[0]: unknown target \'jetson-nan\' (did you mean "jetson-nano"?)']),
    ("duplicate target", BASE + "targets: [rpi4, rpi4]\n", [],
     ["4:17: error: targets[1]: duplicate target 'rpi4'"]),
    ("empty targets", BASE + "targets: []\n", [],
     ["4:10: error: targets: name at least one target profile"]),
    ("deploy for target not listed", BASE + "targets: [rpi4]\ndeploy:\n  rpi5: {hosts: [pi@a]}\n", [],
     ['6:3: error: deploy.rpi5: deploy section for \'rpi5\', which is not in `targets` (did you mean "rpi4"?)']),
    ("bad host spec", BASE + "targets: [rpi4]\ndeploy:\n  rpi4: {hosts: ['pi@a b']}\n", [],
     ["6:17: error: deploy.rpi4.hosts: not a host spec (user@host[:port]): 'pi@a b'"]),
    ("duplicate host", BASE + "targets: [rpi4]\ndeploy:\n  rpi4:\n    hosts: [pi@a, pi@a]\n", [],
     ["7:12: error: deploy.rpi4.hosts: duplicate hosts: pi@a"]),
    ("missing name", "dataset:\n  synthetic: {count: 1}\n", [],
     ["1:1: error: name: required field is missing"]),
    ("missing dataset", "name: demo\n", [],
     ["1:1: error: dataset: required field is missing"]),
    ("dataset without source", "name: demo\ndataset:\n  charset: abc\n", [],
     ["3:3: error: dataset: give either `train` (a directory) or `synthetic` (a generator spec)"]),
    ("synthetic and train", BASE + "  train: data\n", [],
     ["3:3: error: dataset: `synthetic` generates both splits; remove `train`/`val`"]),
    ("bad recipe name", "name: my recipe\ndataset:\n  synthetic: {}\n", [],
     ["1:7: error: name: use letters, digits"]),
    ("section is not a mapping", BASE + "train: 5\n", [],
     ["4:8: error: train: should be a valid dictionary"]),
    ("list instead of mapping", BASE + "verify: [a]\n", [],
     ["4:9: error: verify: should be a valid dictionary"]),
    ("bad yaml syntax", "name: demo\ndataset: {synthetic: {}\n", [],
     ["3:1: error: yaml: while parsing a flow mapping"]),
    ("bad yaml indentation", "name: demo\n dataset: 1\n", [],
     ["2:9: error: yaml: mapping values are not allowed here"]),
    ("duplicate key", "name: a\nname: b\n", [],
     ['2:1: error: yaml: while constructing a mapping found duplicate key "name"']),
    ("tab indentation", "name: demo\ndataset:\n\tsynthetic: {}\n", [],
     ["3:1: error: yaml: while scanning for the next token found character '\\t'"]),
    ("root is a list", "- a\n- b\n", [],
     ["1:1: error: (root): expected a mapping of keys, got CommentedSeq"]),
    ("empty file", "", [], ["1:1: error: (root): the recipe is empty"]),
    ("verify bar above one", BASE + "verify: {min_hmean: 1.2}\n", [],
     ["4:21: error: verify.min_hmean: should be less than or equal to 1 (got 1.2)"]),
    ("several errors at once", BASE + "train: {epochs: -1, lr: x}\ntargets: [rpi9]\n", [],
     ["4:17: error: train.epochs: should be greater than or equal to 0",
      "4:25: error: train.lr: should be a valid number",
      '5:11: error: targets[0]: unknown target \'rpi9\'']),
]


@pytest.mark.parametrize("text,_sets,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_recipe(tmp_path, text, _sets, expected):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    lines = [str(d) for d in info.value.diagnostics]
    assert len(lines) == len(expected), lines
    for line, want in zip(lines, expected, strict=True):
        assert line.startswith(f"{path}:{want}"), f"{line!r} does not start with {want!r}"


OVERRIDE_CASES = [
    (["train.epochs=abc"], "--set train.epochs=abc: error: train.epochs: should be a valid integer"),
    (["targets=[rpi3]"], "--set targets=[rpi3]: error: targets[0]: unknown target 'rpi3'"),
    (["train.epohcs=3"], '--set train.epohcs=3: error: train.epohcs: unknown key \'epohcs\' (did you mean "epochs"?)'),
    (["nonsense"], "--set nonsense: error: (set): expected KEY.PATH=VALUE"),
    (["name.x=1"], "--set name.x=1: error: name: is not a mapping; cannot set a key in it"),
]


@pytest.mark.parametrize("sets,expected", OVERRIDE_CASES)
def test_malformed_override(tmp_path, sets, expected):
    path = tmp_path / "r.yaml"
    path.write_text(BASE)
    with pytest.raises(ConfigError) as info:
        load_recipe(path, sets)
    assert str(info.value.diagnostics[0]).startswith(expected)


def test_override_is_typed_and_applied(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(BASE)
    loaded = load_recipe(path, ["train.recognizer.epochs=7", "targets=[local-cpu, rpi4]", "train.lr=1e-3"])
    assert loaded.recipe.train.for_model("recognizer")["epochs"] == 7
    assert loaded.recipe.train.for_model("detector")["epochs"] == 20
    assert loaded.recipe.train.for_model("detector")["lr"] == pytest.approx(1e-3)
    assert list(loaded.profiles) == ["local-cpu", "rpi4"]


def test_calibration_per_model_overrides_the_shared_settings(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(BASE)
    cal = load_recipe(path, ["optimize.calibration.samples=32",
                             "optimize.calibration.detector={method: percentile, percentile: 99.99}"]
                      ).recipe.optimize.calibration
    assert cal.for_model("detector") == {"method": "percentile", "samples": 32, "percentile": 99.99}
    assert cal.for_model("recognizer") == {"method": "minmax", "samples": 32, "percentile": 99.999}
    with pytest.raises(ConfigError, match=r"optimize\.calibration\.detector\.method"):
        load_recipe(path, ["optimize.calibration.detector.method=entropie"])


PROFILE_CASES = [
    ("arch: arm64\nruntime: onnxruntime\nprecision: int8\nthreads: 4\n",
     ['1:7: error: arch: \'arm64\' is not one of x86_64, aarch64, armv7l']),
    ("arch: aarch64\nruntime: tensorrt\nprecision: fp16\nthreads: 4\n",
     ["1:1: error: (root): runtime tensorrt needs a `tensorrt:` section"]),
    ("arch: aarch64\nruntime: onnxruntime\nprecision: int4\nthreads: 0\n",
     ["3:12: error: precision: 'int4' is not one of int8, fp16, fp32, auto",
      "4:10: error: threads: should be greater than or equal to 1"]),
    ("name: other\narch: aarch64\nruntime: onnxruntime\nprecision: int8\nthreads: 2\n",
     ["1:7: error: name: must match the file name 'mydev'"]),
    ("arch: aarch64\nruntime: onnxruntime\nprecision: int8\nthreads: 2\ndetector: {max_side: 100}\n",
     ["5:22: error: detector.max_side: must be a multiple of 32 (got 100)"]),
    ("arch: aarch64\nruntime: onnxruntime\nprecision: int8\nthreads: 2\nthread: 4\n",
     ['5:1: error: thread: unknown key \'thread\' (did you mean "threads"?)']),
]


@pytest.mark.parametrize("text,expected", PROFILE_CASES)
def test_malformed_profile(tmp_path, text, expected):
    (tmp_path / "mydev.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_profiles([tmp_path])
    lines = [str(d) for d in info.value.diagnostics]
    assert len(lines) == len(expected), lines
    for line, want in zip(lines, expected, strict=True):
        assert line.startswith(f"{tmp_path / 'mydev.yaml'}:{want}"), line


def test_user_profile_from_recipe_dir_and_env(tmp_path, monkeypatch):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "gateway.yaml").write_text(
        "arch: x86_64\nruntime: onnxruntime\nprecision: fp32\nthreads: 4\nspin_threads: true\n"
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE + f"profiles: [{profiles}]\ntargets: [gateway]\n")
    gateway = load_recipe(recipe).profiles["gateway"]
    assert gateway.threads == 4 and gateway.spin_threads
    assert not load_profiles()["local-cpu"].spin_threads  # off unless a profile asks
    recipe.write_text(BASE + "targets: [gateway]\n")
    with pytest.raises(ConfigError, match="unknown target 'gateway'"):
        load_recipe(recipe)
    monkeypatch.setenv("RECIPE_TARGETS_PATH", str(profiles))
    assert "gateway" in load_recipe(recipe).profiles


def test_every_shipped_recipe_is_valid_and_carries_schema_line():
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        load_recipe(path)
        first = path.read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), path


def test_committed_schema_is_current():
    committed = json.loads((ROOT / "recipes" / "recipe.schema.json").read_text())
    assert committed == recipe_schema(), "run: recipe schema --out recipes/recipe.schema.json"


def test_cli_validate_exit_codes(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(BASE)
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE + "train: {epochs: -2}\n")
    cmd = [sys.executable, "-m", "engine.cli", "validate"]
    ok = subprocess.run([*cmd, str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and "ok" in ok.stdout
    out = subprocess.run([*cmd, str(good), str(bad)], capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.strip() == f"{bad}:4:17: error: train.epochs: should be greater than or equal to 0 (got -2)"
    assert "Traceback" not in out.stderr


def test_init_writes_a_valid_recipe(tmp_path):
    out = tmp_path / "meters.yaml"
    res = subprocess.run(
        [sys.executable, "-m", "engine.cli", "init", "meters", "--out", str(out)],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr
    loaded = load_recipe(out)
    assert loaded.recipe.name == "meters"
    models = loaded.recipe.models  # the starter fine-tunes the pretrained models, as the flagship does
    assert (models.detector.arch, models.recognizer.arch, models.recognizer.height) == ("ppocrv6", "ppocrv6", 32)
    assert loaded.recipe.optimize.quantize.qat.models == ["recognizer"]


# ------------------------------------------------------------------------------ fuzz

VALID = (ROOT / "recipes" / "nameplates.yaml").read_text()
_values = st.one_of(
    st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.booleans(), st.none(),
    st.text(max_size=12), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.integers(0, len(VALID)),
    insert=st.text(alphabet=" :-{}[],'\"\t\n#&*!|>%@`abc0", max_size=8),
)
def test_fuzz_text_mutations_never_traceback(tmp_path, cut, insert):
    path = tmp_path / "f.yaml"
    path.write_text(VALID[:cut] + insert + VALID[cut + len(insert) // 2 :])
    try:
        load_recipe(path)
    except ConfigError as exc:
        assert exc.diagnostics and all(str(d).startswith(str(path)) for d in exc.diagnostics)


_paths = st.sampled_from([
    "name", "dataset", "dataset.synthetic", "dataset.synthetic.count", "dataset.charset",
    "models.detector", "models.detector.backbone", "models.recognizer.height", "train",
    "train.epochs", "train.detector", "train.recognizer.lr", "optimize.prune.amount",
    "optimize.calibration", "targets", "targets.0", "deploy", "deploy.rpi4", "verify.min_hmean",
    "workdir", "profiles", "x.y",
])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=_paths, value=_values)
def test_fuzz_structural_mutations_never_traceback(tmp_path, path, value):
    recipe = tmp_path / "f.yaml"
    recipe.write_text(VALID)
    try:
        load_recipe(recipe, [f"{path}={json.dumps(value)}"])
    except ConfigError as exc:
        assert exc.diagnostics
