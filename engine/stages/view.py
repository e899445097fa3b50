"""What a stage may read of the recipe, and the value its rerun key is computed from.

A stage kind declares the recipe fields it reads (`engine.stages.table`). The same declarations
do two jobs, so they cannot drift apart:

- `read_value` gives the JSON value of each declared field; the graph hashes those into the
  stage's doit ``uptodate`` key, so changing a declared field re-runs the stage;
- `RecipeView` is the recipe the stage function receives: read-only, and refusing every field
  its declarations do not cover. A read that is not declared would be a field whose change
  leaves a stale artifact; the view names the stage and the field instead (`UndeclaredRead`).
  It refuses in tests and development (``OCR_RECIPE_STRICT=1``, or ``python -X dev``); in
  production runs it lets the read through and warns in the stage log, so a gap the tests
  missed costs a warning, not a failed run.

A declaration is a dotted path into the recipe. A section (``optimize.calibration``) covers
every field below it; ``train@detector`` is the derived value ``recipe.train.for_model(
"detector")`` (shared knobs, the model's overrides and the run-wide settings), which a stage
reads through ``view.train.for_model("detector")`` without declaring the whole ``train``
section. Mapping keys (``deploy.rpi4``) are path segments like field names.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

STRICT_ENV = "OCR_RECIPE_STRICT"

Path_ = tuple[str, ...]


class UndeclaredRead(Exception):
    """A stage read a recipe field its stage-table entry does not declare (a bug in the stage
    or the table, never in the user's recipe)."""

    def __init__(self, stage: str, field: str):
        self.stage, self.field = stage, field
        super().__init__(
            f"stage {stage} read recipe field {field!r}, which its entry in the stage table "
            "(engine/stages/table.py) does not declare: declare it there, so that changing it "
            "re-runs the stage"
        )


def strict_reads() -> bool:
    """Refuse undeclared reads (tests, development) instead of warning about them."""
    return os.environ.get(STRICT_ENV, "") not in ("", "0") or sys.flags.dev_mode


def parse_read(declaration: str) -> tuple[Path_, str | None]:
    """``"train@detector"`` -> (("train",), "detector"); ``"deploy.rpi4"`` -> (("deploy", "rpi4"), None)."""
    path, _, model = declaration.partition("@")
    return tuple(path.split(".")), (model or None)


def read_value(recipe: BaseModel, declaration: str) -> Any:
    """The JSON value of one declared read (None where the recipe has no such mapping key)."""
    path, model = parse_read(declaration)
    node: Any = recipe
    for part in path:
        node = node.get(part) if isinstance(node, Mapping) else getattr(node, part)
    if model is not None:
        node = node.for_model(model)
    return to_jsonable_python(node)


class _Access:
    """Which paths a set of declarations covers wholly, and which it only leads into."""

    def __init__(self, declarations: Iterable[str], stage: str, on_undeclared: Callable[[str], None] | None):
        parsed = [parse_read(d) for d in declarations]
        self.whole = {p for p, model in parsed if model is None}
        self.per_model = {(p, model) for p, model in parsed if model is not None}
        self.stage = stage
        self.on_undeclared = on_undeclared

    def covers(self, path: Path_) -> bool:
        return any(path[: len(d)] == d for d in self.whole)

    def leads_into(self, path: Path_) -> bool:
        n = len(path)
        return any(d[:n] == path and len(d) > n for d in self.whole) or any(
            p[:n] == path for p, _ in self.per_model)

    def refuse(self, path: Path_, suffix: str = "") -> None:
        """Raise (strict) or report (production) a read of ``path`` nothing declares."""
        field = ".".join(path) + suffix
        if self.on_undeclared is None:
            raise UndeclaredRead(self.stage, field)
        self.on_undeclared(field)


def _wrap(value: Any, path: Path_, access: _Access, whole: bool) -> Any:
    """Sections stay views (read-only, checked below a restricted node); lists become tuples."""
    if isinstance(value, BaseModel):
        return RecipeView(value, path, access, whole)
    if isinstance(value, Mapping):
        return _MappingView(value, path, access, whole)
    if isinstance(value, list):
        return tuple(_wrap(v, path, access, True) for v in value)
    return value


class RecipeView:
    """A read-only recipe (or section) that serves only what the stage declared."""

    __slots__ = ("_access", "_node", "_path", "_whole")

    def __init__(self, node: BaseModel, path: Path_, access: _Access, whole: bool):
        object.__setattr__(self, "_node", node)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_access", access)
        object.__setattr__(self, "_whole", whole)

    @classmethod
    def of(cls, recipe: BaseModel, declarations: Iterable[str], stage: str,
           on_undeclared: Callable[[str], None] | None = None) -> RecipeView:
        """The view stage ``stage`` gets; ``on_undeclared`` None = refuse undeclared reads."""
        return cls(recipe, (), _Access(declarations, stage, on_undeclared), False)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        node, path, access = self._node, self._path, self._access
        value = getattr(node, name)
        if self._whole:
            return _wrap(value, (*path, name), access, True) if not callable(value) else value
        if name == "for_model" and callable(value):
            return self._for_model
        if name == "section" and not path:
            return self._section
        here = (*path, name)
        if callable(value) or name not in type(node).model_fields:
            access.refuse(here, "()" if callable(value) else "")
            return value
        if access.covers(here):
            return _wrap(value, here, access, True)
        if access.leads_into(here) and isinstance(value, BaseModel | Mapping):
            return _wrap(value, here, access, False)
        access.refuse(here)
        return _wrap(value, here, access, True)

    def _for_model(self, model: str) -> Mapping[str, Any]:
        if (self._path, model) not in self._access.per_model and not self._access.covers(self._path):
            self._access.refuse(self._path, f"@{model}")
        return dict(self._node.for_model(model))

    def _section(self, dotted_path: str) -> Any:
        """``recipe.section("optimize.calibration")``: the declared section as JSON data."""
        path = tuple(dotted_path.split("."))
        if not self._access.covers(path):
            self._access.refuse(path)
        return self._node.section(dotted_path)

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError(f"the recipe is read-only inside a stage (tried to set {name!r})")

    def __repr__(self) -> str:
        return f"<recipe view {'.'.join(self._path) or '(root)'} for {self._access.stage}>"


class _MappingView(Mapping[str, Any]):
    """A mapping section (``deploy``): each key is a path segment, checked like a field."""

    def __init__(self, node: Mapping[str, Any], path: Path_, access: _Access, whole: bool):
        self._node, self._path, self._access, self._whole = node, path, access, whole

    def __getitem__(self, key: str) -> Any:
        here = (*self._path, key)
        whole = self._whole or self._access.covers(here)
        if not whole and not self._access.leads_into(here):
            self._access.refuse(here)
            whole = True
        return _wrap(self._node[key], here, self._access, whole)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __iter__(self) -> Iterator[str]:
        if not self._whole:
            self._access.refuse(self._path, ".*")
        return iter(self._node)

    def __len__(self) -> int:
        if not self._whole:
            self._access.refuse(self._path, ".*")
        return len(self._node)
