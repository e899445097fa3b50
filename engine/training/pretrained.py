"""``init: base`` for the PP-OCRv6 architectures: the rapidocr wheel's ONNX, converted once.

The first recipe that asks for them converts the installed wheel's ONNX graphs into torch
checkpoints (engine.models.ppocr.convert), checks the conversion against onnxruntime on a fixed
input, and caches the result like any checkpoint (atomic write, sha256 sidecar, loaded with
``weights_only=True``). The cache key is the ONNX file's sha256 and the converter's version, so
another rapidocr release converts again and a corrupt entry is discarded, never trusted.

Where: ``$OCR_RECIPE_CACHE/pretrained`` (default ``~/.cache/ocr-recipe/pretrained``), outside
any run directory, because every recipe on the machine shares it.

The recognizer keeps PaddleOCR's whole 18,709-character dictionary in its checkpoint; the train
stage cuts the classifier to the recipe's charset (engine.training.stage.remap_charset).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

CONVERTER_VERSION = 1  # bump when the conversion or the modules' parameter layout changes
CACHE_ENV = "OCR_RECIPE_CACHE"
#: the largest |torch - onnxruntime| accepted on the conversion's self-check (probabilities)
PARITY_ATOL = 1e-3

log = logging.getLogger("engine.pretrained")


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "ocr-recipe")
    return Path(root).expanduser() / "pretrained"


def source_file(model: str) -> Path:
    """The wheel's ONNX file behind ``init: base`` (a file dependency of the train stage, so a
    new rapidocr wheel retrains); no torch, no onnx import."""
    import importlib.metadata as md

    from ..models.ppocr.convert import ONNX_FILES, RAPIDOCR_DIST

    try:
        return Path(str(md.distribution(RAPIDOCR_DIST).locate_file(ONNX_FILES[model])))
    except md.PackageNotFoundError:
        return Path(ONNX_FILES[model])  # missing: the train stage reports how to install it


def pretrained_checkpoint(model: str) -> Path:
    """The cached torch checkpoint of the pretrained PP-OCRv6 ``model`` (converting it once)."""
    from ..models.ppocr.convert import find_onnx
    from .checkpoint import CheckpointError, verify_checkpoint

    source = find_onnx(model)
    path = cache_dir() / f"ppocrv6_{model}_{source.sha256[:16]}_c{CONVERTER_VERSION}.pt"
    if path.is_file():
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as exc:
            log.warning("discarding the cached pretrained %s: %s", model, exc)
            path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    _convert(model, source, path)
    return path


def _convert(model: str, source: Any, path: Path) -> None:
    import numpy as np
    import onnxruntime as ort
    import torch

    from ..models import build_detector, build_recognizer
    from ..models.ppocr.convert import PretrainedError, dictionary, load_onnx_weights
    from .checkpoint import save_checkpoint

    rng = np.random.default_rng(0)
    if model == "detector":
        net = build_detector("ppocrv6", "lcnetv4")
        report = load_onnx_weights(net, source, skip=("thresh_head",))
        x = rng.uniform(-1, 1, (1, 3, 160, 224)).astype(np.float32)
        meta: dict[str, Any] = {"kind": "detector", "arch": "ppocrv6", "backbone": "lcnetv4",
                                "model_options": {}, "input_size": 640, "train_size": 640,
                                "postprocess": {}}
    else:
        chars = dictionary(source)
        net = build_recognizer("ppocrv6", "svtr", num_classes=len(chars) + 1, height=48)
        report = load_onnx_weights(net, source)
        x = rng.uniform(-1, 1, (2, 3, 48, 160)).astype(np.float32)
        meta = {"kind": "recognizer", "arch": "ppocrv6", "sequence": "svtr", "model_options": {},
                "charset": "".join(chars), "num_classes": len(chars) + 1, "height": 48,
                "max_width": 960}
    net.eval()
    with torch.no_grad():
        out = net(torch.from_numpy(x))
        if model == "recognizer":
            out = torch.softmax(out, dim=-1)  # the ONNX ends in a softmax
    session = ort.InferenceSession(str(source.path), providers=["CPUExecutionProvider"])
    ref = session.run(None, {session.get_inputs()[0].name: x})[0]
    diff = float(np.abs(ref - out.numpy()).max())
    if diff > PARITY_ATOL:
        raise PretrainedError(f"converted {source.path.name} differs from onnxruntime by {diff:.3g} "
                              f"(> {PARITY_ATOL}): the wheel's graph no longer fits the modules")
    meta["pretrained"] = {**report, "max_abs_diff": diff, "converter": CONVERTER_VERSION}
    save_checkpoint(path, {"model": {k: v.contiguous() for k, v in net.state_dict().items()}, "meta": meta})
    log.info("converted %s -> %s (max |diff| %.2g)", source.path.name, path, diff)
