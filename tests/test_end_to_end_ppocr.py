"""The default path for real, on a tiny generated dataset: PP-OCRv6 from the rapidocr wheel's
weights, cut to the recipe's charset, fine-tuned a few steps, pruned, quantization-aware
fine-tuned, exported (opset 17, and opset 13 for the Jetson Nano's TensorRT 8.2), built for an
int8 CPU target and a TensorRT target with a language model of the training labels, verified
through the device runtime and checked.

A few steps teach little; the pretrained models already read, so the floors below are real
reading (a stage that broke a model would fall through them).
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from pipeline_run import run_recipe_text

from engine.graph import Pipeline

CHARSET = "0-9A-Za-z -:./%()#+,"
RECIPE = f"""\
name: tiny-ppocr
dataset:
  synthetic: {{count: 6, val_count: 2, seed: 23}}
  charset: "{CHARSET}"
models:
  detector: {{arch: ppocrv6, input_size: 640, train_size: 256}}
  recognizer: {{arch: ppocrv6, max_width: 640}}
  decoder: {{type: lm, split_lines: 1, join_lines: 1}}
train:
  epochs: 1
  lr: 5.0e-5
  warmup_epochs: 0
  detector: {{batch_size: 4, steps_per_epoch: 1, backbone_lr: 0.1}}
  recognizer: {{batch_size: 8, steps_per_epoch: 2, backbone_lr: 0}}
optimize:
  prune: {{amount: 0.2, finetune_epochs: 1, finetune_warmup: 0}}
  quantize: {{qat: {{models: [recognizer], steps_per_epoch: 2}}}}
  calibration: {{samples: 4}}
targets: [local-cpu, jetson-nano]
verify:
  max_drop: 1.0
  samples: 2
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return run_recipe_text(tmp_path_factory.mktemp("e2e-ppocr"), RECIPE)


def test_every_stage_ran_from_the_pretrained_weights(finished: Pipeline) -> None:
    summary = json.loads((finished.run_dir / "summary.json").read_text())
    assert summary["failed"] == {}
    assert {"qat", "prune", "export", "check:local-cpu", "verify:jetson-nano"} <= set(summary["executed"])
    ev = summary["metrics"]["evaluate"]
    # measured here: hmean 0.95, crop line accuracy 0.8 (zero-shot PP-OCRv6 on generated plates)
    assert ev["hmean"] >= 0.7 and ev["whitespace_insensitive_accuracy"] >= 0.6, ev
    assert ev["e2e_line_accuracy"] >= 0.3, ev
    check = summary["metrics"]["check:local-cpu"]
    assert check["hmean"] >= 0.6, check
    qat = summary["metrics"]["qat"]
    assert qat["qmax"] == 64 and qat["recognizer_layers"] > 50  # local-cpu: reduce_range
    assert summary["metrics"]["prune"]["detector_params_after"] < summary["metrics"]["prune"]["detector_params_before"]


def test_the_classifier_is_cut_to_the_charset(finished: Pipeline) -> None:
    from engine.compress.prune import load_pruned
    from engine.data.charset import expand_charset

    model, extra = load_pruned(finished.run_dir / "qat" / "recognizer.qat.pt")
    charset = expand_charset(CHARSET)
    assert model.classifier.out_features == len(charset) + 1 == extra["meta"]["num_classes"]
    assert extra["meta"]["charset"] == charset


def test_the_bundle_carries_the_models_input_convention(finished: Pipeline) -> None:
    manifest = json.loads((finished.run_dir / "verify" / "local-cpu" / "bundle" / "manifest.json").read_text())
    assert manifest["detector"]["channels"] == manifest["recognizer"]["channels"] == "bgr"
    assert manifest["recognizer"]["downsample"] == 8 and manifest["recognizer"]["height"] == 48
    assert manifest["recognizer"]["mean"] == [0.5, 0.5, 0.5]
    # the language model of the 6 training plates' lines, sealed with the built bundle, and the
    # words they keep as lines of their own and the labels of several words
    built = json.loads((finished.run_dir / "build" / "local-cpu" / "bundle" / "manifest.json").read_text())
    decoder = built["recognizer"]["decoder"]
    assert decoder["type"] == "lm" and decoder["lines"] > 30 and decoder["file"] in built["files"]
    assert decoder["split_lines"]["min_count"] == 1 and decoder["split_lines"]["words"]
    assert decoder["join_lines"]["min_count"] == 1 and decoder["join_lines"]["labels"]
    # verify kept the language model only if it read at least as many val lines as greedy
    verified = manifest["recognizer"]["decoder"]
    results = manifest["verify"]["candidates"].values()
    with_lm = sum(m["e2e_line_accuracy"] for m in results)
    greedy = sum(m["greedy_e2e_line_accuracy"] for m in results)
    if verified["type"] == "lm":
        assert with_lm >= greedy and verified["file"] in manifest["files"]
    else:
        assert "lm.json" not in manifest["files"] and verified["dropped"]["type"] == "lm"
    assert verified["split_lines"] == decoder["split_lines"] and verified["join_lines"] == decoder["join_lines"]


def test_the_jetson_nano_gets_models_its_tensorrt_parses(finished: Pipeline) -> None:
    from engine.compress.tensorrt import check_onnx_ops

    bundle = finished.run_dir / "verify" / "jetson-nano" / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    for precision, models in manifest["candidates"].items():
        for name, rel in models.items():
            model = onnx.load(str(bundle / rel))
            assert model.opset_import[0].version == 13, (precision, name)
            assert "LayerNormalization" not in {n.op_type for n in model.graph.node}
            assert check_onnx_ops(bundle / rel, "8.2") == [], (precision, name)
    plan = manifest["tensorrt"]["recognizer"]
    assert plan["shapes"]["max"][2] == 48 and plan["shapes"]["max"][3] == 640
    # the opset 17 export is what the CPU targets got: TensorRT 8.2 would refuse it
    assert check_onnx_ops(Path(finished.run_dir, "export", "recognizer.onnx"), "8.2")


def test_epochs_zero_reads_at_the_recipes_line_height(finished: Pipeline, tmp_path: Path) -> None:
    """`epochs: 0` with `height: 32`: the pretrained 48-px weights ship as a 32-px model (the
    pool follows the height), not as a 48-px model behind a manifest that says 32."""
    import numpy as np
    import onnxruntime as ort

    from engine.data.charset import expand_charset
    from engine.recipe import load_recipe

    loaded = load_recipe(finished.loaded.path, [f"workdir={tmp_path}", "train.epochs=0",
                                                "models.recognizer.height=32", "optimize.prune.amount=0"])
    pipeline = Pipeline(loaded)
    report = pipeline.run(only=["export"])
    assert report.ok, report.failed
    result = json.loads((pipeline.run_dir / "train" / "recognizer" / "result.json").read_text())
    assert any("read at 32 px untrained" in note for note in result["notes"]), result["notes"]
    session = ort.InferenceSession(str(pipeline.run_dir / "export" / "recognizer.onnx"))
    logits = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, 32, 320), np.float32)})[0]
    assert logits.shape == (1, 40, len(expand_charset(CHARSET)) + 1)
