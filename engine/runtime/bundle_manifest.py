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
_RESERVED = ("format", "files", "bundle_hash")
_CHUNK = 1 << 20


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
    extra = {k: v for k, v in (meta or {}).items() if k not in _RESERVED}
    digest.update(json.dumps(extra, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()


def parse_manifest(data: bytes | str, source: str = MANIFEST_NAME) -> dict[str, Any]:
    """Validate the structure of a manifest; ``source`` names it in errors."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(source, f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise BundleError(source, "must be a JSON object")
    if doc.get("format") != FORMAT:
        raise BundleError(source, f"unsupported format {doc.get('format')!r} (expected {FORMAT})")
    files = doc.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(source, "'files' must be a non-empty object {relpath: sha256}")
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
    """Read and structurally validate ``<bundle_dir>/manifest.json``."""
    path = Path(bundle_dir) / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(path, f"cannot read the manifest ({exc.strerror or exc})") from None
    return parse_manifest(data, str(path))


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
        if path.is_symlink() or not path.is_file():
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


def main(argv: list[str] | None = None) -> int:
    """``bundle_manifest.py DIR``: exit 0 and print ``OK <hash>``, or print each problem, exit 1."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: bundle_manifest.py BUNDLE_DIR", file=sys.stderr)
        return 2
    try:
        manifest = verify_bundle(args[0])
    except BundleError as exc:
        for line in exc.problems:
            print(f"FAILED {line}")
        return 1
    print(f"OK {manifest['bundle_hash']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
