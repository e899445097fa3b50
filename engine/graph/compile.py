"""Recipe + stage table -> the stages this recipe needs, each with its rerun key.

Every row of the stage table (`engine.stages.table`) becomes one stage per model, per target or
once; its key holds the JSON value of every recipe field it declares, its target profile when
it declares one, and the facts it declares, one entry each, so a plan can say which of them
changed. Nothing here reads a recipe field a stage did not declare.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..config import stable_hash
from ..recipe import LoadedRecipe
from ..stages.table import BY_KIND, FACTS, KINDS, StageKind, placeholder_values
from ..stages.view import read_value


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str
    param: str | None
    needs: tuple[str, ...]
    reads: tuple[str, ...]  # the declared recipe reads, placeholders expanded
    key: dict[str, Any]  # read / "profile:T" / fact -> JSON-able value; hashed for `uptodate`
    inputs: tuple[str, ...] = ()  # extra file dependencies (dataset files, init checkpoints)

    @property
    def facts(self) -> tuple[str, ...]:
        return BY_KIND[self.kind].facts

    @property
    def reads_profile(self) -> bool:
        return BY_KIND[self.kind].profile

    def key_hashes(self) -> dict[str, str]:
        return {section: stable_hash(value)[:16] for section, value in sorted(self.key.items())}

    def key_hash(self) -> str:
        return stable_hash(self.key_hashes())


def _stage(loaded: LoadedRecipe, kind: StageKind, param: str | None, present: list[Stage]) -> Stage:
    recipe = loaded.recipe
    name = f"{kind.kind}:{param}" if param else kind.kind
    reads = kind.declared_reads(recipe, param)
    key: dict[str, Any] = {read: read_value(recipe, read) for read in reads}
    if kind.profile:
        assert param is not None
        key[f"profile:{param}"] = loaded.profiles[param].model_dump(mode="json")
    for fact in kind.facts:
        key[fact] = FACTS[fact].compute(loaded)
    needs: list[str] = []
    for need in kind.needs:
        up_kind, _, template = need.partition(":")
        values = placeholder_values(template, recipe, param)
        wanted = None if values is None else {f"{up_kind}:{v}" for v in values}
        needs += [up.name for up in present if up.kind == up_kind and (wanted is None or up.name in wanted)]
    inputs = kind.inputs(recipe, param) if kind.inputs else ()
    return Stage(name, kind.kind, param, tuple(needs), reads, key, inputs)


def compile_stages(loaded: LoadedRecipe) -> tuple[list[Stage], dict[str, str]]:
    """The stages a recipe needs, in execution order, and notices for stages left out."""
    recipe = loaded.recipe
    out: list[Stage] = []
    notices: dict[str, str] = {}

    def add(kind: StageKind, param: str | None) -> None:
        name = f"{kind.kind}:{param}" if param else kind.kind
        why = kind.when(loaded, param) if kind.when else None
        if why is not None:
            notices[name] = why
        else:
            out.append(_stage(loaded, kind, param, out))

    for kind in KINDS:
        if kind.per != "target":
            for param in kind.params(recipe):
                add(kind, param)
    for target in recipe.targets:
        for kind in KINDS:
            if kind.per == "target":
                add(kind, target)
    return out, notices


def downstream(stages: Sequence[Stage], roots: Sequence[str]) -> list[str]:
    """``roots`` and every stage that (transitively) needs one of them, in order."""
    selected = set(roots)
    for stage in stages:  # stages are in topological order
        if any(n in selected for n in stage.needs):
            selected.add(stage.name)
    return [s.name for s in stages if s.name in selected]


def upstream(stages: Sequence[Stage], roots: Sequence[str]) -> list[str]:
    by_name = {s.name: s for s in stages}
    selected: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in selected:
            selected.add(name)
            todo.extend(by_name[name].needs)
    return [s.name for s in stages if s.name in selected]
