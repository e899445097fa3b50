"""Bundle manifests: what a shipped bundle must contain, checked on the device itself.

A bundle is a directory (ONNX models, a copy of ``engine/runtime``, configuration) with a
``manifest.json`` at its root::

    {"format": 1, "files": {"models/det.onnx": "<sha256>", ...}, "bundle_hash": "<sha256>", ...}

The device verifies every listed file before it trusts a release, so this module runs where only
the standard library is guaranteed: it imports nothing else, not even the rest of the runtime,
and works both as ``python -m <pkg>.bundle_manifest DIR`` and as a plain script
(``python3 bundle_manifest.py DIR``), which prints ``OK <bundle_hash>`` or one ``FAILED`` line per
bad file and exits 1.

``bundle_hash`` names the release directory on a device, so it covers everything that makes two
bundles different: the sorted ``relpath``/``sha256`` pairs and the remaining manifest fields
(target, versions, ...), serialised canonically. ``__pycache__`` directories and ``*.pyc`` files
are never part of a bundle: Python writes them next to the runtime on the device.

A device trusts nothing it receives before checking it: the manifest is read up to
`MAX_MANIFEST_BYTES` and may list at most `MAX_FILES` files; every listed path is relative,
without ``..``, and reached without passing a symlink (``models -> /etc`` would make a check
read, and an upload write, outside the bundle). ``python3 bundle_manifest.py --unpack ARCHIVE
DIR`` installs a bundle from its ``.tar.gz`` (`pack_bundle`) on a host fed one archive: every
member is checked before anything is written (regular files and directories under one top
directory, no ``..``, absolute path, link or device), then the result is verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT = 1
#: the manifest keys the format itself owns; everything else is the build's meta
RESERVED_KEYS = ("format", "files", "bundle_hash")
_CHUNK = 1 << 20

#: Largest manifest a device reads. A real one is 10-40 KB (a hundred files plus the build's
#: measurements); 16 MiB bounds what a hostile one costs a device with 1 GB of memory.
MAX_MANIFEST_BYTES = 16 << 20

#: Most files a manifest may list (a bundle has ~60: models, runtime, val images).
MAX_FILES = 10_000

#: Largest bundle archive a device unpacks, summed over its members (the flagship's is ~15 MB
#: with three precisions; a Jetson bundle with fp16 models stays far below).
MAX_UNPACKED_BYTES = 2 << 30


class BundleError(Exception):
    """A bundle is malformed or a file differs from its manifest; ``path`` names the file."""

    def __init__(
        self, path: str | os.PathLike[str], message: str, problems: list[str] | None = None
    ):
        self.path = str(path)
        self.problems = problems or [message]
        super().__init__(f"{path}: {message}")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (models are tens of MB, devices have little RAM)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def is_ignored(relpath: str) -> bool:
    """True for files that Python creates at run time and that a bundle never lists."""
    parts = relpath.split("/")
    return "__pycache__" in parts or relpath.endswith(".pyc")


def check_relpath(relpath: str) -> str | None:
    """Why ``relpath`` cannot be a bundle member (None when it can).

    Paths are POSIX, relative, without ``..`` and without characters that ``sha256sum -c``
    escapes (backslash, newline), so the same list drives a checksum check on any device.
    """
    if not relpath or relpath.startswith("/") or "\\" in relpath:
        return "not a relative POSIX path"
    if any(c in relpath for c in "\n\r\0"):
        return "control characters in the file name"
    if any(part in ("", ".", "..") for part in relpath.split("/")):
        return "empty, '.' or '..' path component"
    return None


def compute_bundle_hash(files: dict[str, str], meta: dict[str, Any] | None = None) -> str:
    """sha256 over the sorted ``relpath sha256`` lines plus the canonical JSON of ``meta``.

    ``meta`` is every manifest field except ``format``, ``files`` and ``bundle_hash``.
    """
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(f"{rel}\0{files[rel]}\n".encode())
    extra = manifest_meta(meta or {})
    digest.update(json.dumps(extra, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()


def manifest_meta(manifest: dict[str, Any]) -> dict[str, Any]:
    """A manifest without its reserved keys: the meta a build wrote (and a re-seal keeps)."""
    return {k: v for k, v in manifest.items() if k not in RESERVED_KEYS}


def parse_manifest(data: bytes | str, source: str = MANIFEST_NAME) -> dict[str, Any]:
    """Validate the structure of a manifest; ``source`` names it in errors."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(source, f"larger than {MAX_MANIFEST_BYTES >> 20} MiB ({len(data)} bytes)")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(source, f"not valid JSON ({exc})") from None
    except RecursionError:
        raise BundleError(source, "not valid JSON (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise BundleError(source, "must be a JSON object")
    if doc.get("format") != FORMAT:
        raise BundleError(source, f"unsupported format {doc.get('format')!r} (expected {FORMAT})")
    files = doc.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(source, "'files' must be a non-empty object {relpath: sha256}")
    if len(files) > MAX_FILES:
        raise BundleError(source, f"lists {len(files)} files, more than {MAX_FILES}")
    for rel, digest in files.items():
        why = check_relpath(rel)
        if why:
            raise BundleError(source, f"bad file name {rel!r}: {why}")
        if not (isinstance(digest, str) and len(digest) == 64):
            raise BundleError(source, f"bad sha256 for {rel!r}: {digest!r}")
    if not isinstance(doc.get("bundle_hash"), str):
        raise BundleError(source, "'bundle_hash' is missing")
    return doc


def read_manifest(bundle_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read (at most `MAX_MANIFEST_BYTES` + 1 bytes) and structurally validate the manifest."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise BundleError(path, "the manifest is not a regular file")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise BundleError(path, f"cannot read the manifest ({exc.strerror or exc})") from None
    return parse_manifest(data, str(path))


def link_in_path(root: Path, relpath: str) -> str | None:
    """The first component of ``relpath`` below ``root`` that is a symlink, or None.

    Checked component by component (not with ``realpath``), so a link is refused even when it
    points back inside the bundle: a bundle never holds one (`bundle_files` refuses them).
    """
    current = root
    for part in relpath.split("/"):
        current = current / part
        if current.is_symlink():
            return current.relative_to(root).as_posix()
    return None


def verify_bundle(bundle_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Check every file listed in the manifest and the bundle hash; return the manifest.

    All problems are collected, so one run names every bad file; the error's ``path`` is the
    first of them.
    """
    root = Path(bundle_dir)
    manifest = read_manifest(root)
    problems: list[tuple[str, str]] = []
    for rel, expected in sorted(manifest["files"].items()):
        path = root / rel
        link = link_in_path(root, rel)
        if link is not None:
            target = os.readlink(root / link)
            problems.append((str(path), f"reached through a symlink ({link} -> {target})"))
            continue
        if not path.is_file():
            problems.append((str(path), "missing" if not path.exists() else "not a regular file"))
            continue
        try:
            actual = sha256_file(path)
        except OSError as exc:
            problems.append((str(path), f"unreadable ({exc.strerror or exc})"))
            continue
        if actual != expected:
            problems.append(
                (str(path), f"sha256 mismatch (expected {expected[:12]}…, got {actual[:12]}…)")
            )
    recomputed = compute_bundle_hash(manifest["files"], manifest)
    if recomputed != manifest["bundle_hash"]:
        problems.append((str(root / MANIFEST_NAME), "bundle_hash does not match the listed files"))
    if problems:
        lines = [f"{p}: {why}" for p, why in problems]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BundleError(problems[0][0], problems[0][1] + more, lines)
    return manifest


def unpack_bundle(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> dict[str, Any]:
    """Unpack a `pack_bundle` archive into the new directory ``dest``, verify it, return the manifest.

    Every member is checked before anything is written: one top directory (the bundle hash),
    below it only relative paths without ``..`` (`check_relpath`), only regular files and
    directories (a symlink, hard link, device or FIFO is refused: a link member followed by a
    file member through it is how archives write outside their directory), at most `MAX_FILES`
    members and `MAX_UNPACKED_BYTES` in all. ``dest`` must not exist; on any failure it is
    removed again, so a refused archive leaves nothing behind.
    """
    import shutil
    import tarfile

    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise BundleError(dest, "already exists; unpack into a new directory")
    try:
        tar = tarfile.open(archive, "r:gz")  # noqa: SIM115 - closed by the `with` below
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise BundleError(archive, f"not a bundle archive ({exc})") from None
    with tar:
        members, top = _checked_members(tar, str(archive))
        try:
            dest.mkdir(parents=True)
            for m in members:
                rel = m.name[len(top) + 1 :]
                if not rel:
                    continue
                target = dest / rel
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                if src is None:
                    raise BundleError(archive, f"member {m.name!r} has no data")
                with src, open(target, "xb") as out:  # "x": a member listed twice is refused
                    shutil.copyfileobj(src, out, _CHUNK)
                os.chmod(target, 0o755 if m.mode & 0o111 else 0o644)
            manifest = verify_bundle(dest)
            if manifest["bundle_hash"] != top:
                raise BundleError(archive, f"top directory {top!r} is not the bundle hash "
                                  f"{manifest['bundle_hash']}")
        except BaseException as exc:
            shutil.rmtree(dest, ignore_errors=True)
            if isinstance(exc, (OSError, tarfile.TarError, EOFError)):
                raise BundleError(archive, f"cannot unpack ({exc})") from None
            raise
    return manifest


def _checked_members(tar: Any, source: str) -> tuple[list[Any], str]:
    """Every member of ``tar``, refused as a whole at the first one that may not be unpacked."""
    import tarfile

    members: list[Any] = []
    top: str | None = None
    total = 0
    try:
        for m in tar:
            name = m.name[:-1] if m.name.endswith("/") else m.name
            why = check_relpath(name)
            if why:
                raise BundleError(source, f"member {m.name!r}: {why}; nothing was unpacked")
            first = name.split("/", 1)[0]
            top = first if top is None else top
            if first != top:
                raise BundleError(source, f"member {m.name!r} is outside the top directory "
                                  f"{top!r}; nothing was unpacked")
            if not (m.isfile() or m.isdir()):
                kind = ("symlink" if m.issym() else "hard link" if m.islnk()
                        else "device or FIFO")
                raise BundleError(source, f"member {m.name!r} is a {kind}: only regular files "
                                  "and directories are unpacked; nothing was unpacked")
            total += m.size
            members.append(m)
            if len(members) > MAX_FILES + 64 or total > MAX_UNPACKED_BYTES:
                raise BundleError(source, f"more than {MAX_FILES} members or "
                                  f"{MAX_UNPACKED_BYTES >> 20} MiB; nothing was unpacked")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(source, f"not a bundle archive ({exc})") from None
    if top is None:
        raise BundleError(source, "the archive is empty")
    return members, top


def main(argv: list[str] | None = None) -> int:
    """``bundle_manifest.py DIR`` verifies a bundle, ``--unpack ARCHIVE DIR`` unpacks then verifies:
    exit 0 and print ``OK <hash>``, or print each problem as ``FAILED ...`` and exit 1."""
    args = sys.argv[1:] if argv is None else argv
    if not (len(args) == 1 or (len(args) == 3 and args[0] == "--unpack")):
        print("usage: bundle_manifest.py BUNDLE_DIR | --unpack ARCHIVE NEW_DIR", file=sys.stderr)
        return 2
    try:
        manifest = unpack_bundle(args[1], args[2]) if len(args) == 3 else verify_bundle(args[0])
    except BundleError as exc:
        for line in exc.problems:
            print(f"FAILED {line}")
        return 1
    print(f"OK {manifest['bundle_hash']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
