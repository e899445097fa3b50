"""The stage table: every stage kind, what it runs, needs, and reads — data in one place.

In the spirit of doit's task attributes, a `StageKind` says everything the graph needs to know
about a stage without importing it: the function that implements it (``"module:function"``,
imported only when the stage executes, so ``recipe validate``, ``plan`` and a no-op ``run``
never import torch), the stages it needs upstream, whether it runs once per model or per
target, the recipe fields it reads, whether it reads its target profile, and the facts
(values derived from several fields or from every target's profile) it reads.

The graph computes each stage's rerun key from exactly those declarations, and the stage
function receives a recipe view that refuses anything else (`engine.stages.view`): a field
added to a stage's code but not to its row here fails the tests instead of leaving stale
artifacts behind.

Declarations are dotted recipe paths with two placeholders: ``{param}`` (the stage's model or
target) and ``{some.list.field}`` (one declaration per value of that recipe list, which is read
too). ``needs`` entries name a stage kind (every stage of that kind the recipe has),
``kind:{param}`` or ``kind:{some.list.field}``; a kind the recipe leaves out is skipped.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .contract import StageContext
from .view import read_value

if TYPE_CHECKING:
    from ..recipe import LoadedRecipe, Recipe

MODELS = ("detector", "recognizer")
_PLACEHOLDER = re.compile(r"\{([^}]*)\}")


@dataclass(frozen=True)
class Fact:
    """A value a stage reads that several fields or every target's profile decide; keyed by
    its value, so only a change of the value itself re-runs the stage."""

    compute: Callable[[LoadedRecipe], Any]
    reads: tuple[str, ...]  # the recipe fields it is computed from (the profiles besides)


@dataclass(frozen=True)
class StageKind:
    kind: str
    run: str  # "module:function"
    needs: tuple[str, ...] = ()
    per: Literal["model", "target"] | None = None
    reads: tuple[str, ...] = ()
    reads_for: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # param -> extra reads
    profile: bool = False
    facts: tuple[str, ...] = ()
    #: extra file dependencies (dataset files, init checkpoints): their content re-runs the stage
    inputs: Callable[[Recipe, str | None], tuple[str, ...]] | None = None
    #: why the recipe leaves this stage out (None: it runs)
    when: Callable[[LoadedRecipe, str | None], str | None] | None = None

    def params(self, recipe: Recipe) -> Sequence[str | None]:
        if self.per == "model":
            return MODELS
        if self.per == "target":
            return list(recipe.targets)
        return [None]

    def declared_reads(self, recipe: Recipe, param: str | None) -> tuple[str, ...]:
        """Every recipe read of the stage for ``param``, placeholders expanded, in order."""
        out: list[str] = []
        for template in (*self.reads, *self.reads_for.get(param or "", ())):
            for read in expand(template, recipe, param):
                if read not in out:
                    out.append(read)
        sections = [d for d in out if "@" not in d]
        return tuple(r for r in out if not any(r.startswith(d + ".") for d in sections))


def placeholder_values(template: str, recipe: Recipe, param: str | None) -> list[str] | None:
    """The values ``template``'s placeholder stands for (None: it has none)."""
    m = _PLACEHOLDER.search(template)
    if m is None:
        return None
    name = m.group(1)
    return [str(param)] if name == "param" else [str(v) for v in read_value(recipe, name)]


def expand(template: str, recipe: Recipe, param: str | None) -> list[str]:
    """``"train@{optimize.prune.models}"`` -> ["optimize.prune.models", "train@detector"] (the
    list field is read too); ``"deploy.{param}"`` -> ["deploy.rpi4"]."""
    values = placeholder_values(template, recipe, param)
    if values is None:
        return [template]
    m = _PLACEHOLDER.search(template)
    assert m is not None
    listed = [] if m.group(1) == "param" else [m.group(1)]
    return listed + [template[: m.start()] + v + template[m.end():] for v in values]


# ------------------------------------------------------------------------------- facts


def compat_opsets(loaded: LoadedRecipe) -> list[int]:
    """Older ONNX opsets the recipe's TensorRT targets need besides optimize.export.opset (a
    Jetson Nano's TensorRT 8.2 parses opset 13 at most); export writes one more model each."""
    from ..compress.tensorrt import max_onnx_opset  # standard library only

    opset = loaded.recipe.optimize.export.opset
    need = {max_onnx_opset(p.tensorrt.version) for p in loaded.profiles.values()
            if p.runtime == "tensorrt" and p.tensorrt is not None}
    return sorted(v for v in need if v < opset)


def _qat_reduce_range(loaded: LoadedRecipe) -> bool:
    from ..compress.grid import qat_reduce_range  # standard library only

    return qat_reduce_range(loaded)


FACTS: dict[str, Fact] = {
    "targets.opsets": Fact(compat_opsets, ("optimize.export.opset", "targets")),
    "qat.reduce_range": Fact(_qat_reduce_range, ("optimize.quantize.reduce_range", "targets")),
}


# ------------------------------------------------------------------------------- inputs, when


def dataset_files(recipe: Recipe, _param: str | None) -> tuple[str, ...]:
    ds = recipe.dataset
    files: list[str] = []
    for root in (ds.train, ds.val):
        if root is None or not Path(root).exists():
            continue
        root = Path(root)
        if root.is_file():
            files.append(str(root))
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts):
                files.append(str(path))
    return tuple(files)


def init_files(recipe: Recipe, model: str | None) -> tuple[str, ...]:
    """The init checkpoint as a file dependency: new base weights (or a retrained init
    checkpoint) retrain the model, though the recipe text did not change."""
    from ..training.pretrained import base_weights  # no torch import: a path table

    spec = getattr(recipe.models, model or "detector")
    if spec.init is None:
        return ()
    path = base_weights(model or "detector", spec) if spec.init == "base" else Path(spec.init)
    return (str(path),) if path.is_file() else ()


def _prune_on(loaded: LoadedRecipe, _param: str | None) -> str | None:
    return None if loaded.recipe.optimize.prune.amount > 0 else "optimize.prune.amount is 0"


def _qat_on(loaded: LoadedRecipe, _param: str | None) -> str | None:
    return None if loaded.recipe.optimize.quantize.qat.models else "optimize.quantize.qat.models is empty"


def _has_hosts(loaded: LoadedRecipe, target: str | None) -> str | None:
    assert target is not None
    deploy = loaded.recipe.deploy.get(target)
    if loaded.profiles[target].transport == "local" or (deploy and deploy.hosts):
        return None
    return f"no hosts in deploy.{target}.hosts"


# ------------------------------------------------------------------------------- the table

#: where training runs when train.host is set (the result does not depend on it, but the stage
#: reads it, so a changed host or Python starts a fresh attempt)
_REMOTE = ("train.remote_dir", "train.python", "train.trust_on_first_use", "train.known_hosts",
           "train.ssh_config")

KINDS: tuple[StageKind, ...] = (
    StageKind("data", "engine.stages.data:run", reads=("dataset",), inputs=dataset_files),
    StageKind("train", "engine.stages.train:run", needs=("data",), per="model",
              reads=("models.{param}", "train@{param}", *_REMOTE),
              reads_for={"recognizer": ("dataset.charset",)}, inputs=init_files),
    StageKind("evaluate", "engine.stages.evaluate:run", needs=("data", "train"),
              reads=("models.postprocess", "verify.min_word_accuracy", "verify.max_cer", "verify.samples")),
    StageKind("prune", "engine.stages.prune:run", needs=("data", "train:{optimize.prune.models}"),
              reads=("optimize.prune", "models.{optimize.prune.models}", "train@{optimize.prune.models}",
                     "dataset.charset"), when=_prune_on),
    StageKind("qat", "engine.stages.qat:run", needs=("data", "prune", "train"),
              reads=("optimize.quantize.qat", "models.{optimize.quantize.qat.models}",
                     "train@{optimize.quantize.qat.models}", "dataset.charset"),
              facts=("qat.reduce_range",), when=_qat_on),
    StageKind("export", "engine.stages.export:run", needs=("data", "qat", "prune", "train"),
              reads=("optimize.export",), facts=("targets.opsets",)),
    StageKind("build", "engine.stages.build:run", needs=("data", "export"), per="target",
              reads=("name", "models", "optimize.quantize", "optimize.calibration", "optimize.export.opset",
                     "verify.samples"), profile=True),
    StageKind("verify", "engine.stages.verify:run", needs=("data", "evaluate", "build:{param}"),
              per="target", reads=("verify",), profile=True),
    StageKind("ship", "engine.stages.ship:run", needs=("verify:{param}",), per="target",
              reads=("deploy.{param}", "verify"), profile=True, when=_has_hosts),
    StageKind("check", "engine.stages.check:run", needs=("ship:{param}",), per="target",
              reads=("deploy.{param}", "verify"), profile=True, when=_has_hosts),
)
BY_KIND: dict[str, StageKind] = {k.kind: k for k in KINDS}

_registered: dict[str, Callable[[StageContext], Any]] = {}


def register(kind: str, fn: Callable[[StageContext], Any]) -> None:
    """Use ``fn`` for ``kind`` in this process (tests, benchmarks, plugins)."""
    if kind not in BY_KIND:
        raise KeyError(f"unknown stage kind {kind!r}; known: {', '.join(BY_KIND)}")
    _registered[kind] = fn


def unregister(kind: str | None = None) -> None:
    if kind is None:
        _registered.clear()
    else:
        _registered.pop(kind, None)


def resolve(kind: str) -> Callable[[StageContext], Any]:
    if kind in _registered:
        return _registered[kind]
    module_name, _, attr = BY_KIND[kind].run.partition(":")
    return getattr(importlib.import_module(module_name), attr)
