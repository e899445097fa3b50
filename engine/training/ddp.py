"""Inside a distributed training run: the process group and the per-rank data shard.

`engine.training.loop.fit` asks `context` where this process stands; torchrun's environment
(see `engine.training.launch`) says it, NCCL on CUDA and gloo on CPU. Only rank 0 writes
checkpoints and logs; every rank shuffles with the same per-epoch generator and takes its own
shard (`EpochShardSampler`), so the global order is the same on every restart. Starting the
processes is `engine.training.launch`'s job: it needs the loop, and the loop needs this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

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
