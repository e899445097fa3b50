"""The `verify:TARGET`, `ship:TARGET` and `check:TARGET` stages.

verify  runs the bundle through the device runtime (``python -m runtime.check`` inside the
        bundle, the very entry point a device runs) on the validation images, scores the
        predictions with the one metrics implementation, compares with the fp32 torch model
        and writes the *verified* bundle: for ``precision: auto`` on this machine the fastest
        candidate within the accuracy bar becomes the active one.
ship    installs the verified bundle on every host (local transport for local-cpu), in
        parallel with bounded concurrency; one host failing does not stop the others, and the
        hosts that did get the release are then checked at once (check would not run after a
        failed ship). With ``canary`` the first host is shipped AND checked before the rest.
        Jetson bundles get their TensorRT engines built on each host before the switch.
check   runs the same check entry point on each host; below the recipe's bars the host is
        rolled back to its previous release and the stage fails.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..fsutil import replace_dir
from ..stages import StageContext, StageFailed, StageResult

# ------------------------------------------------------------------------------- scoring


def score_predictions(report: dict[str, Any], labels: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Detection + end-to-end metrics of a runtime.check report against the bundle's labels."""
    from ..training.metrics import detection_metrics, end_to_end_metrics

    gts, dets, e2e = [], [], []
    for item in report["predictions"]:
        lines = item["lines"]
        gts.append(labels[item["image"]])
        dets.append([(ln["points"], ln["score"]) for ln in lines])
        e2e.append([{"points": ln["points"], "text": ln["text"]} for ln in lines])
    metrics: dict[str, Any] = {"images": len(gts)}
    metrics.update({k: v for k, v in detection_metrics(gts, dets).items() if k in ("hmean", "precision", "recall")})
    metrics.update({k: v for k, v in end_to_end_metrics(gts, e2e).items() if k.startswith("e2e_")})
    metrics["latency_p50_ms"] = report["latency_ms"]["p50"]
    metrics["latency_p90_ms"] = report["latency_ms"]["p90"]
    metrics["peak_rss_mb"] = report.get("peak_rss_mb")
    return metrics


def bundle_labels(bundle: Path) -> dict[str, list[dict[str, Any]]]:
    labels: dict[str, list[dict[str, Any]]] = {}
    for line in (bundle / "val" / "labels.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            labels[Path(item["image"]).name] = item["lines"]
    return labels


def run_local_check(bundle: Path, precision: str | None, limit: int | None, runs: int = 1) -> dict[str, Any]:
    """``python -m runtime.check`` in the bundle directory, as a device would run it."""
    cmd = [sys.executable, "-m", "runtime.check", "--runs", str(runs)]
    if precision:
        cmd += ["--precision", precision]
    if limit:
        cmd += ["--limit", str(limit)]
    proc = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, env=_clean_env())
    if proc.returncode != 0:
        raise StageFailed(f"runtime.check failed in {bundle}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)


def _clean_env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # keep the bundle's files exactly as hashed
    return env


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


# ------------------------------------------------------------------------------- verify


def run_verify(ctx: StageContext) -> StageResult:
    from ..deploy.bundle import finalize_bundle
    from ..runtime.bundle_manifest import read_manifest

    target = ctx.param
    assert target and ctx.profile is not None
    built = Path(ctx.upstream_artifact(f"build:{target}", target)["bundle"])
    meta = {k: v for k, v in read_manifest(built).items() if k not in ("format", "files", "bundle_hash")}
    candidates = sorted(meta.get("candidates") or [meta["precision"]])
    labels = bundle_labels(built)
    verify = ctx.recipe.verify
    results: dict[str, dict[str, Any]] = {}
    # fp32 first: the exported fp32 model (checked against torch at export) is the baseline the
    # reduced precisions are held to; pruning's own loss is reported by the prune stage.
    for precision in sorted(candidates, key=lambda p: p != "fp32"):
        report = run_local_check(built, precision, verify.samples, runs=2)
        results[precision] = score_predictions(report, labels)
        ctx.log.info("verify %s %s: %s", target, precision, results[precision])
    baseline = results.get("fp32", {}).get("e2e_line_accuracy")
    if baseline is None:
        baseline = ctx.upstream["evaluate"]["metrics"].get("e2e_line_accuracy")
    for m in results.values():
        m["drop_vs_fp32"] = (baseline - m["e2e_line_accuracy"]) if baseline is not None else None
        m["within_drop"] = m["drop_vs_fp32"] is None or m["drop_vs_fp32"] <= verify.max_drop
    active = meta["precision"]
    here = platform.machine() == ctx.profile.arch
    if ctx.profile.precision == "auto" and here:
        passing = [p for p, m in results.items() if m["within_drop"]] or ["fp32"]
        active = min(passing, key=lambda p: results[p]["latency_p50_ms"])
    chosen = results[active]
    if not chosen["within_drop"]:
        raise StageFailed(
            f"{target}: {active} end-to-end line accuracy {chosen['e2e_line_accuracy']:.4f} drops "
            f"{chosen['drop_vs_fp32']:.4f} below the fp32 model (verify.max_drop {verify.max_drop})"
        )
    out, tmp = ctx.out_dir / "bundle", ctx.out_dir / "bundle.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(built, tmp)
    meta.update(
        precision=active,
        verify={"measured_on": platform.machine(), "host_latency_is_device_latency": here, "candidates": results},
    )
    finalize_bundle(tmp, meta)
    replace_dir(tmp, out)
    missed = bars_failed(chosen, verify) if here else []
    notes = [f"bars missed on this machine: {', '.join(missed)}"] if missed else []
    if missed and ctx.profile.transport == "local":
        raise StageFailed(f"{target}: {'; '.join(missed)}")
    flat = {f"{p}_{k}": v for p, m in results.items() for k, v in m.items() if not isinstance(v, dict)}
    return StageResult(
        outputs=[out / "manifest.json"],
        metrics={"active": active, **flat},
        artifacts={f"{target}:verified": {"bundle": str(out), "precision": active}},
        notes=notes,
    )


# ------------------------------------------------------------------------------- ship / check


def _hosts(ctx: StageContext) -> list[str | None]:
    assert ctx.profile is not None
    deploy = ctx.recipe.deploy.get(ctx.param or "")
    if ctx.profile.transport == "local":
        return [None]
    return list(deploy.hosts) if deploy else []


def _transport(ctx: StageContext, host: str | None) -> Any:
    from .transport import LocalTransport, SSHTransport

    profile = ctx.profile
    assert profile is not None
    deploy = ctx.recipe.deploy.get(ctx.param or "")
    install_dir = (deploy.install_dir if deploy and deploy.install_dir else None) or profile.install_dir
    if host is None:
        root = Path(install_dir)
        return LocalTransport(root if root.is_absolute() else ctx.run_dir / root / (ctx.param or ""))
    return SSHTransport(
        host, install_dir,
        ssh_config=str(deploy.ssh_config) if deploy and deploy.ssh_config else None,
        known_hosts=str(deploy.known_hosts) if deploy and deploy.known_hosts else None,
        trust_on_first_use=bool(deploy and deploy.trust_on_first_use),
    )


def _fleet(ctx: StageContext, work: Any, canary_work: Any = None) -> dict[str, dict[str, Any]]:
    """Run ``work(host)`` on every host: canary first when asked, then bounded parallelism.

    The canary runs ``canary_work`` when given (ship: install it AND check it), so a release
    that fails on the first host never reaches the others.
    """
    from .transport import DeployError

    deploy = ctx.recipe.deploy.get(ctx.param or "")
    hosts = _hosts(ctx)
    results: dict[str, dict[str, Any]] = {}

    def one(host: str | None, fn: Any = work) -> None:
        name = host or "local"
        try:
            results[name] = {"status": "ok", **fn(host)}
        except (DeployError, StageFailed, OSError) as exc:
            results[name] = {"status": "failed", "error": str(exc)}

    rest = hosts
    if deploy and deploy.canary and len(hosts) > 1:
        one(hosts[0], canary_work or work)
        rest = hosts[1:]
        if results[hosts[0] or "local"]["status"] != "ok":
            for host in rest:
                results[host or "local"] = {"status": "skipped", "error": "canary failed"}
            return results
    with ThreadPoolExecutor(max_workers=deploy.parallel if deploy else 1) as pool:
        list(pool.map(one, rest))
    return results


def _table(ctx: StageContext, results: dict[str, dict[str, Any]], columns: list[str]) -> Path:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{ctx.name}")
    for col in ["host", *columns, "status"]:
        table.add_column(col)
    for host, r in results.items():
        cells = [host] + [f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns]
        status = r["status"] if r["status"] == "ok" else f"[red]{r['status']}: {r.get('error', '')}[/]"
        table.add_row(*cells, status)
    Console(highlight=False).print(table)
    out = ctx.out_dir / "hosts.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    return out


def _failures(results: dict[str, dict[str, Any]]) -> str:
    bad = {h: r for h, r in results.items() if r["status"] != "ok"}
    return "; ".join(f"{h}: {r.get('error', r['status'])}" for h, r in bad.items())


def run_ship(ctx: StageContext) -> StageResult:
    from .preflight import bundle_size, install_requirements, preflight
    from .releases import ship

    profile = ctx.profile
    assert profile is not None and ctx.param
    bundle = Path(ctx.upstream_artifact(f"verify:{ctx.param}", f"{ctx.param}:verified")["bundle"])
    deploy = ctx.recipe.deploy.get(ctx.param)
    keep = deploy.keep_releases if deploy else 3
    labels = bundle_labels(bundle)
    trtexec = profile.tensorrt.trtexec if profile.tensorrt else None

    def work(host: str | None) -> dict[str, Any]:
        with _transport(ctx, host) as t:
            python = sys.executable if host is None else profile.python
            if host is not None:
                arch = profile.arch
                report = preflight(t, arch=arch, python=python, python_min=profile.python_min,
                                   bundle_bytes=bundle_size(bundle))
                if report.missing and deploy and deploy.install_requirements == "pypi":
                    install_requirements(t, python, (bundle / "requirements.txt").read_text())
                    report = preflight(t, arch=arch, python=python, python_min=profile.python_min)
                report.require()
            result = ship(t, bundle, keep=keep, python=python, trtexec=trtexec)
            out = {"release": result.release[:12], "previous": (result.previous or "")[:12],
                   "uploaded_bytes": result.uploaded_bytes, "seconds": round(result.seconds, 2)}
            if result.tensorrt:
                out["tensorrt"] = result.tensorrt.get("trt_version")
            return out

    def check_now(host: str | None) -> dict[str, Any]:
        with _transport(ctx, host) as t:
            m = check_host(ctx, t, sys.executable if host is None else profile.python, labels)
        return {"check": f"ok: hmean {m['hmean']:.3g}, p50 {m['latency_p50_ms']:.4g} ms"}

    results = _fleet(ctx, work, canary_work=lambda host: {**work(host), **check_now(host)})
    if _failures(results):
        # check:TARGET does not run after a failed ship, so hosts that did get the release are
        # checked now (and rolled back if below the bar) instead of serving it unchecked.
        for host in _hosts(ctx):
            r = results[host or "local"]
            if r["status"] == "ok" and "check" not in r:
                try:
                    r.update(check_now(host))
                except Exception as exc:
                    r.update(status="failed", check="failed", error=f"check: {exc}")
    columns = ["release", "previous", "uploaded_bytes", "seconds", "check"]
    if profile.runtime == "tensorrt":
        columns.append("tensorrt")
    table = _table(ctx, results, columns)
    if _failures(results):
        raise StageFailed(f"ship {ctx.param}: {_failures(results)}")
    return StageResult(outputs=[table], metrics={"hosts": len(results)},
                       artifacts={f"{ctx.param}:shipped": results})


def check_host(ctx: StageContext, t: Any, python: str, labels: dict[str, Any]) -> dict[str, Any]:
    """``runtime.check`` in the host's current release, scored here; below the recipe's bars the
    host is rolled back to its previous release and StageFailed is raised."""
    from .releases import current_release, rollback

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


def run_check(ctx: StageContext) -> StageResult:
    profile = ctx.profile
    assert profile is not None and ctx.param
    bundle = Path(ctx.upstream_artifact(f"verify:{ctx.param}", f"{ctx.param}:verified")["bundle"])
    labels = bundle_labels(bundle)

    def work(host: str | None) -> dict[str, Any]:
        with _transport(ctx, host) as t:
            return check_host(ctx, t, sys.executable if host is None else profile.python, labels)

    results = _fleet(ctx, work)
    table = _table(ctx, results, ["release", "precision", "hmean", "e2e_line_accuracy", "latency_p50_ms"])
    if _failures(results):
        raise StageFailed(f"check {ctx.param}: {_failures(results)}")
    first = next(iter(results.values()))
    metrics = {k: first.get(k) for k in ("hmean", "e2e_line_accuracy", "latency_p50_ms", "latency_p90_ms", "peak_rss_mb")}
    return StageResult(outputs=[table], metrics={"hosts": len(results), **metrics},
                       artifacts={f"{ctx.param}:checked": results})
