"""The training loop, schedules and run-directory outputs, on a tiny real model (CPU)."""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import pytest
import torch
import toy_training as toy  # tests/ is on sys.path, as for the other shared test helpers
from torch import nn

from engine.training.checkpoint import load_checkpoint, save_checkpoint
from engine.training.loop import TrainConfig, TrainingError, fit
from engine.training.schedule import LRSchedule, ScheduleError, build_optimizer, make_schedule


def _cfg(tmp_path: Path, **kw) -> TrainConfig:
    base = {
        "run_dir": str(tmp_path),
        "epochs": 3,
        "batch_size": 8,
        "lr": 1e-2,
        "tensorboard": False,
        "tty": False,
    }
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------------------------------------
# schedules and optimizers


def test_cosine_with_linear_warmup() -> None:
    s = make_schedule("cosine", 1e-3, epochs=10, iters_per_epoch=10, min_lr=1e-5, warmup_iters=10)
    assert s.total_iters == 100
    assert s.lr_at(0) == pytest.approx(1e-3 * 0.01)
    assert s.lr_at(5) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert s.lr_at(10) == pytest.approx(1e-3)
    assert s.lr_at(55) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert s.lr_at(100) == pytest.approx(1e-5)
    lrs = [s.lr_at(i) for i in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))  # monotone after warm-up


def test_constant_and_step_schedules_and_state() -> None:
    c = make_schedule("constant", 2e-4, epochs=3, iters_per_epoch=5)
    assert {c.lr_at(i) for i in range(15)} == {2e-4}
    s = make_schedule("step", 1.0, epochs=6, iters_per_epoch=2, step_epochs=2, gamma=0.5)
    assert [s.lr_at(i) for i in (0, 3, 4, 8, 11, 12)] == [1.0, 1.0, 0.5, 0.25, 0.25, 0.125]
    s.step = 7
    again = LRSchedule.from_state_dict(s.state_dict())
    assert again == s and again.current_lr == 0.5
    with pytest.raises(ScheduleError, match="known: cosine"):
        make_schedule("cosin", 1e-3, 1, 1)
    with pytest.raises(ScheduleError, match="known: adam"):
        build_optimizer("adamax", [nn.Parameter(torch.zeros(1))])


def test_optimizers_by_name() -> None:
    p = [nn.Parameter(torch.zeros(2))]
    assert isinstance(build_optimizer("Adam", p), torch.optim.Adam)
    assert isinstance(build_optimizer("adamw", p), torch.optim.AdamW)
    sgd = build_optimizer("sgd", p, lr=0.1, momentum=0.9)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["nesterov"]
    assert build_optimizer("adam", p).param_groups[0]["lr"] == 2e-4  # the default


# ---------------------------------------------------------------------------------------------
# the loop


def test_fit_trains_and_writes_the_run_directory(tmp_path: Path) -> None:
    torch.manual_seed(0)
    task = toy.ToyTask()
    result = fit(task, _cfg(tmp_path, epochs=4, save_every=2, warmup_iters=2))
    assert (result.epoch, result.step) == (4, 24)
    assert result.metric == "neg_mse" and result.best_epoch is not None
    ck = tmp_path / "checkpoints"
    assert {p.name for p in ck.iterdir()} == {
        "last.pt",
        "last.pt.sha256",
        "best.pt",
        "best.pt.sha256",
        "epoch_0002.pt",
        "epoch_0002.pt.sha256",
        "epoch_0004.pt",
        "epoch_0004.pt.sha256",
    }
    last = load_checkpoint(ck / "last.pt")
    assert last["epoch"] == 4 and last["meta"] == {"arch": "toy"}
    assert last["config"]["lr"] == 1e-2
    best = load_checkpoint(ck / "best.pt")
    assert best["epoch"] == result.best_epoch
    assert best["metrics"]["neg_mse"] == pytest.approx(result.best_metric)
    with open(tmp_path / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert {"lr", "train_loss", "val_neg_mse", "time_s"} <= set(rows[0])
    # the model learned something
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = (tmp_path / "train.log").read_text()
    assert "epoch 1 iter" in log and "48 samples, 6 iterations/epoch" in log


def test_best_respects_min_mode(tmp_path: Path) -> None:
    class LossyVal(toy.ToyTask):
        metric = "val_loss"
        metric_mode = "min"

        def __init__(self) -> None:
            super().__init__()
            self.values = iter([3.0, 1.0, 2.0])

        def validate(self, model):
            return {"val_loss": next(self.values)}

    result = fit(LossyVal(), _cfg(tmp_path))
    assert (result.best_epoch, result.best_metric) == (2, 1.0)
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["epoch"] == 2


def test_gradient_clipping_bounds_the_update(tmp_path: Path) -> None:
    task = toy.ToyTask()
    before = [p.detach().clone() for p in task.model.parameters()]
    fit(
        task,
        _cfg(
            tmp_path,
            epochs=1,
            optimizer="sgd",
            momentum=0.0,
            lr=1.0,
            schedule="constant",
            grad_clip=1e-3,
            limit_train_batches=1,
        ),
    )
    delta = torch.sqrt(
        sum(
            ((p.detach() - b) ** 2).sum()
            for p, b in zip(task.model.parameters(), before, strict=True)
        )
    )
    assert 0 < float(delta) <= 1e-3 + 1e-7


def test_init_reuses_weights_and_reports_shape_mismatch(tmp_path: Path) -> None:
    src = toy.ToyTask(num_classes=3)
    save_checkpoint(tmp_path / "pre.pt", {"model": src.model.state_dict()})
    task = toy.ToyTask(num_classes=1)
    fit(
        task,
        _cfg(
            tmp_path / "run",
            epochs=1,
            init=str(tmp_path / "pre.pt"),
            limit_train_batches=1,
            lr=1e-9,
            schedule="constant",
        ),
    )
    log = (tmp_path / "run" / "train.log").read_text()
    assert "skipped (shape mismatch): 3.weight [3, 16]->[1, 16], 3.bias [3]->[1]" in log
    assert torch.allclose(task.model[0].weight, src.model[0].weight, atol=1e-6)


def test_steps_per_epoch_beyond_one_pass_is_said(tmp_path: Path) -> None:
    """An epoch is at most one pass: a larger steps_per_epoch runs fewer steps, and the log says so."""
    result = fit(toy.ToyTask(), _cfg(tmp_path, epochs=1, limit_train_batches=10_000))
    log = (tmp_path / "train.log").read_text()
    assert f"an epoch runs {result.step} steps (raise epochs for more)" in log
    assert 0 < result.step < 10_000


def test_tty_progress_and_errors(tmp_path: Path) -> None:
    fit(toy.ToyTask(), _cfg(tmp_path / "tty", epochs=1, tty=True))
    assert (tmp_path / "tty" / "checkpoints" / "last.pt").exists()
    with pytest.raises(TrainingError, match="empty"):
        fit(toy.ToyTask(n=0), _cfg(tmp_path / "empty"))

    class Diverged(toy.ToyTask):
        def compute_loss(self, model, batch):
            loss, parts = super().compute_loss(model, batch)
            return loss * math.nan, parts

    with pytest.raises(TrainingError, match="non-finite"):
        fit(Diverged(), _cfg(tmp_path / "nan", epochs=1))


def test_task_without_validation_keeps_best_as_last(tmp_path: Path) -> None:
    class NoVal(toy.ToyTask):
        metric = None
        validate = None

    result = fit(NoVal(), _cfg(tmp_path, epochs=2))
    assert result.best_epoch == 2
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["epoch"] == 2


def test_worker_augmentation_is_reproducible(tmp_path: Path) -> None:
    """With DataLoader workers, two identical runs still end with identical weights."""
    weights = []
    for name in ("a", "b"):
        torch.manual_seed(0)
        task = toy.ToyTask()
        fit(task, _cfg(tmp_path / name, epochs=2, num_workers=2, deterministic=True))
        weights.append(task.model.state_dict())
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key


# ---------------------------------------------------------------------------------------------
# weight averaging


def test_ema_averages_float_state_and_copies_counters() -> None:
    from engine.training.ema import ModelEMA

    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9)
    start = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(4, 2))  # moves the running stats and num_batches_tracked
    ema.update(model)
    d = 2 / 11  # first update: min(0.9, (1 + 1) / (10 + 1)), the ramp, not 0.9
    assert ema.current_decay() == pytest.approx(d)
    live = model.state_dict()
    for name, avg in ema.model.state_dict().items():
        if avg.dtype.is_floating_point:
            assert torch.allclose(avg, d * start[name] + (1 - d) * live[name]), name
        else:
            assert torch.equal(avg, live[name]), name
    ema.updates = 10_000
    assert ema.current_decay() == 0.9
    assert not any(p.requires_grad for p in ema.model.parameters())
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(model, decay=1.0)


def test_fit_with_ema_scores_and_saves_the_average_and_resumes_exactly(tmp_path: Path) -> None:
    cfg = {"epochs": 4, "schedule": "constant", "ema_decay": 0.9}
    torch.manual_seed(0)
    task = toy.ToyTask()
    whole = fit(task, _cfg(tmp_path / "whole", **cfg))
    last = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    assert last["ema"] == {"decay": 0.9, "updates": 24}
    assert any(not torch.equal(last["model"][k], last["raw_model"][k]) for k in last["model"])
    # the in-memory model ends as the average, and the average is what validation scored
    assert all(torch.equal(v, last["model"][k]) for k, v in task.model.state_dict().items())
    best = load_checkpoint(tmp_path / "whole" / "checkpoints" / "best.pt")
    scored = toy.ToyTask()
    scored.model.load_state_dict(best["model"])
    with torch.no_grad():
        assert scored.validate(scored.model.eval())["neg_mse"] == pytest.approx(whole.best_metric)

    torch.manual_seed(0)
    fit(toy.ToyTask(), _cfg(tmp_path / "split", **{**cfg, "epochs": 2}))
    fit(toy.ToyTask(), _cfg(tmp_path / "split", **cfg))
    resumed = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    assert resumed["ema"] == last["ema"]
    for key in ("model", "raw_model"):
        assert all(torch.equal(resumed[key][k], last[key][k]) for k in last[key]), key
