"""Loading a recipe: read the YAML, apply ``--set`` overrides, validate, cross-check targets.

`load_recipe` turns every problem into a positioned diagnostic (``PATH:LINE:COL: error:
field.path: message``) and reports them all at once; no other exception type escapes it for a
bad file. Relative paths in a recipe (dataset dirs, workdir, profile dirs) are resolved against
the current working directory, like the paths on a command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from ..config import (
    MAX_DIAGNOSTICS,
    MAX_YAML_DEPTH,
    ConfigError,
    Diagnostic,
    Positions,
    dotted,
    load_yaml,
    more_diagnostics,
    read_yaml_file,
    suggest,
    to_plain,
    validate_document,
)
from ..targets import TargetProfile, load_profiles
from .schema import Recipe


@dataclass
class LoadedRecipe:
    """A validated recipe with where it came from and the profiles of its targets."""

    recipe: Recipe
    path: Path
    profiles: dict[str, TargetProfile] = field(default_factory=dict)  # the recipe's targets
    overrides: list[str] = field(default_factory=list)


def _set_name(text: str) -> str:
    """How diagnostics name a ``--set``: as typed, with the middle of a very long one elided."""
    return f"--set {text}" if len(text) <= 160 else f"--set {text[:100]}…{text[-40:]}"


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """``train.epochs=5`` -> (['train', 'epochs'], 5); the value is parsed as YAML (typed)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError([Diagnostic(_set_name(text), 0, 0, "(set)", "expected KEY.PATH=VALUE")])
    parts: list[str | int] = []
    pieces = key.strip().split(".")
    if len(pieces) > MAX_YAML_DEPTH:
        msg = f"a key path of {len(pieces):,} parts is deeper than {MAX_YAML_DEPTH} levels"
        raise ConfigError([Diagnostic(_set_name(text), 0, 0, "(set)", msg)])
    for piece in pieces:
        if not piece:
            raise ConfigError([Diagnostic(_set_name(text), 0, 0, key, "empty key in path")])
        # an index is a few ASCII digits; '²' is a digit to str.isdigit but not to int()
        index = piece.isascii() and piece.isdigit() and len(piece) <= 9
        parts.append(int(piece) if index else piece)
    value = load_yaml(raw, _set_name(text)) if raw.strip() else ""
    return parts, value


def apply_overrides(doc: Any, overrides: Sequence[str]) -> dict[str, str]:
    """Set ``--set`` values into the parsed document in place; returns {dotted path: text}."""
    located: dict[str, str] = {}
    for text in overrides:
        parts, value = parse_override(text)
        node = doc
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, CommentedSeq | list) and isinstance(part, int):
                if part >= len(node):
                    msg = f"index {part} is past the end of the list ({len(node)} items)"
                    raise ConfigError([Diagnostic(_set_name(text), 0, 0, str(parts[0]), msg)])
                if last:
                    node[part] = value
                else:
                    node = node[part]
            elif isinstance(node, dict) and (last or part not in node or isinstance(node[part], dict | list)):
                if last:
                    node[part] = value
                else:
                    if part not in node:
                        node[part] = CommentedMap()
                    node = node[part]
            else:
                where = dotted(tuple(parts[: i + 1] if isinstance(node, dict) else parts[:i]))
                raise ConfigError(
                    [Diagnostic(_set_name(text), 0, 0, where, "is not a mapping; cannot set a key in it")]
                )
        located[dotted(tuple(parts))] = text if len(text) <= 160 else f"{text[:100]}…{text[-40:]}"
    return located


def load_recipe(
    path: str | Path,
    overrides: Sequence[str] = (),
    *,
    check_targets: bool = True,
) -> LoadedRecipe:
    """Read, validate and cross-check a recipe; raise ConfigError with every problem found."""
    path = Path(path)
    doc = read_yaml_file(path)
    if doc is None:
        raise ConfigError([Diagnostic(str(path), 1, 1, "(root)", "the recipe is empty")])
    located = apply_overrides(doc, overrides) if isinstance(doc, dict) else {}
    positions = Positions(doc, str(path), located)
    problems: list[Diagnostic] = []
    recipe: Recipe | None = None
    try:
        recipe = validate_document(Recipe, doc, positions)
    except ConfigError as exc:
        problems.extend(exc.diagnostics)
    profiles: dict[str, TargetProfile] = {}
    if check_targets and isinstance(doc, dict):
        plain_doc = to_plain(doc)
        extra_dirs = plain_doc.get("profiles") if isinstance(plain_doc.get("profiles"), list) else []
        try:
            profiles = load_profiles([str(d) for d in extra_dirs])
        except ConfigError as exc:
            problems.extend(exc.diagnostics)
        problems.extend(_check_targets(plain_doc, profiles, positions))
    if problems:
        problems.sort(key=lambda d: (d.field == "(more)", d.file, d.line, d.col))
        if len(problems) > MAX_DIAGNOSTICS + 1:
            rest = problems[MAX_DIAGNOSTICS:]
            omitted = sum(d.omitted if d.field == "(more)" else 1 for d in rest)
            problems = [*problems[:MAX_DIAGNOSTICS], more_diagnostics(str(path), omitted)]
        raise ConfigError(problems)
    assert recipe is not None
    loaded = LoadedRecipe(recipe=recipe, path=path, overrides=list(overrides))
    loaded.profiles = {n: profiles[n] for n in recipe.targets if n in profiles}
    return loaded


def _check_targets(doc: dict[str, Any], profiles: dict[str, Any], positions: Positions) -> list[Diagnostic]:
    """Target names must name known profiles, once each; deploy keys must name a target."""
    problems: list[Diagnostic] = []
    targets = doc.get("targets", ["local-cpu"])
    names = [t for t in targets if isinstance(t, str)] if isinstance(targets, list) else []
    seen: set[str] = set()
    for i, name in enumerate(targets if isinstance(targets, list) else []):
        hint = len(problems) < MAX_DIAGNOSTICS  # past that they are counted, not printed
        if not isinstance(name, str):
            continue
        if name in seen:
            problems.append(positions.diagnostic(("targets", i), f"duplicate target {name!r}"))
        elif profiles and name not in profiles:
            known = ", ".join(sorted(profiles))
            msg = f"unknown target {name!r}{suggest(name, profiles) if hint else ''}; known: {known}"
            problems.append(positions.diagnostic(("targets", i), msg))
        seen.add(name)
    deploy = doc.get("deploy")
    for name in deploy if isinstance(deploy, dict) else {}:
        if name not in names:
            close = suggest(str(name), names) if len(problems) < MAX_DIAGNOSTICS else ""
            msg = f"deploy section for {name!r}, which is not in `targets`{close}"
            problems.append(positions.diagnostic(("deploy", name), msg, key=True))
    return problems
