"""Splitting what the labels keep apart and joining what they keep whole (engine/runtime/split.py):
which readings split, where the words' boxes are cut, which boxes join, and the manifest sections
the device trusts only once validated.
The pipeline end to end: tests/test_runtime_pipeline.py (a hand-built detector and recognizer)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.runtime.geometry import continuing, joined_quad, sub_quad
from engine.runtime.split import LineJoiner, LineSplitter, word_spans

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
    assert s.parts("EAC 4") is None  # EAC is not a line of its own often enough; 4 ends "TYPE 4"
    assert s.parts("CE") is None and s.parts("") is None
    assert s.parts("CE  UL") is None  # an empty word between two spaces is no word


def test_fit_keeps_the_words_that_always_begin_or_end_their_label():
    s = LineSplitter.fit(["MFD: 2000/04", "MFD: 1999/01", "MFD: 2011/03", "FLOW 20 m3/min", "FLOW 9 m3/min",
                          "CAPACITY: 6 m3/min", "TYPE BF 36", "TYPE XQ", "TYPE 4", "ZONE TYPE"], min_count=3)
    assert s.first == {"MFD:"}  # TYPE ends "ZONE TYPE"; FLOW: twice
    assert s.last == {"m3/min"}
    assert s.parts("FREE AIR DEL.: 20.98 m3/min MFD: 2000/04") == ["FREE AIR DEL.: 20.98 m3/min", "MFD: 2000/04"]
    assert s.parts("4.5 m3/min 50 Hz") == ["4.5 m3/min", "50 Hz"]
    assert s.parts("MFD: 1999/01") is None and s.parts("TYPE BF 36 TYPE") is None
    back = LineSplitter.from_json(s.to_json())
    assert (back.first, back.last) == (s.first, s.last)
    old = {k: v for k, v in s.to_json().items() if k not in ("first", "last")}  # a bundle before them
    assert LineSplitter.from_json(old).parts("4.5 m3/min 50 Hz") is None


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
                          ({"min_count": True}, "split_lines.min_count"),
                          ({"first": ["MFD:"], "last": "m3/min"}, "split_lines.last"),
                          ({"first": ["P MAX:"], "last": []}, "split_lines.first")]:
        with pytest.raises(ValueError, match=field):
            LineSplitter.from_json({**good, **change})
    with pytest.raises(ValueError, match="not an object"):
        LineSplitter.from_json(["CE"])


TITLES = (["CENTRIFUGAL PUMP"] * 3 + ["MADE IN POLAND"] * 3 + ["CE UL"] * 3 + ["CE"] * 3 + ["UL"] * 3
          + ["GEAR BOX"] + ["ACME GMBH", "ZETA GMBH", "KRON GMBH", "GMBH"])


def _box(x0: float, y0: float, x1: float, y1: float, angle: float = 0.0) -> np.ndarray:
    """A reading-order rectangle, turned by ``angle`` degrees about the origin."""
    q = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)
    a = np.deg2rad(angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], np.float32)
    return q @ rot.T


def _line(text: str, quad: np.ndarray, score: float = 0.9) -> dict:
    return {"points": quad.tolist(), "text": text, "score": score, "box_score": 0.8}


def test_continuing_follows_the_line_at_any_angle():
    def continues(a: np.ndarray, b: np.ndarray) -> bool:
        return bool(continuing(a, b[None])[0])

    for angle in (0.0, 12.0, -30.0):
        a = _box(0, 0, 100, 20, angle)
        assert continues(a, _box(110, 1, 160, 21, angle))  # half a height after a
        assert continues(a, _box(85, 0, 160, 20, angle))  # grown boxes of a cut line overlap
        assert not continues(_box(110, 1, 160, 21, angle), a)  # a comes before, not after
        assert not continues(a, _box(150, 0, 200, 20, angle))  # 2.5 heights on: another column
        assert not continues(a, _box(105, 12, 160, 32, angle))  # the next row
        assert not continues(a, _box(105, 0, 160, 40, angle))  # twice the height
    assert not continues(_box(0, 0, 100, 20), _box(110, 0, 160, 20, 20.0))  # not parallel
    many = np.stack([_box(110, 1, 160, 21), _box(105, 12, 160, 32), _box(130, 0, 170, 20)])
    assert continuing(_box(0, 0, 100, 20), many).tolist() == [True, False, True]
    q = joined_quad([_box(0, 0, 100, 20, 10.0), _box(90, 2, 160, 22, 10.0)])
    assert np.allclose(q, _box(0, 0, 160, 22, 10.0), atol=1e-3)


def test_joiner_fit_keeps_frequent_labels_of_words_and_the_frequent_pieces():
    j = LineJoiner.fit(TITLES, min_count=3)
    assert j.labels == {"CENTRIFUGAL PUMP", "MADE IN POLAND", "CE UL"}  # GEAR BOX: once
    assert j.whole == {"CE", "UL"}  # the frequent labels that are pieces of them
    assert {"MADE IN", "IN POLAND", "PUMP"} <= j.pieces
    assert j.not_first == {"PUMP", "IN", "POLAND"}  # GMBH: 1 of 4 a label's first word
    assert j.not_last == {"CENTRIFUGAL", "MADE", "IN"}
    assert "GMBH" in LineJoiner.fit([*TITLES, *["ZOLL GMBH"] * 7], min_count=3).not_first  # 10 of 11


def test_join_reads_the_pieces_of_a_cut_label_as_one_line_in_place():
    j = LineJoiner.fit(TITLES, min_count=3)
    lines = [_line("TYPE", _box(0, 0, 40, 10)),
             _line("IN POLAND", _box(52, 40, 120, 60, 8.0), 0.7),  # a later piece first in reading order
             _line("MADE", _box(0, 40, 45, 60, 8.0)),
             _line("CENTRIFUGAL", _box(0, 80, 150, 110)), _line("PUMP", _box(140, 81, 200, 111))]
    out = j.join(lines)
    assert [ln["text"] for ln in out] == ["TYPE", "MADE IN POLAND", "CENTRIFUGAL PUMP"]
    assert out[1]["score"] == 0.7 and out[1]["box_score"] == 0.8
    assert np.allclose(out[1]["points"], _box(0, 40, 120, 60, 8.0), atol=0.05)
    assert out[0] is lines[0]
    both = [{**ln, "greedy_text": ln["text"].lower()} for ln in lines[3:]]
    assert j.join(both)[0]["greedy_text"] == "centrifugal pump"


def test_join_reads_a_word_the_labels_never_break_before_with_the_box_before_it():
    j = LineJoiner.fit([*TITLES, *["ZOLL GMBH"] * 7], min_count=3)  # GMBH: 10 of 11 not first
    lines = [_line("WEIMAG", _box(0, 0, 120, 30)), _line("GMBH", _box(140, 2, 220, 32)),
             _line("TYPE", _box(0, 50, 40, 62))]
    assert [ln["text"] for ln in j.join(lines)] == ["WEIMAG GMBH", "TYPE"]
    between = [lines[0], _line("42", _box(125, 0, 135, 30)), lines[1]]  # never over a box between
    assert [ln["text"] for ln in j.join(between)] == ["WEIMAG", "42 GMBH"]


def test_join_leaves_what_the_labels_do_not_join():
    j = LineJoiner.fit(TITLES, min_count=3)
    apart = [  # each pair would continue along its line
        [_line("CE", _box(0, 0, 30, 20)), _line("UL", _box(40, 0, 70, 20))],  # marks: each a label
        [_line("GEAR", _box(0, 0, 50, 20)), _line("BOX", _box(60, 0, 100, 20))],  # too rare
        [_line("PUMP", _box(0, 0, 50, 20)), _line("CENTRIFUGAL", _box(60, 0, 200, 20))],  # wrong order
        [_line("CENTRIFUGAL", _box(0, 0, 150, 20)), _line("PUMP", _box(0, 30, 50, 50))],  # next row
    ]
    for lines in apart:
        assert j.join(lines) == lines


def test_joiner_manifest_round_trip_and_refusals():
    j = LineJoiner.fit(TITLES, min_count=3)
    back = LineJoiner.from_json(j.to_json())
    assert (back.labels, back.whole, back.min_count, back.pieces) == (j.labels, j.whole, 3, j.pieces)
    assert (back.not_first, back.not_last) == (j.not_first, j.not_last)
    good = j.to_json()
    for change, field in [({"labels": "CE UL"}, "join_lines.labels"), ({"whole": [""]}, "join_lines.whole"),
                          ({"labels": ["PUMP"]}, "join_lines.labels"), ({"min_count": 0}, "join_lines.min_count"),
                          ({"not_first": None}, "join_lines.not_first"), ({"not_last": ["A B"]}, "not_last")]:
        with pytest.raises(ValueError, match=field):
            LineJoiner.from_json({**good, **change})
