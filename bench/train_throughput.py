"""Training throughput (images or crops per second) of each model on this machine.

    python bench/train_throughput.py [--steps 6] [--threads 2]

Runs real optimisation steps (forward, DB or CTC loss, backward, Adam) on real synthetic
nameplates after two warm-up steps, for every detector at two training sizes and every recognizer
(the PP-OCRv6 one at heights 48 and 32), all parameters trained. Prints a table and writes
bench/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# (arch, backbone) and (arch, sequence, height, max width): every registered variant, the
# PP-OCRv6 recognizer at its pretrained height and at the flagship's 32 (same width/height cap).
DETECTORS = (("dbnet", "mobilenetv3"), ("dbnet", "resnet18"), ("ppocrv6", "lcnetv4"))
RECOGNIZERS = (("crnn", "bilstm", 32, 320), ("crnn", "conv", 32, 320), ("ppocrv6", "svtr", 48, 960),
               ("ppocrv6", "svtr", 32, 640))


def _prepare(tmp: Path) -> Path:
    from engine.data.prepare import prepare_dataset
    from engine.data.synth import generate_dataset

    raw = tmp / "raw"
    generate_dataset(raw, count=24, seed=99)
    out = tmp / "prepared"
    prepare_dataset("icdar2015", raw, None, out, "0-9A-Za-z -:./%()#+,", val_fraction=0.1)
    return out


def _steps(task, batch_size: int, steps: int) -> float:
    import torch
    from torch.utils.data import DataLoader

    model = task.model.train()
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    loader = DataLoader(task.train_dataset(), batch_size=batch_size, shuffle=True,
                        collate_fn=getattr(task, "collate_fn", None), drop_last=True)
    times, n = [], 0
    while n < steps + 2:
        for batch in loader:
            start = time.perf_counter()
            loss, _ = task.compute_loss(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if n >= 2:
                times.append(time.perf_counter() - start)
            n += 1
            if n >= steps + 2:
                break
    return batch_size / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from engine.data.charset import expand_charset
    from engine.training.tasks import DetectorTask, RecognizerTask

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = _prepare(Path(tmp))
        for arch, backbone in DETECTORS:
            for size in (384, 640):
                task = DetectorTask(data / "manifest.jsonl", arch=arch, backbone=backbone, train_size=size)
                rate = _steps(task, 4, args.steps)
                rows.append({"model": f"{arch}/{backbone}", "input": f"{size}x{size}", "batch": 4,
                             "per_s": round(rate, 2), "unit": "images"})
        for arch, sequence, height, max_width in RECOGNIZERS:
            task = RecognizerTask(data / "crops", expand_charset("0-9A-Za-z -:./%()#+,"), arch=arch,
                                  sequence=sequence, height=height, max_width=max_width)
            rate = _steps(task, 32, args.steps)
            rows.append({"model": f"{arch}/{sequence}", "input": f"{height} x <={max_width}", "batch": 32,
                         "per_s": round(rate, 1), "unit": "crops"})
    print(f"{'model':18s} {'input':12s} {'batch':>5s} {'per second':>12s}")
    for r in rows:
        print(f"{r['model']:18s} {r['input']:12s} {r['batch']:5d} {r['per_s']:>8} {r['unit']}")
    out = ROOT / "bench" / "results" / "train_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
