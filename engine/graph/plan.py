"""What a run would do and what it did: the plan, the summary and the status rows.

`plan_rows` reads doit's saved state and changes nothing: each stage will run or is up to
date, and why — the declared fields whose value changed (``changed: optimize.calibration``),
an upstream whose outputs changed, a missing result. `summary` is the ``summary.json`` every
run rewrites; `status_rows` is what each stage last produced.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..recipe import LoadedRecipe
from ..rundir import RunDir, read_json
from .compile import Stage
from .runner import RunReport, dependency, make_tasks


def plan_rows(stages: Sequence[Stage], run: RunDir) -> list[dict[str, Any]]:
    """Each stage: will it run, and why (computed from doit's saved state, changes nothing)."""
    if not run.db_file.exists():
        return [{"stage": s.name, "status": "run", "reasons": ["never ran"]} for s in stages]
    dep = dependency(run)
    tasks = make_tasks(stages, run, lambda name: None)  # read, never executed
    tasks_dict = {t.name: t for t in tasks}
    by_name = {s.name: s for s in stages}
    rows: list[dict[str, Any]] = []
    will_run: set[str] = set()
    try:
        for task in tasks:
            stage = by_name[task.name]
            status = dep.get_status(task, tasks_dict, get_log=True)
            reasons = _reasons(stage, stages, run, status.reasons)
            ups = [n for n in stage.needs if n in will_run]
            if ups:
                reasons.append("after " + ", ".join(ups) + " (re-runs if their outputs change)")
            if reasons:
                will_run.add(task.name)
            rows.append({"stage": task.name, "status": "run" if reasons else "up-to-date", "reasons": reasons})
    finally:
        dep.close()
    return rows


def _reasons(stage: Stage, stages: Sequence[Stage], run: RunDir, raw: dict[str, Any]) -> list[str]:
    reasons: list[str] = []
    if raw.get("missing_target"):
        reasons.append("never completed" if not run.stage_dir(stage.name).exists() else "no result yet")
        return reasons
    if raw.get("uptodate_false"):
        previous = (run.result(stage.name) or {}).get("key", {})
        current = stage.key_hashes()
        changed = [k for k in current if previous.get(k) != current[k]]
        reasons.append("changed: " + (", ".join(changed) if changed else "stage key"))
    result_owner = {str(run.result_file(s.name)): s.name for s in stages}
    for path in raw.get("changed_file_dep", []) or []:
        owner = result_owner.get(path)
        reasons.append(f"outputs of {owner} changed" if owner else f"input changed: {path}")
    for path in raw.get("missing_file_dep", []) or []:
        if result_owner.get(path) is None:
            reasons.append(f"missing input: {path}")
    for key in ("added_file_dep", "removed_file_dep"):
        if raw.get(key):
            reasons.append(f"{key.replace('_', ' ')}: {len(raw[key])} files")
    return reasons


def summary(loaded: LoadedRecipe, stages: Sequence[Stage], notices: dict[str, str], run: RunDir,
            report: RunReport) -> dict[str, Any]:
    """The content of ``summary.json``: this run's outcome, every stage's metrics and artifacts."""
    artifacts: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    for stage in stages:
        content = run.result(stage.name)
        if content is None:
            continue
        artifacts.update(content.get("artifacts") or {})
        if content.get("metrics"):
            metrics[stage.name] = content["metrics"]
    return {
        "recipe": loaded.recipe.name,
        "recipe_path": str(loaded.path),
        "recipe_hash": loaded.recipe.content_hash(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "executed": report.executed,
        "skipped": report.skipped,
        "failed": report.failed,
        "not_run": report.not_run,
        "not_applicable": notices,
        "durations": report.durations,
        "artifacts": artifacts,
        "metrics": metrics,
    }


def status_rows(stages: Sequence[Stage], run: RunDir) -> list[dict[str, Any]]:
    rows = []
    for stage in stages:
        content = run.result(stage.name)
        timing = read_json(run.timing_file(stage.name)) or {}
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
