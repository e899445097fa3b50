"""Training on a remote GPU host over SSH: ``train: {host: gpu-box, gpus: 2}``.

The laptop that runs ``recipe run`` rarely has the GPUs; a rented box does. A train stage with a
``host`` runs the very job a local stage would run (the same task factory, kwargs and
`TrainConfig` that `engine.stages.train` passes to `run_training`) on that host, with the
project's own code installed there, and brings the checkpoints back. This module is the laptop's
side; `engine.training.remote_host` is what runs on the host. What happens:

1. Preflight: ``PYTHON -c "import engine, torch"`` on the host; a host without the project (or
   torch) fails with a message naming it, before anything is uploaded.
2. Sync into ``REMOTE_DIR/<recipe>-<run dir hash>/<model>/``: only what this training reads —
   for the detector the manifest, rewritten so its image paths are remote paths, and the images
   it references (stored by content, ``data/images/<sha256>.<ext>``); for the recognizer the
   crops directory; the init checkpoint; ``job.json`` (factory, kwargs, config, gpus). Every
   file is hashed on the host (``sha256sum -c``, `engine.deploy.releases.checksum_status`) and
   only missing or different files are sent, so a rerun uploads nothing it already has; files
   of an earlier version of the job are removed.
3. Run ``PYTHON -m engine.training.remote_host job.json`` there; it calls `run_training`
   (torchrun + DDP when ``gpus > 1``) with ``run_dir = JOB/run``. Its stdout/stderr lines are
   streamed into the stage log as they arrive. The worker holds a lock on the job and, when
   started by this controller, exits (with its torchrun children) once its SSH channel closes,
   so a dropped connection never leaves an orphan training into the same directory.
4. Pull back ``best.pt``/``last.pt`` with their sha256 sidecars (each verified here before it
   replaces anything), ``metrics.csv``, ``curves.png`` and the logs, and summarise them with
   `result_from_checkpoints`: the stage result is built exactly as for local training.
   Periodic ``epoch_NNNN.pt`` files stay on the host (with optimizer state they are large).

Resume: checkpoints stay in the host's run directory. A rerun after a killed connection or
worker resumes from the host's ``last.pt`` (`fit` resumes from ``run_dir/checkpoints``), unless
the stage key changed or the stage was forced: the host keeps ``attempt.json`` with the stage key
and its run directory is cleared whenever the local stage starts fresh.

The SSH side is `engine.deploy.transport.SSHTransport` (Fabric; host keys verified against
known_hosts unless ``train.trust_on_first_use``; ``~/.ssh/config`` aliases honoured).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fsutil import atomic_write_bytes, atomic_write_json, sha256_file

JOB_FILE = "job.json"
MARKER = "attempt.json"
RUN = "run"
STAGING = "remote"  # local dir (in the stage's out_dir) for generated files that get uploaded
CHECKPOINTS = ("best.pt", "last.pt")
RUN_FILES = ("metrics.csv", "curves.png", "train.log", "torchrun.log")

_PROBE = (
    "import json, engine, torch; print(json.dumps({'engine': engine.__file__, "
    "'torch': torch.__version__, 'cuda': torch.cuda.device_count()}))"
)


@dataclass(frozen=True)
class RemoteHost:
    """Where and how a train stage trains remotely (the recipe's ``train.host`` settings)."""

    host: str
    remote_dir: str
    python: str
    device: str
    gpus: int
    trust_on_first_use: bool = False
    known_hosts: str | None = None
    ssh_config: str | None = None


@dataclass
class SyncReport:
    uploaded: list[str] = field(default_factory=list)
    uploaded_bytes: int = 0
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)


def job_root(root: str, run_dir: Path, model: str) -> str:
    """The job directory on the host: one per (local run directory, model), named after the
    recipe (the run directory's name); the directory's hash keeps two checkouts of the same
    recipe from sharing a job."""
    tag = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:10]
    return posixpath.join(root, f"{run_dir.name}-{tag}", model)


def open_host(host: RemoteHost) -> Any:
    from ..deploy.transport import SSHTransport

    return SSHTransport(host.host, host.remote_dir, ssh_config=host.ssh_config,
                        known_hosts=host.known_hosts, trust_on_first_use=host.trust_on_first_use)


def preflight(t: Any, python: str, gpus: int, device: str) -> dict[str, Any]:
    """The host must import the project and torch; CUDA must be there when the recipe needs it."""
    from ..deploy.transport import DeployError

    res = t.run(f"{python} -c {shlex.quote(_PROBE)}", check=False)
    if not res.ok:
        why = "not found" if res.exit_code == 127 else res.tail(3)
        raise DeployError(
            t.host,
            f"`{python} -c 'import engine, torch'` failed on the host ({why}); install the "
            "project and torch there (pip install ocr-recipe-engine), or set train.python to a "
            "Python that has them",
        )
    try:
        info: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise DeployError(t.host, f"unexpected preflight output: {res.stdout[-200:]!r}") from None
    cuda = int(info.get("cuda", 0))
    if device == "cuda" and cuda == 0:
        raise DeployError(t.host, "train.device is cuda but torch sees no CUDA device on the host")
    if cuda and gpus > cuda:
        raise DeployError(t.host, f"train.gpus is {gpus} but the host has {cuda} CUDA device(s)")
    return info


# ------------------------------------------------------------------------------ what is shipped


def job_files(
    staging: Path, root: str, factory: str, kwargs: dict[str, Any], config: dict[str, Any],
    gpus: int, key: str,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """``{remote relpath: local file}`` for one training job, and the job spec it runs.

    Paths in the spec (manifest, crops, init, run_dir) become paths under ``root`` on the host.
    """
    from ..data.manifest import read_manifest, write_manifest

    files: dict[str, Path] = {}
    kwargs = dict(kwargs)
    if "manifest" in kwargs:  # detector: manifest with remote image paths + those images
        records = [r for r in read_manifest(kwargs["manifest"]) if not r.recognition_only]
        for rec in records:
            local = Path(rec.image)
            rel = f"data/images/{sha256_file(local)}{local.suffix.lower()}"
            files[rel] = local
            rec.image = posixpath.join(root, rel)
        write_manifest(staging / "manifest.jsonl", records)
        files["data/manifest.jsonl"] = staging / "manifest.jsonl"
        kwargs["manifest"] = posixpath.join(root, "data/manifest.jsonl")
    if "crops_root" in kwargs:  # recognizer: the crops directory as it is
        crops = Path(kwargs["crops_root"])
        for path in sorted(p for p in crops.rglob("*") if p.is_file()):
            files[f"data/crops/{path.relative_to(crops).as_posix()}"] = path
        kwargs["crops_root"] = posixpath.join(root, "data/crops")
    config = {**config, "run_dir": posixpath.join(root, RUN), "tty": False}
    if config.get("init"):
        init = Path(config["init"])
        files[f"init/{init.name}"] = init
        side = init.with_name(init.name + ".sha256")
        if side.is_file():  # init_from_checkpoint verifies it when present
            files[f"init/{side.name}"] = side
        config["init"] = posixpath.join(root, "init", init.name)
    job = {"factory": factory, "kwargs": kwargs, "config": config, "gpus": int(gpus), "key": key}
    atomic_write_bytes(staging / JOB_FILE, json.dumps(job, indent=2, sort_keys=True).encode())
    files[JOB_FILE] = staging / JOB_FILE  # sent last: its sha says the job changed
    return files, job


def sync(t: Any, root: str, files: dict[str, Path], python: str, log: Callable[[str], None]) -> SyncReport:
    """Make ``root`` on the host hold ``files``: send only what its sha256 listing lacks."""
    from ..deploy.releases import checksum_status
    from ..deploy.transport import DeployError

    report = SyncReport()
    sums = {rel: sha256_file(path) for rel, path in files.items()}
    dirs = {posixpath.dirname(rel) for rel in sums} - {""}
    t.makedirs([root, *(posixpath.join(root, d) for d in dirs)])
    status = checksum_status(t, root, sums, python=python)
    todo = sorted((rel for rel, ok in status.items() if not ok), key=lambda r: (r == JOB_FILE, r))
    for rel in todo:
        size = files[rel].stat().st_size
        if len(todo) <= 20 or size > 1 << 20:
            log(f"uploading {rel} ({size} bytes)")
        t.put(files[rel], posixpath.join(root, rel))
        report.uploaded_bytes += size
    if todo:
        status = checksum_status(t, root, {rel: sums[rel] for rel in todo}, python=python)
        bad = sorted(rel for rel, ok in status.items() if not ok)
        if bad:
            raise DeployError(t.host, f"after upload, sha256 still differs for: {', '.join(bad)}")
    report.uploaded, report.unchanged = todo, len(sums) - len(todo)
    # Data of an earlier job version (content-named images pile up otherwise).
    res = t.run(f"cd {shlex.quote(root)} && find data init -type f 2>/dev/null", check=False)
    stale = sorted(set(res.stdout.splitlines()) - set(sums) - {""})
    for i in range(0, len(stale), 200):
        chunk = " ".join(shlex.quote(posixpath.join(root, r)) for r in stale[i : i + 200])
        t.run(f"rm -f -- {chunk}")
    report.removed = stale
    return report


def prepare_run_dir(t: Any, root: str, key: str, fresh: bool) -> bool:
    """Clear the host's run directory unless it holds an attempt of this stage key to resume.

    Returns True when a previous attempt is kept (the worker will resume from it).
    """
    marker = posixpath.join(root, MARKER)
    data = t.read_bytes(marker)
    try:
        previous = json.loads(data) if data is not None else None
    except ValueError:
        previous = None
    keep = not fresh and previous == {"key": key}
    if not keep:
        t.remove_tree(posixpath.join(root, RUN))
        t.makedirs([root])
        t.write_atomic(marker, json.dumps({"key": key}).encode())
    return keep and t.is_dir(posixpath.join(root, RUN, "checkpoints"))


# ---------------------------------------------------------------------------- run and stream


def stream(
    t: Any, command: str, on_line: Callable[[str, bool], None], *, poll_s: float = 0.05
) -> int | None:
    """Run ``command`` in ``t.root`` and hand every output line to ``on_line(line, is_stderr)``.

    `SSHTransport.run` returns output only at the end, so this opens its own channel on the same
    connection. Stdin stays open: the worker treats its end as "the controller is gone". Returns
    the exit status, or None when the process died of a signal or the connection was lost.
    """
    import paramiko

    from ..deploy.transport import DeployError

    t.connect()
    link = t._conn.client.get_transport()  # the Fabric connection's paramiko transport
    try:
        chan = link.open_session(timeout=t.connect_timeout)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise DeployError(t.host, f"cannot open an SSH channel: {exc}") from None
    pending = {False: b"", True: b""}

    def feed(data: bytes, err: bool) -> None:
        *lines, pending[err] = (pending[err] + data).split(b"\n")
        for raw in lines:
            on_line(raw.decode("utf-8", "replace").rstrip("\r"), err)

    try:
        chan.exec_command(f"cd {shlex.quote(t.root)} && {command}")
        while True:
            busy = False
            if chan.recv_ready():
                feed(chan.recv(1 << 16), False)
                busy = True
            if chan.recv_stderr_ready():
                feed(chan.recv_stderr(1 << 16), True)
                busy = True
            if busy:
                continue
            if chan.exit_status_ready() or not link.is_active() or chan.closed:
                break
            time.sleep(poll_s)
        while chan.recv_ready():
            feed(chan.recv(1 << 16), False)
        while chan.recv_stderr_ready():
            feed(chan.recv_stderr(1 << 16), True)
        for err in (False, True):
            if pending[err]:
                feed(b"\n", err)
        if not chan.exit_status_ready():
            return None
        code = int(chan.recv_exit_status())
        return None if code == -1 else code
    except (paramiko.SSHException, OSError, EOFError):
        return None  # the link broke mid-run: the worker stops itself when its stdin closes
    finally:
        chan.close()


def pull(t: Any, root: str, out_dir: Path, log: Callable[[str], None]) -> list[str]:
    """Fetch checkpoints (verified against their sidecars here) and logs into ``out_dir``."""
    import paramiko

    from ..deploy.transport import DeployError
    from .checkpoint import CheckpointError, sidecar_path, verify_checkpoint

    run = posixpath.join(root, RUN)
    fetched: list[str] = []
    here: dict[str, Path] = {}  # digest -> verified local file (best.pt is often last.pt)
    for name in CHECKPOINTS:
        remote = posixpath.join(run, "checkpoints", name)
        side = t.read_bytes(remote + ".sha256")
        if side is None:
            continue
        digest = side.decode().split()[0].strip().lower()
        local = out_dir / "checkpoints" / name
        if local.is_file() and sidecar_path(local).is_file() and sha256_file(local) == digest:
            atomic_write_bytes(sidecar_path(local), side)
            here[digest] = local
            continue  # already here (a rerun that trained nothing new)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{name}.pull.tmp")
        try:
            if digest in here:
                shutil.copyfile(here[digest], tmp)
            else:
                t.sftp.get(remote, str(tmp))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            tmp.unlink(missing_ok=True)
            raise DeployError(t.host, f"downloading {remote}: {exc}") from None
        got = sha256_file(tmp)
        if got != digest:
            tmp.unlink(missing_ok=True)
            raise DeployError(
                t.host, f"{remote}: downloaded sha256 {got[:16]}… does not match its sidecar "
                f"({digest[:16]}…); nothing replaced, rerun to fetch it again",
            )
        os.replace(tmp, local)
        atomic_write_bytes(sidecar_path(local), side)
        try:
            verify_checkpoint(local)
        except CheckpointError as exc:
            raise DeployError(t.host, str(exc)) from None
        here[digest] = local
        log(f"fetched {name} ({local.stat().st_size} bytes, sha256 {digest[:12]}… verified)")
        fetched.append(name)
    for name in RUN_FILES:
        data = t.read_bytes(posixpath.join(run, name))
        if data is not None:
            atomic_write_bytes(out_dir / name, data)
            fetched.append(name)
    return fetched


def run_remote_training(
    host: RemoteHost, run_root: Path, out_dir: Path, model: str, factory: str, kwargs: dict[str, Any],
    config: Any, *, key: str, fresh: bool, name: str, log: logging.Logger,
) -> Any:
    """The remote counterpart of `run_training` for a train stage; returns a `FitResult`.

    ``run_root`` is the local run directory (it names the job on the host), ``out_dir`` the
    stage's directory the checkpoints come back to, ``key`` the stage key an attempt on the
    host is resumed under. Raises `DeployError` naming the host.
    """
    from ..deploy.transport import DeployError
    from .loop import result_from_checkpoints

    def note(message: str) -> None:
        log.info("%s: %s", host.host, message)
        print(f"{name} @ {host.host}: {message}", flush=True)

    def line(text: str, err: bool) -> None:
        log.info("%s%s| %s", host.host, " stderr" if err else "", text)
        print(f"{host.host}| {text}", file=sys.stderr if err else sys.stdout, flush=True)

    staging = out_dir / STAGING
    tail: list[str] = []
    seconds: dict[str, float] = {}
    clock = time.monotonic()

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.monotonic()
        seconds[phase] = round(now - clock, 3)
        clock = now

    def keep(text: str, err: bool) -> None:
        tail.append(text)
        del tail[:-30]
        line(text, err)

    with open_host(host) as t:
        info = preflight(t, host.python, host.gpus, host.device)
        note(f"engine {info['engine']}, torch {info['torch']}, {info['cuda']} CUDA device(s)")
        lap("preflight")
        root = job_root(t.root, run_root, model)
        files, _ = job_files(staging, root, factory, kwargs, config.to_dict(), host.gpus, key)
        resumed = prepare_run_dir(t, root, key, fresh)
        report = sync(t, root, files, host.python, note)
        note(
            f"synced {root}: {len(report.uploaded)} file(s) uploaded "
            f"({report.uploaded_bytes} bytes), {report.unchanged} unchanged"
            + (f", {len(report.removed)} stale removed" if report.removed else "")
        )
        lap("sync")
        command = (
            f"exec {host.python} -u -m engine.training.remote_host --exit-with-stdin "
            f"{shlex.quote(posixpath.join(root, JOB_FILE))}"
        )
        note(("resuming" if resumed else "starting") + f" training ({host.gpus} process(es))")
        code = stream(t, command, keep)
        lap("train")
        if code != 0:
            why = "was killed or the connection was lost" if code is None else f"exit {code}"
            last = " | ".join(x for x in tail[-3:] if x.strip()) or "(no output)"
            raise DeployError(
                t.host,
                f"remote training {why} (last output: {last}); its checkpoints stay in "
                f"{root}/{RUN} and a rerun resumes from the last one",
            )
        fetched = pull(t, root, out_dir, note)
        lap("pull")
    atomic_write_json(out_dir / "remote.json", {
        "host": host.host, "job_dir": root, "resumed": resumed, "gpus": host.gpus,
        "uploaded": report.uploaded, "uploaded_bytes": report.uploaded_bytes,
        "unchanged": report.unchanged, "removed": len(report.removed), "fetched": fetched,
        "seconds": seconds,
    })
    return result_from_checkpoints(out_dir)
