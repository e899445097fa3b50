"""Files that are never seen half-written, and their hashes: the one implementation.

Every artifact the engine keeps (manifests, checkpoints, result.json, bundle manifests) goes
through `atomic_write_bytes`: a temp file in the same directory, fsync, ``os.replace``, then an
fsync of the directory so the rename itself survives a power cut. Readers see the old file or
the new one, never a mix. (engine/runtime keeps its own small copy of `sha256_file`: it is
shipped to devices alone.) Files that come from outside (recipes, profiles, label files) are read
through `read_bounded`, which never reads more than its limit plus one byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any


class InputTooLarge(Exception):
    """A file holds more than the reader's limit; nothing past ``limit + 1`` bytes was read.

    ``size`` is the size ``fstat`` reported for a regular file, None for a stream (a pipe,
    ``/dev/zero``) whose end was never reached.
    """

    def __init__(self, path: str | os.PathLike[str], limit: int, size: int | None):
        self.path, self.limit, self.size = str(path), limit, size
        super().__init__(f"{path}: {describe_excess(limit, size)}")


class NotRegularFile(OSError):
    """A reader that only takes regular files was handed a FIFO, a device or a socket."""


def human_bytes(n: int) -> str:
    """``1048576`` -> ``1 MiB``; ``1536`` -> ``1.5 KiB``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n} bytes"


def describe_excess(limit: int, size: int | None) -> str:
    """``larger than the limit of 1 MiB (20 MiB)``, or ``(a stream that did not end ...)``."""
    if size is None:
        got = f"a stream, stopped reading at {human_bytes(limit)} + 1 byte"
    else:  # exact bytes where rounding would make the two look equal
        got = human_bytes(size) if human_bytes(size) != human_bytes(limit) else f"{size:,} bytes"
    return f"larger than the limit of {human_bytes(limit)} ({got})"


def read_bounded(path: str | os.PathLike[str], limit: int, *, regular_only: bool = False) -> bytes:
    """The bytes of ``path``, or `InputTooLarge` when it holds more than ``limit``.

    A regular file larger than ``limit`` is refused from its ``fstat`` size without reading it;
    anything else (a pipe, ``/dev/zero``) is read up to ``limit + 1`` bytes and refused there, so
    an endless stream costs ``limit`` bytes of memory and no time. The open does not block on a
    FIFO without a writer. ``regular_only`` refuses FIFOs, devices and sockets outright
    (`NotRegularFile`): label files never are one. Other problems raise OSError.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        regular = stat.S_ISREG(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "is a directory", str(path))
        if regular_only and not regular:
            raise NotRegularFile(f"{path}: not a regular file (a FIFO, device or socket)")
        if regular and st.st_size > limit:
            raise InputTooLarge(path, limit, st.st_size)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # O_NONBLOCK was for the open; reads of a pipe may wait
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            block = os.read(fd, min(left, 1 << 20))
            if not block:
                break
            chunks.append(block)
            left -= len(block)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise InputTooLarge(path, limit, len(data) if regular else None)
    return data


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def fsync_dir(directory: Path | str) -> None:
    """Make a completed rename durable; not possible on every platform, never fatal."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; match what open() would create
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def replace_dir(tmp: Path | str, out: Path | str) -> None:
    """Swap a fully written directory ``tmp`` into ``out`` (same filesystem) by renames.

    ``out`` is always either the complete old directory or the complete new one: the old one is
    first renamed aside (``.<name>.old-*``), restored if the second rename fails, then removed.
    """
    tmp, out = Path(tmp), Path(out)
    old: Path | None = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        old.rmdir()
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
