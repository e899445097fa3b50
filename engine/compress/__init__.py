"""Compression library: structured pruning, ONNX export, int8 / fp16 conversion, TensorRT plans.

Functional entry points (the graph's prune / export / build stages call these):

- :mod:`engine.compress.prune`     — ``prune_model``, ``save_pruned``, ``load_pruned`` (torch)
- :mod:`engine.compress.export`    — ``export_onnx`` with onnxruntime parity checks (torch)
- :mod:`engine.compress.quantize`  — ``quantize_static_qdq``, calibration readers over real
  images, ``find_sensitive_nodes`` (onnxruntime only, no torch)
- :mod:`engine.compress.fp16`      — ``convert_fp16`` (onnxconverter-common)
- :mod:`engine.compress.tensorrt`  — ``tensorrt_build_plan``, ``write_build_script``,
  ``maybe_build_locally``
- :mod:`engine.compress.latency`   — ``measure_latency``, ``compare_latency`` (onnxruntime CPU)
- :mod:`engine.compress.accuracy`  — ``end_to_end_accuracy``, ``read_crops`` of bare ONNX sessions
- :mod:`engine.compress.distill`   — ``Distilled``: a frozen teacher term for the prune fine-tune (torch)

This file stays import-light on purpose (standard library only): importing the package must not
pull torch into processes that only quantize or time ONNX models.  The atomic-write helpers live
here because every submodule needs them and they must not drag a heavy import with them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..fsutil import atomic_write_bytes, fsync_dir

__all__ = ["atomic_write_bytes", "fsync_dir", "temp_path_beside"]


def temp_path_beside(path: Path | str, suffix: str = ".tmp") -> Path:
    """A fresh, unused file name in ``path``'s directory (same filesystem, so os.replace is
    atomic).  The caller writes it and then calls :func:`atomic_replace` or deletes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def atomic_replace(tmp: Path | str, path: Path | str) -> None:
    """fsync ``tmp`` and move it over ``path``: readers see the old file or the new, never half."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


