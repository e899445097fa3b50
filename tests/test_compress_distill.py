"""Distillation in the fine-tune after pruning: the real tasks through fit(), a frozen teacher."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training_tasks import _crops, _manifest

from engine.compress.distill import Distilled, distill_distance
from engine.compress.prune import prune_model
from engine.data.manifest import load_image_rgb, read_crop_labels
from engine.runtime.preprocess import recognizer_input
from engine.training.loop import TrainConfig, fit
from engine.training.tasks import DetectorTask, RecognizerTask


def _config(run_dir: Path, epochs: int, batch_size: int) -> TrainConfig:
    return TrainConfig(run_dir=str(run_dir), epochs=epochs, batch_size=batch_size, lr=1e-3,
                       tensorboard=False, tty=False, seed=3)


def test_distance_is_zero_only_for_the_teachers_own_output() -> None:
    logits = torch.randn(2, 7, 5)
    assert float(distill_distance(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_distance(logits + torch.randn(2, 7, 5), logits)) > 0.01
    prob = torch.rand(1, 1, 8, 8)
    same = float(distill_distance({"prob": prob}, prob))
    assert float(distill_distance({"prob": 1 - prob}, prob)) > same  # BCE is smallest at the target


def test_detector_fine_tune_logs_the_distillation_and_leaves_the_teacher(tmp_path: Path) -> None:
    task = DetectorTask(_manifest(tmp_path), backbone="mobilenetv3", train_size=64, input_size=128)
    teacher = copy.deepcopy(task.model).eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    task.model, _ = prune_model(task.model, torch.zeros(1, 3, 64, 64), 0.3)
    student = task.model
    fit(Distilled(task, teacher, 1.0), _config(tmp_path / "run", 1, 2))
    assert task.model is student  # fit's writes reach the wrapped task
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "train_loss_distill" in header and "train_loss_prob" in header
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


def _kl_to(teacher: torch.nn.Module, student: torch.nn.Module, crops_dir: Path) -> float:
    crops = [load_image_rgb(p) for p, _ in read_crop_labels(crops_dir)]
    x = torch.from_numpy(recognizer_input(crops, 32, 128))
    with torch.no_grad():
        return float(distill_distance(student.eval()(x), teacher.eval()(x)))


def test_distillation_pulls_the_pruned_recognizer_towards_its_teacher(tmp_path: Path) -> None:
    """Same pruned start, same seed, same batches: with the teacher's term the student ends
    closer to the teacher than with the labels alone."""
    charset = "0123456789ABC"
    _crops(tmp_path / "crops", "train", ["AB12", "C3", "1A0", "B", "CAB9", "77", "A1", "9C0B"])
    torch.manual_seed(0)
    teacher = RecognizerTask(tmp_path / "crops", charset, "crnn", "conv", 32, 128).model.eval()
    example = torch.from_numpy(np.zeros((1, 3, 32, 96), np.float32))
    pruned, _ = prune_model(copy.deepcopy(teacher), example, 0.3)
    distances = {}
    for weight in (0.0, 10.0):
        task = RecognizerTask(tmp_path / "crops", charset, "crnn", "conv", 32, 128,
                              model=copy.deepcopy(pruned))
        trainer = Distilled(task, teacher, weight) if weight else task
        fit(trainer, _config(tmp_path / f"run{weight}", 3, 4))
        distances[weight] = _kl_to(teacher, task.model, tmp_path / "crops" / "train")
    assert distances[10.0] < 0.8 * distances[0.0], distances
