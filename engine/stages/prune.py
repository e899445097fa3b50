"""The `prune` stage: structured channel pruning of the trained models, then a fine-tune.

Per model in ``optimize.prune.models``: rank channels (Taylor by default: weight x gradient of
the training loss on real batches), prune to ``amount`` (uniform, or the same MACs taken where
the loss per MAC saved is lowest), re-estimate BatchNorm statistics when that scores better,
fine-tune, and record params, MACs, ONNX latency and accuracy before and after plus the channels
each layer kept (``<model>.channels.json``). The pruned model is saved before fine-tuning
(``<model>/pruned.pt``), so a killed fine-tune resumes from the very model it started from.
"""

from __future__ import annotations

import copy
import json

from .contract import StageContext, StageResult
from .inputs import build_spec, resume_or_start, samples_for, task_for, train_config


def run(ctx: StageContext) -> StageResult:
    import torch

    from ..compress.distill import Distilled
    from ..compress.export import export_onnx
    from ..compress.latency import compare_latency
    from ..compress.prune import load_pruned, prune_model, renormalise, save_pruned, task_losses
    from ..fsutil import atomic_write_bytes
    from ..training.loop import fit
    from ..training.tasks import model_from_checkpoint

    spec = ctx.recipe.optimize.prune
    outputs, metrics, artifacts = [], {}, {}
    keep = [k for k in spec.keep]
    for model_name in spec.models:
        ckpt = ctx.upstream_artifact(f"train:{model_name}", f"{model_name}_checkpoint")
        model, meta = model_from_checkpoint(ckpt)
        task = task_for(ctx, model_name, model)
        before_acc = task.validate(model) if task.metric else {}
        samples = samples_for(ctx, model_name, meta)
        example = torch.from_numpy(samples[0])
        build = build_spec(meta)
        work = ctx.out_dir / model_name
        # resume only a fine-tune of these same settings, and from the very model it started
        # from: Taylor ranks come from gradients, so re-pruning is not guaranteed to give the
        # same channels (the resumed checkpoint would then not fit the model)
        start = work / "pruned.pt"
        resume_or_start(ctx, work, needs=(start.name,))
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
            pruned_acc, renormalised = renormalise(task, pruned, batch_size)
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
        artifacts.update({f"{model_name}_pruned": str(out), f"{model_name}_channels": str(layers),
                          f"{model_name}_prune_curves": str(work / "curves.png")})
    return StageResult(outputs=outputs, metrics=metrics, artifacts=artifacts)


def _keep(extra: list[str]) -> tuple[str, ...]:
    from ..compress.prune import DEFAULT_KEEP

    return tuple(DEFAULT_KEEP) + tuple(extra)


# ------------------------------------------------------------------------------- export
