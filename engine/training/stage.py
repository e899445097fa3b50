"""The `train:detector`, `train:recognizer` and `evaluate` stages.

Training resumes an interrupted attempt only when it was started with the same stage key
(recorded in ``attempt.json``); a changed recipe section starts a fresh run, so a changed
backbone or learning rate never resumes from an incompatible checkpoint.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import stable_hash
from ..fsutil import atomic_write_json, sha256_file
from ..graph import ATTEMPT_FILE
from ..stages import StageContext, StageFailed, StageResult

BASE_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def base_weights(model: str, spec: Any) -> Path:
    """The file ``init: base`` stands for (no torch import: the graph lists it as a file
    dependency). This project's own architectures: the checkpoint bench/train_base.py trained
    and engine/weights/ ships; PP-OCRv6: the rapidocr wheel's ONNX, converted on first use
    (engine.training.pretrained)."""
    from ..models.registry import architecture

    if architecture(model, spec.arch)["base"] == "ppocrv6":
        from .pretrained import source_file

        return source_file(model)
    if model == "detector":
        name = f"detector_{spec.arch}_{spec.backbone}.pt"
    else:
        name = f"recognizer_{spec.arch}_{spec.sequence}_h{spec.height}.pt"
    return BASE_WEIGHTS_DIR / name


def resolve_init(ctx: StageContext, model: str) -> str | None:
    """The checkpoint a training run of ``model`` starts from (None: from scratch)."""
    from ..models.registry import architecture

    spec = getattr(ctx.recipe.models, model)
    if spec.init is None:
        return None
    if spec.init == "base":
        if architecture(model, spec.arch)["base"] == "ppocrv6":
            from ..models.ppocr.convert import PretrainedError
            from .pretrained import pretrained_checkpoint

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


def remap_charset(init: str, charset: str, out_path: Path) -> tuple[str, dict[str, Any]]:
    """Fine-tune a recognizer on a different charset without losing what it knows.

    The classifier's rows follow the charset order (row 0 = CTC blank, row i+1 = charset[i]).
    Rows of characters both charsets share are copied to their new positions; new characters get
    the fresh layer's initialisation. For PP-OCRv6 this cuts the 18,710-class head to the
    recipe's charset: the model can then never emit a character outside it, and the head's cost
    (~2.2 M MACs per step) shrinks with it. Returns the checkpoint to initialise from and
    {"kept": n, "new": n, "new_chars": "..."}.
    """
    from ..models import build_recognizer
    from .checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(init)
    meta = dict(ckpt.get("meta") or {})
    old = meta.get("charset")
    if old is None or old == charset:
        return init, {"kept": len(charset), "new": 0}
    state = dict(ckpt["model"])
    fresh = build_recognizer(
        meta["arch"], meta["sequence"], num_classes=len(charset) + 1, height=int(meta["height"]),
        **meta.get("model_options", {}),
    ).state_dict()
    where = {ch: j for j, ch in enumerate(old)}
    for key in ("classifier.weight", "classifier.bias"):
        rows = fresh[key].clone()
        rows[0] = state[key][0]  # blank
        for i, ch in enumerate(charset):
            if ch in where:
                rows[i + 1] = state[key][where[ch] + 1]
        state[key] = rows
    new = "".join(ch for ch in charset if ch not in where)
    meta.update(charset=charset, num_classes=len(charset) + 1)
    save_checkpoint(out_path, {"model": {k: v.contiguous() for k, v in state.items()}, "meta": meta})
    return str(out_path), {"kept": len(charset) - len(new), "new": len(new), "new_chars": new}


def _fresh_or_resume(ctx: StageContext) -> bool:
    """Keep checkpoints of an interrupted attempt with the same key; otherwise start clean.

    Returns True for a fresh start (remote training then clears the host's run directory too).
    """
    return start_attempt(ctx.out_dir, attempt_of(ctx, init=_init_digest(ctx)))


def attempt_of(ctx: StageContext, **extra: Any) -> dict[str, Any]:
    """What a training attempt of this stage depends on: its key and its upstream outputs.

    The recipe key alone misses new data or new init weights under the same recipe text: the
    stage then re-runs (file_dep) and must not resume the finished checkpoint of the old data.
    """
    upstream = {name: r.get("outputs") for name, r in sorted(ctx.upstream.items())}
    return {"key": ctx.key, "upstream": stable_hash(upstream), **extra}


def start_attempt(run_dir: Path, attempt: dict[str, Any], needs: Sequence[str] = ()) -> bool:
    """Keep ``run_dir``'s checkpoints and logs when they belong to ``attempt``; otherwise clear
    them and record ``attempt`` (``attempt.json``).  True when the run starts fresh.

    ``needs``: files in ``run_dir`` the checkpoints were trained from (the prune stage's
    ``pruned.pt``): the attempt resumes only while they all exist, and a fresh start deletes
    them with the checkpoints."""
    marker = run_dir / ATTEMPT_FILE
    try:
        previous = json.loads(marker.read_text()) if marker.exists() else None
    except (ValueError, UnicodeDecodeError):  # a torn marker proves nothing: start fresh
        previous = None
    if previous == attempt and all((run_dir / name).exists() for name in needs):
        return False
    for child in ("checkpoints", "metrics.csv", "curves.png", "train.log", *needs):
        path = run_dir / child
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, attempt)
    return True


def _init_digest(ctx: StageContext) -> str | None:
    model = ctx.param or "detector"
    init = resolve_init(ctx, model)
    return sha256_file(init) if init and Path(init).is_file() else None


def train_config(ctx: StageContext, model: str, *, epochs: int | None = None, run_dir: Path | None = None) -> Any:
    from .loop import TrainConfig

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
    """The training task factory and its JSON-able arguments (also used by pruning)."""
    from ..data.charset import expand_charset

    r = ctx.recipe
    data = ctx.run_dir / "data"
    if model == "detector":
        d = r.models.detector
        return "engine.training.tasks:DetectorTask", {
            "manifest": str(data / "manifest.jsonl"), "arch": d.arch, "backbone": d.backbone,
            "train_size": d.train_size or d.input_size, "input_size": d.input_size,
            "postprocess": _postprocess(ctx), "val_limit": r.verify.samples,
            "backbone_lr": r.train.for_model("detector")["backbone_lr"],
        }
    rec = r.models.recognizer
    return "engine.training.tasks:RecognizerTask", {
        "crops_root": str(data / "crops"), "charset": expand_charset(r.dataset.charset),
        "arch": rec.arch, "sequence": rec.sequence, "height": rec.height,
        "max_width": rec.max_width, "val_limit": None,
        "backbone_lr": r.train.for_model("recognizer")["backbone_lr"],
    }


def _postprocess(ctx: StageContext) -> dict[str, Any]:
    p = ctx.recipe.models.postprocess
    return {"thresh": p.thresh, "box_thresh": p.box_thresh, "unclip_ratio": p.unclip_ratio,
            "shrink_ratio": p.shrink_ratio}


def run_train(ctx: StageContext) -> StageResult:
    from .checkpoint import CheckpointError
    from .launch import run_training
    from .loop import TrainingError

    model = ctx.param or "detector"
    init = resolve_init(ctx, model)
    fresh = _fresh_or_resume(ctx)
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
    gpus = ctx.recipe.train.gpus
    try:
        if ctx.recipe.train.host:  # same job on a GPU host over SSH; checkpoints come back here
            from .remote import run_remote_training

            result = run_remote_training(ctx, factory, kwargs, cfg, gpus=gpus, fresh=fresh)
        else:
            result = run_training(factory, kwargs, cfg, gpus=gpus)
    except (TrainingError, CheckpointError) as exc:
        raise StageFailed(str(exc)) from None
    final = Path(result.best or result.last)  # checkpoints/best.pt with its sha256 sidecar
    metrics: dict[str, Any] = {
        "epochs": result.epoch, "steps": result.step, "best_epoch": result.best_epoch,
        "best_metric": result.best_metric, "init": Path(init).name if init else None,
    }
    if isinstance(result.metric, dict):
        metrics.update({f"val_{k}": v for k, v in result.metric.items() if isinstance(v, int | float)})
    outputs = [final]
    curves = ctx.out_dir / "curves.png"
    return StageResult(
        outputs=outputs,
        metrics=metrics,
        artifacts={f"{model}_checkpoint": str(final), f"{model}_curves": str(curves)},
        notes=notes,
    )


#: checkpoint meta that are inference settings, not weights: with ``epochs: 0`` they come from
#: the recipe (a zero-shot pretrained model read at the recipe's size and width)
_SETTINGS = ("input_size", "train_size", "postprocess", "max_width")


def _init_as_result(ctx: StageContext, model: str, init: str | None, notes: list[str],
                    task_kwargs: dict[str, Any]) -> StageResult:
    """``epochs: 0``: the init checkpoint's weights become checkpoints/best.pt untouched; its
    inference settings (input size, width, postprocessing) are the recipe's."""
    from .checkpoint import load_checkpoint, save_checkpoint, sidecar_path

    if not init:  # the recipe validator already refuses this; kept for direct callers
        raise StageFailed(f"train epochs 0 for the {model} needs models.{model}.init")
    ckpt = load_checkpoint(init, verify=sidecar_path(init).is_file())  # as fine-tuning loads it
    if "meta" not in ckpt:
        raise StageFailed(f"{init}: no model metadata (arch, charset): train at least one epoch")
    final = ctx.out_dir / "checkpoints" / "best.pt"
    final.parent.mkdir(parents=True, exist_ok=True)
    meta = {**(ckpt.get("meta") or {}), **{k: task_kwargs[k] for k in _SETTINGS if k in task_kwargs}}
    save_checkpoint(final, {"model": ckpt["model"], "meta": meta})
    return StageResult(
        outputs=[final],
        metrics={"epochs": 0, "steps": 0, "init": Path(init).name},
        artifacts={f"{model}_checkpoint": str(final)},
        notes=[*notes, f"epochs 0: {Path(init).name} used as it is"],
    )


# ------------------------------------------------------------------------------- evaluate


def evaluate_models(
    detector_ckpt: Path, recognizer_ckpt: Path, manifest: Path, crops_root: Path,
    postprocess: dict[str, Any], limit: int | None = None,
) -> dict[str, Any]:
    """Detection (ICDAR hmean), recognition (accuracy, CER) and end-to-end metrics on val."""
    from ..data.manifest import load_image_rgb
    from ..runtime.postprocess import crop_polygon
    from .metrics import detection_metrics, end_to_end_metrics
    from .tasks import DetectorTask, RecognizerTask, detection_records, model_from_checkpoint

    det_model, det_meta = model_from_checkpoint(detector_ckpt)
    rec_model, rec_meta = model_from_checkpoint(recognizer_ckpt)
    det_task = DetectorTask(
        manifest, det_meta["arch"], det_meta["backbone"], det_meta.get("model_options"),
        input_size=det_meta["input_size"], postprocess=postprocess, model=det_model,
    )
    rec_task = RecognizerTask(
        crops_root, rec_meta["charset"], rec_meta["arch"], rec_meta["sequence"],
        rec_meta["height"], rec_meta["max_width"], rec_meta.get("model_options"), model=rec_model,
    )
    records = detection_records(manifest, "val")[: limit or None]
    gts, dets, e2e = [], [], []
    for rec in records:
        image = load_image_rgb(rec.image)
        boxes = det_task.predict(det_model, image)
        crops = [crop_polygon(image, pts) for pts, _ in boxes]
        texts = rec_task.predict(rec_model, crops) if crops else []
        gts.append([ln.to_dict() for ln in rec.lines])
        dets.append(boxes)
        e2e.append([{"points": pts, "text": t} for (pts, _), (t, _) in zip(boxes, texts, strict=True)])
    metrics: dict[str, Any] = {"val_images": len(records), "val_crops": len(rec_task.val_samples)}
    metrics.update(detection_metrics(gts, dets))
    metrics.update(rec_task.validate(rec_model))
    metrics.update(end_to_end_metrics(gts, e2e))
    return metrics


def run_evaluate(ctx: StageContext) -> StageResult:
    det = Path(ctx.upstream_artifact("train:detector", "detector_checkpoint"))
    rec = Path(ctx.upstream_artifact("train:recognizer", "recognizer_checkpoint"))
    data = ctx.run_dir / "data"
    metrics = evaluate_models(
        det, rec, data / "manifest.jsonl", data / "crops", _postprocess(ctx), ctx.recipe.verify.samples
    )
    out = ctx.out_dir / "metrics.json"
    atomic_write_json(out, metrics)
    v = ctx.recipe.verify
    missed = [
        f"{name} {metrics[key]:.4g} {op} {bar}"
        for name, key, bar, op in (("word_accuracy", "word_accuracy", v.min_word_accuracy, "<"),
                                   ("cer", "cer", v.max_cer, ">"))
        if bar is not None and (metrics[key] < bar if op == "<" else metrics[key] > bar)
    ]
    if missed:  # recognizer bars are judged on ground-truth crops, before any compression
        raise StageFailed(f"recognizer below the verify bars: {'; '.join(missed)} (see {out})")
    return StageResult(outputs=[out], metrics=metrics, artifacts={"fp32_metrics": str(out)})
