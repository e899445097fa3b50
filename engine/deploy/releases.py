"""Releases on a host: upload, verify on the device, switch atomically, keep N, roll back.

Layout under the host's install_dir (the same for every transport)::

    releases/<bundle_hash>.partial/   upload in progress (resumable: only bad files are re-sent)
    releases/<bundle_hash>/           a complete bundle, every file checked on the device
                                      (Jetson: TensorRT engines built in it, tensorrt_remote.py)
    releases/history.jsonl            one JSON object per switch of ``current``
    current -> releases/<bundle_hash> the release in use

Why this order: a device may lose power or network at any moment. Files land in the
``.partial`` directory, are checked with ``sha256sum -c`` ON THE DEVICE (the device's python is
the fallback where coreutils are missing), and only a complete, verified directory is renamed
into place; ``current`` then moves with one ``rename(2)`` of a fresh symlink (``mv -T``), so a
reader sees the old release or the new one, never a mix. An interrupted ship leaves ``current``
alone and a rerun resumes the ``.partial`` directory. The history is what ``rollback`` follows;
pruning never removes the current release or the one rollback would go back to.

Nothing is written through a symlink on the host: the bundle is verified here first (its
manifest lists only relative paths without ``..``, reached without a symlink), and before any
upload the destination directory on the host is listed for symlinks (a ``.partial`` left with
``models -> /home/pi/.ssh`` would otherwise make the upload write there, and ``sha256sum -c``
read there); a release holding one is refused by ``verify_remote`` too.

Not handled: two controllers shipping to the same host at the same time (no remote lock).
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import shlex
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engine.runtime.bundle_manifest import (
    MANIFEST_NAME,
    BundleError,
    compute_bundle_hash,
    parse_manifest,
    sha256_file,
    verify_bundle,
)

from .transport import DeployError, Transport

log = logging.getLogger(__name__)

RELEASES = "releases"
CURRENT = "current"
HISTORY = "history.jsonl"
PARTIAL_SUFFIX = ".partial"
HISTORY_LIMIT = 1000
_RELEASE_RE = re.compile(r"^[0-9a-f]{64}$")

# Emulates `sha256sum -c -` for devices without coreutils: reads "sha  path" lines on stdin.
_PY_SHA256_CHECK = r"""
import hashlib, sys
for line in sys.stdin:
    line = line.rstrip("\n")
    if not line:
        continue
    want, rel = line.split("  ", 1)
    try:
        h = hashlib.sha256()
        with open(rel, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        print(rel + (": OK" if h.hexdigest() == want else ": FAILED"))
    except OSError:
        print(rel + ": FAILED open or read")
"""


@dataclass(frozen=True)
class ShipResult:
    """What ``ship`` did on one host."""

    host: str
    release: str
    previous: str | None
    changed: bool  # False when the release was already current (nothing switched)
    uploaded: tuple[str, ...] = ()
    uploaded_bytes: int = 0
    reused: int = 0  # files already present and correct (resumed upload or existing release)
    removed: tuple[str, ...] = ()
    seconds: float = 0.0
    tensorrt: dict[str, Any] | None = None  # the on-device engine build record (Jetson bundles)


@dataclass(frozen=True)
class ReleaseInfo:
    release: str
    current: bool
    activated_at: str | None = None  # last time it became current (UTC ISO 8601)
    history: list[dict[str, Any]] = field(default_factory=list, repr=False, compare=False)


def _releases_dir(t: Transport) -> str:
    return posixpath.join(t.root, RELEASES)


def _release_dir(t: Transport, release: str) -> str:
    return posixpath.join(t.root, RELEASES, release)


def short(release: str | None) -> str:
    return release[:12] if release else "none"


# Lists the symlinks below a directory, for hosts without find(1).
_PY_FIND_LINKS = r"""
import os, sys
top = sys.argv[1]
if os.path.islink(top):
    print(top)
for d, dirs, files in os.walk(top):
    for n in dirs + files:
        if os.path.islink(os.path.join(d, n)):
            print(os.path.join(d, n))
"""

# ------------------------------------------------------------------------------ checks on device


def symlinks_on_host(t: Transport, directory: str, *, python: str = "python3") -> list[str]:
    """Paths (relative to ``directory``, ``.`` for itself) of the symlinks in it, on the host."""
    q = shlex.quote(directory)
    res = t.run(f"[ -e {q} ] || [ -L {q} ] || exit 0; find {q} -type l", check=False)
    if res.exit_code == 127:
        res = t.run(f"{python} -c {shlex.quote(_PY_FIND_LINKS)} {q}", check=False)
    if not res.ok:
        raise DeployError(t.host, f"cannot list {directory} on the host: {res.tail(2)}")
    return sorted(posixpath.relpath(line, directory) for line in res.stdout.splitlines() if line)


def refuse_symlinks(t: Transport, directory: str, *, python: str = "python3") -> None:
    """DeployError naming the host and the links when ``directory`` holds any."""
    links = symlinks_on_host(t, directory, python=python)
    if links:
        shown = ", ".join(links[:5]) + (f" (+{len(links) - 5} more)" if len(links) > 5 else "")
        raise DeployError(t.host, f"{directory} holds symlinks ({shown}): a bundle never does, "
                          "and files would be written or checked through them; remove the "
                          "directory and ship again")


def checksum_status(
    t: Transport, directory: str, sums: dict[str, str], *, python: str = "python3"
) -> dict[str, bool]:
    """``{relpath: matches}`` for every file in ``sums``, hashed on the host itself."""
    checklist = "".join(f"{sha}  {rel}\n" for rel, sha in sorted(sums.items()))
    where = f"cd {shlex.quote(directory)} || exit 3; "
    res = t.run(where + "sha256sum -c -", stdin=checklist, check=False)
    if res.exit_code == 127:  # no sha256sum (busybox without it, minimal images)
        res = t.run(
            where + f"{python} -c {shlex.quote(_PY_SHA256_CHECK)}", stdin=checklist, check=False
        )
        if res.exit_code == 127:
            raise DeployError(t.host, f"neither sha256sum nor {python} found on the host")
    if res.exit_code == 3:
        return dict.fromkeys(sums, False)
    status = dict.fromkeys(sums, False)
    for line in res.stdout.splitlines():
        rel, sep, verdict = line.rpartition(": ")
        if sep and rel in status:
            status[rel] = verdict.strip() == "OK"
    return status


def verify_remote(
    t: Transport, release: str | None = None, *, python: str = "python3"
) -> dict[str, Any]:
    """Check a release (default: the current one) against its own manifest; return the manifest.

    The manifest must hash to the release's name (so editing it does not hide a changed file)
    and every listed file must match, hashed on the device. Raises DeployError naming the files.
    """
    if release is None:
        release = current_release(t)
        if release is None:
            raise DeployError(t.host, f"nothing installed: no {CURRENT} link in {t.root}")
    rdir = _release_dir(t, release)
    if not t.is_dir(rdir):
        raise DeployError(t.host, f"release {short(release)} does not exist in {_releases_dir(t)}")
    source = posixpath.join(rdir, MANIFEST_NAME)
    data = t.read_bytes(source)
    if data is None:
        raise DeployError(t.host, f"{source}: manifest is missing")
    try:
        manifest = parse_manifest(data, source)
    except BundleError as exc:
        raise DeployError(t.host, str(exc)) from None
    if compute_bundle_hash(manifest["files"], manifest) != manifest["bundle_hash"] or (
        manifest["bundle_hash"] != release
    ):
        raise DeployError(
            t.host, f"{source}: manifest does not match release {short(release)} (edited?)"
        )
    refuse_symlinks(t, rdir, python=python)
    status = checksum_status(t, rdir, manifest["files"], python=python)
    bad = sorted(rel for rel, ok in status.items() if not ok)
    if bad:
        shown = ", ".join(bad[:10]) + (f" (+{len(bad) - 10} more)" if len(bad) > 10 else "")
        raise DeployError(
            t.host,
            f"release {short(release)}: {len(bad)} file(s) differ from the manifest: {shown}",
        )
    return manifest


# ------------------------------------------------------------------------------------- history


def read_history(t: Transport) -> list[dict[str, Any]]:
    """Switches of ``current``, oldest first; unreadable lines are skipped, not fatal."""
    data = t.read_bytes(posixpath.join(_releases_dir(t), HISTORY))
    out: list[dict[str, Any]] = []
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("release"), str):
            out.append(entry)
    return out


def _append_history(t: Transport, action: str, release: str, previous: str | None) -> None:
    entries = read_history(t)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    entries.append({"time": now, "action": action, "release": release, "previous": previous})
    text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries[-HISTORY_LIMIT:])
    t.write_atomic(posixpath.join(_releases_dir(t), HISTORY), text.encode())


def _rollback_target(
    current: str | None, history: list[dict[str, Any]], present: set[str]
) -> str | None:
    """The release that was current before ``current`` was last shipped.

    Following the ``ship`` entries (not rollbacks) makes repeated rollbacks walk back through
    the shipped releases (C -> B -> A) instead of toggling between two.
    """
    if current is None:
        return None
    for wanted in ("ship", None):
        for entry in reversed(history):
            if entry.get("release") == current and (
                wanted is None or entry.get("action") == wanted
            ):
                prev = entry.get("previous")
                return (
                    prev if isinstance(prev, str) and prev in present and prev != current else None
                )
    return None


# ------------------------------------------------------------------------------------- queries


def current_release(t: Transport) -> str | None:
    """The bundle hash ``current`` points at, or None before the first ship."""
    target = t.readlink(posixpath.join(t.root, CURRENT))
    if not target:
        return None
    name = posixpath.basename(target.rstrip("/"))
    return name if _RELEASE_RE.match(name) else None


def list_releases(t: Transport) -> list[ReleaseInfo]:
    """Complete releases on the host, least recently activated first (current last)."""
    history = read_history(t)
    current = current_release(t)
    last_seen: dict[str, tuple[int, str | None]] = {}
    for i, entry in enumerate(history):
        last_seen[entry["release"]] = (i, entry.get("time"))
    names = [n for n in t.listdir(_releases_dir(t)) if _RELEASE_RE.match(n)]
    names.sort(key=lambda n: (n == current, last_seen.get(n, (-1, None))[0], n))
    return [ReleaseInfo(n, n == current, last_seen.get(n, (-1, None))[1], history) for n in names]


def previous_release(t: Transport) -> str | None:
    """Where ``rollback()`` without ``to`` would go."""
    present = {r.release for r in list_releases(t)}
    return _rollback_target(current_release(t), read_history(t), present)


# ------------------------------------------------------------------------------------- actions


def _sync(
    t: Transport, bundle: Path, dest: str, sums: dict[str, str], python: str
) -> tuple[list[str], int, int]:
    """Make ``dest`` hold exactly the bundle's files: send only what is missing or wrong."""
    refuse_symlinks(t, dest, python=python)  # before anything is written into it
    subdirs = {posixpath.dirname(rel) for rel in sums} - {""}
    t.makedirs([dest, *(posixpath.join(dest, d) for d in subdirs)])
    status = checksum_status(t, dest, sums, python=python)
    todo = sorted(
        (rel for rel, ok in status.items() if not ok), key=lambda r: (r == MANIFEST_NAME, r)
    )
    sent = 0
    for rel in todo:
        local = bundle / rel
        log.info("%s: uploading %s (%d bytes)", t.host, rel, local.stat().st_size)
        t.put(local, posixpath.join(dest, rel))
        sent += local.stat().st_size
    if todo:
        status = checksum_status(t, dest, sums, python=python)
        bad = sorted(rel for rel, ok in status.items() if not ok)
        if bad:
            raise DeployError(
                t.host, f"after upload, sha256 still differs on the device for: {', '.join(bad)}"
            )
    return todo, sent, len(sums) - len(todo)


def ship(
    t: Transport,
    bundle_dir: str | Path,
    keep: int = 3,
    *,
    python: str = "python3",
    trtexec: str | None = None,
) -> ShipResult:
    """Install a finalized bundle as the host's current release; safe to rerun after any failure.

    A bundle with ``runtime: tensorrt`` gets its engines built on the host (``trtexec``, default
    the plan's path) after the sha256 check and before ``current`` moves; a failed build leaves
    the previous release current (see tensorrt_remote.py).
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (got {keep})")
    started = time.monotonic()
    bundle = Path(bundle_dir)
    try:
        manifest = verify_bundle(bundle)
    except BundleError as exc:
        raise DeployError(t.host, f"local bundle is not valid, nothing shipped: {exc}") from None
    release = manifest["bundle_hash"]
    sums = {**manifest["files"], MANIFEST_NAME: sha256_file(bundle / MANIFEST_NAME)}
    t.makedirs([_releases_dir(t)])
    previous = current_release(t)
    final = _release_dir(t, release)
    engines: dict[str, Any] | None = None

    def build(directory: str) -> dict[str, Any] | None:
        if manifest.get("runtime") != "tensorrt":
            return None
        from .tensorrt_remote import build_engines

        return build_engines(t, directory, manifest, trtexec=trtexec, python=python)

    if t.is_dir(final):  # shipped before: check it, repair in place if something changed
        sent, nbytes, reused = _sync(t, bundle, final, sums, python)
        engines = build(final)
    else:
        partial = final + PARTIAL_SUFFIX
        sent, nbytes, reused = _sync(t, bundle, partial, sums, python)
        engines = build(partial)  # a failed build leaves the .partial dir: a rerun resumes it
        t.rename(partial, final)
    changed = previous != release
    if changed:
        t.switch_symlink(posixpath.join(t.root, CURRENT), f"{RELEASES}/{release}")
        _append_history(t, "ship", release, previous)
        log.info("%s: current -> %s (was %s)", t.host, short(release), short(previous))
    removed = prune(t, keep)
    return ShipResult(
        host=t.host,
        release=release,
        previous=previous,
        changed=changed,
        uploaded=tuple(sent),
        uploaded_bytes=nbytes,
        reused=reused,
        removed=tuple(removed),
        seconds=round(time.monotonic() - started, 3),
        tensorrt=engines,
    )


def prune(t: Transport, keep: int) -> list[str]:
    """Remove all but the ``keep`` most recently activated releases and stale ``.partial`` dirs.

    The current release and the rollback target are always kept, whatever ``keep`` says.
    Called after a successful switch, so any ``.partial`` left is from an abandoned ship.
    """
    infos = list_releases(t)
    current = current_release(t)
    present = {i.release for i in infos}
    keepset = {i.release for i in infos[-keep:]} | {
        current,
        _rollback_target(current, read_history(t), present),
    }
    removed = [i.release for i in infos if i.release not in keepset]
    stale = [n for n in t.listdir(_releases_dir(t)) if n.endswith(PARTIAL_SUFFIX)]
    for name in [*removed, *stale]:
        t.remove_tree(posixpath.join(_releases_dir(t), name))
    if removed:
        log.info("%s: removed old releases %s", t.host, ", ".join(map(short, removed)))
    return removed


def resolve_release(t: Transport, ref: str) -> str:
    """A full release name from a unique prefix (as printed by ``short``)."""
    names = [i.release for i in list_releases(t)]
    hits = [n for n in names if n.startswith(ref)] if ref else []
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise DeployError(
            t.host, f"no release {ref!r} (have: {', '.join(map(short, names)) or 'none'})"
        )
    raise DeployError(t.host, f"release prefix {ref!r} is ambiguous: {', '.join(map(short, hits))}")


def rollback(t: Transport, to: str | None = None, *, python: str = "python3") -> str:
    """Switch ``current`` back to the previous release (or to ``to``); return the release.

    The target is verified on the device first: rolling back onto a damaged release would turn
    one problem into two.
    """
    current = current_release(t)
    target = resolve_release(t, to) if to is not None else previous_release(t)
    if target is None:
        raise DeployError(
            t.host, f"no previous release to roll back to (current is {short(current)})"
        )
    if target == current:
        return target
    verify_remote(t, target, python=python)
    t.switch_symlink(posixpath.join(t.root, CURRENT), f"{RELEASES}/{target}")
    _append_history(t, "rollback", target, current)
    log.info("%s: rolled back current -> %s (was %s)", t.host, short(target), short(current))
    return target
