"""The run directory's layout: the one module that knows where a run keeps what.

A recipe's run directory (``WORKDIR/NAME/``) holds one directory per stage (``data/``,
``train/detector/``, ``build/rpi4/`` ...), doit's state, the stage logs, a lock, the summary and
the report, plus caches several stages share. The graph, every stage, the report and the CLI
reach those places through `RunDir`; a stage hands what it produced to the next through its
``result.json`` artifacts, never through a path the consumer spells itself. Keeping the layout in
one place is what lets ``recipe clean --stage`` and ``--force`` find everything a stage owns.

Files other processes may be writing (a result being replaced, a killed run's marker) are read
with `read_json`, which treats a missing, torn or non-object file as absent rather than trusting
half of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .fsutil import atomic_write_json

RESULT_FILE = "result.json"  # written last and atomically: a stage without one did not finish
TIMING_FILE = "timing.json"
ATTEMPT_FILE = "attempt.json"  # what a resumable stage (training, fine-tunes) was started with
HOSTS_FILE = "hosts.json"  # ship/check: one row per host, written even when some host failed
BUNDLE_DIR = "bundle"
SUMMARY_FILE = "summary.json"
DB_FILE = ".doit.db"
LOCK_FILE = ".lock"
LOGS_DIR = "logs"
REPORT_HTML = "report.html"
REPORT_MD = "report.md"
#: what a training attempt produces; cleared when an attempt starts fresh
ATTEMPT_OUTPUTS = ("checkpoints", "metrics.csv", "curves.png", "train.log")


class RunBusy(Exception):
    """Another process holds this run directory's lock."""


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object's content, or None when the file is missing, torn or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stage_subdir(stage: str) -> Path:
    """``train:detector`` -> ``train/detector``; ``evaluate`` -> ``evaluate``."""
    kind, _, param = stage.partition(":")
    return Path(kind) / param if param else Path(kind)


class RunDir:
    """Paths inside one recipe's run directory (nothing is created until asked)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # -- per stage ------------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        return self.root / stage_subdir(stage)

    def result_file(self, stage: str) -> Path:
        return self.stage_dir(stage) / RESULT_FILE

    def timing_file(self, stage: str) -> Path:
        return self.stage_dir(stage) / TIMING_FILE

    def log_file(self, stage: str) -> Path:
        return self.root / LOGS_DIR / f"{stage.replace(':', '_')}.log"

    def hosts_file(self, stage: str) -> Path:
        return self.stage_dir(stage) / HOSTS_FILE

    def bundle_dir(self, stage: str) -> Path:
        """``build:T`` and ``verify:T`` each keep one sealed bundle directory."""
        return self.stage_dir(stage) / BUNDLE_DIR

    def bundle_archive(self, stage: str) -> Path:
        return self.stage_dir(stage) / f"{BUNDLE_DIR}.tar.gz"

    def result(self, stage: str) -> dict[str, Any] | None:
        return read_json(self.result_file(stage))

    def finished_stages(self) -> list[str]:
        """Names of the stages that left a result here (for a report without the recipe)."""
        names = [p.parent.name for p in self.root.glob(f"*/{RESULT_FILE}")]
        names += [f"{p.parent.parent.name}:{p.parent.name}" for p in self.root.glob(f"*/*/{RESULT_FILE}")]
        return names

    def forget(self, stage: str) -> None:
        """Drop a stage's result and attempt markers: it re-runs, and from the start."""
        out = self.stage_dir(stage)
        (out / RESULT_FILE).unlink(missing_ok=True)
        for marker in out.glob(f"**/{ATTEMPT_FILE}"):
            marker.unlink()

    def relative(self, path: Path | str) -> str:
        """How result.json names an output: relative to the run directory."""
        return os.path.relpath(path, self.root)

    # -- shared by stages ---------------------------------------------------------------------
    def synthetic_dir(self) -> Path:
        """Generated train/val splits, reused while their spec is unchanged."""
        return self.root / "synthetic"

    @property
    def cache_dir(self) -> Path:
        """Results one target's build computes and another target's may reuse (calibration,
        guarded int8 models: engine.compress.int8), keyed by content inside."""
        return self.root / "cache"

    def local_releases(self, install_dir: str, target: str) -> Path:
        """Where a local-transport target installs: a relative install_dir lives in the run."""
        root = Path(install_dir)
        return root if root.is_absolute() else self.root / root / target

    # -- the run as a whole -------------------------------------------------------------------
    @property
    def db_file(self) -> Path:
        return self.root / DB_FILE

    @property
    def summary_file(self) -> Path:
        return self.root / SUMMARY_FILE

    @property
    def report_files(self) -> tuple[Path, Path]:
        return self.root / REPORT_HTML, self.root / REPORT_MD

    def summary(self) -> dict[str, Any] | None:
        return read_json(self.summary_file)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One run of a recipe at a time; the kernel drops the lock if the holder dies."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK_FILE
        fh = open(path, "a+")  # noqa: SIM115 - held for the whole run
        try:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "unknown"
                raise RunBusy(
                    f"{self.root}: another run of this recipe is in progress (pid {holder}, lock {path})"
                ) from None
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            yield
        finally:
            with contextlib.suppress(OSError):
                fh.seek(0)
                fh.truncate()
            fh.close()

    def remove(self) -> None:
        """Delete the whole run directory, holding its lock while the contents go."""
        if not self.root.exists():
            return
        with self.lock():
            for child in self.root.iterdir():
                if child.name == LOCK_FILE:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        shutil.rmtree(self.root, ignore_errors=True)


def start_attempt(work_dir: Path, attempt: dict[str, Any], needs: Sequence[str] = ()) -> bool:
    """Keep ``work_dir``'s checkpoints and logs when they belong to ``attempt``; otherwise clear
    them and record ``attempt`` (``attempt.json``). True when the work starts fresh.

    ``needs``: files in ``work_dir`` the checkpoints were trained from (the prune stage's
    ``pruned.pt``): the attempt resumes only while they all exist, and a fresh start deletes
    them with the checkpoints. A torn marker proves nothing: the work starts fresh.
    """
    previous = read_json(work_dir / ATTEMPT_FILE)
    if previous == attempt and all((work_dir / name).exists() for name in needs):
        return False
    for child in (*ATTEMPT_OUTPUTS, *needs):
        path = work_dir / child
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work_dir / ATTEMPT_FILE, attempt)
    return True
