"""A finished run's bundle, every precision and every detector/recognizer pairing, scored end to
end on never-seen generated plates: what verify measures, on a set large enough to resolve it.

    python bench/verify_fresh.py --run runs/nameplates --target local-cpu --stage build --fresh 100

The engine's verify scores the bundle on the run's val images (40 for the flagship: one line
is 0.23 point of end-to-end accuracy there); this scores the same ONNX files, through the same
pre/post-processing the bundle's manifest prescribes, on 2N plates generated from a seed no
training set used (``prune_study.fresh_plates``), and also on the run's val images for
comparison.  Prints one table and writes bench/results/verify_fresh.json.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from prune_study import fresh_plates  # noqa: E402

from engine.compress import atomic_write_bytes  # noqa: E402
from engine.compress.accuracy import end_to_end_accuracy  # noqa: E402
from engine.compress.latency import make_session  # noqa: E402
from engine.data.manifest import load_image_rgb  # noqa: E402
from engine.runtime.postprocess import db_boxes  # noqa: E402
from engine.training.datasets import detection_records  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "nameplates")
    ap.add_argument("--target", default="local-cpu")
    ap.add_argument("--stage", choices=("verify", "build"), default="verify",
                    help="the verified bundle (only the precision verify chose, with candidates: chosen) "
                         "or the built one (every candidate precision)")
    ap.add_argument("--fresh", type=int, default=100, help="never-seen plates per split (x2)")
    ap.add_argument("--fresh-seed", type=int, default=424242, help="never used for training")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "verify_fresh.json")
    args = ap.parse_args(argv)

    bundle = args.run / args.stage / args.target / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    precisions = sorted(p.name for p in (bundle / "models").iterdir() if (p / "detector.onnx").exists())
    det, rec = manifest["detector"], manifest["recognizer"]
    known = inspect.signature(db_boxes).parameters  # the runtime's extra knobs are not box settings
    post = {k: v for k, v in manifest["postprocess"].items() if v is not None and k in known}
    sets = {"val": detection_records(args.run / "data" / "manifest.jsonl", "val")}
    rows = []
    with tempfile.TemporaryDirectory(prefix="verify_fresh.") as tmp:
        sets["fresh"] = fresh_plates(Path(tmp), args.fresh, args.fresh_seed)
        scored = {k: ([load_image_rgb(r.image) for r in recs], [[ln.to_dict() for ln in r.lines] for r in recs])
                  for k, recs in sets.items()}
        for d, r in itertools.product(precisions, precisions):
            row: dict[str, object] = {"detector": d, "recognizer": r}
            for name, (images, gts) in scored.items():
                acc = end_to_end_accuracy(make_session(bundle / "models" / d / "detector.onnx", 2),
                                          make_session(bundle / "models" / r / "recognizer.onnx", 2),
                                          images, gts, manifest["charset"], max_side=det["max_side"],
                                          height=rec["height"], max_width=rec["max_width"], postprocess=post,
                                          det_inputs=det, rec_inputs=rec, batch=rec["batch"],
                                          max_padding=rec.get("max_padding", 1.0))
                row[f"{name}_images"] = len(images)
                row[f"{name}_e2e_line_accuracy"] = round(acc["e2e_line_accuracy"], 4)
                row[f"{name}_hmean"] = round(acc["hmean"], 4)
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = next((x for x in rows if x["detector"] == x["recognizer"] == "fp32"), rows[0])
    print(f"\n{args.target}: end-to-end line accuracy (change vs the fp32 pair)")
    print(f"{'detector':9} {'recognizer':10} {'val':>16} {'fresh':>16}")
    for x in rows:
        cells = []
        for k in ("val", "fresh"):
            acc, ref = float(x[f"{k}_e2e_line_accuracy"]), float(base[f"{k}_e2e_line_accuracy"])  # type: ignore[arg-type]
            cells.append(f"{acc:.4f} ({100 * (acc - ref):+.1f})")
        print(f"{x['detector']:9} {x['recognizer']:10} {cells[0]:>16} {cells[1]:>16}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, json.dumps({"run": str(args.run), "target": args.target,
                                             "fresh_plates": 2 * args.fresh, "rows": rows}, indent=1).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
