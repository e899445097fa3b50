"""Where a bundle's character errors come from: the detector's boxes, the recognizer, or int8.

    python bench/cer_breakdown.py                                   # the flagship's local-cpu build
    python bench/cer_breakdown.py --bundle runs/nameplates/build/local-cpu --count 100 --seed 777001
    python bench/cer_breakdown.py --decoder greedy          # without the bundle's language model

``bench/peer.py`` reports one CER per system (character edits over matched lines / ground-truth
characters). That number mixes three causes, and each needs a different fix:

* **oracle**: the recognizer alone, reading crops cut from the *ground-truth* boxes with the
  runtime's own ``crop_polygon`` and recognizer loop: the CER a perfect detector would leave;
* **end to end**: the device pipeline (``OCRPipeline.predict``), scored as peer.py scores it; the
  difference to the oracle is what the detector's boxes cost;
* each precision the bundle carries (fp32, int8, ...), on the same plates: what quantization
  costs, in both columns.

The end-to-end errors are also sorted into kinds, so a change can be aimed at the largest:
``merged`` (the box read the line and a neighbour: the prediction contains the truth),
``cut`` (the box lost part of the line: the prediction is a strict part of the truth),
``trailing`` (only trailing punctuation differs, the box ending before a final '.' or ':'),
``misread`` (everything else) and ``missed`` (no box matched the line; not in the CER, which is over
matched lines, but in line accuracy).  Every wrong line is written to the JSON for reading.

Data: ``engine.data.synth.generate_dataset`` with a seed no recipe trains on (default 424242,
peer.py's), or ``--data DIR`` (``images/`` + ``gt/``).  Prints a table and writes
bench/results/cer_breakdown.json (atomically).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from peer import heldout_images, heldout_truths, rapid_params, resolve_bundle, training_seeds  # noqa: E402

KINDS = ("merged", "cut", "trailing", "misread", "missed")
HEIGHTS = (0, 14, 18, 24, 10_000)  # line-height buckets (pixels in the image) of the oracle table
PUNCT = ".:,;"


def _flat(text: str) -> str:
    return "".join(text.split())


def error_kind(truth: str, pred: str) -> str:
    """The kind of a wrong reading (whitespace removed on both sides): see the module docstring."""
    t, p = _flat(truth), _flat(pred)
    if t in p:
        return "merged"
    if t.rstrip(PUNCT) == p.rstrip(PUNCT):
        return "trailing"
    if p and p in t:
        return "cut"
    return "misread"


def score_lines(pairs: list[tuple[str, str]], care: int) -> dict[str, Any]:
    """Line accuracy over ``care`` lines and CER over the (truth, prediction) pairs given."""
    from engine.training.metrics import edit_distance

    ok = sum(_flat(t) == _flat(p) for t, p in pairs)
    edits = sum(edit_distance(_flat(p), _flat(t)) for t, p in pairs)
    chars = sum(len(_flat(t)) for t, _ in pairs)
    return {"line_acc": ok / care if care else 0.0, "cer": edits / chars if chars else 0.0,
            "edits": edits, "chars": chars, "lines": care, "matched": len(pairs)}


def line_height(points: Any) -> float:
    """Mean length of a quadrilateral's two sides across the reading direction."""
    import numpy as np

    q = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(q) != 4:
        return float(np.ptp(q[:, 1]))
    return float(np.linalg.norm(q[3] - q[0]) + np.linalg.norm(q[2] - q[1])) / 2


def by_height(heights: list[float], correct: list[bool]) -> list[dict[str, Any]]:
    """Oracle line accuracy per line-height bucket (``HEIGHTS``)."""
    rows = []
    for lo, hi in itertools.pairwise(HEIGHTS):
        hits = [c for h, c in zip(heights, correct, strict=True) if lo <= h < hi]
        rows.append({"min_px": lo, "max_px": hi, "lines": len(hits),
                     "line_acc": sum(hits) / len(hits) if hits else None})
    return rows


def breakdown(pipe: Any, images: list[Any], gts: list[list[Any]]) -> dict[str, Any]:
    """Oracle and end-to-end scores of one pipeline, with the end-to-end errors by kind."""
    import numpy as np

    from engine.runtime.geometry import crop_polygon
    from engine.training.metrics import edit_distance, match_image

    oracle_pairs: list[tuple[str, str]] = []
    heights: list[float] = []
    e2e_pairs: list[tuple[str, str]] = []
    care = 0
    kinds: Counter[str] = Counter()
    kind_edits: Counter[str] = Counter()
    wrong: list[dict[str, Any]] = []
    for k, (img, lines) in enumerate(zip(images, gts, strict=True)):
        scored = [ln for ln in lines if not ln.ignore]
        texts = pipe.recognize([crop_polygon(img, np.asarray(ln.points, np.float32)) for ln in scored])
        oracle_pairs += [(ln.text, t) for ln, (t, _) in zip(scored, texts, strict=True)]
        heights += [line_height(ln.points) for ln in scored]
        dets = pipe.predict(img)
        m = match_image(lines, dets)
        care += m.gt_care
        matched = set()
        for i, j, _ in m.pairs:
            truth, pred = lines[i].text, str(dets[j].get("text", ""))
            matched.add(i)
            e2e_pairs.append((truth, pred))
            if _flat(truth) != _flat(pred):
                kind = error_kind(truth, pred)
                kinds[kind] += 1
                kind_edits[kind] += edit_distance(_flat(pred), _flat(truth))
                wrong.append({"image": k, "kind": kind, "truth": truth, "pred": pred})
        for i, ln in enumerate(lines):
            if i not in matched and not ln.ignore:
                kinds["missed"] += 1
                wrong.append({"image": k, "kind": "missed", "truth": ln.text, "pred": None})
    e2e = score_lines(e2e_pairs, care)
    correct = [_flat(t) == _flat(p) for t, p in oracle_pairs]
    return {"oracle": score_lines(oracle_pairs, len(oracle_pairs)), "end_to_end": e2e,
            "oracle_by_height": by_height(heights, correct),
            "kinds": {k: {"lines": kinds[k], "edits": kind_edits[k],
                          "cer_share": kind_edits[k] / e2e["chars"] if e2e["chars"] else 0.0}
                      for k in KINDS},
            "wrong": wrong}


def rapid_oracle(images: list[Any], gts: list[list[Any]], threads: int) -> dict[str, Any]:
    """RapidOCR's recognizer alone (``use_det=False``) on the same ground-truth crops: the peer's
    oracle, in-process (``pip install rapidocr==3.10.0``; peer.py's worker is for whole images)."""
    import cv2
    import numpy as np
    from rapidocr import RapidOCR

    from engine.runtime.geometry import crop_polygon

    engine = RapidOCR(params=rapid_params(threads))
    pairs: list[tuple[str, str]] = []
    for img, lines in zip(images, gts, strict=True):
        for ln in lines:
            if ln.ignore:
                continue
            crop = crop_polygon(img, np.asarray(ln.points, np.float32))
            out: Any = engine(cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), use_det=False, use_cls=False, use_rec=True)
            pairs.append((ln.text, "".join(getattr(out, "txts", None) or ())))
    return score_lines(pairs, len(pairs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "runs" / "nameplates" / "build" / "local-cpu",
                    help="bundle directory or its stage directory (default: the flagship's local-cpu "
                         "build, which keeps every precision)")
    ap.add_argument("--precision", nargs="*", help="candidates to score (default: all in the bundle)")
    ap.add_argument("--decoder", choices=("greedy",),
                    help="read with greedy CTC instead of the bundle's language model (the same models)")
    ap.add_argument("--count", type=int, default=100, help="held-out images")
    ap.add_argument("--seed", type=int, default=424242, help="never a training seed")
    ap.add_argument("--data", type=Path, help="an existing generate_dataset directory (images/, gt/)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rapid", action="store_true",
                    help="also RapidOCR's recognizer on the same ground-truth crops (needs rapidocr)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cer_breakdown.json")
    args = ap.parse_args()
    if args.count < 1:
        ap.error("--count must be >= 1")
    if args.data is None and args.seed in training_seeds():
        ap.error(f"--seed {args.seed} is a training seed of a recipe under recipes/; pick another")

    import cv2

    from engine.fsutil import atomic_write_json
    from engine.runtime.bundle_manifest import read_manifest
    from engine.runtime.pipeline import OCRPipeline, load_image

    cv2.setNumThreads(args.threads)
    bundle = resolve_bundle(args.bundle)
    precisions = args.precision or sorted(read_manifest(bundle)["candidates"])
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="cer-breakdown-") as tmp:
        paths = heldout_images(Path(tmp), args.data, args.count, args.seed)
        gts = heldout_truths(paths)
        images = [load_image(p) for p in paths]
        results = {p: breakdown(OCRPipeline(bundle, p, threads=args.threads, decoder=args.decoder), images, gts)
                   for p in precisions}
        peer = rapid_oracle(images, gts, args.threads) if args.rapid else None

    source = f"seed {args.seed}" if args.data is None else f"from {args.data}"
    print(f"\n{len(paths)} held-out nameplates ({source}), "
          f"{results[precisions[0]]['end_to_end']['lines']} lines; CER over matched lines, whitespace removed")
    print(f"{'precision':10s} {'oracle acc':>10s} {'oracle cer':>10s} {'e2e acc':>8s} {'e2e cer':>8s}  "
          + "  ".join(f"{k:>13s}" for k in KINDS))
    for p, r in results.items():
        o, e = r["oracle"], r["end_to_end"]
        cells = "  ".join(f"{r['kinds'][k]['lines']:4d} ({100 * r['kinds'][k]['cer_share']:.2f})"
                          if k != "missed" else f"{r['kinds'][k]['lines']:13d}" for k in KINDS)
        print(f"{p:10s} {o['line_acc']:10.4f} {o['cer']:10.4f} {e['line_acc']:8.4f} {e['cer']:8.4f}  {cells}")
    if peer is not None:
        print(f"{'RapidOCR':10s} {peer['line_acc']:10.4f} {peer['cer']:10.4f}  (its recognizer on the same crops)")
    print("error kinds: lines (their share of the end-to-end CER, in points of CER x 100)")
    print("oracle line accuracy by line height in the image (lines): " + "; ".join(
        f"{p}: " + ", ".join(f"{b['min_px']}-{b['max_px'] if b['max_px'] < 10_000 else ''} px "
                             f"{b['line_acc']:.3f} ({b['lines']})"
                             for b in r["oracle_by_height"] if b["lines"]) for p, r in results.items()))
    report = {"bundle": str(bundle), "images": len(paths),
              "seed": None if args.data else args.seed, "data": str(args.data) if args.data else "generated",
              "threads": args.threads, "decoder": args.decoder or "the bundle's", "results": results, "rapidocr_oracle": peer, "seconds": round(time.time() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
