"""``recipe data synth``: write a synthetic ICDAR 2015 dataset from the command line.

Beside the generator (engine/data/synth) rather than inside it, because ``--preview`` draws a
contact sheet (engine/data/preview.py), which labels it in a font the generator discovers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from .synth.content import DEFAULT_CHARSET
from .synth.generator import LEVELS, STYLES, Line, generate_dataset, read_icdar_gt


def _parse_size(s: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in s.lower().split("x"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, got {s!r}") from e
    return w, h


def synth_cli(argv: Sequence[str] | None = None) -> int:
    """``recipe data synth --style nameplate --count N --seed S --out DIR [...]``."""
    ap = argparse.ArgumentParser(
        prog="recipe data synth", description="Write a synthetic OCR dataset (ICDAR 2015 layout)."
    )
    ap.add_argument("--style", default="nameplate", choices=STYLES)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="output directory (gets images/ and gt/)")
    ap.add_argument(
        "--charset",
        default=None,
        help="characters to use (default: digits, letters, ' -:./%%()#+,')",
    )
    ap.add_argument(
        "--size", type=_parse_size, default=(640, 480), help="WIDTHxHEIGHT, default 640x480"
    )
    ap.add_argument("--level", choices=LEVELS, default="line")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument(
        "--preview", default=None, help="also write a contact sheet PNG of the first 12 images"
    )
    a = ap.parse_args(list(argv) if argv is not None else None)
    charset = a.charset if a.charset is not None else DEFAULT_CHARSET
    try:
        from .charset import expand_charset  # ranges such as "0-9A-Z"

        charset = expand_charset(charset) if a.charset is not None else charset
    except ImportError:
        pass
    try:
        paths = generate_dataset(
            a.out, a.style, a.count, a.seed, charset, a.size, a.level, a.workers
        )
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.preview:
        from .preview import write_contact_sheet

        pairs: Iterable[tuple[Path, list[Line]]] = [
            (p, read_icdar_gt(Path(a.out) / "gt" / f"gt_{p.stem}.txt")) for p in paths[:12]
        ]
        write_contact_sheet(list(pairs), a.preview)
    print(f"wrote {len(paths)} images to {Path(a.out) / 'images'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(synth_cli())
