"""Host checks of bundles, kept for the other targets of a run that would repeat them exactly.

``verify:TARGET`` runs every candidate of a bundle through ``runtime.check`` on the build host.
Targets often ship the very same models with the very same pre- and post-processing: the
flagship's rpi4 bundle holds local-cpu's fp32 export and, with ``reduce_range`` set for every
target, the same int8 pair (engine/compress/int8.py shares it). Checking it again on this host
only repeats the predictions (68 s of the flagship's run). The key is everything a check's
predictions depend on: the candidate's model files, the manifest sections the runtime reads, the
val images and labels, the runtime code, the threads and image limit, and this host's Python,
machine and runtime packages. Target name, arch, install directory and the recipe key are not
in it.

Like DVC's run-cache: entries are written atomically, and one that does not parse or whose key
does not match is logged and deleted, never trusted. The bundle's files are checked against
their sha256 before a lookup, so an entry never stands in for a bundle that was changed after it
was sealed.
"""

from __future__ import annotations

import json
import logging
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from ..config import stable_hash
from ..fsutil import atomic_write_json
from ..runtime.bundle_manifest import verify_bundle
from .bundle import RUNTIME_REQUIREMENTS, run_local_check

#: the manifest sections the runtime's pipeline reads to predict (engine/runtime/pipeline.py)
PREDICTION_FIELDS = ("charset", "detector", "recognizer", "postprocess", "providers", "runtime", "tensorrt")


def _host() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for dist in RUNTIME_REQUIREMENTS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {"python": platform.python_version(), "machine": platform.machine(), **versions}


def check_key(manifest: dict[str, Any], precision: str, limit: int | None, threads: int | None) -> str:
    """The cache key of checking ``precision`` of a bundle with this ``manifest`` on this host."""
    files = manifest["files"]
    models = manifest["candidates"][precision]
    return stable_hash({
        "models": {role: files[rel] for role, rel in models.items()},
        "manifest": {k: manifest.get(k) for k in PREDICTION_FIELDS},
        "val": manifest.get("val"),
        "data": {rel: h for rel, h in files.items() if rel.startswith(("val/", "runtime/"))},
        "threads": threads if threads is not None else manifest.get("threads"),
        "limit": limit,
        "host": _host(),
    })


def cached_check(bundle: Path, precision: str, limit: int | None, runs: int, threads: int | None,
                 cache_dir: Path, log: logging.Logger) -> dict[str, Any]:
    """``run_local_check``'s report, or that of an identical earlier check with at least ``runs``
    timed passes; a reused report names its entry under ``"reused"``. Raises BundleError when
    the bundle's files do not match its manifest."""
    manifest = verify_bundle(bundle)
    key = check_key(manifest, precision, limit, threads)
    path = cache_dir / "verify" / f"{precision}-{key[:16]}.json"
    if path.exists():
        try:
            entry = json.loads(path.read_text())
            valid = (entry["key"] == key and isinstance(entry["runs"], int)
                     and isinstance(entry["report"]["predictions"], list))
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            valid = False
        if not valid:
            log.warning("discarding unreadable check cache entry %s", path)
            path.unlink()
        elif entry["runs"] >= runs:
            return {**entry["report"], "reused": f"{cache_dir.name}/verify/{path.name}"}
    report = run_local_check(bundle, precision, limit, runs=runs, threads=threads)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"key": key, "runs": runs, "report": report})
    return report
