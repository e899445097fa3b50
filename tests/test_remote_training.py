"""Remote GPU training (``train.host``) against a real OpenSSH server on 127.0.0.1.

Nothing is mocked: the "GPU host" is this machine reached through ``/usr/sbin/sshd``
(tests/sshd.py), its Python is this interpreter with the project on PYTHONPATH, and the worker
really trains (CPU, tiny sizes). The kill drill SIGKILLs the real remote worker process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.graph import Pipeline
from engine.recipe import load_recipe
from engine.training.checkpoint import CheckpointManager, load_checkpoint, verify_checkpoint
from engine.training.remote import job_root

pytest_plugins = ["sshd"]

REPO = Path(__file__).resolve().parents[1]
# sshd passes no environment: the remote command sets PYTHONPATH itself, as a user would for an
# uninstalled checkout (`python: "env PYTHONPATH=~/src/ocr python3"`).
PYTHON = f"env PYTHONPATH={REPO} OMP_NUM_THREADS=1 {sys.executable}"

RECIPE = """\
name: remote-tiny
dataset:
  synthetic: {{count: 4, val_count: 2, seed: 11, image_size: [320, 240]}}
models:
  detector: {{arch: dbnet, input_size: 320, train_size: 128, init: null}}
  recognizer: {{arch: crnn, sequence: conv, max_width: 96, init: base}}
train:
  epochs: {epochs}
  detector: {{batch_size: 4}}
  recognizer: {{batch_size: 16}}
{host}
verify: {{samples: 2}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from sshd import SSHServer, _require_sshd

    _require_sshd()
    s = SSHServer(tmp_path_factory.mktemp("gpu-box"), "gpu-box").start()
    yield s
    s.stop()


def write_recipe(tmp: Path, server: Any | None, epochs: int = 1, **train: Any) -> Path:
    host = ""
    if server is not None:
        fields = {
            "host": server.alias, "remote_dir": str(server.dir / "train"), "python": PYTHON,
            "ssh_config": str(server.ssh_config), "known_hosts": str(server.known_hosts),
            **train,
        }
        host = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in fields.items()).rstrip("\n")
    path = tmp / "recipe.yaml"
    path.write_text(RECIPE.format(epochs=epochs, host=host))
    return path


def pipeline(recipe: Path, workdir: Path, *overrides: str) -> Pipeline:
    return Pipeline(load_recipe(recipe, [f"workdir={workdir}", *overrides]))


def train_both(tmp_path: Path, server: Any, model: str) -> tuple[Path, Path]:
    """Train ``model`` on the host, then here from the same recipe and data (``host: null``);
    returns the stage dir (holding the local run now) and the remote run's copy."""
    stage = f"train:{model}"
    recipe = write_recipe(tmp_path, server)
    report = pipeline(recipe, tmp_path / "runs").run(only=[stage])
    assert report.ok, report.failed
    out = tmp_path / "runs" / "remote-tiny" / "train" / model
    log = (tmp_path / "runs" / "remote-tiny" / "logs" / f"train_{model}.log").read_text()
    assert "gpu-box| " in log and "epochs on cpu" in log  # the remote lines, streamed
    there = tmp_path / "remote-copy"
    shutil.copytree(out, there)
    local = pipeline(recipe, tmp_path / "runs", "train.host=null")
    assert local.run(only=[stage]).ok
    here = out
    for name in ("checkpoints/best.pt", "checkpoints/last.pt", "metrics.csv", "curves.png",
                 "train.log"):
        assert (there / name).is_file(), name
    verify_checkpoint(there / "checkpoints" / "best.pt")
    a = load_checkpoint(here / "checkpoints" / "last.pt")
    b = load_checkpoint(there / "checkpoints" / "last.pt")
    assert set(a) == set(b) and a["meta"] == b["meta"] and a["epoch"] == b["epoch"] == 1
    assert set(a["model"]) == set(b["model"]) and a["step"] == b["step"]
    for key, tensor in a["model"].items():  # same code, data and seed: the same weights
        assert torch.allclose(tensor.float(), b["model"][key].float(), atol=1e-5), key
    ra = json.loads((here / "result.json").read_text())
    rb = json.loads((there / "result.json").read_text())
    assert set(ra["metrics"]) == set(rb["metrics"]) and set(ra["artifacts"]) == set(rb["artifacts"])
    assert ra["metrics"]["epochs"] == rb["metrics"]["epochs"] == 1
    assert list(ra["outputs"]) == list(rb["outputs"])
    info = json.loads((there / "remote.json").read_text())
    assert "job.json" in info["uploaded"] and info["fetched"][:2] == ["best.pt", "last.pt"]
    return there, recipe


def test_remote_recognizer_matches_local_and_resyncs_only_changes(
    server: Any, tmp_path: Path
) -> None:
    there, recipe = train_both(tmp_path, server, "recognizer")
    job = json.loads((there / "remote" / "job.json").read_text())
    root = json.loads((there / "remote.json").read_text())["job_dir"]
    assert job["kwargs"]["crops_root"] == root + "/data/crops"
    assert job["config"]["init"] == root + "/init/recognizer_crnn_conv_h32.pt"
    assert job["config"]["run_dir"] == root + "/run"
    first = json.loads((there / "remote.json").read_text())
    assert "init/recognizer_crnn_conv_h32.pt" in first["uploaded"]
    # a changed training setting: a fresh run on the host, and only the job spec is sent
    changed = pipeline(recipe, tmp_path / "runs", "train.recognizer.lr=0.001")
    report = changed.run(only=["train:recognizer"])
    assert report.ok and report.executed == ["train:recognizer"]
    out = changed.run_dir / "train" / "recognizer"
    info = json.loads((out / "remote.json").read_text())
    assert info["uploaded"] == ["job.json"] and info["unchanged"] == len(first["uploaded"]) - 1
    assert info["resumed"] is False and info["job_dir"] == root
    assert json.loads((out / "remote" / "job.json").read_text())["config"]["lr"] == 0.001


@pytest.mark.slow
def test_remote_detector_matches_local(server: Any, tmp_path: Path) -> None:
    """The detector ships a manifest whose image paths are rewritten to the host's copies."""
    there, _ = train_both(tmp_path, server, "detector")
    root = json.loads((there / "remote.json").read_text())["job_dir"]
    job = json.loads((there / "remote" / "job.json").read_text())
    assert job["kwargs"]["manifest"] == root + "/data/manifest.jsonl"
    shipped = [json.loads(x) for x in (there / "remote" / "manifest.jsonl").read_text().splitlines()]
    assert len(shipped) == 6
    for rec in shipped:
        assert rec["image"].startswith(root + "/data/images/")
        assert Path(rec["image"]).is_file()  # the host is this machine: the copy is there


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize(
    "victim", ["worker", pytest.param("connection", marks=pytest.mark.slow)]
)
def test_interrupted_remote_training_resumes(server: Any, tmp_path: Path, victim: str) -> None:
    """SIGKILL the remote worker (or its SSH session) after the first checkpoint; the rerun
    continues from the host's checkpoint with the same epoch count instead of restarting."""
    epochs = 4
    recipe = write_recipe(tmp_path, server, epochs=epochs)
    first = pipeline(recipe, tmp_path / "runs")
    assert first.run(only=["data"]).ok
    box: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: box.setdefault("report", first.run(only=["train:recognizer"]))
    )
    thread.start()
    job = Path(job_root(str(server.dir / "train"), first.run_dir, "recognizer"))
    deadline = time.monotonic() + 300  # a loaded CI machine is slow to start torch
    while not (job / "run/checkpoints/last.pt.sha256").exists():
        assert time.monotonic() < deadline, "no checkpoint appeared on the host"
        time.sleep(0.02)
    pid = int((job / "worker.pid").read_text())
    if victim == "worker":
        os.kill(pid, signal.SIGKILL)
    else:  # the sshd process serving the session: the link drops, the worker must stop itself
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert "sshd" in Path(f"/proc/{ppid}/cmdline").read_text()
        os.kill(ppid, signal.SIGKILL)
    thread.join(timeout=120)
    stop = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < stop:
        time.sleep(0.1)
    assert not _alive(pid), "the remote worker outlived its SSH session"
    report = box["report"]
    assert "was killed or the connection was lost" in report.failed["train:recognizer"]
    kept, _ = CheckpointManager(job / "run" / "checkpoints").find_resume()
    assert kept is not None and 1 <= kept["epoch"] < epochs, "kill came too late; train longer"

    second = pipeline(recipe, tmp_path / "runs").run(only=["train:recognizer"])
    assert second.ok, second.failed
    out = tmp_path / "runs" / "remote-tiny" / "train" / "recognizer"
    info = json.loads((out / "remote.json").read_text())
    assert info["resumed"] is True
    assert "resumed at epoch" in (out / "train.log").read_text()
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == epochs
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, epochs + 1))
    result = json.loads((out / "result.json").read_text())
    assert result["metrics"]["epochs"] == epochs


def test_unknown_host_key_is_refused(server: Any, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    recipe = write_recipe(tmp_path, server, known_hosts=str(empty))
    p = pipeline(recipe, tmp_path / "runs")
    # ~/.ssh/known_hosts is also read; make sure this random port's key is in none of them
    report = p.run(only=["train:recognizer"])
    msg = report.failed["train:recognizer"]
    assert "gpu-box" in msg and "host key" in msg and "unknown" in msg
    job = Path(job_root(str(server.dir / "train"), p.run_dir, "recognizer"))
    assert not job.exists()  # refused before anything was sent


def test_host_without_the_project(server: Any, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, server, python=f"env PYTHONPATH= {sys.executable} -I -S")  # no site-packages
    report = pipeline(recipe, tmp_path / "runs").run(only=["train:recognizer"])
    msg = report.failed["train:recognizer"]
    assert msg.startswith("gpu-box: ") and "import engine, torch" in msg
    assert "No module named 'engine'" in msg


@pytest.mark.slow
def test_two_processes_on_the_host(server: Any, tmp_path: Path) -> None:
    """``gpus: 2`` runs torchrun on the host (gloo on this CPU); rank 0's log is streamed."""
    recipe = write_recipe(tmp_path, server, gpus=2)
    p = pipeline(recipe, tmp_path / "runs")
    report = p.run(only=["train:recognizer"])
    assert report.ok, report.failed
    out = p.run_dir / "train" / "recognizer"
    assert "x2 processes" in (out / "train.log").read_text()
    assert (out / "torchrun.log").is_file()
    assert load_checkpoint(out / "checkpoints" / "last.pt")["world_size"] == 2
    log = (p.run_dir / "logs" / "train_recognizer.log").read_text()
    assert "gpu-box| " in log and "x2 processes" in log
