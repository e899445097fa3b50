"""torch -> ONNX export with dynamic shapes, checked against torch on real inputs.

Exporter choice: ``torch.onnx.export(..., dynamo=False)`` — the TorchScript-based exporter.
torch 2.13 defaults to the torch.export/dynamo exporter, but that one needs the ``onnxscript``
package (not a dependency here, so it fails at import time) and symbolic shapes for every
dynamic dimension; the DBNet neck's fixed-factor upsampling and the CRNN's LSTM export cleanly
and with dynamic H/W/batch through the TorchScript exporter, verified below on every sample.
The deprecation warning it emits is silenced here; when it is removed from torch this is the
one place to change.

Dynamic axes: detector input ``input`` N×3×H×W -> ``prob`` N×1×H×W (batch, height, width);
recognizer ``input`` N×3×H×W -> ``logits`` N×T×C (batch, width / steps).

Verification: ``onnx.checker.check_model``, then onnxruntime (CPU provider) against torch on
every sample input — REAL preprocessed images/crops from the caller, at the sizes the device
will see — recording the max abs difference and raising :class:`ExportError` above ``atol``.
onnxslim simplification is optional and verified the same way; if it fails or breaks parity
the unsimplified model is kept (the report says why).  The file is written atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from . import atomic_replace, temp_path_beside

__all__ = ["IO_NAMES", "ExportError", "export_onnx", "onnx_parity"]

#: kind -> (input name, output name, input dynamic axes, output dynamic axes)
IO_NAMES: dict[str, tuple[str, str, dict[int, str], dict[int, str]]] = {
    "detector": (
        "input",
        "prob",
        {0: "batch", 2: "height", 3: "width"},
        {0: "batch", 2: "height", 3: "width"},
    ),
    "recognizer": ("input", "logits", {0: "batch", 3: "width"}, {0: "batch", 1: "steps"}),
}


class ExportError(RuntimeError):
    """The exported model is invalid or its outputs differ from torch beyond the tolerance."""


def _session(path: Path | str, threads: int = 1) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _torch_output(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(x)))
    if isinstance(out, dict):  # a detector left in train mode would return a dict
        out = out["prob"]
    return out.detach().cpu().numpy()


def onnx_parity(
    onnx_path: Path | str,
    reference: Sequence[np.ndarray],
    sample_inputs: Sequence[np.ndarray],
) -> list[float]:
    """Max abs difference between onnxruntime's first output and ``reference`` per sample."""
    sess = _session(onnx_path)
    name = sess.get_inputs()[0].name
    diffs = []
    for ref, x in zip(reference, sample_inputs, strict=True):
        got = sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        if got.shape != ref.shape:
            raise ExportError(
                f"{onnx_path}: output shape {got.shape} != torch {ref.shape} for input {x.shape}"
            )
        diffs.append(float(np.max(np.abs(got.astype(np.float32) - ref))) if ref.size else 0.0)
    return diffs


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_onnx(
    model: nn.Module,
    kind: str,
    out_path: Path | str,
    sample_inputs: Sequence[np.ndarray],
    opset: int = 17,
    simplify: bool = True,
    atol: float = 1e-3,
) -> dict[str, Any]:
    """Export ``model`` (eval graph) to ``out_path`` and verify it; returns a report dict.

    ``sample_inputs``: float32 N×3×H×W arrays from engine.runtime.preprocess (detector_input /
    recognizer_input) on real validation images/crops — at least one; use two sizes to prove the
    dynamic axes.  The first one is used for tracing.  Raises ExportError when the checker fails
    or any sample differs from torch by more than ``atol``.
    """
    if kind not in IO_NAMES:
        raise ExportError(f"unknown model kind {kind!r}; known: {', '.join(IO_NAMES)}")
    if not sample_inputs:
        raise ExportError("export_onnx needs at least one real preprocessed sample input")
    samples = [np.ascontiguousarray(x, dtype=np.float32) for x in sample_inputs]
    for x in samples:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ExportError(f"sample inputs must be N×3×H×W float32, got shape {x.shape}")
    in_name, out_name, in_axes, out_axes = IO_NAMES[kind]
    out_path = Path(out_path)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    tmp = temp_path_beside(out_path, ".onnx")
    slim_tmp: Path | None = None
    try:
        reference = [_torch_output(model, x) for x in samples]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # legacy-exporter deprecation + LSTM batch notice
            torch.onnx.export(
                model,
                (torch.from_numpy(samples[0]),),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=[in_name],
                output_names=[out_name],
                dynamic_axes={in_name: in_axes, out_name: out_axes},
                do_constant_folding=True,
            )
        proto = onnx.load(str(tmp))
        try:
            onnx.checker.check_model(proto, full_check=True)
        except Exception as exc:  # checker raises several exception types
            raise ExportError(f"{out_path}: exported model fails onnx.checker: {exc}") from exc
        diffs = onnx_parity(tmp, reference, samples)
        if max(diffs) > atol:
            raise ExportError(
                f"{out_path}: onnxruntime differs from torch by {max(diffs):.3g} > atol {atol} "
                f"(per sample: {[f'{d:.3g}' for d in diffs]})"
            )
        report: dict[str, Any] = {
            "path": str(out_path),
            "kind": kind,
            "exporter": "torchscript (dynamo=False)",
            "opset": opset,
            "input_name": in_name,
            "output_name": out_name,
            "dynamic_axes": {in_name: in_axes, out_name: out_axes},
            "sample_shapes": [list(x.shape) for x in samples],
            "max_abs_diff": diffs,
            "atol": atol,
            "nodes": len(proto.graph.node),
            "simplified": False,
            "simplify_note": "disabled" if not simplify else "",
        }
        final = tmp
        if simplify:
            slim_tmp = temp_path_beside(out_path, ".slim.onnx")
            note, slim_nodes, slim_diffs = _try_simplify(tmp, slim_tmp, reference, samples, atol)
            report["simplify_note"] = note
            if slim_diffs is not None:
                final = slim_tmp
                report.update(simplified=True, nodes=slim_nodes, max_abs_diff=slim_diffs,
                              max_abs_diff_unsimplified=diffs)
        atomic_replace(final, out_path)
        report["bytes"] = out_path.stat().st_size
        report["sha256"] = _sha256(out_path)
        report["seconds"] = round(time.perf_counter() - t0, 3)
        return report
    finally:
        model.train(was_training)
        for p in (tmp, slim_tmp):
            if p is not None and p.exists():
                with contextlib.suppress(OSError):
                    os.unlink(p)


def _try_simplify(
    src: Path,
    dst: Path,
    reference: Sequence[np.ndarray],
    samples: Sequence[np.ndarray],
    atol: float,
) -> tuple[str, int, list[float] | None]:
    """onnxslim ``src`` into ``dst``; (note, node count, diffs or None when not usable)."""
    try:
        import onnxslim

        slim = onnxslim.slim(str(src))
        if slim is None:
            return "onnxslim returned nothing; kept the unsimplified model", 0, None
        onnx.checker.check_model(slim, full_check=True)
        onnx.save(slim, str(dst))
        diffs = onnx_parity(dst, reference, samples)
    except Exception as exc:  # any simplifier failure just means "keep the original"
        return f"onnxslim failed ({type(exc).__name__}: {exc}); kept the unsimplified model", 0, None
    if max(diffs) > atol:
        return (f"onnxslim broke parity ({max(diffs):.3g} > {atol}); kept the unsimplified model",
                0, None)
    return "onnxslim", len(slim.graph.node), diffs
