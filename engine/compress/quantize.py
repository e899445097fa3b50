"""Static int8 QDQ quantization with onnxruntime, calibrated on real images, with an accuracy guard.

Why static QDQ, per-channel: the detector and a conv recognizer are convolution nets; static
QDQ lets onnxruntime run int8 Conv kernels (~0.85x fp32 time on the 2-core x86 dev box, more on
ARM), while dynamic quantization (ConvInteger) ran 1.4-1.7x *slower* there — so dynamic
quantization is never used here.  Per-channel weight scales keep pruned/BN-folded convs with
very different filter ranges accurate.  onnxruntime-tools is abandoned and not used.

Order of operations (what onnxruntime recommends):
1. ``quant_pre_process`` — shape inference + graph optimisation (BN folding etc.), so
   the quantizer sees the final graph.  It is deterministic, so node names in the preprocessed
   model are stable across calls: exclusion lists found once stay valid for rebuilds.
2. ``quantize_static`` with ``QuantFormat.QDQ``, uint8 activations / int8 weights (U8S8, the
   x86 and ARM fast path), calibration with MinMax / Entropy / Percentile.

Calibration data: :class:`ImageCalibrationReader` reads REAL images (paths or arrays) and runs
them through ``engine.runtime.preprocess`` — the exact function the device runs — one sample
per call, so 200 detector images at 640 px do not sit in memory at once; MinMax folds its
ranges every 8 batches (CalibMaxIntermediateOutputs).  The Entropy and Percentile calibrators
keep every intermediate tensor of every sample in memory: use them with tens of samples, or
MinMax for large sample counts (a calibration that cannot fit in this machine's memory is
refused with the number of samples that would).  Random tensors are never used: their activation ranges have nothing to do with photos.

``reduce_range=True`` quantizes weights to 7 bits: onnxruntime's U8S8 kernels on AVX2 CPUs
without VNNI can saturate the 16-bit intermediate sums, which made x86 and arm64 int8 outputs
differ (1.4e-2 on a small model); with reduce_range they matched bit for bit.  Whether it
pays depends on the model and the CPU, so each target profile decides (``reduce_range``):
on the fine-tuned nameplate models, x86 and arm64 (tests/test_emulated_pi.py) agreed bit for
bit either way and 7-bit weights only lost accuracy, so the Pi profiles keep 8 bits.

Accuracy guard: :func:`find_sensitive_nodes` — when the int8 model's metric drops by more than
``max_drop`` it ranks the quantized compute nodes by the quantization noise they introduce
(onnxruntime.quantization.qdq_loss_debug on the calibration data: weight SQNR and the local
pre/post-QDQ SQNR of their output activation, combined as noise-to-signal power) and greedily
keeps the noisiest in float, re-quantizing and re-evaluating with the caller's metric after each,
until the drop is within ``max_drop`` or the budget of re-quantizations is spent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from engine.runtime.preprocess import detector_input, norm_of, recognizer_input
from engine.training.metrics import within_drop

from . import atomic_replace, temp_path_beside

__all__ = [
    "CALIBRATION_METHODS",
    "OPERATOR_SETS",
    "ImageCalibrationReader",
    "QuantizationError",
    "SensitivityResult",
    "find_sensitive_nodes",
    "preprocess_for_quantization",
    "quantize_static_qdq",
    "quantized_op_types",
    "rank_sensitive_nodes",
]

CALIBRATION_METHODS: dict[str, CalibrationMethod] = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
#: ops whose weights are quantized and which are candidates to keep in float
COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
#: which operators get int8 (``operators=``): "all" every one onnxruntime can quantize (its
#: default, less FLOAT_OPS), "compute" only COMPUTE_OPS - the inputs quantization-aware
#: fine-tuning simulates (engine/compress/qat.py). A model fine-tuned by QAT and then quantized
#: with "all" meets rounding it never trained on: residual adds, SE and GELU products, the
#: linear layers' bias adds. Measured on the flagship's QAT recognizer, 5524 ground-truth crops
#: of three fresh plate sets: all -1.05 points of line accuracy, compute -0.58, at 1.1-1.3x the
#: recognizer's latency (README: int8 operators).
OPERATOR_SETS = ("all", "compute")
#: operators never quantized: a LayerNorm's scale is no per-channel conv weight (onnxruntime would
#: try, warn and round it per tensor) and its statistics need float
FLOAT_OPS = ("LayerNormalization",)


class QuantizationError(RuntimeError):
    """Bad quantization arguments or unusable calibration data."""


# ------------------------------------------------------------------------------------------
# calibration data
# ------------------------------------------------------------------------------------------


def _load_rgb(item: str | Path | np.ndarray) -> np.ndarray:
    if isinstance(item, np.ndarray):
        return item
    img = cv2.imread(str(item), cv2.IMREAD_COLOR)
    if img is None:
        raise QuantizationError(f"{item}: cannot read calibration image (missing or not an image)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _subset(items: Sequence[Any], samples: int | None, seed: int) -> list[Any]:
    """``samples`` items chosen reproducibly (all of them when samples is None or larger)."""
    items = list(items)
    if samples is None or samples >= len(items):
        return items
    if samples < 1:
        raise QuantizationError(f"calibration samples must be >= 1, got {samples}")
    idx = sorted(random.Random(seed).sample(range(len(items)), samples))
    return [items[i] for i in idx]


class ImageCalibrationReader(CalibrationDataReader):
    """onnxruntime CalibrationDataReader over real images, preprocessed like inference.

    Build it with :meth:`detector` (image paths/arrays -> ``detector_input``) or
    :meth:`recognizer` (crop paths/arrays -> ``recognizer_input``), or directly from a list of
    items and a ``preprocess(items_batch) -> float32 array`` callable.  Every pass starts from
    the beginning (``rewind`` is called by the quantizer helpers here before each use).
    """

    def __init__(
        self,
        items: Sequence[Any],
        preprocess: Callable[[list[Any]], np.ndarray],
        input_name: str = "input",
        batch_size: int = 1,
        fixed_hw: tuple[int, int] | None = None,
    ):
        if not items:
            raise QuantizationError("calibration needs at least one real image; got none")
        if batch_size < 1:
            raise QuantizationError(f"calibration batch_size must be >= 1, got {batch_size}")
        self.items = list(items)
        self.preprocess = preprocess
        self.input_name = input_name
        self.batch_size = batch_size
        #: the largest H×W preprocessing can produce; with ``pad_to_fixed`` every sample is
        #: padded (bottom/right, with 0 = the value preprocessing pads with) to it and fed one
        #: at a time.  onnxruntime's histogram calibrators (Entropy, Percentile) stack all
        #: batches into one array and fail on differing shapes; MinMax does not need this.
        self.fixed_hw = fixed_hw
        self.pad_to_fixed = False
        self._pos = 0
        self._end = len(self.items)
        self._queue: list[np.ndarray] = []

    @classmethod
    def detector(
        cls,
        images: Sequence[str | Path | np.ndarray],
        max_side: int,
        samples: int | None = None,
        input_name: str = "input",
        seed: int = 0,
        inputs: dict[str, Any] | None = None,
    ) -> ImageCalibrationReader:
        """One image per batch (sizes differ with aspect ratio), ``detector_input(img, max_side)``
        with the detector's input convention ``inputs`` (engine.models.registry)."""
        chosen = _subset(images, samples, seed)
        side = (max_side + 31) // 32 * 32
        norm = norm_of(inputs)
        return cls(chosen, lambda b: detector_input(_load_rgb(b[0]), max_side, **norm)[0], input_name,
                   1, fixed_hw=(side, side))

    @classmethod
    def recognizer(
        cls,
        crops: Sequence[str | Path | np.ndarray],
        height: int,
        max_width: int,
        samples: int | None = None,
        batch_size: int = 1,
        input_name: str = "input",
        seed: int = 0,
        inputs: dict[str, Any] | None = None,
    ) -> ImageCalibrationReader:
        """Batches of crops through ``recognizer_input(crops, height, max_width)`` with the
        recognizer's input convention ``inputs``."""
        chosen = _subset(crops, samples, seed)
        norm = norm_of(inputs)
        return cls(
            chosen,
            lambda b: recognizer_input([_load_rgb(c) for c in b], height, max_width, **norm),
            input_name,
            batch_size,
            fixed_hw=(height, max_width // 8 * 8),
        )

    def __len__(self) -> int:
        return (len(self.items) + self.batch_size - 1) // self.batch_size

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pad_to_fixed and self._queue:
            return {self.input_name: self._queue.pop(0)}
        if self._pos >= self._end:
            return None
        batch = self.items[self._pos : min(self._pos + self.batch_size, self._end)]
        self._pos += self.batch_size
        x = np.ascontiguousarray(self.preprocess(batch), dtype=np.float32)
        if self.pad_to_fixed and self.fixed_hw is not None:
            h, w = self.fixed_hw
            padded = np.zeros((x.shape[0], x.shape[1], max(h, x.shape[2]), max(w, x.shape[3])),
                              dtype=np.float32)
            padded[:, :, : x.shape[2], : x.shape[3]] = x
            self._queue = [padded[i : i + 1] for i in range(1, len(padded))]
            x = padded[:1]
        return {self.input_name: x}

    def rewind(self) -> None:
        self._pos = 0
        self._end = len(self.items)
        self._queue = []

    def set_range(self, start_index: int, end_index: int) -> None:
        """Yield only batches [start_index, end_index) (onnxruntime's CalibStridedMinMax)."""
        self._pos = start_index * self.batch_size
        self._end = min(end_index * self.batch_size, len(self.items))
        self._queue = []

    def inputs(self) -> list[dict[str, np.ndarray]]:
        """All batches (for parity checks and sensitivity ranking); rewinds before and after."""
        self.rewind()
        out = []
        while (feed := self.get_next()) is not None:
            out.append(feed)
        self.rewind()
        return out


class _ListReader(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds, self._pos = feeds, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= len(self.feeds):
            return None
        self._pos += 1
        return self.feeds[self._pos - 1]

    def rewind(self) -> None:
        self._pos = 0


def _rewind(reader: CalibrationDataReader) -> None:
    rewind = getattr(reader, "rewind", None)
    if callable(rewind):
        rewind()


# ------------------------------------------------------------------------------------------
# quantization
# ------------------------------------------------------------------------------------------


def preprocess_for_quantization(
    fp32_path: Path | str, out_path: Path | str, symbolic_shapes: bool = False
) -> str:
    """``quant_pre_process`` (shape inference + graph optimisation) -> a note on what ran.

    ``symbolic_shapes=False`` (default) skips onnxruntime's symbolic shape inference: it buys
    nothing for Conv graphs (onnx shape inference still runs) and on the 128 px DBNet export it
    took 4 s to fail, 16 s with auto_merge, versus 0.1 s without.  With ``True`` it is tried
    plain, then with auto_merge, then skipped.  The last resort, when the optimiser itself
    fails, is to quantize the unpreprocessed copy; the note records which path ran.
    """
    attempts: list[tuple[str, dict[str, bool]]] = [
        ("quant_pre_process (no symbolic shapes)", {"skip_symbolic_shape": True}),
    ]
    if symbolic_shapes:
        attempts = [
            ("quant_pre_process", {}),
            # DBNet's dynamic-H/W Resize chain needs symbolic dims merged to be inferred
            ("quant_pre_process (auto_merge)", {"auto_merge": True}),
            *attempts,
        ]
    errors = []
    for label, kwargs in attempts:
        try:
            quant_pre_process(str(fp32_path), str(out_path), **kwargs)
            return label
        except Exception as exc:  # onnxruntime raises several types here
            errors.append(f"{label}: {type(exc).__name__}: {exc}")
    shutil.copyfile(fp32_path, out_path)
    return "copied without preprocessing (" + "; ".join(errors) + ")"


def _count_ops(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


#: activations onnxruntime's min-max calibrator holds at once, estimated as this many bytes per
#: input byte: every intermediate tensor of every batch of a stride is kept until the stride's
#: ranges are folded. PP-OCRv6's recognizer holds ~180x its input (GELU alone keeps five
#: full-size tensors per block): 8 batches of eight 48x960 crops took 24 GB and were killed.
ACTIVATION_BYTES_PER_INPUT_BYTE = 200
CALIBRATION_MEMORY_BUDGET = 2 << 30
RANKING_FEEDS = 4  # calibration batches the exclusion ranking measures activation errors on
#: the share of this machine's memory the entropy / percentile calibrators may be expected to
#: hold before quantize_static_qdq refuses to start them (they are killed, not slowed, past it)
HISTOGRAM_MEMORY_SHARE = 0.75


def _activation_bytes(hw: Sequence[int] | None, samples: int = 1) -> int:
    """What onnxruntime's calibrators hold for ``samples`` inputs of 3×H×W (0 when unknown)."""
    return samples * 3 * hw[0] * hw[1] * 4 * ACTIVATION_BYTES_PER_INPUT_BYTE if hw else 0


def _physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _check_histogram_memory(reader: CalibrationDataReader, method: str) -> None:
    """Refuse an entropy / percentile calibration that cannot fit in memory, before it starts.

    onnxruntime's histogram calibrators keep every intermediate tensor of every sample until the
    end (their histograms cannot be merged stride by stride as min/max ranges are: the merge
    widens the first batch's bins, and a first batch with a tiny range makes it fail or explode).
    Percentile calibration of the PP-OCRv6 detector on 64 images at 512 px grew to 23 GB and the
    kernel killed the whole run with no message; this says what to change instead.
    """
    hw = getattr(reader, "fixed_hw", None)
    if not hw or not hasattr(reader, "__len__"):
        return
    samples = len(reader) * int(getattr(reader, "batch_size", 1))
    per_sample = _activation_bytes(hw)
    have = _physical_memory()
    if not have or samples * per_sample <= HISTOGRAM_MEMORY_SHARE * have:
        return
    most = max(1, int(HISTOGRAM_MEMORY_SHARE * have // per_sample))
    raise QuantizationError(
        f"{method} calibration keeps the activations of all {samples} samples in memory: about "
        f"{samples * per_sample / 2**30:.0f} GiB for {hw[0]}x{hw[1]} inputs, more than "
        f"{HISTOGRAM_MEMORY_SHARE:.0%} of this machine's {have / 2**30:.0f} GiB; calibrate on at most "
        f"{most} samples (optimize.calibration samples) or with method minmax, which folds its "
        f"ranges as it goes")


def _minmax_stride(reader: CalibrationDataReader, most: int = 8) -> int | None:
    """Batches folded together by onnxruntime's strided min-max calibration: the largest
    divisor of the reader's batch count (onnxruntime requires divisibility) that is <= ``most``
    and whose activations fit CALIBRATION_MEMORY_BUDGET; None (no striding) when every batch
    fits at once, or when the reader cannot be ranged. Min-max ranges merge exactly, so the
    stride changes memory, never the result."""
    if not (hasattr(reader, "__len__") and callable(getattr(reader, "set_range", None))):
        return None
    n = len(reader)
    hw = getattr(reader, "fixed_hw", None)
    batch = int(getattr(reader, "batch_size", 1))
    per_batch = _activation_bytes(hw, batch)
    fits = max(1, CALIBRATION_MEMORY_BUDGET // per_batch) if per_batch else most
    if n <= min(most, fits):
        return None
    cap = max(1, min(most, fits))
    return max(d for d in range(1, cap + 1) if n % d == 0)


def quantized_op_types(operators: str) -> list[str]:
    """The op types onnxruntime is asked to quantize for one of OPERATOR_SETS."""
    if operators == "compute":
        return list(COMPUTE_OPS)
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted((set(QLinearOpsRegistry) | set(QDQRegistry)) - set(FLOAT_OPS))  # ORT's default, less


def quantize_static_qdq(
    fp32_path: Path | str,
    out_path: Path | str,
    calibration_reader: CalibrationDataReader,
    method: str = "minmax",
    per_channel: bool = True,
    reduce_range: bool = False,
    nodes_to_exclude: Sequence[str] = (),
    calib_options: dict[str, Any] | None = None,
    preprocess: bool = True,
    symbolic_shapes: bool = False,
    calibration_cache: Path | str | None = None,
    operators: str = "all",
) -> dict[str, Any]:
    """fp32 ONNX -> static QDQ int8 ONNX at ``out_path`` (atomic); returns a report.

    ``method``: "minmax" | "entropy" | "percentile".  ``nodes_to_exclude``: node names *of the
    preprocessed model* kept in float (what find_sensitive_nodes returns).  Entropy /
    Percentile need same-shaped batches: an ImageCalibrationReader is switched to padded,
    one-sample feeds for them (see ``fixed_hw``); other readers must yield one shape.
    ``calib_options`` go to onnxruntime's extra_options (e.g. {"CalibPercentile": 99.99}).  ``preprocess=False``
    when ``fp32_path`` is already the output of preprocess_for_quantization;
    ``symbolic_shapes`` is passed to it.  ``calibration_cache``: a JSON file of activation
    ranges (onnxruntime's calibration cache): written after calibrating when missing, read
    instead of calibrating when present — valid for the same preprocessed model, data and
    method, whatever ``nodes_to_exclude`` is, so an exclusion search calibrates once.
    ``operators``: one of OPERATOR_SETS.
    """
    key = method.lower()
    if operators not in OPERATOR_SETS:
        raise QuantizationError(f"unknown operators {operators!r}; known: {', '.join(OPERATOR_SETS)}")
    if key not in CALIBRATION_METHODS:
        raise QuantizationError(
            f"unknown calibration method {method!r}; known: {', '.join(CALIBRATION_METHODS)}"
        )
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not fp32_path.is_file():
        raise QuantizationError(f"{fp32_path}: fp32 model not found")
    if key in ("entropy", "percentile") and not (calibration_cache and Path(calibration_cache).is_file()):
        _check_histogram_memory(calibration_reader, key)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=".quant.", dir=out_path.parent if out_path.parent.exists()
                                 else None))
    tmp_out = temp_path_beside(out_path, ".onnx")
    try:
        pre = work / "pre.onnx"
        note = (preprocess_for_quantization(fp32_path, pre, symbolic_shapes) if preprocess
                else "skipped (given)")
        if not preprocess:
            shutil.copyfile(fp32_path, pre)
        pre_names = {n.name for n in onnx.load(str(pre)).graph.node}
        unknown = [n for n in nodes_to_exclude if n not in pre_names]
        if unknown:
            raise QuantizationError(
                f"nodes_to_exclude not in the preprocessed {fp32_path.name}: {unknown[:5]}"
            )
        _rewind(calibration_reader)
        histogram = key in ("entropy", "percentile")
        if histogram and isinstance(calibration_reader, ImageCalibrationReader):
            calibration_reader.pad_to_fixed = True
        extra: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True}
        stride = _minmax_stride(calibration_reader) if key == "minmax" else None
        if stride:
            # fold ranges every few batches instead of holding every activation of every image
            # (200 detector images at 640 px would otherwise need tens of GB).  Not
            # CalibMaxIntermediateOutputs: onnxruntime 1.32 discards, not folds, at that limit.
            extra["CalibStridedMinMax"] = stride
        extra.update(calib_options or {})
        quantize_static(
            str(pre),
            str(tmp_out),
            calibration_reader,
            op_types_to_quantize=quantized_op_types(operators),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(nodes_to_exclude),
            calibrate_method=CALIBRATION_METHODS[key],
            extra_options=extra,
            calibration_cache_path=str(calibration_cache) if calibration_cache else None,
        )
        model = onnx.load(str(tmp_out))
        onnx.checker.check_model(model)
        ops = _count_ops(model)
        atomic_replace(tmp_out, out_path)
    finally:
        if isinstance(calibration_reader, ImageCalibrationReader):
            calibration_reader.pad_to_fixed = False
        _rewind(calibration_reader)
        shutil.rmtree(work, ignore_errors=True)
        if tmp_out.exists():
            with contextlib.suppress(OSError):
                os.unlink(tmp_out)
    samples = len(calibration_reader) if hasattr(calibration_reader, "__len__") else None
    return {
        "path": str(out_path),
        "source": str(fp32_path),
        "format": "QDQ U8S8",
        "method": key,
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "calibration_batches": samples,
        "calibration_cache": str(calibration_cache) if calibration_cache else None,
        "nodes_to_exclude": list(nodes_to_exclude),
        "operators": operators,
        "preprocess": note,
        "quantize_nodes": ops.get("QuantizeLinear", 0),
        "dequantize_nodes": ops.get("DequantizeLinear", 0),
        "ops": ops,
        "bytes": out_path.stat().st_size,
        "seconds": round(time.perf_counter() - t0, 3),
    }


# ------------------------------------------------------------------------------------------
# accuracy guard
# ------------------------------------------------------------------------------------------


@dataclass
class SensitivityResult:
    """What find_sensitive_nodes decided.  ``excluded`` is the list to pass as nodes_to_exclude."""

    excluded: list[str]
    met: bool
    fp32_metric: float
    int8_metric: float
    final_metric: float
    max_drop: float
    ranking: list[tuple[str, float]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "excluded": self.excluded,
            "met": self.met,
            "fp32_metric": self.fp32_metric,
            "int8_metric": self.int8_metric,
            "final_metric": self.final_metric,
            "max_drop": self.max_drop,
            "ranking": [[n, s] for n, s in self.ranking],
            "history": self.history,
        }


def _noise_ratio(sqnr_db: float) -> float:
    """SQNR in dB -> noise/signal power (inf SQNR = no noise)."""
    if not np.isfinite(sqnr_db):
        return 0.0 if sqnr_db > 0 else 1.0
    return float(10.0 ** (-sqnr_db / 10.0))


def rank_sensitive_nodes(
    preprocessed_fp32_path: Path | str,
    int8_path: Path | str,
    feeds: Sequence[dict[str, np.ndarray]],
    op_types: Sequence[str] = COMPUTE_OPS,
) -> list[tuple[str, float]]:
    """[(node name, score)] for the compute nodes of the preprocessed fp32 model, most
    sensitive first.  score = noise/signal power of the node's quantized weight plus that of its
    output activation's quantize-dequantize, measured on ``feeds`` (real calibration inputs)."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_signal_to_quantization_noice_ratio,
        create_activation_matching,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    fp32 = onnx.load(str(preprocessed_fp32_path))
    nodes = [n for n in fp32.graph.node if n.op_type in op_types and n.name]
    # create_weight_matching logs an ERROR for every quantized bias (int32, created by the
    # quantizer, absent from the float model); those are expected, so silence them.
    logging.disable(logging.ERROR)
    try:
        matching = create_weight_matching(str(preprocessed_fp32_path), str(int8_path))
    finally:
        logging.disable(logging.NOTSET)
    weight_err: dict[str, float] = {}
    for name, match in matching.items():
        pair = (match.get("float"), match.get("dequantized"))
        if any(a is None or np.ndim(a) == 0 for a in pair):
            continue  # a scalar (a LayerNorm epsilon, a folded constant): nothing to rank
        weight_err[name] = float(compute_signal_to_quantization_noice_ratio(pair[0], pair[1]))
    act_err: dict[str, float] = {}
    if feeds:
        with tempfile.TemporaryDirectory(prefix="qdq_debug.") as tmp:
            aug = Path(tmp) / "int8_aug.onnx"
            modify_model_output_intermediate_tensors(str(int8_path), str(aug))
            acts = collect_activations(str(aug), _ListReader(list(feeds)))
        for name, match in create_activation_matching(acts).items():
            pre, post = match.get("pre_qdq"), match.get("post_qdq")
            if pre is not None and post is not None:
                act_err[name] = float(compute_signal_to_quantization_noice_ratio(pre, post))
    scores = []
    for n in nodes:
        score = 0.0
        for inp in n.input[1:2]:  # the weight
            if inp in weight_err:
                score += _noise_ratio(weight_err[inp])
        for out in n.output[:1]:
            if out in act_err:
                score += _noise_ratio(act_err[out])
        scores.append((n.name, score))
    scores.sort(key=lambda t: -t[1])
    return scores


def find_sensitive_nodes(
    fp32_path: Path | str,
    int8_path_builder: Callable[[Sequence[str]], Path | str],
    eval_fn: Callable[[Path | str], float],
    max_drop: float,
    budget: int = 8,
    ranking_inputs: CalibrationDataReader | Sequence[dict[str, np.ndarray]] | None = None,
    op_types: Sequence[str] = COMPUTE_OPS,
    fp32_metric: float | None = None,
) -> SensitivityResult:
    """Exclusion list that brings the int8 metric within ``max_drop`` of fp32 (if possible).

    ``int8_path_builder(nodes_to_exclude) -> path`` quantizes with those nodes kept in float
    (typically a closure over :func:`quantize_static_qdq` with the recipe's settings and a
    ``calibration_cache`` file, so only the first build calibrates);
    ``eval_fn(model_path) -> float`` is the caller's metric, higher is better (hmean, word
    accuracy, or output agreement).  ``budget``: at most this many nodes kept in float (one
    re-quantization + evaluation each).  ``ranking_inputs``: real calibration inputs for the
    activation-error ranking (weights-only ranking without them).  ``fp32_metric``: the score
    int8 is held to, when ``eval_fn(fp32_path)`` is not it (an eval_fn that scores a detector
    with an int8 recognizer reading its boxes is held to the fp32 pair's score).
    """
    if budget < 0:
        raise QuantizationError(f"budget must be >= 0, got {budget}")
    fp32_metric = float(eval_fn(fp32_path) if fp32_metric is None else fp32_metric)
    int8_path = Path(int8_path_builder(()))
    int8_metric = float(eval_fn(int8_path))
    history: list[dict[str, Any]] = [{"excluded": [], "metric": int8_metric,
                                      "drop": fp32_metric - int8_metric}]
    result = SensitivityResult([], within_drop(fp32_metric - int8_metric, max_drop), fp32_metric,
                               int8_metric, int8_metric, max_drop, history=history)
    if result.met or budget == 0:
        return result
    if isinstance(ranking_inputs, ImageCalibrationReader):
        feeds = ranking_inputs.inputs()
    elif isinstance(ranking_inputs, CalibrationDataReader):
        _rewind(ranking_inputs)
        feeds = []
        while (feed := ranking_inputs.get_next()) is not None:
            feeds.append(feed)
        _rewind(ranking_inputs)
    else:
        feeds = list(ranking_inputs or [])
    # the ranking keeps every intermediate tensor of every feed (onnxruntime's qdq_loss_debug):
    # a few batches rank as well as all of them and fit in memory
    feeds = feeds[:RANKING_FEEDS]
    with tempfile.TemporaryDirectory(prefix="sensitivity.") as tmp:
        pre = Path(tmp) / "pre.onnx"
        preprocess_for_quantization(fp32_path, pre)
        ranking = rank_sensitive_nodes(pre, int8_path, feeds, op_types)
    result.ranking = ranking
    # Greedy forward selection that keeps a node in float only when that measurably helps:
    # keeping a node in float is not monotone - on PP-OCRv6's recognizer the 7th node of the
    # ranking, added to six others, took line accuracy from 0.805 to 0.225 - so each try
    # starts from the best set so far, and the result is the best set seen.
    excluded: list[str] = []
    built: list[str] = []  # the set whose model the builder wrote last
    best = int8_metric
    for name, _score in ranking[:budget]:
        trial = built = [*excluded, name]
        metric = float(eval_fn(int8_path_builder(list(trial))))
        drop = fp32_metric - metric
        history.append({"excluded": list(trial), "metric": metric, "drop": drop, "kept": metric > best})
        if metric > best:
            excluded, best = trial, metric
        if within_drop(fp32_metric - best, max_drop):
            result.met = True
            break
    if built != excluded:  # the last try was not kept: its model must not stand as the result
        int8_path_builder(list(excluded))
    result.excluded, result.final_metric = excluded, best
    return result
