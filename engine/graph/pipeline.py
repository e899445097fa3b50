"""A loaded recipe bound to its run directory: run, plan, forget, summarise, report.

`Pipeline` is what the CLI drives. It compiles the recipe against the stage table once, hands
the stages to doit (`engine.graph.runner`) under the run directory's lock, and after every run
rewrites ``summary.json`` and the run report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from doit.control import TaskControl
from doit.runner import Runner
from doit.task import Stream

from ..config import suggest
from ..fsutil import atomic_write_json
from ..recipe import LoadedRecipe
from ..rundir import RunDir
from .compile import compile_stages, downstream, upstream
from .plan import plan_rows, status_rows, summary
from .runner import Reporter, RunReport, dependency, execute, make_tasks


class GraphError(Exception):
    """A request the graph cannot serve (unknown stage name...)."""


class Pipeline:
    """A loaded recipe bound to its run directory: plan, run, forget, summarise."""

    def __init__(self, loaded: LoadedRecipe, console: Any = None):
        from rich.console import Console

        self.loaded = loaded
        self.recipe = loaded.recipe
        self.run_dir = Path(self.recipe.run_dir)
        self.layout = RunDir(self.run_dir)
        self.stages, self.notices = compile_stages(loaded)
        self.by_name = {s.name: s for s in self.stages}
        self.console = console or Console(highlight=False)

    def check_names(self, names: Sequence[str]) -> None:
        known = list(self.by_name)
        for name in names:
            if name not in self.by_name:
                why = f" ({self.notices[name]})" if name in self.notices else ""
                raise GraphError(
                    f"no stage {name!r} in this recipe{why}{suggest(name, known)}; stages: {', '.join(known)}"
                )

    def _execute(self, name: str) -> Any:
        return execute(self.by_name[name], self.stages, self.loaded, self.layout)

    def forget(self, names: Sequence[str]) -> list[str]:
        """Drop the saved state of ``names`` and everything downstream; returns what was dropped.
        A forgotten stage re-runs from the start (its attempt markers go too)."""
        self.check_names(names)
        dropped = downstream(self.stages, names)
        dep = dependency(self.layout)
        try:
            for name in dropped:
                dep.remove(name)
                self.layout.forget(name)
        finally:
            dep.close()
        return dropped

    def clean(self, names: Sequence[str]) -> list[str]:
        """Remove ``names``, their dependants and everything they wrote; returns what went."""
        import shutil

        with self.layout.lock():
            dropped = self.forget(names)
            for name in dropped:
                shutil.rmtree(self.layout.stage_dir(name), ignore_errors=True)
        return dropped

    def run(self, only: Sequence[str] = (), force: Sequence[str] = (), keep_going: bool = True) -> RunReport:
        self.check_names([*only, *force])
        report = RunReport()
        with self.layout.lock():
            if force:
                self.forget(force)
            selected = upstream(self.stages, only) if only else [s.name for s in self.stages]
            for name, why in self.notices.items():
                if not only and name.split(":")[0] in ("ship", "check"):
                    self.console.print(f"[yellow]- {name} skipped: {why}[/]")
            dep = dependency(self.layout)
            control = TaskControl(make_tasks(self.stages, self.layout, self._execute))
            control.process(selected)
            reporter = Reporter(report, self.console, flush=dep.backend.commit)
            runner = Runner(dep, reporter, continue_=keep_going, stream=Stream(2))
            runner.run_all(control.task_dispatcher())
            ran = set(report.executed) | set(report.skipped) | set(report.failed)
            report.not_run += [n for n in selected if n not in ran and n not in report.not_run]
            self.write_summary(report)
            try:  # report.html/report.md are a by-product: never fail a run over them
                self.write_report()
            except Exception as exc:
                logging.getLogger("engine.report").warning("run report not written: %s", exc)
                self.console.print(f"[yellow]run report not written: {exc}[/]")
        return report

    def plan(self) -> list[dict[str, Any]]:
        return plan_rows(self.stages, self.layout)

    def status(self) -> list[dict[str, Any]]:
        return status_rows(self.stages, self.layout)

    def write_summary(self, report: RunReport) -> dict[str, Any]:
        content = summary(self.loaded, self.stages, self.notices, self.layout, report)
        atomic_write_json(self.layout.summary_file, content)
        return content

    def write_report(self) -> tuple[Path, Path]:
        """``report.html`` and ``report.md`` of the run directory, with the recipe and profiles."""
        from ..report import write_report

        profiles: dict[str, str] = {name: p.precision for name, p in self.loaded.profiles.items()}
        return write_report(self.run_dir, self.recipe, [s.name for s in self.stages], profiles, self.notices)
