"""Which operators to give int8: a finished run's exported models quantized with each operator
set (engine/compress/quantize.py OPERATOR_SETS), scored against fp32 on never-seen plates.

    python bench/int8_operators.py --run runs/nameplates --seed 777001 --count 150

The recognizer is scored on the plates' ground-truth crops (line accuracy), the detector end to
end with the fp32 recognizer reading its boxes; each int8 model is also timed against fp32 on one
fixed input (engine.compress.latency.compare_latency: interleaved, non-spinning sessions).
Calibration is the run's recipe's: its method and sample count per model, on its training
images and crops. One set of ~2000 lines resolves about +-0.4 point (50-60 lines change either
way between fp32 and int8): pool several seeds before trusting a difference. Prints one table
and writes bench/results/int8_operators.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from peer import heldout_images, heldout_truths, training_seeds  # noqa: E402

from engine.compress import atomic_write_bytes  # noqa: E402
from engine.compress.accuracy import end_to_end_accuracy, read_crops  # noqa: E402
from engine.compress.int8 import calib_options, calibration_readers  # noqa: E402
from engine.compress.latency import compare_latency, make_session  # noqa: E402
from engine.compress.quantize import OPERATOR_SETS, quantize_static_qdq  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "nameplates")
    ap.add_argument("--target", default="local-cpu", help="whose bundle manifest gives the inputs")
    ap.add_argument("--count", type=int, default=150, help="held-out plates")
    ap.add_argument("--seed", type=int, default=777001, help="never a training seed")
    ap.add_argument("--rounds", type=int, default=40, help="timed runs per model")
    ap.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "int8_operators.json")
    args = ap.parse_args()
    if args.seed in training_seeds():
        ap.error(f"--seed {args.seed} is a training seed of a recipe under recipes/; pick another")

    from engine.data.manifest import read_crop_labels
    from engine.recipe import load_recipe
    from engine.runtime.geometry import crop_polygon
    from engine.runtime.pipeline import load_image

    manifest = json.loads((args.run / "build" / args.target / "bundle" / "manifest.json").read_text())
    det, rec = manifest["detector"], manifest["recognizer"]
    post = {k: manifest["postprocess"][k] for k in ("thresh", "box_thresh", "unclip_ratio")}
    calibration = load_recipe(Path(json.loads((args.run / "summary.json").read_text())["recipe_path"])
                              ).recipe.optimize.calibration
    records = [json.loads(line) for line in (args.run / "data" / "manifest.jsonl").read_text().splitlines()]
    train_images = [r["image"] for r in records if r["split"] == "train"]
    train_crops = [p for p, _ in read_crop_labels(args.run / "data" / "crops" / "train")]
    fp32 = {m: args.run / "export" / f"{m}.onnx" for m in ("detector", "recognizer")}
    how_of = {m: calibration.for_model(m) for m in fp32}
    readers = calibration_readers(how_of, train_images, train_crops, max_side=det["max_side"], det_inputs=det,
                                  rec_height=rec["height"], rec_max_width=rec["max_width"], rec_inputs=rec)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="int8-operators-") as tmp:
        paths = heldout_images(Path(tmp), None, args.count, args.seed)
        images = [load_image(p) for p in paths]
        gts = heldout_truths(paths)
        truths = [[{"points": g.points, "text": g.text, "ignore": g.ignore} for g in lines] for lines in gts]
        crops = [crop_polygon(img, np.asarray(g.points, np.float32))
                 for img, lines in zip(images, gts, strict=True) for g in lines if not g.ignore]
        texts = [g.text for lines in gts for g in lines if not g.ignore]
        reader = make_session(fp32["recognizer"], 2)

        def score(model: str, path: Path) -> tuple[float, list[str] | None]:
            if model == "recognizer":
                read = read_crops(make_session(path, 2), crops, manifest["charset"], rec["height"], rec["max_width"],
                                  rec["batch"], rec["max_padding"], rec)
                return sum(a == b for a, b in zip(read, texts, strict=True)) / len(texts), read
            acc = end_to_end_accuracy(make_session(path, 2), reader, images, truths, manifest["charset"],
                                      max_side=det["max_side"], height=rec["height"], max_width=rec["max_width"],
                                      postprocess=post, det_inputs=det, rec_inputs=rec, batch=rec["batch"],
                                      max_padding=rec["max_padding"])
            return acc["e2e_line_accuracy"], None

        probe = {"detector": np.random.default_rng(0).random((1, 3, 384, 512), np.float32),
                 "recognizer": np.random.default_rng(0).random((16, 3, rec["height"], 320), np.float32)}
        for model in ("recognizer", "detector"):
            how = how_of[model]
            base, base_read = score(model, fp32[model])
            built = {"fp32": fp32[model]}
            for operators in OPERATOR_SETS:
                out = Path(tmp) / f"{model}.{operators}.onnx"
                quantize_static_qdq(fp32[model], out, readers[model], how["method"], True, args.reduce_range,
                                    calib_options=calib_options(how), operators=operators)
                built[operators] = out
            timed = compare_latency(built, [probe[model]], threads=2, runs=args.rounds, rounds=args.rounds)
            ms = {k: round(v["median_ms"], 1) for k, v in timed.items()}
            rows.append({"model": model, "operators": "fp32", "accuracy": round(base, 4), "ms": ms["fp32"]})
            for operators in OPERATOR_SETS:
                acc, read = score(model, built[operators])
                row = {"model": model, "operators": operators, "accuracy": round(acc, 4),
                       "drop_points": round(100 * (acc - base), 2), "ms": ms[operators],
                       "bytes": built[operators].stat().st_size}
                if read is not None and base_read is not None:  # lines that changed between fp32 and int8
                    row["changed_lines"] = sum((a == t) != (b == t) for a, b, t in zip(base_read, read, texts, strict=True))
                rows.append(row)
    print(f"\n{args.count} plates of seed {args.seed}: {len(texts)} ground-truth crops; the detector end to end "
          "with the fp32 recognizer")
    print(f"{'model':11s} {'operators':9s} {'accuracy':>8s} {'vs fp32':>8s} {'ms':>7s} {'changed':>8s}")
    for r in rows:
        drop = f"{r['drop_points']:+.2f}" if "drop_points" in r else ""
        print(f"{r['model']:11s} {r['operators']:9s} {r['accuracy']:8.4f} {drop:>8s} {r['ms']:7.1f} "
              f"{r.get('changed_lines', ''):>8}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, json.dumps({"run": str(args.run), "seed": args.seed, "plates": args.count,
                                             "crops": len(texts), "rows": rows}, indent=1).encode())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
