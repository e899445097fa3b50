"""The real detector and recognizer tasks run through fit() on tiny synthetic data (CPU)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from engine.data.manifest import ManifestRecord, TextLine, write_manifest
from engine.training.checkpoint import load_checkpoint
from engine.training.loop import TrainConfig, fit
from engine.training.tasks import DetectorTask, RecognizerTask, model_from_checkpoint


def _manifest(tmp_path: Path) -> Path:
    records = []
    rng = np.random.default_rng(0)
    for i in range(4):
        img = np.full((96, 128, 3), 230, dtype=np.uint8)
        x, y = int(rng.integers(5, 50)), int(rng.integers(5, 50))
        quad = [[x, y], [x + 60, y], [x + 60, y + 24], [x, y + 24]]
        cv2.fillPoly(img, [np.array(quad, dtype=np.int32)], (10, 10, 10))
        path = tmp_path / f"img{i}.png"
        cv2.imwrite(str(path), img)
        lines = [TextLine(points=[[float(a), float(b)] for a, b in quad], text="AB12")]
        records.append(ManifestRecord(str(path), 128, 96, "", "val" if i == 3 else "train", lines))
    path = tmp_path / "manifest.jsonl"
    write_manifest(path, records)
    return path


def _crops(root: Path, split: str, texts: list[str]) -> None:
    d = root / split
    d.mkdir(parents=True)
    rows = []
    for i, text in enumerate(texts):
        crop = np.full((32, 16 + 14 * len(text), 3), 220, dtype=np.uint8)
        cv2.putText(crop, text, (4, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 2)
        cv2.imwrite(str(d / f"{i:06d}.png"), crop)
        rows.append(f"{i:06d}.png\t{text}")
    (d / "labels.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_detector_task_trains_and_validates(tmp_path: Path) -> None:
    task = DetectorTask(_manifest(tmp_path), backbone="mobilenetv3", train_size=64, input_size=128)
    cfg = TrainConfig(
        run_dir=str(tmp_path / "run"), epochs=1, batch_size=2, lr=1e-3, tensorboard=False, tty=False
    )
    result = fit(task, cfg)
    assert result.metric == "hmean" and result.step == 2
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert ckpt["meta"]["kind"] == "detector" and ckpt["meta"]["input_size"] == 128
    assert {"hmean", "precision", "recall"} <= set(ckpt["metrics"])
    assert "train_loss_prob" in (tmp_path / "run" / "metrics.csv").read_text()
    model, meta = model_from_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert meta["backbone"] == "mobilenetv3" and not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["model"][key]), key


def test_recognizer_task_trains_and_validates(tmp_path: Path) -> None:
    charset = "0123456789ABC"
    _crops(tmp_path / "crops", "train", ["AB12", "C3", "1A0", "B", "CAB9", "77"])
    _crops(tmp_path / "crops", "val", ["AB12", "C3"])
    task = RecognizerTask(tmp_path / "crops", charset, height=32, max_width=128)
    cfg = TrainConfig(
        run_dir=str(tmp_path / "run"), epochs=1, batch_size=3, lr=1e-3, tensorboard=False, tty=False
    )
    result = fit(task, cfg)
    assert result.metric == "word_accuracy" and result.step == 2
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["meta"]["charset"] == charset and ckpt["meta"]["num_classes"] == 14
    assert {"word_accuracy", "line_accuracy", "cer"} <= set(ckpt["metrics"])
    preds = task.predict(task.model.eval(), [np.full((32, 60, 3), 200, dtype=np.uint8)])
    assert isinstance(preds[0][0], str)
    model, _ = model_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert task.predict(model, [np.full((32, 60, 3), 200, dtype=np.uint8)]) == preds
