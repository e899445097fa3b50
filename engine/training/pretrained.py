"""What ``init: base`` stands for: shipped weights, or PP-OCRv6 converted from the rapidocr wheel.

This project's own architectures start from the checkpoints bench/train_base.py trained and
engine/weights/ ships; the registry names the file of each variant (`base_weights`).

For the PP-OCRv6 architectures the first recipe that asks for them converts the installed wheel's ONNX graphs into torch
checkpoints (engine.models.ppocr.convert), checks the conversion against onnxruntime on a fixed
input, and caches the result like any checkpoint (atomic write, sha256 sidecar, loaded with
``weights_only=True``). The cache key is the ONNX file's sha256 and the converter's version, so
another rapidocr release converts again and a corrupt entry is discarded, never trusted.

Where: ``$OCR_RECIPE_CACHE/pretrained`` (default ``~/.cache/ocr-recipe/pretrained``), outside
any run directory, because every recipe on the machine shares it.

The recognizer keeps PaddleOCR's whole 18,709-character dictionary in its checkpoint; the train
stage cuts the classifier to the recipe's charset (`remap_charset`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

BASE_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
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

    from ..models.registry import PRETRAINED_DIST, shipped_weights_name

    name = shipped_weights_name(model, "ppocrv6")
    try:
        return Path(str(md.distribution(PRETRAINED_DIST).locate_file(name)))
    except md.PackageNotFoundError:
        return Path(name)  # missing: the train stage reports how to install it


def base_weights(model: str, spec: Any) -> Path:
    """The file ``init: base`` stands for (no torch import: the graph lists it as a file
    dependency, so new base weights retrain a recipe that fine-tunes from them). ``spec`` is the
    recipe's model section: arch, its variant field and, for recognizers, the height."""
    from ..models.registry import architecture, shipped_weights_name

    entry = architecture(model, spec.arch)
    if entry["base"] == "ppocrv6":
        return source_file(model)
    variant = getattr(spec, entry["variant_field"])
    return BASE_WEIGHTS_DIR / shipped_weights_name(model, spec.arch, variant, getattr(spec, "height", None))


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


def remap_charset(init: str, charset: str, out_path: Path) -> tuple[str, dict[str, Any]]:
    """Fine-tune a recognizer on a different charset without losing what it knows.

    The classifier's rows follow the charset order (row 0 = CTC blank, row i+1 = charset[i]).
    Rows of characters both charsets share are copied to their new positions; new characters get
    the fresh layer's initialisation. For PP-OCRv6 this cuts the 18,710-class head to the
    recipe's charset: the model can then never emit a character outside it, and the head's cost
    (~2.2 M MACs per step) shrinks with it. Returns the checkpoint to initialise from and
    {"kept": n, "new": n, "new_chars": "..."}.
    """
    from ..models import build_recognizer
    from .checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(init)
    meta = dict(ckpt.get("meta") or {})
    old = meta.get("charset")
    if old is None or old == charset:
        return init, {"kept": len(charset), "new": 0}
    state = dict(ckpt["model"])
    fresh = build_recognizer(
        meta["arch"], meta["sequence"], num_classes=len(charset) + 1, height=int(meta["height"]),
        **meta.get("model_options", {}),
    ).state_dict()
    where = {ch: j for j, ch in enumerate(old)}
    for key in ("classifier.weight", "classifier.bias"):
        rows = fresh[key].clone()
        rows[0] = state[key][0]  # blank
        for i, ch in enumerate(charset):
            if ch in where:
                rows[i + 1] = state[key][where[ch] + 1]
        state[key] = rows
    new = "".join(ch for ch in charset if ch not in where)
    meta.update(charset=charset, num_classes=len(charset) + 1)
    save_checkpoint(out_path, {"model": {k: v.contiguous() for k, v in state.items()}, "meta": meta})
    return str(out_path), {"kept": len(charset) - len(new), "new": len(new), "new_chars": new}


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
