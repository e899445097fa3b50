"""Bundle finalisation and packing on the build machine.

The build stage copies models, ``engine/runtime`` and configuration into a directory; this module
seals it: ``finalize_bundle`` hashes every file and writes ``manifest.json`` atomically (the
format is defined once, in ``engine.runtime.bundle_manifest``, because the device reads it), and
``pack_bundle`` makes a reproducible ``.tar.gz`` of the sealed directory for hosts that are
easier to feed one archive (the same bytes for the same bundle, so its hash can be cached).
"""

from __future__ import annotations

import gzip
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from engine.fsutil import atomic_write_bytes
from engine.runtime.bundle_manifest import (
    FORMAT,
    MANIFEST_NAME,
    BundleError,
    check_relpath,
    compute_bundle_hash,
    is_ignored,
    sha256_file,
    verify_bundle,
)

__all__ = ["BundleError", "bundle_files", "finalize_bundle", "pack_bundle"]


def bundle_files(bundle_dir: str | os.PathLike[str]) -> list[str]:
    """Sorted POSIX relpaths of the files that belong to the bundle (manifest excluded).

    Symlinks and odd names are refused rather than skipped: a bundle that silently lost a file
    would only fail on the device.
    """
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleError(root, "not a directory")
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for d in dirnames:
            if (Path(dirpath) / d).is_symlink():
                raise BundleError(Path(dirpath) / d, "symlinks are not allowed in a bundle")
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel == MANIFEST_NAME or is_ignored(rel) or name.startswith(f".{MANIFEST_NAME}."):
                continue
            if path.is_symlink() or not path.is_file():
                raise BundleError(path, "only regular files are allowed in a bundle")
            why = check_relpath(rel)
            if why:
                raise BundleError(path, why)
            out.append(rel)
    if not out:
        raise BundleError(root, "bundle is empty")
    return sorted(out)


def finalize_bundle(bundle_dir: str | os.PathLike[str], meta: dict[str, Any]) -> dict[str, Any]:
    """Hash every file of ``bundle_dir`` and write its ``manifest.json``; return the manifest.

    ``meta`` (target, precision, versions, ...) is stored beside the file list and is part of the
    bundle hash; it may not use the reserved keys ``format``, ``files`` or ``bundle_hash``.
    """
    clash = sorted(set(meta) & {"format", "files", "bundle_hash"})
    if clash:
        raise ValueError(f"meta may not set reserved manifest keys: {', '.join(clash)}")
    root = Path(bundle_dir)
    files = {rel: sha256_file(root / rel) for rel in bundle_files(root)}
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "files": files,
        "bundle_hash": compute_bundle_hash(files, meta),
        **meta,
    }
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    atomic_write_bytes(root / MANIFEST_NAME, data)
    return manifest


def pack_bundle(
    bundle_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None
) -> Path:
    """Write a reproducible ``<bundle_dir>.tar.gz`` (or ``out``) of a finalized bundle.

    Members are the manifest plus the listed files, sorted, under a top directory named after
    the bundle hash, with zeroed owners and times, so equal bundles give byte-equal archives.
    The bundle is verified first: packing a stale directory would ship files nobody checked.
    """
    root = Path(bundle_dir)
    manifest = verify_bundle(root)
    top = manifest["bundle_hash"]
    target = Path(out) if out is not None else root.with_name(root.name + ".tar.gz")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for rel in [MANIFEST_NAME, *sorted(manifest["files"])]:
                info = tar.gettarinfo(str(root / rel), arcname=f"{top}/{rel}")
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                info.mode = 0o755 if info.mode & 0o111 else 0o644
                with open(root / rel, "rb") as fh:
                    tar.addfile(info, fh)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
