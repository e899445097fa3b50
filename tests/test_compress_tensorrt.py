"""TensorRT build plans: version-dependent trtexec flags, the device script, local-build guard."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from engine.compress.tensorrt import (
    TensorRTPlanError,
    maybe_build_locally,
    tensorrt_build_plan,
    trtexec_argv,
    write_build_script,
)

SHAPES = {"min": (1, 3, 64, 64), "opt": (1, 3, 640, 640), "max": (1, 3, 1280, 1280)}


def _plan(version: str, **kw):
    return tensorrt_build_plan("models/detector.onnx", "input", SHAPES, trt_version=version, **kw)


def test_trtexec_argv_trt_8_2_uses_workspace():
    argv = _plan("8.2.1")["argv"]
    assert argv == [
        "/usr/src/tensorrt/bin/trtexec",
        "--onnx=models/detector.onnx",
        "--saveEngine=models/detector.engine",
        "--fp16",
        "--minShapes=input:1x3x64x64",
        "--optShapes=input:1x3x640x640",
        "--maxShapes=input:1x3x1280x1280",
        "--workspace=1024",
        "--timingCacheFile=timing.cache",
    ]


def test_trtexec_argv_trt_10_3_uses_mem_pool_size():
    plan = _plan("10.3.0", workspace_mb=2048, fp16=True, timing_cache="cache/t.cache")
    argv = plan["argv"]
    assert "--memPoolSize=workspace:2048M" in argv
    assert not any(a.startswith("--workspace") for a in argv)
    assert "--timingCacheFile=cache/t.cache" in argv and "--fp16" in argv
    pb = plan["python_builder"]
    assert pb["network_flags"] == [] and pb["workspace_api"] == "set_memory_pool_limit"
    assert pb["workspace_bytes"] == 2048 * 1024 * 1024
    assert pb["profile"]["input"]["opt"] == [1, 3, 640, 640]
    assert _plan("8.2.1")["python_builder"]["network_flags"] == ["EXPLICIT_BATCH"]
    assert _plan("8.2.1")["python_builder"]["workspace_api"] == "max_workspace_size"


def test_version_boundaries_and_fp32():
    assert "--memPoolSize=workspace:1024" in _plan("8.4.1")["argv"]
    assert "--memPoolSize=workspace:1024M" in _plan("8.6.2")["argv"]
    argv = trtexec_argv("m.onnx", "m.engine", "x", SHAPES, "8.5.2", fp16=False, timing_cache=None)
    assert "--fp16" not in argv and not any("timingCache" in a for a in argv)


@pytest.mark.parametrize(
    "shapes, version",
    [
        ({"min": (1, 3, 64, 64), "opt": (1, 3, 32, 32), "max": (1, 3, 640, 640)}, "8.6.2"),
        ({"min": (1, 3, 64), "opt": (1, 3, 64), "max": (1, 3, 64)}, "8.6.2"),
        ({"min": (1, 3, 64, 64), "max": (1, 3, 64, 64)}, "8.6.2"),
        (SHAPES, "eight"),
        (SHAPES, "5.1"),
    ],
)
def test_bad_shapes_and_versions(shapes, version):
    with pytest.raises(TensorRTPlanError):
        tensorrt_build_plan("d.onnx", "input", shapes, trt_version=version)


def test_build_script_is_valid_shell_and_atomic(tmp_path):
    plan = _plan("8.2.1")
    script = write_build_script(plan, tmp_path)
    assert script.stat().st_mode & 0o111
    text = script.read_text()
    assert "--saveEngine=models/detector.engine.tmp" in text
    assert "mv -f models/detector.engine.tmp models/detector.engine" in text
    assert "--workspace=1024" in text
    sh = shutil.which("sh")
    if sh:
        assert subprocess.run([sh, "-n", str(script)], check=False).returncode == 0
        # without trtexec the script stops with a clear message and exit code 2
        env = {"PATH": "/nonexistent"}
        res = subprocess.run([sh, str(script)], env=env, capture_output=True, text=True,
                             check=False)
        assert res.returncode == 2 and "trtexec not found" in res.stderr


def test_maybe_build_locally_without_tensorrt():
    try:  # tensorrt is not installed on the build host; on a machine with it, 7.0 mismatches
        import tensorrt  # noqa: F401
    except ImportError:
        result = maybe_build_locally(_plan("8.2.1"))
        assert result["built"] is False and "not importable" in result["reason"]
    else:  # pragma: no cover - only on a machine with TensorRT
        result = maybe_build_locally(_plan("7.0"))
        assert result["built"] is False
