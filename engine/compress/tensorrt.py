"""TensorRT build plans: the exact commands that build an fp16 engine ON the Jetson.

Why a plan and not an engine: a serialized TensorRT engine only runs on the GPU model and the
TensorRT version that built it (a Jetson Nano on JetPack 4.6 has TensorRT 8.2, an Orin on
JetPack 6 has 8.6 or 10.x).  The build host has no Jetson and usually no TensorRT at all, so
the Jetson bundle ships the ONNX model plus this plan; the device runs ``build_engine.sh`` once
after install (trtexec ships with JetPack at /usr/src/tensorrt/bin/trtexec) and the bundle
records the version the plan was made for.  :func:`maybe_build_locally` builds here only when
the ``tensorrt`` module is importable AND its version equals the profile's.

Version-dependent flags (chosen by :func:`trtexec_argv`):
- workspace: ``--workspace=N`` (MiB) before TensorRT 8.4, where ``--memPoolSize`` does not
  exist; ``--memPoolSize=workspace:N`` from 8.4 (MiB is the unit there) and
  ``workspace:NM`` from 8.6 on, where trtexec documents the K/M/G suffixes (``--workspace``
  was removed in 10.0, so the choice matters both ways);
- Python API: ``config.max_workspace_size`` before 8.4, ``set_memory_pool_limit`` after;
  the EXPLICIT_BATCH network flag before 10.0 (default and deprecated from 10.0).
Dynamic shapes: one optimization profile ``--minShapes/--optShapes/--maxShapes`` on the input.
The timing cache file is reused across rebuilds on the same device (``--timingCacheFile``),
which makes a re-ship with the same architecture build in seconds instead of minutes.
"""

from __future__ import annotations

import importlib
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import atomic_write_bytes

__all__ = [
    "TensorRTPlanError",
    "check_onnx_ops",
    "max_onnx_opset",
    "maybe_build_locally",
    "parse_version",
    "shape_arg",
    "tensorrt_build_plan",
    "trtexec_argv",
    "write_build_script",
]

DEFAULT_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"


class TensorRTPlanError(ValueError):
    """Bad shapes or an unparseable / unsupported TensorRT version."""


def parse_version(version: str) -> tuple[int, ...]:
    """"8.2.1.8" -> (8, 2, 1, 8); raises TensorRTPlanError on anything else."""
    m = re.fullmatch(r"\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:\.(\d+))?\s*", str(version))
    if not m:
        raise TensorRTPlanError(f"cannot parse TensorRT version {version!r} (expected e.g. 8.6.2)")
    parts = tuple(int(p) for p in m.groups() if p is not None)
    if parts[0] < 7:
        raise TensorRTPlanError(f"TensorRT {version} is too old (engine plans need >= 7)")
    return parts


# ONNX operators the TensorRT ONNX parser accepts, from onnx-tensorrt's docs/operators.md of each
# release branch ("TensorRT 8.2 supports operators up to Opset 13"; the 8.2 and 8.4 matrices list
# the same operators, 8.5 adds the opset 14-17 ones below). A Jetson Nano stays on JetPack 4.6,
# i.e. TensorRT 8.2: an ONNX model for it must be opset <= 13 and use only these (torch then
# writes HardSwish as HardSigmoid x Mul and LayerNorm as primitive ops). LayerNormalization is
# parsed from TensorRT 8.6 on.
_TRT82_OPS = frozenset(["Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Celu", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DepthToSpace", "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GRU", "HardSigmoid", "Identity", "If", "ImageScaler", "InstanceNormalization", "IsNaN", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LRN", "LSTM", "LpNormalization", "LpPool", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mul", "Neg", "Not", "Or", "Pad", "ParametricSoftplus", "Pow", "PRelu", "QuantizeLinear", "RandomUniform", "RandomUniformLike", "Range", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence", "RNN", "Round", "ScaledTanh", "Scan", "Scatter", "ScatterElements", "ScatterND", "Selu", "Shape", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile", "TopK", "Transpose", "Unsqueeze", "Upsample", "Where", "Xor"])
_TRT85_OPS = _TRT82_OPS | frozenset(["GridSample", "HardSwish", "MeanVarianceNormalization", "Mod", "NonMaxSuppression", "NonZero", "OneHot", "RandomNormal", "RandomNormalLike", "Reciprocal", "RoiAlign", "Shrink", "Trilu"])
_TRT86_OPS = _TRT85_OPS | {"LayerNormalization"}
#: (major, minor) from which -> (max ONNX opset, operators); the newest entry not above the
#: profile's version applies
TRT_ONNX_SUPPORT: dict[tuple[int, int], tuple[int, frozenset[str]]] = {
    (7, 0): (11, _TRT82_OPS),
    (8, 0): (13, _TRT82_OPS),
    (8, 5): (17, _TRT85_OPS),
    (8, 6): (17, _TRT86_OPS),
    (10, 0): (20, _TRT86_OPS | {"GroupNormalization"}),
}


def _support(trt_version: str) -> tuple[int, frozenset[str]]:
    version = parse_version(trt_version)[:2]
    key = max(k for k in TRT_ONNX_SUPPORT if k <= version)
    return TRT_ONNX_SUPPORT[key]


def max_onnx_opset(trt_version: str) -> int:
    """The newest ONNX opset this TensorRT version's parser accepts (8.2: 13)."""
    return _support(trt_version)[0]


def check_onnx_ops(model_path: str | Path, trt_version: str) -> list[str]:
    """Problems of an ONNX file for this TensorRT version: an opset above its maximum, or
    operators its parser lacks (empty when the file fits)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    max_opset, ops = _support(trt_version)
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset > max_opset:
        problems.append(f"opset {opset} > {max_opset}, the newest TensorRT {trt_version} parses")
    missing = sorted({n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")} - ops)
    if missing:
        problems.append(f"operators TensorRT {trt_version} does not parse: {', '.join(missing)}")
    return problems


def shape_arg(shape: Sequence[int]) -> str:
    """(1, 3, 640, 640) -> "1x3x640x640"."""
    return "x".join(str(int(d)) for d in shape)


def _check_shapes(shapes: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    missing = [k for k in ("min", "opt", "max") if k not in shapes]
    if missing:
        raise TensorRTPlanError(f"shapes needs min, opt and max (NCHW); missing {missing}")
    out = {k: [int(d) for d in shapes[k]] for k in ("min", "opt", "max")}
    ranks = {len(v) for v in out.values()}
    if ranks != {4}:
        raise TensorRTPlanError(f"shapes must be 4-D NCHW, got {out}")
    for i in range(4):
        lo, mid, hi = out["min"][i], out["opt"][i], out["max"][i]
        if not 0 < lo <= mid <= hi:
            raise TensorRTPlanError(f"need 0 < min <= opt <= max in every dim, got {out}")
    return out


def _workspace_flag(version: tuple[int, ...], workspace_mb: int) -> str:
    if version[:2] < (8, 4):
        return f"--workspace={workspace_mb}"
    if version[:2] < (8, 6):
        return f"--memPoolSize=workspace:{workspace_mb}"
    return f"--memPoolSize=workspace:{workspace_mb}M"


def trtexec_argv(
    onnx_path: str,
    engine_path: str,
    input_name: str,
    shapes: Mapping[str, Sequence[int]],
    trt_version: str,
    fp16: bool = True,
    workspace_mb: int = 1024,
    trtexec: str = DEFAULT_TRTEXEC,
    timing_cache: str | None = "timing.cache",
) -> list[str]:
    """The trtexec command line for this TensorRT version (see the module docstring)."""
    version = parse_version(trt_version)
    s = _check_shapes(shapes)
    if workspace_mb <= 0:
        raise TensorRTPlanError(f"workspace_mb must be > 0, got {workspace_mb}")
    argv = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if fp16:
        argv.append("--fp16")
    argv += [
        f"--minShapes={input_name}:{shape_arg(s['min'])}",
        f"--optShapes={input_name}:{shape_arg(s['opt'])}",
        f"--maxShapes={input_name}:{shape_arg(s['max'])}",
        _workspace_flag(version, workspace_mb),
    ]
    if timing_cache:
        argv.append(f"--timingCacheFile={timing_cache}")
    return argv


def _python_builder(
    version: tuple[int, ...],
    input_name: str,
    shapes: dict[str, list[int]],
    fp16: bool,
    workspace_mb: int,
    timing_cache: str | None,
) -> dict[str, Any]:
    """The same build expressed as TensorRT Python API settings (plain data)."""
    return {
        "network_flags": ["EXPLICIT_BATCH"] if version[0] < 10 else [],
        "builder_flags": ["FP16"] if fp16 else [],
        "workspace_bytes": workspace_mb * 1024 * 1024,
        "workspace_api": "max_workspace_size" if version[:2] < (8, 4) else "set_memory_pool_limit",
        "profile": {input_name: {"min": shapes["min"], "opt": shapes["opt"], "max": shapes["max"]}},
        "timing_cache": timing_cache,
        "serialize_api": "build_serialized_network",
    }


def tensorrt_build_plan(
    onnx_path_in_bundle: str,
    input_name: str,
    shapes: Mapping[str, Sequence[int]],
    fp16: bool = True,
    workspace_mb: int = 1024,
    trtexec: str = DEFAULT_TRTEXEC,
    timing_cache: str | None = "timing.cache",
    trt_version: str = "8.6.2",
    engine_path: str | None = None,
) -> dict[str, Any]:
    """Plan for building ``onnx_path_in_bundle`` (relative to the bundle root) on the device.

    Returns plain data: versions, shapes, ``argv`` (trtexec), ``python_builder`` (the equivalent
    TensorRT Python API settings), and ``script`` (the text of build_engine.sh).  The engine
    goes to ``engine_path`` (default: the ONNX path with ``.engine``); the script writes a
    temporary file and renames it on success so a half-built engine is never loaded.
    """
    version = parse_version(trt_version)
    s = _check_shapes(shapes)
    engine = engine_path or str(Path(onnx_path_in_bundle).with_suffix(".engine"))
    argv = trtexec_argv(onnx_path_in_bundle, engine, input_name, s, trt_version, fp16,
                        workspace_mb, trtexec, timing_cache)
    plan: dict[str, Any] = {
        "format": "engine.trt-plan/1",
        "trt_version": ".".join(str(v) for v in version),
        "onnx": onnx_path_in_bundle,
        "engine": engine,
        "input_name": input_name,
        "shapes": s,
        "fp16": fp16,
        "workspace_mb": workspace_mb,
        "timing_cache": timing_cache,
        "trtexec": trtexec,
        "argv": argv,
        "python_builder": _python_builder(version, input_name, s, fp16, workspace_mb,
                                          timing_cache),
    }
    plan["script"] = build_script(plan)
    return plan


def build_script(plan: Mapping[str, Any]) -> str:
    """build_engine.sh: run from anywhere, works relative to its own directory (the bundle)."""
    q = shlex.quote
    want = plan["trt_version"]
    tmp_engine = plan["engine"] + ".tmp"
    # the script saves to a temporary name and renames on success: never a half-written engine
    argv = [f"--saveEngine={tmp_engine}" if a.startswith("--saveEngine=") else a
            for a in plan["argv"][1:]]
    args = " \\\n    ".join(q(a) for a in argv)
    return f"""#!/bin/sh
# Build the TensorRT engine for this bundle ON the device (engines are tied to the GPU and the
# TensorRT version that built them).  Generated by engine.compress.tensorrt; planned for
# TensorRT {want}.
set -eu
cd "$(dirname "$0")"
TRTEXEC={q(plan["trtexec"])}
if [ ! -x "$TRTEXEC" ]; then
    TRTEXEC="$(command -v trtexec || true)"
fi
if [ -z "$TRTEXEC" ]; then
    echo "build_engine.sh: trtexec not found (install TensorRT / JetPack)" >&2
    exit 2
fi
HAVE="$(python3 -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null || true)"
case "$HAVE" in
    "" ) echo "build_engine.sh: cannot read the TensorRT version; planned for {want}" >&2 ;;
    {want}*) ;;
    * ) echo "build_engine.sh: TensorRT $HAVE here, plan made for {want}; building anyway" >&2 ;;
esac
rm -f {q(plan["engine"] + ".tmp")}
"$TRTEXEC" \\\n    {args}
mv -f {q(plan["engine"] + ".tmp")} {q(plan["engine"])}
echo "build_engine.sh: wrote {plan["engine"]}"
"""


def write_build_script(plan: Mapping[str, Any], bundle_dir: Path | str) -> Path:
    """Write ``build_engine.sh`` (mode 755) into ``bundle_dir`` atomically; returns its path."""
    path = Path(bundle_dir) / "build_engine.sh"
    atomic_write_bytes(path, str(plan["script"]).encode())
    path.chmod(0o755)
    return path


def maybe_build_locally(plan: Mapping[str, Any], bundle_dir: Path | str = ".") -> dict[str, Any]:
    """Build the engine here with the TensorRT Python API when that is valid, else say why not.

    Valid only when ``tensorrt`` imports and its major.minor.patch equals the plan's (an engine
    from another version would not load on the device).  Returns {"built": bool, "reason",
    "engine"?, "local_version"?}.
    """
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as exc:  # ImportError, or a broken CUDA install raising OSError
        return {"built": False, "reason": f"tensorrt is not importable here ({exc})"}
    local = str(getattr(trt, "__version__", "0"))
    want = parse_version(plan["trt_version"])
    have = parse_version(local)
    if have[:3] != want[:3]:
        return {"built": False, "local_version": local,
                "reason": f"local TensorRT {local} != planned {plan['trt_version']}"}
    bundle = Path(bundle_dir)
    engine_bytes = _build_with_python_api(trt, plan, bundle)
    out = bundle / plan["engine"]
    atomic_write_bytes(out, engine_bytes)
    return {"built": True, "engine": str(out), "local_version": local, "reason": "versions match"}


def _build_with_python_api(trt: Any, plan: Mapping[str, Any], bundle: Path) -> bytes:
    """The python_builder settings applied with the TensorRT API (8.x and 10.x)."""
    pb = plan["python_builder"]
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for name in pb["network_flags"]:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    onnx_bytes = (bundle / plan["onnx"]).read_bytes()
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {plan['onnx']}: {errors}")
    config = builder.create_builder_config()
    if pb["workspace_api"] == "set_memory_pool_limit":
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, pb["workspace_bytes"])
    else:
        config.max_workspace_size = pb["workspace_bytes"]
    for flag in pb["builder_flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    for name, s in pb["profile"].items():
        profile.set_shape(name, tuple(s["min"]), tuple(s["opt"]), tuple(s["max"]))
    config.add_optimization_profile(profile)
    cache_path = bundle / pb["timing_cache"] if pb.get("timing_cache") else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and
                                       cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {plan['onnx']}")
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def recognizer_shapes(shapes: dict[str, Any], height: int, max_width: int) -> dict[str, list[int]]:
    """A profile's recognizer optimisation profile at the model's line height, its widths no
    wider than the bundle's widest line (rounded up to the runtime's multiple of 8)."""
    widest = max(8, (max_width + 7) // 8 * 8)
    out = {k: [int(v[0]), int(v[1]), int(height), int(v[3])] for k, v in shapes.items()}
    out["max"][3] = widest
    out["opt"][3] = min(out["opt"][3], widest)
    out["min"][3] = min(out["min"][3], out["opt"][3])
    return out
