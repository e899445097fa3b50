"""Training throughput (images or crops per second) of each model on this machine.

    python bench/train_throughput.py [--steps 6] [--threads 2]

Runs real optimisation steps (forward, DB or CTC loss, backward, Adam) on real synthetic
nameplates after two warm-up steps, for every detector backbone at two training sizes and
both recognizer heads. Prints a table and writes bench/results/train_throughput.json.
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
        for backbone in ("mobilenetv3", "resnet18"):
            for size in (384, 640):
                task = DetectorTask(data / "manifest.jsonl", backbone=backbone, train_size=size)
                rate = _steps(task, 4, args.steps)
                rows.append({"model": f"dbnet/{backbone}", "input": f"{size}x{size}", "batch": 4,
                             "per_s": round(rate, 2), "unit": "images"})
        for sequence in ("bilstm", "conv"):
            task = RecognizerTask(data / "crops", expand_charset("0-9A-Za-z -:./%()#+,"), sequence=sequence)
            rate = _steps(task, 32, args.steps)
            rows.append({"model": f"crnn/{sequence}", "input": "32 x <=320", "batch": 32,
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
