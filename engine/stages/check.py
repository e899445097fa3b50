"""The `check:TARGET` stage: the installed release measured on every host; rollback if below.

The same ``runtime.check`` entry point verify ran here now runs in each host's ``current``
release; its report is scored here against the bundle's labels and held to the recipe's
``verify`` bars. A host below them is rolled back to its previous release and the stage fails.
`check_host` is also what ship runs on a canary, and on the hosts that got a release when
others failed (check would not run after a failed ship).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .contract import StageContext, StageFailed, StageResult


def bars_failed(metrics: dict[str, Any], verify: Any) -> list[str]:
    """The recipe's `verify` bars this measurement misses, as readable strings."""
    failed = []
    for bar, key, higher in (
        ("min_hmean", "hmean", True), ("min_line_accuracy", "e2e_line_accuracy", True),
        ("max_latency_ms", "latency_p50_ms", False),
    ):
        limit = getattr(verify, bar)
        value = metrics.get(key)
        if limit is None or value is None:
            continue
        if (higher and value < limit) or (not higher and value > limit):
            failed.append(f"{key} {value:.4g} {'<' if higher else '>'} {bar} {limit}")
    return failed


def check_host(ctx: StageContext, t: Any, python: str, labels: dict[str, Any]) -> dict[str, Any]:
    """``runtime.check`` in the host's current release, scored here; below the recipe's bars the
    host is rolled back to its previous release and StageFailed is raised."""
    from ..deploy.releases import current_release, rollback
    from ..training.metrics import score_predictions

    verify = ctx.recipe.verify
    release = current_release(t)
    limit = f" --limit {verify.samples}" if verify.samples else ""
    cmd = f"cd current && PYTHONDONTWRITEBYTECODE=1 {python} -m runtime.check --runs 2{limit}"
    report = json.loads(t.run(cmd, timeout=1800).stdout)
    m = score_predictions(report, labels)
    m.update(release=(release or "")[:12], precision=report.get("precision"),
             backend=report.get("backend"))
    missed = bars_failed(m, verify)
    if missed:
        try:
            m["rolled_back_to"] = rollback(t, python=python)[:12]
        except Exception as exc:
            m["rollback_error"] = str(exc)
        raise StageFailed(f"below the bar ({'; '.join(missed)}); rolled back to "
                          f"{m.get('rolled_back_to') or 'nothing (' + m['rollback_error'] + ')'}")
    return m


def host_python(ctx: StageContext, host: str | None) -> str:
    """The Python that runs the runtime on ``host``: this one for the local transport."""
    return sys.executable if host is None else ctx.target_profile().python


def transport(ctx: StageContext, host: str | None) -> Any:
    """The transport of one of this target's hosts (engine.deploy.fleet)."""
    from ..deploy.fleet import open_transport

    profile = ctx.target_profile()
    deploy = ctx.recipe.deploy.get(ctx.param or "")
    install_dir = (deploy.install_dir if deploy and deploy.install_dir else None) or profile.install_dir
    return open_transport(host, install_dir, deploy, ctx.run.local_releases(install_dir, ctx.param or ""))


def hosts(ctx: StageContext) -> list[str | None]:
    from ..deploy.fleet import fleet_hosts

    return fleet_hosts(ctx.target_profile().transport, ctx.recipe.deploy.get(ctx.param or ""))


def fleet(ctx: StageContext, work: Any, canary_work: Any = None) -> dict[str, dict[str, Any]]:
    """``work(host)`` on every host of the target, canary first when the deploy section asks."""
    from ..deploy.fleet import run_fleet
    from ..deploy.transport import DeployError

    deploy = ctx.recipe.deploy.get(ctx.param or "")
    return run_fleet(hosts(ctx), work, canary=bool(deploy and deploy.canary), parallel=deploy.parallel if deploy else 1,
                     errors=(DeployError, StageFailed, OSError), canary_work=canary_work)


def run(ctx: StageContext) -> StageResult:
    from ..deploy.bundle import bundle_labels
    from ..deploy.fleet import failures, write_hosts_table

    target = ctx.param
    assert target
    bundle = Path(ctx.upstream_artifact(f"verify:{target}", f"{target}:verified")["bundle"])
    labels = bundle_labels(bundle)

    def work(host: str | None) -> dict[str, Any]:
        with transport(ctx, host) as t:
            return check_host(ctx, t, host_python(ctx, host), labels)

    results = fleet(ctx, work)
    table = write_hosts_table(ctx.name, results, ["release", "precision", "hmean", "e2e_line_accuracy",
                                                  "latency_p50_ms"], ctx.run.hosts_file(ctx.name))
    if failures(results):
        raise StageFailed(f"check {target}: {failures(results)}")
    first = next(iter(results.values()))
    metrics = {k: first.get(k) for k in ("hmean", "e2e_line_accuracy", "latency_p50_ms", "latency_p90_ms", "peak_rss_mb")}
    return StageResult(outputs=[table], metrics={"hosts": len(results), **metrics},
                       artifacts={f"{target}:checked": results})
