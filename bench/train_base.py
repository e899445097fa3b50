"""Train the shipped base weights and score them on never-seen synthetic nameplates.

    python bench/train_base.py                  # all rounds (ROUNDS below), ~2 h on 2 cores
    python bench/train_base.py --recipe recipes/base-weights-finetune.yaml   # one recipe only
    python bench/train_base.py --set train.epochs=1 --no-install   # a quick look, weights untouched
    python bench/train_base.py --eval-only                      # re-score the committed weights

Runs each round's training stages (round 1 from scratch, later rounds continuing from the
previous one via `init: base`), copies its best checkpoints (model weights + metadata only)
into engine/weights/ after each round, then generates a fresh validation set with a seed never used for
training and reports detector hmean, recognizer line accuracy and end-to-end line accuracy
against the quality bar. Writes bench/results/base_weights.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (recipe, overrides, models trained): round 3 gives the recognizer, the weaker model, four more
# epochs on a third generated set (seed 3000).
ROUNDS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("base-weights.yaml", (), ("detector", "recognizer")),
    ("base-weights-finetune.yaml", (), ("detector", "recognizer")),
    ("base-weights-finetune.yaml",
     ("dataset.synthetic.seed=3000", "train.lr=3e-4", "train.recognizer.epochs=4"), ("recognizer",)),
    ("base-weights-finetune.yaml",
     ("dataset.synthetic.seed=4000", "dataset.synthetic.count=2400", "train.lr=3e-4",
      "train.recognizer.epochs=3"), ("recognizer",)),
    ("base-weights-finetune.yaml",
     ("dataset.synthetic.seed=5000", "dataset.synthetic.count=2400", "train.lr=2e-4",
      "train.recognizer.epochs=3"), ("recognizer",)),
)
BAR = {"hmean": 0.95, "line_accuracy": 0.97, "e2e_line_accuracy": 0.95}


def install(checkpoint: Path, dest: Path, recipe: Path) -> None:
    from engine.training.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(checkpoint)
    meta = dict(ckpt.get("meta") or {})
    meta["trained"] = {"epoch": ckpt.get("epoch"), "source": f"recipes/{recipe.name}"}
    save_checkpoint(dest, {"model": ckpt["model"], "meta": meta})
    print(f"installed {dest} ({dest.stat().st_size / 1e6:.1f} MB)")


def fresh_eval(detector: Path, recognizer: Path, count: int, seed: int) -> dict:
    from engine.data.prepare import prepare_dataset
    from engine.data.synth import generate_dataset
    from engine.training.evaluate import evaluate_models

    with tempfile.TemporaryDirectory() as tmp:
        raw, prepared = Path(tmp) / "raw", Path(tmp) / "prepared"
        generate_dataset(raw, count=count, seed=seed, workers=2)
        prepare_dataset("icdar2015", raw, raw, prepared, "0-9A-Za-z -:./%()#+,")
        return evaluate_models(
            detector, recognizer, prepared / "manifest.jsonl", prepared / "crops",
            {"thresh": 0.3, "box_thresh": 0.6, "unclip_ratio": 1.7, "shrink_ratio": None},
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, action="append", help="default: both rounds")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--eval-count", type=int, default=100)
    parser.add_argument("--eval-seed", type=int, default=424242, help="never used for training")
    parser.add_argument("--no-install", action="store_true", help="leave engine/weights alone")
    parser.add_argument("--eval-only", action="store_true", help="score the committed weights")
    parser.add_argument("--from-round", type=int, default=1, metavar="N",
                        help="start at round N of ROUNDS (earlier rounds' weights are installed)")
    args = parser.parse_args()

    from engine.graph import Pipeline
    from engine.recipe import load_recipe
    from engine.training.pretrained import BASE_WEIGHTS_DIR, base_weights

    both: tuple[str, ...] = ("detector", "recognizer")
    rounds: list[tuple[Path, tuple[str, ...], tuple[str, ...]]] = [
        (p, (), both) for p in args.recipe or []] or [
        (ROOT / "recipes" / name, sets, trained)
        for name, sets, trained in ROUNDS[max(args.from_round, 1) - 1:]]
    started = time.time()
    det = rec = Path()
    for path, sets, trained in rounds:
        loaded = load_recipe(path, [*sets, *args.set])
        models = loaded.recipe.models
        det = base_weights("detector", models.detector)
        rec = base_weights("recognizer", models.recognizer)
        if args.eval_only:
            break
        pipeline = Pipeline(loaded)
        report = pipeline.run(only=[f"train:{m}" for m in trained])
        if not report.ok:
            raise SystemExit(f"training failed ({path} {' '.join(sets)}): {report.failed}")
        for model in trained:
            best = pipeline.run_dir / "train" / model / "checkpoints" / "best.pt"
            if args.no_install:  # score this round's checkpoint without touching engine/weights
                det, rec = (best, rec) if model == "detector" else (det, best)
            else:  # the next round's `init: base` starts from these
                BASE_WEIGHTS_DIR.mkdir(exist_ok=True)
                install(best, base_weights(model, getattr(models, model)), path)
    metrics = fresh_eval(det, rec, args.eval_count, args.eval_seed)
    rows = [(k, metrics[k], bar, metrics[k] >= bar) for k, bar in BAR.items()]
    print(f"\n{'metric (fresh seed)':24s} {'value':>7s} {'bar':>6s}  met")
    for name, value, bar, ok in rows:
        print(f"{name:24s} {value:7.4f} {bar:6.2f}  {'yes' if ok else 'NO'}")
    print(f"cer {metrics['cer']:.4f}, precision {metrics['precision']:.4f}, recall {metrics['recall']:.4f}")
    out = ROOT / "bench" / "results" / "base_weights.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "rounds": [[str(p), list(sets), list(trained)] for p, sets, trained in rounds], "overrides": args.set, "eval_seed": args.eval_seed,
        "eval_count": args.eval_count, "metrics": metrics, "bar": BAR,
        "seconds": round(time.time() - started, 1),
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
