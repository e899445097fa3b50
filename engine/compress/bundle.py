"""Assemble a target's bundle directory: models, the device runtime, validation images, manifest.

A bundle is everything a device needs to read text, and nothing that needs torch.  Layout::

    BUNDLE/
      manifest.json                      finalize_bundle: sha256 of every file below + the meta
      models/detector.onnx               one candidate precision: the models sit in models/
      models/recognizer.onnx
      models/<precision>/detector.onnx   several candidates (precision "auto", or fp32 + fp16
      models/<precision>/recognizer.onnx   for TensorRT): one sub-directory per precision
      runtime/*.py                       a copy of engine/runtime (importable as ``runtime``)
      runtime/page/                      the page runtime.serve shows at / (HTML, JS, CSS)
      requirements.txt                   numpy, onnxruntime, opencv-python-headless, pyclipper
      requirements-serve.txt             fastapi, uvicorn, python-multipart: only for runtime.serve
      ocr-recipe.service                 systemd unit template for runtime.serve (see its header)
      val/images/<name>                  a few validation images, byte-identical copies
      val/labels.jsonl                   their manifest lines, "image" relative to val/
      <extra files>                      e.g. build_engine_*.sh for TensorRT targets

Devices run ``python -m runtime.check`` / ``python -m runtime.predict`` with the bundle as the
working directory.  Files created there later (``__pycache__``, TensorRT ``*.engine`` files and
``timing.cache`` built on the device) are not in the manifest and are never trusted by it.

Manifest meta (besides ``format``, ``files`` and ``bundle_hash`` from
engine.runtime.bundle_manifest), all JSON:

- ``bundle_format``: "engine.ocr-bundle/1"; ``recipe``: {name, hash}; ``target``, ``arch``,
  ``runtime`` ("onnxruntime" | "tensorrt");
- ``precision``: the active candidate; ``candidates``: {precision: {detector, recognizer}}
  (relpaths; the active pair is ``candidates[precision]`` — kept in one place so switching the
  active precision is a one-key change);
- ``charset`` (expanded, class i+1 = charset[i]); ``detector``: {input, max_side, channels,
  mean, std}; ``recognizer``: {input, height, max_width, batch, channels, mean, std,
  downsample} (the input conventions of engine.models.registry; a manifest without them is
  read with this project's DBNet / CRNN conventions); ``postprocess``: {thresh, box_thresh,
  unclip_ratio, shrink_ratio, min_text_score}; ``threads``; ``providers``;
- ``exclusions`` (int8 nodes kept in float), ``onnxruntime`` (the version that built and
  checked the models), ``versions`` (python, numpy, onnxruntime, opencv, pyclipper here),
  ``val``: {labels, count}; ``metrics``: {} until the lead's verify/check stages fill it
  through :func:`update_bundle_meta`.

No timestamps: two builds of the same inputs give the same ``bundle_hash``, so a rerun that
changed nothing ships nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from engine.deploy.bundle import finalize_bundle, pack_bundle
from engine.runtime.bundle_manifest import BundleError, check_relpath, verify_bundle

from ..fsutil import replace_dir
from . import fsync_dir

__all__ = [
    "BUNDLE_FORMAT",
    "MODEL_NAMES",
    "RUNTIME_REQUIREMENTS",
    "BundleError",
    "build_bundle",
    "model_relpaths",
    "pack_bundle",
    "requirements_text",
    "set_active_precision",
    "update_bundle_meta",
]

BUNDLE_FORMAT = "engine.ocr-bundle/1"
MODEL_NAMES = ("detector", "recognizer")
#: distribution name -> import name; the only packages a device installs (never torch).
RUNTIME_REQUIREMENTS = {
    "numpy": "numpy",
    "onnxruntime": "onnxruntime",
    "opencv-python-headless": "cv2",
    "pyclipper": "pyclipper",
}
_REQUIRED_KEYS = {
    "detector": ("input", "max_side"),
    "recognizer": ("input", "height", "max_width", "batch"),
    "postprocess": ("thresh", "box_thresh", "unclip_ratio", "min_text_score"),
}
_RUNTIME_DIR = Path(__file__).resolve().parent.parent / "runtime"
_RUNTIME_SUFFIXES = (".py", ".html", ".js", ".css")
_SERVICE_UNIT = Path(__file__).resolve().parent / "ocr-recipe.service"
#: the HTTP service's extra packages; a separate file, so a device that only runs
#: runtime.check / runtime.predict never installs them
SERVE_REQUIREMENTS = ("fastapi>=0.100", "uvicorn>=0.23", "python-multipart>=0.0.9")


def _dist_version(dist: str) -> str | None:
    with contextlib.suppress(metadata.PackageNotFoundError):
        return metadata.version(dist)
    return None


# Floors the runtime needs (onnxruntime 1.16: opset 17 with per-channel QDQ), low enough for a
# Raspberry Pi OS with Python 3.9. The versions the bundle was built and verified with are
# recorded in the manifest's `versions`; pin them on the device when you want them exactly.
DEVICE_FLOORS = {
    "numpy": "1.22",
    "onnxruntime": "1.16",
    "opencv-python-headless": "4.6",
    "pyclipper": "1.3",
}


def requirements_text() -> str:
    """requirements.txt for devices: the runtime's four packages with their floors, no torch."""
    return "\n".join(f"{dist}>={DEVICE_FLOORS[dist]}" for dist in RUNTIME_REQUIREMENTS) + "\n"


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in RUNTIME_REQUIREMENTS:
        out[dist] = _dist_version(dist)
    return out


def model_relpaths(precisions: Sequence[str]) -> dict[str, dict[str, str]]:
    """Where each candidate's models go: ``models/`` for one, ``models/<precision>/`` for several."""
    if len(precisions) == 1:
        return {precisions[0]: {m: f"models/{m}.onnx" for m in MODEL_NAMES}}
    return {p: {m: f"models/{p}/{m}.onnx" for m in MODEL_NAMES} for p in precisions}


def _check_inputs(
    models: Mapping[str, Mapping[str, Path]],
    active: str,
    charset: str,
    configs: dict[str, Mapping[str, Any]],
    extra_files: Mapping[str, Path],
) -> None:
    if not models:
        raise ValueError("build_bundle needs at least one candidate precision in `models`")
    if active not in models:
        raise ValueError(f"active precision {active!r} is not a candidate ({', '.join(models)})")
    for precision, pair in models.items():
        if set(pair) != set(MODEL_NAMES):
            raise ValueError(f"models[{precision!r}] must name exactly {MODEL_NAMES}, got {sorted(pair)}")
        for name, path in pair.items():
            if not Path(path).is_file():
                raise FileNotFoundError(f"{path}: {precision} {name} model does not exist")
    if not charset:
        raise ValueError("charset is empty")
    for section, keys in _REQUIRED_KEYS.items():
        missing = [k for k in keys if k not in configs[section]]
        if missing:
            raise ValueError(f"bundle {section} settings lack {', '.join(missing)}")
    for rel, path in extra_files.items():
        why = check_relpath(rel)
        if why:
            raise ValueError(f"extra file name {rel!r}: {why}")
        if rel == "manifest.json" or rel.split("/")[0] in ("models", "runtime", "val") or rel in (
                "requirements.txt", "requirements-serve.txt", _SERVICE_UNIT.name):
            raise ValueError(f"extra file {rel!r} would overwrite a bundle member")
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: extra file for {rel!r} does not exist")


def _check_model_io(path: Path, kind: str, input_name: str, charset: str) -> None:
    """The ONNX input is named as the bundle says, and the recognizer has len(charset)+1 classes:
    a mismatch here would otherwise surface on the device as garbage text."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    if input_name not in names:
        raise ValueError(f"{path}: {kind} input is {names}, bundle settings say {input_name!r}")
    if kind == "recognizer":
        classes = sess.get_outputs()[0].shape[-1]
        if isinstance(classes, int) and classes != len(charset) + 1:
            raise ValueError(
                f"{path}: recognizer has {classes} classes, charset has {len(charset)} "
                f"characters (+1 blank = {len(charset) + 1})"
            )


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    with open(dst, "rb+") as fh:
        os.fsync(fh.fileno())


def _copy_runtime(dst: Path) -> None:
    """engine/runtime's modules and the device page's files (runtime/page/: HTML, JS, CSS)."""
    for src in sorted(_RUNTIME_DIR.rglob("*")):
        rel = src.relative_to(_RUNTIME_DIR)
        if src.is_file() and src.suffix in _RUNTIME_SUFFIXES and "__pycache__" not in rel.parts:
            _copy(src, dst / rel)


def _copy_val(val_records: Sequence[Any], dst: Path, limit: int) -> int:
    """Copy up to ``limit`` images (bytes unchanged, so host and device see the same pixels) and
    write their manifest lines with ``image`` relative to ``val/``."""
    lines: list[str] = []
    used: set[str] = set()
    for k, record in enumerate(list(val_records)[:limit]):
        d = record.to_dict() if hasattr(record, "to_dict") else dict(record)
        src = Path(d["image"])
        name = src.name if src.name not in used else f"{k:03d}_{src.name}"
        used.add(name)
        _copy(src, dst / "images" / name)
        d["image"] = f"images/{name}"
        lines.append(json.dumps(d, ensure_ascii=False, sort_keys=True))
    if lines:
        path = dst / "labels.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())
    return len(lines)


def build_bundle(
    out_dir: str | os.PathLike[str],
    *,
    models: Mapping[str, Mapping[str, str | os.PathLike[str]]],
    active: str,
    charset: str,
    detector: Mapping[str, Any],
    recognizer: Mapping[str, Any],
    postprocess: Mapping[str, Any],
    threads: int,
    providers: Sequence[str],
    runtime: str,
    target: str,
    arch: str,
    recipe: Mapping[str, Any],
    val_records: Sequence[Any] = (),
    val_limit: int = 20,
    extra_files: Mapping[str, str | os.PathLike[str]] | None = None,
    extra_meta: Mapping[str, Any] | None = None,
    check_models: bool = True,
) -> Path:
    """Assemble, seal and atomically install the bundle at ``out_dir``; returns its path.

    ``models``: {precision: {"detector": path, "recognizer": path}}; ``active`` the one the
    device uses by default.  ``val_records``: ManifestRecords (or their dicts) whose images are
    copied for the on-device check (at most ``val_limit``).  ``extra_files``: {relpath: source}
    copied as-is (mode kept, e.g. build scripts).  ``extra_meta`` is merged last into the
    manifest meta (it may override defaults such as ``exclusions`` or ``metrics``).
    ``check_models`` opens every model with onnxruntime to check input names and class count.
    """
    out = Path(out_dir).absolute()
    models_p = {p: {m: Path(v) for m, v in pair.items()} for p, pair in models.items()}
    extras = {rel: Path(p) for rel, p in (extra_files or {}).items()}
    configs = {"detector": detector, "recognizer": recognizer, "postprocess": postprocess}
    _check_inputs(models_p, active, charset, configs, extras)
    if runtime not in ("onnxruntime", "tensorrt"):
        raise ValueError(f"runtime must be 'onnxruntime' or 'tensorrt', got {runtime!r}")
    if check_models:
        for pair in models_p.values():
            _check_model_io(pair["detector"], "detector", str(detector["input"]), charset)
            _check_model_io(pair["recognizer"], "recognizer", str(recognizer["input"]), charset)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        relpaths = model_relpaths(list(models_p))
        for precision, pair in models_p.items():
            for name, src in pair.items():
                _copy(src, tmp / relpaths[precision][name])
        _copy_runtime(tmp / "runtime")
        (tmp / "requirements.txt").write_text(requirements_text(), encoding="utf-8")
        (tmp / "requirements-serve.txt").write_text("\n".join(SERVE_REQUIREMENTS) + "\n", encoding="utf-8")
        _copy(_SERVICE_UNIT, tmp / _SERVICE_UNIT.name)
        n_val = _copy_val(val_records, tmp / "val", val_limit)
        for rel, src in extras.items():
            _copy(src, tmp / rel)
        versions = _versions()
        meta: dict[str, Any] = {
            "bundle_format": BUNDLE_FORMAT,
            "recipe": dict(recipe),
            "target": target,
            "arch": arch,
            "runtime": runtime,
            "precision": active,
            "candidates": relpaths,
            "charset": charset,
            "detector": dict(detector),
            "recognizer": dict(recognizer),
            "postprocess": dict(postprocess),
            "threads": int(threads),
            "providers": list(providers),
            "exclusions": [],
            "onnxruntime": versions["onnxruntime"],
            "versions": versions,
            "val": {"labels": "val/labels.jsonl" if n_val else None, "count": n_val},
            "metrics": {},
        }
        meta.update(extra_meta or {})
        finalize_bundle(tmp, meta)
        fsync_dir(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the bundle is read by a service user too
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def update_bundle_meta(bundle_dir: str | os.PathLike[str], **changes: Any) -> dict[str, Any]:
    """Verify a finished bundle, merge ``changes`` into its meta and re-seal it (atomic manifest
    write); returns the new manifest.  ``metrics`` dicts are merged key by key, other keys
    replaced.  The bundle hash changes, so re-pack / re-ship afterwards."""
    manifest = verify_bundle(bundle_dir)
    meta = {k: v for k, v in manifest.items() if k not in ("format", "files", "bundle_hash")}
    for key, value in changes.items():
        if key == "metrics" and isinstance(value, Mapping):
            meta["metrics"] = {**meta.get("metrics", {}), **value}
        else:
            meta[key] = value
    return finalize_bundle(bundle_dir, meta)


def set_active_precision(bundle_dir: str | os.PathLike[str], precision: str) -> dict[str, Any]:
    """Switch the default candidate (precision "auto": after verify/check measured them)."""
    manifest = verify_bundle(bundle_dir)
    candidates = manifest.get("candidates", {})
    if precision not in candidates:
        raise BundleError(
            Path(bundle_dir) / "manifest.json",
            f"precision {precision!r} is not a candidate ({', '.join(sorted(candidates))})",
        )
    return update_bundle_meta(bundle_dir, precision=precision)
