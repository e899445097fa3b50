"""Lines the detector drew otherwise than the recipe's labels: merged (``CE UL`` read as one
box) or cut (``CENTRIFUGAL | PUMP``).

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
The labels also say where lines begin and end: a reading also breaks before each word seen
``min_count`` times that begins its label at least ``EDGE`` of the time (``MFD:``, ``OUTPUT:``)
and after each that ends it as often (``m3/min``), which takes apart key:value pairs the
detector merged (``FREE AIR DEL.: 20.98 m3/min MFD: 2000/04``): +0.38 points pooled on four dev
sets (with join_lines), 0.0245 -> 0.0201 CER on the set with the most such merges.  Splitting
after a key the labels mostly keep on its own line (``TYPE``, ``SERIAL NO.``) was measured and
dropped: such a reading is far more often one label (``TYPE BF 36TQ``) than a merge.

The mirror case is a line the detector cut in two, often at a word space set wide: a title
(``MADE | IN POLAND``), a company (``WEIMAG | GMBH``).  ``LineJoiner.fit`` keeps the labels of
two or more words seen ``min_count`` times or more, and the words seen as often that the labels
almost never begin a line with (``GMBH``, ``Drive``) or end one with (``MADE``, ``ROTARY``).  On
the device, a box and the nearest box that goes on along its line (``geometry.continuing``)
become one line when their readings joined make such a label (unless every piece is a frequent
label of its own: a row of marks stays apart), or when the words on either side of the break
say the labels put no break there.  Measured on four dev sets of 100 fresh plates (int8,
language model, split_lines 20): the labels alone +0.27 points pooled, every join a labelled
line; with the words +0.49 (the share 0.9 or 0.97, min_count 5 or 20: the same).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

from .geometry import continuing, joined_quad, line_frame

MAX_WORDS = 10_000  # a manifest section, not a dictionary
MAX_PIECES = 4  # boxes a joined line is made of, at most
INSIDE = 0.9  # a word that is not its label's first (last) word this often is never a line's
EDGE = 0.99  # a word that is its label's first (last) word this often always is a line's


class LineSplitter:
    """Which readings to split, and into what (see the module docstring)."""

    def __init__(self, words: Iterable[str], joined: Iterable[str], min_count: int,
                 first: Iterable[str] = (), last: Iterable[str] = ()):
        self.words, self.joined, self.min_count = frozenset(words), frozenset(joined), int(min_count)
        self.first, self.last = frozenset(first), frozenset(last)

    @classmethod
    def fit(cls, texts: Iterable[str], min_count: int) -> LineSplitter:
        """From the training labels' texts: the space-free labels seen ``min_count`` times or
        more, every label made of two or more of them (those stay whole), and the words seen
        ``min_count`` times or more that are their label's first word (``MFD:``, ``OUTPUT:``)
        or last word (``m3/min``, ``GMBH``) at least ``EDGE`` of the time (each list the most
        frequent ``MAX_WORDS``)."""
        texts = list(texts)
        counts = Counter(texts)
        words = {t for t, n in counts.items() if n >= min_count and t and " " not in t}
        joined = {t for t in counts if len(t.split(" ")) > 1 and all(w in words for w in t.split(" "))}
        seen, first, last = _word_places(texts)
        often = [w for w, n in seen.most_common() if n >= min_count]
        return cls(words, joined, min_count, [w for w in often if first[w] >= EDGE * seen[w]][:MAX_WORDS],
                   [w for w in often if last[w] >= EDGE * seen[w]][:MAX_WORDS])

    def parts(self, text: str) -> list[str] | None:
        """The lines ``text`` splits into (each one or more words), or None when it stays one:
        one per word when every word is a line of its own in the labels; else a break before
        each word that always begins a label and after each that always ends one."""
        words = text.split(" ")
        if len(words) < 2 or "" in words or text in self.joined:
            return None
        if all(w in self.words for w in words):
            return words
        parts = [[words[0]]]
        for before, word in itertools.pairwise(words):
            if before in self.last or word in self.first:
                parts.append([word])
            else:
                parts[-1].append(word)
        return [" ".join(p) for p in parts] if len(parts) > 1 else None

    def to_json(self) -> dict[str, Any]:
        return {"min_count": self.min_count, "words": sorted(self.words), "joined": sorted(self.joined),
                "first": sorted(self.first), "last": sorted(self.last)}

    @classmethod
    def from_json(cls, doc: Any) -> LineSplitter:
        """The manifest's ``recognizer.decoder.split_lines``; ValueError names the bad field."""
        words, joined, min_count = _section(doc, "split_lines", ("words", "joined"))
        if isinstance(doc, dict) and ("first" in doc or "last" in doc):  # bundles before them have neither
            first, last, _ = _section(doc, "split_lines", ("first", "last"))
        else:
            first, last = [], []
        for name, values in (("words", words), ("first", first), ("last", last)):
            if any(" " in w for w in values):
                raise ValueError(f"split_lines.{name}: a word with a space")
        return cls(words, joined, min_count, first, last)


class LineJoiner:
    """Which neighbouring boxes to read as one line (see the module docstring)."""

    def __init__(self, labels: Iterable[str], whole: Iterable[str], not_first: Iterable[str],
                 not_last: Iterable[str], min_count: int):
        self.labels, self.whole, self.min_count = frozenset(labels), frozenset(whole), int(min_count)
        self.not_first, self.not_last = frozenset(not_first), frozenset(not_last)
        # every run of consecutive words of a label short of all of them: the readings that can
        # be a piece of a label
        self.pieces = frozenset(" ".join(ws[i:j]) for ws in (t.split(" ") for t in self.labels)
                                for i in range(len(ws)) for j in range(i + 1, len(ws) + 1)
                                if j - i < len(ws))

    @classmethod
    def fit(cls, texts: Iterable[str], min_count: int) -> LineJoiner:
        """From the training labels' texts, each list the most frequent ``MAX_WORDS``: the labels
        of two or more words seen ``min_count`` times or more; the frequent labels that are also
        pieces of them (``whole``: a row of those stays apart); and the words seen ``min_count``
        times or more that are at least ``INSIDE`` of the time not the first word of their label
        (``GMBH``, ``Drive``: ``not_first``) or not the last (``MADE``, ``ROTARY``: ``not_last``)."""
        texts = [t for t in texts if t.strip() and "" not in t.split(" ")]
        counts = Counter(texts)
        frequent = [t for t, n in counts.most_common() if n >= min_count]
        labels = [t for t in frequent if " " in t][:MAX_WORDS]
        pieces = cls(labels, (), (), (), min_count).pieces
        seen, first, last = _word_places(texts)
        often = [w for w, n in seen.most_common() if n >= min_count]
        not_first = [w for w in often if seen[w] - first[w] >= INSIDE * seen[w]][:MAX_WORDS]
        not_last = [w for w in often if seen[w] - last[w] >= INSIDE * seen[w]][:MAX_WORDS]
        return cls(labels, [t for t in frequent if t in pieces][:MAX_WORDS], not_first, not_last, min_count)

    def _inside(self, before: str, after: str) -> bool:
        """Whether the labels put no line break between these two readings' words."""
        return before.rsplit(" ", 1)[-1] in self.not_last or after.split(" ", 1)[0] in self.not_first

    def join(self, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``lines`` (the pipeline's dicts: points, text, score, box_score, greedy_text) with each
        run of boxes that continue one another along a line (``geometry.continuing``, each the
        nearest) read as one line in the place of its first piece, when the run reads as a
        label or the labels put no break between any two of its pieces; the rest in order."""
        texts = [line["text"] for line in lines]
        head = [t in self.pieces or t.rsplit(" ", 1)[-1] in self.not_last for t in texts]
        tail = [t in self.pieces or t.split(" ", 1)[0] in self.not_first for t in texts]
        if not any(tail) and not any(head):  # most boxes of a plate are neither: cheap first
            return lines
        quads = [np.asarray(line["points"], np.float32).reshape(-1, 2) for line in lines]
        four = [i for i, q in enumerate(quads) if len(q) == 4]
        stack = np.stack([quads[i] for i in four]) if four else np.zeros((0, 4, 2), np.float32)
        used: set[int] = set()
        out: dict[int, dict[str, Any]] = {}
        for i in four:
            if i in used:
                continue
            chain = [i]
            while len(chain) < MAX_PIECES:
                ahead = continuing(quads[chain[-1]], stack)
                nxt = [j for j, ok in zip(four, ahead.tolist(), strict=True) if ok and j not in used and j not in chain]
                if not nxt:
                    break
                along = line_frame(quads[chain[-1]])[0]
                j = min(nxt, key=lambda j: float((quads[j] @ along).min()))  # the nearest, never one beyond it
                if not (head[chain[-1]] or tail[j]):
                    break
                chain.append(j)
            for k in range(len(chain), 1, -1):
                parts = [texts[j] for j in chain[:k]]
                if (" ".join(parts) in self.labels and not all(t in self.whole for t in parts)) or all(
                        self._inside(a, b) for a, b in itertools.pairwise(parts)):
                    out[i] = self._joined([lines[j] for j in chain[:k]], [quads[j] for j in chain[:k]])
                    used.update(chain[:k])
                    break
        if not out:
            return lines
        return [out.get(i, line) for i, line in enumerate(lines) if i in out or i not in used]

    @staticmethod
    def _joined(pieces: list[dict[str, Any]], quads: list[np.ndarray]) -> dict[str, Any]:
        line = {"points": [[round(float(x), 2), round(float(y), 2)] for x, y in joined_quad(quads)],
                "text": " ".join(p["text"] for p in pieces),
                "score": min(p["score"] for p in pieces), "box_score": min(p["box_score"] for p in pieces)}
        if all("greedy_text" in p for p in pieces):
            line["greedy_text"] = " ".join(p["greedy_text"] for p in pieces)
        return line

    def to_json(self) -> dict[str, Any]:
        return {"min_count": self.min_count, "labels": sorted(self.labels), "whole": sorted(self.whole),
                "not_first": sorted(self.not_first), "not_last": sorted(self.not_last)}

    @classmethod
    def from_json(cls, doc: Any) -> LineJoiner:
        """The manifest's ``recognizer.decoder.join_lines``; ValueError names the bad field."""
        labels, whole, min_count = _section(doc, "join_lines", ("labels", "whole"))
        not_first, not_last, _ = _section(doc, "join_lines", ("not_first", "not_last"))
        if any(" " not in t for t in labels):
            raise ValueError("join_lines.labels: a label of one word")
        if any(" " in w for w in (*not_first, *not_last)):
            raise ValueError("join_lines.not_first / not_last: a word with a space")
        return cls(labels, whole, not_first, not_last, min_count)


def _word_places(texts: Iterable[str]) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """How often each word of the labels occurs, and how often as its label's first and last
    word (labels with an empty word, from doubled spaces, left out)."""
    seen: Counter[str] = Counter()
    first: Counter[str] = Counter()
    last: Counter[str] = Counter()
    for text in texts:
        words = text.split(" ")
        if "" in words:
            continue
        seen.update(words)
        first[words[0]] += 1
        last[words[-1]] += 1
    return seen, first, last


def _section(doc: Any, name: str, lists: tuple[str, str]) -> tuple[list[str], list[str], int]:
    """A manifest section's two lists of non-empty strings and its ``min_count``; ValueError
    names the bad field."""
    if not isinstance(doc, dict):
        raise ValueError(f"{name}: not an object")
    for key in lists:
        value = doc.get(key)
        if not isinstance(value, list) or not all(isinstance(w, str) and w for w in value):
            raise ValueError(f"{name}.{key}: not a list of non-empty strings")
        if len(value) > MAX_WORDS:
            raise ValueError(f"{name}.{key}: more than {MAX_WORDS} entries")
    min_count = doc.get("min_count")
    if not isinstance(min_count, int) or isinstance(min_count, bool) or min_count < 1:
        raise ValueError(f"{name}.min_count: not a positive integer")
    return doc[lists[0]], doc[lists[1]], min_count


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
