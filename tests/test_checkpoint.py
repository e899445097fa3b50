"""Checkpoints: atomic writes, sha256 sidecars, refusal of damaged files, weights-only loading."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from engine.training.checkpoint import (
    CheckpointError,
    CheckpointManager,
    init_from_checkpoint,
    load_checkpoint,
    save_checkpoint,
    sidecar_path,
)
from engine.training.seed import capture_rng_state, restore_rng_state


class Evil:
    """Any object outside torch's weights-only allow-list must never be unpickled."""


def _payload() -> dict:
    return {
        "format": "ocr-engine-checkpoint/1",
        "epoch": 3,
        "step": 30,
        "model": nn.Linear(4, 2).state_dict(),
        "rng": capture_rng_state(),
        "meta": {"a": [1, 2]},
    }


def test_roundtrip_and_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    digest = save_checkpoint(path, _payload())
    assert sidecar_path(path).read_text() == f"{digest}  last.pt\n"
    obj = load_checkpoint(path)
    assert obj["epoch"] == 3 and obj["meta"] == {"a": [1, 2]}
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


@pytest.mark.parametrize("damage", ["truncate", "flip", "sidecar", "no_sidecar"])
def test_damaged_checkpoints_are_refused(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "best.pt"
    save_checkpoint(path, _payload())
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    elif damage == "sidecar":
        sidecar_path(path).write_text("0" * 64 + "  best.pt\n")
    else:
        sidecar_path(path).unlink()
    with pytest.raises(CheckpointError, match=r"best\.pt"):
        load_checkpoint(path)


def test_missing_file_and_unsafe_pickle_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    buf = io.BytesIO()
    torch.save({"x": Evil()}, buf)
    path = tmp_path / "evil.pt"
    path.write_bytes(buf.getvalue())
    import hashlib

    sidecar_path(path).write_text(hashlib.sha256(buf.getvalue()).hexdigest() + "  evil.pt\n")
    with pytest.raises(CheckpointError, match=r"evil\.pt"):
        load_checkpoint(path)


def test_rng_state_roundtrip_through_a_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's legacy state
    save_checkpoint(tmp_path / "c.pt", {"rng": capture_rng_state()})
    expected = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2:] == got[2:]


class Net(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, classes)


def test_init_skips_shape_mismatches_and_reports(tmp_path: Path) -> None:
    src = Net(10)
    src.extra = nn.Linear(1, 1)
    save_checkpoint(tmp_path / "src.pt", {"model": src.state_dict()})
    dst = Net(37)  # a different charset size in the classifier
    before = dst.head.weight.clone()
    report = init_from_checkpoint(dst, tmp_path / "src.pt")
    assert torch.equal(dst.body.weight, src.body.weight)
    assert torch.equal(dst.head.weight, before)
    assert sorted(k for k, _, _ in report.mismatched) == ["head.bias", "head.weight"]
    assert sorted(report.unexpected) == ["extra.bias", "extra.weight"]
    assert report.loaded == ["body.bias", "body.weight"]
    assert "shape mismatch" in report.summary()
    # A foreign file without sidecar (e.g. a raw state_dict with 'module.' prefixes) is accepted.
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, tmp_path / "raw.pt")
    report2 = init_from_checkpoint(Net(10), tmp_path / "raw.pt")
    assert len(report2.loaded) == 4 and not report2.missing


def test_manager_last_best_periodic(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path / "ck", every=2, mode="min")
    assert mgr.is_better(1.0, None) and mgr.is_better(0.5, 1.0) and not mgr.is_better(2.0, 1.0)
    assert not mgr.is_better(float("nan"), 1.0)
    for epoch in (1, 2, 3):
        mgr.save({"format": "ocr-engine-checkpoint/1", "epoch": epoch}, epoch, is_best=epoch == 1)
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == [
        "best.pt",
        "best.pt.sha256",
        "epoch_0002.pt",
        "epoch_0002.pt.sha256",
        "last.pt",
        "last.pt.sha256",
    ]
    assert load_checkpoint(mgr.best)["epoch"] == 1
    obj, problems = mgr.find_resume()
    assert obj is not None and obj["epoch"] == 3 and not problems
    mgr.last.write_bytes(b"garbage")
    obj, problems = mgr.find_resume()
    assert obj is not None and obj["epoch"] == 2 and "last.pt" in problems[0]
    with pytest.raises(ValueError):
        CheckpointManager(tmp_path / "x", mode="up")
