"""Splitting what the labels keep apart (engine/runtime/split.py): which readings split, where
the words' boxes are cut, and the manifest section the device trusts only once validated.
The pipeline end to end: tests/test_runtime_pipeline.py (a hand-built detector and recognizer)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.runtime.geometry import sub_quad
from engine.runtime.split import LineSplitter, word_spans

LABELS = ["CE"] * 3 + ["UL"] * 3 + ["EAC"] * 2 + ["MODEL"] * 3 + ["NO."] * 3 + ["MODEL NO."] * 2 + ["TYPE 4"] * 5
SPACE = 9  # the space's class in the hand-made paths below


def test_fit_keeps_frequent_single_words_and_the_labels_made_of_them():
    s = LineSplitter.fit(LABELS, min_count=3)
    assert s.words == {"CE", "UL", "MODEL", "NO."}  # EAC: twice; "TYPE 4": has a space
    assert s.joined == {"MODEL NO."}


def test_parts_split_only_words_that_stand_alone_and_never_a_label():
    s = LineSplitter.fit(LABELS, min_count=3)
    assert s.parts("CE UL") == ["CE", "UL"]
    assert s.parts("UL CE UL") == ["UL", "CE", "UL"]
    assert s.parts("MODEL NO.") is None  # a label as a whole
    assert s.parts("CE EAC") is None  # EAC is not a line of its own often enough
    assert s.parts("CE") is None and s.parts("") is None
    assert s.parts("CE  UL") is None  # an empty word between two spaces is no word


def test_word_spans_cut_in_the_middle_of_each_gap():
    # frames: C E _ sp sp _ U L (8 frames): ink of word 1 at 0-1, word 2 at 6-7
    ids = np.array([1, 2, 0, SPACE, SPACE, 0, 3, 4])
    assert word_spans(ids, SPACE, 2) == [(0.0, 4 / 8), (4 / 8, 1.0)]
    # leading and trailing spaces and blanks do not make words
    padded = np.array([0, SPACE, 1, 0, SPACE, 0, 0, 3, SPACE, 0])
    assert word_spans(padded, SPACE, 2) == [(0.0, 5 / 10), (5 / 10, 1.0)]
    assert word_spans(ids, SPACE, 3) is None  # the path does not read that many words
    assert word_spans(np.zeros(5, int), SPACE, 1) is None


def test_sub_quad_cuts_top_and_bottom_at_the_same_fractions():
    quad = np.array([[10, 0], [110, 10], [110, 30], [10, 20]], np.float32)  # skewed line
    left, right = sub_quad(quad, 0.0, 0.5), sub_quad(quad, 0.5, 1.0)
    assert np.allclose(left[0], quad[0]) and np.allclose(right[2], quad[2])
    assert np.allclose(left[1], [60, 5]) and np.allclose(left[2], [60, 25])
    assert np.allclose(left[1], right[0]) and np.allclose(left[2], right[3])


def test_manifest_round_trip_and_refusals():
    s = LineSplitter.fit(LABELS, min_count=3)
    back = LineSplitter.from_json(s.to_json())
    assert (back.words, back.joined, back.min_count) == (s.words, s.joined, 3)
    good = s.to_json()
    for change, field in [({"words": "CE"}, "split_lines.words"), ({"joined": [""]}, "split_lines.joined"),
                          ({"words": ["C E"]}, "split_lines.words"), ({"min_count": 0}, "split_lines.min_count"),
                          ({"min_count": True}, "split_lines.min_count")]:
        with pytest.raises(ValueError, match=field):
            LineSplitter.from_json({**good, **change})
    with pytest.raises(ValueError, match="not an object"):
        LineSplitter.from_json(["CE"])
