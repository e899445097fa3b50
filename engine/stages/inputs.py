"""What several stages read the same way: upstream data and models, training settings.

The train, prune and qat stages all turn the recipe into the same training task and
`TrainConfig`; prune, qat, export and build all take the prepared data from the data stage's
artifacts and the latest model from whichever stage upstream last changed it. One reading of
each keeps the stages that share it from drifting apart, and every recipe field read here goes
through the calling stage's declared view.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..recipe.schema import PostprocessSpec
from ..rundir import start_attempt
from .contract import StageContext

N_SAMPLE_IMAGES = 3  # real validation images used for export parity and latency

#: the post-processing training and pruning validate with, to pick and report checkpoints:
#: the schema's defaults, never the recipe's `models.postprocess`, which tunes inference only
#: (changing it re-runs evaluate and build, never training)
VALIDATION_POSTPROCESS = PostprocessSpec().model_dump(exclude={"min_text_score"})


# ------------------------------------------------------------------------------- data


def dataset(ctx: StageContext) -> dict[str, str]:
    """The data stage's artifact: {"manifest", "crops", "summary", "preview"} paths."""
    return dict(ctx.upstream_artifact("data", "dataset"))


def records(ctx: StageContext, split: str) -> list[Any]:
    from ..training.datasets import detection_records

    return detection_records(dataset(ctx)["manifest"], split)


def crop_paths(ctx: StageContext, split: str) -> list[tuple[Path, str]]:
    from ..data.manifest import read_crop_labels

    return read_crop_labels(Path(dataset(ctx)["crops"]) / split)


def detector_samples(ctx: StageContext, max_side: int, inputs: dict[str, Any],
                     n: int = N_SAMPLE_IMAGES) -> list[np.ndarray]:
    """``n`` real images (val, else train) as the detector's input at ``max_side``."""
    from ..data.manifest import load_image_rgb
    from ..runtime.preprocess import detector_input, norm_of

    chosen = records(ctx, "val") or records(ctx, "train")
    return [detector_input(load_image_rgb(r.image), max_side, **norm_of(inputs))[0] for r in chosen[:n]]


def recognizer_samples(ctx: StageContext, height: int, max_width: int, inputs: dict[str, Any],
                       n: int = 2, batch: int = 8) -> list[np.ndarray]:
    """``n`` batches of real crops (val, else train) as the recognizer's input."""
    from ..data.manifest import load_image_rgb
    from ..runtime.preprocess import norm_of, recognizer_input

    crops = crop_paths(ctx, "val") or crop_paths(ctx, "train")
    out = []
    for i in range(n):
        chunk = crops[i * batch : (i + 1) * batch] or crops[:batch]
        out.append(recognizer_input([load_image_rgb(p) for p, _ in chunk], height, max_width, **norm_of(inputs)))
    return out


def samples_for(ctx: StageContext, model_name: str, meta: dict[str, Any]) -> list[np.ndarray]:
    """Export-parity samples for a model at the sizes its checkpoint was trained for."""
    from ..models.registry import input_spec

    inputs = input_spec(model_name, meta["arch"])
    if model_name == "detector":
        return detector_samples(ctx, int(meta["input_size"]), inputs)
    return recognizer_samples(ctx, int(meta["height"]), int(meta["max_width"]), inputs)


# ------------------------------------------------------------------------------- models


def load_model(ctx: StageContext, model: str) -> tuple[Any, dict[str, Any]]:
    """(model, checkpoint meta) of the latest stage upstream that changed it: the quantization-
    aware fine-tune, else pruning, else training."""
    from ..compress.prune import load_pruned
    from ..training.tasks import model_from_checkpoint

    for stage, key in (("qat", f"{model}_qat"), ("prune", f"{model}_pruned")):
        path = (ctx.upstream.get(stage) or {}).get("artifacts", {}).get(key)
        if path:
            net, extra = load_pruned(path)
            return net, dict(extra["meta"])
    return model_from_checkpoint(ctx.upstream_artifact(f"train:{model}", f"{model}_checkpoint"))


def build_spec(meta: dict[str, Any]) -> dict[str, Any]:
    """How load_pruned rebuilds the unpruned model of a checkpoint's meta."""
    if meta["kind"] == "detector":
        return {"kind": "detector", "arch": meta["arch"], "variant": meta["backbone"],
                "options": meta.get("model_options", {})}
    return {"kind": "recognizer", "arch": meta["arch"], "variant": meta["sequence"],
            "options": {**meta.get("model_options", {}), "num_classes": meta["num_classes"],
                        "height": meta["height"]}}


# ------------------------------------------------------------------------------- training


def train_config(ctx: StageContext, model: str, *, epochs: int | None = None, run_dir: Path | None = None) -> Any:
    """The `TrainConfig` of ``model`` from ``train@<model>``; ``epochs``/``run_dir`` override."""
    from ..training.loop import TrainConfig

    t = ctx.recipe.train.for_model(model)
    return TrainConfig(
        run_dir=str(run_dir or ctx.out_dir),
        epochs=int(epochs if epochs is not None else t["epochs"]),
        batch_size=t["batch_size"], lr=t["lr"], optimizer=t["optimizer"],
        weight_decay=t["weight_decay"], schedule=t["schedule"], min_lr=t["min_lr"],
        warmup_epochs=t["warmup_epochs"], grad_clip=t["grad_clip"] or None, amp=t["amp"],
        seed=t["seed"], deterministic=t["deterministic"], num_workers=t["workers"],
        device=t["device"], save_every=t["checkpoint_every"], resume=True, name=ctx.name,
        limit_train_batches=t["steps_per_epoch"],
        tty=None,
    )


def task_spec(ctx: StageContext, model: str) -> tuple[str, dict[str, Any]]:
    """The training task factory and its JSON-able arguments (train, prune and qat)."""
    from ..data.charset import expand_charset

    r = ctx.recipe
    data = dataset(ctx)
    backbone_lr = r.train.for_model(model)["backbone_lr"]
    if model == "detector":
        d = r.models.detector
        return "engine.training.tasks:DetectorTask", {
            "manifest": data["manifest"], "arch": d.arch, "backbone": d.backbone,
            "train_size": d.train_size or d.input_size, "input_size": d.input_size,
            "postprocess": VALIDATION_POSTPROCESS, "val_limit": None, "backbone_lr": backbone_lr,
            "gap_weight": d.gap_weight,
        }
    rec = r.models.recognizer
    return "engine.training.tasks:RecognizerTask", {
        "crops_root": data["crops"], "charset": expand_charset(r.dataset.charset),
        "arch": rec.arch, "sequence": rec.sequence, "height": rec.height,
        "max_width": rec.max_width, "val_limit": None, "backbone_lr": backbone_lr,
    }


def task_for(ctx: StageContext, model_name: str, model: Any, **override: Any) -> Any:
    """The training task of ``model_name`` around an already built ``model`` (prune, qat)."""
    from ..training.launch import resolve_factory

    factory, kwargs = task_spec(ctx, model_name)
    return resolve_factory(factory)(**{**kwargs, **override}, model=model)


def attempt_of(ctx: StageContext, **extra: Any) -> dict[str, Any]:
    """What a training attempt of this stage depends on: its key and its upstream outputs.

    The recipe key alone misses new data or new init weights under the same recipe text: the
    stage then re-runs (file_dep) and must not resume the finished checkpoint of the old data.
    """
    from ..config import stable_hash

    upstream = {name: r.get("outputs") for name, r in sorted(ctx.upstream.items())}
    return {"key": ctx.key, "upstream": stable_hash(upstream), **extra}


def resume_or_start(ctx: StageContext, work: Path, needs: tuple[str, ...] = (), **extra: Any) -> bool:
    """Keep ``work``'s interrupted attempt of these same inputs, else start clean; True = fresh."""
    return start_attempt(work, attempt_of(ctx, **extra), needs)
