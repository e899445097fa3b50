"""Lines the detector merged that the recipe's labels keep apart: ``CE UL`` read as one box.

numpy only (shipped to devices).  A row of certification marks (``EAC | UL | CE``) sits a few
pixels apart on a plate, the labels box each mark on its own, and a detector trained on whole
lines reads the row as one: one wrong line and the others missed.  The labels themselves say
which words stand alone: ``LineSplitter.fit`` keeps the words that are a whole label at least
``min_count`` times (the marks, a few keys), and the joined readings the labels do contain.  On
the device a reading all of whose space-separated words are such words, and which is never a
label as a whole, becomes one line per word; each word's box is cut from the merged box at the
middle of the gap the recognizer's best path leaves between the words (``word_spans``).

Measured on the flagship (two dev sets of 100 fresh plates, int8 with the language model):
min_count 20 split 9 and 6 rows, all of them marks, +1.7 and +1.3 points of end-to-end line
accuracy; 5 also split keys from short values (``POWER 45kW``) and gained less (+1.4, +1.1).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

MAX_WORDS = 10_000  # a manifest section, not a dictionary


class LineSplitter:
    """Which readings to split into one line per word (see the module docstring)."""

    def __init__(self, words: Iterable[str], joined: Iterable[str], min_count: int):
        self.words, self.joined, self.min_count = frozenset(words), frozenset(joined), int(min_count)

    @classmethod
    def fit(cls, texts: Iterable[str], min_count: int) -> LineSplitter:
        """From the training labels' texts: the space-free labels seen ``min_count`` times or
        more, and every label made of two or more of them (those stay whole)."""
        counts = Counter(texts)
        words = {t for t, n in counts.items() if n >= min_count and t and " " not in t}
        joined = {t for t in counts if len(t.split(" ")) > 1 and all(w in words for w in t.split(" "))}
        return cls(words, joined, min_count)

    def parts(self, text: str) -> list[str] | None:
        """The words ``text`` splits into, or None when it stays one line."""
        words = text.split(" ")
        if len(words) < 2 or text in self.joined or not all(w in self.words for w in words):
            return None
        return words

    def to_json(self) -> dict[str, Any]:
        return {"min_count": self.min_count, "words": sorted(self.words), "joined": sorted(self.joined)}

    @classmethod
    def from_json(cls, doc: Any) -> LineSplitter:
        """The manifest's ``recognizer.decoder.split_lines``; ValueError names the bad field."""
        if not isinstance(doc, dict):
            raise ValueError("split_lines: not an object")
        for key in ("words", "joined"):
            value = doc.get(key)
            if not isinstance(value, list) or not all(isinstance(w, str) and w for w in value):
                raise ValueError(f"split_lines.{key}: not a list of non-empty strings")
            if len(value) > MAX_WORDS:
                raise ValueError(f"split_lines.{key}: more than {MAX_WORDS} entries")
        if any(" " in w for w in doc["words"]):
            raise ValueError("split_lines.words: a word with a space")
        min_count = doc.get("min_count")
        if not isinstance(min_count, int) or isinstance(min_count, bool) or min_count < 1:
            raise ValueError("split_lines.min_count: not a positive integer")
        return cls(doc["words"], doc["joined"], min_count)


def word_spans(ids: np.ndarray, space: int, count: int) -> list[tuple[float, float]] | None:
    """Where each space-separated word of a best CTC path lies: ``(start, end)`` fractions of
    the path's frames, the words' boxes meeting in the middle of each gap; None unless the path
    holds exactly ``count`` words.  ``ids``: the best class per frame (0 blank)."""
    words: list[list[int]] = []
    after_space = False
    for frame, label in enumerate(np.asarray(ids).tolist()):
        if label == space:
            after_space = True
        elif label != 0:
            if after_space or not words:
                words.append([])
            words[-1].append(frame)
            after_space = False
    if len(words) != count or count < 1:
        return None
    t = len(ids)
    cuts = [0.0] + [(a[-1] + 1 + b[0]) / 2 / t for a, b in itertools.pairwise(words)] + [1.0]
    return list(itertools.pairwise(cuts))
