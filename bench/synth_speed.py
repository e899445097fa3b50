"""Throughput of the synthetic nameplate generator (target: >= 20 images/s on one core at 640x480).

Measures, on ONE core (OpenCV limited to one thread):
- in-memory ``generate_sample`` (what on-the-fly training uses),
- ``generate_dataset`` with workers=1 (JPEG encode + label files included),
and optionally several worker processes.  Prints a table and writes
bench/results/synth_speed.json (atomically).

    python bench/synth_speed.py [--count 200] [--sizes 640x480,1280x960] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from engine.data.synth import generate_dataset, generate_sample
from engine.data.synth.generator import tune_allocator


def _rate(count: int, fn: Callable[[], object]) -> tuple[float, float]:
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    fn()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return count / wall, count / max(cpu, 1e-9)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--sizes", default="640x480")
    ap.add_argument(
        "--workers", type=int, default=0, help="also time generate_dataset with N processes"
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "synth_speed.json"))
    a = ap.parse_args(argv)
    cv2.setNumThreads(1)
    tuned = tune_allocator()
    generate_sample(np.random.default_rng(0))  # noise banks, font cache
    rows = []
    for spec in a.sizes.split(","):
        w, h = (int(v) for v in spec.split("x"))
        n = a.count

        def mem(w: int = w, h: int = h, n: int = n) -> None:
            for i in range(n):
                generate_sample(np.random.default_rng([1, i]), size=(w, h))

        wall, cpu = _rate(n, mem)
        rows.append(
            {
                "what": "generate_sample",
                "size": spec,
                "workers": 1,
                "count": n,
                "images_per_s": round(wall, 2),
                "images_per_cpu_s": round(cpu, 2),
            }
        )
        with tempfile.TemporaryDirectory() as tmp:

            def disk(tmp: str = tmp, w: int = w, h: int = h, n: int = n) -> None:
                generate_dataset(tmp, count=n, seed=1, size=(w, h))

            wall, cpu = _rate(n, disk)
        rows.append(
            {
                "what": "generate_dataset",
                "size": spec,
                "workers": 1,
                "count": n,
                "images_per_s": round(wall, 2),
                "images_per_cpu_s": round(cpu, 2),
            }
        )
        if a.workers > 1:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                generate_dataset(tmp, count=n, seed=1, size=(w, h), workers=a.workers)
                wall = n / (time.perf_counter() - t0)
            rows.append(
                {
                    "what": "generate_dataset",
                    "size": spec,
                    "workers": a.workers,
                    "count": n,
                    "images_per_s": round(wall, 2),
                    "images_per_cpu_s": None,
                }
            )
    print(f"{'what':<18} {'size':>9} {'workers':>7} {'count':>6} {'img/s':>8} {'img/cpu-s':>10}")
    for r in rows:
        cpu_s = "-" if r["images_per_cpu_s"] is None else f"{r['images_per_cpu_s']:.1f}"
        print(
            f"{r['what']:<18} {r['size']:>9} {r['workers']:>7} {r['count']:>6} {r['images_per_s']:>8.1f} {cpu_s:>10}"
        )
    result = {
        "benchmark": "synth_speed",
        "target_images_per_s": 20,
        "python": sys.version.split()[0],
        "opencv": cv2.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "malloc_tuned": tuned,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": rows,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_name, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
