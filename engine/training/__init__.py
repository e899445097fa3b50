"""Training: the generic loop, checkpoints, schedules, datasets, metrics and DDP launching.

Typical use (what a train stage does)::

    from engine.training import TrainConfig, run_training

    cfg = TrainConfig(run_dir="runs/x/train/detector", epochs=120, batch_size=8, lr=2e-4)
    result = run_training("engine.training.tasks:DetectorTask",
                          {"manifest": "runs/x/data/manifest.jsonl", "backbone": "mobilenetv3"},
                          cfg, gpus=1)

The names below are re-exported lazily (``engine.training.metrics`` needs only numpy).
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> submodule; resolved on first access so that `engine.training.metrics` (numpy only)
# does not drag torch in through this package's import.
_EXPORTS = {
    "CheckpointError": "checkpoint",
    "CheckpointManager": "checkpoint",
    "init_from_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "run_training": "launch",
    "FitResult": "loop",
    "TrainConfig": "loop",
    "TrainingError": "loop",
    "fit": "loop",
    "result_from_checkpoints": "loop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
