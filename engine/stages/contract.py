"""What a stage function gets and what it must hand back.

A stage function takes a `StageContext` and returns a `StageResult` (or a dict with the same
keys). The context holds only what the stage declared in the stage table: a read-only view of
the recipe fields it reads, its target profile when it runs per target, the derived facts it
declared, and the result.json of every stage upstream of it. Runtime failures the user can act
on (bad data, a bar not met, a host down) are values: raise `StageFailed` and the run reports one
line. Anything else is a bug, and its traceback goes to the stage log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .view import UndeclaredRead

if TYPE_CHECKING:
    from ..rundir import RunDir
    from ..targets import TargetProfile
    from .view import RecipeView


class StageFailed(Exception):
    """A stage could not do its job for a reason the user can fix (bad data, bar not met...)."""


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

    name: str  # "build:rpi4"
    kind: str  # "build"
    param: str | None  # "rpi4" / "detector" / None
    recipe: RecipeView  # the declared fields only, read-only
    run: RunDir
    out_dir: Path
    upstream: dict[str, dict[str, Any]]  # stage name -> its result.json content
    log: logging.Logger
    key: str = ""  # hash of the recipe fields, profile and facts this stage reads
    profile: TargetProfile | None = None  # per-target stages that declare it
    facts: dict[str, Any] = field(default_factory=dict)  # the declared derived values

    def upstream_artifact(self, stage: str, key: str) -> Any:
        try:
            return self.upstream[stage]["artifacts"][key]
        except KeyError:
            raise StageFailed(f"{self.name}: upstream {stage} did not produce {key!r}") from None

    def fact(self, name: str) -> Any:
        """A derived value the stage declared (``targets.opsets``, ``qat.reduce_range``)."""
        if name not in self.facts:
            raise UndeclaredRead(self.name, f"fact {name}")
        return self.facts[name]

    def target_profile(self) -> TargetProfile:
        """The profile of a per-target stage (the table declares it for every target kind)."""
        if self.profile is None:
            raise UndeclaredRead(self.name, "the target profile")
        return self.profile
