"""A target's fleet: which hosts it has, how each is reached, one step run on all of them.

ship and check (and ``recipe rollback``) do the same things to a fleet: open each host's
transport (local for a ``transport: local`` profile, else SSH with the deploy section's host-key
settings), run one step per host with bounded parallelism, keep going when one host fails, and
with ``canary`` run the first host alone first. The per-host rows are printed as a table and kept
as JSON, failures included, so a half-shipped fleet can be read afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .transport import DeployError, LocalTransport, SSHTransport

Step = Callable[[str | None], dict[str, Any]]


def fleet_hosts(transport: str, deploy: Any) -> list[str | None]:
    """The hosts of a target: [None] (this machine) for local transport, else the deploy hosts."""
    if transport == "local":
        return [None]
    return list(deploy.hosts) if deploy else []


def open_transport(host: str | None, install_dir: str, deploy: Any, local_root: Path) -> LocalTransport | SSHTransport:
    """The transport of one host; ``install_dir`` is the deploy section's or the profile's,
    ``local_root`` where a local target installs (under the run directory when relative)."""
    if host is None:
        return LocalTransport(local_root)
    return SSHTransport(
        host, install_dir,
        ssh_config=str(deploy.ssh_config) if deploy and deploy.ssh_config else None,
        known_hosts=str(deploy.known_hosts) if deploy and deploy.known_hosts else None,
        trust_on_first_use=bool(deploy and deploy.trust_on_first_use),
    )


def run_fleet(hosts: list[str | None], work: Step, *, canary: bool, parallel: int,
              errors: tuple[type[BaseException], ...] = (DeployError, OSError),
              canary_work: Step | None = None) -> dict[str, dict[str, Any]]:
    """``work(host)`` on every host -> {host: {"status": "ok" | "failed" | "skipped", ...}}.

    A host whose step raises one of ``errors`` is failed with that message; the others go on.
    With ``canary`` (and more than one host) the first host runs ``canary_work`` (ship: install
    it AND check it) before any other host is touched, and a failed canary skips the rest.
    """
    results: dict[str, dict[str, Any]] = {}

    def one(host: str | None, fn: Step = work) -> None:
        name = host or "local"
        try:
            results[name] = {"status": "ok", **fn(host)}
        except errors as exc:
            results[name] = {"status": "failed", "error": str(exc)}

    rest = hosts
    if canary and len(hosts) > 1:
        one(hosts[0], canary_work or work)
        rest = hosts[1:]
        if results[hosts[0] or "local"]["status"] != "ok":
            for host in rest:
                results[host or "local"] = {"status": "skipped", "error": "canary failed"}
            return results
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(one, rest))
    return results


def failures(results: dict[str, dict[str, Any]]) -> str:
    """The failed hosts and why, on one line ("" when every host is ok)."""
    bad = {h: r for h, r in results.items() if r["status"] != "ok"}
    return "; ".join(f"{h}: {r.get('error', r['status'])}" for h, r in bad.items())


def write_hosts_table(title: str, results: dict[str, dict[str, Any]], columns: list[str], path: Path) -> Path:
    """Print the per-host rows as a table and keep them as JSON at ``path``."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ["host", *columns, "status"]:
        table.add_column(col)
    for host, r in results.items():
        cells = [host] + [f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns]
        status = r["status"] if r["status"] == "ok" else f"[red]{r['status']}: {r.get('error', '')}[/]"
        table.add_row(*cells, status)
    Console(highlight=False).print(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str))
    return path
