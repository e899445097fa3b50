"""Bundles on the build machine: assemble, seal, re-seal, pack - everything but reading one.

A bundle is everything a device needs to read text, and nothing that needs torch. This module
knows how one is made; what a device needs to *check* one (the manifest's format, its reserved
keys, the bundle hash, unpacking) is `engine.runtime.bundle_manifest`, which ships inside every
bundle and runs with the standard library alone. Layout::

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

``finalize_bundle`` seals a directory: it hashes every file and writes ``manifest.json``
atomically; ``pack_bundle`` makes a reproducible ``.tar.gz`` of a sealed bundle for hosts that
are easier to feed one archive (the same bytes for the same bundle, so its hash can be cached).

Manifest meta (besides the reserved ``format``, ``files`` and ``bundle_hash``), all JSON:

- ``bundle_format``: "engine.ocr-bundle/1"; ``recipe``: {name, key} (key: the build stage's
  rerun key, a hash of every recipe field, profile and upstream model it was built from);
  ``target``, ``arch``,
  ``runtime`` ("onnxruntime" | "tensorrt");
- ``precision``: the active candidate; ``candidates``: {precision: {detector, recognizer}}
  (relpaths; the active pair is ``candidates[precision]`` — kept in one place so switching the
  active precision is a one-key change);
- ``charset`` (expanded, class i+1 = charset[i]); ``detector``: {input, max_side, channels,
  mean, std}; ``recognizer``: {input, height, max_width, batch, max_padding, channels, mean, std,
  downsample} (the input conventions of engine.models.registry; a manifest without them is
  read with this project's DBNet / CRNN conventions); ``postprocess``: {thresh, box_thresh,
  unclip_ratio, shrink_ratio, min_text_score}; ``threads``; ``providers``;
- ``exclusions`` (int8 nodes kept in float), ``onnxruntime`` (the version that built and
  checked the models), ``versions`` (python, numpy, onnxruntime, opencv, pyclipper here),
  ``val``: {labels, count}; ``metrics``: {} (merged key by key by `update_bundle_meta`);
- ``verify``: the candidates' measurements, written into the verified copy by verify.

No timestamps: two builds of the same inputs give the same ``bundle_hash``, so a rerun that
changed nothing ships nothing.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from ..fsutil import atomic_write_bytes, fsync_dir, replace_dir
from ..runtime.bundle_manifest import (
    FORMAT,
    MANIFEST_NAME,
    RESERVED_KEYS,
    BundleError,
    check_relpath,
    compute_bundle_hash,
    is_ignored,
    manifest_meta,
    sha256_file,
    verify_bundle,
)

__all__ = [
    "BUNDLE_FORMAT",
    "MODEL_NAMES",
    "RUNTIME_REQUIREMENTS",
    "BundleError",
    "build_bundle",
    "bundle_files",
    "bundle_labels",
    "finalize_bundle",
    "model_relpaths",
    "pack_bundle",
    "requirements_text",
    "run_local_check",
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
    "recognizer": ("input", "height", "max_width", "batch", "max_padding"),
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
    meta = manifest_meta(verify_bundle(bundle_dir))
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


# ------------------------------------------------------------------------------- sealing


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
    clash = sorted(set(meta) & set(RESERVED_KEYS))
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


# ------------------------------------------------------------------------------- checking here


def bundle_labels(bundle: Path) -> dict[str, list[dict[str, Any]]]:
    """The ground truth of the validation images a bundle carries, by image file name."""
    labels: dict[str, list[dict[str, Any]]] = {}
    for line in (Path(bundle) / "val" / "labels.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            labels[Path(item["image"]).name] = item["lines"]
    return labels


def run_local_check(bundle: Path, precision: str | None, limit: int | None, runs: int = 1,
                    threads: int | None = None) -> dict[str, Any]:
    """``python -m runtime.check`` in the bundle directory, as a device would run it; its JSON
    report. ``threads`` overrides the manifest's. Raises BundleError with the check's last error
    line when it fails."""
    cmd = [sys.executable, "-m", "runtime.check", "--runs", str(runs)]
    if precision:
        cmd += ["--precision", precision]
    if limit:
        cmd += ["--limit", str(limit)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # keep the bundle's files exactly as hashed
    proc = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise BundleError(bundle, f"runtime.check failed: {proc.stderr.strip().splitlines()[-1:]}")
    return dict(json.loads(proc.stdout))
