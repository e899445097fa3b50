"""The int8 pair of a bundle: calibrated, guarded, and shared between the targets of a run.

`quantize_pair` quantizes both exported models (static QDQ, engine/compress/quantize.py),
calibrated on real training images and crops, and guards their accuracy on val: when a model's
int8 loss exceeds ``max_drop``, the most quantization-sensitive nodes are kept in float (a few at
a time, re-measured each step). The recognizer goes first, on its crops; the detector is then
scored end to end with that int8 recognizer reading its boxes, against the fp32 pair - what
verify measures. Each model alone within 0.5 point could still lose 0.9 together (flagship, 40
val images).

Two caches in the run directory save the second int8 target of a run the same work:
activation ranges do not depend on the target (reduce_range and per-channel weights are applied
after calibrating), and a target whose every setting matches another's gets its guarded model
byte for byte (the flagship's local-cpu and rpi4 differ only in threads and transport; the
guard's exclusion search takes ~1.5 min). An entry that does not parse or match its sha256 (a
killed write) is deleted, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..config import stable_hash
from ..fsutil import atomic_write_bytes, sha256_file

GUARD_IMAGES = 40  # val images the int8 accuracy guard measures on


class Int8Error(Exception):
    """Quantizing a model failed (the message names the model)."""


@dataclass
class GuardData:
    """The validation data the guard scores on, and how the device will read it."""

    images: list[np.ndarray]  # up to GUARD_IMAGES val images
    truths: list[list[dict[str, Any]]]  # their ground-truth lines
    crops: list[np.ndarray]  # ground-truth val crops (up to 10 per image)
    crop_texts: list[str]
    charset: str
    max_side: int
    rec_height: int
    rec_max_width: int
    det_inputs: dict[str, Any]
    rec_inputs: dict[str, Any]
    rec_batch: int  # the target's batching (a batch's padding changes what the recognizer reads)
    rec_max_padding: float
    postprocess: dict[str, Any]

    def settings(self) -> dict[str, Any]:
        """What, besides the data, decides the guard's measurements (a cache key part)."""
        return {"charset": self.charset, "max_side": self.max_side, "height": self.rec_height,
                "max_width": self.rec_max_width, "det_inputs": self.det_inputs,
                "rec_inputs": self.rec_inputs, "batch": self.rec_batch, "max_padding": self.rec_max_padding,
                "postprocess": self.postprocess, "images": GUARD_IMAGES}


@dataclass
class Int8Settings:
    calibration: dict[str, dict[str, Any]]  # model -> {"method", "samples", "percentile"}
    per_channel: bool
    reduce_range: bool
    exclude: Sequence[str]
    max_drop: float
    operators: dict[str, str]  # model -> quantize.OPERATOR_SETS entry


def guard_metric(model_name: str, data: GuardData, fp32_recognizer: Path) -> Callable[..., float]:
    """eval_fn(model_path) -> the accuracy the int8 guard protects, through onnxruntime on val.

    detector: ``eval_fn(path, recognizer=None)``, end-to-end line accuracy with ``recognizer``
    (default: the fp32 export) reading its boxes.  Not hmean: a quantized detector that still
    finds every line can draw its boxes a little tighter, and the crops lose characters
    (measured on the flagship: int8 detector -1.2 points hmean, -3 points end to end).
    recognizer: line accuracy on the ground-truth val crops; 0.5 point is 2 lines there.
    """
    from .accuracy import end_to_end_accuracy, read_crops
    from .latency import make_session

    if model_name == "detector":
        readers: dict[str, Any] = {}

        def detector_fn(path: Any, recognizer: Path | None = None) -> float:
            at = str(recognizer or fp32_recognizer)
            if at not in readers:
                readers[at] = make_session(at, 2)
            return end_to_end_accuracy(make_session(path, 2), readers[at], data.images, data.truths, data.charset,
                                       max_side=data.max_side, height=data.rec_height,
                                       max_width=data.rec_max_width, postprocess=data.postprocess,
                                       det_inputs=data.det_inputs, rec_inputs=data.rec_inputs,
                                       batch=data.rec_batch, max_padding=data.rec_max_padding)["e2e_line_accuracy"]

        return detector_fn

    def recognizer_fn(path: Any) -> float:
        texts = read_crops(make_session(path, 2), data.crops, data.charset, data.rec_height, data.rec_max_width,
                           batch=data.rec_batch, max_padding=data.rec_max_padding, inputs=data.rec_inputs)
        return sum(t == gt for t, gt in zip(texts, data.crop_texts, strict=True)) / max(len(data.crops), 1)

    return recognizer_fn


def calibration_readers(how_of: dict[str, dict[str, Any]], train_images: Sequence[Any], train_crops: Sequence[Any], *,
                        max_side: int, det_inputs: dict[str, Any], rec_height: int, rec_max_width: int,
                        rec_inputs: dict[str, Any]) -> dict[str, Any]:
    """model -> its calibration reader under ``how_of[model]`` (Int8Settings.calibration), the
    recognizer first (the detector's guard reads with its int8 model): the recognizer in
    batches of 8 crops, 4 crops for each sample the recipe counts; the detector one image a batch."""
    from .quantize import ImageCalibrationReader

    return {
        "recognizer": ImageCalibrationReader.recognizer(
            train_crops, rec_height, rec_max_width, samples=how_of["recognizer"]["samples"] * 4,
            batch_size=8, inputs=rec_inputs),
        "detector": ImageCalibrationReader.detector(
            train_images, max_side, how_of["detector"]["samples"], inputs=det_inputs),
    }


def calib_options(how: dict[str, Any]) -> dict[str, Any] | None:
    """onnxruntime's extra calibration options for one model's {"method", "percentile", ...}."""
    return {"CalibPercentile": how["percentile"]} if how["method"] == "percentile" else None


def quantize_pair(fp32: dict[str, Path], train_images: list[str], train_crops: list[Path], data: GuardData,
                  settings: Int8Settings, work: Path, cache_root: Path, inputs_id: Any,
                  log: logging.Logger) -> tuple[dict[str, Path], dict[str, Any]]:
    """Calibrated, guarded int8 of both models in ``work/int8/`` -> (paths, guard reports).

    ``cache_root`` holds the run's shared caches; ``inputs_id`` identifies the exports and data
    behind them (the upstream stages' outputs), so an entry is reused only for the same models.
    """
    from .quantize import QuantizationError, find_sensitive_nodes, quantize_static_qdq

    how_of = settings.calibration
    readers = calibration_readers(how_of, train_images, train_crops, max_side=data.max_side,
                                  det_inputs=data.det_inputs, rec_height=data.rec_height,
                                  rec_max_width=data.rec_max_width, rec_inputs=data.rec_inputs)
    paths: dict[str, Path] = {}
    reports: dict[str, Any] = {}
    out_dir = work / "int8"
    out_dir.mkdir(parents=True, exist_ok=True)

    def int8_path(model_name: str, exclude: Any) -> Path:
        return out_dir / (f"{model_name}.onnx" if not exclude else f"{model_name}.x{len(exclude)}.onnx")

    for model_name, reader in readers.items():
        source = fp32[model_name]
        operators = settings.operators[model_name]
        cache = _calibration_cache(cache_root, model_name, source, reader,
                                   {**how_of[model_name], "operators": operators}, inputs_id, log)
        final = int8_path(model_name, ())
        partner = paths.get("recognizer") if model_name == "detector" else None
        shared = _int8_cache(cache_root, model_name, cache, settings, data, inputs_id, partner)
        if (reused := _reuse_int8(shared, final, log)) is not None:
            reports[model_name] = {**reused, "reused": str(Path(cache_root.name) / shared.relative_to(cache_root))}
            paths[model_name] = final
            continue

        def build(exclude: Any, source: Path = source, model_name: str = model_name, reader: Any = reader,
                  cache: Path = cache, operators: str = operators) -> Path:
            out = int8_path(model_name, exclude)
            how = how_of[model_name]
            quantize_static_qdq(source, out, reader, how["method"], settings.per_channel, settings.reduce_range,
                                nodes_to_exclude=[*settings.exclude, *exclude], calib_options=calib_options(how),
                                calibration_cache=cache, operators=operators)
            return out

        metric = guard_metric(model_name, data, fp32["recognizer"])
        baseline = metric(source) if partner else None  # the fp32 pair
        try:
            guard = find_sensitive_nodes(source, build, partial(metric, recognizer=partner) if partner else metric,
                                         settings.max_drop, budget=8, ranking_inputs=reader, fp32_metric=baseline)
        except QuantizationError as exc:
            raise Int8Error(f"int8 {model_name}: {exc}") from None
        chosen = int8_path(model_name, guard.excluded)
        if chosen != final:
            chosen.replace(final)
        for stale in out_dir.glob(f"{model_name}.x*.onnx"):
            stale.unlink()
        reports[model_name] = {**guard.to_dict(), "calibration": how_of[model_name], "operators": operators,
                               **({"read_by": "int8 recognizer"} if partner else {})}
        if not guard.met:
            log.warning("int8 %s: drop still above max_drop after %d exclusions", model_name, len(guard.excluded))
        paths[model_name] = final
        _store_int8(shared, final, reports[model_name])
    return paths, reports


def _int8_cache(cache_root: Path, model_name: str, calibration: Path, settings: Int8Settings, data: GuardData,
                inputs_id: Any, partner: Path | None) -> Path:
    """Where a guarded int8 model is kept for the other targets that would build exactly the
    same one: same calibration entry, weight settings, exclusions and guard (val data, input
    size, the exports it reads with and the int8 ``partner`` model, post-processing)."""
    key = stable_hash({
        "calibration": calibration.name, "reduce_range": settings.reduce_range,
        "operators": settings.operators[model_name],
        "per_channel": settings.per_channel, "exclude": list(settings.exclude), "max_drop": settings.max_drop,
        "guard": data.settings(), "inputs": inputs_id, "partner": sha256_file(partner) if partner else None,
    })
    return cache_root / "int8" / f"{model_name}-{key[:16]}"


def _reuse_int8(shared: Path, final: Path, log: logging.Logger) -> dict[str, Any] | None:
    """The cached guard report with its int8 model copied to ``final``, or None."""
    onnx, meta = shared.with_suffix(".onnx"), shared.with_suffix(".json")
    if not (onnx.exists() and meta.exists()):
        return None
    try:
        entry = json.loads(meta.read_text())
        valid = entry["sha256"] == sha256_file(onnx)
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        valid = False
    if not valid:
        log.warning("discarding unreadable int8 cache entry %s", shared)
        onnx.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        return None
    shutil.copyfile(onnx, final)
    return dict(entry["report"])


def _store_int8(shared: Path, model: Path, report: dict[str, Any]) -> None:
    shared.parent.mkdir(parents=True, exist_ok=True)
    data = model.read_bytes()
    atomic_write_bytes(shared.with_suffix(".onnx"), data)
    entry = {"sha256": hashlib.sha256(data).hexdigest(), "report": report}
    atomic_write_bytes(shared.with_suffix(".json"), json.dumps(entry, indent=1, default=float).encode())


def _calibration_cache(cache_root: Path, model_name: str, fp32: Path, reader: Any, how: dict[str, Any],
                       inputs_id: Any, log: logging.Logger) -> Path:
    """Where the activation ranges of this model, data and method are kept for the whole run."""
    key = stable_hash({"model": sha256_file(fp32), "how": how, "items": [str(i) for i in reader.items],
                       "batch": reader.batch_size, "input": reader.fixed_hw, "data": inputs_id})
    path = cache_root / "calibration" / f"{model_name}-{key[:16]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        try:
            json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            log.warning("discarding unreadable calibration cache %s", path)
            path.unlink()
    return path
