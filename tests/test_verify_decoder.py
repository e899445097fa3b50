"""verify's language-model guard (engine/stages/verify.py ``_choose_decoder``): a bundle keeps
its language model only when it reads at least as many val lines as greedy CTC on the same boxes.

The reports are runtime.check's shape (each line with ``text`` and ``greedy_text``, as
``OCRPipeline(greedy_alongside=True)`` writes them: tests/test_runtime_pipeline.py), scored by
the real metrics."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from engine.stages.verify import _choose_decoder
from engine.training.metrics import score_predictions

SPLIT = {"min_count": 20, "words": ["CE", "UL"], "joined": []}
JOIN = {"min_count": 5, "labels": ["MADE IN POLAND"], "whole": []}
LM = {"type": "lm", "file": "lm.json", "sha256": "0" * 64, "order": 6, "weight": 0.3, "split_lines": SPLIT,
      "join_lines": JOIN}
TRUTH = ["MODEL NO. 4410", "SERIAL 77", "50 Hz", "IP55"]


def _box(k: int) -> list[list[float]]:
    y = 20.0 * k
    return [[0.0, y], [100.0, y], [100.0, y + 10.0], [0.0, y + 10.0]]


def _labels() -> dict[str, list[dict[str, Any]]]:
    return {"a.jpg": [{"points": _box(k), "text": t} for k, t in enumerate(TRUTH)]}


def _report(lm_texts: list[str], greedy_texts: list[str] | None) -> dict[str, Any]:
    lines = []
    for k, text in enumerate(lm_texts):
        line = {"points": _box(k), "text": text, "score": 0.9, "box_score": 0.9}
        if greedy_texts is not None:
            line["greedy_text"] = greedy_texts[k]
        lines.append(line)
    return {"predictions": [{"image": "a.jpg", "lines": lines}],
            "latency_ms": {"p50": 10.0, "p90": 12.0}, "peak_rss_mb": 100.0}


def _choose(reports: dict[str, dict[str, Any]], spec: dict[str, Any] = LM):
    meta = {"recognizer": {"height": 32, "decoder": copy.deepcopy(spec)}}
    results = {p: score_predictions(r, _labels()) for p, r in reports.items()}
    return _choose_decoder(meta, reports, results, _labels()), results


def test_a_language_model_that_reads_more_lines_stays():
    fixed = ["MODEL NO. 4410", "SERIAL 77", "50 Hz", "IP55"]
    raw = ["M0DEL NO. 4410", "SERIAL 77", "50 HZ", "IP55"]
    decoder, results = _choose({"fp32": _report(fixed, raw), "int8": _report(fixed, raw)})
    assert decoder == LM
    assert results["int8"]["e2e_line_accuracy"] == 1.0
    assert results["int8"]["greedy_e2e_line_accuracy"] == 0.5


def test_a_tie_keeps_what_the_recipe_asked_for():
    one_each = ["MODEL NO. 4410", "SERIAL 7", "50 Hz", "IP55"]
    other = ["MODEL NO. 441O", "SERIAL 77", "50 Hz", "IP55"]
    decoder, _ = _choose({"fp32": _report(one_each, other)})
    assert decoder == LM


def test_a_language_model_that_loses_lines_is_dropped_with_both_numbers():
    hurt = ["MODEL NO. 4410", "SERIAL 7", "5O Hz", "IP55"]  # the model "corrected" two lines
    decoder, results = _choose({"fp32": _report(hurt, TRUTH), "int8": _report(hurt, [*TRUTH[:3], "IP5"])})
    assert decoder["type"] == "greedy" and decoder["split_lines"] == SPLIT  # splitting is not the model's
    assert decoder["join_lines"] == JOIN  # nor joining
    dropped = decoder["dropped"]
    assert not {"file", "sha256", "split_lines", "join_lines"} & set(dropped) and dropped["order"] == 6
    assert dropped["val_e2e_line_accuracy"] == {"fp32": {"lm": 0.5, "greedy": 1.0},
                                                "int8": {"lm": 0.5, "greedy": 0.75}}
    # the results verify then holds to its bars are the greedy readings'
    assert results["fp32"]["e2e_line_accuracy"] == 1.0 and results["int8"]["e2e_line_accuracy"] == 0.75


@pytest.mark.parametrize("spec,greedy", [({"type": "greedy"}, TRUTH), (LM, None)])
def test_nothing_to_compare_keeps_the_section(spec, greedy):
    """A greedy bundle, or a check report without greedy readings (an older runtime)."""
    decoder, results = _choose({"fp32": _report(["MODEL", "", "", ""], greedy)}, spec)
    assert decoder == spec and "greedy_e2e_line_accuracy" not in results["fp32"]
