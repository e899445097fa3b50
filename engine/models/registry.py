"""The model registry as data: architectures, their variants, defaults and input conventions.

This module imports nothing heavy (no torch, no numpy), so the recipe schema can be built from it
at ``recipe validate`` time: the architecture and backbone names a recipe accepts, the files
that ``init: base`` resolves to, and the pre-processing the device runtime applies all come from
this one table. Adding an architecture means adding an entry here and its torch module.

Each entry says, per (kind, arch):
- ``module``: "package.module:Class", imported only when a model is built;
- ``variant_field``: the recipe field that picks a variant (``backbone`` for detectors,
  ``sequence`` for recognizers), ``variants`` (variant -> constructor options) and
  ``default_variant``;
- ``inputs``: channel order and per-channel mean / std of the [0, 1]-scaled image, exactly what
  the network was trained with (ImageNet statistics on RGB for this project's DBNet; PaddleOCR
  feeds BGR scaled to [-1, 1]); recognizers add ``downsample`` (input columns per CTC step),
  the heights they accept and their default ``max_width``;
- ``base``: where ``init: base`` comes from: ``project`` = weights this project trained and
  ships (engine/weights/, bench/train_base.py), ``ppocrv6`` = PP-OCRv6 converted from the
  installed rapidocr wheel (engine/models/ppocr/convert.py); ``weights`` names the file: in
  engine/weights/ for a variant and height, or inside the `PRETRAINED_DIST` distribution.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any

PRETRAINED_DIST = "rapidocr"  # the wheel the ppocrv6 base weights come from

IMAGENET = {"channels": "rgb", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
SIGNED_RGB = {"channels": "rgb", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
PADDLE_BGR = {"channels": "bgr", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}

ARCHITECTURES: dict[str, dict[str, dict[str, Any]]] = {
    "detector": {
        "dbnet": {
            "module": "engine.models.dbnet:DBNet",
            "variant_field": "backbone",
            "default_variant": "mobilenetv3",
            "variants": {
                # edge default: MobileNetV3-large x0.5 (as PP-OCR's mobile detector), ~1.9 GMAC
                "mobilenetv3": {"inner_channels": 96, "width_mult": 0.5, "variant": "large", "k": 50.0},
                # accuracy option: ~25 GMAC at 640x640, ~0.7 s/image on 2 x86 cores
                "resnet18": {"inner_channels": 256, "width_mult": 1.0, "k": 50.0},
            },
            "inputs": IMAGENET,
            "base": "project",
            "weights": "detector_dbnet_{variant}.pt",
        },
        "ppocrv6": {
            # PP-OCRv6 small detector (PaddleOCR): PPLCNetV4 + RepLK-FPN + DB head, 2.45 M params
            "module": "engine.models.ppocr.detector:PPOCRv6Detector",
            "variant_field": "backbone",
            "default_variant": "lcnetv4",
            "variants": {"lcnetv4": {"layout": "det_small", "neck_channels": 96, "kernel": 7, "k": 50.0}},
            "inputs": PADDLE_BGR,
            "base": "ppocrv6",
            "weights": "rapidocr/models/PP-OCRv6_det_small.onnx",
        },
    },
    "recognizer": {
        "crnn": {
            "module": "engine.models.crnn:CRNN",
            "variant_field": "sequence",
            "default_variant": "bilstm",
            "variants": {
                "bilstm": {"channels": (32, 64, 128, 256), "hidden": 128, "layers": 2, "dropout": 0.0},
                "conv": {"channels": (32, 64, 128, 256), "hidden": 256, "layers": 4, "kernel": 5},
            },
            "inputs": {**SIGNED_RGB, "downsample": 4, "heights": [32, 48], "default_height": 32,
                       "default_max_width": 320},
            "base": "project",
            "weights": "recognizer_crnn_{variant}_h{height}.pt",
        },
        "ppocrv6": {
            # PP-OCRv6 small recognizer (PaddleOCR): PPLCNetV4 + light SVTR neck + CTC, 48 px lines
            "module": "engine.models.ppocr.recognizer:PPOCRv6Recognizer",
            "variant_field": "sequence",
            "default_variant": "svtr",
            "variants": {"svtr": {"layout": "rec_small", "dims": 120, "depth": 2, "heads": 8,
                                  "mlp_ratio": 2.0, "local_kernel": 7}},
            # long plate lines are ~15x their height; RapidOCR never squashes a line (it pads the
            # batch to its widest), so the default leaves room for them
            "inputs": {**PADDLE_BGR, "downsample": 8, "heights": [32, 48], "default_height": 48,
                       "default_max_width": 960},
            "base": "ppocrv6",
            "weights": "rapidocr/models/PP-OCRv6_rec_small.onnx",
        },
    },
}


class ModelConfigError(ValueError):
    """A model option the registry does not know or cannot use."""


class UnknownArchitectureError(ModelConfigError):
    """An architecture, backbone or sequence-model name that is not registered."""


def _unknown(what: str, name: str, known: list[str]) -> UnknownArchitectureError:
    msg = f"unknown {what} {name!r}; known: {', '.join(sorted(known))}"
    close = difflib.get_close_matches(str(name), known, n=1)
    if close:
        msg += f" (did you mean {close[0]!r}?)"
    return UnknownArchitectureError(msg)


def architecture(kind: str, arch: str) -> dict[str, Any]:
    """The registry entry of (kind, arch); raises UnknownArchitectureError naming the known ones."""
    if kind not in ARCHITECTURES:
        raise _unknown("model kind", kind, list(ARCHITECTURES))
    if arch not in ARCHITECTURES[kind]:
        raise _unknown(f"{kind} architecture", arch, list(ARCHITECTURES[kind]))
    return ARCHITECTURES[kind][arch]


def arch_names(kind: str) -> tuple[str, ...]:
    return tuple(ARCHITECTURES[kind])


def variant_names(kind: str) -> tuple[str, ...]:
    """Every variant name of a kind, over all its architectures (the recipe schema's choices)."""
    names: list[str] = []
    for entry in ARCHITECTURES[kind].values():
        names += [v for v in entry["variants"] if v not in names]
    return tuple(names)


def resolve_variant(kind: str, arch: str, variant: str | None) -> str:
    """``variant`` checked against ``arch`` (None = the architecture's default)."""
    entry = architecture(kind, arch)
    if variant is None:
        return str(entry["default_variant"])
    if variant not in entry["variants"]:
        label = "backbone" if kind == "detector" else "sequence model"
        raise _unknown(f"{arch} {label}", variant, list(entry["variants"]))
    return variant


def default_config(kind: str, arch: str, variant: str) -> dict[str, Any]:
    """A copy of the constructor defaults for (kind, arch, variant)."""
    return copy.deepcopy(architecture(kind, arch)["variants"][resolve_variant(kind, arch, variant)])


def shipped_weights_name(kind: str, arch: str, variant: str | None = None, height: int | None = None) -> str:
    """The file ``init: base`` means: in engine/weights/ for a ``project`` architecture, inside
    the `PRETRAINED_DIST` wheel for ``ppocrv6``."""
    entry = architecture(kind, arch)
    return str(entry["weights"]).format(variant=resolve_variant(kind, arch, variant), height=height)


def input_spec(kind: str, arch: str) -> dict[str, Any]:
    """The pre-processing a model of this architecture expects (a copy; see the module doc)."""
    return copy.deepcopy(architecture(kind, arch)["inputs"])


#: kind -> arch -> variant -> constructor options (the shape engine.models has always exposed)
DEFAULT_CONFIGS: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    kind: {arch: entry["variants"] for arch, entry in archs.items()}
    for kind, archs in ARCHITECTURES.items()
}
