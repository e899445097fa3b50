"""The `train:detector` and `train:recognizer` stages.

Training resumes an interrupted attempt only when it was started with the same stage key and
upstream outputs (recorded in ``attempt.json``); a changed recipe field starts a fresh run, so a
changed backbone or learning rate never resumes from an incompatible checkpoint. With
``train.host`` the same job runs on a GPU host over SSH (`engine.training.remote`) and its
checkpoints come back here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..fsutil import sha256_file
from .contract import StageContext, StageFailed, StageResult
from .inputs import resume_or_start, task_spec, train_config

#: checkpoint meta that are inference settings, not weights: with ``epochs: 0`` they come from
#: the recipe (a zero-shot pretrained model read at the recipe's size, width and line height; the
#: PP-OCRv6 recognizer's weights fit any height that is a multiple of 16, only its pool changes)
_SETTINGS = ("input_size", "train_size", "postprocess", "max_width", "height")


def resolve_init(ctx: StageContext, model: str) -> str | None:
    """The checkpoint a training run of ``model`` starts from (None: from scratch)."""
    from ..models.registry import architecture
    from ..training.pretrained import base_weights

    spec = getattr(ctx.recipe.models, model)
    if spec.init is None:
        return None
    if spec.init == "base":
        if architecture(model, spec.arch)["base"] == "ppocrv6":
            from ..models.ppocr.convert import PretrainedError
            from ..training.pretrained import pretrained_checkpoint

            try:
                return str(pretrained_checkpoint(model))
            except PretrainedError as exc:
                raise StageFailed(f"models.{model}.init base: {exc}") from None
        path = base_weights(model, spec)
        if not path.is_file():
            raise StageFailed(
                f"no shipped base weights for this {model} ({path.name}); "
                f"set models.{model}.init: null to train from scratch, or give a checkpoint path"
            )
        return str(path)
    path = Path(spec.init)
    if not path.is_file():
        raise StageFailed(f"models.{model}.init: no such checkpoint {path}")
    return str(path)


def run(ctx: StageContext) -> StageResult:
    from ..training.checkpoint import CheckpointError
    from ..training.launch import run_training
    from ..training.loop import TrainingError
    from ..training.pretrained import remap_charset

    model = ctx.param or "detector"
    init = resolve_init(ctx, model)
    fresh = resume_or_start(ctx, ctx.out_dir, init=sha256_file(init) if init else None)
    cfg = train_config(ctx, model)
    factory, kwargs = task_spec(ctx, model)
    notes = []
    if init and model == "recognizer":
        init, counts = remap_charset(init, kwargs["charset"], ctx.out_dir / "init_remapped.pt")
        if counts["new"]:
            notes.append(f"charset differs from the init checkpoint: {counts['new']} new characters "
                         f"{counts['new_chars']!r} start untrained")
    cfg.init = init
    if cfg.epochs == 0:  # re-quantize / re-target an existing model: `init` as it is
        return _init_as_result(ctx, model, init, notes, kwargs)
    settings = ctx.recipe.train.for_model(model)
    try:
        if settings["host"]:  # same job on a GPU host over SSH; checkpoints come back here
            result = _train_remotely(ctx, settings, factory, kwargs, cfg, fresh)
        else:
            result = run_training(factory, kwargs, cfg, gpus=settings["gpus"])
    except (TrainingError, CheckpointError) as exc:
        raise StageFailed(str(exc)) from None
    final = Path(result.best or result.last)  # checkpoints/best.pt with its sha256 sidecar
    metrics: dict[str, Any] = {
        "epochs": result.epoch, "steps": result.step, "best_epoch": result.best_epoch,
        "best_metric": result.best_metric, "init": Path(init).name if init else None,
    }
    if isinstance(result.metric, dict):
        metrics.update({f"val_{k}": v for k, v in result.metric.items() if isinstance(v, int | float)})
    return StageResult(
        outputs=[final],
        metrics=metrics,
        artifacts={f"{model}_checkpoint": str(final), f"{model}_curves": str(ctx.out_dir / "curves.png")},
        notes=notes,
    )


def _train_remotely(ctx: StageContext, settings: Any, factory: str, kwargs: dict[str, Any], cfg: Any,
                    fresh: bool) -> Any:
    """``settings``: the model's ``train@<model>`` (host, device, gpus among them)."""
    from ..deploy.transport import DeployError
    from ..training.remote import RemoteHost, run_remote_training

    t = ctx.recipe.train
    host = RemoteHost(host=settings["host"], remote_dir=t.remote_dir, python=t.python, device=settings["device"],
                      gpus=settings["gpus"], trust_on_first_use=t.trust_on_first_use,
                      known_hosts=str(t.known_hosts) if t.known_hosts else None,
                      ssh_config=str(t.ssh_config) if t.ssh_config else None)
    try:
        return run_remote_training(host, ctx.run.root, ctx.out_dir, ctx.param or "detector", factory, kwargs,
                                   cfg, key=ctx.key, fresh=fresh, name=ctx.name, log=ctx.log)
    except DeployError as exc:
        raise StageFailed(str(exc)) from None


def _init_as_result(ctx: StageContext, model: str, init: str | None, notes: list[str],
                    task_kwargs: dict[str, Any]) -> StageResult:
    """``epochs: 0``: the init checkpoint's weights become checkpoints/best.pt untouched; its
    inference settings (input size, width, postprocessing) are the recipe's."""
    from ..training.checkpoint import load_checkpoint, save_checkpoint, sidecar_path

    if not init:  # the recipe validator already refuses this; kept for direct callers
        raise StageFailed(f"train epochs 0 for the {model} needs models.{model}.init")
    ckpt = load_checkpoint(init, verify=sidecar_path(init).is_file())  # as fine-tuning loads it
    if "meta" not in ckpt:
        raise StageFailed(f"{init}: no model metadata (arch, charset): train at least one epoch")
    final = ctx.out_dir / "checkpoints" / "best.pt"
    final.parent.mkdir(parents=True, exist_ok=True)
    before = ckpt.get("meta") or {}
    meta = {**before, **{k: task_kwargs[k] for k in _SETTINGS if k in task_kwargs}}
    save_checkpoint(final, {"model": ckpt["model"], "meta": meta})
    if "height" in before and meta["height"] != before["height"]:
        _check_height_fits(final, Path(init).name, before["height"], meta["height"])
        notes = [*notes, f"{Path(init).name} was trained on {before['height']}-px lines and is read at "
                         f"{meta['height']} px untrained: expect it to read worse than at {before['height']}"]
    return StageResult(
        outputs=[final],
        metrics={"epochs": 0, "steps": 0, "init": Path(init).name},
        artifacts={f"{model}_checkpoint": str(final)},
        notes=[*notes, f"epochs 0: {Path(init).name} used as it is"],
    )


def _check_height_fits(final: Path, init_name: str, trained: int, wanted: int) -> None:
    """A recognizer whose weights depend on the line height (CRNN's height-collapsing conv)
    cannot be read at another height untrained; PP-OCRv6's can (only its pool changes)."""
    from ..training.tasks import model_from_checkpoint

    try:
        model_from_checkpoint(final)
    except RuntimeError as exc:
        final.unlink(missing_ok=True)
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise StageFailed(
            f"models.recognizer.height {wanted}: {init_name} was trained on {trained}-px lines and its "
            f"weights do not fit {wanted} ({first}); set models.recognizer.height: {trained} or train at "
            f"least one epoch") from None
