"""The recognizer's language model (engine/runtime/lm.py): the n-gram, the beam search, its file.

The decoding tests feed hand-made CTC probabilities, so what the recognizer "saw" is known
exactly: a frame unsure between two characters, a confident frame, a repeated letter.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from engine.runtime.lm import (
    BOS,
    EOS,
    MAX_LM_BYTES,
    CharNgram,
    LMDecoder,
    LMError,
    ctc_lm_decode,
    load_lm,
    save_lm,
)
from engine.runtime.postprocess import ctc_greedy_decode

CHARSET = "0123456789ABDELMNOQ. "
PLATES = ["MODEL NO. 4410", "MODEL", "NO. 1234", "NO. 88", "MODEL NO. 1021", "DOME 9"]


def frames(spec: list[dict[str, float]], charset: str = CHARSET) -> np.ndarray:
    """T×C probabilities: each frame's listed characters ('' = blank) get their probability,
    the rest of the mass spread over the other classes."""
    c = len(charset) + 1
    out = np.zeros((len(spec), c))
    for t, probs in enumerate(spec):
        rest = 1.0 - sum(probs.values())
        out[t] = rest / (c - len(probs))
        for ch, p in probs.items():
            out[t, 0 if ch == "" else charset.index(ch) + 1] = p
    return out


def word(text: str, unsure: dict[int, dict[str, float]] | None = None) -> np.ndarray:
    """Frames that spell ``text`` (one character frame, then a blank), character i replaced by
    ``unsure[i]`` when given."""
    spec: list[dict[str, float]] = [{"": 0.999}]
    for i, ch in enumerate(text):
        spec += [(unsure or {}).get(i, {ch: 0.99}), {"": 0.999}]
    return frames(spec)


@pytest.fixture(scope="module")
def lm() -> CharNgram:
    return CharNgram.fit(PLATES * 3, CHARSET, order=6, min_context=3)


def _decode(lm: CharNgram, probs: np.ndarray, weight: float = 0.3) -> str:
    return ctc_lm_decode(np.log(probs), CHARSET, lm, weight=weight, length_bonus=0.6, beam=8)


def test_probabilities_sum_to_one_and_short_or_unseen_contexts_are_uniform(lm):
    vocab = [*CHARSET, EOS]
    for context in ("MOD", "MODEL NO", "", "M", "QQQQQ", "NO. 4"):
        assert math.isclose(sum(lm.prob(context, c) for c in vocab), 1.0, rel_tol=1e-9)
    uniform = 1.0 / (len(CHARSET) + 1)
    assert lm.prob("QQQQQ", "A") == pytest.approx(uniform)  # never seen: no opinion
    assert lm.prob("M", "O") > 0.5  # the line start pads the context: BOS BOS BOS BOS M
    assert lm.prob("MODEL N", "O") > 0.9
    assert lm.prob("MOD", EOS) < uniform


def test_fit_refuses_contexts_that_cannot_work():
    with pytest.raises(ValueError, match="min_context"):
        CharNgram.fit(["A"], CHARSET, order=3, min_context=3)


def test_unsure_frame_takes_the_labels_reading(lm):
    unsure = {1: {"0": 0.55, "O": 0.44}}  # MODEL read as M0DEL by a hair
    probs = word("MODEL", unsure)
    assert ctc_greedy_decode(probs[None], CHARSET, is_probs=True)[0][0] == "M0DEL"
    assert _decode(lm, probs) == "MODEL"


def test_confident_reading_stands_against_the_model(lm):
    probs = word("M0DEL", {1: {"0": 0.9998}})  # O is below the prune floor
    assert _decode(lm, probs, weight=1.0) == "M0DEL"  # over 3x the default weight


def test_text_the_model_never_saw_keeps_the_recognizers_choice(lm):
    # a random code: every context unseen, so even an unsure frame goes the recognizer's way
    probs = word("QB7Q", {1: {"B": 0.52, "8": 0.47}})
    assert _decode(lm, probs, weight=1.0) == "QB7Q"


def test_ctc_collapsing_matches_greedy_on_confident_frames(lm):
    rng = np.random.default_rng(0)
    for _ in range(40):
        labels = rng.integers(0, len(CHARSET) + 1, size=int(rng.integers(1, 30)))
        probs = frames([{("" if k == 0 else CHARSET[k - 1]): 0.999} for k in labels])
        greedy = ctc_greedy_decode(probs[None], CHARSET, is_probs=True)[0][0]
        assert _decode(lm, probs, weight=0.0) == greedy
    # a doubled letter needs a blank between its frames, as in greedy CTC
    ll = frames([{"L": 0.99}, {"L": 0.99}, {"": 0.99}, {"L": 0.99}])
    assert _decode(lm, ll) == "LL"


def test_decoder_keeps_greedy_confidence_and_each_rows_length(lm):
    probs = word("MODEL", {1: {"0": 0.55, "O": 0.44}})
    batch = np.stack([probs, probs])
    logits = np.log(batch)  # logits or probabilities: the same reading
    dec = LMDecoder(lm, weight=0.3, length_bonus=0.6, beam=8)
    short = 5  # the first two characters' frames only (blank, M, blank, O/0, blank)
    for x in (batch, logits):
        out = dec(x, CHARSET, lengths=[len(probs), short])
        greedy = ctc_greedy_decode(x, CHARSET, lengths=[len(probs), short])
        assert [t for t, _ in out] == ["MODEL", "MO"]
        assert [c for _, c in out] == pytest.approx([c for _, c in greedy])
    assert dec(batch, CHARSET, lengths=[0, 0]) == [("", 0.0), ("", 0.0)]
    both = dec.with_greedy(batch, CHARSET, lengths=[len(probs), short])
    assert [(t, g) for t, _, g in both] == [("MODEL", "M0DEL"), ("MO", "M0")]


def test_file_round_trip_is_canonical(lm):
    data = save_lm(lm)
    again = load_lm(data, "lm.json")
    assert save_lm(again) == data
    for context, char in (("MODEL N", "O"), ("NO. ", "8"), ("QQQ", "A"), ("DOME 9", EOS)):
        assert again.prob(context, char) == lm.prob(context, char)
    assert save_lm(CharNgram.fit(reversed(PLATES * 3), CHARSET)) == data  # order of lines: same file
    assert json.loads(data)["contexts"]["3"].startswith(BOS * 3)


GOOD = {"format": 1, "kind": "char-ngram", "order": 4, "min_context": 2, "charset": "AB",
        "contexts": {"2": "ABBA", "3": "ABA"}, "followers": "AABB", "sizes": [1, 2, 1], "counts": [1, 2, 1, 3]}


def test_a_hand_written_file_means_what_it_says():
    lm = load_lm(json.dumps(GOOD).encode(), "lm.json")
    assert lm.prob("AB", "B") == pytest.approx((0 + 1 * 1 / 3) / (1 + 1))  # context AB: only A seen, once
    assert lm.prob("BA", "A") == pytest.approx((2 + 2 * 1 / 3) / (3 + 2))  # BA: A twice, B once


@pytest.mark.parametrize("change, problem", [
    ({"format": 2}, "format/kind"),
    ({"min_context": 4}, "min_context < order"),
    ({"charset": ""}, "charset"),
    ({"contexts": {"1": "AB"}}, "'contexts' must map"),
    ({"contexts": {"2": "ABB"}}, "'contexts' must map"),
    ({"followers": ["B"]}, "'followers' must be a string"),
    ({"sizes": [1, 2]}, "do not line up"),
    ({"counts": [1, 2, 1]}, "do not line up"),
    ({"counts": [1, 0, 1, 3]}, "positive integers"),
    ({"contexts": {"2": "ABAB", "3": "ABA"}}, "listed twice"),
])
def test_bad_files_are_refused_with_the_field(change, problem):
    with pytest.raises(LMError, match=problem) as info:
        load_lm(json.dumps({**GOOD, **change}).encode(), "bundle/lm.json")
    assert str(info.value).startswith("bundle/lm.json: ")


@pytest.mark.parametrize("data, problem", [(b"{not json", "not JSON"), (b"[]", "a JSON object"),
                                           (b" " * (MAX_LM_BYTES + 1), "more than")])
def test_files_that_are_not_a_model_are_refused(data, problem):
    with pytest.raises(LMError, match=problem):
        load_lm(data, "bundle/lm.json")


def test_a_box_around_no_text_stays_empty(lm):
    # labels are never empty, but reading nothing is the recognizer's call, not the model's
    probs = frames([{"": 0.7, "M": 0.2}] * 12)
    assert ctc_greedy_decode(probs[None], CHARSET, is_probs=True)[0][0] == ""
    assert _decode(lm, probs) == ""
