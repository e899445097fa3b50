"""What the language model buys on text like its labels, and what it costs on text it never saw.

    python bench/unseen_text.py --run runs/nameplates            # 100 plates of each kind

``models.decoder.type: lm`` reads lines with a character n-gram counted from the training labels
(engine/runtime/lm.py): the plates' keys, units and formats. A user's plates will also carry text
no label held: another maker's words, serial numbers. This renders held-out plates two ways and
reads every labelled line's ground-truth crop through the device runtime
(``OCRPipeline.recognize``), with the bundle's language model and greedy, for each precision:

* ``plates``: the generator as training used it (a seed no recipe trains on);
* ``scrambled``: the same kinds of plates with every letter and digit replaced at random (case
  and letter/digit kept, punctuation and spaces kept), so that no key, unit or word of the labels
  survives: the worst case for a language model of them.

Line accuracy exact and whitespace-insensitive, and CER. Prints a table and writes
bench/results/unseen_text.json (atomically).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import string
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from unseen_fonts import score  # noqa: E402  (exact and whitespace-insensitive line accuracy, CER)

from engine.compress import atomic_write_bytes  # noqa: E402


@contextlib.contextmanager
def scrambled_text(seed: int) -> Iterator[None]:
    """Every string the plate generator draws, with its letters and digits replaced at random."""
    from engine.data.synth import content

    rng = np.random.default_rng(seed)
    original = content.Sanitizer.__call__
    pools = (str.isdigit, string.digits), (str.isupper, string.ascii_uppercase), (str.islower, string.ascii_lowercase)

    def scramble(self: Any, text: str) -> str:
        out = []
        for ch in original(self, text):
            pool = next((p for test, p in pools if test(ch) and ch.isascii()), None)
            out.append(pool[int(rng.integers(len(pool)))] if pool else ch)
        return "".join(out)

    content.Sanitizer.__call__ = scramble  # type: ignore[method-assign]
    try:
        yield
    finally:
        content.Sanitizer.__call__ = original  # type: ignore[method-assign]


def crops_of(count: int, seed: int, charset: str) -> list[tuple[np.ndarray, str]]:
    """Ground-truth line crops of ``count`` generated plates (``###`` lines left out)."""
    from engine.data.synth.generator import generate_sample
    from engine.runtime.geometry import crop_polygon

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        image, lines = generate_sample(rng, charset=charset)[:2]
        out += [(crop_polygon(image, np.asarray(ln["points"], np.float32)), ln["text"])
                for ln in lines if not ln["ignore"] and ln["text"]]
    return out


def main(argv: list[str] | None = None) -> int:
    from engine.runtime.pipeline import OCRPipeline

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "nameplates")
    ap.add_argument("--target", default="local-cpu")
    ap.add_argument("--count", type=int, default=100, help="plates of each kind")
    ap.add_argument("--seed", type=int, default=606060, help="never a training seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "unseen_text.json")
    args = ap.parse_args(argv)

    bundle = args.run / "build" / args.target / "bundle"  # every candidate (verify keeps the chosen)
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    if (manifest["recognizer"].get("decoder") or {}).get("type") != "lm":
        raise SystemExit(f"{bundle}: built without a language model (models.decoder.type: lm)")
    charset = manifest["charset"]
    sets = {"plates": crops_of(args.count, args.seed, charset)}
    with scrambled_text(args.seed):
        sets["scrambled"] = crops_of(args.count, args.seed, charset)
    rows = []
    for precision in sorted(manifest["candidates"]):
        for decoder in ("greedy", "lm"):
            pipe = OCRPipeline(bundle, precision, threads=args.threads, decoder=decoder)
            for set_name, pairs in sets.items():
                texts = [t for t, _ in pipe.recognize([c for c, _ in pairs])]
                row = {"set": set_name, "precision": precision, "decoder": decoder, "lines": len(pairs),
                       **score(texts, [t for _, t in pairs])}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n{'set':<10} {'precision':<9} {'decoder':<7} {'lines':>6} {'exact':>7} {'no space':>9} {'CER':>7}")
    for r in rows:
        print(f"{r['set']:<10} {r['precision']:<9} {r['decoder']:<7} {r['lines']:>6} "
              f"{r['line_accuracy']:>7.4f} {r['no_space']:>9.4f} {r['cer']:>7.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, json.dumps({"rows": rows, "count": args.count, "seed": args.seed,
                                             "bundle": str(bundle), "decoder": manifest["recognizer"]["decoder"]},
                                            indent=1).encode())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
