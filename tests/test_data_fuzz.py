"""Fuzzing each dataset reader with mutated label files, like the recipe fuzz of
test_recipe_errors.py: reading and validating never raises, and every problem names the label
file and a line (Label Studio: the line its task starts on)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.data.formats import get_reader
from engine.data.validate import ValidationOptions, validate_samples

EX = Path(__file__).resolve().parents[1] / "examples" / "datasets"

# format -> (dataset root below examples/datasets, the label file that is mutated)
FORMATS = {
    "icdar2015": ("icdar2015/train", "gt/gt_plate_1.txt"),
    "labelimg": ("labelimg", "annotations/plate_1.xml"),
    "ppocrlabel": ("ppocrlabel/images", "Label.txt"),
    "labelstudio": ("labelstudio", "export.json"),
    "lines": ("lines", "labels.txt"),
}
# what label files are made of, plus the characters that break their syntax
ALPHABET = " ,.:;-_#\t\n\r\"'{}[]<>/\\&%!?=0123456789eEaAxX\x00\xff\u00e9\u2028"
SNIPPETS = ["###", "NaN", "1e999", "-1", "9" * 30, "null", "true", "[]", "{}", '"points"',
            '"result"', '"value"', "<object>", "</object>", "<bndbox>", "<!ENTITY x 'y'>",
            "&x;", "../", "/etc/passwd", "\t", "\n\n", ",,,,,,,,"]
SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


class _Copies(dict):
    """format -> (root, label file, its original text); a short repr for falsifying examples."""

    def __repr__(self) -> str:
        return "<example datasets>"


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> _Copies:
    """One copy of each example dataset, shared by the examples (each restores its file)."""
    out = _Copies()
    base = tmp_path_factory.mktemp("fuzz")
    for fmt, (sub, label) in FORMATS.items():
        top = sub.split("/")[0]
        shutil.copytree(EX / top, base / top)
        root = base / sub
        out[fmt] = (root, root / label, (root / label).read_text(encoding="utf-8-sig"))
    return out


def _check(fmt: str, root: Path, label: Path) -> None:
    samples, problems = get_reader(fmt).parse(root)
    res = validate_samples(samples, root, "train", ValidationOptions(charset=None))
    for p in [*problems, *res.problems]:
        assert Path(p.file) == label, str(p)
        assert isinstance(p.line, int) and p.line >= 1, str(p)


def _mutate(text: str, cut: int, delete: int, insert: str) -> str:
    cut = min(cut, len(text))
    return text[:cut] + insert + text[cut + delete:]


@pytest.mark.parametrize("fmt", FORMATS)
@SETTINGS
@given(data=st.data())
def test_mutated_label_files_never_traceback_and_name_file_and_line(datasets, fmt, data):
    root, label, original = datasets[fmt]
    cut = data.draw(st.integers(0, len(original)), label="cut")
    delete = data.draw(st.integers(0, 12), label="delete")
    insert = data.draw(st.one_of(st.text(alphabet=ALPHABET, max_size=10),
                                 st.sampled_from(SNIPPETS)), label="insert")
    label.write_text(_mutate(original, cut, delete, insert), encoding="utf-8")
    try:
        _check(fmt, root, label)
    finally:
        label.write_text(original, encoding="utf-8")


@pytest.mark.parametrize("fmt", FORMATS)
@SETTINGS
@given(data=st.data())
def test_byte_level_corruption_never_tracebacks(datasets, fmt, data):
    root, label, original = datasets[fmt]
    raw = bytearray(original.encode())
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        at = data.draw(st.integers(0, len(raw) - 1), label="at")
        raw[at] = data.draw(st.integers(0, 255), label="byte")
    label.write_bytes(bytes(raw))
    try:
        _check(fmt, root, label)
    finally:
        label.write_text(original, encoding="utf-8")
