"""The OCR pipeline that runs on the device: bundle -> image -> text lines in reading order.

numpy + onnxruntime + cv2 + pyclipper + the standard library only (this file is copied into
every bundle as ``runtime/pipeline.py``).  The pipeline is the bundle's manifest made
executable: every setting (input names, sizes, thresholds, charset, threads, providers) comes
from ``manifest.json``, so the host's verify stage and the device run the same thing.

Steps of :meth:`OCRPipeline.predict`: ``detector_input`` -> detector -> ``db_boxes`` ->
``sort_reading_order`` -> ``crop_polygon`` per box -> recognizer over crops *sorted by their
resized width* in chunks of at most ``recognizer.batch`` whose padding stays within
``recognizer.max_padding`` (``batch_by_width``: padding is work, and it is what makes a batched
line differ from the same line alone) ->
CTC decoding limited to each crop's valid steps (greedy, or the beam search with the bundle's
language model when ``recognizer.decoder.type`` is ``lm``: engine/runtime/lm.py) -> lines whose text confidence is
below ``postprocess.min_text_score`` are dropped.  Lines whose text decodes empty are kept: the
box was still found (detection metrics count it), the caller sees ``text == ""``.

Backends.  onnxruntime everywhere, with the manifest's providers filtered to those this
onnxruntime build offers (CPU always last).  TensorRT targets (``runtime == "tensorrt"``) use
the engines built on the device (by the ship stage before the release went live, see
engine/deploy/tensorrt_remote.py, or by ``build_engine_*.sh``) when ``tensorrt`` and a CUDA binding
import; otherwise they fall back to onnxruntime with the TensorRT / CUDA execution providers
if available, else CPU.  :attr:`OCRPipeline.backend` says which ran, and it is logged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import onnxruntime as ort

from .bundle_manifest import BundleError, check_relpath, read_manifest, verify_bundle
from .geometry import crop_size, sub_quad, turned
from .lm import LMDecoder, LMError, load_lm
from .postprocess import crop_polygon, ctc_greedy_decode, db_boxes, sort_reading_order
from .preprocess import batch_by_width, detector_input, norm_of, recognizer_input, recognizer_widths
from .split import LineJoiner, LineSplitter, word_spans

LineRule = TypeVar("LineRule", LineSplitter, LineJoiner)

__all__ = [
    "OCRPipeline",
    "batch_by_width",
    "decode_image",
    "default_bundle_dir",
    "load_image",
    "predict_cli",
    "read_lines",
]

log = logging.getLogger("runtime.pipeline")
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """RGB uint8 in stored pixel order (EXIF ignored, as the data stage's labels are)."""
    return decode_image(np.fromfile(str(path), dtype=np.uint8), str(path))


def decode_image(data: np.ndarray, source: str) -> np.ndarray:
    """``load_image`` of a file's bytes already read (uint8 array); ``source`` names it in errors."""
    img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if img is None:
        raise ValueError(f"{source}: cannot decode image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def default_bundle_dir() -> Path | None:
    """The bundle this runtime was shipped in (runtime/ sits at the bundle root), if any."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "manifest.json").is_file() else None


def read_lines(
    run: Any, crops: Sequence[np.ndarray], charset: str, *, height: int, max_width: int, batch: int,
    max_padding: float, downsample: int, norm: dict[str, Any], decode: Any = ctc_greedy_decode,
) -> list[tuple[Any, ...]]:
    """Texts and confidences of ``crops``, in their order: ``run`` (N×3×H×W -> logits) over
    batches of similar width (``batch_by_width``), ``decode`` (greedy CTC unless given an
    ``LMDecoder``) limited to each crop's own columns.  Each item is what ``decode`` returns for
    its row: (text, confidence), + greedy's text from ``LMDecoder.with_greedy``.

    The one recognizer loop: the device pipeline and the host's int8 guard both read with it, so
    the guard scores batches made as the target makes them.
    """
    if not crops:
        return []
    widths = recognizer_widths(crops, height, max_width)
    results: list[tuple[Any, ...]] = [("", 0.0)] * len(crops)
    for chunk in batch_by_width(widths, batch, max_padding):
        logits = run(recognizer_input([crops[i] for i in chunk], height, max_width, **norm))
        decoded = decode(logits, charset, lengths=[widths[i] // downsample for i in chunk])
        for i, r in zip(chunk, decoded, strict=True):
            results[i] = r
    return results


# ------------------------------------------------------------------------------ backends


class _OrtModel:
    """One onnxruntime session; ``run(x)`` returns the first output.

    ``spin``: whether the session's worker threads busy-wait for work between operators
    (onnxruntime's default).  The pipeline runs two sessions in turn, each with its own pool; with
    spinning the detector's threads keep a core busy while the recognizer runs: on 2 cores the
    flagship's int8 bundle read a plate in 145-165 ms with it and 117-125 ms without, the same
    readings (``python bench/spin_threads.py``).
    """

    def __init__(self, path: Path, input_name: str, threads: int, providers: list[Any],
                 spin: bool = False):
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(0, int(threads))
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=providers)
        self.input_name = input_name
        self.providers = self.session.get_providers()

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[0]


class _TensorRTModel:
    """A TensorRT engine built on this device (TensorRT >= 8.5 tensor API, cuda-python for
    memory).  Untestable on the build host; kept minimal and only used when everything imports
    and the engine deserialises — any failure falls back to onnxruntime."""

    def __init__(self, engine_path: Path, input_name: str):
        import tensorrt as trt

        try:
            from cuda import cudart  # cuda-python < 12.8 layout
        except ImportError:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.8
        self.trt, self.cudart, self.input_name = trt, cudart, input_name
        logger = trt.Logger(trt.Logger.WARNING)
        engine = trt.Runtime(logger).deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise RuntimeError(f"{engine_path}: TensorRT cannot deserialise this engine")
        self.engine, self.context = engine, engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.output_name = next(
            n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT
        )
        self.providers = ["TensorRT"]

    def _check(self, result: Any) -> Any:
        err = result[0] if isinstance(result, tuple) else result
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err}")
        return result[1] if isinstance(result, tuple) and len(result) > 1 else None

    def run(self, x: np.ndarray) -> np.ndarray:
        cu, trt = self.cudart, self.trt
        x = np.ascontiguousarray(x, dtype=np.float32)
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        out_dtype = trt.nptype(self.engine.get_tensor_dtype(self.output_name))
        out = np.empty(out_shape, dtype=out_dtype)
        d_in = self._check(cu.cudaMalloc(x.nbytes))
        d_out = self._check(cu.cudaMalloc(out.nbytes))
        try:
            h2d, d2h = cu.cudaMemcpyKind.cudaMemcpyHostToDevice, cu.cudaMemcpyKind.cudaMemcpyDeviceToHost
            self._check(cu.cudaMemcpy(d_in, x.ctypes.data, x.nbytes, h2d))
            self.context.set_tensor_address(self.input_name, int(d_in))
            self.context.set_tensor_address(self.output_name, int(d_out))
            if not self.context.execute_async_v3(0):
                raise RuntimeError("TensorRT execution failed")
            self._check(cu.cudaMemcpy(out.ctypes.data, d_out, out.nbytes, d2h))
        finally:
            cu.cudaFree(d_in)
            cu.cudaFree(d_out)
        return out.astype(np.float32)


def _ort_providers(wanted: Sequence[str], gpu_first: bool, cache_dir: Path) -> list[Any]:
    """Wanted providers that this onnxruntime offers, CPU last; TensorRT EP gets fp16 + an
    engine cache inside the bundle (built once, reused on every start)."""
    available = set(ort.get_available_providers())
    names = [*_GPU_PROVIDERS, *wanted] if gpu_first else list(wanted)
    chosen: list[str] = []
    for name in [*names, "CPUExecutionProvider"]:
        if name in available and name not in chosen:
            chosen.append(name)
    out: list[Any] = []
    for name in chosen:
        if name == "TensorrtExecutionProvider":
            out.append((name, {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                               "trt_engine_cache_path": str(cache_dir)}))
        else:
            out.append(name)
    return out


# ------------------------------------------------------------------------------ pipeline


class OCRPipeline:
    """Detector + recognizer of one bundle.  ``precision`` picks a candidate (default: the
    manifest's active one), ``threads`` overrides the manifest's intra-op threads, ``verify``
    checks every file's sha256 first (raises BundleError naming the bad file), ``decoder``
    ``"greedy"`` reads without the bundle's language model and ``spin_threads`` overrides the
    manifest's (benchmarks compare the two).  ``greedy_alongside``: with a language model, each
    predicted line also carries ``greedy_text`` (what greedy CTC read; runtime.check reports it,
    so verify can compare the two on val at no extra inference)."""

    def __init__(
        self,
        bundle_dir: str | os.PathLike[str],
        precision: str | None = None,
        threads: int | None = None,
        verify: bool = True,
        decoder: str | None = None,
        spin_threads: bool | None = None,
        greedy_alongside: bool = False,
    ):
        self.bundle_dir = Path(bundle_dir)
        self.manifest = verify_bundle(self.bundle_dir) if verify else read_manifest(self.bundle_dir)
        m = self.manifest
        manifest_path = self.bundle_dir / "manifest.json"
        try:
            candidates = m["candidates"]
            self.precision = precision or m["precision"]
            self.charset: str = m["charset"]
            self.det_cfg: dict[str, Any] = m["detector"]
            self.rec_cfg: dict[str, Any] = m["recognizer"]
            self.post_cfg: dict[str, Any] = m["postprocess"]
        except KeyError as exc:
            raise BundleError(manifest_path, f"not an OCR bundle manifest: no {exc}") from None
        if self.precision not in candidates:
            raise BundleError(manifest_path, f"precision {self.precision!r} is not in this bundle "
                              f"(candidates: {', '.join(sorted(candidates))})")
        self.threads = int(threads if threads is not None else m.get("threads", 0) or 0)
        self.runtime = m.get("runtime", "onnxruntime")
        self.spin_threads = bool(m.get("spin_threads", False) if spin_threads is None else spin_threads)
        paths = {k: self.bundle_dir / v for k, v in candidates[self.precision].items()}
        self.detector, self.recognizer = self._load(paths)
        self.decode = self._decoder(decoder)
        self.splitter = self._line_rule("split_lines", LineSplitter)
        self.joiner = self._line_rule("join_lines", LineJoiner)
        self.greedy_alongside = greedy_alongside and isinstance(self.decode, LMDecoder)
        self.backend = f"{self.runtime}:{','.join(self._provider_names())}"
        log.info("bundle %s precision %s backend %s", self.bundle_dir, self.precision, self.backend)

    def _decoder(self, override: str | None) -> Any:
        """``ctc_greedy_decode``, or an ``LMDecoder`` over the bundle's language model file (its
        sha256 is in the manifest's decoder section, so an unverified pipeline checks it too)."""
        spec = self.rec_cfg.get("decoder") or {"type": "greedy"}  # bundles before decoders: greedy
        kind = override or spec.get("type")
        if kind == "greedy":
            return ctc_greedy_decode
        source = self.bundle_dir / "manifest.json"
        if kind != "lm":
            raise BundleError(source, f"recognizer.decoder: unknown type {kind!r} (known: greedy, lm)")
        if spec.get("type") != "lm":
            raise BundleError(source, "this bundle has no language model (recognizer.decoder is greedy)")
        try:
            problem = check_relpath(str(spec["file"]))
            if problem:
                raise BundleError(source, f"recognizer.decoder.file: {problem}")
            path = self.bundle_dir / str(spec["file"])
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != spec["sha256"]:
                raise BundleError(path, "sha256 differs from the manifest's recognizer.decoder.sha256")
            return LMDecoder(load_lm(data, str(path)), weight=float(spec["weight"]),
                             length_bonus=float(spec["length_bonus"]), beam=int(spec["beam"]))
        except KeyError as exc:
            raise BundleError(source, f"recognizer.decoder has no {exc}") from None
        except (OSError, LMError) as exc:
            raise BundleError(source, f"recognizer.decoder: {exc}") from None

    def _line_rule(self, name: str, kind: type[LineRule]) -> LineRule | None:
        """The decoder section's ``split_lines`` or ``join_lines`` (engine/runtime/split.py) as
        ``kind``, if the build wrote one."""
        doc = (self.rec_cfg.get("decoder") or {}).get(name)
        if doc is None:
            return None
        try:
            return kind.from_json(doc)
        except ValueError as exc:
            raise BundleError(self.bundle_dir / "manifest.json", f"recognizer.decoder.{exc}") from None

    def _split(self, pts: np.ndarray, crop: np.ndarray, text: str,
               plain: str | None) -> list[tuple[np.ndarray, str, str | None]]:
        """(box, text, greedy text) of each line a detected box becomes: itself, or one per part
        when ``split_lines`` says the labels keep its words apart (engine/runtime/split.py).  The
        words are placed by the recognizer's best path over this crop alone (one more call, for
        the few boxes that split); a vertical line, a polygon that is no quadrilateral, or a path
        that does not read as many words stays whole."""
        parts = self.splitter.parts(text) if self.splitter is not None else None
        if not parts or " " not in self.charset:  # every line of a plate passes here: cheap first
            return [(pts, text, plain)]
        quad = np.asarray(pts, dtype=np.float32).reshape(-1, 2)
        if len(quad) != 4 or turned(*crop_size(quad)):
            return [(pts, text, plain)]
        cfg = self.rec_cfg
        height, max_width = int(cfg["height"]), int(cfg["max_width"])
        steps = recognizer_widths([crop], height, max_width)[0] // int(cfg.get("downsample", 4))
        logits = self.recognizer.run(recognizer_input([crop], height, max_width, **norm_of(cfg)))
        words = text.split(" ")
        spans = word_spans(logits[0, :steps].argmax(axis=1), self.charset.index(" ") + 1, len(words))
        plains = plain.split(" ") if plain is not None else None
        if spans is None or (plains is not None and len(plains) != len(words)):
            return [(pts, text, plain)]
        lines, first = [], 0
        for part in parts:  # a part of n words: from its first word's start to its last word's end
            last = first + part.count(" ")
            greedy = " ".join(plains[first:last + 1]) if plains is not None else None
            lines.append((sub_quad(pts, spans[first][0], spans[last][1]), part, greedy))
            first = last + 1
        return lines

    def _provider_names(self) -> list[str]:
        names = []
        for model in (self.detector, self.recognizer):
            for p in model.providers:
                if p not in names:
                    names.append(p)
        return names

    def _load(self, paths: dict[str, Path]) -> tuple[Any, Any]:
        det_in, rec_in = str(self.det_cfg["input"]), str(self.rec_cfg["input"])
        if self.runtime == "tensorrt":
            trt_models = self._load_tensorrt(paths, {"detector": det_in, "recognizer": rec_in})
            if trt_models is not None:
                return trt_models
        providers = _ort_providers(self.manifest.get("providers") or [],
                                   self.runtime == "tensorrt", self.bundle_dir / "trt_cache")
        return (_OrtModel(paths["detector"], det_in, self.threads, providers, self.spin_threads),
                _OrtModel(paths["recognizer"], rec_in, self.threads, providers, self.spin_threads))

    def _load_tensorrt(self, paths: dict[str, Path], inputs: dict[str, str]) -> tuple[Any, Any] | None:
        """The engines at each plan's ``engine`` path in the bundle (where the ship stage's
        on-device build and build_engine_*.sh both write them), or None (logged why).

        An engine is used only when its plan was made from the selected candidate's ONNX (an
        fp16 engine must not stand in for ``--precision fp32``).  Engines are built on the
        device after install, so they are not in the manifest: trusting them is the device
        build's business (build_engine.sh writes to a temp name and renames on success).
        """
        plans = self.manifest.get("tensorrt") or {}
        candidate = self.manifest["candidates"][self.precision]
        engines = {}
        for name in ("detector", "recognizer"):
            plan = plans.get(name) or {}
            if plan.get("onnx") and plan["onnx"] != candidate[name]:
                log.warning("TensorRT plan for %s is for %s, not the %s candidate; using "
                            "onnxruntime", name, plan["onnx"], self.precision)
                return None
            rel = plan.get("engine")
            engine = self.bundle_dir / rel if rel else paths[name].with_suffix(".engine")
            if not engine.is_file():
                log.warning("TensorRT engine %s not built yet (run build_engine*.sh); "
                            "falling back to onnxruntime", engine)
                return None
            engines[name] = engine
        try:
            return (_TensorRTModel(engines["detector"], inputs["detector"]),
                    _TensorRTModel(engines["recognizer"], inputs["recognizer"]))
        except Exception as exc:  # ImportError, CUDA / deserialisation errors: use onnxruntime
            log.warning("TensorRT unavailable (%s: %s); falling back to onnxruntime",
                        type(exc).__name__, exc)
            return None

    # -------------------------------------------------------------------------- inference

    def detect(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """(points in original coordinates, box score) in reading order."""
        x, scale = detector_input(image, int(self.det_cfg["max_side"]), **norm_of(self.det_cfg))
        prob = self.detector.run(x)
        p = self.post_cfg
        shrink = p.get("shrink_ratio")  # exact inverse of the training label shrink when set
        boxes = db_boxes(prob[0, 0], scale, image.shape[:2], thresh=float(p["thresh"]),
                         box_thresh=float(p["box_thresh"]), unclip_ratio=float(p["unclip_ratio"]),
                         shrink_ratio=float(shrink) if shrink is not None else None)
        return sort_reading_order(boxes)

    def recognize(self, crops: Sequence[np.ndarray], decode: Any = None) -> list[tuple[Any, ...]]:
        """Texts and confidences of ``crops``, in their order; batched by resized width.
        ``decode``: another decoder for this call (default: the bundle's)."""
        cfg = self.rec_cfg
        return read_lines(self.recognizer.run, crops, self.charset, height=int(cfg["height"]),
                          max_width=int(cfg["max_width"]), batch=int(cfg.get("batch", 8)),
                          # bundles before max_padding padded every batch to its widest crop
                          max_padding=float(cfg.get("max_padding", 1.0)),
                          downsample=int(cfg.get("downsample", 4)),  # input columns per CTC step
                          norm=norm_of(cfg), decode=decode or self.decode)

    def predict(self, image_rgb_uint8: np.ndarray) -> list[dict[str, Any]]:
        """[{"points": [[x, y], ...], "text", "score" (text confidence), "box_score"}] in
        reading order, lines below ``min_text_score`` dropped.  With the decoder's
        ``split_lines``, a box read as words the labels keep apart becomes one line per part; with
        ``join_lines``, boxes along one line that the labels keep together become one line."""
        image = np.asarray(image_rgb_uint8)
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        boxes = self.detect(image)
        crops = [crop_polygon(image, pts) for pts, _ in boxes]
        texts = self.recognize(crops, self.decode.with_greedy if self.greedy_alongside else None)
        min_score = float(self.post_cfg.get("min_text_score", 0.0))
        lines = []
        for (pts, box_score), crop, (text, score, *greedy) in zip(boxes, crops, texts, strict=True):
            if score < min_score:
                continue
            for quad, part, plain_part in self._split(pts, crop, text, greedy[0] if greedy else None):
                line = {
                    "points": [[round(float(x), 2), round(float(y), 2)] for x, y in quad],
                    "text": part,
                    "score": round(float(score), 4),
                    "box_score": round(float(box_score), 4),
                }
                if plain_part is not None:
                    line["greedy_text"] = plain_part
                lines.append(line)
        return self.joiner.join(lines) if self.joiner is not None else lines

    def timed_predict(self, image_rgb_uint8: np.ndarray) -> tuple[list[dict[str, Any]], float]:
        """(predict's lines, wall-clock latency in milliseconds)."""
        t0 = time.perf_counter()
        lines = self.predict(image_rgb_uint8)
        return lines, (time.perf_counter() - t0) * 1000.0

    def predict_path(self, path: str | os.PathLike[str]) -> list[dict[str, Any]]:
        return self.predict(load_image(path))


# ------------------------------------------------------------------------------ CLI


def pipeline_from_args(args: Any, prog: str) -> OCRPipeline | int:
    """The pipeline named by ``--bundle/--precision/--threads/--no-verify`` (or the bundle this
    runtime sits in), or the exit code after printing why it cannot be opened."""
    bundle = Path(args.bundle) if args.bundle else default_bundle_dir()
    if bundle is None:
        print(f"{prog}: no --bundle given and this runtime is not inside a bundle", file=sys.stderr)
        return 2
    try:
        return OCRPipeline(bundle, args.precision, args.threads, verify=not args.no_verify)
    except BundleError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1


def predict_cli(argv: Sequence[str] | None = None) -> int:
    """``python -m runtime.predict IMAGE... [--bundle DIR] [--precision P] [--json]``.

    --json prints [{"image", "lines": [{"points", "text", "score", "box_score"}], "latency_ms"}];
    without it one ``IMAGE<TAB>text<TAB>score`` line per text line.  Exit 1 on a bad bundle, or
    after all images when one could not be read (its entry has "error"; message on stderr),
    2 on usage errors.
    """
    ap = argparse.ArgumentParser(prog="runtime.predict", description="Read text in images.")
    ap.add_argument("images", nargs="+", help="image files")
    ap.add_argument("--bundle", help="bundle directory (default: the one this runtime is in)")
    ap.add_argument("--precision", help="candidate precision (default: the bundle's active one)")
    ap.add_argument("--threads", type=int, help="intra-op threads (default: the manifest's)")
    ap.add_argument("--json", action="store_true", help="print JSON")
    ap.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the bundle")
    args = ap.parse_args(list(argv) if argv is not None else None)
    pipe = pipeline_from_args(args, "runtime.predict")
    if isinstance(pipe, int):
        return pipe
    results: list[dict[str, Any]] = []
    status = 0
    for path in args.images:
        try:
            image = load_image(path)
        except (OSError, ValueError) as exc:  # report it, go on with the other images
            print(f"runtime.predict: {exc}", file=sys.stderr)
            results.append({"image": str(path), "error": str(exc), "lines": []})
            status = 1
            continue
        lines, ms = pipe.timed_predict(image)
        results.append({"image": str(path), "lines": lines, "latency_ms": round(ms, 2)})
        if not args.json:
            for line in lines:
                print(f"{path}\t{line['text']}\t{line['score']:.3f}")
    if args.json:
        print(json.dumps(results, ensure_ascii=False))
    return status
