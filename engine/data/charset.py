"""Charset specs: ``"0-9A-Za-z -:./%()#+,"`` -> the ordered, de-duplicated character string.

Why not regex-style ranges?  Recipes want punctuation like ``" -:"`` (space, dash, colon) and a
regex reading would turn that into the 27-character range U+0020..U+003A silently.  So a ``-``
makes a range only between two characters of the same kind — both digits, both upper-case letters
or both lower-case letters (``0-9``, ``A-Z``, ``a-z``, ``А-Я``) — and is a literal ``-`` everywhere
else.  ``\\`` escapes the next character (``\\-`` is always a literal dash, ``\\\\`` a backslash).

The CTC blank is class 0, so character i of the expanded charset is class i + 1 (contract).
"""

from __future__ import annotations

import unicodedata

DEFAULT_CHARSET_SPEC = "0-9A-Za-z -:./%()#+,"


class CharsetError(ValueError):
    """A charset spec that cannot be expanded (reversed range, empty, dangling escape)."""


def _kind(c: str) -> str | None:
    if c.isdigit():
        return "digit"
    if c.isalpha() and c.isupper():
        return "upper"
    if c.isalpha() and c.islower():
        return "lower"
    return None


def expand_charset(spec: str) -> str:
    """Expand a charset spec into the ordered, de-duplicated characters (first occurrence wins)."""
    if not spec:
        raise CharsetError("charset is empty")
    tokens: list[tuple[str, bool]] = []  # (char, escaped)
    i = 0
    while i < len(spec):
        c = spec[i]
        if c == "\\":
            if i + 1 >= len(spec):
                raise CharsetError(f"charset {spec!r}: dangling '\\' at the end")
            tokens.append((spec[i + 1], True))
            i += 2
            continue
        tokens.append((c, False))
        i += 1
    out: list[str] = []
    j = 0
    while j < len(tokens):
        c, _ = tokens[j]
        if (
            j + 2 < len(tokens)
            and tokens[j + 1] == ("-", False)
            and _kind(c) is not None
            and _kind(c) == _kind(tokens[j + 2][0])
        ):
            end = tokens[j + 2][0]
            if ord(end) < ord(c):
                raise CharsetError(f"charset {spec!r}: range {c}-{end} is reversed")
            out.extend(chr(k) for k in range(ord(c), ord(end) + 1))
            j += 3
            continue
        out.append(c)
        j += 1
    return "".join(dict.fromkeys(out))


DEFAULT_CHARSET = expand_charset(DEFAULT_CHARSET_SPEC)


def unknown_chars(text: str, charset: str | set[str]) -> list[str]:
    """Characters of `text` that are not in `charset`, in order of appearance (with repeats)."""
    allowed = charset if isinstance(charset, set) else set(charset)
    return [c for c in text if c not in allowed]


def lookalike(c: str, allowed: set[str]) -> str | None:
    """A stand-in for `c` that is in the charset, or None.

    Tries, in order: the character without accents (NFKD minus combining marks: é -> e, ﬁ -> fi is
    skipped as it is two characters), the other letter case (an upper-case-only plate charset reads
    'a' as 'A').  Used by the ``replace`` policy before it falls back to the placeholder.
    """
    base = "".join(ch for ch in unicodedata.normalize("NFKD", c) if not unicodedata.combining(ch))
    candidates = [base, c.upper(), c.lower(), base.upper(), base.lower()]
    for cand in candidates:
        if len(cand) == 1 and cand in allowed:
            return cand
    return None


def replace_unknown(text: str, charset: str | set[str], placeholder: str | None = None) -> str:
    """`text` with every character outside `charset` replaced by a look-alike, else `placeholder`,
    else dropped (placeholder None)."""
    allowed = charset if isinstance(charset, set) else set(charset)
    out = []
    for c in text:
        if c in allowed:
            out.append(c)
            continue
        sub = lookalike(c, allowed)
        if sub is not None:
            out.append(sub)
        elif placeholder is not None:
            out.append(placeholder)
    return "".join(out)
