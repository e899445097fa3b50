"""The `ship:TARGET` stage: the verified bundle installed on every host, atomically.

Per host: preflight (architecture, Python, disk, the runtime's packages; installed from PyPI
when the deploy section says so), upload to ``releases/<hash>.partial``, sha256 check on the
device, TensorRT engines built there for Jetson bundles, then the atomic ``current`` switch,
keeping ``keep_releases``. Hosts run in parallel; one failing does not stop the others, and the
hosts that did get the release are then checked at once (check would not run after a failed
ship). With ``canary`` the first host is shipped AND checked before the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .check import check_host, fleet, host_python, hosts, transport
from .contract import StageContext, StageFailed, StageResult


def run(ctx: StageContext) -> StageResult:
    from ..deploy.bundle import bundle_labels
    from ..deploy.fleet import failures, write_hosts_table
    from ..deploy.preflight import bundle_size, install_requirements, preflight
    from ..deploy.releases import ship

    profile = ctx.target_profile()
    target = ctx.param
    assert target
    bundle = Path(ctx.upstream_artifact(f"verify:{target}", f"{target}:verified")["bundle"])
    deploy = ctx.recipe.deploy.get(target)
    keep = deploy.keep_releases if deploy else 3
    labels = bundle_labels(bundle)
    trtexec = profile.tensorrt.trtexec if profile.tensorrt else None

    def work(host: str | None) -> dict[str, Any]:
        with transport(ctx, host) as t:
            python = host_python(ctx, host)
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
        with transport(ctx, host) as t:
            m = check_host(ctx, t, host_python(ctx, host), labels)
        return {"check": f"ok: hmean {m['hmean']:.3g}, p50 {m['latency_p50_ms']:.4g} ms"}

    results = fleet(ctx, work, canary_work=lambda host: {**work(host), **check_now(host)})
    if failures(results):
        # check:TARGET does not run after a failed ship, so hosts that did get the release are
        # checked now (and rolled back if below the bar) instead of serving it unchecked.
        for host in hosts(ctx):
            r = results[host or "local"]
            if r["status"] == "ok" and "check" not in r:
                try:
                    r.update(check_now(host))
                except Exception as exc:
                    r.update(status="failed", check="failed", error=f"check: {exc}")
    columns = ["release", "previous", "uploaded_bytes", "seconds", "check"]
    if profile.runtime == "tensorrt":
        columns.append("tensorrt")
    table = write_hosts_table(ctx.name, results, columns, ctx.run.hosts_file(ctx.name))
    if failures(results):
        raise StageFailed(f"ship {target}: {failures(results)}")
    return StageResult(outputs=[table], metrics={"hosts": len(results)}, artifacts={f"{target}:shipped": results})
