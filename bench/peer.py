"""The project's bundle against a peer OCR system (RapidOCR 3.10) on held-out synthetic nameplates.

    python bench/peer.py                                       # 100 images, 2 threads each
    python bench/peer.py --count 20                            # a quick look
    python bench/peer.py --bundle runs/zero-shot/verify/local-cpu --precision fp32   # another bundle
    python bench/peer.py --rapid-python /tmp/peer-venv/bin/python   # RapidOCR from its own venv

Goals (issue 17): end-to-end line accuracy >= RapidOCR's + 5 points, CER <= half of RapidOCR's,
median latency <= 0.35x RapidOCR's on this machine; zero-shot (recipes/zero-shot.yaml, fp32)
within 1 point of RapidOCR's line accuracy.

Installing the peer.  ``pip install rapidocr==3.10.0``: its PP-OCR models (PP-OCRv6 small
detector and recognizer, the mobile direction classifier) ship inside the wheel, so it runs
offline.  Its requirements (numpy, opencv-python-headless, pyclipper, Pillow, PyYAML, requests,
six, shapely, omegaconf, tqdm, colorlog; onnxruntime is NOT required but used when present)
only *add* packages to this project's environment and change no installed version (checked with
``pip install --dry-run``), so it can go into the same environment.  Where it would conflict,
make a venv (``python -m venv /tmp/peer-venv && /tmp/peer-venv/bin/pip install rapidocr==3.10.0
onnxruntime``) and pass ``--rapid-python /tmp/peer-venv/bin/python``.  Without rapidocr the bench
prints why and scores the project's bundle alone.

Why a worker process.  RapidOCR always runs in a child process (this file with
``--rapid-worker``, by default under the same interpreter) that answers one JSON line per image
on stdin/stdout, so the same code path serves the shared-environment and the separate-venv
installs, and RapidOCR's logging and imports never touch the project's process.  Each side times
only its own OCR call on an already decoded image (decoding, IPC and scoring are outside the
clock), per image, and the two are interleaved image by image (the order alternates) so load
from other processes hits both alike.

Fairness.  Both run onnxruntime on the CPU with the same intra-op threads (``--threads``, default
2 = this machine's cores), one inter-op thread, and OpenCV limited to the same thread count.
RapidOCR keeps its defaults (detector limit_side_len 736 / limit_type min, text_score 0.5)
except that the 0/180 degree direction classifier is switched off: nameplates are upright here,
so it could only cost time.  Both warm up on ``--warmup`` images first (RapidOCR loads its
models lazily on the first call).

Data.  ``engine.data.synth.generate_dataset`` with a seed that no recipe under recipes/ trains on
(default 424242; the training seeds found in recipes/*.yaml are refused).

Scoring, by the project's own metrics for both systems (engine/training/metrics.py):
* detection precision / recall / hmean: ICDAR 2015 protocol (``detection_metrics``);
* lines are paired with ``match_image`` (one-to-one, polygon IoU > 0.5);
* ``line_acc`` = care GT lines whose matched line's text equals the GT text with all whitespace
  removed, over all care GT lines (a missed line counts as wrong: end to end);
  ``matched_acc`` = the same over matched lines only; ``exact_acc`` also compares whitespace;
  ``lenient_acc`` additionally folds case and Unicode compatibility forms (NFKC): PP-OCR's
  Chinese+English recogniser may emit full-width punctuation or other case, so this column shows
  how much of a gap is only that;
* ``cer`` = character edit distance over matched lines, whitespace removed, / GT characters;
* latency: median (p50), p90 and mean of the per-image wall time of the OCR call, in ms.

Prints a table and writes bench/results/peer.json (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
RAPID_VERSION = "3.10.0"
# Issue 17's goals for the flagship bundle, against RapidOCR in the same run.
ACCURACY_MARGIN = 0.05  # project line accuracy >= RapidOCR's + this
CER_GOAL = 0.5  # project CER <= this x RapidOCR's
LATENCY_GOAL = 0.35  # project median latency <= this x RapidOCR's


# ------------------------------------------------------------------------------ RapidOCR worker


def rapid_params(threads: int) -> dict[str, Any]:
    """RapidOCR's settings for every bench: its defaults, the direction classifier off (plates are
    upright), ``threads`` intra-op threads and one inter-op thread, like the project's side."""
    return {
        "Global.use_cls": False,
        "Global.log_level": "warning",
        "EngineConfig.onnxruntime.intra_op_num_threads": threads,
        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
    }


def rapid_worker(threads: int) -> int:
    """JSON lines on stdin/stdout: {"image": PATH} -> {"lines": [...], "ms": float}.

    Needs only rapidocr and its dependencies (it may run in a venv without the project).  The
    first line written is {"ready": ...} or {"error": ..., "missing": true}.  The protocol
    stream is a private copy of stdout, and fd 1 is pointed at stderr, so nothing a library
    prints can corrupt it.
    """
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def say(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        import cv2
        import onnxruntime
        import rapidocr
        from rapidocr import RapidOCR
    except ImportError as exc:
        say({"error": f"{type(exc).__name__}: {exc}", "missing": True})
        return 3
    cv2.setNumThreads(threads)
    engine = RapidOCR(params=rapid_params(threads))
    cfg = engine.cfg
    version = getattr(rapidocr, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version
        version = dist_version("rapidocr")
    say({"ready": True, "rapidocr": version, "onnxruntime": onnxruntime.__version__,
         "python": sys.executable, "threads": threads,
         "models": {part: " ".join(str(getattr(v, "value", v)) for v in (
             cfg[part].ocr_version, cfg[part].model_type, cfg[part].lang_type))
             for part in ("Det", "Rec")},
         "settings": {"use_cls": False, "det_limit_side_len": cfg.Det.limit_side_len,
                      "det_limit_type": cfg.Det.limit_type, "text_score": cfg.Global.text_score}})
    for raw in sys.stdin:
        if not raw.strip():
            continue
        path = json.loads(raw)["image"]
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            say({"error": f"{path}: cannot decode image"})
            continue
        t0 = time.perf_counter()
        out: Any = engine(img)  # RapidOCROutput (boxes, txts, scores) when text was found
        ms = (time.perf_counter() - t0) * 1000.0
        lines = []
        if getattr(out, "boxes", None) is not None and getattr(out, "txts", None) is not None:
            for box, text, score in zip(out.boxes, out.txts, out.scores, strict=True):
                lines.append({"points": [[float(x), float(y)] for x, y in box],
                              "text": str(text), "score": float(score)})
        say({"lines": lines, "ms": ms})
    return 0


class RapidClient:
    """The parent's end of :func:`rapid_worker`; stderr goes to a temp file (no pipe to drain)."""

    def __init__(self, python: str, threads: int):
        self.python = python
        self.stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "--rapid-worker", "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=env,
            text=True, encoding="utf-8", bufsize=1,
        )
        self.info = self._read()

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")[-2000:]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = self.proc.stdout.readline()
        if not raw:
            self.proc.wait(timeout=30)
            raise RuntimeError(f"RapidOCR worker ({self.python}) exited with "
                               f"{self.proc.returncode}:\n{self._stderr_tail()}")
        return dict(json.loads(raw))

    def ocr(self, image: Path) -> tuple[list[dict[str, Any]], float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"image": str(image)}) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"RapidOCR worker: {reply['error']}")
        return reply["lines"], float(reply["ms"])

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


def start_rapid(python: str, threads: int) -> tuple[RapidClient | None, str]:
    """A running worker, or None and the reason it is skipped."""
    try:
        client = RapidClient(python, threads)
    except (OSError, RuntimeError) as exc:
        return None, f"RapidOCR worker failed to start: {exc}"
    if client.info.get("missing"):
        client.close()
        return None, (f"RapidOCR is not installed for {python} ({client.info['error']}); "
                      f"install it with `pip install rapidocr=={RAPID_VERSION}` or pass "
                      f"--rapid-python PATH_TO_A_VENV_PYTHON (see this file's docstring)")
    if client.info.get("rapidocr") != RAPID_VERSION:
        print(f"note: RapidOCR {client.info.get('rapidocr')} found, the bench targets "
              f"{RAPID_VERSION}", file=sys.stderr)
    return client, ""


# ------------------------------------------------------------------------------ data and scoring


def training_seeds() -> set[int]:
    """Synthetic seeds the recipes under recipes/ train on (never to be used for scoring)."""
    from ruamel.yaml import YAML

    seeds = set()
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        doc = YAML(typ="safe").load(path.read_text(encoding="utf-8")) or {}
        synth = (doc.get("dataset") or {}).get("synthetic") or {}
        if isinstance(synth, dict) and synth.get("seed") is not None:
            seeds.add(int(synth["seed"]))
    return seeds


def heldout_images(tmp: Path, data: Path | None, count: int, seed: int) -> list[Path]:
    """The first ``count`` images of ``data`` (``images/`` + ``gt/``), or of ``count`` plates
    generated from ``seed`` under ``tmp`` when no directory is given."""
    from engine.data.synth import generate_dataset

    root = data or tmp / "heldout"
    if data is None:
        generate_dataset(root, count=count, seed=seed, workers=1)
    images = sorted((root / "images").glob("*.jpg"))[:count]
    if not images:
        raise SystemExit(f"{root / 'images'}: no .jpg images")
    return images


def heldout_truths(images: list[Path]) -> list[list[Any]]:
    """Each held-out image's ground-truth lines (``gt/gt_<stem>.txt`` beside ``images/``) as
    scored lines; ``###`` lines come back ignored (unreadable: not scored, as in ICDAR 2015)."""
    from engine.data.synth import read_icdar_gt
    from engine.training.metrics import as_gt_line

    return [[as_gt_line(x) for x in read_icdar_gt(p.parent.parent / "gt" / f"gt_{p.stem}.txt")] for p in images]


def resolve_bundle(path: Path) -> Path:
    """The bundle directory: PATH itself, or PATH/bundle (a build:TARGET stage directory)."""
    for cand in (path, path / "bundle"):
        if (cand / "manifest.json").is_file():
            return cand
    raise SystemExit(
        f"{path}: no bundle here (no manifest.json in it or in {path / 'bundle'}); build one "
        f"with `recipe run recipes/nameplates.yaml --only build:local-cpu` or pass --bundle")


def _no_space(text: str) -> str:
    return "".join(text.split())


def _lenient(text: str) -> str:
    return _no_space(unicodedata.normalize("NFKC", text)).casefold()


def score(gts: list[list[dict[str, Any]]], dets: list[list[dict[str, Any]]],
          ms: list[float]) -> dict[str, Any]:
    """Detection, line and latency metrics of one system (see the module docstring)."""
    from engine.training.metrics import (
        as_gt_line,
        detection_metrics,
        edit_distance,
        match_image,
        summarize,
    )

    det = detection_metrics(gts, dets)
    care = matched = ok_ws = ok_exact = ok_lenient = edits = chars = 0
    for g, d in zip(gts, dets, strict=True):
        lines = [as_gt_line(x) for x in g]
        m = match_image(lines, d)
        care += m.gt_care
        for i, j, _ in m.pairs:
            truth, pred = lines[i].text, str(d[j].get("text", ""))
            matched += 1
            ok_exact += pred == truth
            ok_ws += _no_space(pred) == _no_space(truth)
            ok_lenient += _lenient(pred) == _lenient(truth)
            edits += edit_distance(_no_space(pred), _no_space(truth))
            chars += len(_no_space(truth))
    lat = summarize(ms)
    return {
        "line_acc": ok_ws / care if care else 0.0,
        "matched_acc": ok_ws / matched if matched else 0.0,
        "exact_acc": ok_exact / care if care else 0.0,
        "lenient_acc": ok_lenient / care if care else 0.0,
        "cer": edits / chars if chars else 0.0,
        "hmean": det["hmean"], "precision": det["precision"], "recall": det["recall"],
        "gt_lines": care, "matched_lines": matched, "det_lines": int(det["det"]),
        "latency_ms": {k: round(v, 2) for k, v in lat.items()},
    }


# ------------------------------------------------------------------------------ main


def _row(name: str, r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    return (f"{name:22s} {r['line_acc']:8.4f} {r['matched_acc']:8.4f} {r['lenient_acc']:8.4f} "
            f"{r['cer']:7.4f} {r['hmean']:7.4f} {lat['p50']:9.1f} {lat['p90']:9.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "runs" / "nameplates" / "verify" / "local-cpu",
                    help="bundle directory or its stage directory (default: the flagship's verified "
                         "local-cpu bundle, what ship installs)")
    ap.add_argument("--precision", help="bundle candidate (default: the manifest's active one)")
    ap.add_argument("--decoder", choices=("greedy",),
                    help="read with greedy CTC instead of the bundle's language model (the same models)")
    ap.add_argument("--count", type=int, default=100, help="held-out images")
    ap.add_argument("--seed", type=int, default=424242, help="never a training seed")
    ap.add_argument("--data", type=Path,
                    help="an existing generate_dataset directory (images/, gt/) instead of a "
                         "fresh one")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads for both systems")
    ap.add_argument("--warmup", type=int, default=2, help="untimed images per system first")
    ap.add_argument("--rapid-python", default=sys.executable,
                    help="interpreter with rapidocr installed (default: this one)")
    ap.add_argument("--no-rapid", action="store_true", help="score the bundle alone")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "peer.json")
    ap.add_argument("--rapid-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    cpus = os.cpu_count() or 1
    if not 1 <= args.threads <= cpus:
        ap.error(f"--threads must be between 1 and this machine's {cpus} cores "
                 "(RapidOCR silently ignores larger values)")
    if args.rapid_worker:
        return rapid_worker(args.threads)
    if args.count < 1:
        ap.error("--count must be >= 1")

    sys.path.insert(0, str(ROOT))
    import cv2

    from engine.data.synth import read_icdar_gt
    from engine.fsutil import atomic_write_json
    from engine.runtime.pipeline import OCRPipeline, load_image

    if args.data is None and args.seed in training_seeds():
        ap.error(f"--seed {args.seed} is a training seed of a recipe under recipes/; pick "
                 "another (default 424242)")
    bundle = resolve_bundle(args.bundle)
    cv2.setNumThreads(args.threads)
    pipe = OCRPipeline(bundle, args.precision, threads=args.threads, decoder=args.decoder)
    rapid, skipped = (None, "--no-rapid given") if args.no_rapid else start_rapid(
        args.rapid_python, args.threads)
    if rapid is None:
        print(f"skipping RapidOCR: {skipped}", file=sys.stderr)

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="peer-bench-") as tmp:
        images = heldout_images(Path(tmp), args.data, args.count, args.seed)
        gts = [read_icdar_gt(p.parent.parent / "gt" / f"gt_{p.stem}.txt") for p in images]
        decoded = [load_image(p) for p in images]

        for k in range(min(args.warmup, len(images))):
            pipe.predict(decoded[k])
            if rapid is not None:
                rapid.ocr(images[k])
        load_before = os.getloadavg()
        ours: list[list[dict[str, Any]]] = []
        theirs: list[list[dict[str, Any]]] = []
        ms_ours: list[float] = []
        ms_theirs: list[float] = []
        try:
            for k, path in enumerate(images):
                order = ("ours", "theirs") if k % 2 == 0 else ("theirs", "ours")
                for who in order:
                    if who == "ours":
                        lines, ms = pipe.timed_predict(decoded[k])
                        ours.append(lines)
                        ms_ours.append(ms)
                    elif rapid is not None:
                        lines, ms = rapid.ocr(path)
                        theirs.append(lines)
                        ms_theirs.append(ms)
        finally:
            rapid_info = rapid.info if rapid is not None else None
            if rapid is not None:
                rapid.close()
        load_after = os.getloadavg()

    results: dict[str, Any] = {"project": score(gts, ours, ms_ours)}
    if rapid_info is not None:
        results["rapidocr"] = score(gts, theirs, ms_theirs)
    print(f"\n{len(images)} held-out nameplates (seed {args.seed}), {args.threads} intra-op "
          f"threads each, whitespace-insensitive text")
    print(f"{'system':22s} {'line_acc':>8s} {'matched':>8s} {'lenient':>8s} {'cer':>7s} "
          f"{'hmean':>7s} {'p50 ms':>9s} {'p90 ms':>9s}")
    print(_row(f"project ({pipe.precision}{', greedy' if args.decoder else ''})", results["project"]))
    verdict: dict[str, Any] = {"goal": f"line_acc >= RapidOCR's + {ACCURACY_MARGIN}, CER <= "
                                       f"{CER_GOAL}x RapidOCR's, median latency <= "
                                       f"{LATENCY_GOAL}x RapidOCR's"}
    if rapid_info is not None:
        print(_row("RapidOCR " + str(rapid_info.get("rapidocr")), results["rapidocr"]))
        p, r = results["project"], results["rapidocr"]
        ratio = p["latency_ms"]["p50"] / r["latency_ms"]["p50"] if r["latency_ms"]["p50"] else 0.0
        checks = {
            "accuracy": (p["line_acc"] >= r["line_acc"] + ACCURACY_MARGIN - 1e-9,
                         f"line_acc {p['line_acc']:.4f} vs {r['line_acc']:.4f} + {ACCURACY_MARGIN}"),
            "cer": (p["cer"] <= CER_GOAL * r["cer"] + 1e-9,
                    f"CER {p['cer']:.4f} vs {CER_GOAL} x {r['cer']:.4f}"),
            "latency": (ratio <= LATENCY_GOAL, f"median latency {ratio:.3f}x (goal <= {LATENCY_GOAL})"),
        }
        verdict.update({"latency_ratio": round(ratio, 4),
                        **{f"{k}_met": ok for k, (ok, _) in checks.items()},
                        "met": all(ok for ok, _ in checks.values())})
        print("; ".join(f"{why}: {'met' if ok else 'NOT met'}" for ok, why in checks.values()))
    else:
        verdict["skipped"] = skipped
    print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after the timed loop")

    manifest = pipe.manifest
    report = {
        "images": len(images), "seed": None if args.data else args.seed,
        "data": str(args.data) if args.data else "generated (engine.data.synth.generate_dataset)",
        "threads": args.threads, "warmup": args.warmup,
        "text_comparison": "whitespace-insensitive exact match; lenient = + NFKC + casefold",
        "iou_thresh": 0.5,
        "bundle": {"path": str(bundle), "precision": pipe.precision, "backend": pipe.backend,
                   "decoder": (pipe.rec_cfg.get("decoder") or {}).get("type", "greedy") if args.decoder is None
                   else args.decoder,
                   "target": manifest.get("target"), "bundle_hash": manifest.get("bundle_hash")},
        "rapidocr": rapid_info,
        "results": results, "verdict": verdict,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": cpus, "loadavg_before": load_before, "loadavg_after": load_after},
        "seconds": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
