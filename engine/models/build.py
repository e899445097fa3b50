"""Recipe names -> configured torch modules (the registry's table made executable).

The table itself is data in ``engine.models.registry`` (torch-free, so the recipe schema is built
from it): per (kind, arch) the module class, the variants (backbone / sequence model) with their
constructor defaults, and the input conventions. A recipe names an architecture and a few
options; the registry holds everything else. Unknown names raise ``UnknownArchitectureError``
listing the known names with a "did you mean" suggestion, and unknown options raise
``ModelConfigError`` listing the accepted ones, so a typo in a recipe fails at validation time
rather than after an hour of training.

Detector costs at 640x640 (eval graph, conv/linear MACs):
dbnet/mobilenetv3 ≈ 1.9 GMAC (3.8 GFLOP, 0.97 M params), dbnet/resnet18 ≈ 24.8 GMAC
(49.7 GFLOP, 12.3 M params); `python -m engine.models.flops` prints every variant.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from torch import nn

from .crnn import CRNN, ctc_loss, encode_texts
from .dbnet import DBLoss, DBNet, make_db_targets
from .registry import (
    DEFAULT_CONFIGS,
    ModelConfigError,
    UnknownArchitectureError,
    architecture,
    default_config,
    input_spec,
    resolve_variant,
)

__all__ = [
    "CRNN",
    "DEFAULT_CONFIGS",
    "DBLoss",
    "DBNet",
    "ModelConfigError",
    "UnknownArchitectureError",
    "build_detector",
    "build_recognizer",
    "ctc_loss",
    "default_config",
    "encode_texts",
    "input_spec",
    "make_db_targets",
]


def _module_class(kind: str, arch: str) -> type[nn.Module]:
    module, _, name = str(architecture(kind, arch)["module"]).partition(":")
    cls: type[nn.Module] = getattr(importlib.import_module(module), name)
    return cls


def _merge(where: str, defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    cfg = dict(defaults)
    for key, value in overrides.items():
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ModelConfigError(
                f"unknown option {key!r} for {where}; accepted: {', '.join(sorted(defaults))}{hint}"
            )
        if value is not None:  # None means "use the default" (recipes may leave a field unset)
            cfg[key] = value
    return cfg


def build_detector(arch: str = "dbnet", backbone: str | None = None, **overrides: Any) -> nn.Module:
    """Build a text detector (options: the variant's entry in the registry, e.g. dbnet's
    inner_channels, width_mult, k).  Train mode returns {"prob","thresh","binary"}, eval mode the
    probability map N×1×H×W."""
    backbone = resolve_variant("detector", arch, backbone)
    cfg = _merge(f"{arch}/{backbone}", default_config("detector", arch, backbone), overrides)
    cls = _module_class("detector", arch)
    return cls(backbone=backbone, **cfg) if cls is DBNet else cls(**cfg)


def build_recognizer(
    arch: str = "crnn",
    sequence: str | None = None,
    num_classes: int = 0,
    height: int = 32,
    **overrides: Any,
) -> nn.Module:
    """Build a text-line recognizer.  ``num_classes`` = len(charset) + 1 (blank at 0); ``height``
    one the architecture accepts.  Options: the variant's entry in the registry (crnn: channels,
    hidden, layers, dropout / kernel).  forward returns logits N×T×C with T = W / the
    architecture's ``downsample`` (softmax not applied)."""
    sequence = resolve_variant("recognizer", arch, sequence)
    cfg = _merge(f"{arch}/{sequence}", default_config("recognizer", arch, sequence), overrides)
    if num_classes < 2:
        raise ModelConfigError(f"num_classes must be len(charset) + 1 (>= 2), got {num_classes}")
    heights = input_spec("recognizer", arch)["heights"]
    if height not in heights:
        raise ModelConfigError(f"{arch} recognizer height must be one of {heights}, got {height}")
    cls = _module_class("recognizer", arch)
    if cls is CRNN:
        return cls(num_classes=num_classes, height=height, sequence=sequence, **cfg)
    return cls(num_classes=num_classes, height=height, **cfg)
