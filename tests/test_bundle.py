"""Bundle assembly: layout, manifest hashes, tamper rejection, atomic replacement, candidates.

Models are small UNTRAINED networks exported with the real exporter (mobilenetv3 DBNet traced at
128, conv CRNN), validation records come from examples/datasets/icdar2015 through the real
reader + validator.  ``export_small_models`` / ``val_records`` / ``small_bundle`` are imported by
the other runtime tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engine.compress.export import export_onnx
from engine.data.charset import DEFAULT_CHARSET
from engine.data.prepare import load_split
from engine.data.validate import ValidationOptions
from engine.deploy.bundle import (
    BUNDLE_FORMAT,
    build_bundle,
    pack_bundle,
    requirements_text,
    set_active_precision,
    update_bundle_meta,
)
from engine.models import build_detector, build_recognizer
from engine.runtime.bundle_manifest import BundleError, verify_bundle
from engine.runtime.pipeline import OCRPipeline
from engine.runtime.preprocess import detector_input, recognizer_input

ROOT = Path(__file__).resolve().parent.parent
ICDAR = ROOT / "examples" / "datasets" / "icdar2015"
CROPS = sorted((ROOT / "examples" / "datasets" / "lines" / "crops").glob("*.jpg"))


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def val_records() -> list:
    """The example icdar2015 images (val + train: 4 images) as validated ManifestRecords."""
    out = []
    for split in ("val", "train"):
        res = load_split("icdar2015", ICDAR / split, "val", ValidationOptions(charset=DEFAULT_CHARSET))
        assert not res.problems, res.problems
        out.extend(res.records)
    return out


def export_small_models(out: Path, sequence: str = "conv") -> dict[str, Path]:
    """Untrained detector + recognizer exported to ``out`` (real exporter, parity-checked)."""
    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    images = [_rgb(Path(r.image)) for r in val_records()[:2]]
    det = build_detector("dbnet", "mobilenetv3").eval()
    export_onnx(det, "detector", out / "detector.onnx",
                [detector_input(images[0], 128)[0], detector_input(images[1], 160)[0]],
                simplify=False)
    rec = build_recognizer("crnn", sequence, num_classes=len(DEFAULT_CHARSET) + 1, height=32).eval()
    crops = [_rgb(p) for p in CROPS]
    export_onnx(rec, "recognizer", out / "recognizer.onnx",
                [recognizer_input(crops[:2], 32, 160), recognizer_input(crops[2:], 32, 160)],
                simplify=False)
    return {"detector": out / "detector.onnx", "recognizer": out / "recognizer.onnx"}


def small_bundle(out_dir: Path, models: dict[str, dict[str, Path]], active: str | None = None,
                 **overrides) -> Path:
    """build_bundle with settings that make an untrained detector still yield boxes (its
    probabilities sit around 0.01: thresh 0.0105 keeps a few blobs on the example plates)."""
    kwargs = dict(
        models=models, active=active or next(iter(models)), charset=DEFAULT_CHARSET,
        detector={"input": "input", "max_side": 128},
        recognizer={"input": "input", "height": 32, "max_width": 160, "batch": 4, "max_padding": 1.0},
        postprocess={"thresh": 0.0105, "box_thresh": 0.0, "unclip_ratio": 1.5, "min_text_score": 0.0},
        threads=1, providers=["CPUExecutionProvider"], runtime="onnxruntime",
        target="local-cpu", arch="x86_64", recipe={"name": "test", "hash": "0" * 16},
        val_records=val_records(),
    )
    kwargs.update(overrides)
    return build_bundle(out_dir, **kwargs)


@pytest.fixture(scope="module")
def fp32_models(tmp_path_factory) -> dict[str, Path]:
    return export_small_models(tmp_path_factory.mktemp("models"))


def test_layout_manifest_and_meta(tmp_path, fp32_models):
    bundle = small_bundle(tmp_path / "bundle", {"fp32": fp32_models})
    manifest = verify_bundle(bundle)
    files = set(manifest["files"])
    assert {"models/detector.onnx", "models/recognizer.onnx", "requirements.txt",
            "val/labels.jsonl", "runtime/pipeline.py", "runtime/check.py",
            "runtime/bundle_manifest.py", "runtime/__init__.py"} <= files
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    assert len([f for f in files if f.startswith("val/images/")]) == 4
    assert manifest["bundle_format"] == BUNDLE_FORMAT and manifest["precision"] == "fp32"
    assert manifest["candidates"] == {"fp32": {"detector": "models/detector.onnx",
                                               "recognizer": "models/recognizer.onnx"}}
    for key in ("recipe", "target", "arch", "runtime", "charset", "detector", "recognizer",
                "postprocess", "threads", "providers", "exclusions", "onnxruntime", "metrics"):
        assert key in manifest, key
    assert manifest["charset"] == DEFAULT_CHARSET
    # labels point into the bundle and keep the polygons
    labels = [json.loads(x) for x in (bundle / "val/labels.jsonl").read_text().splitlines()]
    assert all((bundle / "val" / d["image"]).is_file() and d["lines"] for d in labels)
    req = (bundle / "requirements.txt").read_text()
    assert "torch" not in req and "onnxruntime>=" in req and "pyclipper>=" in req
    assert req == requirements_text()
    # same inputs -> same bundle hash (no timestamps); the .tar.gz is reproducible too
    again = small_bundle(tmp_path / "again", {"fp32": fp32_models})
    assert verify_bundle(again)["bundle_hash"] == manifest["bundle_hash"]
    a1, a2 = pack_bundle(bundle), pack_bundle(again)
    assert a1.read_bytes() == a2.read_bytes()
    # the shipped manifest checker works as a plain script on the bundle's own copy
    out = subprocess.run([sys.executable, str(bundle / "runtime" / "bundle_manifest.py"), str(bundle)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.startswith("OK ")


def test_tampered_file_is_rejected(tmp_path, fp32_models):
    bundle = small_bundle(tmp_path / "bundle", {"fp32": fp32_models})
    OCRPipeline(bundle)  # intact: loads
    with open(bundle / "models" / "recognizer.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match=r"recognizer\.onnx.*sha256 mismatch"):
        OCRPipeline(bundle)
    (bundle / "runtime" / "postprocess.py").write_text("# replaced\n")
    with pytest.raises(BundleError, match="and 1 more"):
        OCRPipeline(bundle)
    # meta edits without re-sealing are caught by the bundle hash
    bundle2 = small_bundle(tmp_path / "b2", {"fp32": fp32_models})
    doc = json.loads((bundle2 / "manifest.json").read_text())
    doc["postprocess"]["box_thresh"] = 0.99
    (bundle2 / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="bundle_hash"):
        OCRPipeline(bundle2)


def test_atomic_replacement_and_failed_build_keeps_old(tmp_path, fp32_models):
    out = tmp_path / "bundle"
    first = verify_bundle(small_bundle(out, {"fp32": fp32_models}))
    (out / "stale.txt").write_text("from an older build")
    second = verify_bundle(small_bundle(out, {"fp32": fp32_models}, target="rpi4"))
    assert second["bundle_hash"] != first["bundle_hash"] and second["target"] == "rpi4"
    assert not (out / "stale.txt").exists()
    # a failing build (model with the wrong class count for the charset) leaves the old bundle
    with pytest.raises(ValueError, match="classes"):
        small_bundle(out, {"fp32": fp32_models}, charset="0123456789")
    assert verify_bundle(out)["bundle_hash"] == second["bundle_hash"]
    assert sorted(os.listdir(tmp_path)) == ["bundle"]  # no temp or old dirs left behind
    with pytest.raises(ValueError, match="not a candidate"):
        small_bundle(out, {"fp32": fp32_models}, active="int8")
    with pytest.raises(ValueError, match="overwrite"):
        small_bundle(out, {"fp32": fp32_models}, extra_files={"runtime/x.py": fp32_models["detector"]})


def test_auto_candidates_layout_switch_and_extra_files(tmp_path, fp32_models):
    # a second candidate (a copy stands in for int8 here: the layout is what is tested)
    int8 = tmp_path / "int8"
    int8.mkdir()
    for path in fp32_models.values():
        shutil.copy(path, int8 / path.name)
    script = tmp_path / "build_engine.sh"
    script.write_text("#!/bin/sh\necho build\n")
    script.chmod(0o755)
    bundle = small_bundle(
        tmp_path / "bundle",
        {"fp32": fp32_models, "int8": {m: int8 / f"{m}.onnx" for m in ("detector", "recognizer")}},
        active="int8", extra_files={"build_engine.sh": script},
        extra_meta={"exclusions": ["/head/Conv"], "requested_precision": "auto"},
    )
    m = verify_bundle(bundle)
    assert m["candidates"]["int8"] == {"detector": "models/int8/detector.onnx",
                                       "recognizer": "models/int8/recognizer.onnx"}
    assert m["candidates"]["fp32"]["detector"] == "models/fp32/detector.onnx"
    assert m["precision"] == "int8" and m["exclusions"] == ["/head/Conv"]
    assert not (bundle / "models" / "detector.onnx").exists()
    assert os.access(bundle / "build_engine.sh", os.X_OK)
    assert OCRPipeline(bundle).precision == "int8"
    assert OCRPipeline(bundle, precision="fp32").precision == "fp32"
    with pytest.raises(BundleError, match="not in this bundle"):
        OCRPipeline(bundle, precision="fp16")
    m2 = set_active_precision(bundle, "fp32")
    assert m2["precision"] == "fp32" and m2["bundle_hash"] != m["bundle_hash"]
    m3 = update_bundle_meta(bundle, metrics={"word_accuracy": 0.5})
    m4 = update_bundle_meta(bundle, metrics={"latency_ms": 12.0})
    assert m4["metrics"] == {"word_accuracy": 0.5, "latency_ms": 12.0}
    assert verify_bundle(bundle)["bundle_hash"] == m4["bundle_hash"] != m3["bundle_hash"]
    assert OCRPipeline(bundle).precision == "fp32"
