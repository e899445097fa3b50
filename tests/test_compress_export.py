"""ONNX export: dynamic shapes, parity with torch on real inputs, atomic writes, fp16, latency."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from engine.compress.export import ExportError, export_onnx
from engine.compress.fp16 import FP16Error, convert_fp16
from engine.compress.latency import compare_latency, measure_latency
from engine.models import build_detector, build_recognizer
from engine.runtime.preprocess import detector_input, recognizer_input

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = sorted((ROOT / "examples" / "datasets" / "icdar2015").glob("*/images/*.jpg"))
CROPS = sorted((ROOT / "examples" / "datasets" / "lines" / "crops").glob("*.jpg"))


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def detector_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = build_detector("dbnet", "mobilenetv3").eval()
    samples = [detector_input(_rgb(PHOTOS[0]), 128)[0], detector_input(_rgb(PHOTOS[1]), 192)[0]]
    path = tmp_path_factory.mktemp("det") / "detector.onnx"
    report = export_onnx(model, "detector", path, samples)
    return model, path, report, samples


def test_detector_export_parity_on_two_sizes(detector_onnx):
    model, path, report, _ = detector_onnx
    assert report["opset"] == 17 and report["exporter"].startswith("torchscript")
    assert len(report["max_abs_diff"]) == 2 and max(report["max_abs_diff"]) < 1e-4
    assert {tuple(s) for s in report["sample_shapes"]} == {(1, 3, 64, 128), (1, 3, 96, 192)}
    proto = onnx.load(str(path))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and isinstance(dims[2], str) and isinstance(dims[3], str)  # dynamic N, H, W
    # a size it was never traced or checked at, batch 2
    x = np.concatenate([detector_input(_rgb(PHOTOS[2]), 160)[0]] * 2)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-4
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_recognizer_export_dynamic_batch_and_width(tmp_path):
    torch.manual_seed(0)
    crops = [_rgb(p) for p in CROPS]
    rec = build_recognizer("crnn", "bilstm", num_classes=40, height=32).eval()
    x1 = recognizer_input(crops[:2], 32, 320)
    x2 = recognizer_input(crops[2:], 32, 320)
    assert x1.shape[0] != x2.shape[0]
    report = export_onnx(rec, "recognizer", tmp_path / "rec.onnx", [x1, x2])
    assert max(report["max_abs_diff"]) < 1e-4
    sess = ort.InferenceSession(str(tmp_path / "rec.onnx"), providers=["CPUExecutionProvider"])
    x3 = recognizer_input([cv2.resize(crops[0], (200, 25))], 32, 320)
    assert sess.run(None, {"input": x3})[0].shape == (1, x3.shape[3] // 4, 40)


def test_export_parity_failure_raises_and_writes_nothing(tmp_path):
    model = build_detector("dbnet", "mobilenetv3").eval()
    x = detector_input(_rgb(PHOTOS[0]), 64)[0]
    with pytest.raises(ExportError, match="differs from torch"):
        export_onnx(model, "detector", tmp_path / "d.onnx", [x], atol=-1.0, simplify=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ExportError, match="unknown model kind"):
        export_onnx(model, "classifier", tmp_path / "d.onnx", [x])
    with pytest.raises(ExportError, match="at least one"):
        export_onnx(model, "detector", tmp_path / "d.onnx", [])


def test_fp16_parity_detector_and_recognizer(detector_onnx, tmp_path):
    _, path, _, samples = detector_onnx
    report = convert_fp16(path, tmp_path / "det16.onnx", samples, atol=1e-2)
    assert max(report["max_abs_diff"]) < 1e-2
    half = onnx.load(str(tmp_path / "det16.onnx"))
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float I/O
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in half.graph.initializer)
    # a conv recognizer (its Transpose stays fp32: onnxruntime's CPU EP crashes otherwise)
    torch.manual_seed(0)
    rec = build_recognizer("crnn", "conv", num_classes=40, height=32).eval()
    x = recognizer_input([_rgb(p) for p in CROPS], 32, 320)
    export_onnx(rec, "recognizer", tmp_path / "rec.onnx", [x])
    rep = convert_fp16(tmp_path / "rec.onnx", tmp_path / "rec16.onnx", [x], atol=5e-2)
    assert max(rep["max_abs_diff"]) < 5e-2
    with pytest.raises(FP16Error, match="differs from fp32"):
        convert_fp16(path, tmp_path / "never.onnx", samples, atol=0.0)
    assert not (tmp_path / "never.onnx").exists()


def test_measure_latency(detector_onnx):
    _, path, _, samples = detector_onnx
    lat = measure_latency(path, samples, threads=1, runs=5, warmup=1)
    assert lat["runs"] == 5 and len(lat["times_ms"]) == 5
    assert 0 < lat["min_ms"] <= lat["median_ms"] <= lat["p90_ms"]
    with pytest.raises(ValueError):
        measure_latency(path, [], threads=1)


def test_compare_latency_interleaves_and_pools(detector_onnx, tmp_path):
    _, path, _, samples = detector_onnx
    copy = tmp_path / "same.onnx"
    copy.write_bytes(Path(path).read_bytes())
    lat = compare_latency({"a": path, "b": copy}, samples, threads=1, runs=6, rounds=3, warmup=1)
    assert set(lat) == {"a", "b"}
    for stats in lat.values():
        assert stats["runs"] == 6 and len(stats["times_ms"]) == 6 and stats["median_ms"] > 0
    with pytest.raises(ValueError):
        compare_latency({}, samples, threads=1)


def test_compare_latency_sessions_do_not_spin(detector_onnx, monkeypatch):
    """An idle session's busy-waiting worker would steal a core from the one being timed."""
    import engine.compress.latency as latency

    _, path, _, samples = detector_onnx
    made = []
    real = latency.make_session

    def recording(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(latency, "make_session", recording)
    compare_latency({"a": path, "b": path}, samples, threads=1, runs=2, rounds=1, warmup=0)
    assert len(made) == 2
    for sess in made:
        assert sess.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(Exception, match="allow_spinning"):  # the default session spins
        real(path, 1).get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
