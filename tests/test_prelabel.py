"""Pre-labelling round trip: bundle predictions -> labels in each format -> the project's readers.

The bundle is the hand-made one of tests/test_runtime_pipeline.py (real ONNX models in real
onnxruntime sessions whose output is known exactly: a red box on black reads as the letter of
its green level), so every image yields lines, and the text confidences differ from line to
line (B 0.30, C 0.31, A 0.37, D 0.39), which lets a threshold of 0.35 flag exactly B and C.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_runtime_pipeline import CHARSET, _plate, make_hand_bundle

from engine.cli import main
from engine.data.formats import Icdar2015Reader, LabelStudioReader, PPOCRLabelReader
from engine.data.prepare import prepare_dataset
from engine.prelabel import PrelabelError, prelabel
from engine.runtime.pipeline import OCRPipeline

MIN_SCORE = 0.35


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    # the deployed bundle drops lines below 0.35; pre-labelling must still show them
    return make_hand_bundle(tmp_path_factory.mktemp("hand"), min_text_score=0.35)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("incoming")
    plate, _ = _plate()
    cv2.imwrite(str(d / "plate.png"), cv2.cvtColor(plate, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(d / "blank.png"), np.zeros((60, 90, 3), np.uint8))  # nothing to read
    return d


@pytest.fixture(scope="module")
def expected(bundle, images) -> dict[str, list[dict]]:
    pipe = OCRPipeline(bundle)
    pipe.post_cfg = {**pipe.post_cfg, "min_text_score": 0.0}
    preds = {p.name: pipe.predict_path(p) for p in sorted(images.iterdir())}
    assert [ln["text"] for ln in preds["plate.png"]] == list("BDCAA") and preds["blank.png"] == []
    assert [ln["score"] < MIN_SCORE for ln in preds["plate.png"]] == [True, False, True, False, False]
    return preds


def _match(samples, expected, flag_as_ignore: bool, tol: float = 1e-3) -> None:
    got = {Path(s.image).name: s for s in samples}
    assert sorted(got) == sorted(expected)
    for name, lines in expected.items():
        sample = got[name]
        assert Path(sample.image).is_file()  # images copied where the reader looks for them
        assert [ln.text for ln in sample.lines] == [p["text"] for p in lines]
        for ln, p in zip(sample.lines, lines, strict=True):
            assert np.allclose(ln.points, p["points"], atol=tol), (name, ln.points, p["points"])
            assert ln.ignore == (flag_as_ignore and p["score"] < MIN_SCORE)


def test_icdar2015_round_trip_and_review_list(bundle, images, expected, tmp_path):
    res = prelabel(bundle, images, "icdar2015", tmp_path / "out", min_score=MIN_SCORE)
    assert (res.images, res.lines, res.flagged) == (2, 5, 2)
    _match(Icdar2015Reader().read(res.dataset_root), expected, flag_as_ignore=False)
    review = [r.split("\t") for r in res.review.read_text().splitlines()[1:]]
    assert [(r[0], r[1], r[4]) for r in review] == [("gt/gt_plate.txt", "1", "B"), ("gt/gt_plate.txt", "3", "C")]
    assert float(review[0][2]) < MIN_SCORE
    # the output is a dataset the data stage accepts as it is (next recipe's dataset.train)
    summary = prepare_dataset("icdar2015", res.dataset_root, None, tmp_path / "data", CHARSET, val_fraction=0.5)
    assert summary["splits"]["all"]["boxes"] == 5


def test_ppocrlabel_marks_low_confidence_difficult(bundle, images, expected, tmp_path):
    res = prelabel(bundle, images, "ppocrlabel", tmp_path / "out", min_score=MIN_SCORE)
    _match(PPOCRLabelReader().read(res.dataset_root), expected, flag_as_ignore=True)
    rows = dict(line.split("\t") for line in res.label_file.read_text().splitlines())
    boxes = json.loads(rows["images/plate.png"])
    assert [b["difficult"] for b in boxes] == [True, False, True, False, False]


def test_labelstudio_predictions_with_scores_read_back_once_accepted(bundle, images, expected, tmp_path):
    res = prelabel(bundle, images, "labelstudio", tmp_path / "out", min_score=MIN_SCORE)
    tasks = json.loads(res.label_file.read_text())
    plate = next(t for t in tasks if t["data"]["image"].endswith("plate.png"))
    assert "annotations" not in plate  # pre-annotations, not finished work
    (pred,) = plate["predictions"]
    assert pred["model_version"].startswith("hand:local-cpu:fp32:")
    assert 0.3 < pred["score"] < 0.4
    texts = [r for r in pred["result"] if r["type"] == "textarea"]
    assert [r["value"]["text"] for r in texts] == [["B"], ["D"], ["C"], ["A"], ["A"]]
    assert [("meta" in r) for r in texts] == [True, False, True, False, False]
    assert "low confidence 0.30" in texts[0]["meta"]["text"][0]
    assert all(0 < r["score"] < 1 for r in pred["result"])
    # an annotator submits every task unchanged: Label Studio exports it as an annotation
    for task in tasks:
        task["annotations"] = [{"result": task.pop("predictions")[0]["result"]}]
    res.label_file.write_text(json.dumps(tasks))
    _match(LabelStudioReader().read(res.dataset_root), expected, flag_as_ignore=False, tol=1e-6)


def test_cli_and_errors(bundle, images, tmp_path, capsys):
    out = tmp_path / "labels"
    argv = ["prelabel", "--bundle", str(bundle), str(images), "--format", "ppocrlabel", "--out", str(out),
            "--min-score", str(MIN_SCORE)]
    assert main(argv) == 0
    assert "2 images, 5 lines, 2 flagged for review" in capsys.readouterr().out
    assert main(argv) == 1  # never merged into an existing folder
    assert "not an empty directory" in capsys.readouterr().err
    with pytest.raises(PrelabelError, match="not a directory of images"):
        prelabel(bundle, tmp_path / "nothing", "icdar2015", tmp_path / "o2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrelabelError, match="no images"):
        prelabel(bundle, tmp_path / "empty", "icdar2015", tmp_path / "o3")
    with pytest.raises(PrelabelError, match="manifest"):
        prelabel(tmp_path / "empty", images, "icdar2015", tmp_path / "o4")
    with pytest.raises(PrelabelError, match="cannot pre-label as 'labelimg'"):
        prelabel(bundle, images, "voc", tmp_path / "o5")
