"""int8 against fp32 end to end, through the device pipeline, pooled over several fresh plate sets.

    python bench/int8_pair.py                       # the flagship's built local-cpu bundle
    python bench/int8_pair.py --bundle runs/nameplates/build/local-cpu --seeds 777001 777002 424242

One set of 100 plates (~1000 lines) turns a few lines over between precisions by chance: a single
``bench/peer.py`` run resolves the int8 pair to about ±0.4 point, which is the size of the goal
(int8 within 0.5 point of fp32). This reads the same plates with each candidate of one bundle
(the build stage's keeps both; the verified one only the chosen precision) through
``OCRPipeline.predict``, language model included, for each seed (never a training seed), and
prints per seed and pooled: whitespace-insensitive line accuracy, CER (bench/peer.py's score)
and int8 minus fp32 in points. Writes bench/results/int8_pair.json (atomically).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SEEDS = (777001, 777002, 424242, 5151, 313131, 616161)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "runs" / "nameplates" / "build" / "local-cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="never training seeds")
    ap.add_argument("--count", type=int, default=100, help="plates per seed")
    ap.add_argument("--precisions", nargs=2, default=["fp32", "int8"], metavar=("BASE", "REDUCED"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "int8_pair.json")
    args = ap.parse_args()

    from peer import heldout_images, resolve_bundle, score, training_seeds

    from engine.data.synth import read_icdar_gt
    from engine.fsutil import atomic_write_json
    from engine.runtime.pipeline import OCRPipeline, load_image

    used = sorted(set(args.seeds) & training_seeds())
    if used:
        ap.error(f"--seeds {used} are training seeds of recipes under recipes/")
    bundle = resolve_bundle(args.bundle)
    base, reduced = args.precisions
    pipes = {p: OCRPipeline(bundle, p, threads=args.threads) for p in (base, reduced)}
    rows: list[dict[str, Any]] = []
    print(f"{'seed':>8s} {'lines':>6s} {base + ' acc':>9s} {reduced + ' acc':>9s} "
          f"{base + ' CER':>9s} {reduced + ' CER':>9s} {'change':>7s}")
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="int8-pair-") as tmp:
            images = heldout_images(Path(tmp), None, args.count, seed)
            gts = [read_icdar_gt(p.parent.parent / "gt" / f"gt_{p.stem}.txt") for p in images]
            decoded = [load_image(p) for p in images]
        row: dict[str, Any] = {"seed": seed}
        for name, pipe in pipes.items():
            r = score(gts, [pipe.predict(image) for image in decoded], [0.0] * len(decoded))
            row[name] = {"line_acc": r["line_acc"], "cer": r["cer"], "lines": r["gt_lines"],
                         "correct": round(r["line_acc"] * r["gt_lines"])}
        row["change_points"] = 100 * (row[reduced]["line_acc"] - row[base]["line_acc"])
        rows.append(row)
        print(f"{seed:8d} {row[base]['lines']:6d} {row[base]['line_acc']:9.4f} {row[reduced]['line_acc']:9.4f} "
              f"{row[base]['cer']:9.4f} {row[reduced]['cer']:9.4f} {row['change_points']:+7.2f}", flush=True)
    lines = sum(r[base]["lines"] for r in rows)
    pooled = {p: sum(r[p]["correct"] for r in rows) / lines for p in (base, reduced)}
    change = 100 * (pooled[reduced] - pooled[base])
    print(f"{'pooled':>8s} {lines:6d} {pooled[base]:9.4f} {pooled[reduced]:9.4f} {'':9s} {'':9s} {change:+7.2f}")
    atomic_write_json(args.out, {"bundle": str(bundle), "count": args.count, "rows": rows,
                                 "pooled": {**pooled, "lines": lines, "change_points": change}})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
