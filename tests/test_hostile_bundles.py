"""Hostile bundles, manifests and archives: refused before anything is installed, on the device
too. The device is a real OpenSSH server on 127.0.0.1 (tests/sshd.py) or a local release root;
nothing is mocked."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from test_deploy_transport import host, make_bundle  # noqa: F401 - `host` is a fixture

from engine.deploy.bundle import pack_bundle
from engine.deploy.releases import current_release, rollback, ship, verify_remote
from engine.deploy.tensorrt_remote import build_engines
from engine.deploy.transport import DeployError, LocalTransport, SSHTransport, Transport
from engine.runtime import bundle_manifest
from engine.runtime.bundle_manifest import (
    MAX_FILES,
    MAX_MANIFEST_BYTES,
    BundleError,
    compute_bundle_hash,
    unpack_bundle,
    verify_bundle,
)

pytest_plugins = ["sshd"]
VERIFIER = Path(bundle_manifest.__file__)


def _tree(directory: Path) -> dict[str, str]:
    """relpath -> sha256 (or the link target) of everything below ``directory``."""
    out = {}
    for p in sorted(directory.rglob("*")):
        rel = str(p.relative_to(directory))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _reseal(bundle: Path, files: dict[str, str]) -> None:
    """Rewrite the manifest with ``files``, its bundle_hash recomputed: a consistent forgery."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"] = files
    manifest["bundle_hash"] = compute_bundle_hash(files, manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def forge(bundle: Path, kind: str, outside: Path) -> str:
    """Make ``bundle`` hostile in one way; the text its refusal must contain."""
    files = json.loads((bundle / "manifest.json").read_text())["files"]
    outside.mkdir(exist_ok=True)
    if kind == "dotdot":
        (bundle.parent / "escape.txt").write_text("x")
        _reseal(bundle, {**files, "../escape.txt": _sha(bundle.parent / "escape.txt")})
        return "bad file name '../escape.txt': empty, '.' or '..' path component"
    if kind == "absolute":
        (outside / "abs.txt").write_text("x")
        _reseal(bundle, {**files, str(outside / "abs.txt"): _sha(outside / "abs.txt")})
        return "not a relative POSIX path"
    if kind == "file-symlink":  # same bytes elsewhere: the sha256 alone would pass
        shutil.move(bundle / "models" / "rec.onnx", outside / "rec.onnx")
        (bundle / "models" / "rec.onnx").symlink_to(outside / "rec.onnx")
        return f"reached through a symlink (models/rec.onnx -> {outside / 'rec.onnx'})"
    assert kind == "dir-symlink"
    shutil.move(bundle / "models", outside / "models")
    (bundle / "models").symlink_to(outside / "models")
    return f"reached through a symlink (models -> {outside / 'models'})"


KINDS = ["dotdot", "absolute", "file-symlink", "dir-symlink"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_hostile_manifest_entry_is_refused_before_anything_is_installed(
        host: tuple[Transport, str], tmp_path: Path, kind: str) -> None:  # noqa: F811
    t, root = host
    good = ship(t, make_bundle(tmp_path, "good")).release
    before = _tree(Path(root))
    bundle = make_bundle(tmp_path, "evil")
    why = forge(bundle, kind, tmp_path / "outside")
    with pytest.raises(DeployError) as exc:
        ship(t, bundle)
    assert str(exc.value).startswith(f"{t.host}: local bundle is not valid, nothing shipped")
    assert why in str(exc.value)
    assert _tree(Path(root)) == before and current_release(t) == good


def test_the_device_verifier_refuses_a_hostile_manifest_on_the_device(sshd_server, tmp_path):
    """The stdlib verifier shipped in every bundle, run on the device over SSH."""
    t = SSHTransport(sshd_server.alias, sshd_server.install_dir,
                     ssh_config=sshd_server.ssh_config, known_hosts=sshd_server.known_hosts)
    for kind in KINDS:
        bundle = make_bundle(tmp_path / kind, "a")
        why = forge(bundle, kind, tmp_path / kind / "outside")
        res = t.run(f"python3 -I {bundle}/runtime/bundle_manifest.py {bundle}", check=False)
        assert res.exit_code == 1 and res.stdout.startswith("FAILED ") and why in res.stdout, (
            kind, res.stdout, res.stderr)
    t.close()


def test_a_symlink_planted_in_a_partial_upload_is_refused_before_uploading(
        host: tuple[Transport, str], tmp_path: Path) -> None:  # noqa: F811
    t, root = host
    first = ship(t, make_bundle(tmp_path, "a")).release
    bundle = make_bundle(tmp_path, "b")
    release = verify_bundle(bundle)["bundle_hash"]
    stolen = tmp_path / "stolen"
    stolen.mkdir()
    partial = Path(root) / "releases" / f"{release}.partial"
    partial.mkdir()
    (partial / "models").symlink_to(stolen)  # an upload would write models/* into `stolen`
    with pytest.raises(DeployError, match=r"\.partial holds symlinks \(models\)") as exc:
        ship(t, bundle)
    assert str(exc.value).startswith(t.host)
    assert list(stolen.iterdir()) == [] and current_release(t) == first


def test_a_release_reached_through_a_symlink_is_not_verified_or_rolled_back_to(
        host: tuple[Transport, str], tmp_path: Path) -> None:  # noqa: F811
    t, root = host
    a = ship(t, make_bundle(tmp_path, "a")).release
    b = ship(t, make_bundle(tmp_path, "b")).release
    rec = Path(root) / "releases" / a / "models" / "rec.onnx"
    elsewhere = tmp_path / "rec.onnx"
    shutil.move(rec, elsewhere)
    rec.symlink_to(elsewhere)  # same bytes: sha256sum -c alone would pass it
    with pytest.raises(DeployError, match=r"holds symlinks \(models/rec\.onnx\)"):
        verify_remote(t, a)
    with pytest.raises(DeployError, match=r"holds symlinks"):
        rollback(t)
    assert current_release(t) == b


# ------------------------------------------------------------------ archives


def _archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info


def _hostile_archives(tmp_path: Path) -> dict[str, tuple[list, str]]:
    top = "a" * 64
    victim = tmp_path / "victim"
    return {
        "dotdot member": ([(_member(f"{top}/../../evil.txt"), b"x")],
                          "'..' path component"),
        "absolute member": ([(_member(str(tmp_path / "evil.txt")), b"x")],
                            "not a relative POSIX path"),
        "symlink then a file through it": ([(_member(f"{top}/models", tarfile.SYMTYPE, str(victim)),
                                             None), (_member(f"{top}/models/det.onnx"), b"x")],
                                           "is a symlink"),
        "hard link": ([(_member(f"{top}/shadow", tarfile.LNKTYPE, "/etc/shadow"), None)],
                      "is a hard link"),
        "fifo": ([(_member(f"{top}/fifo", tarfile.FIFOTYPE), None)], "is a device or FIFO"),
        "second top directory": ([(_member(f"{top}/a.txt"), b"x"), (_member("other/b.txt"), b"y")],
                                 "is outside the top directory"),
    }


def test_a_packed_bundle_unpacks_and_verifies(tmp_path):
    bundle = make_bundle(tmp_path, "a")
    archive = pack_bundle(bundle)
    manifest = unpack_bundle(archive, tmp_path / "unpacked")
    assert manifest["bundle_hash"] == verify_bundle(bundle)["bundle_hash"]
    assert _tree(tmp_path / "unpacked") == _tree(bundle)
    assert os.access(tmp_path / "unpacked" / "run.sh", os.X_OK)
    with pytest.raises(BundleError, match="already exists"):
        unpack_bundle(archive, tmp_path / "unpacked")


@pytest.mark.parametrize("case", list(_hostile_archives(Path("/x"))))
def test_an_archive_member_escaping_the_release_directory_is_refused(tmp_path, case):
    members, why = _hostile_archives(tmp_path)[case]
    archive = _archive(tmp_path / "evil.tar.gz", members)
    dest = tmp_path / "releases" / "new"
    with pytest.raises(BundleError, match="nothing was unpacked") as exc:
        unpack_bundle(archive, dest)
    assert why in str(exc.value) and str(exc.value).startswith(str(archive))
    assert not dest.exists() and not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "victim").exists()


def test_the_device_unpacker_refuses_an_escaping_member_on_the_device(sshd_server, tmp_path):
    t = SSHTransport(sshd_server.alias, sshd_server.install_dir,
                     ssh_config=sshd_server.ssh_config, known_hosts=sshd_server.known_hosts)
    members, why = _hostile_archives(tmp_path)["symlink then a file through it"]
    archive = _archive(tmp_path / "evil.tar.gz", members)
    dest = Path(sshd_server.install_dir) / "releases" / "unpacked"
    res = t.run(f"python3 -I {VERIFIER} --unpack {archive} {dest}", check=False)
    assert res.exit_code == 1 and why in res.stdout and res.stdout.startswith("FAILED ")
    assert not dest.exists() and not (tmp_path / "victim").exists()
    good = pack_bundle(make_bundle(tmp_path, "a"))
    res = t.run(f"python3 -I {VERIFIER} --unpack {good} {dest}", check=False)
    assert res.exit_code == 0 and res.stdout.startswith("OK "), res.stdout + res.stderr
    t.close()


# ------------------------------------------------------------------ manifests


def test_hostile_manifests_are_bundle_errors_not_tracebacks(tmp_path):
    bundle = make_bundle(tmp_path, "a")
    manifest = bundle / "manifest.json"
    cases = {
        "[" * 100_000 + "]" * 100_000: "not valid JSON (nested too deeply)",
        " " * MAX_MANIFEST_BYTES + "{}": f"larger than {MAX_MANIFEST_BYTES >> 20} MiB",
        json.dumps({"format": 1, "bundle_hash": "x",
                    "files": {f"f{i}": "0" * 64 for i in range(MAX_FILES + 1)}}):
            f"lists {MAX_FILES + 1} files, more than {MAX_FILES}",
    }
    for text, why in cases.items():
        manifest.write_text(text)
        res = subprocess.run([sys.executable, "-I", str(VERIFIER), str(bundle)],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-300:]
        assert res.stdout.startswith("FAILED ") and why in res.stdout, res.stdout[:300]


@pytest.mark.parametrize("model,engine,why", [
    ("detector", "../../../home/pi/.bashrc", "'..' path component"),
    ("detector", "/etc/cron.d/x", "not a relative POSIX path"),
    ("../../x", "models/fp16/detector.engine", "'..' path component"),
])
def test_a_tensorrt_plan_writing_outside_the_release_is_refused(tmp_path, model, engine, why):
    t = LocalTransport(tmp_path / "device")
    release = Path(t.root) / "releases" / "r"
    release.mkdir(parents=True)
    manifest = {"bundle_hash": "r", "runtime": "tensorrt",
                "tensorrt": {model: {"engine": engine, "trtexec": "trtexec"}}}
    with pytest.raises(DeployError, match="nothing was built") as exc:
        build_engines(t, str(release), manifest)
    assert why in str(exc.value) and str(exc.value).startswith(t.host)
    assert _tree(Path(t.root)) == {}
