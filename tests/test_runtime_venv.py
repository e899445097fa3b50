"""A bundle runs where only its requirements.txt is installed: a plain venv WITHOUT torch.

The venv is created with ``python -m venv`` (no --system-site-packages: the host's torch and the
editable ``engine`` must be invisible) and filled from PyPI with the bundle's requirements.txt.
It is cached under ``~/.cache/ocr-recipe/venvs/<hash of requirements + python>`` (or
``$OCR_RECIPE_VENV_CACHE``) and only renamed into place once pip succeeded, so an interrupted
install is never reused.  The test is skipped, with pip's reason, only when the package index
cannot be reached (pip's output shows a network error, or ``pip index versions pip`` fails); a
requirement the index does not have (a bad pin in the bundle's requirements.txt) is a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_bundle import export_small_models, small_bundle

from engine.runtime.bundle_manifest import verify_bundle
from engine.runtime.pipeline import OCRPipeline

# What pip prints when it could not talk to the index. "No matching distribution" is not one:
# pip prints it for a pin the index does not have too, and that must fail the test.
_NETWORK_ERRORS = ("NewConnectionError", "Max retries", "Temporary failure in name resolution",
                   "Network is unreachable", "ConnectTimeout", "ReadTimeout", "ProxyError",
                   "SSLError", "Connection refused")


def _cache_root() -> Path:
    env = os.environ.get("OCR_RECIPE_VENV_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ocr-recipe" / "venvs"


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def index_reachable(python: Path) -> bool:
    """True when pip, configured as for the install, can list a package from its index."""
    probe = subprocess.run([str(python), "-m", "pip", "index", "versions", "pip", "--timeout", "30"],
                           env=_clean_env(), capture_output=True, text=True, timeout=120, check=False)
    return probe.returncode == 0 and "pip (" in probe.stdout


def runtime_venv(requirements: Path) -> Path:
    """The python of a cached venv holding exactly ``requirements`` (created on first use)."""
    key = hashlib.sha256(
        requirements.read_bytes() + f"{platform.python_version()} {sys.platform}".encode()
    ).hexdigest()[:16]
    final = _cache_root() / key
    python = final / "bin" / "python"
    if python.exists():
        return python
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=final.parent))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, env=_clean_env(),
                       capture_output=True, timeout=120)
        pip = subprocess.run(
            [str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", "--timeout", "30",
             "-r", str(requirements)],
            env=_clean_env(), capture_output=True, text=True, timeout=600, check=False,
        )
        if pip.returncode != 0:
            output = pip.stderr + pip.stdout
            if any(e in output for e in _NETWORK_ERRORS) or not index_reachable(tmp / "bin" / "python"):
                pytest.skip(f"pip cannot reach the package index to install the bundle "
                            f"requirements: {pip.stderr.strip().splitlines()[-1:]}")
            raise AssertionError(f"pip install -r {requirements} failed with the package index "
                                 f"reachable (a bad pin?):\n{pip.stderr}")
        # the venv's scripts hard-code its path: it is run via bin/python only, which is
        # location-independent, so renaming the finished directory is safe
        try:
            os.replace(tmp, final)
        except OSError:  # another run won the race; use its venv
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return python


def test_a_requirement_the_index_lacks_fails_instead_of_skipping(tmp_path):
    """What a bad pin in a bundle's requirements.txt does: a failure, not a skipped test."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy==0.0.1\n")  # numpy never had this version
    with pytest.raises(AssertionError, match=r"No matching distribution found for numpy==0\.0\.1"):
        runtime_venv(requirements)


def test_bundle_checks_in_a_venv_without_torch(tmp_path):
    bundle = small_bundle(tmp_path / "bundle", {"fp32": export_small_models(tmp_path / "m")})
    python = runtime_venv(bundle / "requirements.txt")
    env = _clean_env()
    # the venv has the runtime's dependencies and nothing of the build host
    probe = subprocess.run(
        [str(python), "-c", "import numpy, onnxruntime, cv2, pyclipper; import torch"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr, probe.stderr
    probe = subprocess.run([str(python), "-c", "import engine"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=False)
    assert "No module named 'engine'" in probe.stderr
    run = subprocess.run(
        [str(python), "-m", "runtime.check", "--limit", "2", "--runs", "2"],
        cwd=bundle, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert run.returncode == 0, run.stderr + run.stdout
    res = json.loads(run.stdout)  # exactly one JSON object on stdout
    assert res["bundle_hash"] == verify_bundle(bundle)["bundle_hash"]
    assert [p["image"] for p in res["predictions"]] == ["plate_4.jpg", "plate_1.jpg"]
    assert res["latency_ms"]["runs"] == 4 and res["latency_ms"]["p50"] > 0
    assert res["peak_rss_mb"] > 10 and res["backend"] == "onnxruntime:CPUExecutionProvider"
    # same bundle on the host (same models, same runtime code): same boxes and texts
    host = OCRPipeline(bundle)
    for pred in res["predictions"]:
        expected = host.predict_path(bundle / "val" / "images" / pred["image"])
        assert [ln["text"] for ln in pred["lines"]] == [ln["text"] for ln in expected]
    # a tampered bundle is refused inside the venv too, as one JSON error object
    (bundle / "runtime" / "preprocess.py").write_text("raise SystemExit('tampered')\n")
    run = subprocess.run([str(python), "-m", "runtime.check", "--limit", "1"], cwd=bundle,
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 1, run.stderr
    err = json.loads(run.stdout)
    assert "runtime/preprocess.py" in err["error"] and "sha256 mismatch" in err["error"]
