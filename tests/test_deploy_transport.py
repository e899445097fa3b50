"""Ship / rollback drills against a real OpenSSH server on 127.0.0.1 and a local release dir.

No SSH is mocked: the ``ssh`` transport talks to ``/usr/sbin/sshd`` started by ``tests/sshd.py``
(the "device" is this machine, so its files can be tampered with and its server killed).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from engine.deploy.bundle import finalize_bundle, pack_bundle
from engine.deploy.preflight import bundle_size, install_requirements, preflight
from engine.deploy.releases import (
    checksum_status,
    current_release,
    list_releases,
    read_history,
    rollback,
    ship,
    verify_remote,
)
from engine.deploy.transport import (
    CommandResult,
    DeployError,
    LocalTransport,
    SSHTransport,
    Transport,
)
from engine.runtime import bundle_manifest
from engine.runtime.bundle_manifest import BundleError, verify_bundle

if TYPE_CHECKING:
    from sshd import SSHServer

pytest_plugins = ["sshd"]  # fixtures sshd_server, sshd_factory (tests/sshd.py)
VERIFIER = Path(bundle_manifest.__file__)


def make_bundle(base: Path, tag: str, extra: dict[str, bytes] | None = None) -> Path:
    """A small bundle: fake models, the real verifier, a script; ``tag`` makes it unique."""
    root = base / f"bundle-{tag}"
    (root / "models").mkdir(parents=True)
    (root / "runtime").mkdir()
    (root / "models" / "det.onnx").write_bytes(b"det-" + tag.encode() * 100)
    (root / "models" / "rec.onnx").write_bytes(b"rec-model")
    shutil.copy(VERIFIER, root / "runtime" / "bundle_manifest.py")
    (root / "run.sh").write_text("#!/bin/sh\necho ok\n")
    (root / "run.sh").chmod(0o755)
    for rel, data in (extra or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    finalize_bundle(root, {"target": "local-cpu", "tag": tag})
    return root


def release_path(server_root: str, release: str) -> Path:
    return Path(server_root) / "releases" / release


@pytest.fixture(params=["local", "ssh"])
def host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Transport, str]]:
    """(transport, install dir as a local path) for both transports."""
    if request.param == "local":
        t = LocalTransport(tmp_path / "local-install")
        yield t, t.root
        return
    server: SSHServer = request.getfixturevalue("sshd_server")
    t = SSHTransport(
        server.alias,
        server.install_dir,
        ssh_config=server.ssh_config,
        known_hosts=server.known_hosts,
    )
    yield t, server.install_dir
    t.close()


# ------------------------------------------------------------------------------- bundles (local)


def test_finalize_pack_and_verify(tmp_path: Path) -> None:
    b = make_bundle(tmp_path, "a")
    (b / "runtime" / "__pycache__").mkdir()
    (b / "runtime" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    m = finalize_bundle(b, {"target": "local-cpu", "tag": "a"})
    assert m["format"] == 1 and set(m["files"]) == {
        "models/det.onnx",
        "models/rec.onnx",
        "runtime/bundle_manifest.py",
        "run.sh",
    }
    assert verify_bundle(b)["bundle_hash"] == m["bundle_hash"]
    with pytest.raises(ValueError, match="reserved"):
        finalize_bundle(b, {"files": {}})
    one, two = pack_bundle(b), pack_bundle(b, tmp_path / "again.tar.gz")
    assert one.read_bytes() == two.read_bytes()  # reproducible archive
    (b / "models" / "rec.onnx").write_bytes(b"tampered")
    with pytest.raises(BundleError, match=r"models/rec\.onnx: sha256 mismatch") as exc:
        verify_bundle(b)
    assert exc.value.path.endswith("models/rec.onnx")
    # the shipped verifier runs as a plain script with only the standard library
    res = subprocess.run(
        [sys.executable, "-I", str(b / "runtime" / "bundle_manifest.py"), str(b)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and "FAILED" in res.stdout and "rec.onnx" in res.stdout
    # ... even in a virtual environment without any third-party package (as on a device)
    venv = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    finalize_bundle(b, {"target": "local-cpu", "tag": "a"})
    res = subprocess.run(
        [str(venv / "bin" / "python"), str(b / "runtime" / "bundle_manifest.py"), str(b)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0 and res.stdout.startswith("OK "), res.stdout + res.stderr


# ------------------------------------------------------------------- ship / rollback (both)


def test_ship_switches_current_and_keeps_n(host: tuple[Transport, str], tmp_path: Path) -> None:
    t, root = host
    bundles = [make_bundle(tmp_path, tag) for tag in "abcd"]
    results = [ship(t, b, keep=2) for b in bundles]
    hashes = [r.release for r in results]
    assert [r.previous for r in results] == [None, *hashes[:-1]]
    assert os.readlink(Path(root) / "current") == f"releases/{hashes[-1]}"
    assert current_release(t) == hashes[-1]
    assert [r.release for r in list_releases(t)] == hashes[-2:]  # keep=2: current + previous
    assert sorted(os.listdir(Path(root) / "releases")) == sorted([*hashes[-2:], "history.jsonl"])
    assert set(results[2].removed) | set(results[3].removed) == set(hashes[:2])
    assert [e["release"] for e in read_history(t)] == hashes
    assert os.access(release_path(root, hashes[-1]) / "run.sh", os.X_OK)
    again = ship(t, bundles[-1], keep=2)  # rerun: nothing to upload, nothing switched
    assert (again.changed, again.uploaded, again.reused) == (False, (), 5)
    assert verify_remote(t, hashes[-1])["tag"] == "d"


def test_rollback_walks_back(host: tuple[Transport, str], tmp_path: Path) -> None:
    t, root = host
    a, b, c = (ship(t, make_bundle(tmp_path, tag), keep=5).release for tag in "abc")
    assert rollback(t) == b and current_release(t) == b
    assert rollback(t) == a
    with pytest.raises(DeployError, match=r"no previous release") as exc:
        rollback(t)
    assert str(exc.value).startswith(t.host)
    assert rollback(t, to=c[:10]) == c
    assert os.readlink(Path(root) / "current") == f"releases/{c}"
    with pytest.raises(DeployError, match="no release 'ffff'"):
        rollback(t, to="ffff")
    assert [e["action"] for e in read_history(t)] == ["ship"] * 3 + ["rollback"] * 3


def test_tampered_file_detected_and_repaired(host: tuple[Transport, str], tmp_path: Path) -> None:
    t, root = host
    old = ship(t, make_bundle(tmp_path, "a")).release
    bundle = make_bundle(tmp_path, "b")
    new = ship(t, bundle).release
    (release_path(root, new) / "models" / "det.onnx").write_bytes(b"evil")
    (release_path(root, old) / "models" / "rec.onnx").unlink()
    with pytest.raises(
        DeployError, match=r"1 file\(s\) differ from the manifest: models/det\.onnx"
    ):
        verify_remote(t, new)
    with pytest.raises(DeployError, match=r"models/rec\.onnx"):
        rollback(t)  # never roll back onto a damaged release
    assert current_release(t) == new
    res = ship(t, bundle)  # rerun repairs the changed file only
    assert res.uploaded == ("models/det.onnx",) and not res.changed
    verify_remote(t, new)


def test_leftover_partial_is_resumed(host: tuple[Transport, str], tmp_path: Path) -> None:
    t, root = host
    first = ship(t, make_bundle(tmp_path, "a")).release
    bundle = make_bundle(tmp_path, "b", {"models/big.bin": os.urandom(300_000)})
    release = verify_bundle(bundle)["bundle_hash"]
    partial = Path(root) / "releases" / f"{release}.partial"
    shutil.copytree(bundle, partial, ignore=shutil.ignore_patterns("manifest.json", "run.sh"))
    big = partial / "models" / "big.bin"
    big.write_bytes(big.read_bytes()[:1000])  # what a cut connection leaves behind
    assert current_release(t) == first
    res = ship(t, bundle)
    assert set(res.uploaded) == {"models/big.bin", "run.sh", "manifest.json"}
    assert res.reused == 3 and current_release(t) == release and not partial.exists()


def test_local_bundle_invalid_is_refused(host: tuple[Transport, str], tmp_path: Path) -> None:
    t, _ = host
    bundle = make_bundle(tmp_path, "a")
    (bundle / "run.sh").write_text("changed after finalize")
    with pytest.raises(DeployError, match=r"local bundle is not valid.*run\.sh"):
        ship(t, bundle)
    assert current_release(t) is None


# -------------------------------------------------------------------------------- ssh drills


def test_sshd_killed_mid_upload_then_rerun_completes(
    sshd_server: SSHServer, tmp_path: Path
) -> None:
    server = sshd_server
    opts = {"ssh_config": server.ssh_config, "known_hosts": server.known_hosts}
    first = ship(SSHTransport(server.alias, server.install_dir, **opts), make_bundle(tmp_path, "a"))
    bundle = make_bundle(tmp_path, "b", {"models/zz_big.bin": os.urandom(48 << 20)})
    release = verify_bundle(bundle)["bundle_hash"]
    target = release_path(server.install_dir, release + ".partial") / "models" / "zz_big.bin"
    killed = threading.Event()

    def killer() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if target.exists() and target.stat().st_size > 0:
                server.kill_all()
                killed.set()
                return
            time.sleep(0.001)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    t = SSHTransport(server.alias, server.install_dir, **opts)
    with pytest.raises(DeployError) as exc:
        ship(t, bundle)
    thread.join()
    assert killed.is_set() and str(exc.value).startswith(f"{server.alias}: ")
    assert os.readlink(Path(server.install_dir) / "current") == f"releases/{first.release}"
    assert target.stat().st_size < (48 << 20)  # really cut short
    server.start()
    res = ship(SSHTransport(server.alias, server.install_dir, **opts), bundle)
    assert res.release == release and res.previous == first.release
    assert "models/det.onnx" not in res.uploaded and "models/zz_big.bin" in res.uploaded
    assert current_release(SSHTransport(server.alias, server.install_dir, **opts)) == release


def test_unknown_host_key_refused(sshd_server: SSHServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    t = SSHTransport(
        sshd_server.spec,
        sshd_server.install_dir,
        ssh_config=sshd_server.ssh_config,
        known_hosts=empty,
    )
    with pytest.raises(DeployError, match=r"host key for \[127\.0\.0\.1\]:\d+ is unknown") as exc:
        t.run("true")
    assert str(exc.value).startswith(sshd_server.spec)
    assert empty.read_text() == ""  # nothing was trusted


def test_changed_host_key_refused_even_with_tofu(sshd_server: SSHServer) -> None:
    sshd_server.stop()
    sshd_server.regenerate_host_key()  # device reinstalled; known_hosts still has the old key
    sshd_server.start()
    for tofu in (False, True):
        t = SSHTransport(
            sshd_server.alias,
            sshd_server.install_dir,
            ssh_config=sshd_server.ssh_config,
            known_hosts=sshd_server.known_hosts,
            trust_on_first_use=tofu,
        )
        with pytest.raises(DeployError, match=r"^device: host key for .* has CHANGED"):
            t.run("true")


def test_trust_on_first_use_records_key(sshd_server: SSHServer, tmp_path: Path) -> None:
    kh = tmp_path / "new" / "known_hosts"
    with SSHTransport(
        sshd_server.alias,
        sshd_server.install_dir,
        ssh_config=sshd_server.ssh_config,
        known_hosts=kh,
        trust_on_first_use=True,
    ) as t:
        assert t.run("echo hi").stdout == "hi\n"
    blob = sshd_server.host_key_line().split()[2]
    assert f"[127.0.0.1]:{sshd_server.port}" in kh.read_text() and blob in kh.read_text()
    with SSHTransport(
        sshd_server.alias,
        sshd_server.install_dir,
        ssh_config=sshd_server.ssh_config,
        known_hosts=kh,
    ) as t:  # and is verified (not re-trusted) next time
        assert t.run("true").ok


def test_bad_credentials_and_unreachable(sshd_server: SSHServer, tmp_path: Path) -> None:
    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host *\n  IdentitiesOnly yes\n")
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    t = SSHTransport(
        sshd_server.spec,
        "x",
        ssh_config=cfg,
        known_hosts=sshd_server.known_hosts,
        key_filename=stranger,
    )
    with pytest.raises(DeployError, match="authentication failed"):
        t.run("true")
    t = SSHTransport(sshd_server.spec, "x", key_filename=tmp_path / "nope")
    with pytest.raises(DeployError, match=r"key file .*nope does not exist"):
        t.run("true")
    sshd_server.stop()
    t = SSHTransport(
        sshd_server.spec,
        "x",
        ssh_config=sshd_server.ssh_config,
        known_hosts=sshd_server.known_hosts,
        connect_timeout=3,
    )
    with pytest.raises(DeployError, match=r"unreachable"):
        t.run("true")


def test_preflight(sshd_server: SSHServer, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, "a")
    here = platform.machine()
    with SSHTransport(
        sshd_server.spec,
        sshd_server.install_dir,
        ssh_config=sshd_server.ssh_config,
        known_hosts=sshd_server.known_hosts,
    ) as t:
        rep = preflight(
            t, arch=here, python=sys.executable, python_min="3.10", bundle_bytes=bundle_size(bundle)
        )
        assert rep.ok and rep.arch == here and rep.free_bytes > 0, rep.missing
        assert rep.require() is rep
        other = "aarch64" if here == "x86_64" else "x86_64"
        with pytest.raises(
            DeployError,
            match=rf"^{sshd_server.spec}: architecture mismatch: "
            rf"the host is {here} but the target expects {other}",
        ):
            preflight(t, arch=other, python=sys.executable)
        with pytest.raises(DeployError, match=r"the runtime needs >= 9\.0"):
            preflight(t, arch=here, python=sys.executable, python_min="9.0")
        with pytest.raises(DeployError, match="not enough disk"):
            preflight(t, arch=here, python=sys.executable, bundle_bytes=1 << 60)
        with pytest.raises(DeployError, match="not usable"):
            preflight(t, arch=here, python="/nonexistent/python3")
        rep = preflight(t, arch=None, python=sys.executable, modules=("numpy", "no_such_mod_xyz"))
        assert (
            list(rep.missing) == ["no_such_mod_xyz"]
            and "ModuleNotFoundError" in rep.missing["no_such_mod_xyz"]
        )
        with pytest.raises(DeployError, match=r"runtime requirements missing.*no_such_mod_xyz"):
            rep.require()
        # the device-side verifier shipped in the bundle runs with the device python
        release = ship(t, bundle).release
        res = t.run(
            f"{sys.executable} -I releases/{release}/runtime/bundle_manifest.py releases/{release}"
        )
        assert res.stdout.strip() == f"OK {release}"


def _write_wheel(dist: Path, name: str = "tinydep", version: str = "1.0") -> Path:
    """A valid pure-Python wheel built by hand (nothing can be downloaded here)."""
    dist.mkdir(parents=True, exist_ok=True)
    whl = dist / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "VALUE = 42\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(whl, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
        z.writestr(f"{info}/RECORD", "".join(f"{p},,\n" for p in files) + f"{info}/RECORD,,\n")
    return whl


def test_install_requirements_from_shipped_wheels(sshd_server: SSHServer, tmp_path: Path) -> None:
    _write_wheel(tmp_path / "wheels")
    req = tmp_path / "requirements.txt"
    req.write_text("tinydep==1.0\n")
    target = tmp_path / "site"
    with SSHTransport(
        sshd_server.spec,
        sshd_server.install_dir,
        ssh_config=sshd_server.ssh_config,
        known_hosts=sshd_server.known_hosts,
    ) as t:
        install_requirements(
            t, sys.executable, req, tmp_path / "wheels", extra_args=("--target", str(target))
        )
        assert (target / "tinydep" / "__init__.py").is_file()
        assert (
            Path(sshd_server.install_dir) / ".deps" / "wheels" / "tinydep-1.0-py3-none-any.whl"
        ).is_file()
        req.write_text("tinydep==2.0\n")
        with pytest.raises(DeployError, match=r"pip install failed"):
            install_requirements(
                t, sys.executable, req, tmp_path / "wheels", extra_args=("--target", str(target))
            )


def test_install_dir_under_remote_home(sshd_server: SSHServer, tmp_path: Path) -> None:
    """``~`` in install_dir is the remote home (SFTP does not expand it), resolved before use."""
    rel = os.path.relpath(tmp_path / "home-install", Path.home())
    t = SSHTransport(
        sshd_server.alias,
        f"~/{rel}",
        ssh_config=sshd_server.ssh_config,
        known_hosts=sshd_server.known_hosts,
    )
    res = ship(t, make_bundle(tmp_path, "a"))
    assert t.root == str(tmp_path / "home-install")
    assert os.readlink(tmp_path / "home-install" / "current") == f"releases/{res.release}"


def test_two_servers_for_fleets(sshd_factory: Callable[..., SSHServer], tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, "a")
    servers = [sshd_factory("pi-1"), sshd_factory("pi-2")]
    assert len({s.port for s in servers}) == 2
    for s in servers:
        with SSHTransport(
            s.alias, s.install_dir, ssh_config=s.ssh_config, known_hosts=s.known_hosts
        ) as t:
            assert ship(t, bundle).changed
    assert os.readlink(Path(servers[0].install_dir) / "current") == os.readlink(
        Path(servers[1].install_dir) / "current"
    )


class _NoCoreutils(LocalTransport):
    """A host without sha256sum (exit 127), to exercise the device-python fallback."""

    def run(self, command: str, **kw: object) -> CommandResult:  # type: ignore[override]
        return super().run("sha256sum() { return 127; }; " + command, **kw)  # type: ignore[arg-type]


def test_checksum_fallback_without_sha256sum(tmp_path: Path) -> None:
    t = _NoCoreutils(tmp_path / "inst")
    bundle = make_bundle(tmp_path, "a")
    release = ship(t, bundle, python=sys.executable).release
    sums = verify_bundle(bundle)["files"]
    assert all(
        checksum_status(t, t.root + f"/releases/{release}", sums, python=sys.executable).values()
    )
    (Path(t.root) / "releases" / release / "run.sh").write_text("x")
    with pytest.raises(DeployError, match=r"differ from the manifest: run\.sh"):
        verify_remote(t, release, python=sys.executable)


def test_preflight_local(tmp_path: Path) -> None:
    t = LocalTransport(tmp_path / "inst")
    rep = preflight(t, arch=platform.machine(), python=sys.executable, bundle_bytes=10)
    assert rep.ok, rep.missing
    with pytest.raises(DeployError, match=r"^local:.*architecture mismatch"):
        preflight(t, arch="armv7l", python=sys.executable)
