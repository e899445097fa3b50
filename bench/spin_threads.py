"""What onnxruntime's busy-waiting worker threads cost a bundle's end-to-end latency.

    python bench/spin_threads.py                        # the flagship's verified local-cpu bundle
    python bench/spin_threads.py --bundle DIR --rounds 3 --count 80 --threads 2

onnxruntime's intra-op workers spin (busy-wait) between operators by default, to pick up the
next one without a wake-up.  The device pipeline runs two sessions in turn, the detector's and the
recognizer's, each with its own pool: while one runs, the other's workers may still spin on the
same cores.  Target profiles therefore turn spinning off (``spin_threads: false``, the default).
This measures both settings on held-out plates (generated, a seed never trained on): each
setting runs in a fresh process (so neither's threads outlive its run into the other's), the
two alternating for ``--rounds`` rounds, and reports per setting the median and mean of each
round's per-plate latency plus line accuracy (the readings must not change).  Writes
bench/results/spin_threads.json (atomically).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SETTINGS = {"spin": True, "no spin": False}


def child(bundle: Path, data: Path, spin: bool, threads: int, warmup: int) -> int:
    """One process, one setting: JSON {"ms": [...], "lines": [...]} on stdout."""
    import cv2

    from engine.runtime.pipeline import OCRPipeline, load_image

    cv2.setNumThreads(threads)
    pipe = OCRPipeline(bundle, threads=threads, spin_threads=spin)
    images = [load_image(p) for p in sorted((data / "images").glob("*.jpg"))]
    for image in images[:warmup]:
        pipe.predict(image)
    ms, lines = [], []
    for image in images:
        out, t = pipe.timed_predict(image)
        ms.append(t)
        lines.append(out)
    print(json.dumps({"ms": ms, "lines": lines}))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "runs" / "nameplates" / "verify" / "local-cpu")
    ap.add_argument("--count", type=int, default=80, help="held-out plates")
    ap.add_argument("--seed", type=int, default=424242, help="never a training seed")
    ap.add_argument("--rounds", type=int, default=3, help="processes per setting, alternating")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3, help="untimed plates per process first")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "spin_threads.json")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # the data directory
    ap.add_argument("--spin", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()

    from peer import heldout_truths, resolve_bundle, score, training_seeds

    bundle = resolve_bundle(args.bundle)
    if args.child is not None:
        return child(bundle, args.child, bool(args.spin), args.threads, args.warmup)
    if args.seed in training_seeds():
        ap.error(f"--seed {args.seed} is a training seed of a recipe under recipes/")

    from engine.data.synth import generate_dataset, read_icdar_gt
    from engine.fsutil import atomic_write_json

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="spin-threads-") as tmp:
        data = Path(tmp)
        generate_dataset(data, count=args.count, seed=args.seed, workers=1)
        images = sorted((data / "images").glob("*.jpg"))
        heldout_truths(images)  # fails early on a broken ground-truth file
        gts = [read_icdar_gt(p.parent.parent / "gt" / f"gt_{p.stem}.txt") for p in images]
        for r in range(args.rounds):
            for name in (list(SETTINGS) if r % 2 == 0 else list(SETTINGS)[::-1]):
                cmd = [sys.executable, __file__, "--bundle", str(bundle), "--child", str(data),
                       "--spin", str(int(SETTINGS[name])), "--threads", str(args.threads),
                       "--warmup", str(args.warmup)]
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise SystemExit(f"{name} round {r + 1} failed:\n{done.stderr[-2000:]}")
                runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))

    results: dict[str, Any] = {}
    print(f"{args.count} held-out plates (seed {args.seed}), {args.threads} threads, {args.rounds} processes each")
    print(f"{'setting':10s} {'p50 ms per round':>28s} {'mean ms':>9s} {'line_acc':>9s}")
    for name, rs in runs.items():
        p50s = [statistics.median(x["ms"]) for x in rs]
        means = [statistics.fmean(x["ms"]) for x in rs]
        acc = score(gts, rs[0]["lines"], rs[0]["ms"])["line_acc"]
        same = all(x["lines"] == rs[0]["lines"] for x in rs)
        results[name] = {"spin_threads": SETTINGS[name], "p50_ms": [round(v, 1) for v in p50s],
                         "mean_ms": [round(v, 1) for v in means], "line_acc": acc, "same_readings": same}
        print(f"{name:10s} {' '.join(f'{v:8.1f}' for v in p50s):>28s} {statistics.fmean(means):9.1f} {acc:9.4f}")
    ratio = statistics.median(results["no spin"]["p50_ms"]) / statistics.median(results["spin"]["p50_ms"])
    same = runs["spin"][0]["lines"] == runs["no spin"][0]["lines"]
    print(f"no spin / spin, median of the rounds' p50: {ratio:.3f}; same readings: {same}")
    atomic_write_json(args.out, {"bundle": str(bundle), "count": args.count, "seed": args.seed,
                                 "threads": args.threads, "rounds": args.rounds, "results": results,
                                 "ratio": round(ratio, 4), "same_readings": same})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
