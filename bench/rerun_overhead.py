"""Wall time of a no-op rerun of a finished recipe, interpreter start included (goal <= 3 s).

    python bench/rerun_overhead.py                     # a tiny recipe finished by toy stages
    python bench/rerun_overhead.py --recipe recipes/nameplates.yaml   # a run you already finished

Prints a table and writes bench/results/rerun_overhead.json. The default mode finishes a small
recipe in-process with stage functions that write real files, then times `recipe run` and
`recipe plan` in fresh interpreters: what a user waits for when nothing changed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOY_RECIPE = """\
name: rerun-bench
dataset:
  synthetic: {count: 4, val_count: 2}
optimize:
  prune: {amount: 0.3}
targets: [local-cpu, rpi4, jetson-nano]
deploy:
  rpi4: {hosts: [pi@plate-reader-01, pi@plate-reader-02]}
"""


def finish_toy_run(recipe: Path, workdir: Path) -> None:
    from engine import stages
    from engine.graph import Pipeline
    from engine.recipe import load_recipe

    def toy(ctx: stages.StageContext) -> stages.StageResult:
        out = ctx.out_dir / "out.bin"
        out.write_bytes(ctx.name.encode() * 1000)
        return stages.StageResult(outputs=[out])

    for kind in stages.BY_KIND:
        stages.register(kind, toy)
    report = Pipeline(load_recipe(recipe, [f"workdir={workdir}"])).run()
    stages.unregister()
    if not report.ok:
        raise SystemExit(f"toy run failed: {report.failed}")


def time_command(cmd: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
        if "run" in cmd[3:4] and " 0 executed" not in out.stdout:
            raise SystemExit(f"not a no-op rerun:\n{out.stdout}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, help="an already finished recipe to rerun")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rerun_overhead.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.recipe:
            recipe, sets = args.recipe, []
        else:
            recipe = Path(tmp) / "rerun-bench.yaml"
            recipe.write_text(TOY_RECIPE)
            finish_toy_run(recipe, Path(tmp) / "runs")
            sets = ["--set", f"workdir={Path(tmp) / 'runs'}"]
        base = [sys.executable, "-m", "engine.cli"]
        rows = {
            "python -c pass (interpreter floor)": time_command([sys.executable, "-c", "pass", "x"], args.repeats),
            "recipe run (no-op)": time_command([*base, "run", str(recipe), *sets], args.repeats),
            "recipe plan": time_command([*base, "plan", str(recipe), *sets], args.repeats),
        }

    results = {
        name: {"median_s": statistics.median(t), "max_s": max(t), "runs": len(t)} for name, t in rows.items()
    }
    results["goal_s"] = 3.0  # type: ignore[assignment]
    print(f"{'command':40s} {'median s':>9s} {'max s':>7s}")
    for name, r in results.items():
        if isinstance(r, dict):
            print(f"{name:40s} {r['median_s']:9.3f} {r['max_s']:7.3f}")
    ok = results["recipe run (no-op)"]["median_s"] <= 3.0  # type: ignore[index]
    print(f"no-op rerun within 3 s: {'yes' if ok else 'NO'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
