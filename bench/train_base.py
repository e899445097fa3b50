"""Train the shipped base weights and score them on never-seen synthetic nameplates.

    python bench/train_base.py                  # both rounds: base-weights.yaml, then -finetune
    python bench/train_base.py --recipe recipes/base-weights-finetune.yaml   # round 2 only
    python bench/train_base.py --set train.epochs=1 --no-install   # a quick look, weights untouched
    python bench/train_base.py --eval-only                      # re-score the committed weights

Runs each recipe (round 1 from scratch, round 2 continuing from round 1 via `init: base`) up to
`evaluate`, copies its best checkpoints (model weights + metadata only) into engine/weights/
after each round, then generates a fresh validation set with a seed never used for
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

ROUNDS = ("base-weights.yaml", "base-weights-finetune.yaml")
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
    from engine.training.stage import evaluate_models

    with tempfile.TemporaryDirectory() as tmp:
        raw, prepared = Path(tmp) / "raw", Path(tmp) / "prepared"
        generate_dataset(raw, count=count, seed=seed, workers=2)
        prepare_dataset("icdar2015", raw, raw, prepared, "0-9A-Za-z -:./%()#+,")
        return evaluate_models(
            detector, recognizer, prepared / "manifest.jsonl", prepared / "crops",
            {"thresh": 0.3, "box_thresh": 0.6, "unclip_ratio": 1.5, "shrink_ratio": None},
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, action="append", help="default: both rounds")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--eval-count", type=int, default=100)
    parser.add_argument("--eval-seed", type=int, default=424242, help="never used for training")
    parser.add_argument("--no-install", action="store_true", help="leave engine/weights alone")
    parser.add_argument("--eval-only", action="store_true", help="score the committed weights")
    args = parser.parse_args()

    from engine.graph import Pipeline
    from engine.recipe import load_recipe
    from engine.training.stage import BASE_WEIGHTS_DIR, base_weights

    recipes = args.recipe or [ROOT / "recipes" / n for n in ROUNDS]
    started = time.time()
    for path in recipes:
        loaded = load_recipe(path, args.set)
        models = loaded.recipe.models
        if args.eval_only:
            det = base_weights("detector", models.detector)
            rec = base_weights("recognizer", models.recognizer)
            break
        pipeline = Pipeline(loaded)
        report = pipeline.run(only=["evaluate"])
        if not report.ok:
            raise SystemExit(f"training failed ({path}): {report.failed}")
        det = pipeline.run_dir / "train" / "detector" / "checkpoints" / "best.pt"
        rec = pipeline.run_dir / "train" / "recognizer" / "checkpoints" / "best.pt"
        if not args.no_install:  # the next round's `init: base` starts from these
            BASE_WEIGHTS_DIR.mkdir(exist_ok=True)
            install(det, base_weights("detector", models.detector), path)
            install(rec, base_weights("recognizer", models.recognizer), path)
    metrics = fresh_eval(det, rec, args.eval_count, args.eval_seed)
    rows = [(k, metrics[k], bar, metrics[k] >= bar) for k, bar in BAR.items()]
    print(f"\n{'metric (fresh seed)':24s} {'value':>7s} {'bar':>6s}  met")
    for name, value, bar, ok in rows:
        print(f"{name:24s} {value:7.4f} {bar:6.2f}  {'yes' if ok else 'NO'}")
    print(f"cer {metrics['cer']:.4f}, precision {metrics['precision']:.4f}, recall {metrics['recall']:.4f}")
    out = ROOT / "bench" / "results" / "base_weights.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "recipes": [str(p) for p in recipes], "overrides": args.set, "eval_seed": args.eval_seed,
        "eval_count": args.eval_count, "metrics": metrics, "bar": BAR,
        "seconds": round(time.time() - started, 1),
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
