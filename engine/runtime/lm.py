"""A character language model of the recipe's own labels, and CTC beam search that reads with it.

Greedy CTC takes each frame's most likely class on its own, so a recognizer that is unsure
between `O` and `0`, `l` and `1` or `g` and `q` on a small, blurred line picks by a hair.
Nameplates repeat themselves: keys (`SERIAL NO.`, `FREQUENCY`), units (`l/min`, `kW`, `Hz`),
the shapes of dates and decimals. A character n-gram counted from the training labels knows
them, and a prefix beam search over the CTC output (after Hannun et al. 2014) adds
``weight`` × its log-probability and ``length_bonus`` per character to each hypothesis' acoustic
score, so among the readings the recognizer finds plausible the one that looks like the user's
plates wins. Tesseract reads with word lists for the same reason.

Text the model never saw (random serial numbers, another maker's words) must not be pulled
towards what it did see. So the n-gram only speaks from a context of at least ``min_context``
characters that the training labels contain: below that, and wherever a context was never seen,
it backs off to a uniform distribution instead of to character frequencies (interpolated
Witten-Bell smoothing above). On plates whose every letter and digit was replaced at random,
the flagship's int8 recognizer lost 0.5 point with the model and 8.7 points with the classic
backoff to unigrams (README: A language model of your labels).

Standard library and numpy only: this module ships in every bundle.
"""

from __future__ import annotations

import itertools
import json
import math
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .postprocess import ctc_greedy_decode, looks_like_probs

LM_FORMAT = 1
BOS, EOS = "\x02", "\x03"  # line start (padding the first contexts) and line end
MAX_LM_BYTES = 64 * 1024 * 1024  # a device never parses a bigger file (the flagship's is 0.9 MB)
#: cached probabilities before the cache starts over (~8 MB); 1000 plate lines look up ~45 k
_CACHE_LIMIT = 65_536
_NEG = -1e30  # log 0


class LMError(ValueError):
    """A language model file that cannot be used; the message names the file and the field."""


class CharNgram:
    """Interpolated Witten-Bell character n-gram that backs off to uniform, not to unigrams.

    For every context of ``min_context`` to ``order - 1`` characters seen in the labels (lines
    padded with ``BOS`` at the start, ended with ``EOS``): the characters that followed it and
    how often. Held flat, not as a dict per context, because a device holds it for as long as
    it serves: ``contexts[r]`` is row r, its followers ``followers[start[r]:start[r + 1]]`` with
    their ``counts`` at the same positions (the flagship's 72 k contexts: ~10 MB in memory,
    where dicts took 25 MB).
    """

    def __init__(self, order: int, min_context: int, charset: str, contexts: Sequence[str],
                 followers: str, sizes: Sequence[int], counts: Sequence[int]):
        self.order, self.min_context, self.charset = order, min_context, charset
        self.vocab_size = len(charset) + 1  # + EOS
        self._row = {h: r for r, h in enumerate(contexts)}
        self._start = array("l", itertools.accumulate(sizes, initial=0))
        self._followers = followers
        self._counts = array("l", counts)
        self._totals = array("l", (sum(self._counts[a:b]) for a, b in itertools.pairwise(self._start)))
        self._cache: dict[str, float] = {}  # context + char -> log-probability

    @classmethod
    def fit(cls, texts: Iterable[str], charset: str, order: int = 6, min_context: int = 3) -> CharNgram:
        if not 1 <= min_context < order:
            raise ValueError(f"need 1 <= min_context < order, got min_context={min_context}, order={order}")
        table: dict[str, dict[str, int]] = {}
        pad = BOS * (order - 1)
        for text in texts:
            s = pad + text.strip(" ") + EOS
            for i in range(order - 1, len(s)):
                for k in range(min_context, order):
                    row = table.setdefault(s[i - k:i], {})
                    row[s[i]] = row.get(s[i], 0) + 1
        contexts = sorted(table, key=lambda h: (len(h), h))  # canonical: same labels, same file
        rows = [sorted(table[h].items()) for h in contexts]
        return cls(order, min_context, charset, contexts, "".join(c for row in rows for c, _ in row),
                   [len(row) for row in rows], [n for row in rows for _, n in row])

    # ------------------------------------------------------------------ probabilities

    def logp(self, context: str, char: str) -> float:
        """log P(char | the last order-1 characters of context); context starts with the line."""
        h = (BOS * (self.order - 1) + context)[-(self.order - 1):]
        key = h + char
        lp = self._cache.get(key)
        if lp is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            lp = self._cache[key] = math.log(self._interpolated(h, char))
        return lp

    def prob(self, context: str, char: str) -> float:
        return math.exp(self.logp(context, char))

    def _interpolated(self, h: str, char: str) -> float:
        p = 1.0 / self.vocab_size
        for k in range(self.min_context, len(h) + 1):  # shortest context first
            r = self._row.get(h[len(h) - k:])
            if r is None:
                break  # a longer context containing an unseen one is unseen too
            a, b = self._start[r], self._start[r + 1]
            i = self._followers.find(char, a, b)
            seen = self._counts[i] if i >= 0 else 0
            p = (seen + (b - a) * p) / (self._totals[r] + (b - a))
        return p

    # ------------------------------------------------------------------ storage

    def to_json(self) -> dict[str, Any]:
        """Contexts of each length as one string, so a device parses a few long strings and two
        lists of small integers instead of one object per context."""
        by_length: dict[str, list[str]] = {}
        for h in self._row:  # in row order: by length, then text
            by_length.setdefault(str(len(h)), []).append(h)
        sizes = [b - a for a, b in itertools.pairwise(self._start)]
        return {"format": LM_FORMAT, "kind": "char-ngram", "order": self.order, "min_context": self.min_context,
                "charset": self.charset, "contexts": {k: "".join(v) for k, v in by_length.items()},
                "followers": self._followers, "sizes": sizes, "counts": self._counts.tolist()}

    @classmethod
    def from_json(cls, doc: Any, source: str) -> CharNgram:
        """Validate a parsed file (every field's type, range and length) before trusting it."""
        if not isinstance(doc, dict):
            raise LMError(f"{source}: expected a JSON object")
        if doc.get("format") != LM_FORMAT or doc.get("kind") != "char-ngram":
            raise LMError(f"{source}: format/kind must be {LM_FORMAT}/'char-ngram', got "
                          f"{doc.get('format')!r}/{doc.get('kind')!r}")
        order, min_context, charset = doc.get("order"), doc.get("min_context"), doc.get("charset")
        if not (isinstance(order, int) and isinstance(min_context, int) and 1 <= min_context < order <= 12):
            raise LMError(f"{source}: order/min_context must be integers with 1 <= min_context < order <= 12, "
                          f"got {order!r}/{min_context!r}")
        if not isinstance(charset, str) or not charset:
            raise LMError(f"{source}: 'charset' must be a non-empty string")
        by_length, followers = doc.get("contexts"), doc.get("followers")
        sizes, counts = doc.get("sizes"), doc.get("counts")
        if not isinstance(by_length, dict) or not all(
                isinstance(k, str) and k.isdigit() and min_context <= int(k) < order and isinstance(v, str)
                and len(v) % int(k) == 0 for k, v in by_length.items()):
            raise LMError(f"{source}: 'contexts' must map each length from {min_context} to {order - 1} "
                          "to a string of contexts of that length")
        contexts = [v[i:i + int(k)] for k, v in sorted(by_length.items(), key=lambda kv: int(kv[0]))
                    for i in range(0, len(v), int(k))]
        if not isinstance(followers, str) or not isinstance(sizes, list) or not isinstance(counts, list):
            raise LMError(f"{source}: 'followers' must be a string, 'sizes' and 'counts' lists")
        if len(sizes) != len(contexts) or len(counts) != len(followers) or sum(
                n for n in sizes if isinstance(n, int)) != len(followers):
            raise LMError(f"{source}: {len(contexts)} contexts, {len(sizes)} sizes, {len(followers)} followers "
                          f"and {len(counts)} counts do not line up")
        if not all(isinstance(n, int) and n > 0 for n in itertools.chain(sizes, counts)):
            raise LMError(f"{source}: 'sizes' and 'counts' must hold positive integers")
        if len(set(contexts)) != len(contexts):
            raise LMError(f"{source}: a context is listed twice")
        return cls(order, min_context, charset, contexts, followers, sizes, counts)


def save_lm(lm: CharNgram) -> bytes:
    """Canonical bytes: the same labels give the same file and bundle hash."""
    return json.dumps(lm.to_json(), sort_keys=True, separators=(",", ":")).encode()


def load_lm(data: bytes, source: str) -> CharNgram:
    if len(data) > MAX_LM_BYTES:
        raise LMError(f"{source}: {len(data)} bytes, more than the {MAX_LM_BYTES} a language model may have")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LMError(f"{source}: not JSON ({exc})") from None
    return CharNgram.from_json(doc, source)


# ---------------------------------------------------------------------- decoding


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def ctc_lm_decode(logp: np.ndarray, charset: str, lm: CharNgram, *, weight: float, length_bonus: float,
                  beam: int, prune: float = -6.0, blank_certain: float = -5e-4) -> str:
    """The best reading of one line's T×C CTC log-probabilities (class 0 blank) under
    acoustic + ``weight`` · LM + ``length_bonus`` · characters, by prefix beam search.

    A reading's acoustic score is its best alignment's (Viterbi), as greedy decoding's is, not
    the sum over alignments: on a flat output the sum favours long readings, because they have
    more alignments (a weak test model read a one-letter box as `BDCABDBDCAAA`); the best
    alignment does not. On real lines the two read the same (ground-truth crops of 4 plate
    sets: within one line of each other).

    Only classes with log-probability above ``prune`` at a frame are extended (a reading the
    recognizer gives under 0.25 % is never considered, whatever the language model prefers;
    -8 read the same lines 1.5x slower), and frames whose blank is nearly certain or the only
    class left only carry the beams over: a third of the frames are such, which keeps a line to
    about a quarter of a millisecond. Leading spaces cost and count nothing in the language
    model (greedy decoding strips them too).
    """
    lp = np.asarray(logp, dtype=np.float64)
    keep = lp > prune
    # frames where nothing but a blank is plausible only move every beam's mass to "ends in blank"
    carry = ((lp[:, 0] > blank_certain) | ~keep[:, 1:].any(axis=1)).tolist()
    frames, classes = np.nonzero(keep)
    cuts = np.searchsorted(frames, np.arange(1, len(lp))).tolist()
    candidates = [c.tolist() for c in np.split(classes, cuts)]
    beams: dict[str, list[float]] = {"": [0.0, _NEG, 0.0]}  # prefix -> [ends in blank, in a char, LM]

    def rank(item: tuple[str, list[float]]) -> float:
        p, (pb, pnb, s) = item
        return (pb if pb > pnb else pnb) + weight * s + length_bonus * len(p)

    for row, cands, blank_only in zip(lp.tolist(), candidates, carry, strict=True):
        if blank_only:
            for v in beams.values():
                v[0], v[1] = (v[0] if v[0] > v[1] else v[1]) + row[0], _NEG
            continue
        nxt: dict[str, list[float]] = {}
        for c in cands:
            pc = row[c]
            for prefix, (pb, pnb, lm_score) in beams.items():
                best = pb if pb > pnb else pnb
                if c == 0:
                    e = nxt.setdefault(prefix, [_NEG, _NEG, lm_score])
                    if best + pc > e[0]:
                        e[0] = best + pc
                    continue
                ch = charset[c - 1]
                grown = prefix + ch
                if prefix and prefix[-1] == ch:  # a repeat collapses unless a blank separates it
                    e = nxt.setdefault(prefix, [_NEG, _NEG, lm_score])
                    if pnb + pc > e[1]:
                        e[1] = pnb + pc
                    from_prefix = pb + pc
                else:
                    from_prefix = best + pc
                g = nxt.get(grown)
                if g is None:
                    context = prefix.lstrip(" ")
                    step = 0.0 if (ch == " " and not context) else lm.logp(context, ch)
                    g = nxt[grown] = [_NEG, _NEG, lm_score + step]
                if from_prefix > g[1]:
                    g[1] = from_prefix
        beams = nxt if len(nxt) <= beam else dict(sorted(nxt.items(), key=rank, reverse=True)[:beam])

    def final(item: tuple[str, list[float]]) -> float:
        p, (pb, pnb, s) = item
        text = p.strip(" ")
        # reading nothing is the recognizer's call: labels are never empty, so the model would
        # make a box around no text (a smudge, a rivet) read as one character
        end = lm.logp(text, EOS) if text else 0.0
        return max(pb, pnb) + weight * (s + end) + length_bonus * len(p)

    return max(beams.items(), key=final)[0].strip(" ")


class LMDecoder:
    """``ctc_greedy_decode``'s signature with the language model's beam search for the text.

    The confidence stays greedy's (the mean top probability of the emitted frames), so
    ``min_text_score`` means what it meant without a language model.
    """

    def __init__(self, lm: CharNgram, weight: float, length_bonus: float, beam: int):
        self.lm, self.weight, self.length_bonus, self.beam = lm, weight, length_bonus, beam

    def __call__(self, logits: np.ndarray, charset: str,
                 lengths: Sequence[int] | None = None) -> list[tuple[str, float]]:
        return [(text, conf) for text, conf, _ in self.with_greedy(logits, charset, lengths)]

    def with_greedy(self, logits: np.ndarray, charset: str,
                    lengths: Sequence[int] | None = None) -> list[tuple[str, float, str]]:
        """(text, confidence, greedy CTC's text) of each row: the greedy reading comes free with
        the search, so verify can hold the language model to it on val (engine/stages/verify.py)."""
        x = np.asarray(logits, dtype=np.float32)
        if x.ndim == 2:
            x = x[None]
        is_probs = looks_like_probs(x)  # decided for the batch, as greedy decides it
        greedy = ctc_greedy_decode(x, charset, lengths=lengths, is_probs=is_probs)
        out = []
        for i, (plain, conf) in enumerate(greedy):
            t = x.shape[1] if lengths is None else max(0, min(int(lengths[i]), x.shape[1]))
            if t == 0:
                out.append(("", conf, plain))
                continue
            lp = np.log(np.clip(x[i, :t], 1e-30, None)) if is_probs else log_softmax(x[i, :t])
            out.append((ctc_lm_decode(lp.astype(np.float64), charset, self.lm, weight=self.weight,
                                      length_bonus=self.length_bonus, beam=self.beam), conf, plain))
        return out
