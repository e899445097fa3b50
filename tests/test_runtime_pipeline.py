"""The device pipeline: output structure, reading order, width batching, the CLIs.

Reading order and batching are checked end to end with two tiny hand-written ONNX models whose
behaviour is known exactly (real onnxruntime sessions, no mocks):

* detector: prob = sigmoid(10·(R_norm − 1)) — red pixels are text, black is background;
* recognizer: non-overlapping 32×4 windows (so batch padding cannot touch valid steps), each
  window's logits = K·(u_c·G + v_c·R) (pixel values /127.5): the hue angle atan(G/R) picks the
  character, independent of how much black is blended in at a box's edges; blank wins on black.

A box painted (255, G, 0) therefore reads as the one letter of its G level.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_bundle import ROOT, export_small_models, small_bundle

from engine.deploy.bundle import build_bundle
from engine.runtime import check
from engine.runtime.bundle_manifest import BundleError
from engine.runtime.lm import CharNgram, LMDecoder, save_lm
from engine.runtime.pipeline import OCRPipeline, batch_by_width, predict_cli
from engine.runtime.postprocess import ctc_greedy_decode
from engine.runtime.split import LineJoiner, LineSplitter

LEVELS = {"A": 40, "B": 100, "C": 170, "D": 240}  # G value per letter, R = 255
CHARSET = "".join(LEVELS)


def _detector_onnx(path: Path) -> Path:
    w = np.zeros((1, 3, 1, 1), np.float32)
    w[0, 0] = 10.0
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["z"]),
         helper.make_node("Sigmoid", ["z"], ["prob"])],
        "hand_detector",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["n", 1, "h", "w"])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([-10.0], np.float32), "b")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _recognizer_onnx(path: Path, height: int = 32, k: float = 5.0, space: bool = False) -> Path:
    """``space``: one more class, a space that beats the blank on black (charset ``CHARSET + " "``),
    so a box over two letters with black between reads ``"B D"``."""
    classes = len(CHARSET) + 1 + space
    w = np.zeros((classes, 3, height, 4), np.float32)
    b = np.zeros(classes, np.float32)
    b[0] = k * 0.5  # blank: beats every letter once the window is mostly black
    if space:
        b[-1] = k * 0.6
    for c, g in enumerate(LEVELS.values(), start=1):
        theta = np.arctan2(g, 255.0)
        u, v = np.sin(theta), np.cos(theta)  # unit direction in (G, R)
        w[c, 1], w[c, 0] = k * u / (height * 4), k * v / (height * 4)
        b[c] = k * (u + v)  # input is value/127.5 - 1: the +1 folded into the bias
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["z"], strides=[height, 4]),
         helper.make_node("Squeeze", ["z", "axes"], ["s"]),
         helper.make_node("Transpose", ["s"], ["logits"], perm=[0, 2, 1])],
        "hand_recognizer",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, height, "w"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", "t", classes])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
         numpy_helper.from_array(np.array([2], np.int64), "axes")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def make_hand_bundle(d: Path, name: str = "hand", min_text_score: float = 0.0,
                     lm_texts: list[str] | None = None, split_words: list[str] | None = None,
                     join_labels: list[str] | None = None) -> Path:
    """A real bundle around the hand-built ONNX models (also used by the serve/prelabel tests);
    ``lm_texts``: read with a language model of these lines, as `models.decoder.type: lm` builds;
    ``split_words``: a recognizer that reads spaces, and `models.decoder.split_lines` of these words;
    ``join_labels``: `models.decoder.join_lines` of these labels."""
    space = split_words is not None
    models = {"fp32": {"detector": _detector_onnx(d / "det.onnx"),
                       "recognizer": _recognizer_onnx(d / "rec.onnx", space=space)}}
    decoder: dict[str, object] = {"type": "greedy"}
    if split_words is not None:
        decoder["split_lines"] = LineSplitter(split_words, [], 1).to_json()
    if join_labels is not None:
        decoder["join_lines"] = LineJoiner(join_labels, [], [], [], 1).to_json()
    extra = {}
    if lm_texts is not None:
        data = save_lm(CharNgram.fit(lm_texts, CHARSET, order=4, min_context=1))
        (d / "lm.json").write_bytes(data)
        extra = {"lm.json": d / "lm.json"}
        decoder = {"type": "lm", "file": "lm.json", "sha256": hashlib.sha256(data).hexdigest(),
                   "weight": 0.3, "length_bonus": 0.6, "beam": 8}
    return build_bundle(
        d / "bundle", models=models, active="fp32", charset=CHARSET + " " * space,
        detector={"input": "input", "max_side": 256},
        recognizer={"input": "input", "height": 32, "max_width": 256, "batch": 2, "max_padding": 1.0,
                    "decoder": decoder},
        postprocess={"thresh": 0.3, "box_thresh": 0.5, "unclip_ratio": 0.1,
                     "min_text_score": min_text_score},
        threads=1, providers=["CPUExecutionProvider"], runtime="onnxruntime", target="local-cpu",
        arch="x86_64", recipe={"name": name, "hash": "1" * 16}, extra_files=extra,
    )


@pytest.fixture(scope="module")
def hand_bundle(tmp_path_factory) -> Path:
    return make_hand_bundle(tmp_path_factory.mktemp("hand"))


def _plate() -> tuple[np.ndarray, str]:
    """Three lines; the second box of line 1 sits a little lower (skew), line 2 is written
    right-to-left in drawing order, so neither y-sorting nor drawing order gives reading order."""
    img = np.zeros((160, 256, 3), np.uint8)
    boxes = [  # (letter, x0, y0, x1, y1) in drawing order
        ("A", 150, 80, 220, 104), ("C", 20, 84, 120, 108),   # line 2: C A
        ("D", 120, 26, 230, 50), ("B", 20, 20, 90, 44),      # line 1: B D
        ("A", 60, 128, 100, 148),                            # line 3: A
    ]
    for letter, x0, y0, x1, y1 in boxes:
        img[y0:y1, x0:x1] = (255, LEVELS[letter], 0)
    return img, "BDCAA"


def test_predict_structure_and_reading_order(hand_bundle):
    pipe = OCRPipeline(hand_bundle)
    img, expected = _plate()
    lines = pipe.predict(img)
    assert "".join(line["text"] for line in lines) == expected
    for line in lines:
        assert set(line) >= {"points", "text", "score"}
        assert len(line["points"]) == 4 and all(len(p) == 2 for p in line["points"])
        assert 0.0 <= line["score"] <= 1.0
    json.dumps(lines)  # plain JSON types only
    # boxes land on the painted rectangles (tiny unclip): first line's first box is B's
    xs = [p[0] for p in lines[0]["points"]]
    ys = [p[1] for p in lines[0]["points"]]
    assert abs(min(xs) - 20) < 3 and abs(max(xs) - 90) < 3 and abs(min(ys) - 20) < 3
    # min_text_score drops lines, timed_predict measures
    strict = OCRPipeline(hand_bundle, verify=False)
    strict.post_cfg = {**strict.post_cfg, "min_text_score": 1.01}
    assert strict.predict(img) == []
    again, ms = pipe.timed_predict(img)
    assert again == lines and ms > 0
    assert pipe.predict(np.zeros((50, 80, 3), np.uint8)) == []  # nothing to read


def test_batching_by_width_matches_one_by_one(hand_bundle):
    img, _ = _plate()
    batched = OCRPipeline(hand_bundle)
    single = OCRPipeline(hand_bundle)
    single.rec_cfg = {**single.rec_cfg, "batch": 1}
    crops = [img[y0:y1, x0:x1] for x0, y0, x1, y1 in
             [(150, 80, 220, 104), (20, 84, 120, 108), (120, 26, 230, 50), (60, 128, 100, 148),
              (20, 20, 90, 44)]]
    a, b = batched.recognize(crops), single.recognize(crops)
    assert [t for t, _ in a] == [t for t, _ in b] == ["A", "C", "D", "A", "B"]
    assert np.allclose([s for _, s in a], [s for _, s in b], atol=1e-5)
    assert batch_by_width([30, 10, 20, 10], 2) == [[1, 3], [2, 0]]
    assert batch_by_width([], 4) == [] and batch_by_width([5], 0) == [[0]]


def test_worker_threads_spin_only_when_the_manifest_says_so(hand_bundle, tmp_path):
    """onnxruntime's busy-waiting workers are off unless the target profile turns them on
    (``spin_threads``): the detector's and the recognizer's pools share the device's cores."""
    def spinning(pipe: OCRPipeline) -> list[str]:
        return [m.session.get_session_options().get_session_config_entry(
            "session.intra_op.allow_spinning") for m in (pipe.detector, pipe.recognizer)]

    img, text = _plate()
    quiet = OCRPipeline(hand_bundle)
    assert "spin_threads" not in quiet.manifest and spinning(quiet) == ["0", "0"]
    manifest = json.loads((hand_bundle / "manifest.json").read_text())
    spun = tmp_path / "spun"
    shutil.copytree(hand_bundle, spun)
    (spun / "manifest.json").write_text(json.dumps({**manifest, "spin_threads": True}))
    busy = OCRPipeline(spun, verify=False)
    assert spinning(busy) == ["1", "1"]
    assert "".join(line["text"] for line in busy.predict(img)) == text
    assert busy.predict(img) == quiet.predict(img)
    assert spinning(OCRPipeline(spun, verify=False, spin_threads=False)) == ["0", "0"]
    assert spinning(OCRPipeline(hand_bundle, spin_threads=True)) == ["1", "1"]


def test_language_model_bundle_reads_with_it_and_guards_its_file(tmp_path):
    """A bundle built with `models.decoder.type: lm` reads through the beam search (confident
    lines as greedy reads them); `decoder="greedy"` turns it off; a changed lm.json is refused
    by the bundle check and, unverified, by the decoder's own sha256."""
    img, expected = _plate()
    bundle = make_hand_bundle(tmp_path, lm_texts=["B", "D", "C", "A"])  # each box holds one letter
    pipe = OCRPipeline(bundle)
    assert isinstance(pipe.decode, LMDecoder)
    assert "".join(line["text"] for line in pipe.predict(img)) == expected
    assert OCRPipeline(bundle, decoder="greedy").decode is ctc_greedy_decode
    # runtime.check's view: both readings of each line from one recognizer pass
    both = OCRPipeline(bundle, greedy_alongside=True).predict(img)
    plain = OCRPipeline(bundle, decoder="greedy").predict(img)
    assert [ln["greedy_text"] for ln in both] == [ln["text"] for ln in plain]
    assert [ln["text"] for ln in both] == [ln["text"] for ln in pipe.predict(img)]
    assert all("greedy_text" not in ln for ln in
               OCRPipeline(bundle, decoder="greedy", greedy_alongside=True).predict(img))
    with pytest.raises(BundleError, match="unknown type 'beam'"):
        OCRPipeline(bundle, decoder="beam")
    lm_file = bundle / "lm.json"
    lm_file.write_bytes(lm_file.read_bytes() + b" ")  # still valid JSON, not the file that was built
    with pytest.raises(BundleError, match=r"lm\.json"):
        OCRPipeline(bundle)
    with pytest.raises(BundleError, match=r"sha256 differs"):
        OCRPipeline(bundle, verify=False)
    (tmp_path / "plain").mkdir()
    plain = make_hand_bundle(tmp_path / "plain")
    assert OCRPipeline(plain).decode is ctc_greedy_decode
    with pytest.raises(BundleError, match="no language model"):
        OCRPipeline(plain, decoder="lm")


def test_a_box_over_words_the_labels_keep_apart_becomes_one_line_each(tmp_path):
    """`split_lines`: a red bridge makes the detector box B and D together; the recognizer reads
    "B D" (black between them is a space), both are whole labels, so two lines come back, each
    box over its own letter. A reading with a word outside the list stays one line."""
    img = np.zeros((80, 256, 3), np.uint8)
    img[20:44, 20:80] = (255, LEVELS["B"], 0)
    img[20:44, 150:210] = (255, LEVELS["D"], 0)
    img[31:33, 80:150] = (255, 0, 0)  # thin enough that the recognizer sees black there
    (tmp_path / "split").mkdir()
    (tmp_path / "whole").mkdir()
    bundle = make_hand_bundle(tmp_path / "split", split_words=["B", "D"])
    whole = make_hand_bundle(tmp_path / "whole", split_words=["B"])  # D is not a word of its own
    assert [ln["text"] for ln in OCRPipeline(whole).predict(img)] == ["B D"]
    lines = OCRPipeline(bundle).predict(img)
    assert [ln["text"] for ln in lines] == ["B", "D"]
    (b_x0, b_x1), (d_x0, d_x1) = [(min(x for x, _ in ln["points"]), max(x for x, _ in ln["points"]))
                                  for ln in lines]
    assert b_x0 <= 22 and 80 <= b_x1 < 150 and 80 < d_x0 <= 152 and d_x1 >= 208
    assert b_x1 == pytest.approx(d_x0, abs=1)  # cut once, in the gap
    assert lines[0]["score"] == lines[1]["score"]  # the confidence of the box they came from
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["recognizer"]["decoder"]["split_lines"]["words"] = "B D"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"recognizer\.decoder\.split_lines\.words: not a list"):
        OCRPipeline(bundle, verify=False)


def test_boxes_along_one_line_that_read_as_a_label_become_one_line(tmp_path):
    """`join_lines`: the plate's second row is two boxes, C and A, 30 px apart on one line; with
    "C A" among the labels they come back as one line in C's place, over both boxes, at the lower
    confidence. B and D (also one row, "B D" no label) and the lone A stay as they were."""
    img, _ = _plate()
    (tmp_path / "joined").mkdir()
    (tmp_path / "plain").mkdir()
    bundle = make_hand_bundle(tmp_path / "joined", join_labels=["C A", "A C"])
    apart = OCRPipeline(make_hand_bundle(tmp_path / "plain")).predict(img)
    lines = OCRPipeline(bundle).predict(img)
    assert [ln["text"] for ln in lines] == ["B", "D", "C A", "A"]
    xs, ys = [x for x, _ in lines[2]["points"]], [y for _, y in lines[2]["points"]]
    assert min(xs) <= 22 and max(xs) >= 218 and min(ys) <= 82 and max(ys) >= 106
    assert lines[2]["score"] == min(ln["score"] for ln in apart[2:4])
    assert lines[:2] == apart[:2] and lines[3] == apart[4]
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["recognizer"]["decoder"]["join_lines"]["labels"] = ["CA"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"recognizer\.decoder\.join_lines\.labels: a label of one word"):
        OCRPipeline(bundle, verify=False)


def test_batch_by_width_bounds_padding():
    """max_padding closes a batch before the crop that would make it mostly padding; each
    batch then computes at most that share of padded columns."""
    widths = [40, 48, 200, 48, 56, 64, 208, 640]
    assert batch_by_width(widths, 16) == [[0, 1, 3, 4, 5, 2, 6, 7]]  # 1.0: pad to the widest
    chunks = batch_by_width(widths, 16, 0.3)
    assert chunks == [[0, 1, 3, 4, 5], [2, 6], [7]]
    for chunk in chunks:
        computed = max(widths[i] for i in chunk) * len(chunk)
        assert computed - sum(widths[i] for i in chunk) <= 0.3 * computed
    assert batch_by_width(widths, 2, 0.3) == [[0, 1], [3, 4], [5], [2, 6], [7]]
    assert batch_by_width(widths, 16, 0.0) == [[0], [1, 3], [4], [5], [2], [6], [7]]


def test_real_models_predict_and_clis(tmp_path):
    """Untrained exported models: the documented structure, predict_cli and runtime.check."""
    bundle = small_bundle(tmp_path / "bundle", {"fp32": export_small_models(tmp_path / "m")})
    pipe = OCRPipeline(bundle)
    image = bundle / "val" / json.loads((bundle / "val/labels.jsonl").read_text().splitlines()[0])["image"]
    lines = pipe.predict_path(image)
    assert lines  # the bundle's low threshold makes even an untrained detector find blobs
    for line in lines:
        assert isinstance(line["text"], str) and set(line["text"]) <= set(pipe.charset)
        assert len(line["points"]) == 4
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert predict_cli([str(image), "--bundle", str(bundle), "--json"]) == 0
    doc = json.loads(out.getvalue())
    assert doc[0]["image"] == str(image) and doc[0]["lines"] == lines and doc[0]["latency_ms"] > 0
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert predict_cli(["--bundle", str(bundle), str(tmp_path / "missing.jpg"), str(image),
                            "--json"]) == 1
    doc = json.loads(out.getvalue())
    assert "error" in doc[0] and doc[1]["lines"] == lines
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert check.main(["--bundle", str(bundle), "--limit", "2", "--runs", "2"]) == 0
    res = json.loads(out.getvalue())
    assert [p["image"] for p in res["predictions"]] == ["plate_4.jpg", "plate_1.jpg"]
    assert res["latency_ms"]["runs"] == 4 and res["latency_ms"]["p90"] >= res["latency_ms"]["p50"]
    assert res["peak_rss_mb"] > 10 and res["precision"] == "fp32"
    assert set(res["versions"]) >= {"python", "onnxruntime", "numpy", "cv2", "machine"}
    # as on a device: cwd = bundle, the bundle's own copy of the runtime, default bundle dir
    run = subprocess.run([sys.executable, "-m", "runtime.predict", "val/images/plate_4.jpg", "--json"],
                         cwd=bundle, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)[0]["lines"] == lines
    (bundle / "requirements.txt").write_text("torch\n")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert check.main(["--bundle", str(bundle)]) == 1
    err = json.loads(out.getvalue())
    assert "requirements.txt" in err["error"] and err["problems"]


def test_tensorrt_bundle_falls_back_to_onnxruntime(tmp_path, caplog):
    """No TensorRT / GPU here: a tensorrt bundle still runs, on onnxruntime CPU, and says why."""
    models = {"detector": _detector_onnx(tmp_path / "det.onnx"),
              "recognizer": _recognizer_onnx(tmp_path / "rec.onnx")}
    plans = {m: {"onnx": f"models/fp16/{m}.onnx", "engine": f"models/fp16/{m}.engine"}
             for m in models}
    bundle = build_bundle(
        tmp_path / "bundle", models={"fp32": models, "fp16": models}, active="fp16",
        charset=CHARSET, detector={"input": "input", "max_side": 256},
        recognizer={"input": "input", "height": 32, "max_width": 256, "batch": 4, "max_padding": 1.0},
        postprocess={"thresh": 0.3, "box_thresh": 0.5, "unclip_ratio": 0.1, "min_text_score": 0.0},
        threads=1, providers=["CUDAExecutionProvider", "CPUExecutionProvider"], runtime="tensorrt",
        target="jetson-orin-nano", arch="aarch64", recipe={"name": "hand", "hash": "2" * 16},
        extra_meta={"tensorrt": plans},
    )
    img, expected = _plate()
    with caplog.at_level("WARNING", logger="runtime.pipeline"):
        pipe = OCRPipeline(bundle)
    assert "not built yet" in caplog.text
    assert pipe.backend == "tensorrt:CPUExecutionProvider"
    assert "".join(ln["text"] for ln in pipe.predict(img)) == expected
    for m in models:  # engine files present (as if built) but no tensorrt module here
        (bundle / plans[m]["engine"]).write_bytes(b"not an engine")
    caplog.clear()
    with caplog.at_level("WARNING", logger="runtime.pipeline"):
        pipe = OCRPipeline(bundle)  # engines are device-built files outside the manifest
    assert "TensorRT unavailable" in caplog.text and pipe.backend.endswith("CPUExecutionProvider")
    caplog.clear()
    with caplog.at_level("WARNING", logger="runtime.pipeline"):
        OCRPipeline(bundle, precision="fp32")
    assert "not the fp32 candidate" in caplog.text


ALLOWED = {"numpy", "onnxruntime", "cv2", "pyclipper", "tensorrt", "cuda"}
SERVE_ALLOWED = {"fastapi", "starlette", "uvicorn"}  # serve*.py only (requirements-serve.txt)


def test_runtime_imports_only_device_dependencies():
    """engine/runtime is copied onto devices: stdlib + numpy/onnxruntime/cv2/pyclipper only
    (tensorrt / cuda-python are optional, imported lazily by the TensorRT backend)."""
    for path in sorted((ROOT / "engine" / "runtime").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: stays inside the runtime package
                    continue
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                extra = SERVE_ALLOWED if path.name.startswith("serve") else set()
                assert top in ALLOWED | extra or top in sys.stdlib_module_names, f"{path.name}: {name}"
