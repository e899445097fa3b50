"""Starting a training run: in this process, or as N processes through torchrun.

``train.gpus: N > 1`` makes the train stage start ``python -m torch.distributed.run
--standalone --nproc_per_node N -m engine.training.launch SPEC.json``; each process reads the
JSON spec, builds the task with the named factory (``"package.module:function"`` + kwargs),
joins the process group (`engine.training.ddp`) and runs `engine.training.loop.fit`, which wraps
the model in DDP. The spec is JSON (not pickle) so that a spec file can be read, diffed and
hashed like a recipe.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_bytes
from .ddp import barrier, cleanup, init_from_env
from .loop import TrainConfig, fit, result_from_checkpoints
from .seed import seed_everything


def write_spec(
    path: Path | str, factory: str, kwargs: dict[str, Any], config: dict[str, Any]
) -> Path:
    """Write the JSON spec that each torchrun process reads (atomically)."""
    path = Path(path)
    spec = {"factory": factory, "kwargs": kwargs, "config": config}
    atomic_write_bytes(path, json.dumps(spec, indent=2, default=str).encode("utf-8"))
    return path


def torchrun_command(spec: Path | str, nproc: int, extra: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={int(nproc)}",
        *extra,
        "-m",
        "engine.training.launch",
        str(spec),
    ]


def launch(
    spec: Path | str,
    nproc: int,
    *,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    cwd: Path | str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``nproc`` training processes with torchrun; raises CalledProcessError on failure."""
    full_env = dict(os.environ)
    full_env.setdefault("OMP_NUM_THREADS", "1")
    if env:
        full_env.update(env)
    return subprocess.run(
        torchrun_command(spec, nproc),
        env=full_env,
        cwd=cwd,
        check=True,
        timeout=timeout,
        text=True,
        capture_output=True,
    )


def run_training(
    factory: str,
    kwargs: dict[str, Any],
    config: Any,
    gpus: int = 1,
    *,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> Any:
    """The one call a train stage makes: in this process for ``gpus <= 1``, else via torchrun.

    ``factory`` is ``"package.module:callable"`` building the task from ``kwargs`` (JSON-able),
    e.g. ``"engine.training.tasks:DetectorTask"``; ``config`` a `TrainConfig`. Returns a
    `FitResult` (for torchrun runs, read back from the checkpoints rank 0 wrote). The torchrun
    output goes to ``<run_dir>/torchrun.log``.
    """
    if int(gpus) <= 1:
        seed_everything(config.seed, config.deterministic)
        return fit(resolve_factory(factory)(**kwargs), config)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = write_spec(run_dir / "ddp_spec.json", factory, kwargs, config.to_dict())
    try:
        proc = launch(spec, int(gpus), env=env, timeout=timeout)
    except subprocess.CalledProcessError as exc:
        (run_dir / "torchrun.log").write_text(
            (exc.stdout or "") + (exc.stderr or ""), encoding="utf-8"
        )
        tail = "\n".join(((exc.stdout or "") + (exc.stderr or "")).splitlines()[-30:])
        raise RuntimeError(
            f"torchrun with {gpus} processes failed ({exc.returncode}):\n{tail}"
        ) from None
    (run_dir / "torchrun.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    return result_from_checkpoints(run_dir)


def resolve_factory(name: str) -> Any:
    module_name, _, attr = name.partition(":")
    if not attr:
        raise ValueError(f"factory must look like 'package.module:function', got {name!r}")
    return getattr(importlib.import_module(module_name), attr)


def run_spec(spec_path: Path | str) -> Any:
    """Entry point of one torchrun process: join the group, build the task, fit."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    ctx = init_from_env()
    try:
        config = TrainConfig(**spec["config"])
        # Same seed on every rank so the model starts identical (DDP also broadcasts rank 0's).
        seed_everything(config.seed, config.deterministic)
        task = resolve_factory(spec["factory"])(**spec.get("kwargs", {}))
        result = fit(task, config)
        barrier()
        return result
    finally:
        if ctx.is_distributed:
            cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one process of a distributed training run")
    parser.add_argument("spec", help="JSON spec written by engine.training.launch.write_spec")
    args = parser.parse_args(argv)
    run_spec(args.spec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
