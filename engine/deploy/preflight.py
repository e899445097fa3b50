"""Preflight: refuse a host that cannot run the bundle before anything is uploaded.

Checked per host, cheapest first, each a single command: reachable (connect + ``true``),
architecture (``uname -m``; an aarch64 int8 bundle on an x86 box would "work" and then be slow or
wrong, so a mismatch is fatal), the device python's version, free disk in install_dir (twice the
bundle: the ``.partial`` upload sits beside the releases already there), and the runtime's
imports with the device python. Missing modules are *reported*, not fatal: the caller may fix
them with ``install_requirements`` (pip on the device, from PyPI or from wheels shipped with the
bundle) and run preflight again.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .transport import CommandResult, DeployError, Transport

RUNTIME_MODULES = ("numpy", "onnxruntime", "cv2", "pyclipper")
_ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64", "armv8l": "armv7l", "armhf": "armv7l"}

_IMPORT_PROBE = r"""
import importlib, sys
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
        print(name + "\tOK")
    except Exception as exc:
        print(name + "\t" + (type(exc).__name__ + ": " + str(exc)).replace("\n", " ")[:300])
"""


@dataclass(frozen=True)
class PreflightReport:
    host: str
    arch: str
    python: str
    python_version: str
    free_bytes: int
    missing: dict[str, str] = field(default_factory=dict)  # module -> import error

    @property
    def ok(self) -> bool:
        return not self.missing

    def require(self) -> PreflightReport:
        """Raise DeployError when runtime modules are missing; return self otherwise."""
        if self.missing:
            what = "; ".join(f"{m} ({why})" for m, why in sorted(self.missing.items()))
            raise DeployError(
                self.host,
                f"runtime requirements missing for {self.python}: {what}. Install them "
                f"(deploy install_requirements: pypi or wheels) or on the device by hand.",
            )
        return self


def normalize_arch(machine: str) -> str:
    m = machine.strip()
    return _ARCH_ALIASES.get(m, m)


def bundle_size(bundle_dir: str | Path) -> int:
    """Bytes of every file in a bundle directory (what the upload will need)."""
    return sum(p.stat().st_size for p in Path(bundle_dir).rglob("*") if p.is_file())


def bundle_arch(bundle_dir: str | Path) -> str | None:
    """The architecture a bundle was built for (its manifest's ``arch``), to pass to preflight."""
    path = Path(bundle_dir) / "manifest.json"
    try:
        arch = json.loads(path.read_text(encoding="utf-8")).get("arch")
    except (OSError, ValueError) as exc:
        raise DeployError("local", f"cannot read the bundle manifest {path}: {exc}") from None
    return normalize_arch(arch) if isinstance(arch, str) else None


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.strip().split(".") if x.isdigit())


def preflight(
    t: Transport,
    *,
    arch: str | None,
    python: str = "python3",
    python_min: str = "3.9",
    bundle_bytes: int = 0,
    modules: tuple[str, ...] = RUNTIME_MODULES,
) -> PreflightReport:
    """Check one host; raise DeployError for fatal problems, report missing modules."""
    t.run("true")  # reachable (and, for SSH, host key accepted and logged in)
    machine = normalize_arch(t.run("uname -m").stdout)
    if arch is not None and machine != normalize_arch(arch):
        raise DeployError(
            t.host,
            f"architecture mismatch: the host is {machine} but the target expects "
            f"{normalize_arch(arch)}; refusing to ship (wrong target for this host?)",
        )
    py = shlex.quote(python)
    res = t.run(f"{py} -c 'import sys; print(\"%d.%d.%d\" % sys.version_info[:3])'", check=False)
    if res.exit_code == 127 or not res.ok:
        raise DeployError(t.host, f"python {python!r} not usable on the host: {res.tail()}")
    version = res.stdout.strip()
    if _version_tuple(version) < _version_tuple(python_min):
        raise DeployError(t.host, f"{python} is {version}, the runtime needs >= {python_min}")
    t.makedirs([t.root])
    res = t.run(f"df -Pk {shlex.quote(t.root)} | tail -n 1")
    try:
        free = int(res.stdout.split()[3]) * 1024
    except (IndexError, ValueError):
        raise DeployError(
            t.host, f"cannot read free disk space from df: {res.stdout.strip()!r}"
        ) from None
    need = 2 * bundle_bytes
    if free < need:
        raise DeployError(
            t.host,
            f"not enough disk in {t.root}: {free / 2**20:.1f} MiB free, need {need / 2**20:.1f} MiB "
            f"(2 x the bundle)",
        )
    missing: dict[str, str] = {}
    if modules:
        args = " ".join(shlex.quote(m) for m in modules)
        res = t.run(f"{py} -c {shlex.quote(_IMPORT_PROBE)} {args}", check=False)
        seen: dict[str, str] = {}
        for line in res.stdout.splitlines():
            name, _, verdict = line.partition("\t")
            seen[name] = verdict
        for m in modules:
            verdict = seen.get(m, f"not checked ({res.tail(2)})")
            if verdict != "OK":
                missing[m] = verdict
    return PreflightReport(t.host, machine, python, version, free, missing)


def install_requirements(
    t: Transport,
    python: str,
    requirements_txt: str | Path,
    wheels_dir: str | Path | None = None,
    *,
    extra_args: tuple[str, ...] = (),
    timeout: float = 1800.0,
) -> CommandResult:
    """``pip install -r`` on the host with its python; offline from ``wheels_dir`` when given.

    The requirements file (and the wheels) go to ``<install_dir>/.deps/``. With wheels, pip
    runs with ``--no-index --find-links`` so a device without internet access works. Devices
    whose system python is "externally managed" (PEP 668, Raspberry Pi OS bookworm) need
    ``extra_args=("--user", "--break-system-packages")`` or a virtual environment's python.
    """
    req = Path(requirements_txt)
    if not req.is_file():
        raise DeployError(t.host, f"requirements file {req} does not exist")
    deps = posixpath.join(t.root, ".deps")
    t.makedirs([deps])
    remote_req = posixpath.join(deps, "requirements.txt")
    t.put(req, remote_req)
    cmd = [
        python,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "-r",
        remote_req,
    ]
    if wheels_dir is not None:
        wheels = sorted(Path(wheels_dir).glob("*.whl"))
        if not wheels:
            raise DeployError(t.host, f"no wheels (*.whl) in {wheels_dir}")
        remote_wheels = posixpath.join(deps, "wheels")
        t.makedirs([remote_wheels])
        for whl in wheels:
            t.put(whl, posixpath.join(remote_wheels, whl.name))
        cmd += ["--no-index", "--find-links", remote_wheels]
    cmd += list(extra_args)
    res = t.run(" ".join(shlex.quote(c) for c in cmd), check=False, timeout=timeout)
    if not res.ok:
        raise DeployError(t.host, f"pip install failed (exit {res.exit_code}): {res.tail(12)}")
    return res
