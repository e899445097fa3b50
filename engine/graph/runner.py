"""The doit adapter: compiled stages -> doit tasks, one action that runs a stage, a reporter.

Every stage becomes one doit task with
- ``file_dep``: the ``result.json`` of each upstream stage (plus dataset files and init
  checkpoints), so a stage re-runs when an upstream's *outputs* changed, not merely because it
  ran;
- ``targets``: its own ``result.json``, written last and atomically, so a stage that died half
  way is never taken as done;
- ``uptodate``: the hash of its key (the recipe fields, profile and facts it declares).

doit keeps its state in ``RUN_DIR/.doit.db``, committed after every successful stage.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from doit.dependency import Dependency, MD5Checker, SqliteDB
from doit.exceptions import TaskFailed, UnmetDependency
from doit.task import Task
from doit.tools import config_changed

from ..fsutil import atomic_write_json, sha256_file
from ..recipe import LoadedRecipe
from ..rundir import RESULT_FILE, RunDir
from ..stages import StageContext, StageFailed, StageResult, resolve
from ..stages.view import RecipeView, strict_reads
from .compile import Stage, upstream


class StateDB(SqliteDB):
    """doit's sqlite backend, able to commit without closing.

    doit writes task state only when the whole run ends; a run killed half way would forget
    the stages it had finished. Committing after every successful stage keeps them.
    """

    def commit(self) -> None:
        for task_id in self._dirty:
            self._conn.execute(
                "insert or replace into doit values (?,?)",
                (task_id, self.codec.encode(self._cache[task_id])),
            )
        self._conn.commit()
        self._dirty: set[str] = set()


def dependency(run: RunDir) -> Dependency:
    run.root.mkdir(parents=True, exist_ok=True)
    return Dependency(StateDB, str(run.db_file), checker_cls=MD5Checker)


def make_tasks(stages: Sequence[Stage], run: RunDir, action: Any) -> list[Task]:
    """One doit task per stage; ``action(name)`` runs it."""
    tasks = []
    for stage in stages:
        file_dep = [str(run.result_file(n)) for n in stage.needs] + list(stage.inputs)
        tasks.append(
            Task(
                stage.name,
                [(action, [stage.name])],
                file_dep=file_dep,
                targets=[str(run.result_file(stage.name))],
                task_dep=list(stage.needs),
                uptodate=[config_changed(stage.key_hash())],
                doc=f"{stage.kind} stage",
                verbosity=2,
            )
        )
    return tasks


def execute(stage: Stage, stages: Sequence[Stage], loaded: LoadedRecipe, run: RunDir) -> dict[str, Any] | TaskFailed:
    """The doit action of every stage: build its context, call it, then write result.json."""
    name = stage.name
    out_dir = run.stage_dir(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = stage_logger(name, run.log_file(name))
    upstream_results = {}
    for up in upstream(stages, stage.needs):
        content = run.result(up)
        if content is None:
            return TaskFailed(f"{name}: upstream {up} has no valid {RESULT_FILE}; rerun it")
        upstream_results[up] = content

    def undeclared(field_name: str) -> None:
        log.warning("read the undeclared recipe field %s: changing it will not re-run %s", field_name, name)

    ctx = StageContext(
        name=name, kind=stage.kind, param=stage.param,
        recipe=RecipeView.of(loaded.recipe, stage.reads, name, None if strict_reads() else undeclared),
        run=run, out_dir=out_dir, upstream=upstream_results, log=log, key=stage.key_hash(),
        profile=loaded.profiles[stage.param] if stage.reads_profile and stage.param else None,
        facts={f: stage.key[f] for f in stage.facts},
    )
    started = time.time()
    try:
        result = resolve(stage.kind)(ctx)
    except StageFailed as exc:
        log.error("%s", exc)
        return TaskFailed(str(exc))
    except Exception as exc:  # a bug: keep the traceback in the stage log
        log.error("%s", traceback.format_exc())
        return TaskFailed(f"{type(exc).__name__}: {exc} (traceback in {run.log_file(name)})")
    if isinstance(result, dict):
        result = StageResult(**result)
    elif result is None:
        result = StageResult()
    outputs = {run.relative(p): sha256_file(p) if Path(p).is_file() else "dir" for p in result.outputs}
    content = {
        "stage": name,
        "key": stage.key_hashes(),
        "outputs": outputs,
        "metrics": result.metrics,
        "artifacts": result.artifacts,
        "notes": result.notes,
    }
    atomic_write_json(run.result_file(name), content)
    atomic_write_json(run.timing_file(name), {"started": started, "seconds": time.time() - started})
    return {"key": stage.key_hash()}


def stage_logger(name: str, path: Path) -> logging.Logger:
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"engine.stage.{name}")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    return logger


@dataclass
class RunReport:
    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_run: list[str] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


class Reporter:
    """doit reporter that records what happened and prints one line per stage."""

    def __init__(self, report: RunReport, console: Any, flush: Any = None):
        self.report = report
        self.console = console
        self.flush = flush  # commits doit's state now, so a killed run keeps finished stages
        self._start: dict[str, float] = {}

    def initialize(self, tasks: Any, selected_tasks: Any) -> None:
        pass

    def get_status(self, task: Task) -> None:
        pass

    def execute_task(self, task: Task) -> None:
        self._start[task.name] = time.monotonic()
        self.console.print(f"[bold cyan]▶ {task.name}[/]")

    def add_success(self, task: Task) -> None:
        took = time.monotonic() - self._start.get(task.name, time.monotonic())
        if self.flush is not None:
            self.flush()
        self.report.executed.append(task.name)
        self.report.durations[task.name] = round(took, 3)
        self.console.print(f"[green]✓ {task.name}[/] [dim]({took:.1f} s)[/]")

    def add_failure(self, task: Task, fail: Any) -> None:
        if isinstance(fail, UnmetDependency):  # an upstream failed: this one never started
            self.report.not_run.append(task.name)
            return
        message = fail.get_msg().strip() if hasattr(fail, "get_msg") else str(fail)
        first = message.splitlines()[-1] if message else "failed"
        self.report.failed[task.name] = first
        self.console.print(f"[bold red]✗ {task.name}[/]: {first}")

    def skip_uptodate(self, task: Task) -> None:
        self.report.skipped.append(task.name)
        self.console.print(f"[dim]· {task.name} up to date[/]")

    def skip_ignore(self, task: Task) -> None:
        self.report.not_run.append(task.name)

    def cleanup_error(self, exception: Exception) -> None:
        self.console.print(f"[red]cleanup error: {exception}[/]")

    def runtime_error(self, msg: str) -> None:
        self.report.failed["(engine)"] = msg
        self.console.print(f"[bold red]error:[/] {msg}")

    def teardown_task(self, task: Task) -> None:
        pass

    def complete_run(self) -> None:
        pass
