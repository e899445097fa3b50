"""The GPU host's side of remote training: ``python -m engine.training.remote_host JOB.json``.

The laptop (`engine.training.remote`) uploads a job directory and starts this module there over
SSH. It runs the job with `run_training`, the very call a local train stage makes, holding a
lock on the job so two workers never train into the same directory. Started with
``--exit-with-stdin`` (as the laptop does), it terminates itself and its torchrun children when
its SSH channel closes, so a dropped connection never leaves an orphan training on the host.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ..fsutil import atomic_write_bytes

PID_FILE = "worker.pid"
LOCK_FILE = "worker.lock"
LOCK_WAIT_S = 60.0


def _die_with_stdin() -> None:
    """Terminate this process group when stdin closes (the controller's SSH channel ended)."""

    def watch() -> None:
        # os.read, not sys.stdin: a daemon thread blocked in the buffered reader aborts the
        # interpreter's shutdown ("could not acquire lock for <stdin>")
        with contextlib.suppress(OSError):
            while os.read(0, 1 << 12):
                pass
        with contextlib.suppress(OSError):  # stderr is usually the same dead channel
            print("controller disconnected: stopping the training", file=sys.stderr, flush=True)
        os.killpg(os.getpgrp(), signal.SIGTERM)

    with contextlib.suppress(OSError):  # its own group, unless it leads a session (sshd's setsid)
        os.setpgid(0, 0)
    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


def _follow(path: Path, stop: threading.Event) -> None:
    """Print lines appended to ``path`` (rank 0's train.log while torchrun owns the output)."""
    offset = path.stat().st_size if path.exists() else 0
    while True:
        done = stop.wait(0.5)
        if path.exists():
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
            cut = data.rfind(b"\n") + 1
            if cut:
                sys.stdout.write(data[:cut].decode("utf-8", "replace"))
                sys.stdout.flush()
                offset += cut
        if done:
            return


def worker(job_path: str, exit_with_stdin: bool = False) -> int:
    """Run one job spec with `run_training`; one worker per job at a time (file lock)."""
    import fcntl

    from .checkpoint import CheckpointError
    from .launch import run_training
    from .loop import TrainConfig, TrainingError

    path = Path(job_path)
    job = json.loads(path.read_text(encoding="utf-8"))
    if exit_with_stdin:
        _die_with_stdin()
    lock = open(path.parent / LOCK_FILE, "a+")  # noqa: SIM115 - held for the whole run
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                pid_file = path.parent / PID_FILE
                holder = pid_file.read_text().strip() if pid_file.exists() else "?"
                print(f"error: another worker (pid {holder}) is training {path.parent}",
                      file=sys.stderr, flush=True)
                return 3
            time.sleep(0.5)
    atomic_write_bytes(path.parent / PID_FILE, f"{os.getpid()}\n".encode())
    config = TrainConfig(**job["config"])
    gpus = int(job.get("gpus", 1))
    stop = threading.Event()
    follower = None
    if gpus > 1:
        follower = threading.Thread(
            target=_follow, args=(Path(config.run_dir) / "train.log", stop), daemon=True
        )
        follower.start()
    try:
        result = run_training(job["factory"], job["kwargs"], config, gpus=gpus)
    except (TrainingError, CheckpointError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        stop.set()
        if follower is not None:
            follower.join(timeout=5)
    print(f"finished: epoch {result.epoch}, step {result.step}, best epoch {result.best_epoch}",
          flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.training.remote_host", description="remote training (host side)"
    )
    parser.add_argument("job", help="job spec written by the laptop (factory, kwargs, config, gpus)")
    parser.add_argument("--exit-with-stdin", action="store_true",
                        help="stop (with torchrun's processes) when stdin closes")
    args = parser.parse_args(argv)
    return worker(args.job, args.exit_with_stdin)


if __name__ == "__main__":
    raise SystemExit(main())
