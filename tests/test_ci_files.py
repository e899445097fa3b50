"""The recipe CI workflow and the pre-commit hook point at real commands and real recipes.

Both files are run by machines this repository never sees (GitHub's runners, other
repositories' pre-commit), so a typo in them is found late; these checks find it here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from engine.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "recipes.yml"
HOOKS = ROOT / ".pre-commit-hooks.yaml"


def _yaml(path: Path):
    return YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))


def _console_scripts() -> dict[str, str]:
    """[project.scripts] of pyproject.toml (no tomllib: the project supports Python 3.10)."""
    text = (ROOT / "pyproject.toml").read_text()
    block = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^(\S+)\s*=\s*"([^"]+)"', block, re.M))


def _subcommands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices)


def _recipes() -> list[Path]:
    return sorted((ROOT / "recipes").glob("*.yaml"))


def test_hooks_run_a_real_cli_command_on_recipe_files():
    hooks = {h["id"]: h for h in _yaml(HOOKS)}
    assert "validate-recipes" in hooks
    for hook in hooks.values():
        assert set(hook) >= {"id", "name", "entry", "language", "files"}
        program, command, *rest = shlex.split(hook["entry"])
        assert program in _console_scripts()  # installed by `pip install` of this project
        assert _console_scripts()[program] == "engine.cli:main"
        assert command in _subcommands() and rest == []
        files = re.compile(hook["files"])
        rel = [p.relative_to(ROOT).as_posix() for p in _recipes()]
        assert rel and all(files.search(r) for r in rel)
        for other in ("recipes/recipe.schema.json", "targets/rpi4.yaml", "tests/test_graph.py"):
            assert not files.search(other), other
    assert hooks["validate-recipes"]["language"] == "python"  # installs the project itself


def test_hook_entry_accepts_the_repository_recipes_and_rejects_a_bad_one(tmp_path, capsys):
    """What pre-commit runs: the entry with the matching files appended."""
    hook = next(h for h in _yaml(HOOKS) if h["id"] == "validate-recipes")
    argv = shlex.split(hook["entry"])[1:]
    assert main([*argv, *map(str, _recipes())]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndataset: {synthetic: {count: 0}}\ntargets: [rpi44]\n")
    assert main([*argv, str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.yaml:2:" in err and "unknown target 'rpi44'" in err


def test_workflow_installs_cpu_torch_and_checks_every_existing_recipe():
    wf = _yaml(WORKFLOW)
    assert set(wf) >= {"name", "on", "jobs"}
    for event in ("push", "pull_request"):
        for pattern in wf["on"][event]["paths"]:
            top = pattern.split("/")[0]
            assert (ROOT / top).exists() or top.startswith("."), pattern
    steps = [s for job in wf["jobs"].values() for s in job["steps"]]
    script = "\n".join(s.get("run", "") for s in steps)
    assert re.search(r"pip install \"?torch==2\.13\.0\"? --index-url https://download\.pytorch\.org/whl/cpu", script)
    assert script.index("torch==2.13.0") < script.index("pip install -e .")
    commands = [line.strip() for line in script.splitlines()
                if line.strip().startswith("recipe ")]
    assert any(c.startswith("recipe validate recipes/*.yaml") for c in commands)
    assert any(c.startswith('recipe plan "$recipe"') for c in commands)
    assert "for recipe in recipes/*.yaml" in script
    for cmd in commands:  # every command the workflow runs exists in the CLI
        assert shlex.split(cmd)[1] in _subcommands(), cmd
    for ref in set(re.findall(r"recipes/[\w.*-]+", script)):  # referenced recipes/globs exist
        assert list(ROOT.glob(ref)), ref


@pytest.mark.parametrize("recipe", _recipes(), ids=lambda p: p.name)
def test_every_recipe_plans(recipe, tmp_path, capsys):
    """The workflow's plan step, for each recipe (in a fresh work directory)."""
    assert main(["plan", str(recipe), "--json", "--set", f"workdir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert '"stage": "data"' in out and '"status": "run"' in out
