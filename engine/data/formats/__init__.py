"""Dataset format registry: format name (as written in a recipe) -> reader.

Unknown names fail with a "did you mean" suggestion and the list of known formats, because a
typo in a recipe should cost seconds, not a stack trace.  Aliases cover the names people
actually type (``voc``, ``paddleocr``, ``label-studio`` ...).
"""

from __future__ import annotations

import difflib

from .base import DatasetReader, LabelLine, Sample
from .icdar2015 import Icdar2015Reader, write_icdar2015
from .labelimg import LabelImgReader
from .labelstudio import LABEL_CONFIG, LabelStudioReader, write_labelstudio
from .lines import LinesReader
from .ppocrlabel import PPOCRLabelReader, write_ppocrlabel

READERS: dict[str, type[DatasetReader]] = {
    "icdar2015": Icdar2015Reader,
    "labelimg": LabelImgReader,
    "ppocrlabel": PPOCRLabelReader,
    "labelstudio": LabelStudioReader,
    "lines": LinesReader,
}

ALIASES: dict[str, str] = {
    "icdar": "icdar2015",
    "icdar15": "icdar2015",
    "voc": "labelimg",
    "pascalvoc": "labelimg",
    "ppocr": "ppocrlabel",
    "paddleocr": "ppocrlabel",
    "ls": "labelstudio",
    "rec": "lines",
    "reclines": "lines",
}

WRITERS = {
    "icdar2015": write_icdar2015,
    "ppocrlabel": write_ppocrlabel,
    "labelstudio": write_labelstudio,
}


class UnknownFormatError(ValueError):
    """A dataset format name that is not registered."""


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "").replace(" ", "")


def canonical_format(name: str) -> str:
    """The registered name for `name` (case, dashes and underscores do not matter; aliases ok)."""
    key = _norm(name)
    if key in READERS:
        return key
    if key in ALIASES:
        return ALIASES[key]
    known = sorted(READERS)
    close = difflib.get_close_matches(key, known + sorted(ALIASES), n=1, cutoff=0.6)
    hint = f" Did you mean {ALIASES.get(close[0], close[0])!r}?" if close else ""
    raise UnknownFormatError(
        f"unknown dataset format {name!r}.{hint} Known formats: {', '.join(known)}"
    )


def get_reader(name: str) -> DatasetReader:
    return READERS[canonical_format(name)]()


def get_writer(name: str):
    fmt = canonical_format(name)
    if fmt not in WRITERS:
        raise UnknownFormatError(
            f"no writer for {fmt!r}; writers exist for {', '.join(sorted(WRITERS))}"
        )
    return WRITERS[fmt]


__all__ = [
    "ALIASES",
    "LABEL_CONFIG",
    "READERS",
    "WRITERS",
    "DatasetReader",
    "LabelLine",
    "Sample",
    "UnknownFormatError",
    "canonical_format",
    "get_reader",
    "get_writer",
    "write_icdar2015",
    "write_labelstudio",
    "write_ppocrlabel",
]
