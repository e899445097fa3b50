"""Hostile recipes, profiles and --set values: each is refused with a located error, quickly.

The four attacks of issue 19 run through the real CLI (`recipe validate`, a fresh interpreter,
wall clock included); the rest go through `load_recipe`. Every refusal is a `ConfigError` whose
diagnostics are ``PATH:LINE:COL: error: ...`` lines. The wall-clock bound is generous for a
loaded 2-core CI machine; README "Hostile input" gives the times measured on a quiet one.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.config import (
    MAX_DIAGNOSTICS,
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    ConfigError,
)
from engine.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
BASE = "name: demo\ndataset:\n  synthetic: {count: 2, val_count: 1}\n"
WALL_BOUND_S = 5.0  # the README's table gives what it takes here (well under 1 s)


def billion_laughs() -> str:
    """Nine levels of nine aliases: 350 bytes that expand to 9**9 = 387 million strings."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return BASE + "\n".join(lines) + "\n"


def _attack(tmp_path: Path, kind: str) -> Path:
    if kind == "dev-zero":
        return Path("/dev/zero")
    path = tmp_path / f"{kind}.yaml"
    if kind == "alias-bomb":
        path.write_text(billion_laughs())
    elif kind == "nested-brackets":
        path.write_text(BASE + "train: " + "[" * 50_000 + "]" * 50_000 + "\n")
    elif kind == "20MB-of-comments":
        line = "# " + "x" * 77 + "\n"
        with path.open("w") as fh:
            fh.write(line * (20 * 1024 * 1024 // len(line)))
            fh.write(BASE)
    return path


# (attack, expected "LINE:COL: error: FIELD: message" prefix after the path)
ATTACKS = [
    ("alias-bomb", "8:8: error: yaml: aliases expand the document past 10,000 nodes"),
    ("nested-brackets", "4:72: error: yaml: 65 opening brackets in a row: nested deeper than 64"),
    ("20MB-of-comments", "1:1: error: file: the file is larger than the limit of 256 KiB (20 MiB)"),
    ("dev-zero", "1:1: error: file: the file is larger than the limit of 256 KiB (a stream"),
]


@pytest.mark.parametrize("kind,expected", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_validate_answers_each_attack_quickly_with_a_located_error(tmp_path, kind, expected):
    path = _attack(tmp_path, kind)
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "engine.cli", "validate", str(path)],
                         capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}:{expected}"), lines
    assert elapsed < WALL_BOUND_S, f"{kind}: {elapsed:.2f} s"


def _refused(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()) -> list[str]:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path, overrides)
    out = [str(d) for d in info.value.diagnostics]
    assert all(line.startswith((f"{tmp_path}/", "--set ")) for line in out), out
    return out


YAML_CASES = [
    ("alias to its own enclosing node", BASE + "train: &t {detector: *t}\n",
     "4:22: error: yaml: alias *t refers to a node that contains it"),
    ("merge-key bomb", BASE + "x0: &x0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8}\n"
     + "".join(f"x{i}: &x{i} {{<<: [{', '.join([f'*x{i - 1}'] * 8)}]}}\n" for i in range(1, 8))
     + "train: {<<: *x7}\n",
     "7:50: error: yaml: aliases expand the document past 10,000 nodes (alias *x2 adds 1,115)"),
    ("aliases nesting past the depth bound",
     BASE + "".join(f"k{i}: &a{i} " + "[" * 40 + (f"*a{i - 1}" if i else "1") + "]" * 40 + "\n"
                    for i in range(3)),
     "5:49: error: yaml: alias *a0 nests the document deeper than 64 levels"),
    ("block mappings nested 65 deep", BASE + "train:\n"
     + "".join("  " * i + f"k{i}:\n" for i in range(1, MAX_YAML_DEPTH + 2)),
     f"{4 + MAX_YAML_DEPTH - 1}:{2 * MAX_YAML_DEPTH - 1}: error: yaml: nested deeper than 64 levels"),
    ("more nodes than the bound", BASE + "targets:\n" + "  - rpi4\n" * MAX_YAML_NODES,
     f"{MAX_YAML_NODES - 8}:5: error: yaml: the document has more than 10,000 nodes"),
    ("an integer of 5,000 digits", BASE + "train: {epochs: " + "9" * 5000 + "}\n",
     "4:17: error: yaml: an integer of 5,000 digits"),
    ("not UTF-8", BASE + "train: {lr: \xff}\n", "4:13: error: file: not valid UTF-8 (byte 0xff)"),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in YAML_CASES], ids=[c[0] for c in YAML_CASES])
def test_hostile_yaml_is_a_located_error(tmp_path, text, expected):
    path = tmp_path / "r.yaml"
    path.write_bytes(text.encode("latin-1") if "\xff" in text else text.encode())
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert time.monotonic() - started < WALL_BOUND_S
    lines = [str(d) for d in info.value.diagnostics]
    assert len(lines) == 1 and lines[0].startswith(f"{path}:{expected}"), lines


def test_a_file_just_over_the_size_bound_is_refused_and_one_at_it_is_read(tmp_path):
    at = BASE + "#" * (MAX_YAML_BYTES - len(BASE) - 1) + "\n"
    assert len(at.encode()) == MAX_YAML_BYTES
    (tmp_path / "at.yaml").write_text(at)
    assert load_recipe(tmp_path / "at.yaml").recipe.name == "demo"
    (tmp_path / "over.yaml").write_text(at + "\n")
    with pytest.raises(ConfigError, match=r"over.yaml:1:1: error: file: the file is larger than "
                                          r"the limit of 256 KiB \(262,145 bytes\)"):
        load_recipe(tmp_path / "over.yaml")


def test_a_fifo_without_a_writer_does_not_block(tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    res = subprocess.run([sys.executable, "-m", "engine.cli", "validate", str(fifo)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip() == f"{fifo}:1:1: error: (root): the recipe is empty"


def test_anchors_aliases_and_merge_keys_within_the_bounds_still_work(tmp_path):
    text = BASE + (
        "targets: [rpi4, rpi5]\n"
        "deploy:\n"
        "  rpi4: {hosts: &fleet [pi@a, pi@b]}\n"
        "  rpi5: {hosts: *fleet}\n"
        "train:\n"
        "  detector: &det {batch_size: 4, lr: 1.0e-3}\n"
        "  recognizer: {<<: *det, batch_size: 16}\n"
    )
    (tmp_path / "r.yaml").write_text(text)
    recipe = load_recipe(tmp_path / "r.yaml").recipe
    assert recipe.deploy["rpi5"].hosts == ["pi@a", "pi@b"]
    assert recipe.train.for_model("recognizer")["lr"] == pytest.approx(1e-3)
    assert recipe.train.for_model("recognizer")["batch_size"] == 16


OVERRIDE_CASES = [
    ("alias bomb as a value",
     ("train.lr={" + ", ".join(billion_laughs()[len(BASE):].strip().splitlines()) + "}",),
     "error: yaml: aliases expand the document past 10,000 nodes"),
    ("nested brackets as a value", ("train.epochs=" + "[" * 50_000,),
     "error: yaml: 65 opening brackets in a row"),
    ("a value over the size bound", ("name=" + "x" * (MAX_YAML_BYTES + 1),),
     "error: file: the text is larger than the limit of 256 KiB"),
    ("a key path deeper than the bound", (".".join(["train"] * 100) + "=1",),
     "error: (set): a key path of 100 parts is deeper than 64 levels"),
    ("a unicode digit as a list index", ("targets.²=rpi4",),
     "error: targets: should be a valid list"),
    ("a 5,000-digit list index", ("targets." + "9" * 5000 + "=rpi4",),
     "error: targets: should be a valid list"),
]


@pytest.mark.parametrize("sets,expected", [c[1:] for c in OVERRIDE_CASES],
                         ids=[c[0] for c in OVERRIDE_CASES])
def test_hostile_set_values_are_refused_like_the_file(tmp_path, sets, expected):
    started = time.monotonic()
    lines = _refused(tmp_path, BASE, sets)
    assert time.monotonic() - started < WALL_BOUND_S
    assert len(lines) == 1 and lines[0].startswith("--set ") and expected in lines[0], lines
    assert len(lines[0]) < 400  # a 256 KiB value is not echoed back whole


def test_a_hostile_profile_names_its_own_file(tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "bomb.yaml").write_text(billion_laughs().replace(BASE, "arch: x86_64\n"))
    (profiles / "huge.yaml").write_bytes(b"# x\n" * (MAX_YAML_BYTES // 4 + 1))
    lines = _refused(tmp_path, BASE + f"profiles: [{profiles}]\n")
    assert lines == [
        f"{profiles / 'bomb.yaml'}:6:8: error: yaml: aliases expand the document past 10,000 "
        "nodes (alias *d adds 7,381)",
        f"{profiles / 'huge.yaml'}:1:1: error: file: the file is larger than the limit of "
        "256 KiB (262,148 bytes); nothing was parsed",
    ]


def test_thousands_of_errors_are_counted_not_printed(tmp_path):
    text = BASE + "train:\n" + "".join(f"  epoch{i}: 1\n" for i in range(500))
    lines = _refused(tmp_path, text)
    assert len(lines) == MAX_DIAGNOSTICS + 1
    assert lines[0].startswith(f"{tmp_path / 'r.yaml'}:5:3: error: train.epoch0: unknown key")
    assert lines[-1] == f"{tmp_path / 'r.yaml'}: error: (more): 400 more errors not shown"


# ------------------------------------------------------------------ the run directory


def _tree(directory: Path) -> dict[str, tuple[str, int]]:
    """relpath -> (sha256, mtime_ns) of every file below ``directory``."""
    return {str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                            p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_refused_recipe_writes_nothing_and_the_run_keeps_its_state(tmp_path):
    recipe = tmp_path / "demo.yaml"
    recipe.write_text(BASE + f"workdir: {tmp_path / 'runs'}\n")
    cli = [sys.executable, "-m", "engine.cli"]
    first = subprocess.run([*cli, "run", str(recipe), "--only", "data"], capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    run_dir = tmp_path / "runs" / "demo"
    before = _tree(run_dir)
    assert "data/result.json" in before and ".doit.db" in " ".join(before)
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text(billion_laughs().replace("name: demo", "name: demo\nworkdir: runs"))
    for argv in (["run", str(hostile)],
                 ["run", str(recipe), "--set", "train.epochs=" + "[" * 50_000],
                 ["run", str(recipe), "--set", OVERRIDE_CASES[0][1][0]],
                 ["plan", str(hostile)], ["run", "/dev/zero"]):
        res = subprocess.run([*cli, *argv], capture_output=True, text=True, timeout=60,
                             cwd=tmp_path)
        assert res.returncode == 2 and "Traceback" not in res.stderr, (argv[:2], res.stderr)
        assert ": error: " in res.stderr
    assert _tree(run_dir) == before
    again = subprocess.run([*cli, "run", str(recipe), "--only", "data"], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and "0 executed, 1 up to date" in again.stdout, again.stdout
