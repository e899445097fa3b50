"""An emulated Raspberry Pi: an arm64 Debian userland under qemu-user, reached over real SSH.

Why: rpi4/rpi5 bundles are built on x86_64 but run on aarch64, where onnxruntime picks other
kernels (int8 especially). This device proves that a Pi bundle ships, loads and reads text on
arm64 with the aarch64 PyPI wheels, before anyone touches hardware. It is for correctness
only: under qemu fp32 inference runs hundreds of times slower than natively, so its timings are
"emulated", never device latency.

Three parts:

- **rootfs** (``build``): ``debootstrap --arch=arm64 --variant=minbase --foreign`` bookworm, the
  second stage in a chroot through qemu-user-static (binfmt_misc), python3 + a virtual
  environment at ``/opt/ocr-venv`` holding the bundle's four runtime packages (and their
  dependencies) as aarch64 wheels from PyPI, pinned to the versions installed on this machine
  (same onnxruntime on both sides, so x86-vs-arm64 differences are the CPU's, not a version's).
  Measured here, niced on 2 busy cores: the second stage ~25 min (the issue measured ~8 min in
  all on idle cores), venv + wheels 3.6 min, packing 50 s; the archive is 141 MiB and restores
  in ~2 s. So it is cached as ``<cache>/<key>.tar.zst`` outside the repository
  (``OCR_EMULATED_PI_CACHE``, default ``/var/cache/ocr-recipe/emulated-pi``); the key hashes
  the suite, the pins and this builder's version, so new versions rebuild and the stale
  archive is removed.
- **enter script**: every command runs in a private mount namespace (``unshare --mount``: no
  mount outlives the command, even when a test dies) with ``/proc``, a Raspberry Pi 4 style
  ``/proc/cpuinfo`` (onnxruntime's cpuinfo segfaults under qemu parsing the host's x86 one),
  ``/dev`` and the four CPUs a Pi lists in ``/sys/devices/system/cpu``, then ``env -i ...
  chroot`` so no host variable (PIP_*, PYTHONPATH) leaks in.
- **sshd** (``serve`` / :class:`EmulatedPi`): the OpenSSH test server of ``tests/sshd.py`` with a
  ForceCommand that runs the enter script, so the ordinary SSH transport, preflight, ship,
  check and rollback reach it the way they reach a Pi. SFTP requests are handed to the host's
  ``sftp-server`` in a namespace where the device's install directory is bind-mounted at its
  absolute path (``/home/pi/ocr-recipe`` for rpi4), so uploads, symlinks and commands see the
  same files.

Command line (as root)::

    python3 tests/emulated_pi.py build            # build or reuse the cached rootfs
    python3 tests/emulated_pi.py serve            # start it; prints the ssh_config to use
    python3 tests/emulated_pi.py status           # can this machine run it, and the cache path
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

SUITE = "bookworm"
MIRROR = os.environ.get("OCR_EMULATED_PI_MIRROR", "http://deb.debian.org/debian")
CACHE_ENV = "OCR_EMULATED_PI_CACHE"
DEFAULT_CACHE = "/var/cache/ocr-recipe/emulated-pi"
VENV = "/opt/ocr-venv"
BUILDER_VERSION = 2  # bump when the rootfs recipe below changes
DIST_PACKAGES = ("numpy", "onnxruntime", "opencv-python-headless", "pyclipper")
QEMU = "/usr/bin/qemu-aarch64-static"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
HOST_SFTP = "/usr/lib/openssh/sftp-server"
DEVICE_PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# A Raspberry Pi 4 Model B (BCM2711, 4x Cortex-A72 r0p3): what onnxruntime's cpuinfo parses.
PI4_CPUINFO = "".join(
    f"processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n"
    "CPU revision\t: 3\n\n"
    for n in range(4)
) + "Hardware\t: BCM2835\nRevision\t: c03114\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"


class EmulatorError(RuntimeError):
    """The emulated Pi could not be built or started; the message says which step and why."""


# ------------------------------------------------------------------------------- cache


def requirement_pins() -> dict[str, str]:
    """The runtime packages at the versions installed here (what verify ran with on x86)."""
    pins = {}
    for dist in DIST_PACKAGES:
        try:
            pins[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            raise EmulatorError(f"{dist} is not installed on this machine; pip install it first") from None
    return pins


def cache_key(pins: dict[str, str] | None = None) -> str:
    doc = {"suite": SUITE, "builder": BUILDER_VERSION, "pins": pins or requirement_pins()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def cached_rootfs(pins: dict[str, str] | None = None) -> Path:
    """Where the rootfs archive for these pins lives (it may not exist yet)."""
    return cache_dir() / f"{cache_key(pins)}.tar.zst"


# ------------------------------------------------------------------------------- host checks


def ensure_binfmt() -> str | None:
    """Make arm64 binaries executable here; None when they are, else the one-line reason.

    Mounts binfmt_misc and enables Debian's qemu-aarch64 entry when permitted (root). Its
    ``F`` flag opens the interpreter at registration, so it also works inside a chroot.
    """
    if not Path(QEMU).exists():
        return f"{QEMU} missing (apt package qemu-user-static)"
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists():
        if os.geteuid() != 0:
            return "binfmt_misc has no qemu-aarch64 entry and enabling it needs root"
        if not (BINFMT / "register").exists():
            subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
                           capture_output=True, check=False)
        if shutil.which("update-binfmts"):
            subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True, check=False)
    if not entry.exists():
        return "cannot register qemu-aarch64 in binfmt_misc (mount not permitted here?)"
    if not entry.read_text().startswith("enabled"):
        return "binfmt_misc entry qemu-aarch64 is disabled (update-binfmts --enable qemu-aarch64)"
    return None


def unavailable_reason(need_build: bool = False) -> str | None:
    """Why this machine cannot run the emulated Pi (None when it can), in one line."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return "the emulated Pi is built for x86_64 Linux hosts"
    if os.geteuid() != 0:
        return "the emulated Pi needs root (chroot, mount namespaces)"
    tools = ["unshare", "chroot", "mount", "zstd", "tar", "/usr/sbin/sshd", HOST_SFTP]
    if need_build:
        tools.append("debootstrap")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)} (apt: debootstrap qemu-user-static binfmt-support zstd openssh-server)"
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"mount namespaces not permitted: {probe.stderr.strip()[:120]}"
    return ensure_binfmt()


# ------------------------------------------------------------------------------- chroot


def enter_script(root: Path, cpuinfo: Path, install_dir: str | None) -> str:
    """The host-side script that runs ``$SSH_ORIGINAL_COMMAND`` (or argv) on the device.

    ``internal-sftp``/``sftp-server`` go to the host's sftp-server with the install directory
    bind-mounted at its absolute path; anything else runs in the chroot.
    """
    q = shlex.quote
    sftp = ""
    if install_dir:
        top = "/" + install_dir.strip("/").split("/")[0]
        sftp = f"""case "${{SSH_ORIGINAL_COMMAND:-}}" in
  internal-sftp|*/sftp-server|*sftp-server\\ *)
    exec unshare --mount --propagation private /bin/sh -c \\
      'mount -t tmpfs emulated-pi "$1" && mkdir -p "$2" && mount --bind "$3" "$2" && exec "$4"' \\
      sh {q(top)} {q(install_dir)} {q(str(root) + install_dir)} {q(HOST_SFTP)} ;;
esac
"""
    return f"""#!/bin/bash
# Generated by tests/emulated_pi.py: enter the emulated Raspberry Pi at {root}.
{sftp}cmd="${{SSH_ORIGINAL_COMMAND:-$*}}"
[ -n "$cmd" ] || cmd="exec /bin/bash -l"
exec unshare --mount --propagation private /bin/sh -c \\
  'mount -t proc proc "$1/proc" && mount --bind "$2" "$1/proc/cpuinfo" && mount --bind /dev "$1/dev" \\
   && mount -t tmpfs emulated-pi "$1/sys" && mkdir -p "$1/sys/devices/system/cpu" \\
   && echo 0-3 > "$1/sys/devices/system/cpu/possible" && echo 0-3 > "$1/sys/devices/system/cpu/present" \\
   && exec env -i PATH={DEVICE_PATH} HOME=/root LANG=C.UTF-8 TERM=dumb chroot "$1" /bin/sh -c "$3"' \\
  sh {q(str(root))} {q(str(cpuinfo))} "$cmd"
"""


def write_enter_script(root: Path, workdir: Path, install_dir: str | None = None) -> Path:
    """Write ``workdir/cpuinfo`` and ``workdir/enter`` for the rootfs at ``root``."""
    workdir.mkdir(parents=True, exist_ok=True)
    cpuinfo = workdir / "cpuinfo"
    cpuinfo.write_text(PI4_CPUINFO)
    script = workdir / "enter"
    script.write_text(enter_script(root, cpuinfo, install_dir))
    script.chmod(0o755)
    return script


def _run(cmd: list[str], what: str, log: Path | None, timeout: float = 3600) -> None:
    """Run a build step under ``nice -n 19`` (the machine's other jobs come first)."""
    with open(log or os.devnull, "ab") as fh:
        fh.write(f"\n$ {shlex.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.run(["nice", "-n", "19", *cmd], stdout=fh, stderr=subprocess.STDOUT,
                              timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-1500:] if log else ""
        raise EmulatorError(f"{what} failed (exit {proc.returncode}); log {log}:\n{tail}")


def build_rootfs(dest: Path, pins: dict[str, str], log: Path) -> None:
    """debootstrap + python venv + the pinned runtime wheels into ``dest`` (see module doc)."""
    _run(["debootstrap", "--arch=arm64", "--variant=minbase", "--foreign",
          "--include=python3,python3-venv,ca-certificates", SUITE, str(dest), MIRROR],
         "debootstrap (first stage)", log)
    enter = write_enter_script(dest, dest.parent / f"{dest.name}.enter")
    _run([str(enter), "/debootstrap/debootstrap --second-stage"], "debootstrap --second-stage", log)
    shutil.rmtree(enter.parent, ignore_errors=True)
    install_runtime(dest, pins, log)


def _pyversion(root: Path) -> str:
    found = sorted(p.name for p in (root / "usr/lib").glob("python3.*") if p.name[8:].isdigit())
    if not found:
        raise EmulatorError(f"no python3 in {root}/usr/lib (debootstrap --include=python3 failed?)")
    return found[-1].removeprefix("python")


def install_runtime(dest: Path, pins: dict[str, str], log: Path) -> None:
    """The venv at VENV with the pinned aarch64 wheels from PyPI, and a smoke import.

    The venv is made by the device's own python (``-m venv --without-pip``); the wheels are
    installed from this machine with ``pip --platform manylinux*_aarch64 --target`` into its
    site-packages: the same wheels and dependencies a Pi's pip resolves, without running pip
    (ensurepip, resolving, unpacking, byte-compiling) under qemu, which took tens of minutes
    on a busy 2-core machine.
    """
    # Device-side pip (deploy install_requirements: pypi) behind a TLS-intercepting proxy needs
    # this machine's extra CAs: they go where update-ca-certificates keeps them and are appended
    # to the system bundle here (update-ca-certificates under qemu takes minutes); pip is pointed
    # at the system bundle because its vendored certifi would not know them.
    bundle = dest / "etc/ssl/certs/ca-certificates.crt"
    for crt in sorted(Path("/usr/local/share/ca-certificates").glob("*.crt")):
        shutil.copyfile(crt, dest / "usr/local/share/ca-certificates" / crt.name)
        if crt.read_text() not in bundle.read_text():
            with open(bundle, "a") as fh:
                fh.write("\n" + crt.read_text())
    (dest / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    shutil.copyfile("/etc/resolv.conf", dest / "etc/resolv.conf")
    enter = write_enter_script(dest, dest.parent / f"{dest.name}.enter")
    _run([str(enter), f"python3 -m venv --without-pip {VENV}"], "python3 -m venv", log)
    version = _pyversion(dest)
    site = dest / VENV.lstrip("/") / f"lib/python{version}/site-packages"
    if not site.is_dir():
        raise EmulatorError(f"the venv has no {site}")
    abi = "cp" + version.replace(".", "")
    platforms = [f"--platform={p}" for p in
                 ("manylinux_2_36_aarch64", "manylinux_2_28_aarch64", "manylinux_2_17_aarch64",
                  "manylinux2014_aarch64", "linux_aarch64")]  # bookworm has glibc 2.36
    cert = "/etc/ssl/certs/ca-certificates.crt"
    _run([sys.executable, "-m", "pip", "--isolated", "install", "--disable-pip-version-check",
          "--no-input", *(["--cert", cert] if Path(cert).is_file() else []), "--only-binary=:all:",
          *platforms, f"--python-version={version}", "--implementation=cp", f"--abi={abi}",
          "--upgrade", "--target", str(site), *(f"{d}=={v}" for d, v in sorted(pins.items()))],
         "pip install of the aarch64 wheels", log)
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts with this machine's shebang
    _run([str(enter), f"{VENV}/bin/python3 -c 'import numpy, onnxruntime, cv2, pyclipper, platform;"
          " print(\"imports ok on\", platform.machine())' && apt-get clean"
          " && rm -rf /var/lib/apt/lists/* /debootstrap /root/.cache"],
         "importing the runtime on the device", log)
    (dest / "etc/ocr-emulated-pi.json").write_text(json.dumps({"suite": SUITE, "pins": pins}) + "\n")
    shutil.rmtree(enter.parent, ignore_errors=True)


def pack(src: Path, archive: Path) -> None:
    """tar | zstd -3 into ``archive`` atomically (a reader never sees half an archive)."""
    tmp = archive.with_name(f".{archive.name}.{os.getpid()}.partial")
    with open(tmp, "wb") as out:
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(src), "-cf", "-", "."],
                               stdout=subprocess.PIPE)
        zst = subprocess.run(["nice", "-n", "19", "zstd", "-3", "-T0", "-q"], stdin=tar.stdout,
                             stdout=out, check=False)
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0 or zst.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise EmulatorError(f"packing {src} into {archive} failed")
    os.replace(tmp, archive)


def restore(archive: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    zst = subprocess.Popen(["zstd", "-dc", "-q", str(archive)], stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "--numeric-owner", "-C", str(dest), "-xf", "-"], stdin=zst.stdout,
                         capture_output=True, check=False)
    assert zst.stdout is not None
    zst.stdout.close()
    if zst.wait() != 0 or tar.returncode != 0:
        raise EmulatorError(f"restoring {archive} into {dest} failed: {tar.stderr.decode()[-500:]}")


def ensure_rootfs(rebuild: bool = False, log: Path | None = None) -> Path:
    """The cached rootfs archive for this machine's pins, built when missing (or ``rebuild``)."""
    pins = requirement_pins()
    archive = cached_rootfs(pins)
    if archive.is_file() and not rebuild:
        return archive
    why = unavailable_reason(need_build=True)
    if why:
        raise EmulatorError(f"cannot build the emulated Pi: {why}")
    archive.parent.mkdir(parents=True, exist_ok=True)
    key = archive.name.split(".")[0]
    work = Path(tempfile.mkdtemp(prefix=f".{key}.build.", dir=archive.parent))
    log = log or archive.parent / f"{key}.log"
    log.write_text(f"building {archive} for {json.dumps(pins)}\n")
    try:
        t0 = time.monotonic()
        build_rootfs(work / "rootfs", pins, log)
        t1 = time.monotonic()
        pack(work / "rootfs", archive)
        t2 = time.monotonic()
        with open(log, "a") as fh:
            fh.write(f"built in {t1 - t0:.0f} s, packed in {t2 - t1:.1f} s, "
                     f"{archive.stat().st_size / 2**20:.0f} MiB\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for stale in archive.parent.glob("*.tar.zst"):  # other pins: stale, ~160 MB each
        if stale != archive:
            stale.unlink(missing_ok=True)
    return archive


# ------------------------------------------------------------------------------- the device


class EmulatedPi:
    """A restored rootfs behind a real sshd on 127.0.0.1; ``ssh_config``/``known_hosts``/``alias``
    are what a recipe's ``deploy`` section needs. ``start()``/``stop()``, or a ``with`` block."""

    def __init__(self, workdir: Path, archive: Path, install_dir: str = "/home/pi/ocr-recipe",
                 name: str = "emulated-pi"):
        if not install_dir.startswith("/") or install_dir.strip("/").split("/")[0] in (
            "", "bin", "dev", "etc", "lib", "lib64", "proc", "run", "sbin", "sys", "tmp", "usr", "var"
        ):
            raise EmulatorError(f"install_dir {install_dir!r}: needs an absolute path under e.g. /home or /opt")
        self.workdir = workdir
        self.archive = archive
        self.install_dir = install_dir
        self.name = name
        self.root = workdir / "rootfs"
        self.enter = workdir / "enter"
        self.server: Any = None
        top = "/" + install_dir.strip("/").split("/")[0]
        if str(self.root.resolve()).startswith(top + "/"):
            raise EmulatorError(f"the rootfs {self.root} must not live under {top} (the sftp view mounts over it)")

    def start(self) -> EmulatedPi:
        from sshd import SSHServer  # tests/sshd.py: the same OpenSSH fixture the deploy tests use

        why = unavailable_reason()
        if why:
            raise EmulatorError(f"cannot run the emulated Pi: {why}")
        t0 = time.monotonic()
        restore(self.archive, self.root)
        self.restore_seconds = time.monotonic() - t0
        (self.root / self.install_dir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        write_enter_script(self.root, self.workdir, self.install_dir)
        enter = self.enter

        class _Server(SSHServer):
            def _write_configs(self) -> None:
                super()._write_configs()
                with open(self.config, "a") as fh:
                    fh.write(f"ForceCommand {enter}\n")

        self.server = _Server(self.workdir / "ssh", self.name).start()
        return self

    @property
    def ssh_config(self) -> Path:
        return Path(self.server.ssh_config)

    @property
    def known_hosts(self) -> Path:
        return Path(self.server.known_hosts)

    @property
    def alias(self) -> str:
        return self.name

    def run(self, command: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        """Run a shell command on the device directly (no SSH), e.g. for measurements."""
        return subprocess.run(["nice", "-n", "19", str(self.enter), command], capture_output=True,
                              text=True, timeout=timeout, check=False, env={"PATH": os.defpath})

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        # every mount lived in a per-command namespace, so this is a plain directory tree
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> EmulatedPi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _serve(workdir: Path, install_dir: str) -> int:
    def _interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` stops it cleanly too (sshd included)
    try:
        pi = EmulatedPi(workdir, ensure_rootfs(), install_dir)
    except EmulatorError as exc:
        print(f"emulated_pi: {exc}", file=sys.stderr)
        return 1
    try:
        pi.start()
    except (EmulatorError, KeyboardInterrupt) as exc:
        pi.stop()
        print(f"emulated_pi: {str(exc) or 'interrupted'}", file=sys.stderr)
        return 1
    print(f"emulated Raspberry Pi (aarch64 under qemu; timings are emulated, not a Pi's) on "
          f"127.0.0.1:{pi.server.port}, rootfs restored in {pi.restore_seconds:.1f} s\n"
          f"  ssh -F {pi.ssh_config} {pi.alias} uname -m\n"
          f"  recipe run RECIPE --set 'targets=[rpi4]' --set 'deploy.rpi4={{hosts: [{pi.alias}], "
          f"ssh_config: {pi.ssh_config}, known_hosts: {pi.known_hosts}}}'\nCtrl-C stops it.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        pi.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="emulated_pi", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the rootfs archive unless it is cached")
    b.add_argument("--rebuild", action="store_true")
    sub.add_parser("status", help="whether this machine can run the emulated Pi")
    sv = sub.add_parser("serve", help="start the device and keep it running until Ctrl-C")
    sv.add_argument("--workdir", default=None, help="where the rootfs is restored (default: a temp dir)")
    sv.add_argument("--install-dir", default="/home/pi/ocr-recipe", help="the rpi4 profile's install_dir")
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        return _serve(Path(args.workdir or tempfile.mkdtemp(prefix="emulated-pi.")), args.install_dir)
    if args.cmd == "status":
        print(json.dumps({"unavailable": unavailable_reason(), "archive": str(cached_rootfs()),
                          "cached": cached_rootfs().is_file(), "pins": requirement_pins()}, indent=2))
        return 0
    try:
        t0 = time.monotonic()
        archive = ensure_rootfs(rebuild=args.rebuild)
    except EmulatorError as exc:
        print(f"emulated_pi: {exc}", file=sys.stderr)
        return 1
    print(f"{archive} ({archive.stat().st_size / 2**20:.0f} MiB, {time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
