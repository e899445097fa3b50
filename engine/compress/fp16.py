"""fp32 ONNX -> fp16 ONNX (for TensorRT on Jetson and GPU providers), parity-checked on the CPU.

Why keep_io_types=True: the device runtime feeds float32 arrays from
engine.runtime.preprocess and reads float32 maps back, for every artifact; with float32 I/O the
fp16 model is a drop-in replacement (Cast nodes at the edges do the conversion).

Why check on the CPU provider: it is the only provider everywhere (tests, the build host).
onnxruntime's CPU provider runs fp16 graphs — not faster than fp32 (measured), but correct —
so a bounded max abs difference against the fp32 model on real inputs proves the conversion
kept the graph's meaning (no overflowed constants, no broken Resize scales).  Note the TensorRT
build on a Jetson does not need this file (trtexec --fp16 takes the fp32 ONNX and picks fp16
kernels itself); it is the fallback artifact for runtimes that want an fp16 model.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxconverter_common import float16

from . import atomic_replace, temp_path_beside

__all__ = ["FP16Error", "convert_fp16"]


class FP16Error(RuntimeError):
    """The fp16 model is invalid or differs from fp32 beyond the tolerance."""


#: ops kept in fp32 on top of onnxconverter-common's defaults (which already include Resize):
#: onnxruntime 1.32's CPU provider segfaults while creating a session for a graph with an fp16
#: Transpose (the CRNN's N×C×T <-> N×T×C), measured here; Transpose moves data, it gains
#: nothing from fp16.
EXTRA_FP32_OPS = ("Transpose",)


def _run_all(path: Path | str, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return [sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0] for x in inputs]


def _run_isolated(path: Path, inputs: Sequence[np.ndarray], label: Path) -> list[np.ndarray]:
    """Run the fp16 model in a child process: an onnxruntime crash on an unusual fp16 graph
    (see EXTRA_FP32_OPS) must become an FP16Error, not kill the build."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        try:
            return pool.submit(_run_all, str(path), [np.asarray(x) for x in inputs]).result()
        except BrokenProcessPool as exc:
            raise FP16Error(
                f"{label}: onnxruntime crashed running the fp16 model on the CPU provider; "
                "add the offending op type to op_block_list"
            ) from exc


def convert_fp16(
    fp32_path: Path | str,
    out_path: Path | str,
    sample_inputs: Sequence[np.ndarray],
    atol: float = 1e-2,
    rtol: float = 0.0,
    keep_io_types: bool = True,
    op_block_list: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Convert with onnxconverter-common and check parity; atomic write; returns a report.

    ``sample_inputs``: real preprocessed inputs (float32).  ``atol``: the bound on max abs
    difference of the first output vs fp32 (1e-2 suits probability maps), plus ``rtol`` times the
    largest |fp32 output| of the sample: logits need a bound proportional to their range.  ``op_block_list`` ops stay in fp32 (defaults from
    onnxconverter-common: ops with no fp16 kernels).  Raises FP16Error when parity fails.
    """
    if not sample_inputs:
        raise FP16Error("convert_fp16 needs at least one real preprocessed sample input")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    t0 = time.perf_counter()
    model = onnx.load(str(fp32_path))
    # Drop intermediate value_info (onnxslim and shape inference write it): the converter wraps
    # blocked ops (Resize among them) in Casts but leaves stale float32 value_info on their
    # outputs, and onnxruntime then rejects the model with a type mismatch.
    del model.graph.value_info[:]
    if op_block_list is None:
        op_block_list = [*float16.DEFAULT_OP_BLOCK_LIST, *EXTRA_FP32_OPS]
    kwargs: dict[str, Any] = {"keep_io_types": keep_io_types, "op_block_list": list(op_block_list)}
    with warnings.catch_warnings():
        # "the float32 number 1e-09 will be truncated to 1e-07", once per tiny weight: expected
        # for fp16 and checked below by the parity test, so not worth a warning per value.
        warnings.simplefilter("ignore", UserWarning)
        half = float16.convert_float_to_float16(model, **kwargs)
    tmp = temp_path_beside(out_path, ".onnx")
    try:
        onnx.save(half, str(tmp))
        onnx.checker.check_model(str(tmp))
        ref = _run_all(fp32_path, sample_inputs)
        got = _run_isolated(tmp, sample_inputs, out_path)
        diffs, bounds = [], []
        for r, g in zip(ref, got, strict=True):
            if r.shape != g.shape:
                raise FP16Error(f"{out_path}: fp16 output shape {g.shape} != fp32 {r.shape}")
            diffs.append(float(np.max(np.abs(g.astype(np.float32) - r))) if r.size else 0.0)
            bounds.append(atol + rtol * (float(np.max(np.abs(r))) if r.size else 0.0))
        if any(d > b for d, b in zip(diffs, bounds, strict=True)):
            raise FP16Error(
                f"{out_path}: fp16 differs from fp32 beyond atol {atol} + rtol {rtol} x max|fp32| "
                f"on the CPU provider (per sample: "
                f"{[f'{d:.3g} > {b:.3g}' if d > b else f'{d:.3g}' for d, b in zip(diffs, bounds, strict=True)]})"
            )
        atomic_replace(tmp, out_path)
    finally:
        if tmp.exists():
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return {
        "path": str(out_path),
        "source": str(fp32_path),
        "keep_io_types": keep_io_types,
        "max_abs_diff": diffs,
        "atol": atol,
        "rtol": rtol,
        "bounds": bounds,
        "bytes": out_path.stat().st_size,
        "seconds": round(time.perf_counter() - t0, 3),
    }
