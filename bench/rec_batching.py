"""How a bundle's recognizer should batch a plate's lines: time and accuracy per batching rule.

    python bench/rec_batching.py                       # the flagship's verified local-cpu bundle
    python bench/rec_batching.py --bundle DIR --max-padding 1.0 0.5 0.3 0.1 0.0

The device runtime reads a plate's detected lines sorted by width, in batches of at most the
profile's ``recognizer.batch`` whose padding stays within ``recognizer.max_padding``
(engine.runtime.preprocess.batch_by_width). Every crop is padded to its batch's widest, and on a
CPU padded columns cost as much as text; the padding also reaches an attention recognizer, so
the rule can change what is read. This runs the bundle's detector once per held-out plate
(generated, seed never trained on), then reads the same crops under each rule, the rules
interleaved plate by plate so machine noise hits them alike, and prints per rule: recognizer
milliseconds per plate (median and mean), recognizer calls per plate, the share of computed
columns that were padding, and end-to-end line accuracy (whitespace-insensitive, as
bench/peer.py scores it). Writes
bench/results/rec_batching.json (atomically).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "runs" / "nameplates" / "verify" / "local-cpu" / "bundle")
    ap.add_argument("--precision", help="bundle candidate (default: the manifest's active one)")
    ap.add_argument("--max-padding", type=float, nargs="+", default=[1.0, 0.5, 0.3, 0.1, 0.0])
    ap.add_argument("--batch", type=int, help="most crops per call (default: the bundle's)")
    ap.add_argument("--count", type=int, default=60, help="held-out plates")
    ap.add_argument("--seed", type=int, default=424242, help="never a training seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rec_batching.json")
    args = ap.parse_args()

    import cv2
    from peer import score  # bench/peer.py: the same whitespace-insensitive line accuracy

    from engine.data.synth import generate_dataset, read_icdar_gt
    from engine.fsutil import atomic_write_json
    from engine.runtime.pipeline import OCRPipeline, load_image
    from engine.runtime.postprocess import crop_polygon
    from engine.runtime.preprocess import batch_by_width, recognizer_widths

    cv2.setNumThreads(args.threads)
    pipe = OCRPipeline(args.bundle, args.precision, threads=args.threads)
    batch = args.batch or int(pipe.rec_cfg["batch"])
    height, max_width = int(pipe.rec_cfg["height"]), int(pipe.rec_cfg["max_width"])
    with tempfile.TemporaryDirectory(prefix="rec-batching-") as tmp:
        generate_dataset(Path(tmp), count=args.count, seed=args.seed, workers=1)
        images = sorted((Path(tmp) / "images").glob("*.jpg"))
        plates = []
        for path in images:
            image = load_image(path)
            boxes = pipe.detect(image)
            plates.append((boxes, [crop_polygon(image, pts) for pts, _ in boxes],
                           read_icdar_gt(Path(tmp) / "gt" / f"gt_{path.stem}.txt")))

    rules = [float(p) for p in args.max_padding]
    ms: dict[float, list[float]] = {p: [] for p in rules}
    calls: dict[float, int] = dict.fromkeys(rules, 0)
    cols: dict[float, list[int]] = {p: [0, 0] for p in rules}  # computed, padding
    lines: dict[float, list[list[dict[str, Any]]]] = {p: [] for p in rules}
    pipe.rec_cfg["batch"] = batch
    pipe.recognize(plates[0][1])  # warm-up
    for boxes, crops, _ in plates:
        widths = recognizer_widths(crops, height, max_width) if crops else []
        for p in rules:
            pipe.rec_cfg["max_padding"] = p
            t0 = time.perf_counter()
            texts = pipe.recognize(crops)
            ms[p].append((time.perf_counter() - t0) * 1000.0)
            for chunk in batch_by_width(widths, batch, p):
                calls[p] += 1
                computed = max(widths[i] for i in chunk) * len(chunk)
                cols[p][0] += computed
                cols[p][1] += computed - sum(widths[i] for i in chunk)
            lines[p].append([{"points": pts, "text": t} for (pts, _), (t, _) in zip(boxes, texts, strict=True)])

    gts = [gt for _, _, gt in plates]
    n = len(plates)
    per_line = sum(len(c) for _, c, _ in plates) / max(n, 1)
    print(f"\n{n} held-out plates (seed {args.seed}), {per_line:.1f} lines each, batch <= {batch}, "
          f"{args.threads} threads, {pipe.precision}")
    print(f"{'max_padding':>11s} {'rec p50 ms':>10s} {'mean ms':>8s} {'calls':>6s} {'padding':>8s} {'line_acc':>9s}")
    rows = []
    base = statistics.median(ms[rules[0]])
    for p in rules:
        acc = score(gts, lines[p], ms[p])["line_acc"]
        row = {"max_padding": p, "rec_ms_p50": round(statistics.median(ms[p]), 2),
               "rec_ms_mean": round(statistics.fmean(ms[p]), 2), "calls_per_plate": round(calls[p] / n, 2),
               "padding_share": round(cols[p][1] / max(cols[p][0], 1), 4), "line_acc": round(float(acc), 4),
               "vs_first": round(statistics.median(ms[p]) / base, 3) if base else None}
        rows.append(row)
        print(f"{p:11.2f} {row['rec_ms_p50']:10.1f} {row['rec_ms_mean']:8.1f} {row['calls_per_plate']:6.2f} "
              f"{row['padding_share']:8.3f} {row['line_acc']:9.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, {"bundle": str(args.bundle), "precision": pipe.precision, "batch": batch,
                                 "plates": n, "seed": args.seed, "threads": args.threads,
                                 "lines_per_plate": round(per_line, 2), "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
