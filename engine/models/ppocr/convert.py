"""Pretrained PP-OCRv6 weights: the ONNX files of the installed ``rapidocr`` wheel -> state dicts.

The wheel (Apache-2.0, models by PaddleOCR) ships ``rapidocr/models/PP-OCRv6_{det,rec}_small.onnx``.
They are found through the installed distribution's file list (``importlib.metadata``: rapidocr
is never imported, and nothing is downloaded), read with ``onnx`` and mapped onto the modules of
this package: the graph's weight-bearing nodes in execution order (Conv, ConvTranspose,
BatchNormalization, the LayerNorm pattern, MatMul) pair one to one with the modules' Conv2d /
ConvTranspose2d / BatchNorm2d / LayerNorm / Linear layers in registration order, each pair
checked by kind and shape. Biases come from the ``Add`` of a (1, C, 1, 1) constant that follows a
folded conv; Paddle's (in, out) linear weights are transposed.

rapidocr is a build-machine dependency only: conversion happens when a recipe asks for the
pretrained weights (engine.training.pretrained caches the result); bundles carry ONNX exported
from the converted torch modules and never need the wheel.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..registry import PRETRAINED_DIST as RAPIDOCR_DIST
from ..registry import shipped_weights_name

RAPIDOCR_VERSION = "3.10.0"  # the wheel whose graphs the layouts in blocks.py were read from
ONNX_FILES = {kind: shipped_weights_name(kind, "ppocrv6") for kind in ("detector", "recognizer")}


class PretrainedError(RuntimeError):
    """The pretrained weights cannot be found or do not fit the module (the message says why)."""


@dataclass(frozen=True)
class OnnxSource:
    path: Path
    sha256: str
    version: str


def find_onnx(kind: str) -> OnnxSource:
    """The installed wheel's ONNX file for ``kind`` ("detector" / "recognizer")."""
    import importlib.metadata as md

    try:
        dist = md.distribution(RAPIDOCR_DIST)
    except md.PackageNotFoundError:
        raise PretrainedError(
            f"the pretrained PP-OCRv6 {kind} comes from the rapidocr wheel, which is not installed: "
            f"pip install rapidocr=={RAPIDOCR_VERSION}"
        ) from None
    path = Path(str(dist.locate_file(ONNX_FILES[kind])))
    if not path.is_file():
        raise PretrainedError(f"rapidocr {dist.version} has no {ONNX_FILES[kind]} (at {path}); "
                              f"install rapidocr=={RAPIDOCR_VERSION}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return OnnxSource(path, digest, dist.version)


def dictionary(source: OnnxSource) -> list[str]:
    """The recognizer's classes after the blank: the ``character`` metadata, one per line, plus
    the space PaddleOCR appends (class 0 is the CTC blank)."""
    import onnx

    model = onnx.load(str(source.path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if "character" not in meta:
        raise PretrainedError(f"{source.path}: no 'character' metadata (not a PP-OCR recognizer?)")
    return [*meta["character"].splitlines(), " "]


# ---------------------------------------------------------------------------------- the graph


@dataclass
class _Layer:
    kind: str  # conv | convtranspose | bn | layernorm | linear
    node: str
    tensors: dict[str, np.ndarray]


def _onnx_layers(path: Path) -> list[_Layer]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    alias: dict[str, str] = {}
    for n in graph.node:
        if n.op_type in ("Identity", "Cast") and n.input:
            alias[n.output[0]] = n.input[0]

    def root(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(root(i), []).append(n)

    def following_const(output: str, op: str, size: int) -> np.ndarray | None:
        for c in consumers.get(root(output), []):
            if c.op_type != op:
                continue
            for i in c.input:
                t = inits.get(root(i))
                if t is not None and t.size == size and root(i) != root(output):
                    return t.reshape(size)
        return None

    layers: list[_Layer] = []
    for n in graph.node:
        ins = [root(i) for i in n.input]
        if n.op_type in ("Conv", "ConvTranspose"):
            w = inits[ins[1]]
            out_ch = w.shape[0] if n.op_type == "Conv" else w.shape[1] * _group(n)
            bias = inits[ins[2]].reshape(-1) if len(ins) > 2 and ins[2] else None
            if bias is None:
                bias = following_const(n.output[0], "Add", out_ch)
            tensors = {"weight": w} if bias is None else {"weight": w, "bias": bias}
            layers.append(_Layer("conv" if n.op_type == "Conv" else "convtranspose", n.name, tensors))
        elif n.op_type == "BatchNormalization":
            scale, b, mean, var = (inits[i] for i in ins[1:5])
            layers.append(_Layer("bn", n.name, {"weight": scale, "bias": b, "running_mean": mean,
                                               "running_var": var}))
        elif n.op_type == "MatMul" and ins[1] in inits:
            w = inits[ins[1]]
            bias = following_const(n.output[0], "Add", w.shape[1])
            tensors = {"weight": w.T.copy()} if bias is None else {"weight": w.T.copy(), "bias": bias}
            layers.append(_Layer("linear", n.name, tensors))
        elif n.op_type == "Mul":  # LayerNorm, decomposed: (x - mean) / sqrt(var + eps) * g + b
            consts = [inits[i] for i in ins if i in inits]
            if len(consts) == 1 and consts[0].ndim == 1 and consts[0].size > 1:
                gamma = consts[0]
                beta = following_const(n.output[0], "Add", gamma.size)
                layers.append(_Layer("layernorm", n.name, {"weight": gamma} if beta is None
                                     else {"weight": gamma, "bias": beta}))
    return layers


def _group(node: Any) -> int:
    for a in node.attribute:
        if a.name == "group":
            return int(a.i)
    return 1


_KINDS: dict[type[nn.Module], str] = {
    nn.Conv2d: "conv", nn.ConvTranspose2d: "convtranspose", nn.BatchNorm2d: "bn",
    nn.LayerNorm: "layernorm", nn.Linear: "linear",
}


def _module_layers(model: nn.Module, skip: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    out = []
    for name, m in model.named_modules():
        if type(m) in _KINDS and not any(name == s or name.startswith(s + ".") for s in skip):
            out.append((name, m))
    return out


def load_onnx_weights(model: nn.Module, source: OnnxSource, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Copy the ONNX graph's weights into ``model`` in place (modules under ``skip`` keep their
    initialisation: the detector's threshold branch). Returns a small report; raises
    PretrainedError on any mismatch of count, kind or shape."""
    onnx_layers = _onnx_layers(source.path)
    mine = _module_layers(model, skip)
    if len(onnx_layers) != len(mine):
        raise PretrainedError(f"{source.path.name}: {len(onnx_layers)} weight layers in the graph, "
                              f"{len(mine)} in {type(model).__name__}")
    copied = 0
    with torch.no_grad():
        for layer, (name, module) in zip(onnx_layers, mine, strict=True):
            if _KINDS[type(module)] != layer.kind:
                raise PretrainedError(f"{source.path.name}: node {layer.node} is a {layer.kind}, "
                                      f"module {name} a {_KINDS[type(module)]}")
            for key, value in layer.tensors.items():
                target = getattr(module, key, None)
                if target is None:
                    raise PretrainedError(f"{source.path.name}: node {layer.node} has a {key} that "
                                          f"module {name} lacks")
                if tuple(target.shape) != tuple(value.shape):
                    raise PretrainedError(f"{source.path.name}: {name}.{key} is {tuple(target.shape)}, "
                                          f"node {layer.node} gives {tuple(value.shape)}")
                target.copy_(torch.from_numpy(np.array(value, dtype=np.float32)).to(target.dtype))
                copied += 1
            for key in ("bias",):
                if getattr(module, key, None) is not None and key not in layer.tensors:
                    raise PretrainedError(f"{source.path.name}: module {name} has a bias that node "
                                          f"{layer.node} lacks")
    return {"layers": len(mine), "tensors": copied, "onnx": source.path.name,
            "onnx_sha256": source.sha256, "rapidocr": source.version}
