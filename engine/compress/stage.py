"""The `prune`, `export` and `build:TARGET` stages.

prune   best checkpoint -> structured channel pruning -> fine-tune -> ``<model>.pruned.pt``, with
        params, MACs, ONNX latency and accuracy before and after.
export  the pruned (or trained) models -> fp32 ONNX with dynamic axes, checked against torch on
        real validation images.
build   per target: the precisions the profile asks for (int8 calibrated on real training
        images, fp16 + a TensorRT build plan for Jetsons, fp32), assembled into a bundle.
"""

from __future__ import annotations

import copy
import hashlib
import json
import platform
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..stages import StageContext, StageFailed, StageResult

N_SAMPLE_IMAGES = 3  # real validation images used for export parity and latency
GUARD_IMAGES = 40  # val images the int8 accuracy guard measures on
BUNDLE_VAL_IMAGES = 20  # val images a bundle carries when verify.samples is null


# ------------------------------------------------------------------------------- helpers


def _records(ctx: StageContext, split: str) -> list[Any]:
    from ..training.datasets import detection_records

    return detection_records(ctx.run_dir / "data" / "manifest.jsonl", split)


def _crop_paths(ctx: StageContext, split: str) -> list[tuple[Path, str]]:
    from ..data.manifest import read_crop_labels

    return read_crop_labels(ctx.run_dir / "data" / "crops" / split)


def detector_side(ctx: StageContext) -> int:
    """The longer image side a target's bundle feeds its detector: the recipe's input_size (what
    training and evaluation used), capped by the target profile's max_side."""
    assert ctx.profile is not None
    return min(ctx.recipe.models.detector.input_size, ctx.profile.detector.max_side)


def model_inputs(ctx: StageContext, model_name: str) -> dict[str, Any]:
    """The input convention (channels, mean, std[, downsample]) of the recipe's model."""
    from ..models.registry import input_spec

    return input_spec(model_name, getattr(ctx.recipe.models, model_name).arch)


def detector_samples(ctx: StageContext, max_side: int, n: int = N_SAMPLE_IMAGES) -> list[np.ndarray]:
    from ..data.manifest import load_image_rgb
    from ..runtime.preprocess import detector_input, norm_of

    records = _records(ctx, "val") or _records(ctx, "train")
    norm = norm_of(model_inputs(ctx, "detector"))
    return [detector_input(load_image_rgb(r.image), max_side, **norm)[0] for r in records[:n]]


def recognizer_samples(ctx: StageContext, n: int = 2, batch: int = 8) -> list[np.ndarray]:
    from ..data.manifest import load_image_rgb
    from ..runtime.preprocess import norm_of, recognizer_input

    crops = _crop_paths(ctx, "val") or _crop_paths(ctx, "train")
    rec = ctx.recipe.models.recognizer
    norm = norm_of(model_inputs(ctx, "recognizer"))
    out = []
    for i in range(n):
        chunk = crops[i * batch : (i + 1) * batch] or crops[:batch]
        out.append(recognizer_input([load_image_rgb(p) for p, _ in chunk], rec.height, rec.max_width,
                                    **norm))
    return out


def load_model(ctx: StageContext, model: str) -> tuple[Any, dict[str, Any]]:
    """(model, checkpoint meta) of the latest stage upstream that changed it: the quantization-
    aware fine-tune, else pruning, else training."""
    from ..training.tasks import model_from_checkpoint
    from .prune import load_pruned

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


# ------------------------------------------------------------------------------- prune


def run_prune(ctx: StageContext) -> StageResult:
    import torch

    from ..training.launch import resolve_factory
    from ..training.loop import fit
    from ..training.stage import attempt_of, start_attempt, task_spec, train_config
    from ..training.tasks import model_from_checkpoint
    from . import atomic_write_bytes
    from .distill import Distilled
    from .export import export_onnx
    from .latency import compare_latency
    from .prune import load_pruned, prune_model, save_pruned, task_losses

    spec = ctx.recipe.optimize.prune
    outputs, metrics, artifacts = [], {}, {}
    keep = [k for k in spec.keep]
    for model_name in spec.models:
        ckpt = ctx.upstream_artifact(f"train:{model_name}", f"{model_name}_checkpoint")
        model, meta = model_from_checkpoint(ckpt)
        factory, kwargs = task_spec(ctx, model_name)
        task = resolve_factory(factory)(**kwargs, model=model)
        before_acc = task.validate(model) if task.metric else {}
        if model_name == "detector":
            samples = detector_samples(ctx, ctx.recipe.models.detector.input_size)
        else:
            samples = recognizer_samples(ctx)
        example = torch.from_numpy(samples[0])
        build = build_spec(meta)
        work = ctx.out_dir / model_name
        # resume only a fine-tune of these same settings, and from the very model it started
        # from: Taylor ranks come from gradients, so re-pruning is not guaranteed to give the
        # same channels (the resumed checkpoint would then not fit the model)
        start = work / "pruned.pt"
        start_attempt(work, attempt_of(ctx), needs=(start.name,))
        before_onnx = export_onnx(model, model_name, work / "before.onnx", samples, simplify=False)
        teacher = copy.deepcopy(model) if spec.distill and spec.finetune_epochs > 0 else None
        if start.exists():
            pruned, started = load_pruned(start)
            report, pruned_acc, renormalised = started["report"], started["pruned_acc"], started["renormalised"]
        else:
            batch_size = int(ctx.recipe.train.for_model(model_name)["batch_size"])
            needs_loss = spec.importance == "taylor" or spec.allocation == "sensitivity"
            losses = task_losses(task, batch_size=batch_size) if needs_loss else None
            pruned, report = prune_model(model, example, spec.amount, spec.importance,
                                         keep=_keep(keep), loss_fn=losses, allocation=spec.allocation)
            pruned_acc, renormalised = _renormalise(task, pruned, batch_size)
            pruned_acc = {k: float(v) for k, v in pruned_acc.items()}  # plain data: weights_only
            save_pruned(start, pruned, build, extra={"report": report, "pruned_acc": pruned_acc,
                                                     "renormalised": renormalised})
        # The fine-tune hands on its last epoch (the end of the lr schedule), not the epoch that
        # scored best on val: on the flagship that was epoch 1 of 6, +0.3 hmean on its 40 val
        # images and -2.9 on 200 never-seen plates, where the last epoch lost 1.3.
        if spec.finetune_epochs > 0:
            cfg = train_config(ctx, model_name, epochs=spec.finetune_epochs, run_dir=work)
            cfg.name = f"prune:{model_name}"
            if spec.finetune_lr is not None:  # a pruned net usually needs more than a fine-tune lr
                cfg.lr = spec.finetune_lr
            if spec.finetune_warmup is not None:  # it starts from a trained net, not from scratch
                cfg.warmup_epochs = spec.finetune_warmup
            cfg.ema_decay = spec.finetune_ema
            task.model = pruned
            fit(Distilled(task, teacher, spec.distill) if teacher is not None else task, cfg)
            pruned = task.model.eval()
            del teacher
        after_acc = task.validate(pruned) if task.metric else {}
        export_onnx(pruned, model_name, work / "after.onnx", samples, simplify=False)
        # 40 runs in 8 interleaved rounds: with 20 in 5 the ratio swung 0.65-0.80 on this
        # shared machine for the same two models (~3 s more per pruned model)
        lat = compare_latency({"before": work / "before.onnx", "after": work / "after.onnx"},
                              samples[:1], threads=2, runs=40, rounds=8)
        before_lat, after_lat = lat["before"], lat["after"]
        key = task.metric
        m = {
            "params_before": report["params_before"], "params_after": report["params_after"],
            "macs_before": report["macs_before"], "macs_after": report["macs_after"],
            "latency_ms_before": before_lat["median_ms"], "latency_ms_after": after_lat["median_ms"],
            "latency_ratio": after_lat["median_ms"] / max(before_lat["median_ms"], 1e-9),
            f"{key}_before": before_acc.get(key), f"{key}_pruned": pruned_acc.get(key),
            f"{key}_after": after_acc.get(key),
            "export_max_abs_diff": before_onnx.get("max_abs_diff"),
            "batchnorm_reestimated": renormalised,
        }
        out = ctx.out_dir / f"{model_name}.pruned.pt"
        save_pruned(out, pruned, build, extra={"meta": meta, "metrics": m})
        # which layers lost how many channels (the report's table): the allocation's outcome
        layers = ctx.out_dir / f"{model_name}.channels.json"
        atomic_write_bytes(layers, json.dumps({k: report.get(k) for k in (
            "amount", "importance", "allocation", "round_to", "keep", "channels")}, indent=1).encode())
        for tmp in ("before.onnx", "after.onnx"):
            (work / tmp).unlink(missing_ok=True)
        outputs += [out, layers]
        metrics.update({f"{model_name}_{k}": v for k, v in m.items()})
        artifacts[f"{model_name}_pruned"] = str(out)
    return StageResult(outputs=outputs, metrics=metrics, artifacts=artifacts)


def _renormalise(task: Any, model: Any, batch_size: int) -> tuple[dict[str, float], bool]:
    """Re-estimate the pruned model's BatchNorm statistics on training batches, and keep them
    when the validation metric says they are better -> (the metric of the kept model, kept?).

    On the flagship's detector (30 %, before fine-tuning) re-estimation lifts hmean from 0.00 to
    0.10 after L1 pruning and Taylor-pruned models reach 0.76-0.89; a barely trained network
    can instead get near-zero variances that make its outputs fragile (fp16 parity failed on
    one), so the measurement decides; a tie keeps the old statistics.  Without a validation
    split the re-estimated ones are kept: fine-tuning in train mode replaces the running
    statistics within a few dozen steps anyway.
    """
    from .prune import recalibrate_batchnorm, task_batches

    stale = copy.deepcopy(model.state_dict())
    stale_acc = task.validate(model.eval()) if task.metric else {}
    if not recalibrate_batchnorm(model, task_batches(task, batch_size)):
        return stale_acc, False
    if not task.metric:
        return {}, True
    acc = task.validate(model.eval())
    better = (acc[task.metric] > stale_acc[task.metric]) == (getattr(task, "metric_mode", "max") == "max")
    if acc[task.metric] != stale_acc[task.metric] and better:
        return acc, True
    model.load_state_dict(stale)
    return stale_acc, False


def _keep(extra: list[str]) -> tuple[str, ...]:
    from .prune import DEFAULT_KEEP

    return tuple(DEFAULT_KEEP) + tuple(extra)


# ------------------------------------------------------------------------------- export


def run_export(ctx: StageContext) -> StageResult:
    """fp32 ONNX at optimize.export.opset, plus one file per older opset a TensorRT target
    needs (``<model>.opset13.onnx`` for TensorRT 8.2: torch then writes LayerNorm as primitive
    ops, which no converter reliably does after the fact)."""
    from ..data.charset import expand_charset
    from ..graph import compat_opsets
    from .export import ExportError, export_onnx

    spec = ctx.recipe.optimize.export
    outputs, metrics, artifacts = [], {}, {}
    for model_name in ("detector", "recognizer"):
        model = load_model(ctx, model_name)[0].eval()
        if model_name == "detector":
            side = ctx.recipe.models.detector.input_size
            samples = detector_samples(ctx, side) + detector_samples(ctx, max(64, side // 2), n=1)
        else:
            samples = recognizer_samples(ctx)
        for opset in (spec.opset, *compat_opsets(ctx.loaded)):
            suffix = "" if opset == spec.opset else f"_opset{opset}"
            out = ctx.out_dir / f"{model_name}{suffix.replace('_', '.')}.onnx"
            try:
                report = export_onnx(model, model_name, out, samples, opset, spec.simplify, spec.atol)
            except ExportError as exc:
                raise StageFailed(f"export {model_name} (opset {opset}): {exc}") from None
            outputs.append(out)
            artifacts[f"{model_name}_onnx{suffix}"] = str(out)
            metrics[f"{model_name}{suffix}_max_abs_diff"] = report.get("max_abs_diff")
            metrics[f"{model_name}{suffix}_bytes"] = out.stat().st_size
        metrics[f"{model_name}_simplified"] = report.get("simplified")
    artifacts["charset"] = expand_charset(ctx.recipe.dataset.charset)
    return StageResult(outputs=outputs, metrics=metrics, artifacts=artifacts)


# ------------------------------------------------------------------------------- build


def onnx_metric(ctx: StageContext, model_name: str, limit: int = GUARD_IMAGES) -> Any:
    """eval_fn(model_path) -> the accuracy the int8 guard protects, through onnxruntime on val.

    detector: ``eval_fn(path, recognizer=None)``, end-to-end line accuracy with ``recognizer``
    (default: the fp32 export) reading its boxes.  Not hmean: a quantized detector that still
    finds every line can draw its boxes a little tighter, and the crops lose characters
    (measured on the flagship: int8 detector -1.2 points hmean, -3 points end to end).
    recognizer: line accuracy on the ground-truth val crops.  Both use up to ``limit`` val
    images (their crops for the recognizer); 0.5 point is 2 lines there.
    """
    from ..data.manifest import load_image_rgb
    from .accuracy import end_to_end_accuracy, read_crops
    from .latency import make_session

    profile = ctx.profile
    assert profile is not None
    pp = ctx.recipe.models.postprocess
    rec = ctx.recipe.models.recognizer
    rec_inputs = model_inputs(ctx, "recognizer")
    charset = ctx.upstream_artifact("export", "charset")

    if model_name == "detector":
        records = (_records(ctx, "val") or _records(ctx, "train"))[:limit]
        images = [load_image_rgb(r.image) for r in records]
        gts = [[ln.to_dict() for ln in r.lines] for r in records]
        readers: dict[str, Any] = {}
        postprocess = {"thresh": pp.thresh, "box_thresh": pp.box_thresh,
                       "unclip_ratio": pp.unclip_ratio, "shrink_ratio": pp.shrink_ratio}

        def detector_fn(path: Any, recognizer: Path | None = None) -> float:
            at = str(recognizer or ctx.upstream_artifact("export", "recognizer_onnx"))
            if at not in readers:
                readers[at] = make_session(at, 2)
            return end_to_end_accuracy(make_session(path, 2), readers[at], images, gts, charset,
                                       max_side=detector_side(ctx), height=rec.height,
                                       max_width=rec.max_width, postprocess=postprocess,
                                       det_inputs=model_inputs(ctx, "detector"),
                                       rec_inputs=rec_inputs)["e2e_line_accuracy"]

        return detector_fn
    crops = (_crop_paths(ctx, "val") or _crop_paths(ctx, "train"))[: limit * 10]
    images = [load_image_rgb(p) for p, _ in crops]

    def recognizer_fn(path: Any) -> float:
        texts = read_crops(make_session(path, 2), images, charset, rec.height, rec.max_width,
                           inputs=rec_inputs)
        return sum(t == gt for t, (_, gt) in zip(texts, crops, strict=True)) / max(len(crops), 1)

    return recognizer_fn


def _int8(ctx: StageContext, work: Path, reduce_range: bool) -> tuple[dict[str, Path], dict[str, Any]]:
    """Calibrated static QDQ int8 of both models, on real training images and crops.

    Accuracy guard: each model's int8 accuracy on val is compared with its fp32 export; when
    the drop exceeds `optimize.quantize.max_drop`, the most quantization-sensitive nodes are kept
    in float (few at a time, re-measured each step) and recorded in the bundle manifest.  The
    recognizer goes first, on its crops; the detector is then scored end to end with that int8
    recognizer reading its boxes, against the fp32 pair - what verify measures.  Each model
    alone within 0.5 point could still lose 0.9 together (flagship, 40 val images).
    """
    from .quantize import (
        ImageCalibrationReader,
        QuantizationError,
        find_sensitive_nodes,
        quantize_static_qdq,
    )

    cal = ctx.recipe.optimize.calibration
    q = ctx.recipe.optimize.quantize
    profile = ctx.profile
    assert profile is not None
    train_images = [r.image for r in _records(ctx, "train")]
    train_crops = [p for p, _ in _crop_paths(ctx, "train")]
    rec = ctx.recipe.models.recognizer
    settings = {m: cal.for_model(m) for m in ("detector", "recognizer")}
    readers = {  # the recognizer first: the detector's guard reads with its int8 model
        "recognizer": ImageCalibrationReader.recognizer(  # batches of 8 crops: 4 crops per image
            train_crops, rec.height, rec.max_width, samples=settings["recognizer"]["samples"] * 4,
            batch_size=8, inputs=model_inputs(ctx, "recognizer")),
        "detector": ImageCalibrationReader.detector(
            train_images, detector_side(ctx), settings["detector"]["samples"],
            inputs=model_inputs(ctx, "detector")),
    }
    paths: dict[str, Path] = {}
    reports: dict[str, Any] = {}
    out_dir = work / "int8"
    out_dir.mkdir(parents=True, exist_ok=True)

    def int8_path(model_name: str, exclude: Any) -> Path:
        return out_dir / (f"{model_name}.onnx" if not exclude else f"{model_name}.x{len(exclude)}.onnx")

    for model_name, reader in readers.items():
        fp32 = Path(ctx.upstream_artifact("export", f"{model_name}_onnx"))
        cache = _calibration_cache(ctx, model_name, fp32, reader, settings[model_name])
        final = int8_path(model_name, ())
        partner = paths.get("recognizer") if model_name == "detector" else None
        shared = _int8_cache(ctx, model_name, cache, reduce_range, partner)
        if (reused := _reuse_int8(ctx, shared, final)) is not None:
            reports[model_name], paths[model_name] = reused, final
            continue

        def build(exclude: Any, fp32: Path = fp32, model_name: str = model_name, reader: Any = reader,
                  cache: Path = cache) -> Path:
            out = int8_path(model_name, exclude)
            how = settings[model_name]
            options = {"CalibPercentile": how["percentile"]} if how["method"] == "percentile" else None
            quantize_static_qdq(fp32, out, reader, how["method"], q.per_channel, reduce_range,
                                nodes_to_exclude=[*q.exclude, *exclude], calib_options=options,
                                calibration_cache=cache)
            return out

        metric = onnx_metric(ctx, model_name)
        baseline = metric(fp32) if partner else None  # the fp32 pair
        try:
            guard = find_sensitive_nodes(fp32, build, partial(metric, recognizer=partner) if partner else metric,
                                         q.max_drop, budget=8, ranking_inputs=reader, fp32_metric=baseline)
        except QuantizationError as exc:
            raise StageFailed(f"int8 {model_name}: {exc}") from None
        chosen = int8_path(model_name, guard.excluded)
        if chosen != final:
            chosen.replace(final)
        for stale in out_dir.glob(f"{model_name}.x*.onnx"):
            stale.unlink()
        reports[model_name] = {**guard.to_dict(), "calibration": settings[model_name],
                               **({"read_by": "int8 recognizer"} if partner else {})}
        if not guard.met:
            ctx.log.warning("int8 %s: drop still above max_drop after %d exclusions", model_name, len(guard.excluded))
        paths[model_name] = final
        _store_int8(shared, final, reports[model_name])
    return paths, reports


def _int8_cache(ctx: StageContext, model_name: str, calibration: Path, reduce_range: bool,
                partner: Path | None = None) -> Path:
    """Where a guarded int8 model of this run is kept for the other targets that would build
    exactly the same one: same calibration entry, weight settings, exclusions and guard (val
    data, input size, the exports it reads with and the int8 ``partner`` model, postprocessing).
    The flagship's local-cpu and rpi4 differ only in threads and transport; the guard's
    exclusion search takes ~1.5 min."""
    from ..config import stable_hash
    from ..fsutil import sha256_file

    q = ctx.recipe.optimize.quantize
    profile = ctx.profile
    assert profile is not None
    key = stable_hash({
        "calibration": calibration.name, "reduce_range": reduce_range, "per_channel": q.per_channel,
        "exclude": list(q.exclude), "max_drop": q.max_drop, "guard_images": GUARD_IMAGES,
        "max_side": detector_side(ctx), "exports": (ctx.upstream.get("export") or {}).get("outputs"),
        "models": ctx.recipe.models.model_dump(mode="json"),
        "partner": sha256_file(partner) if partner else None,
    })
    return ctx.run_dir / "cache" / "int8" / f"{model_name}-{key[:16]}"


def _reuse_int8(ctx: StageContext, shared: Path, final: Path) -> dict[str, Any] | None:
    """The cached guard report with its int8 model copied to ``final``, or None.  An entry
    whose model does not match its recorded sha256 (a killed copy) is deleted, never used."""
    from ..fsutil import sha256_file

    onnx, meta = shared.with_suffix(".onnx"), shared.with_suffix(".json")
    if not (onnx.exists() and meta.exists()):
        return None
    try:
        entry = json.loads(meta.read_text())
        valid = entry["sha256"] == sha256_file(onnx)
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        valid = False
    if not valid:
        ctx.log.warning("discarding unreadable int8 cache entry %s", shared)
        onnx.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        return None
    shutil.copyfile(onnx, final)
    return {**entry["report"], "reused": str(shared.relative_to(ctx.run_dir))}


def _store_int8(shared: Path, model: Path, report: dict[str, Any]) -> None:
    from . import atomic_write_bytes

    shared.parent.mkdir(parents=True, exist_ok=True)
    data = model.read_bytes()
    atomic_write_bytes(shared.with_suffix(".onnx"), data)
    entry = {"sha256": hashlib.sha256(data).hexdigest(), "report": report}
    atomic_write_bytes(shared.with_suffix(".json"), json.dumps(entry, indent=1, default=float).encode())


def _calibration_cache(ctx: StageContext, model_name: str, fp32: Path, reader: Any,
                       how: dict[str, Any]) -> Path:
    """Where the activation ranges of this model, data and method are kept for the whole run.

    Ranges do not depend on the target (reduce_range and per-channel weights are applied after
    calibrating), so the second int8 target of a run reuses the first one's instead of
    calibrating again (percentile calibration of the detector takes ~2 min here).  An entry
    that does not parse (a killed write) is deleted, never trusted.
    """
    from ..config import stable_hash
    from ..fsutil import sha256_file

    key = stable_hash({"model": sha256_file(fp32), "how": how, "items": [str(i) for i in reader.items],
                       "batch": reader.batch_size, "input": reader.fixed_hw, "data": (ctx.upstream.get("data") or {}).get("outputs")})
    path = ctx.run_dir / "cache" / "calibration" / f"{model_name}-{key[:16]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        try:
            json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            ctx.log.warning("discarding unreadable calibration cache %s", path)
            path.unlink()
    return path


def _tensorrt_onnx(ctx: StageContext, model_name: str) -> Path:
    """The export this TensorRT target can parse: the recipe's opset, or the older one export
    wrote for it."""
    from .tensorrt import max_onnx_opset

    profile = ctx.profile
    assert profile is not None and profile.tensorrt is not None
    opset = max_onnx_opset(profile.tensorrt.version)
    if opset < ctx.recipe.optimize.export.opset:
        return Path(ctx.upstream_artifact("export", f"{model_name}_onnx_opset{opset}"))
    return Path(ctx.upstream_artifact("export", f"{model_name}_onnx"))


def _fp16(ctx: StageContext, work: Path) -> dict[str, Path]:
    """fp16 ONNX of both models for a TensorRT target, refused when its TensorRT could not
    parse them (opset or operators; engine.compress.tensorrt.TRT_ONNX_SUPPORT)."""
    from .fp16 import FP16Error, convert_fp16
    from .tensorrt import check_onnx_ops

    profile = ctx.profile
    assert profile is not None and profile.tensorrt is not None
    inputs = {"detector": detector_samples(ctx, detector_side(ctx), n=2),
              "recognizer": recognizer_samples(ctx, n=1)}
    paths = {}
    for model_name, samples in inputs.items():
        fp32 = _tensorrt_onnx(ctx, model_name)
        out = work / "fp16" / f"{model_name}.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        # probabilities / logits: PP-OCRv6's deeper detector drifts to ~0.01 in fp16 on the CPU
        # provider (verify then measures what that costs end to end)
        atol = 3e-2 if model_name == "detector" else 0.25
        try:
            convert_fp16(fp32, out, samples, atol=atol)
        except FP16Error as exc:
            raise StageFailed(f"fp16 {model_name}: {exc}") from None
        problems = check_onnx_ops(out, profile.tensorrt.version)
        if problems:
            raise StageFailed(f"{ctx.param}: the {model_name} cannot be built on the device: "
                              f"{'; '.join(problems)}")
        paths[model_name] = out
    return paths


def _recognizer_shapes(shapes: dict[str, Any], height: int, max_width: int) -> dict[str, list[int]]:
    """The profile's recognizer optimisation profile at the model's line height, its widths
    no wider than the bundle's widest line (rounded up to the runtime's multiple of 8)."""
    widest = max(8, (max_width + 7) // 8 * 8)
    out = {k: [int(v[0]), int(v[1]), int(height), int(v[3])] for k, v in shapes.items()}
    out["max"][3] = widest
    out["opt"][3] = min(out["opt"][3], widest)
    out["min"][3] = min(out["min"][3], out["opt"][3])
    return out


def _manifest_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """What the device's pre-processing needs of a model's input convention."""
    return {k: inputs[k] for k in ("channels", "mean", "std", "downsample") if k in inputs}


def run_build(ctx: StageContext) -> StageResult:
    from .bundle import build_bundle
    from .tensorrt import tensorrt_build_plan, write_build_script

    profile = ctx.profile
    assert profile is not None and ctx.param
    work = ctx.out_dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    q = ctx.recipe.optimize.quantize
    reduce_range = q.reduce_range if q.reduce_range is not None else profile.reduce_range
    # a TensorRT device gets the export its TensorRT parses for every candidate (a Nano's
    # onnxruntime is as old as its TensorRT)
    fp32 = {m: _tensorrt_onnx(ctx, m) if profile.runtime == "tensorrt"
            else Path(ctx.upstream_artifact("export", f"{m}_onnx")) for m in ("detector", "recognizer")}
    models: dict[str, dict[str, Path]] = {"fp32": fp32}
    metrics: dict[str, Any] = {"reduce_range": reduce_range}
    if profile.runtime == "onnxruntime" and profile.precision in ("int8", "auto"):
        models["int8"], reports = _int8(ctx, work, reduce_range)
        for m, r in reports.items():
            metrics[f"{m}_fp32_metric"] = r["fp32_metric"]
            metrics[f"{m}_int8_metric"] = r["final_metric"]
            metrics[f"{m}_int8_excluded"] = len(r["excluded"])
            metrics[f"{m}_int8_reused"] = "reused" in r
        extra_meta_guard = {m: {k: r[k] for k in ("excluded", "met", "fp32_metric", "final_metric", "calibration",
                                                  "reused", "read_by") if k in r}
                            for m, r in reports.items()}
    else:
        extra_meta_guard = {}
    extra_files: dict[str, Path] = {}
    extra_meta: dict[str, Any] = {}
    if profile.runtime == "tensorrt":
        models["fp16"] = _fp16(ctx, work)
        trt = profile.tensorrt
        assert trt is not None
        plans = {}
        rec_shapes = _recognizer_shapes(trt.recognizer_shapes.model_dump(), ctx.recipe.models.recognizer.height,
                                        min(ctx.recipe.models.recognizer.max_width, profile.recognizer.max_width))
        for model_name, shapes in (("detector", trt.detector_shapes.model_dump()), ("recognizer", rec_shapes)):
            plans[model_name] = tensorrt_build_plan(
                f"models/fp16/{model_name}.onnx", "input", shapes, fp16=trt.fp16,
                workspace_mb=trt.workspace_mb, trtexec=trt.trtexec,
                timing_cache="timing.cache" if trt.timing_cache else None, trt_version=trt.version,
            )
        extra_meta["tensorrt"] = plans
        script_dir = work / "trt"
        for model_name, plan in plans.items():
            path = write_build_script(plan, script_dir / model_name)
            extra_files[f"build_engine_{model_name}.sh"] = path
    active = profile.precision if profile.precision in models else ("int8" if "int8" in models else "fp32")
    if profile.precision == "auto":
        active = "int8"  # measured and switched by verify (local) or check (device)
    rec = ctx.recipe.models.recognizer
    pp = ctx.recipe.models.postprocess
    bundle = build_bundle(
        ctx.out_dir / "bundle",
        models=models, active=active,
        charset=ctx.upstream_artifact("export", "charset"),
        detector={"input": "input", "max_side": detector_side(ctx),
                  **_manifest_inputs(model_inputs(ctx, "detector"))},
        recognizer={"input": "input", "height": rec.height, "max_width": min(rec.max_width, profile.recognizer.max_width),
                    "batch": profile.recognizer.batch, **_manifest_inputs(model_inputs(ctx, "recognizer"))},
        postprocess={"thresh": pp.thresh, "box_thresh": pp.box_thresh, "unclip_ratio": pp.unclip_ratio,
                     "shrink_ratio": pp.shrink_ratio, "min_text_score": pp.min_text_score},
        threads=profile.threads, providers=profile.providers, runtime=profile.runtime,
        target=ctx.param, arch=profile.arch,
        recipe={"name": ctx.recipe.name, "hash": ctx.recipe.content_hash()},
        val_records=_records(ctx, "val"), val_limit=ctx.recipe.verify.samples or BUNDLE_VAL_IMAGES,
        extra_files=extra_files, extra_meta={**extra_meta, "exclusions": list(q.exclude), "int8_guard": extra_meta_guard,
                    "built_on": platform.machine()},
    )
    shutil.rmtree(work, ignore_errors=True)
    from ..deploy.bundle import pack_bundle

    archive = pack_bundle(bundle)
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    metrics.update({"bundle_bytes": size, "candidates": sorted(models), "active": active})
    return StageResult(
        outputs=[bundle / "manifest.json", archive],
        metrics=metrics,
        artifacts={ctx.param: {"bundle": str(bundle), "archive": str(archive), "precision": active,
                               "candidates": sorted(models), "size_bytes": size}},
    )
