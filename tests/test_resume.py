"""Exact resume: a run SIGKILLed after its first checkpoint, rerun, equals an uninterrupted run.

Both runs are subprocesses with the same environment (one thread, deterministic, CPU,
num_workers=0), so the only difference between them is the kill.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import toy_training as toy  # tests/ is on sys.path, as for the other shared test helpers

from engine.training.checkpoint import load_checkpoint

SCRIPT = Path(__file__).with_name("toy_training.py")
EPOCHS = 6
SLEEP = "0.04"  # per iteration: 6 iterations -> ~0.25 s per epoch, time to kill mid-run


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    return env


def _start(run_dir: Path, sleep: str = SLEEP) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(run_dir), str(EPOCHS), sleep],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


def test_killed_run_resumes_bit_identical(tmp_path: Path) -> None:
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    full = _start(full_dir)  # runs in parallel with the one we kill
    victim = _start(killed_dir)
    sidecar = killed_dir / "checkpoints" / "last.pt.sha256"
    deadline = time.monotonic() + 40
    while not sidecar.exists():
        assert victim.poll() is None, victim.stdout.read().decode() if victim.stdout else ""
        assert time.monotonic() < deadline, "no checkpoint within 40 s"
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    assert victim.returncode == -signal.SIGKILL
    assert not (killed_dir / "result.json").exists(), "the run finished before it was killed"
    killed_at = load_checkpoint(killed_dir / "checkpoints" / "last.pt")["epoch"]
    assert 1 <= killed_at < EPOCHS

    # Rerun to completion (no sleep needed now) and wait for the uninterrupted run.
    rerun = subprocess.run(
        [sys.executable, str(SCRIPT), str(killed_dir), str(EPOCHS), "0"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"resumed at epoch {killed_at}" in rerun.stdout
    out, _ = full.communicate(timeout=60)
    assert full.returncode == 0, out.decode()

    a = json.loads((full_dir / "result.json").read_text())
    b = json.loads((killed_dir / "result.json").read_text())
    assert b["resumed_from"] == killed_at
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (EPOCHS, EPOCHS * 6)
    assert a["lr"] == b["lr"]

    ca, cb = _weights(full_dir), _weights(killed_dir)
    assert ca["epoch"] == cb["epoch"] == EPOCHS
    assert ca["schedule"] == cb["schedule"]
    for key, tensor in ca["model"].items():
        assert torch.equal(tensor, cb["model"][key]), key
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    for pid, state in sa.items():
        for name, value in state.items():
            assert torch.equal(value, sb[pid][name]), (pid, name)
    # The CSV history is one consistent run: epochs 1..N once each.
    lines = (killed_dir / "metrics.csv").read_text().strip().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in lines] == list(range(1, EPOCHS + 1))




def test_resume_keeps_checkpoint_lr_and_epoch_over_config(tmp_path: Path) -> None:
    """PaddleOCR#2827: a resumed run must not restart at epoch 0 nor take its LR from the config."""
    from engine.training.loop import TrainConfig, fit

    cfg = TrainConfig(
        run_dir=str(tmp_path),
        epochs=4,
        batch_size=8,
        lr=1e-2,
        schedule="constant",
        tensorboard=False,
        tty=False,
    )
    first = fit(toy.ToyTask(), TrainConfig(**{**cfg.to_dict(), "epochs": 2}))
    assert (first.epoch, first.step) == (2, 12)
    task = toy.ToyTask()
    second = fit(task, TrainConfig(**{**cfg.to_dict(), "lr": 0.5}))
    assert second.resumed_from == 2
    assert (second.epoch, second.step) == (4, 24)
    assert second.lr == 1e-2
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["schedule"]["lr"] == 1e-2
    assert ckpt["schedule"]["step"] == 24
    assert [r["epoch"] for r in second.history] == [1, 2, 3, 4]


def test_resume_falls_back_when_last_is_corrupt(tmp_path: Path) -> None:
    """A kill between last.pt and its sidecar: resume from the newest checkpoint that verifies."""
    from engine.training.loop import TrainConfig, fit

    cfg = TrainConfig(
        run_dir=str(tmp_path), epochs=2, batch_size=8, save_every=1, tensorboard=False, tty=False
    )
    fit(toy.ToyTask(), cfg)
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])  # truncated
    result = fit(toy.ToyTask(), TrainConfig(**{**cfg.to_dict(), "epochs": 3}))
    assert result.resumed_from == 2  # epoch_0002.pt
    assert result.epoch == 3
    log = (tmp_path / "train.log").read_text()
    assert "does not match" in log and "last.pt" in log
