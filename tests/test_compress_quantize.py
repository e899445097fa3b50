"""Static QDQ int8 on real images: outputs stay close, and the sensitivity search engages."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from engine.compress.export import export_onnx
from engine.compress.quantize import (
    ImageCalibrationReader,
    QuantizationError,
    find_sensitive_nodes,
    preprocess_for_quantization,
    quantize_static_qdq,
)
from engine.models import build_detector, build_recognizer
from engine.runtime.preprocess import detector_input, recognizer_input

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = sorted((ROOT / "examples" / "datasets").glob("*/*/images/*.jpg")) + sorted(
    (ROOT / "examples" / "datasets").glob("*/images/*.jpg")
)
CROPS = sorted((ROOT / "examples" / "datasets" / "lines" / "crops").glob("*.jpg"))


def _run(path: Path | str, feeds: list[np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [sess.run(None, {"input": x})[0] for x in feeds]


@pytest.fixture(scope="module")
def detector_fp32(tmp_path_factory):
    torch.manual_seed(0)
    model = build_detector("dbnet", "mobilenetv3").eval()
    x = detector_input(cv2.imread(str(PHOTOS[0]))[:, :, ::-1], 128)[0]
    path = tmp_path_factory.mktemp("q") / "det.onnx"
    export_onnx(model, "detector", path, [x])
    return path


@pytest.fixture(scope="module")
def recognizer_fp32(tmp_path_factory):
    torch.manual_seed(0)
    model = build_recognizer("crnn", "conv", num_classes=40, height=32,
                             channels=(16, 32, 64, 64), hidden=64, layers=2).eval()
    x = recognizer_input([cv2.imread(str(p))[:, :, ::-1] for p in CROPS], 32, 160)
    path = tmp_path_factory.mktemp("q") / "rec.onnx"
    export_onnx(model, "recognizer", path, [x])
    return path


def test_calibration_reader_uses_runtime_preprocessing():
    assert len(PHOTOS) >= 4
    reader = ImageCalibrationReader.detector(PHOTOS, 128, samples=3)
    feeds = reader.inputs()
    assert len(feeds) == 3 and len(reader) == 3
    expected = detector_input(cv2.cvtColor(cv2.imread(str(reader.items[0])), cv2.COLOR_BGR2RGB),
                              128)[0]
    np.testing.assert_array_equal(feeds[0]["input"], expected)
    assert reader.get_next() is not None  # inputs() rewound
    rec = ImageCalibrationReader.recognizer(CROPS, 32, 160, batch_size=2)
    assert [f["input"].shape[0] for f in rec.inputs()] == [2, 2, 1]
    bad = ImageCalibrationReader.detector([ROOT / "no_such.jpg"], 128)
    with pytest.raises(QuantizationError, match=r"no_such\.jpg"):
        bad.get_next()
    with pytest.raises(QuantizationError):
        ImageCalibrationReader.detector([], 128)


def test_int8_detector_outputs_stay_close(detector_fp32, tmp_path):
    reader = ImageCalibrationReader.detector(PHOTOS, 128)
    out = tmp_path / "det_int8.onnx"
    report = quantize_static_qdq(detector_fp32, out, reader, method="minmax", per_channel=True)
    assert report["quantize_nodes"] > 20 and report["calibration_batches"] == len(PHOTOS)
    assert report["preprocess"].startswith("quant_pre_process")
    ops = report["ops"]
    assert ops.get("ConvInteger", 0) == 0  # static QDQ, never dynamic quantization
    feeds = [f["input"] for f in reader.inputs()] + [
        detector_input(cv2.imread(str(PHOTOS[0]))[:, :, ::-1], 160)[0]]
    ref, got = _run(detector_fp32, feeds), _run(out, feeds)
    for a, b in zip(ref, got, strict=True):
        assert a.shape == b.shape
        assert np.abs(a - b).max() < 5e-2
        assert ((a > 0.3) == (b > 0.3)).mean() > 0.99


def test_strided_minmax_and_calibration_cache(detector_fp32, tmp_path):
    # 12 batches -> ranges folded every 6 (CalibStridedMinMax): the same ranges as one pass
    # over the 4 distinct photos, because min/max folding is exact
    many = ImageCalibrationReader.detector(PHOTOS[:4] * 3, 128)
    few = ImageCalibrationReader.detector(PHOTOS[:4], 128)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    quantize_static_qdq(detector_fp32, a, many)
    quantize_static_qdq(detector_fp32, b, few)
    feeds = [f["input"] for f in few.inputs()]
    for x, y in zip(_run(a, feeds), _run(b, feeds), strict=True):
        np.testing.assert_array_equal(x, y)
    cache = tmp_path / "ranges.json"
    quantize_static_qdq(detector_fp32, tmp_path / "c.onnx", few, calibration_cache=cache)
    assert cache.is_file()
    report = quantize_static_qdq(detector_fp32, tmp_path / "d.onnx", few, calibration_cache=cache)
    assert report["calibration_cache"] == str(cache)
    for x, y in zip(_run(tmp_path / "d.onnx", feeds), _run(b, feeds), strict=True):
        np.testing.assert_array_equal(x, y)


def test_int8_recognizer_percentile_reduce_range(recognizer_fp32, tmp_path):
    reader = ImageCalibrationReader.recognizer(CROPS, 32, 160, batch_size=2)
    out = tmp_path / "rec_int8.onnx"
    report = quantize_static_qdq(recognizer_fp32, out, reader, method="percentile",
                                 reduce_range=True, calib_options={"CalibPercentile": 99.99})
    assert report["method"] == "percentile" and report["reduce_range"]
    x = recognizer_input([cv2.imread(str(p))[:, :, ::-1] for p in CROPS], 32, 160)
    ref, got = _run(recognizer_fp32, [x])[0], _run(out, [x])[0]
    scale = np.abs(ref).max()
    assert np.abs(ref - got).max() < 0.1 * scale
    assert (ref.argmax(-1) == got.argmax(-1)).mean() > 0.9


def test_compute_operators_leave_the_rest_in_float(detector_fp32, tmp_path):
    """operators="compute": onnxruntime quantizes only the conv (matmul, gemm) nodes, the layers
    QAT simulates; the activations between them (here the hard-sigmoid gates) stay float, where
    "all" rounds them too."""
    feeds = [detector_input(cv2.imread(str(PHOTOS[0]))[:, :, ::-1], 128)[0]]

    def rounded_by(operators: str) -> Counter[str]:
        """The op types whose outputs get rounded (feed a QuantizeLinear)."""
        out = tmp_path / f"{operators}.onnx"
        report = quantize_static_qdq(detector_fp32, out, ImageCalibrationReader.detector(PHOTOS[:2], 128),
                                     operators=operators)
        assert report["operators"] == operators
        graph = onnx.load(str(out)).graph
        producer = {o: n.op_type for n in graph.node for o in n.output}
        return Counter(producer.get(n.input[0], "input") for n in graph.node if n.op_type == "QuantizeLinear")

    compute, every = rounded_by("compute"), rounded_by("all")
    assert compute["Conv"] and sum(compute.values()) < sum(every.values())
    assert every["HardSigmoid"] and not compute["HardSigmoid"]
    assert np.abs(_run(tmp_path / "compute.onnx", feeds)[0] - _run(detector_fp32, feeds)[0]).max() < 0.1
    with pytest.raises(QuantizationError, match="known: all, compute"):
        quantize_static_qdq(detector_fp32, tmp_path / "x.onnx", ImageCalibrationReader.detector(PHOTOS[:1], 128),
                            operators="every")


def test_histogram_calibration_that_cannot_fit_in_memory_is_refused(recognizer_fp32, tmp_path, monkeypatch):
    # entropy / percentile hold every activation of every sample: past the machine's memory the
    # kernel kills the run with no message (the flagship's detector at 512 px: 64 images, 23 GB)
    import engine.compress.quantize as q

    reader = ImageCalibrationReader.recognizer(CROPS, 32, 160, batch_size=2)
    monkeypatch.setattr(q, "_physical_memory", lambda: 64 << 20)
    with pytest.raises(QuantizationError, match=r"percentile calibration keeps the activations of all "
                                                r"\d+ samples .* calibrate on at most 4 samples"):
        quantize_static_qdq(recognizer_fp32, tmp_path / "x.onnx", reader, method="percentile")
    assert not (tmp_path / "x.onnx").exists()
    report = quantize_static_qdq(recognizer_fp32, tmp_path / "y.onnx", reader)  # minmax folds: fine
    assert report["method"] == "minmax"


def test_bad_method_and_unknown_excluded_node(recognizer_fp32, tmp_path):
    reader = ImageCalibrationReader.recognizer(CROPS, 32, 160)
    with pytest.raises(QuantizationError, match="calibration method"):
        quantize_static_qdq(recognizer_fp32, tmp_path / "x.onnx", reader, method="dynamic")
    with pytest.raises(QuantizationError, match="nodes_to_exclude"):
        quantize_static_qdq(recognizer_fp32, tmp_path / "x.onnx", reader,
                            nodes_to_exclude=["no/such/Conv"])
    assert not (tmp_path / "x.onnx").exists()


def test_sensitivity_search(recognizer_fp32, tmp_path):
    reader = ImageCalibrationReader.recognizer(CROPS, 32, 160, batch_size=5)
    feeds = [f["input"] for f in reader.inputs()]
    ref = _run(recognizer_fp32, feeds)
    out = tmp_path / "guarded.onnx"
    builds: list[list[str]] = []

    def builder(excluded):
        builds.append(list(excluded))
        quantize_static_qdq(recognizer_fp32, out, reader, nodes_to_exclude=excluded,
                            calibration_cache=tmp_path / "ranges.json")
        return out

    def agreement(path):  # synthetic metric: closeness to fp32 on real crops, higher is better
        return -float(np.mean([np.abs(a - b).mean() for a, b in zip(ref, _run(path, feeds),
                                                                    strict=True)]))

    loose = find_sensitive_nodes(recognizer_fp32, builder, agreement, max_drop=10.0, budget=3,
                                 ranking_inputs=reader)
    assert loose.met and loose.excluded == [] and len(builds) == 1
    builds.clear()
    tight = find_sensitive_nodes(recognizer_fp32, builder, agreement, max_drop=0.0, budget=2,
                                 ranking_inputs=reader)
    assert not tight.met and len(tight.history) == 3
    # a node stays in float only when that scored better than the best set before it, and the
    # chosen set's model is what the builder wrote last
    top = [name for name, _ in tight.ranking[:2]]
    kept = [h["excluded"][-1] for h in tight.history[1:] if h["kept"]]
    assert tight.excluded == kept and set(kept) <= set(top)
    # (rebuilt only when the last try was not kept)
    assert len(builds) == 3 + (builds[2] != tight.excluded) and builds[-1] == tight.excluded
    assert tight.final_metric == max(h["metric"] for h in tight.history)
    assert tight.ranking[0][1] >= tight.ranking[-1][1]
    # the excluded convs really are float in the last build: their weights are not dequantized
    pre = tmp_path / "pre.onnx"
    preprocess_for_quantization(recognizer_fp32, pre)
    names = {n.name for n in onnx.load(str(pre)).graph.node}
    assert set(tight.excluded) <= names
    q = onnx.load(str(out))
    by_name = {n.name: n for n in q.graph.node}
    for name in tight.excluded:
        assert not by_name[name].input[1].endswith("DequantizeLinear_Output")
    # the drop is what the metric says: excluding the top nodes never made it worse by much
    assert tight.final_metric >= tight.int8_metric - 1e-3
    # a given baseline is what int8 is held to (the detector's guard: the fp32 pair's score),
    # and the fp32 model is then not scored at all
    scored: list[str] = []

    def logged(path):
        scored.append(str(path))
        return agreement(path)

    held = find_sensitive_nodes(recognizer_fp32, builder, logged, max_drop=10.0, budget=0, fp32_metric=20.0)
    assert str(recognizer_fp32) not in scored and held.fp32_metric == 20.0 and not held.met
    # one count lost against a bar of exactly one count is met (0.925 - 0.92 is 0.00500000000000006
    # in floats): no exclusion search, a single build
    builds.clear()
    at_bar = find_sensitive_nodes(recognizer_fp32, builder, lambda path: 0.92, max_drop=0.005, budget=3,
                                  ranking_inputs=reader, fp32_metric=0.925)
    assert at_bar.met and at_bar.excluded == [] and len(builds) == 1
