"""A tiny, real training task for the loop, resume and DDP tests (no stubs: it trains).

It draws from every RNG the loop promises to restore — torch (noise and dropout), numpy and
Python ``random`` (augmentation) — so any RNG or shuffle-order bug in resume shows up as
different weights. Also runnable as a script: ``python tests/toy_training.py RUN_DIR EPOCHS``.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.training.loop import TrainConfig, fit
from engine.training.seed import seed_everything


class ToyData(Dataset):
    def __init__(self, n: int = 48, dim: int = 8):
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, dim, generator=g)
        w = torch.randn(dim, 1, generator=g)
        self.y = (self.x @ w).squeeze(1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        noise = 0.01 * torch.randn(self.x.shape[1])
        scale = 1.0 + 0.05 * float(np.random.uniform(-1, 1)) + 0.01 * random.random()
        return {"x": self.x[i] * scale + noise, "y": self.y[i]}


class ToyTask:
    metric = "neg_mse"

    def __init__(self, dim: int = 8, sleep_s: float = 0.0, n: int = 48, num_classes: int = 1):
        self.model = nn.Sequential(
            nn.Linear(dim, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, num_classes)
        )
        self.data = ToyData(n, dim)
        self.sleep_s = sleep_s
        g = torch.Generator().manual_seed(99)
        self.val_x = torch.randn(16, dim, generator=g)
        self.val_y = torch.zeros(16)

    def train_dataset(self) -> Dataset:
        return self.data

    def compute_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        if self.sleep_s:
            time.sleep(self.sleep_s)
        pred = model(batch["x"])[:, 0]
        loss = torch.mean((pred - batch["y"]) ** 2)
        return loss, {"mse": float(loss.detach())}

    def validate(self, model: nn.Module) -> dict[str, float]:
        pred = model(self.val_x)[:, 0]
        return {"neg_mse": -float(torch.mean((pred - self.val_y) ** 2))}

    def checkpoint_meta(self) -> dict:
        return {"arch": "toy"}


def make_task(**kwargs) -> ToyTask:
    return ToyTask(**kwargs)


def make_ddp_task(out_dir: str, **kwargs) -> ToyTask:
    """The toy task for torchrun: at exit each rank saves the weights it ended with."""
    import atexit
    import os

    task = ToyTask(**kwargs)

    def dump() -> None:
        rank = os.environ.get("RANK", "0")
        torch.save(task.model.state_dict(), Path(out_dir) / f"rank{rank}.pt")

    atexit.register(dump)
    return task


def main() -> None:
    run_dir, epochs = sys.argv[1], int(sys.argv[2])
    sleep_s = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    torch.set_num_threads(1)
    seed_everything(7, deterministic=True)
    task = ToyTask(sleep_s=sleep_s)
    cfg = TrainConfig(
        run_dir=run_dir,
        epochs=epochs,
        batch_size=8,
        lr=1e-2,
        schedule="cosine",
        warmup_iters=4,
        seed=7,
        deterministic=True,
        save_every=2,
        tensorboard=False,
        tty=False,
        log_every=1000,
    )
    result = fit(task, cfg)
    out = {
        "epoch": result.epoch,
        "step": result.step,
        "lr": result.lr,
        "resumed_from": result.resumed_from,
        "best_epoch": result.best_epoch,
    }
    Path(run_dir, "result.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main()
