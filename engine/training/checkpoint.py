"""Checkpoints that are written atomically, verified before loading, and safe to unpickle.

A training run on a small device-class machine or a rented GPU gets killed: out of memory, a
preempted instance, a Ctrl-C. The file on disk must then be either the previous complete
checkpoint or the new complete one, never half of one, and a damaged file must be refused
rather than silently loaded. Hence:

* the payload is serialised in memory, hashed, written to a temp file in the same directory,
  fsynced and ``os.replace``d over the target; then a ``<file>.sha256`` sidecar (``sha256sum``
  format) is written the same way. A kill between the two leaves a mismatch, which loading
  reports, and resume falls back to the newest checkpoint that does verify;
* loading hashes the bytes first and compares with the sidecar, and only then unpickles with
  ``torch.load(weights_only=True)`` — a checkpoint can never run code. So payloads contain only
  tensors, numbers, strings, lists, tuples and dicts (see `engine.training.seed` for RNG states).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..fsutil import atomic_write_bytes

FORMAT = "ocr-engine-checkpoint/1"
SIDECAR_SUFFIX = ".sha256"
LAST = "last.pt"
BEST = "best.pt"
_PERIODIC = re.compile(r"^epoch_(\d+)\.pt$")


class CheckpointError(Exception):
    """A checkpoint is missing, corrupt, truncated, or does not match its sha256 sidecar."""


def sidecar_path(path: Path | str) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def save_checkpoint(path: Path | str, payload: dict[str, Any]) -> str:
    """Serialise ``payload`` atomically, then its sidecar; returns the sha256 hex digest."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(path, data)
    atomic_write_bytes(sidecar_path(path), f"{digest}  {path.name}\n".encode())
    return digest


def verify_checkpoint(path: Path | str) -> bytes:
    """Return the checkpoint's bytes once they match the sidecar; raise CheckpointError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    side = sidecar_path(path)
    if not side.is_file():
        raise CheckpointError(
            f"{path}: no {side.name} sidecar, so its integrity cannot be checked "
            "(the write was interrupted, or the file was not written by this engine)"
        )
    try:
        expected = side.read_text(encoding="utf-8").split()[0].strip().lower()
    except (OSError, UnicodeDecodeError, IndexError) as exc:
        raise CheckpointError(f"{path}: unreadable sidecar {side.name}: {exc}") from None
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise CheckpointError(
            f"{path}: sha256 {actual[:16]}… does not match {side.name} ({expected[:16]}…); "
            f"the file is corrupt or truncated ({len(data)} bytes) — refusing to load it"
        )
    return data


def load_checkpoint(path: Path | str, *, verify: bool = True) -> dict[str, Any]:
    """Load a checkpoint (CPU tensors) after verifying it; never unpickles arbitrary objects.

    ``verify=False`` is only for foreign weight files without a sidecar (fine-tuning ``init``
    from elsewhere); they are still loaded with ``weights_only=True``.
    """
    path = Path(path)
    if verify:
        data = verify_checkpoint(path)
    else:
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint not found")
        data = path.read_bytes()
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged or unsafe files
        raise CheckpointError(f"{path}: cannot be loaded safely: {exc}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DistributedDataParallel / DataParallel wrappers."""
    return getattr(model, "module", model)


# ---------------------------------------------------------------------------------------------
# Fine-tuning init


@dataclass
class InitReport:
    """What `init_from_checkpoint` did, so the log says exactly which weights were reused."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"init from {self.path}: {len(self.loaded)} tensors loaded"]
        if self.mismatched:
            lines.append(
                "  skipped (shape mismatch): "
                + ", ".join(f"{k} {list(a)}->{list(b)}" for k, a, b in self.mismatched)
            )
        if self.missing:
            lines.append("  missing (kept fresh): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append("  unexpected (ignored): " + ", ".join(self.unexpected))
        return "\n".join(lines)


def _model_state(obj: dict[str, Any]) -> dict[str, torch.Tensor]:
    state = obj.get("model", obj) if isinstance(obj.get("model"), dict) else obj
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    out = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            out[k[len("module.") :] if k.startswith("module.") else k] = v
    return out


def init_from_checkpoint(model: nn.Module, path: Path | str) -> InitReport:
    """Load model weights for fine-tuning: optimizer, schedule and counters start fresh.

    Non-strict: tensors whose shape differs (a classifier for another charset size) are skipped
    and reported rather than failing the run. A sidecar, when present, must match.
    """
    path = Path(path)
    obj = load_checkpoint(path, verify=sidecar_path(path).is_file())
    source = _model_state(obj)
    target = unwrap(model).state_dict()
    report = InitReport(path=str(path))
    usable: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if key not in target:
            report.unexpected.append(key)
        elif tuple(target[key].shape) != tuple(value.shape):
            report.mismatched.append((key, tuple(value.shape), tuple(target[key].shape)))
        else:
            usable[key] = value
    skipped = {k for k, _, _ in report.mismatched}
    report.missing = [k for k in target if k not in usable and k not in skipped]
    unwrap(model).load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    return report


# ---------------------------------------------------------------------------------------------
# Run directory bookkeeping


class CheckpointManager:
    """Keeps ``last.pt``, ``best.pt`` and ``epoch_NNNN.pt`` in one directory.

    ``mode`` is "max" (higher metric is better, the default) or "min".
    """

    def __init__(
        self, directory: Path | str, every: int = 0, mode: str = "max", *, writer: bool = True
    ):
        if mode not in ("max", "min"):
            raise ValueError(f"checkpoint mode must be 'max' or 'min', got {mode!r}")
        self.directory = Path(directory)
        self.every = int(every)
        self.mode = mode
        if writer:  # only the writing process (DDP rank 0) may touch the directory
            self.directory.mkdir(parents=True, exist_ok=True)
            self._clean_temp_files()

    def _clean_temp_files(self) -> None:
        # Leftovers of a write interrupted by a kill: never a valid checkpoint, safe to drop.
        for p in self.directory.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()

    @property
    def last(self) -> Path:
        return self.directory / LAST

    @property
    def best(self) -> Path:
        return self.directory / BEST

    def periodic(self, epoch: int) -> Path:
        return self.directory / f"epoch_{epoch:04d}.pt"

    def is_better(self, value: float | None, best: float | None) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if best is None:
            return True
        return value > best if self.mode == "max" else value < best

    def save(
        self, payload: dict[str, Any], epoch: int, *, is_best: bool, final: bool = False
    ) -> list[Path]:
        """Write best (when ``is_best``), the periodic file when due, and last (always).

        ``last.pt`` goes last: it is what resume trusts, so once it names epoch k every other
        file of epoch k is already complete. A kill before it makes the resume redo epoch k,
        which rewrites the same best/periodic files.
        """
        written = []
        if is_best:
            save_checkpoint(self.best, payload)
            written.append(self.best)
        if self.every > 0 and (epoch % self.every == 0):
            save_checkpoint(self.periodic(epoch), payload)
            written.append(self.periodic(epoch))
        save_checkpoint(self.last, payload)
        written.append(self.last)
        return written

    def candidates(self) -> list[Path]:
        """Files a resume may use, newest epoch first is decided by `find_resume`."""
        files = [self.last]
        periodic = self.directory.iterdir() if self.directory.is_dir() else iter(())
        files += sorted(
            (p for p in periodic if _PERIODIC.match(p.name)),
            key=lambda p: int(_PERIODIC.match(p.name).group(1)),  # type: ignore[union-attr]
            reverse=True,
        )
        files.append(self.best)
        return [p for p in files if p.exists()]

    def find_resume(self) -> tuple[dict[str, Any] | None, list[str]]:
        """The verified checkpoint with the highest epoch, plus messages about refused files.

        A kill between writing ``last.pt`` and its sidecar makes ``last.pt`` fail verification;
        the previous epoch's periodic or best file is then the place to continue from.
        """
        problems: list[str] = []
        best_obj: dict[str, Any] | None = None
        for path in self.candidates():
            try:
                obj = load_checkpoint(path)
            except CheckpointError as exc:
                problems.append(str(exc))
                continue
            if obj.get("format") != FORMAT:
                problems.append(f"{path}: not a training checkpoint of this engine")
                continue
            if best_obj is None or int(obj["epoch"]) > int(best_obj["epoch"]):
                best_obj = obj
        return best_obj, problems
