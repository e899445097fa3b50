"""Build a Jetson bundle's TensorRT engines ON the device, inside the release, before it goes live.

Why here: an engine only runs on the GPU and the TensorRT version that built it, so the build
stage ships an fp16 ONNX plus a build plan (``manifest["tensorrt"][model]``, written by
engine/compress/tensorrt.py) and the engine is made by ``trtexec`` on the host itself.
``releases.ship`` calls :func:`build_engines` after the upload is checked with sha256 and
BEFORE ``current`` moves: a host whose build fails (no trtexec, out of GPU memory, an operator
this TensorRT cannot import) keeps serving its previous release, and the error names the host.

What lands in the release directory (the runtime loads ``plan["engine"]``, the same path)::

    models/fp16/detector.engine      written as .tmp by trtexec, renamed when it succeeded
    models/fp16/recognizer.engine
    tensorrt/build_detector.log      trtexec's full output (also kept when the build failed)
    tensorrt/build.json              TensorRT version found, planned version, argv, sha256s

``tensorrt/timing.cache`` under the install root (not the release) is shared by every release
on the host, so re-shipping a model with the same layers builds in seconds, not minutes.
A release whose ``build.json`` matches its engines is not rebuilt (re-ship after a rollback).
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import shlex
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from engine.runtime.bundle_manifest import check_relpath

from .transport import DeployError, Transport

log = logging.getLogger(__name__)

BUILD_DIR = "tensorrt"
BUILD_RECORD = "build.json"
BUILD_TIMEOUT_S = 3600.0  # a ResNet-18 DBNet takes minutes on a Nano; never hang forever

# trtexec / TensorRT error text -> what the user should do. Checked in this order.
_OOM = re.compile(
    r"out of memory|could not allocate|cudaErrorMemoryAllocation|OutOfMemory|"
    r"requested amount of GPU memory", re.IGNORECASE)
_UNSUPPORTED = re.compile(
    r"No importer registered for op: ?(\w+)|UNSUPPORTED_NODE|Plugin not found|"
    r"Unsupported ONNX data type|getPluginCreator could not find plugin", re.IGNORECASE)
# the op's name: TensorRT 8 ("No importer registered for op: X", "node number 3 [X -> ...]"),
# TensorRT 10 ("In node 7 with name: /x and operator: X (UNSUPPORTED_NODE)")
_OP_NAME = re.compile(r"No importer registered for op: ?(\w+)|and operator: (\w+)|"
                      r"While parsing node number \d+ \[(\w+) ->")
_VERSION_LINE = re.compile(r"TensorRT version: *(\d+\.\d+(?:\.\d+)*)")
_VERSION_TAG = re.compile(r"\[TensorRT v(\d{4,6})\]")

_SHA256 = r"""
import hashlib, sys
for p in sys.argv[1:]:
    try:
        print(hashlib.sha256(open(p, "rb").read()).hexdigest() + "  " + p)
    except OSError:
        pass
"""


def version_from_log(text: str) -> str | None:
    """The TensorRT version trtexec reports ("TensorRT version: 8.6.2" or "[TensorRT v8602]")."""
    m = _VERSION_LINE.search(text)
    if m:
        return m.group(1)
    m = _VERSION_TAG.search(text)
    if not m:
        return None
    n = int(m.group(1))  # NV_TENSORRT_VERSION: 8.x = M*1000+m*100+p, 10.x = M*10000+m*100+p
    major, rest = (n // 10000, n % 10000) if n >= 10000 else (n // 1000, n % 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def classify_failure(host: str, model: str, exit_code: int, output: str, log_path: str,
                     workspace_mb: Any) -> DeployError:
    """One readable DeployError for a failed trtexec run (the full output is in ``log_path``)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "[E]" in ln or "ERROR" in ln] or lines
    tail = " | ".join(errors[-3:]) if errors else "(no output)"
    where = f"TensorRT build of the {model} failed on the device (log: {log_path})"
    oom = _OOM.search(output)
    if oom:
        return DeployError(host, f"{where}: out of GPU memory ({oom.group(0)}); lower "
                           f"tensorrt.workspace_mb (now {workspace_mb}) or the max shapes in the "
                           f"target profile, or free memory on the device. trtexec said: {tail}")
    unsupported = _UNSUPPORTED.search(output)
    if unsupported:
        op = next((g for m in _OP_NAME.finditer(output) for g in m.groups() if g), None)
        what = f"operator {op}" if op else "an operator"
        return DeployError(host, f"{where}: the ONNX model uses {what} that this TensorRT "
                           f"cannot import ({unsupported.group(0)}); export with a lower opset, "
                           f"replace the op, or update JetPack. trtexec said: {tail}")
    return DeployError(host, f"{where}: trtexec exited with {exit_code}: {tail}")


def _remote_sha256(t: Transport, paths: list[str], python: str) -> dict[str, str]:
    args = " ".join(shlex.quote(p) for p in paths)
    res = t.run(f"sha256sum -- {args} 2>/dev/null || {python} -c {shlex.quote(_SHA256)} {args}",
                check=False)
    out = {}
    for line in res.stdout.splitlines():
        digest, _, path = line.partition("  ")
        if len(digest) == 64:
            out[path] = digest
    return out


def _find_trtexec(t: Transport, wanted: str) -> str:
    """The configured trtexec if executable there, else one on PATH; DeployError otherwise."""
    q = shlex.quote(wanted)
    res = t.run(f"if [ -x {q} ]; then echo {q}; else command -v trtexec; fi", check=False)
    found = res.stdout.strip().splitlines()
    if res.ok and found:
        return found[-1]
    raise DeployError(t.host, f"trtexec not found on the device: {wanted} is missing or not "
                      f"executable and no trtexec is on PATH (install TensorRT with JetPack, or "
                      f"set tensorrt.trtexec in the target profile)")


def _installed_version(t: Transport, python: str) -> tuple[str | None, str]:
    """TensorRT version from the package manager or the python module, when trtexec is silent."""
    res = t.run("dpkg-query -W -f='${Version}\\n' tensorrt libnvinfer-bin libnvinfer8 "
                "libnvinfer10 2>/dev/null", check=False)
    for line in res.stdout.splitlines():
        m = re.match(r"\s*(\d+\.\d+(?:\.\d+)*)", line)
        if m:
            return m.group(1), "dpkg"
    res = t.run(f"{python} -c 'import tensorrt; print(tensorrt.__version__)'", check=False)
    m = re.match(r"\s*(\d+\.\d+(?:\.\d+)*)", res.stdout)
    return (m.group(1), "python") if res.ok and m else (None, "unknown")


def _argv(plan: Mapping[str, Any], trtexec: str, engine_tmp: str, cache: str | None) -> list[str]:
    """The plan's trtexec command with this host's binary, a temp engine and the shared cache."""
    out = [trtexec]
    for arg in plan["argv"][1:]:
        if arg.startswith("--saveEngine="):
            arg = f"--saveEngine={engine_tmp}"
        elif arg.startswith("--timingCacheFile="):
            if cache is None:
                continue
            arg = f"--timingCacheFile={cache}"
        out.append(arg)
    return out


def _reusable(t: Transport, release_dir: str, plans: Mapping[str, Any], python: str) -> dict[str, Any] | None:
    """The existing build record when every engine it lists is still there, unchanged."""
    data = t.read_bytes(posixpath.join(release_dir, BUILD_DIR, BUILD_RECORD))
    try:
        record = json.loads(data) if data else None
    except ValueError:
        return None
    if not isinstance(record, dict) or set(record.get("engines") or {}) != set(plans):
        return None
    want = {posixpath.join(release_dir, e["path"]): e["sha256"] for e in record["engines"].values()}
    have = _remote_sha256(t, list(want), python)
    return record if all(have.get(p) == sha for p, sha in want.items()) else None


def build_engines(t: Transport, release_dir: str, manifest: Mapping[str, Any], *,
                  trtexec: str | None = None, python: str = "python3",
                  timeout: float = BUILD_TIMEOUT_S) -> dict[str, Any]:
    """Run every model's plan with trtexec in ``release_dir`` on the host; return the record.

    ``trtexec`` defaults to the path the plan was made with (the target profile's). Raises
    DeployError naming the host on any failure; engines are renamed into place only after
    trtexec succeeded, so a failed build never leaves a half-written engine for the runtime.
    """
    plans = manifest.get("tensorrt") or {}
    if not plans or not isinstance(plans, dict):
        raise DeployError(t.host, f"bundle {str(manifest.get('bundle_hash'))[:12]} has runtime "
                          f"tensorrt but no build plan in its manifest (rebuild the bundle)")
    for model, plan in plans.items():  # both name files written (and removed) in the release
        name, engine = str(model), plan.get("engine") if isinstance(plan, dict) else None
        why = (check_relpath(name) or ("a model name may not hold '/'" if "/" in name else None)
               or (check_relpath(engine) if isinstance(engine, str) else "no engine path"))
        if why:
            raise DeployError(t.host, f"TensorRT plan {name!r:.40} -> {engine!r:.60}: {why}; "
                              "nothing was built")
    reused = _reusable(t, release_dir, plans, python)
    if reused is not None:
        log.info("%s: TensorRT engines already built (%s), reusing them", t.host,
                 reused.get("trt_version"))
        return {**reused, "reused": True}
    binary = _find_trtexec(t, trtexec or next(iter(plans.values()))["trtexec"])
    cache_dir = posixpath.join(t.root, BUILD_DIR)
    t.makedirs([posixpath.join(release_dir, BUILD_DIR), cache_dir])
    engines: dict[str, Any] = {}
    logs: list[str] = []
    for model, plan in plans.items():
        engine_tmp = plan["engine"] + ".tmp"
        cache = posixpath.join(cache_dir, "timing.cache") if plan.get("timing_cache") else None
        argv = _argv(plan, binary, engine_tmp, cache)
        log_rel = posixpath.join(BUILD_DIR, f"build_{model}.log")
        log_path = posixpath.join(release_dir, log_rel)
        log.info("%s: building the %s TensorRT engine (%s)", t.host, model, plan["engine"])
        started = time.monotonic()
        cmd = (f"cd {shlex.quote(release_dir)} && rm -f {shlex.quote(engine_tmp)} && "
               + " ".join(shlex.quote(a) for a in argv) + " 2>&1")
        res = t.run(cmd, check=False, timeout=timeout)
        seconds = round(time.monotonic() - started, 2)
        output = res.stdout + res.stderr
        logs.append(output)
        t.write_atomic(log_path, output.encode())
        if res.exit_code == 127:
            raise DeployError(t.host, f"trtexec could not be started ({binary}): {res.tail(2)}")
        if not res.ok:
            raise classify_failure(t.host, model, res.exit_code, output, log_path,
                                   plan.get("workspace_mb"))
        tmp_abs = posixpath.join(release_dir, engine_tmp)
        digest = _remote_sha256(t, [tmp_abs], python).get(tmp_abs)
        if digest is None:
            raise DeployError(t.host, f"trtexec exited 0 but wrote no engine {engine_tmp} for the "
                              f"{model} (log: {log_path})")
        t.rename(tmp_abs, posixpath.join(release_dir, plan["engine"]))
        engines[model] = {"path": plan["engine"], "sha256": digest, "seconds": seconds,
                          "log": log_rel, "argv": argv}
    version, source = next(((v, "trtexec") for v in map(version_from_log, logs) if v),
                           (None, ""))
    if version is None:
        version, source = _installed_version(t, python)
    planned = str(next(iter(plans.values())).get("trt_version", ""))
    if version and planned and version.split(".")[:2] != planned.split(".")[:2]:
        log.warning("%s: TensorRT %s on the device, the plan was made for %s", t.host, version,
                    planned)
    record = {
        "trt_version": version, "version_source": source, "planned_version": planned,
        "trtexec": binary, "engines": engines,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    t.write_atomic(posixpath.join(release_dir, BUILD_DIR, BUILD_RECORD),
                   json.dumps(record, indent=2, sort_keys=True).encode())
    log.info("%s: TensorRT %s engines built: %s", t.host, version, ", ".join(engines))
    return {**record, "reused": False}
