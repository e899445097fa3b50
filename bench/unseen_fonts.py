"""No forgetting: the fine-tuned recognizer against the zero-shot one on typefaces it never saw.

    python bench/unseen_fonts.py --run runs/nameplates            # 60 plates, both precisions

The flagship fine-tunes on plates rendered with DejaVu, Liberation, FreeFont and Noto Mono (the
generator's font directories). Users' plates use other typefaces, so a fine-tune that trades
away what PP-OCRv6 knows about them would look fine on the run's own val split and fail in the
field. This renders held-out plates with five other families only - Lato, Open Sans, Roboto
(sans), Fira Code (mono), Caladea (serif), Debian's fonts-lato, fonts-open-sans,
fonts-roboto-unhinted, fonts-firacode and fonts-crosextra-caladea (`.ci/setup.sh` installs them;
no training split ever reads their directories) - and reads every labelled line's ground-truth
crop with:
- ``zero-shot``: the pretrained recognizer with its classifier cut to the run's charset, as
  `epochs: 0` would ship it;
- ``fine-tuned``: the run's train stage output; ``qat``: after the quantization-aware
  fine-tune, when the run has one;
- the run's built bundle (``--target``): its fp32 and int8 recognizer through the device runtime's
  pre- and post-processing.
The same columns on the run's own val crops (the training fonts) give the other side.
Prints a table and writes bench/results/unseen_fonts.json.
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

from engine.compress import atomic_write_bytes  # noqa: E402
from engine.data.manifest import load_image_rgb, read_crop_labels  # noqa: E402

UNSEEN_FONT_DIRS = (
    "/usr/share/fonts/truetype/lato",
    "/usr/share/fonts/truetype/open-sans",
    "/usr/share/fonts/truetype/roboto/unhinted/RobotoTTF",
    "/usr/share/fonts/truetype/firacode",
    "/usr/share/fonts/truetype/crosextra",
)


def unseen_crops(count: int, seed: int, charset: str) -> list[tuple[np.ndarray, str]]:
    """Ground-truth line crops of ``count`` plates rendered with the held-out fonts only."""
    from engine.data.synth.fonts import NoFontsError, discover_fonts
    from engine.data.synth.generator import generate_sample
    from engine.runtime.geometry import crop_polygon

    try:
        families = sorted({f.family for f in discover_fonts(UNSEEN_FONT_DIRS, fallback=False)})
    except NoFontsError as exc:
        raise SystemExit(f"{exc}\n(apt-get install fonts-lato fonts-open-sans fonts-roboto-unhinted "
                         "fonts-firacode fonts-crosextra-caladea)") from None
    print(f"held-out typefaces: {', '.join(families)}", flush=True)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        image, lines = generate_sample(rng, charset=charset, font_dirs=UNSEEN_FONT_DIRS)[:2]
        for ln in lines:
            if not ln["ignore"] and ln["text"]:
                out.append((crop_polygon(image, np.asarray(ln["points"], np.float32)), ln["text"]))
    return out


def score(texts: list[str], truth: list[str]) -> dict[str, float]:
    from engine.training.metrics import recognition_metrics

    m = recognition_metrics(texts, truth)
    return {"line_accuracy": round(m["line_accuracy"], 4),
            "no_space": round(m["whitespace_insensitive_accuracy"], 4), "cer": round(m["cer"], 4)}


def torch_reader(checkpoint: Path | None, model: Any = None, meta: Any = None) -> Any:
    from engine.training.tasks import RecognizerTask, model_from_checkpoint

    if model is None:
        model, meta = model_from_checkpoint(checkpoint)
    task = RecognizerTask(Path(tempfile.gettempdir()), meta["charset"], meta["arch"], meta["sequence"],
                          meta["height"], meta["max_width"], meta.get("model_options"), model=model)

    def read(crops: list[np.ndarray]) -> list[str]:
        return [t for i in range(0, len(crops), 32) for t, _ in task.predict(model, crops[i : i + 32])]

    return read


def main(argv: list[str] | None = None) -> int:
    from engine.compress.accuracy import read_crops
    from engine.compress.latency import make_session
    from engine.compress.prune import load_pruned
    from engine.training.pretrained import pretrained_checkpoint, remap_charset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "nameplates")
    ap.add_argument("--target", default="local-cpu")
    ap.add_argument("--count", type=int, default=60, help="held-out plates")
    ap.add_argument("--seed", type=int, default=515151, help="never a training seed")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "unseen_fonts.json")
    args = ap.parse_args(argv)

    bundle = args.run / "build" / args.target / "bundle"  # every candidate (verify keeps the chosen)
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    charset, rec = manifest["charset"], manifest["recognizer"]
    sets = {"unseen fonts": unseen_crops(args.count, args.seed, charset),
            "run val (training fonts)": [(load_image_rgb(p), t) for p, t in
                                         read_crop_labels(args.run / "data" / "crops" / "val") if t]}
    readers: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="unseen_fonts.") as tmp:
        cut, _ = remap_charset(str(pretrained_checkpoint("recognizer")), charset, Path(tmp) / "zero.pt")
        readers["zero-shot"] = torch_reader(Path(cut))
        readers["fine-tuned"] = torch_reader(args.run / "train" / "recognizer" / "checkpoints" / "best.pt")
        qat = args.run / "qat" / "recognizer.qat.pt"
        if qat.exists():
            model, extra = load_pruned(qat)
            readers["qat"] = torch_reader(None, model, extra["meta"])
        for precision, files in sorted(manifest["candidates"].items()):
            session = make_session(bundle / files["recognizer"], 2)
            readers[f"bundle {precision}"] = (
                lambda crops, s=session: read_crops(s, crops, charset, rec["height"], rec["max_width"], inputs=rec))
        rows = []
        for set_name, pairs in sets.items():
            crops, truth = [c for c, _ in pairs], [t for _, t in pairs]
            for name, read in readers.items():
                row = {"set": set_name, "recognizer": name, "lines": len(truth), **score(read(crops), truth)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n{'set':<26} {'recognizer':<12} {'lines':>6} {'exact':>7} {'no space':>9} {'CER':>7}")
    for r in rows:
        print(f"{r['set']:<26} {r['recognizer']:<12} {r['lines']:>6} {r['line_accuracy']:>7.4f} "
              f"{r['no_space']:>9.4f} {r['cer']:>7.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, json.dumps({"rows": rows, "count": args.count, "seed": args.seed,
                                             "fonts": list(UNSEEN_FONT_DIRS)}, indent=1).encode())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
