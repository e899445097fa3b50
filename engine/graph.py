"""Recipe -> doit task graph: which stages exist, what each depends on, and running them.

Every stage of the DESIGN stage table becomes one doit task with
- ``file_dep``: the ``result.json`` of each upstream stage (plus dataset files for `data`), so a
  stage re-runs when an upstream's *outputs* changed, not merely because it ran;
- ``targets``: its own ``result.json``, written last and atomically, so a stage that died half
  way is never taken as done;
- ``uptodate``: a hash of exactly the recipe sections (and target profile) it reads, so editing
  ``optimize.calibration`` re-runs build/verify/ship/check and nothing else.

doit keeps its state in ``RUN_DIR/.doit.db``; ``summary.json`` is rewritten after every run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from doit.control import TaskControl
from doit.dependency import Dependency, MD5Checker, SqliteDB
from doit.exceptions import TaskFailed, UnmetDependency
from doit.runner import Runner
from doit.task import Stream, Task
from doit.tools import config_changed

from . import stages as stage_impls
from .config import stable_hash, suggest
from .fsutil import atomic_write_json, sha256_file
from .recipe import LoadedRecipe

RESULT_FILE = "result.json"
ATTEMPT_FILE = "attempt.json"  # a stage that resumes (training) records its key here
SUMMARY_FILE = "summary.json"
DB_FILE = ".doit.db"
LOCK_FILE = ".lock"

STAGE_ORDER = ("data", "train", "evaluate", "prune", "qat", "export", "build", "verify", "ship", "check")


class _StateDB(SqliteDB):
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


class GraphError(Exception):
    """A request the graph cannot serve (unknown stage, run already in progress...)."""


# ----------------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str
    param: str | None
    needs: tuple[str, ...]
    key: dict[str, Any]  # section path -> JSON-able value; hashed for `uptodate`
    inputs: tuple[str, ...] = ()  # extra file dependencies (dataset files, init checkpoints)

    @property
    def out_subdir(self) -> Path:
        return Path(self.kind) / self.param if self.param else Path(self.kind)

    def key_hashes(self) -> dict[str, str]:
        return {section: stable_hash(value)[:16] for section, value in sorted(self.key.items())}

    def key_hash(self) -> str:
        return stable_hash(self.key_hashes())


def _dataset_files(loaded: LoadedRecipe) -> tuple[str, ...]:
    ds = loaded.recipe.dataset
    files: list[str] = []
    for root in (ds.train, ds.val):
        if root is None or not Path(root).exists():
            continue
        root = Path(root)
        if root.is_file():
            files.append(str(root))
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts):
                files.append(str(path))
    return tuple(files)


def _init_files(loaded: LoadedRecipe, model: str) -> tuple[str, ...]:
    """The init checkpoint as a file dependency: new base weights (or a retrained init
    checkpoint) retrain the model, though the recipe text did not change."""
    spec = getattr(loaded.recipe.models, model)
    path = Path(spec.init) if spec.init and spec.init != "base" else None
    if spec.init == "base":
        from .training.stage import base_weights  # no torch import: a path table

        path = base_weights(model, spec)
    return (str(path),) if path is not None and path.is_file() else ()


def compat_opsets(loaded: LoadedRecipe) -> list[int]:
    """Older ONNX opsets the recipe's TensorRT targets need besides optimize.export.opset (a
    Jetson Nano's TensorRT 8.2 parses opset 13 at most); export writes one more model each."""
    from .compress.tensorrt import max_onnx_opset  # standard library only

    opset = loaded.recipe.optimize.export.opset
    need = {max_onnx_opset(p.tensorrt.version) for p in loaded.profiles.values()
            if p.runtime == "tensorrt" and p.tensorrt is not None}
    return sorted(v for v in need if v < opset)


def compile_stages(loaded: LoadedRecipe) -> tuple[list[Stage], dict[str, str]]:
    """The stages a recipe needs, in execution order, and notices for stages left out."""
    r = loaded.recipe
    sec = r.section
    out: list[Stage] = []
    notices: dict[str, str] = {}

    out.append(Stage("data", "data", None, (), {"dataset": sec("dataset")}, _dataset_files(loaded)))
    for model in ("detector", "recognizer"):
        key = {
            f"models.{model}": sec(f"models.{model}"),
            f"train@{model}": r.train.for_model(model),
            "dataset.charset": sec("dataset.charset"),
        }
        out.append(Stage(f"train:{model}", "train", model, ("data",), key, _init_files(loaded, model)))
    trained = ("train:detector", "train:recognizer")
    evaluate_key = {
        "models.postprocess": sec("models.postprocess"),
        "verify.recognizer": {k: sec(f"verify.{k}") for k in ("min_word_accuracy", "max_cer", "samples")},
    }
    out.append(Stage("evaluate", "evaluate", None, ("data", *trained), evaluate_key))
    export_needs: tuple[str, ...] = trained
    if r.optimize.prune.amount > 0:
        key = {
            "optimize.prune": sec("optimize.prune"),
            **{f"train@{m}": r.train.for_model(m) for m in r.optimize.prune.models},
        }
        pruned = tuple(f"train:{m}" for m in r.optimize.prune.models)
        out.append(Stage("prune", "prune", None, ("data", *pruned), key))
        export_needs = ("prune", *trained)
    else:
        notices["prune"] = "optimize.prune.amount is 0"
    qat = r.optimize.quantize.qat
    if qat.models:
        from .compress.grid import qat_reduce_range  # standard library only

        key = {
            "optimize.quantize.qat": sec("optimize.quantize.qat"),
            "qat.reduce_range": qat_reduce_range(loaded),
            **{f"train@{m}": r.train.for_model(m) for m in qat.models},
        }
        out.append(Stage("qat", "qat", None, ("data", *export_needs), key))
        export_needs = ("qat", *export_needs)
    else:
        notices["qat"] = "optimize.quantize.qat.models is empty"
    export_key = {"optimize.export": sec("optimize.export"), "targets.opsets": compat_opsets(loaded)}
    out.append(Stage("export", "export", None, ("data", *export_needs), export_key))

    for target in r.targets:
        profile = loaded.profiles[target].model_dump(mode="json")
        base = {f"profile:{target}": profile}
        build_key = {
            **base,
            "optimize.quantize": sec("optimize.quantize"),
            "optimize.calibration": sec("optimize.calibration"),
            "models.postprocess": sec("models.postprocess"),
        }
        out.append(Stage(f"build:{target}", "build", target, ("data", "export"), build_key))
        verify_key = {**base, "verify": sec("verify")}
        out.append(Stage(f"verify:{target}", "verify", target, ("data", "evaluate", f"build:{target}"), verify_key))
        deploy = r.deploy.get(target)
        hosts = deploy.hosts if deploy else []
        if loaded.profiles[target].transport == "local" or hosts:
            deploy_key = {**base, f"deploy.{target}": deploy.model_dump(mode="json") if deploy else {}}
            out.append(Stage(f"ship:{target}", "ship", target, (f"verify:{target}",), deploy_key))
            check_key = {**deploy_key, "verify": sec("verify")}
            out.append(Stage(f"check:{target}", "check", target, (f"ship:{target}",), check_key))
        else:
            why = f"no hosts in deploy.{target}.hosts"
            notices[f"ship:{target}"] = why
            notices[f"check:{target}"] = why
    return out, notices


def downstream(stages: Sequence[Stage], roots: Sequence[str]) -> list[str]:
    """``roots`` and every stage that (transitively) needs one of them, in order."""
    selected = set(roots)
    for stage in stages:  # stages are in topological order
        if any(n in selected for n in stage.needs):
            selected.add(stage.name)
    return [s.name for s in stages if s.name in selected]


def upstream(stages: Sequence[Stage], roots: Sequence[str]) -> list[str]:
    by_name = {s.name: s for s in stages}
    selected: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in selected:
            selected.add(name)
            todo.extend(by_name[name].needs)
    return [s.name for s in stages if s.name in selected]


# ----------------------------------------------------------------------------------- files


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, or None when missing or corrupt (never trusted half-written)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ----------------------------------------------------------------------------------- lock


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One run of a recipe at a time; the kernel drops the lock if the holder dies."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fh = open(path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise GraphError(
                f"{run_dir}: another run of this recipe is in progress (pid {holder}, lock {path})"
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


# ----------------------------------------------------------------------------------- running


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


class _Reporter:
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


class Pipeline:
    """A loaded recipe bound to its run directory: plan, run, forget, summarise."""

    def __init__(self, loaded: LoadedRecipe, console: Any = None):
        from rich.console import Console

        self.loaded = loaded
        self.recipe = loaded.recipe
        self.run_dir = Path(self.recipe.run_dir)
        self.stages, self.notices = compile_stages(loaded)
        self.by_name = {s.name: s for s in self.stages}
        self.console = console or Console(highlight=False)

    # -- names ------------------------------------------------------------------------------
    def check_names(self, names: Sequence[str]) -> None:
        known = list(self.by_name)
        for name in names:
            if name not in self.by_name:
                why = f" ({self.notices[name]})" if name in self.notices else ""
                raise GraphError(
                    f"no stage {name!r} in this recipe{why}{suggest(name, known)}; stages: {', '.join(known)}"
                )

    def out_dir(self, stage: Stage) -> Path:
        return self.run_dir / stage.out_subdir

    def result_path(self, stage: Stage) -> Path:
        return self.out_dir(stage) / RESULT_FILE

    # -- doit -------------------------------------------------------------------------------
    def _dependency(self) -> Dependency:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return Dependency(_StateDB, str(self.run_dir / DB_FILE), checker_cls=MD5Checker)

    def _tasks(self) -> list[Task]:
        tasks = []
        for stage in self.stages:
            file_dep = [str(self.result_path(self.by_name[n])) for n in stage.needs] + list(stage.inputs)
            tasks.append(
                Task(
                    stage.name,
                    [(self._execute, [stage.name])],
                    file_dep=file_dep,
                    targets=[str(self.result_path(stage))],
                    task_dep=list(stage.needs),
                    uptodate=[config_changed(stage.key_hash())],
                    doc=f"{stage.kind} stage",
                    verbosity=2,
                )
            )
        return tasks

    def _execute(self, name: str) -> dict[str, Any] | TaskFailed:
        """The doit action of every stage: call the implementation, then write result.json."""
        stage = self.by_name[name]
        out_dir = self.out_dir(stage)
        out_dir.mkdir(parents=True, exist_ok=True)
        log = _stage_logger(name, self.run_dir / "logs" / f"{name.replace(':', '_')}.log")
        upstream_results = {}
        for up in upstream(self.stages, stage.needs):
            content = read_json(self.result_path(self.by_name[up]))
            if content is None:
                return TaskFailed(f"{name}: upstream {up} has no valid {RESULT_FILE}; rerun it")
            upstream_results[up] = content
        ctx = stage_impls.StageContext(
            loaded=self.loaded, name=name, kind=stage.kind, param=stage.param,
            run_dir=self.run_dir, out_dir=out_dir, upstream=upstream_results, log=log,
            key=stage.key_hash(),
        )
        started = time.time()
        try:
            fn = stage_impls.resolve(stage.kind)
            result = fn(ctx)
        except stage_impls.StageFailed as exc:
            log.error("%s", exc)
            return TaskFailed(str(exc))
        except Exception as exc:  # a bug: keep the traceback in the stage log
            log.error("%s", traceback.format_exc())
            return TaskFailed(f"{type(exc).__name__}: {exc} (traceback in {log_path(self.run_dir, name)})")
        if isinstance(result, dict):
            result = stage_impls.StageResult(**result)
        elif result is None:
            result = stage_impls.StageResult()
        outputs = {}
        for path in result.outputs:
            path = Path(path)
            rel = os.path.relpath(path, self.run_dir)
            outputs[rel] = sha256_file(path) if path.is_file() else "dir"
        content = {
            "stage": name,
            "key": stage.key_hashes(),
            "outputs": outputs,
            "metrics": result.metrics,
            "artifacts": result.artifacts,
            "notes": result.notes,
        }
        atomic_write_json(self.result_path(stage), content)
        atomic_write_json(out_dir / "timing.json", {"started": started, "seconds": time.time() - started})
        return {"key": stage.key_hash()}

    def forget(self, names: Sequence[str]) -> list[str]:
        """Drop the saved state of ``names`` and everything downstream; returns what was dropped."""
        self.check_names(names)
        dropped = downstream(self.stages, names)
        dep = self._dependency()
        try:
            for name in dropped:
                dep.remove(name)
                out_dir = self.out_dir(self.by_name[name])
                (out_dir / RESULT_FILE).unlink(missing_ok=True)
                for marker in out_dir.glob(f"**/{ATTEMPT_FILE}"):  # no resuming a forced stage
                    marker.unlink()
        finally:
            dep.close()
        return dropped

    def run(
        self, only: Sequence[str] = (), force: Sequence[str] = (), keep_going: bool = True
    ) -> RunReport:
        self.check_names([*only, *force])
        report = RunReport()
        with run_lock(self.run_dir):
            if force:
                self.forget(force)
            selected = upstream(self.stages, only) if only else [s.name for s in self.stages]
            for name, why in self.notices.items():
                if not only and name.split(":")[0] in ("ship", "check"):
                    self.console.print(f"[yellow]- {name} skipped: {why}[/]")
            dep = self._dependency()
            control = TaskControl(self._tasks())
            control.process(selected)
            reporter = _Reporter(report, self.console, flush=dep.backend.commit)
            runner = Runner(dep, reporter, continue_=keep_going, stream=Stream(2))
            runner.run_all(control.task_dispatcher())
            ran = set(report.executed) | set(report.skipped) | set(report.failed)
            report.not_run += [n for n in selected if n not in ran and n not in report.not_run]
            self.write_summary(report)
            try:  # report.html/report.md are a by-product: never fail a run over them
                from .report import write_pipeline_report

                write_pipeline_report(self)
            except Exception as exc:
                logging.getLogger("engine.report").warning("run report not written: %s", exc)
                self.console.print(f"[yellow]run report not written: {exc}[/]")
        return report

    # -- plan / summary -------------------------------------------------------------------------
    def plan(self) -> list[dict[str, Any]]:
        """Each stage: will it run, and why (computed from doit's saved state, changes nothing)."""
        if not (self.run_dir / DB_FILE).exists():
            return [
                {"stage": s.name, "status": "run", "reasons": ["never ran"]} for s in self.stages
            ]
        dep = self._dependency()
        tasks = self._tasks()
        tasks_dict = {t.name: t for t in tasks}
        rows: list[dict[str, Any]] = []
        will_run: set[str] = set()
        try:
            for task in tasks:
                stage = self.by_name[task.name]
                status = dep.get_status(task, tasks_dict, get_log=True)
                reasons = self._reasons(stage, status.reasons)
                ups = [n for n in stage.needs if n in will_run]
                if ups:
                    reasons.append("after " + ", ".join(ups) + " (re-runs if their outputs change)")
                run = bool(reasons)
                if run:
                    will_run.add(task.name)
                rows.append(
                    {"stage": task.name, "status": "run" if run else "up-to-date", "reasons": reasons}
                )
        finally:
            dep.close()
        return rows

    def _reasons(self, stage: Stage, raw: dict[str, Any]) -> list[str]:
        reasons: list[str] = []
        if raw.get("missing_target"):
            reasons.append("never completed" if not self.out_dir(stage).exists() else "no result yet")
            return reasons
        if raw.get("uptodate_false"):
            previous = (read_json(self.result_path(stage)) or {}).get("key", {})
            current = stage.key_hashes()
            changed = [k for k in current if previous.get(k) != current[k]]
            reasons.append("changed: " + (", ".join(changed) if changed else "stage key"))
        result_owner = {str(self.result_path(s)): s.name for s in self.stages}
        for path in raw.get("changed_file_dep", []) or []:
            owner = result_owner.get(path)
            reasons.append(f"outputs of {owner} changed" if owner else f"input changed: {path}")
        for path in raw.get("missing_file_dep", []) or []:
            owner = result_owner.get(path)
            if owner is None:
                reasons.append(f"missing input: {path}")
        for key in ("added_file_dep", "removed_file_dep"):
            if raw.get(key):
                reasons.append(f"{key.replace('_', ' ')}: {len(raw[key])} files")
        return reasons

    def write_summary(self, report: RunReport) -> dict[str, Any]:
        artifacts: dict[str, Any] = {}
        metrics: dict[str, Any] = {}
        for stage in self.stages:
            content = read_json(self.result_path(stage))
            if content is None:
                continue
            artifacts.update(content.get("artifacts") or {})
            if content.get("metrics"):
                metrics[stage.name] = content["metrics"]
        summary = {
            "recipe": self.recipe.name,
            "recipe_path": str(self.loaded.path),
            "recipe_hash": self.recipe.content_hash(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "executed": report.executed,
            "skipped": report.skipped,
            "failed": report.failed,
            "not_run": report.not_run,
            "not_applicable": self.notices,
            "durations": report.durations,
            "artifacts": artifacts,
            "metrics": metrics,
        }
        atomic_write_json(self.run_dir / SUMMARY_FILE, summary)
        return summary

    def status(self) -> list[dict[str, Any]]:
        rows = []
        for stage in self.stages:
            content = read_json(self.result_path(stage))
            timing = read_json(self.out_dir(stage) / "timing.json") or {}
            rows.append(
                {
                    "stage": stage.name,
                    "done": content is not None,
                    "finished": timing.get("started"),
                    "seconds": timing.get("seconds"),
                    "metrics": (content or {}).get("metrics", {}),
                }
            )
        return rows


def log_path(run_dir: Path, stage: str) -> Path:
    return run_dir / "logs" / f"{stage.replace(':', '_')}.log"


def _stage_logger(name: str, path: Path) -> logging.Logger:
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
