"""Pruning study on a finished run: which prune + fine-tune recipe keeps the detector's accuracy.

    python bench/prune_study.py --run runs/nameplates --variants oneshot,bn --epochs 6
    python bench/prune_study.py --run runs/nameplates --variants l1,lamp,taylor --epochs 0
    python bench/prune_study.py --run runs/nameplates --variants taylor --fresh 100 --ema 0.99

Each variant starts from the run's trained detector (train/detector/checkpoints/best.pt), prunes
``--amount`` of its channels, optionally re-estimates BatchNorm statistics, fine-tunes for
``--epochs`` on the run's training images (the prune stage's own training loop), and is scored on
the run's val images twice: hmean (the prune stage's metric) and end-to-end line accuracy with
the run's fp32 recognizer export reading the boxes (what users lose); with ``--fresh N`` also
on 2N generated plates from a seed no training set used (``fresh_*`` columns), because 40 val
images swing ~1.5 points between two fine-tunes of the same recipe.  Rows:

    unpruned   the trained detector itself (the reference)
    run        the run's own pruned, fine-tuned detector (prune/detector.pruned.pt), scored only
    finetuned  the control: no pruning, the same fine-tune (what the fine-tune alone costs)
    oneshot    prune once, fine-tune
    bn         prune once, re-estimate BatchNorm, fine-tune
    iterN      N rounds of (prune amount/N of the original channels, re-estimate BN,
               fine-tune epochs/N)
    l1 / l2 / lamp / taylor   importance criterion with BN re-estimation (use --epochs 0 to
               compare the criteria before any fine-tuning)
    sensitivity  Taylor, the same MACs removed but spread by loss per MAC saved
               (``prune_model(allocation="sensitivity")``), BN re-estimated

Writes bench/results/prune_study.json (one row per variant, appended as each finishes).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.compress import atomic_write_bytes  # noqa: E402
from engine.compress.accuracy import end_to_end_accuracy  # noqa: E402
from engine.compress.distill import Distilled  # noqa: E402
from engine.compress.export import export_onnx  # noqa: E402
from engine.compress.latency import compare_latency, make_session  # noqa: E402
from engine.compress.prune import (  # noqa: E402
    count_macs_params,
    load_pruned,
    prune_model,
    recalibrate_batchnorm,
    task_batches,
    task_losses,
)
from engine.data.manifest import load_image_rgb  # noqa: E402
from engine.runtime.preprocess import detector_input  # noqa: E402
from engine.training.datasets import detection_records  # noqa: E402
from engine.training.loop import TrainConfig, fit  # noqa: E402
from engine.training.tasks import DetectorTask, model_from_checkpoint  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "prune_study.json"


def finetune(task: DetectorTask, model: torch.nn.Module, epochs: int, lr: float, work: Path,
             batch_size: int, warmup: float, teacher: torch.nn.Module | None = None,
             distill: float = 0.0, seed: int = 0, ema: float = 0.0) -> torch.nn.Module:
    if epochs <= 0:
        return model
    task.model = model
    trainee = Distilled(task, teacher, distill) if teacher is not None and distill > 0 else task
    fit(trainee, TrainConfig(run_dir=str(work), epochs=epochs, batch_size=batch_size, lr=lr,
                             warmup_epochs=warmup, resume=False, tensorboard=False, tty=False,
                             name="prune-study", device="cpu", seed=seed, ema_decay=ema))
    return task.model.eval()


def fresh_plates(root: Path, count: int, seed: int) -> list[Any]:
    """Records of ``count`` generated plates per split, from a seed no training set used: a
    held-out set ~5x the run's val, where one line is 0.05 point instead of 0.23."""
    from engine.data.prepare import prepare_dataset
    from engine.data.synth import generate_dataset

    generate_dataset(root / "raw", count=count, seed=seed, workers=1)
    prepare_dataset("icdar2015", root / "raw", root / "raw", root / "prepared", "0-9A-Za-z -:./%()#+,")
    return [r for split in ("train", "val") for r in detection_records(root / "prepared" / "manifest.jsonl", split)]


def with_extra_train(manifest: Path, root: Path, count: int, seed: int) -> Path:
    """A manifest of the run's records plus 2x``count`` generated plates, all of them in the
    train split (the run's val stays the val): does the fine-tune lack data or capacity?"""
    extra = fresh_plates(root, count, seed)
    combined = root / "manifest.jsonl"
    lines = manifest.read_text(encoding="utf-8").splitlines()
    for record in extra:
        item = record.to_dict()
        item["split"] = "train"
        lines.append(json.dumps(item))
    combined.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return combined


def prune_variant(name: str, base: torch.nn.Module, task: DetectorTask, args: argparse.Namespace,
                  example: torch.Tensor, work: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    model = copy.deepcopy(base)
    info: dict[str, Any] = {}
    rounds = int(name[4:]) if name.startswith("iter") else 1
    importance = name if name in ("l1", "l2", "lamp", "taylor") else args.importance
    allocation = "sensitivity" if name == "sensitivity" else "uniform"
    if allocation == "sensitivity":
        importance = "taylor"
    recal = name != "oneshot"

    if name == "finetuned":
        return finetune(task, model, args.epochs, args.lr, work / name, args.batch_size, args.warmup,
                        copy.deepcopy(base), args.distill, args.seed, args.ema), info
    kept = 1.0
    for r in range(1, rounds + 1):
        target = 1.0 - args.amount * r / rounds  # fraction of the original channels left
        step = 1.0 - target / kept
        kept = target
        losses = task_losses(task, args.taylor_batches, seed=args.seed + r) if importance == "taylor" else None
        model, _ = prune_model(model, example, step, importance, loss_fn=losses, allocation=allocation)
        if recal:
            recalibrate_batchnorm(model, task_batches(task, 8, seed=args.seed + r))
        if r == 1:
            info["hmean_pruned"] = task.validate(model.eval())["hmean"]
        model = finetune(task, model, args.epochs // rounds, args.lr, work / f"{name}-{r}",
                         args.batch_size, args.warmup, copy.deepcopy(base), args.distill, args.seed,
                         args.ema)
    return model, info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "nameplates")
    ap.add_argument("--variants", default="oneshot,bn")
    ap.add_argument("--amount", type=float, default=0.3)
    ap.add_argument("--importance", default="l1")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=float, default=0.0, help="warm-up epochs of the fine-tune")
    ap.add_argument("--distill", type=float, default=0.0, help="weight of the unpruned model's maps")
    ap.add_argument("--ema", type=float, default=0.0, help="EMA decay of the fine-tuned weights; 0: off")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--unclip", type=float, default=1.7)
    ap.add_argument("--eval-images", type=int, default=40)
    ap.add_argument("--taylor-batches", type=int, default=4, help="batches of 8 for Taylor gradients")
    ap.add_argument("--seed", type=int, default=0, help="seeds the fine-tune and the batches pruning sees")
    ap.add_argument("--fresh", type=int, default=0,
                    help="also score on this many never-seen generated plates (x2: train+val splits)")
    ap.add_argument("--fresh-seed", type=int, default=424242, help="never used for training")
    ap.add_argument("--extra-train", type=int, default=0,
                    help="fine-tune on 2x this many more generated plates beside the run's own")
    ap.add_argument("--extra-seed", type=int, default=777)
    ap.add_argument("--latency-repeats", type=int, default=1,
                    help="repeat the latency comparison; the median ratio is reported")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="prune_study.") as tmp:  # removed even on a crash
        return study(args, Path(tmp))


def study(args: argparse.Namespace, work: Path) -> int:
    run = args.run
    manifest = run / "data" / "manifest.jsonl"
    base, meta = model_from_checkpoint(run / "train" / "detector" / "checkpoints" / "best.pt")
    rec_meta = model_from_checkpoint(run / "train" / "recognizer" / "checkpoints" / "best.pt")[1]
    if (meta["arch"], rec_meta["arch"]) != ("dbnet", "crnn"):  # fixed input conventions below
        raise SystemExit(f"{run}: the study measures dbnet/crnn runs (this one is "
                         f"{meta['arch']}/{rec_meta['arch']}); PP-OCRv6 pruning: README")
    post = {"thresh": 0.3, "box_thresh": 0.6, "unclip_ratio": args.unclip}
    trained_on = (with_extra_train(manifest, work / "extra", args.extra_train, args.extra_seed)
                  if args.extra_train else manifest)
    task = DetectorTask(trained_on, backbone=meta["backbone"], train_size=384, input_size=640,
                        postprocess=post, val_limit=args.eval_images)
    charset = rec_meta["charset"]
    reader = make_session(run / "export" / "recognizer.onnx", 2)
    val = detection_records(manifest, "val")[: args.eval_images]
    sets = {"": val}
    feeds = [detector_input(load_image_rgb(r.image), 640)[0] for r in val[:2]]
    example = torch.from_numpy(feeds[0])

    rows: list[dict[str, Any]] = json.loads(args.out.read_text()) if args.out.exists() else []
    if args.fresh:
        sets["fresh_"] = fresh_plates(work / "fresh", args.fresh, args.fresh_seed)
    scored = {k: ([load_image_rgb(r.image) for r in recs], [[ln.to_dict() for ln in r.lines] for r in recs])
              for k, recs in sets.items()}
    for name in ["unpruned", *args.variants.split(",")]:
        t0 = time.monotonic()
        if name == "unpruned":
            model, info = base.eval(), {}
        elif name == "run":
            model, info = load_pruned(args.run / "prune" / "detector.pruned.pt")[0], {}
        else:
            model, info = prune_variant(name, base, task, args, example, work)
        onnx = work / f"{name}.onnx"
        export_onnx(model.eval(), "detector", onnx, feeds, simplify=False)
        macs, params = count_macs_params(model, example)
        row = {"variant": name, "amount": args.amount, "epochs": {"unpruned": 0, "run": None}.get(name, args.epochs),
               "lr": args.lr, "distill": args.distill, "ema": args.ema, "seed": args.seed, "macs_g": round(macs / 1e9, 3),
               "params_m": round(params / 1e6, 3), **info}
        if name != "unpruned":  # the prune stage's timing: 40 interleaved runs in 8 rounds
            ratios = []
            for _ in range(args.latency_repeats):  # 0.64-0.69 for one model here (spinning: 0.65-1.0)
                lat = compare_latency({"unpruned": work / "unpruned.onnx", name: onnx}, feeds[:1],
                                      threads=2, runs=40, rounds=8)
                ratios.append(round(lat[name]["median_ms"] / lat["unpruned"]["median_ms"], 3))
            row["latency_ratio"] = statistics.median(ratios)
            row["latency_ratios"] = ratios
        session = make_session(onnx, 2)
        for prefix, (images, gts) in scored.items():
            acc = end_to_end_accuracy(session, reader, images, gts, charset, max_side=640,
                                      height=32, max_width=320, postprocess=post)
            row.update({f"{prefix}{k}": round(v, 4) for k, v in acc.items()})
        row["seconds"] = round(time.monotonic() - t0, 1)
        row["extra_train_images"] = 2 * args.extra_train
        print(json.dumps(row), flush=True)
        rows.append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out, json.dumps(rows, indent=1).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
