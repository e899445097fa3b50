"""PP-OCRv6 small as trainable torch modules: conversion parity with the rapidocr wheel's ONNX,
the charset cut, the conversion cache and the registry entries.

The parity checks feed both sides the same inputs, made by this project's own pre-processing
with the registry's input convention (BGR, [-1, 1]), from generated nameplates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from engine.data.synth.generator import generate_sample
from engine.models import build_detector, build_recognizer, input_spec
from engine.models.ppocr.convert import (
    PretrainedError,
    dictionary,
    find_onnx,
    load_onnx_weights,
)
from engine.models.registry import ModelConfigError
from engine.runtime.postprocess import crop_polygon, ctc_greedy_decode
from engine.runtime.preprocess import detector_input, norm_of, recognizer_input, recognizer_widths
from engine.training import pretrained

DET_NORM = norm_of(input_spec("detector", "ppocrv6"))
REC = input_spec("recognizer", "ppocrv6")


@pytest.fixture(scope="module")
def plates() -> list[tuple[np.ndarray, list[dict]]]:
    """20 generated nameplates (a fixed seed) and their labelled lines."""
    rng = np.random.default_rng(20261202)
    return [generate_sample(rng) for _ in range(20)]  # type: ignore[misc]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv(pretrained.CACHE_ENV, str(root))
    yield root
    mp.undo()


def _session(kind: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(find_onnx(kind).path), so, providers=["CPUExecutionProvider"])


def test_detector_reproduces_the_wheels_onnx_on_20_images(plates, cache) -> None:
    from engine.training.tasks import model_from_checkpoint

    det, meta = model_from_checkpoint(pretrained.pretrained_checkpoint("detector"))
    assert meta["arch"] == "ppocrv6" and meta["pretrained"]["max_abs_diff"] <= pretrained.PARITY_ATOL
    session = _session("detector")
    worst = 0.0
    for image, _ in plates:
        x, _ = detector_input(image, 640, **DET_NORM)
        ref = session.run(None, {"x": x})[0]
        with torch.no_grad():
            out = det(torch.from_numpy(x)).numpy()
        worst = max(worst, float(np.abs(ref - out).max()))
    assert worst <= 1e-3, worst


def test_recognizer_reads_what_the_wheels_onnx_reads(plates, cache) -> None:
    """Same text on >= 99.5 % of the ground-truth line crops (full 18,710-class head)."""
    from engine.training.tasks import model_from_checkpoint

    rec, meta = model_from_checkpoint(pretrained.pretrained_checkpoint("recognizer"))
    charset = meta["charset"]
    assert len(charset) + 1 == meta["num_classes"] == 18710
    session = _session("recognizer")
    crops = [crop_polygon(img, np.asarray(ln["points"], np.float32))
             for img, lines in plates for ln in lines if not ln["ignore"]]
    assert len(crops) >= 150, len(crops)
    same = 0
    for start in range(0, len(crops), 16):
        chunk = crops[start : start + 16]
        x = recognizer_input(chunk, 48, 960, **norm_of(REC))
        lengths = [w // REC["downsample"] for w in recognizer_widths(chunk, 48, 960)]
        ref = ctc_greedy_decode(session.run(None, {"x": x})[0], charset, lengths=lengths, is_probs=True)
        with torch.no_grad():
            mine = ctc_greedy_decode(rec(torch.from_numpy(x)).numpy(), charset, lengths=lengths)
        same += sum(a[0] == b[0] for a, b in zip(ref, mine, strict=True))
    assert same / len(crops) >= 0.995, (same, len(crops))


def test_the_charset_cut_equals_the_full_head_masked_to_the_charset(cache, tmp_path) -> None:
    """Cutting the classifier keeps blank + the recipe's rows: logits are the full model's at
    those indices, so it can emit nothing else; characters the dictionary lacks get new rows."""
    from engine.training.pretrained import remap_charset
    from engine.training.tasks import model_from_checkpoint

    full_path = pretrained.pretrained_checkpoint("recognizer")
    full, meta = model_from_checkpoint(full_path)
    charset = "0123456789ABC-:/ \u16a0"  # a rune: not in PaddleOCR's dictionary
    cut_path, counts = remap_charset(str(full_path), charset, tmp_path / "cut.pt")
    assert counts == {"kept": len(charset) - 1, "new": 1, "new_chars": "\u16a0"}
    cut, cut_meta = model_from_checkpoint(cut_path)
    assert cut_meta["num_classes"] == len(charset) + 1 and cut.classifier.out_features == len(charset) + 1
    x = torch.randn(2, 3, 48, 96)
    with torch.no_grad():
        a, b = full(x), cut(x)
    rows = [0] + [meta["charset"].index(c) + 1 for c in charset[:-1]]
    assert torch.allclose(a[..., rows], b[..., : len(charset)], atol=1e-5)


def test_conversion_is_cached_and_a_corrupt_entry_is_converted_again(cache) -> None:
    first = pretrained.pretrained_checkpoint("detector")
    stamp = first.stat().st_mtime_ns
    assert pretrained.pretrained_checkpoint("detector") == first
    assert first.stat().st_mtime_ns == stamp  # reused, not converted again
    first.write_bytes(first.read_bytes()[:-10])  # a torn copy
    again = pretrained.pretrained_checkpoint("detector")
    assert again == first and first.stat().st_mtime_ns != stamp
    from engine.training.checkpoint import verify_checkpoint

    verify_checkpoint(again)


def test_a_module_that_does_not_fit_the_graph_is_refused() -> None:
    wrong = build_recognizer("ppocrv6", "svtr", num_classes=77, height=48)
    with pytest.raises(PretrainedError, match=r"classifier\.weight is"):
        load_onnx_weights(wrong, find_onnx("recognizer"))
    with pytest.raises(PretrainedError, match="weight layers in the graph"):
        load_onnx_weights(build_detector("ppocrv6"), find_onnx("recognizer"))


def test_the_dictionary_is_the_metadata_plus_a_space() -> None:
    chars = dictionary(find_onnx("recognizer"))
    assert len(chars) == 18709 and chars[-1] == " " and len(set(chars)) == len(chars)
    assert all(len(c) == 1 for c in chars)


def test_the_recognizer_reads_32_pixel_lines_with_the_same_weights() -> None:
    """Height 32 (the flagship's) is the pretrained network on smaller lines: the same
    parameters, T = W / 8 steps; heights the registry does not list are refused by name."""
    tall = build_recognizer("ppocrv6", "svtr", num_classes=77, height=48)
    short = build_recognizer("ppocrv6", "svtr", num_classes=77, height=32)
    short.load_state_dict(tall.state_dict())  # strict: nothing depends on the height
    with torch.no_grad():
        assert short.eval()(torch.zeros(2, 3, 32, 160)).shape == (2, 20, 77)
    with pytest.raises(ModelConfigError, match=r"height must be one of \[32, 48\], got 40"):
        build_recognizer("ppocrv6", "svtr", num_classes=77, height=40)
