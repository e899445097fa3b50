"""The on-device check: ``python -m runtime.check [--bundle DIR] [--precision P] [--limit N]
[--runs R] [--threads T]``, run with the bundle as the working directory.

Prints ONE JSON object on stdout::

    {"bundle_hash", "target", "precision", "backend",
     "predictions": [{"image": "x.jpg", "lines": [{"points", "text", "score", ...}]}],
     (+ "greedy_text" in each line when the bundle reads with a language model)
     "latency_ms": {"p50", "p90", "mean", "min", "max", "runs"},
     "peak_rss_mb", "versions": {python, onnxruntime, numpy, cv2, pyclipper, machine}}

or ``{"error": ..., "problems": [...]}`` with exit status 1 when the bundle fails its sha256
check or cannot run.  Accuracy is NOT computed here: the host scores ``predictions`` against
its own copy of ``val/labels.jsonl`` with the one metrics implementation (engine.training.metrics),
so the device needs nothing beyond the runtime.  Latency is per image, end to end (detector,
crops, recognizer, decoding), after one untimed warm-up, over ``runs`` passes of the images.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

from .bundle_manifest import BundleError, verify_bundle

# Nothing else of the runtime is imported at module level: main() verifies every file's
# sha256 with the stdlib-only bundle_manifest BEFORE importing the pipeline, so a corrupted
# runtime module is reported as a bad file instead of crashing (or running) on import.


def peak_rss_mb() -> float:
    """Peak resident memory of this process.

    Linux: VmHWM from /proc/self/status, which starts afresh at exec; ru_maxrss does not (a
    check launched from a big training process reported the parent's 17 GB peak). Elsewhere
    ru_maxrss (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def versions() -> dict[str, str]:
    import cv2
    import numpy as np
    import onnxruntime as ort
    import pyclipper

    return {
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "cv2": cv2.__version__,
        "pyclipper": str(getattr(pyclipper, "__version__", "")),
        "machine": platform.machine(),
    }


def latency_summary(samples_ms: list[float]) -> dict[str, float | int]:
    import numpy as np

    if not samples_ms:
        return {"p50": 0.0, "p90": 0.0, "mean": 0.0, "min": 0.0, "max": 0.0, "runs": 0}
    a = np.asarray(samples_ms, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(a, 50)), 2),
        "p90": round(float(np.percentile(a, 90)), 2),
        "mean": round(float(a.mean()), 2),
        "min": round(float(a.min()), 2),
        "max": round(float(a.max()), 2),
        "runs": len(samples_ms),
    }


def val_images(bundle: Path, labels_rel: str | None) -> list[str]:
    """Image paths (relative to val/) listed in the bundle's labels file, in order."""
    if not labels_rel:
        return []
    labels = bundle / labels_rel
    names = []
    for n, raw in enumerate(labels.read_text(encoding="utf-8").splitlines(), 1):
        if raw.strip():
            try:
                names.append(str(json.loads(raw)["image"]))
            except (ValueError, KeyError, TypeError):
                raise BundleError(labels, f"line {n}: not a manifest line with an image") from None
    return names


def run_check(bundle: Path, precision: str | None = None, limit: int | None = None,
              runs: int = 3, threads: int | None = None) -> dict[str, Any]:
    """Verify the bundle, then predict its validation images (see the module docstring)."""
    verify_bundle(bundle)
    import numpy as np

    from .pipeline import OCRPipeline, decode_image

    pipe = OCRPipeline(bundle, precision=precision, threads=threads, verify=False, greedy_alongside=True)
    val = pipe.manifest.get("val") or {}
    names = val_images(bundle, val.get("labels"))
    if limit is not None:
        names = names[: max(0, limit)]
    # the files' bytes, decoded one at a time outside the timer: 40 decoded 640x480 images held
    # at once were 37 MB of the peak RSS this check reports against the device's budget
    paths = [bundle / "val" / name for name in names]
    encoded = [np.fromfile(str(path), dtype=np.uint8) for path in paths]
    predictions: list[dict[str, Any]] = []
    samples: list[float] = []
    if encoded:
        pipe.predict(decode_image(encoded[0], str(paths[0])))  # warm-up: first-run allocations
    for r in range(max(1, runs)):
        for name, path, data in zip(names, paths, encoded, strict=True):
            image = decode_image(data, str(path))
            t0 = time.perf_counter()
            lines = pipe.predict(image)
            samples.append((time.perf_counter() - t0) * 1000.0)
            if r == 0:  # val/images/ names are unique: report the file name
                predictions.append({"image": Path(name).name, "lines": lines})
    return {
        "bundle_hash": pipe.manifest["bundle_hash"],
        "target": pipe.manifest.get("target"),
        "precision": pipe.precision,
        "backend": pipe.backend,
        "threads": pipe.threads,
        "predictions": predictions,
        "latency_ms": latency_summary(samples),
        "peak_rss_mb": peak_rss_mb(),
        "versions": versions(),
    }


def _fail(message: str, problems: list[str]) -> int:
    """The error as the one JSON object on stdout, and as a line on stderr for humans."""
    print(json.dumps({"error": message, "problems": problems}))
    print(f"runtime.check: {message}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="runtime.check", description="Check a bundle on this device.")
    ap.add_argument("--bundle", help="bundle directory (default: the one this runtime is in, "
                    "else the current directory)")
    ap.add_argument("--precision", help="candidate precision (default: the bundle's active one)")
    ap.add_argument("--limit", type=int, help="at most N validation images")
    ap.add_argument("--runs", type=int, default=3, help="timed passes over the images")
    ap.add_argument("--threads", type=int, help="intra-op threads (default: the manifest's)")
    args = ap.parse_args(argv)
    here = Path(__file__).resolve().parent.parent  # runtime/ sits at the bundle root
    bundle = Path(args.bundle) if args.bundle else (
        here if (here / "manifest.json").is_file() else Path.cwd())
    try:
        result = run_check(bundle, args.precision, args.limit, args.runs, args.threads)
    except BundleError as exc:
        return _fail(str(exc), exc.problems)
    except Exception as exc:  # unreadable image, onnxruntime failure: still one JSON object
        return _fail(f"{type(exc).__name__}: {exc}", [str(exc)])
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
