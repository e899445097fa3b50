"""Several GPUs (or several CPU processes) through torchrun and DistributedDataParallel.

``train.gpus: N > 1`` makes the train stage start ``python -m torch.distributed.run
--standalone --nproc_per_node N -m engine.training.ddp SPEC.json``; each process reads the JSON
spec, builds the task with the named factory (``"package.module:function"`` + kwargs), and runs
`engine.training.loop.fit`, which sees the process group and wraps the model in DDP. NCCL is used
on CUDA, gloo on CPU. Only rank 0 writes checkpoints and logs; every rank shuffles with the same
per-epoch generator and takes its own shard, so the global order is the same on every restart.

The spec is JSON (not pickle) so that a spec file can be read, diffed and hashed like a recipe.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from .checkpoint import atomic_write_bytes
from .seed import epoch_generator


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context() -> DistContext:
    """The current process's place in the process group (rank 0 of 1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(
            dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
        )
    return DistContext()


def init_from_env(timeout_s: float = 7200.0) -> DistContext:
    """Join the process group described by torchrun's environment variables (if any).

    The timeout is long because ranks > 0 wait in a barrier while rank 0 validates.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return context()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: float, device: torch.device | str = "cpu") -> float:
    """Mean of a float over ranks (used for logging the training loss)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class EpochShardSampler(Sampler[int]):
    """Shuffles with a generator seeded by (seed, epoch) and keeps this rank's shard.

    Like DistributedSampler, the index list is padded by wrapping so every rank gets the same
    number of samples (DDP requires equal step counts). With one process it is a plain seeded
    shuffle. The order depends on nothing but (seed, epoch): that is what makes resume exact.

    With ``keys`` (one sort key per sample, e.g. a crop's aspect ratio) and ``batch_size``, each
    rank's shuffled indices are cut into pools of `BUCKET_BATCHES` batches, every pool is sorted
    by key and split into batches, and the batches are shuffled: batches hold crops of similar
    width, so far less padding is computed, and the order is still a function of (seed, epoch).
    """

    BUCKET_BATCHES = 32

    def __init__(
        self, size: int, *, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1,
        keys: Sequence[float] | None = None, batch_size: int = 0,
    ):
        if keys is not None and len(keys) != size:
            raise ValueError(f"{len(keys)} sort keys for {size} samples")
        self.keys = list(keys) if keys is not None else None
        self.batch_size = int(batch_size)
        self.size = int(size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = max(1, world_size)
        self.epoch = 0
        self.per_rank = -(-self.size // self.world_size) if self.size else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> list[int]:
        if self.shuffle:
            order = torch.randperm(
                self.size, generator=epoch_generator(self.seed, self.epoch)
            ).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank * self.world_size
        if order and len(order) < total:
            order = (order * (total // len(order) + 1))[:total]
        mine = order[self.rank : total : self.world_size]
        if self.keys is None or self.batch_size < 2 or not self.shuffle:
            return mine
        keys, bs = self.keys, self.batch_size
        pool = bs * self.BUCKET_BATCHES
        batches = [
            chunk[i : i + bs]
            for start in range(0, len(mine), pool)
            for chunk in [sorted(mine[start : start + pool], key=lambda k: keys[k])]
            for i in range(0, len(chunk), bs)
        ]
        perm = torch.randperm(
            len(batches), generator=epoch_generator(self.seed + 1, self.epoch)
        ).tolist()
        full = [b for b in (batches[j] for j in perm) if len(b) == bs]
        ragged = [b for b in batches if len(b) < bs]  # only the last pool can leave one: keep it last
        return [i for b in full + ragged for i in b]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return self.per_rank


# ---------------------------------------------------------------------------------------------
# Launching


def write_spec(
    path: Path | str, factory: str, kwargs: dict[str, Any], config: dict[str, Any]
) -> Path:
    """Write the JSON spec that each torchrun process reads (atomically)."""
    path = Path(path)
    spec = {"factory": factory, "kwargs": kwargs, "config": config}
    atomic_write_bytes(path, json.dumps(spec, indent=2, default=str).encode("utf-8"))
    return path


def torchrun_command(spec: Path | str, nproc: int, extra: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={int(nproc)}",
        *extra,
        "-m",
        "engine.training.ddp",
        str(spec),
    ]


def launch(
    spec: Path | str,
    nproc: int,
    *,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    cwd: Path | str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``nproc`` training processes with torchrun; raises CalledProcessError on failure."""
    full_env = dict(os.environ)
    full_env.setdefault("OMP_NUM_THREADS", "1")
    if env:
        full_env.update(env)
    return subprocess.run(
        torchrun_command(spec, nproc),
        env=full_env,
        cwd=cwd,
        check=True,
        timeout=timeout,
        text=True,
        capture_output=True,
    )


def run_training(
    factory: str,
    kwargs: dict[str, Any],
    config: Any,
    gpus: int = 1,
    *,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> Any:
    """The one call a train stage makes: in this process for ``gpus <= 1``, else via torchrun.

    ``factory`` is ``"package.module:callable"`` building the task from ``kwargs`` (JSON-able),
    e.g. ``"engine.training.tasks:DetectorTask"``; ``config`` a `TrainConfig`. Returns a
    `FitResult` (for torchrun runs, read back from the checkpoints rank 0 wrote). The torchrun
    output goes to ``<run_dir>/torchrun.log``.
    """
    from .loop import fit, result_from_checkpoints
    from .seed import seed_everything

    if int(gpus) <= 1:
        seed_everything(config.seed, config.deterministic)
        return fit(resolve_factory(factory)(**kwargs), config)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = write_spec(run_dir / "ddp_spec.json", factory, kwargs, config.to_dict())
    try:
        proc = launch(spec, int(gpus), env=env, timeout=timeout)
    except subprocess.CalledProcessError as exc:
        (run_dir / "torchrun.log").write_text(
            (exc.stdout or "") + (exc.stderr or ""), encoding="utf-8"
        )
        tail = "\n".join(((exc.stdout or "") + (exc.stderr or "")).splitlines()[-30:])
        raise RuntimeError(
            f"torchrun with {gpus} processes failed ({exc.returncode}):\n{tail}"
        ) from None
    (run_dir / "torchrun.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    return result_from_checkpoints(run_dir)


def resolve_factory(name: str) -> Any:
    module_name, _, attr = name.partition(":")
    if not attr:
        raise ValueError(f"factory must look like 'package.module:function', got {name!r}")
    return getattr(importlib.import_module(module_name), attr)


def run_spec(spec_path: Path | str) -> Any:
    """Entry point of one torchrun process: join the group, build the task, fit."""
    from .loop import TrainConfig, fit
    from .seed import seed_everything

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    ctx = init_from_env()
    try:
        config = TrainConfig(**spec["config"])
        # Same seed on every rank so the model starts identical (DDP also broadcasts rank 0's).
        seed_everything(config.seed, config.deterministic)
        task = resolve_factory(spec["factory"])(**spec.get("kwargs", {}))
        result = fit(task, config)
        barrier()
        return result
    finally:
        if ctx.is_distributed:
            cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one process of a distributed training run")
    parser.add_argument("spec", help="JSON spec written by engine.training.ddp.write_spec")
    args = parser.parse_args(argv)
    run_spec(args.spec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
