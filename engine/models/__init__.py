"""Model registry: recipe names -> configured torch modules.

A recipe names an architecture and a few options; ``DEFAULT_CONFIGS`` holds everything else, per
(arch, backbone) for detectors and per (arch, sequence) for recognizers, so a recipe that says
``backbone: mobilenetv3`` gets the inner width that suits MobileNet rather than ResNet's.
Unknown names raise ``UnknownArchitectureError`` listing the known names with a "did you mean"
suggestion, and unknown options raise ``ModelConfigError`` listing the accepted ones, so a typo in
a recipe fails at validation time rather than after an hour of training.

Detector costs at 640x640 (eval graph, conv/linear MACs):
dbnet/mobilenetv3 ≈ 1.9 GMAC (3.8 GFLOP, 0.97 M params), dbnet/resnet18 ≈ 24.8 GMAC
(49.7 GFLOP, 12.3 M params); `python -m engine.models.flops` prints every variant.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any

from torch import nn

from .crnn import CRNN, ctc_loss, encode_texts
from .dbnet import DBLoss, DBNet, make_db_targets

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
    "make_db_targets",
]


class ModelConfigError(ValueError):
    """A model option the registry does not know or cannot use."""


class UnknownArchitectureError(ModelConfigError):
    """An architecture, backbone or sequence-model name that is not registered."""


#: kind -> arch -> variant (backbone / sequence) -> default constructor options.
DEFAULT_CONFIGS: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "detector": {
        "dbnet": {
            # accuracy option: ~25 GMAC at 640x640, ~0.7 s/image on 2 x86 cores
            "resnet18": {"inner_channels": 256, "width_mult": 1.0, "k": 50.0},
            # edge default: MobileNetV3-large x0.5 (as PP-OCR's mobile detector), ~1.9 GMAC
            "mobilenetv3": {
                "inner_channels": 96,
                "width_mult": 0.5,
                "variant": "large",
                "k": 50.0,
            },
        }
    },
    "recognizer": {
        "crnn": {
            "bilstm": {"channels": (32, 64, 128, 256), "hidden": 128, "layers": 2, "dropout": 0.0},
            "conv": {"channels": (32, 64, 128, 256), "hidden": 256, "layers": 4, "kernel": 5},
        }
    },
}

_DETECTOR_CLASSES: dict[str, type[nn.Module]] = {"dbnet": DBNet}
_RECOGNIZER_CLASSES: dict[str, type[nn.Module]] = {"crnn": CRNN}


def _unknown(what: str, name: str, known: list[str]) -> UnknownArchitectureError:
    msg = f"unknown {what} {name!r}; known: {', '.join(sorted(known))}"
    close = difflib.get_close_matches(str(name), known, n=1)
    if close:
        msg += f" (did you mean {close[0]!r}?)"
    return UnknownArchitectureError(msg)


def default_config(kind: str, arch: str, variant: str) -> dict[str, Any]:
    """A copy of the defaults for (kind, arch, variant); raises UnknownArchitectureError."""
    if kind not in DEFAULT_CONFIGS:
        raise _unknown("model kind", kind, list(DEFAULT_CONFIGS))
    archs = DEFAULT_CONFIGS[kind]
    if arch not in archs:
        raise _unknown(f"{kind} architecture", arch, list(archs))
    variants = archs[arch]
    label = "backbone" if kind == "detector" else "sequence model"
    if variant not in variants:
        raise _unknown(f"{arch} {label}", variant, list(variants))
    return copy.deepcopy(variants[variant])


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


def build_detector(
    arch: str = "dbnet", backbone: str = "mobilenetv3", **overrides: Any
) -> nn.Module:
    """Build a text detector. dbnet options: inner_channels, width_mult, k (+ variant for
    mobilenetv3: "large"/"small").  Train mode returns {"prob","thresh","binary"}, eval mode the
    probability map N×1×H×W."""
    cfg = _merge(f"{arch}/{backbone}", default_config("detector", arch, backbone), overrides)
    return _DETECTOR_CLASSES[arch](backbone=backbone, **cfg)


def build_recognizer(
    arch: str = "crnn",
    sequence: str = "bilstm",
    num_classes: int = 0,
    height: int = 32,
    **overrides: Any,
) -> nn.Module:
    """Build a text-line recognizer.  ``num_classes`` = len(charset) + 1 (blank at 0); height a
    multiple of 16.  crnn options: channels, hidden, layers, dropout (bilstm) / kernel (conv).
    forward returns logits N×T×C with T = W/4 (softmax not applied)."""
    cfg = _merge(f"{arch}/{sequence}", default_config("recognizer", arch, sequence), overrides)
    if num_classes < 2:
        raise ModelConfigError(f"num_classes must be len(charset) + 1 (>= 2), got {num_classes}")
    if height % 16 or height <= 0:
        raise ModelConfigError(f"recognizer height must be a multiple of 16 (32, 48), got {height}")
    return _RECOGNIZER_CLASSES[arch](
        num_classes=num_classes, height=height, sequence=sequence, **cfg
    )
