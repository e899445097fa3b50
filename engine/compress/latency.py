"""onnxruntime CPU latency: median and p90 over N timed runs after warm-up, fixed threads.

Why these choices: the first runs of a session allocate arenas and (for int8) pack weights, so
they are excluded (``warmup``); the median is robust to the odd scheduler hiccup on a shared
2-core machine and p90 shows the tail a device user feels; ``intra_op_num_threads`` is fixed
(and inter-op to 1, sequential execution) so numbers are comparable across models and runs —
a Pi 4 has 4 cores, a bench box 2, and onnxruntime's default thread count changes the answer.
Only numpy + onnxruntime are imported, so the same helper can time a bundle on a device.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

__all__ = ["compare_latency", "make_session", "measure_latency"]


def make_session(onnx_path: Path | str, threads: int, spinning: bool = True) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads, sequential, full graph optimisation.
    ``spinning=False``: its worker threads sleep instead of busy-waiting between runs (see
    :func:`compare_latency`)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


def measure_latency(
    onnx_path: Path | str,
    inputs: Sequence[np.ndarray],
    threads: int,
    runs: int = 20,
    warmup: int = 3,
) -> dict[str, Any]:
    """Time ``runs`` inferences (cycling through ``inputs``) after ``warmup`` untimed ones.

    ``inputs``: float32 arrays for the model's first input (real preprocessed images).
    Returns {"median_ms", "p90_ms", "mean_ms", "min_ms", "runs", "warmup", "threads",
    "times_ms"}.
    """
    if not inputs:
        raise ValueError("measure_latency needs at least one input array")
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs} warmup={warmup}")
    sess = make_session(onnx_path, threads)
    name = sess.get_inputs()[0].name
    feeds = [{name: np.ascontiguousarray(x, dtype=np.float32)} for x in inputs]
    for i in range(warmup):
        sess.run(None, feeds[i % len(feeds)])
    times = []
    for i in range(runs):
        feed = feeds[i % len(feeds)]
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000.0)
    return _stats(times, warmup, threads)


def compare_latency(
    onnx_paths: dict[str, Path | str],
    inputs: Sequence[np.ndarray],
    threads: int,
    runs: int = 20,
    rounds: int = 5,
    warmup: int = 3,
) -> dict[str, dict[str, Any]]:
    """:func:`measure_latency` of several models, interleaved: ``rounds`` rounds, each timing
    every model in turn for ``runs / rounds`` runs, pooled per model.

    On a shared machine the load drifts over a minute; timing one model after the other would
    charge the drift to whichever ran during a busy spell, and a ratio of two such numbers
    can say a pruned model is slower than its parent.  Interleaving spreads the drift evenly.
    The sessions do not spin: onnxruntime's worker threads busy-wait after each run by default,
    so on a 2-core machine an idle session's spinning worker took a core from the session being
    timed, whichever ran second paid for it, and the pruned/unpruned ratio of the same two
    models read 0.66-0.99 (spinning, after a fine-tune in the same process) against 0.66-0.71
    without spinning.  Absolute times run ~10 % above a lone spinning session's.
    """
    if not onnx_paths or not inputs:
        raise ValueError("compare_latency needs at least one model and one input array")
    if runs < 1 or rounds < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1, rounds >= 1, warmup >= 0; got {runs}, {rounds}, {warmup}")
    sessions = {k: make_session(p, threads, spinning=False) for k, p in onnx_paths.items()}
    feeds = {k: [{s.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)} for x in inputs]
             for k, s in sessions.items()}
    for k, sess in sessions.items():
        for i in range(warmup):
            sess.run(None, feeds[k][i % len(inputs)])
    times: dict[str, list[float]] = {k: [] for k in sessions}
    per_round = max(1, -(-runs // rounds))
    for r in range(rounds):
        for k, sess in sessions.items():
            for i in range(per_round):
                feed = feeds[k][(r * per_round + i) % len(inputs)]
                t0 = time.perf_counter()
                sess.run(None, feed)
                times[k].append((time.perf_counter() - t0) * 1000.0)
    return {k: _stats(t, warmup, threads) for k, t in times.items()}


def _stats(times: list[float], warmup: int, threads: int) -> dict[str, Any]:
    arr = np.asarray(times)
    return {
        "median_ms": float(np.median(arr)),
        "p90_ms": float(np.percentile(arr, 90)),
        "mean_ms": float(arr.mean()),
        "min_ms": float(arr.min()),
        "runs": len(times),
        "warmup": warmup,
        "threads": threads,
        "times_ms": [round(t, 3) for t in times],
    }
