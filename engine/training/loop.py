"""The model-agnostic training loop: `fit(task, config)`.

A *task* (detector or recognizer) supplies what differs between models; the loop owns everything
that must be identical for both: devices, AMP, the optimizer and LR schedule, gradient clipping,
the epoch/iteration counters, validation, checkpoints, exact resume, logs and DDP.

A task is any object with

* ``model: nn.Module``
* ``train_dataset() -> torch.utils.data.Dataset`` and optionally ``collate_fn``
* ``compute_loss(model, batch) -> (loss tensor, {name: float})`` — the batch is already on the
  training device (tensors inside dicts/lists/tuples are moved);
* ``validate(model) -> {name: float}`` (optional) — called under ``torch.no_grad()`` with the
  model in eval mode, on rank 0 only;
* ``metric: str | None`` — the key of ``validate``'s result that selects ``best.pt``
  (``metric_mode`` "max" unless the task or config says "min");
* ``checkpoint_meta() -> dict`` (optional) — plain data stored in every checkpoint (architecture,
  charset, input size) so export/evaluation can rebuild the model from the file alone.

Epochs are counted from 1; a checkpoint's ``epoch`` is the number of completed epochs, and its
``step`` the number of optimizer steps. Resume is exact: model, optimizer, GradScaler, schedule
position (the checkpointed schedule wins over the config) and RNG states come back; the shuffle
order and the global RNGs are re-derived at the start of every epoch from (seed, epoch, rank), so
epoch k of a resumed run sees the same batches and augmentations as the uninterrupted run.

With ``ema_decay`` > 0 a moving average of the weights (ema.py) is what validation scores, what
a checkpoint's ``model`` holds (so best.pt, export and init use it) and what ``task.model``
ends with; the trained weights travel beside it as ``raw_model`` for resume.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import ddp
from .checkpoint import FORMAT, CheckpointManager, init_from_checkpoint, unwrap
from .ema import ModelEMA
from .logs import RunLogger
from .schedule import LRSchedule, build_optimizer, make_schedule
from .seed import (
    capture_rng_state,
    epoch_generator,
    restore_rng_state,
    seed_everything,
    worker_init_fn,
)


class TrainingError(RuntimeError):
    """Training cannot go on (diverged loss, empty dataset, inconsistent resume)."""


@runtime_checkable
class Task(Protocol):
    model: nn.Module

    def train_dataset(self) -> Dataset: ...

    def compute_loss(
        self, model: nn.Module, batch: Any
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


@dataclass
class TrainConfig:
    """Every knob of one training run (plain data: it is stored in each checkpoint)."""

    run_dir: str
    epochs: int = 10
    batch_size: int = 8
    lr: float = 2e-4
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "cosine"
    min_lr: float = 1e-6
    warmup_epochs: float = 0.0
    warmup_iters: int | None = None
    step_epochs: int = 0
    gamma: float = 0.1
    grad_clip: float | None = 5.0
    amp: bool = True  # only ever on CUDA
    seed: int = 0
    deterministic: bool = False
    num_workers: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"
    save_every: int = 0  # also keep epoch_NNNN.pt every N epochs (0: never)
    val_every: int = 1
    metric_mode: str | None = None  # "max"/"min"; None: the task's, else "max"
    resume: bool = True  # continue from run_dir/checkpoints when present
    ema_decay: float = 0.0  # > 0: validate and save a moving average of the weights (ema.py)
    init: str | None = None  # fine-tuning: model weights from this checkpoint
    log_every: int = 20
    limit_train_batches: int | None = None
    drop_last: bool = False
    find_unused_parameters: bool = False
    tty: bool | None = None
    tensorboard: bool = True
    name: str = "train"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    epoch: int
    step: int
    lr: float
    best_metric: float | None
    best_epoch: int | None
    metric: str | None
    last: Path
    best: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and torch.cuda.is_available():
        return torch.device(f"cuda:{local_rank}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def move_to(obj: Any, device: torch.device) -> Any:
    """Move tensors nested in dicts/lists/tuples; leave everything else (strings, arrays) alone."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: move_to(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [move_to(v, device) for v in obj]
    if isinstance(obj, tuple):
        return tuple(move_to(v, device) for v in obj)
    return obj


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + int(rank) * 104_729) % (2**31 - 1)


def _loader(
    task: Any,
    dataset: Dataset,
    sampler: ddp.EpochShardSampler,
    cfg: TrainConfig,
    epoch: int,
    pin: bool,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=getattr(task, "collate_fn", None),
        drop_last=cfg.drop_last,
        pin_memory=pin,
        worker_init_fn=worker_init_fn if cfg.num_workers > 0 else None,
        generator=epoch_generator(cfg.seed, epoch),  # workers' base seeds come from here
    )


def _batches_per_epoch(n_samples: int, cfg: TrainConfig) -> int:
    n = n_samples // cfg.batch_size if cfg.drop_last else -(-n_samples // cfg.batch_size)
    if cfg.limit_train_batches:
        n = min(n, int(cfg.limit_train_batches))
    return n


def fit(
    task: Any,
    config: TrainConfig,
    *,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train ``task.model`` according to ``config``; see the module docstring for the contract.

    Writes into ``config.run_dir``: ``checkpoints/{last,best,epoch_NNNN}.pt`` (+ ``.sha256``),
    ``metrics.csv``, ``curves.png``, ``train.log`` and ``tb/`` when TensorBoard is installed.
    """
    cfg = config
    ctx = ddp.context()
    run_dir = Path(cfg.run_dir)
    device = select_device(cfg.device, ctx.local_rank)
    use_amp = bool(cfg.amp) and device.type == "cuda"
    if cfg.deterministic:
        seed_everything(cfg.seed, deterministic=True)

    metric: str | None = getattr(task, "metric", None)
    mode = cfg.metric_mode or getattr(task, "metric_mode", None) or "max"
    manager = CheckpointManager(
        run_dir / "checkpoints", every=cfg.save_every, mode=mode, writer=ctx.is_main
    )
    logger = RunLogger(
        run_dir,
        enabled=ctx.is_main,
        tty=cfg.tty,
        log_every=cfg.log_every,
        tensorboard=cfg.tensorboard,
        name=cfg.name,
    )
    try:
        return _fit(task, cfg, ctx, device, use_amp, metric, manager, logger, on_epoch_end)
    finally:
        logger.close()


def _fit(
    task: Any,
    cfg: TrainConfig,
    ctx: ddp.DistContext,
    device: torch.device,
    use_amp: bool,
    metric: str | None,
    manager: CheckpointManager,
    logger: RunLogger,
    on_epoch_end: Callable[[dict[str, Any]], None] | None,
) -> FitResult:
    model: nn.Module = task.model
    dataset = task.train_dataset()
    n_samples = len(dataset)
    if n_samples == 0:
        raise TrainingError(f"{cfg.name}: the training set is empty")
    bucket_keys = getattr(dataset, "bucket_keys", None)  # similar widths per batch (crops)
    sampler = ddp.EpochShardSampler(
        n_samples, seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size,
        keys=bucket_keys() if callable(bucket_keys) else None, batch_size=cfg.batch_size,
    )
    iters = _batches_per_epoch(len(sampler), cfg)
    if iters == 0:
        raise TrainingError(
            f"{cfg.name}: {n_samples} samples give no batch of {cfg.batch_size} (drop_last)"
        )
    if cfg.limit_train_batches and iters < int(cfg.limit_train_batches):
        logger.info(f"{cfg.name}: steps_per_epoch {cfg.limit_train_batches} is more than one pass over "
                    f"{n_samples} samples in batches of {cfg.batch_size}: an epoch runs {iters} steps "
                    f"(raise epochs for more)")

    # ----- resume or init -------------------------------------------------------------------
    ckpt, problems = manager.find_resume() if cfg.resume else (None, [])
    for p in problems:
        logger.info(f"ignoring checkpoint: {p}")
    if ckpt is None and cfg.init:
        logger.info(init_from_checkpoint(model, cfg.init).summary())
    model.to(device)

    params = task.param_groups(model) if hasattr(task, "param_groups") else model.parameters()
    optimizer = build_optimizer(
        cfg.optimizer, params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum
    )
    schedule: LRSchedule = make_schedule(
        cfg.schedule,
        cfg.lr,
        cfg.epochs,
        iters,
        min_lr=cfg.min_lr,
        warmup_epochs=cfg.warmup_epochs,
        warmup_iters=cfg.warmup_iters,
        step_epochs=cfg.step_epochs,
        gamma=cfg.gamma,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, step = 0, 0
    best_metric: float | None = None
    best_epoch: int | None = None
    resumed_from: int | None = None
    if ckpt is not None:
        # with EMA, "model" holds the averaged weights and "raw_model" the trained ones
        unwrap(model).load_state_dict(ckpt.get("raw_model", ckpt["model"]), strict=True)
        optimizer.load_state_dict(ckpt["optimizer"])
        saved = LRSchedule.from_state_dict(ckpt["schedule"])
        if (saved.lr, saved.kind, saved.total_iters) != (
            schedule.lr,
            schedule.kind,
            schedule.total_iters,
        ):
            logger.info(
                f"resume keeps the checkpoint's schedule ({saved.kind}, lr {saved.lr:g}, "
                f"{saved.total_iters} iterations), not the config's ({schedule.kind}, "
                f"lr {schedule.lr:g}, {schedule.total_iters} iterations)"
            )
        schedule = saved
        if "scaler" in ckpt and use_amp:
            scaler.load_state_dict(ckpt["scaler"])
        if "rng" in ckpt:
            restore_rng_state(ckpt["rng"])
        start_epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        best_metric = ckpt.get("best_metric")
        best_epoch = ckpt.get("best_epoch")
        resumed_from = start_epoch
        logger.load_history(start_epoch)
        logger.info(f"resumed at epoch {start_epoch}, step {step}, lr {schedule.current_lr:.3e}")
    epochs = max(int(cfg.epochs), start_epoch)
    ema = ModelEMA(unwrap(model), cfg.ema_decay) if cfg.ema_decay > 0 else None
    if ema is not None and ckpt is not None and "ema" in ckpt:
        ema.load(ckpt["model"], ckpt["ema"])

    train_model: nn.Module = model
    if ctx.is_distributed:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.find_unused_parameters,
        )

    meta = task.checkpoint_meta() if hasattr(task, "checkpoint_meta") else {}
    logger.info(
        f"{n_samples} samples, {iters} iterations/epoch, {epochs} epochs on {device}"
        + (f" x{ctx.world_size} processes" if ctx.is_distributed else "")
        + (", AMP" if use_amp else "")
    )

    for epoch in range(start_epoch + 1, epochs + 1):
        t0 = time.monotonic()
        seed_everything(_epoch_seed(cfg.seed, epoch, ctx.rank))
        sampler.set_epoch(epoch)
        loader = _loader(task, dataset, sampler, cfg, epoch, pin=device.type == "cuda")
        train_model.train()
        logger.start_epoch(epoch, epochs, iters)
        sums: dict[str, float] = {}
        counted, skipped = 0, 0
        for it, batch in enumerate(loader, start=1):
            if it > iters:
                break
            lr = schedule.apply(optimizer)
            batch = move_to(batch, device)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                loss, parts = task.compute_loss(train_model, batch)
            if not torch.isfinite(loss).all() and not use_amp:
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                schedule.advance()
                step += 1
                logger.info(f"epoch {epoch} iter {it}: non-finite loss, step skipped")
                continue
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg.grad_clip))
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(unwrap(model))
            schedule.advance()
            step += 1
            value = float(loss.detach())
            if not math.isfinite(value):  # AMP: the scaler skipped this step and lowered its scale
                skipped += 1
                continue
            counted += 1
            sums["loss"] = sums.get("loss", 0.0) + value
            for k, v in (parts or {}).items():
                key = k if "loss" in k else f"loss_{k}"
                if key != "loss":
                    sums[key] = sums.get(key, 0.0) + float(v)
            logger.iteration(epoch, it, iters, step, value, lr)
        if counted == 0:
            raise TrainingError(
                f"{cfg.name}: every iteration of epoch {epoch} had a non-finite loss"
            )

        row: dict[str, Any] = {"epoch": epoch, "step": step, "lr": schedule.lr_at(max(step - 1, 0))}
        for k, v in sums.items():
            row[f"train_{k}"] = ddp.all_reduce_mean(v / counted, device)
        if skipped:
            row["skipped_steps"] = skipped

        metrics: dict[str, float] = {}
        validate = getattr(task, "validate", None)
        if (
            ctx.is_main
            and validate is not None
            and (epoch % max(1, cfg.val_every) == 0 or epoch == epochs)
        ):
            model.eval()
            with torch.no_grad():
                metrics = dict(validate(ema.model if ema is not None else model))
            model.train()
            row.update({f"val_{k}": v for k, v in metrics.items()})
        metric_value = metrics.get(metric) if metric else None
        is_best = True if metric is None else manager.is_better(metric_value, best_metric)
        if is_best:
            best_metric = float(metric_value) if metric_value is not None else None
            best_epoch = epoch
        row["time_s"] = round(time.monotonic() - t0, 3)

        if ctx.is_main:
            payload = {
                "format": FORMAT,
                "epoch": epoch,
                "step": step,
                "model": _cpu_state(ema.model if ema is not None else unwrap(model)),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": capture_rng_state(),
                "metric": metric,
                "metric_mode": manager.mode,
                "metrics": {k: float(v) for k, v in metrics.items()},
                "best_metric": best_metric,
                "best_epoch": best_epoch,
                "config": cfg.to_dict(),
                "meta": meta,
                "world_size": ctx.world_size,
            }
            if ema is not None:
                payload.update(raw_model=_cpu_state(unwrap(model)), ema=ema.state_dict())
            # The CSV row first: a kill between the two leaves a row the resume truncates,
            # never a checkpoint whose epoch is missing from the history.
            logger.epoch_end(row)
            manager.save(payload, epoch, is_best=is_best)
            if on_epoch_end is not None:
                on_epoch_end(row)
        ddp.barrier()

    if ema is not None:  # what validation scored and the checkpoints hold as "model"
        unwrap(model).load_state_dict(ema.model.state_dict())
    final_lr = schedule.lr_at(max(step - 1, 0))
    best_path = manager.best if manager.best.exists() else None
    if start_epoch >= epochs:
        logger.info(f"nothing to do: checkpoint already at epoch {start_epoch} of {epochs}")
    return FitResult(
        epoch=max(start_epoch, epochs),
        step=step,
        lr=final_lr,
        best_metric=best_metric
        if not (isinstance(best_metric, float) and math.isnan(best_metric))
        else None,
        best_epoch=best_epoch,
        metric=metric,
        last=manager.last,
        best=best_path,
        history=list(logger.rows),
        resumed_from=resumed_from,
    )


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def result_from_checkpoints(run_dir: str | Path) -> FitResult:
    """Summarise a finished run from its checkpoints (after a torchrun launch, for instance)."""
    manager = CheckpointManager(Path(run_dir) / "checkpoints")
    ckpt, problems = manager.find_resume()
    if ckpt is None:
        raise TrainingError(
            f"{run_dir}: no valid checkpoint" + (": " + "; ".join(problems) if problems else "")
        )
    schedule = LRSchedule.from_state_dict(ckpt["schedule"])
    history: list[dict[str, Any]] = []
    csv_path = Path(run_dir) / "metrics.csv"
    if csv_path.is_file():
        import csv

        from .logs import _parse

        with open(csv_path, newline="", encoding="utf-8") as fh:
            history = [{k: _parse(v) for k, v in row.items() if v} for row in csv.DictReader(fh)]
    return FitResult(
        epoch=int(ckpt["epoch"]),
        step=int(ckpt["step"]),
        lr=schedule.lr_at(max(int(ckpt["step"]) - 1, 0)),
        best_metric=ckpt.get("best_metric"),
        best_epoch=ckpt.get("best_epoch"),
        metric=ckpt.get("metric"),
        last=manager.last,
        best=manager.best if manager.best.exists() else None,
        history=history,
    )
