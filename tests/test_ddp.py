"""Two gloo processes under torchrun train the toy task: same weights on both ranks, rank 0 saves."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from engine.training import ddp, launch
from engine.training.checkpoint import load_checkpoint
from engine.training.loop import TrainConfig

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def test_sampler_shards_cover_the_epoch_and_depend_only_on_seed_and_epoch() -> None:
    shards = []
    for rank in range(3):
        s = ddp.EpochShardSampler(10, seed=5, rank=rank, world_size=3)
        s.set_epoch(2)
        shards.append(s.indices())
        assert len(s) == 4
    assert {i for shard in shards for i in shard} == set(range(10))
    s = ddp.EpochShardSampler(10, seed=5)
    s.set_epoch(2)
    again = ddp.EpochShardSampler(10, seed=5)
    again.set_epoch(2)
    assert s.indices() == again.indices()
    again.set_epoch(3)
    assert s.indices() != again.indices()


def test_two_gloo_processes_end_identical(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cfg = TrainConfig(
        run_dir=str(run_dir),
        epochs=2,
        batch_size=4,
        lr=1e-2,
        seed=3,
        deterministic=True,
        tensorboard=False,
        tty=False,
        device="cpu",
    )
    spec = launch.write_spec(
        tmp_path / "spec.json",
        "toy_training:make_ddp_task",
        {"out_dir": str(tmp_path), "n": 24},
        cfg.to_dict(),
    )
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = launch.launch(spec, 2, env=env, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key

    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 2
    # 24 samples / 2 ranks / batch 4 -> 3 steps per epoch
    assert ckpt["step"] == 6
    for key in w0:
        assert torch.equal(ckpt["model"][key], w0[key]), key
    assert "x2 processes" in (run_dir / "train.log").read_text()
