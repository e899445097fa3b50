"""Stage implementations, looked up by kind.

The graph (engine/graph.py) decides *when* a stage runs; the functions named here decide *what*
it does. Each maps a stage kind to ``"module:function"`` so nothing heavy (torch, onnxruntime) is
imported until a stage actually executes: a no-op rerun stays fast. A kind whose implementation
has not landed maps to None and fails loudly; it never fakes outputs.

A stage function takes a `StageContext` and returns a `StageResult` (or a dict with the same
keys). Runtime failures the user can act on are raised as `StageFailed` and reported as one
line; anything else is a bug and its traceback goes to the stage log.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .recipe import LoadedRecipe
    from .targets import TargetProfile


IMPLEMENTATIONS: dict[str, str | None] = {
    "data": "engine.data.stage:run",
    "train": "engine.training.stage:run_train",
    "evaluate": "engine.training.stage:run_evaluate",
    "prune": "engine.compress.stage:run_prune",
    "qat": "engine.compress.qat:run_qat",
    "export": "engine.compress.stage:run_export",
    "build": "engine.compress.stage:run_build",
    "verify": "engine.deploy.stage:run_verify",
    "ship": "engine.deploy.stage:run_ship",
    "check": "engine.deploy.stage:run_check",
}

_registered: dict[str, Callable[[StageContext], Any]] = {}


class StageFailed(Exception):
    """A stage could not do its job for a reason the user can fix (bad data, bar not met...)."""


class StageNotImplemented(StageFailed):
    pass


@dataclass
class StageResult:
    """What a stage hands to the engine: files it produced, metrics and named artifacts."""

    outputs: list[Path] = field(default_factory=list)  # hashed into result.json
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)  # merged into summary.json
    notes: list[str] = field(default_factory=list)


@dataclass
class StageContext:
    """Everything a stage may read. Upstream results come from their result.json files."""

    loaded: LoadedRecipe
    name: str  # "build:rpi4"
    kind: str  # "build"
    param: str | None  # "rpi4" / "detector" / None
    run_dir: Path
    out_dir: Path
    upstream: dict[str, dict[str, Any]]  # stage name -> its result.json content
    log: logging.Logger
    key: str = ""  # hash of the recipe sections this stage reads

    @property
    def recipe(self) -> Any:
        return self.loaded.recipe

    @property
    def profile(self) -> TargetProfile | None:
        return self.loaded.profiles.get(self.param) if self.param else None

    def upstream_artifact(self, stage: str, key: str) -> Any:
        try:
            return self.upstream[stage]["artifacts"][key]
        except KeyError:
            raise StageFailed(f"{self.name}: upstream {stage} did not produce {key!r}") from None


def register(kind: str, fn: Callable[[StageContext], Any]) -> None:
    """Use ``fn`` for ``kind`` in this process (tests, plugins)."""
    if kind not in IMPLEMENTATIONS:
        raise KeyError(f"unknown stage kind {kind!r}; known: {', '.join(IMPLEMENTATIONS)}")
    _registered[kind] = fn


def unregister(kind: str | None = None) -> None:
    if kind is None:
        _registered.clear()
    else:
        _registered.pop(kind, None)


def resolve(kind: str) -> Callable[[StageContext], Any]:
    if kind in _registered:
        return _registered[kind]
    spec = IMPLEMENTATIONS.get(kind)
    if spec is None:
        raise StageNotImplemented(f"stage {kind} is not implemented yet")
    module_name, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module_name), attr)
