"""Hostile datasets, for each of the five formats: every bound of engine/data/limits.py is hit
for real (real files, symlinks, FIFOs, crafted image headers) and the refusal is a Problem that
names the label file and, where the format has lines, the line."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from engine.data.errors import Problem
from engine.data.formats import get_reader
from engine.data.limits import (
    MAX_BOXES_PER_IMAGE,
    MAX_IMAGE_PIXELS,
    MAX_INDEX_FILE_BYTES,
    MAX_LABEL_FILE_BYTES,
    MAX_LINE_CHARS,
    MAX_POINTS_PER_POLYGON,
)
from engine.data.validate import validate_samples

EX = Path(__file__).resolve().parents[1] / "examples" / "datasets"
WALL_BOUND_S = 5.0

# format -> (dataset root below examples/datasets, its label file, the image that file names first)
FORMATS = {
    "icdar2015": ("icdar2015/train", "gt/gt_plate_1.txt", "images/plate_1.jpg"),
    "labelimg": ("labelimg", "annotations/plate_1.xml", "images/plate_1.jpg"),
    "ppocrlabel": ("ppocrlabel/images", "Label.txt", "plate_1.jpg"),
    "labelstudio": ("labelstudio", "export.json", "images/plate_1.jpg"),
    "lines": ("lines", "labels.txt", "crops/word_0.jpg"),
}
INDEX_FORMATS = ("ppocrlabel", "labelstudio", "lines")  # one label file for the whole split


def example(fmt: str, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A private copy of the format's example dataset: (root, label file, first image)."""
    sub, label, image = FORMATS[fmt]
    top = sub.split("/")[0]
    shutil.copytree(EX / top, tmp_path / top)
    root = tmp_path / sub
    return root, root / label, root / image


def problems_of(fmt: str, root: Path) -> list[Problem]:
    started = time.monotonic()
    samples, problems = get_reader(fmt).parse(root)
    res = validate_samples(samples, root, "train")
    assert time.monotonic() - started < WALL_BOUND_S
    return [*problems, *res.problems]


def the_problem(problems: list[Problem], needle: str) -> Problem:
    hits = [p for p in problems if needle in p.message]
    assert len(hits) == 1, [str(p) for p in problems]
    return hits[0]


def has_lines(fmt: str) -> bool:
    return fmt != "icdar2015"  # one gt file per image: image problems name that file only


# ------------------------------------------------------------------ label files


@pytest.mark.parametrize("fmt", FORMATS)
def test_label_file_over_its_size_bound_is_refused_unread(tmp_path, fmt):
    root, label, _ = example(fmt, tmp_path)
    limit = MAX_INDEX_FILE_BYTES if fmt in INDEX_FORMATS else MAX_LABEL_FILE_BYTES
    with label.open("r+b") as fh:  # sparse: 256 MiB cost no disk and, refused by size, no read
        fh.truncate(limit + 1)
    p = the_problem(problems_of(fmt, root), "label file is larger than the limit")
    assert Path(p.file) == label and p.line is None
    assert f"larger than the limit of {limit >> 20} MiB ({limit + 1:,} bytes)" in p.message


@pytest.mark.parametrize("fmt", FORMATS)
def test_label_file_symlinked_out_of_the_root_is_not_read(tmp_path, fmt):
    root, label, _ = example(fmt, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(label.read_bytes().replace(b"PLATE", b"SECRET"))
    label.unlink()
    label.symlink_to(secret)
    problems = problems_of(fmt, root)
    p = the_problem(problems, "label file resolves outside the dataset root")
    assert Path(p.file) == label
    assert not any("SECRET" in str(q) for q in problems)


@pytest.mark.parametrize("fmt", FORMATS)
def test_label_fifo_is_refused_without_blocking(tmp_path, fmt):
    root, label, _ = example(fmt, tmp_path)
    label.unlink()
    os.mkfifo(label)  # no writer: a plain open() would block forever
    p = the_problem(problems_of(fmt, root), "not a regular file")
    assert Path(p.file) == label


LONG_LINE = {  # formats with lines, and a valid-looking line of MAX_LINE_CHARS + 1 characters
    "icdar2015": lambda n: "1,1,30,1,30,20,1,20," + "A" * (n - 20),
    "ppocrlabel": lambda n: "plate_1.jpg\t" + json.dumps(
        [{"transcription": "A" * (n - 83), "points": [[1, 1], [30, 1], [30, 20], [1, 20]]}]),
    "lines": lambda n: "crops/word_0.jpg\t" + "A" * (n - 17),
}


@pytest.mark.parametrize("fmt", LONG_LINE)
def test_a_line_over_the_length_bound_is_reported_and_the_rest_read(tmp_path, fmt):
    root, label, _ = example(fmt, tmp_path)
    lines = label.read_text(encoding="utf-8-sig").splitlines()
    long = LONG_LINE[fmt](MAX_LINE_CHARS + 1)
    assert len(long) == MAX_LINE_CHARS + 1
    label.write_text("\n".join([lines[0], long, *lines[1:]]) + "\n")
    samples, problems = get_reader(fmt).parse(root)
    p = the_problem(list(problems), "characters long, more than the limit")
    assert (Path(p.file), p.line) == (label, 2)
    assert len(problems) == 1 and samples  # the other lines are read as before


# ------------------------------------------------------------------ boxes and points


def _quad(i: int) -> list[list[float]]:
    x, y = 1 + (i % 40) * 7, 1 + (i // 40) % 100 * 2
    return [[x, y], [x + 5, y], [x + 5, y + 1.5], [x, y + 1.5]]


def _many_boxes(fmt: str, label: Path, n: int) -> int:
    """Rewrite the label file so its first image has ``n`` boxes; the line of box n (1-based)."""
    if fmt == "icdar2015":
        label.write_text("".join(f"{','.join(str(v) for p in _quad(i) for v in p)},A\n"
                                 for i in range(n)))
        return n
    if fmt == "ppocrlabel":
        rows = label.read_text().splitlines()
        boxes = [{"transcription": "A", "points": _quad(i), "difficult": False} for i in range(n)]
        label.write_text("\n".join([rows[0].split("\t")[0] + "\t" + json.dumps(boxes), *rows[1:]]))
        return 1
    if fmt == "labelstudio":
        tasks = json.loads(label.read_text())
        res = tasks[0]["annotations"][0]["result"]
        geometry = next(r for r in res if r["type"] == "rectangle")
        text = next(r for r in res if r["type"] == "textarea")
        res[:] = [dict(r, id=f"n{i}") for i in range(n) for r in (geometry, text)]
        label.write_text("[\n" + ",\n".join(json.dumps(t) for t in tasks) + "\n]\n")
        return 2
    # labelimg: the 2,001st <object> starts on the line returned
    head = label.read_text().partition("<object>")[0]
    obj = "<object><name>A</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax>" \
          "<ymax>9</ymax></bndbox></object>\n"
    label.write_text(head + obj * n + "</annotation>\n")
    return head.count("\n") + n


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "lines"])  # lines: 1 region an image
def test_more_boxes_than_the_bound_refuse_the_image(tmp_path, fmt):
    root, label, _ = example(fmt, tmp_path)
    line = _many_boxes(fmt, label, MAX_BOXES_PER_IMAGE + 1)
    problems = problems_of(fmt, root)
    p = the_problem(problems, f"more than the limit of {MAX_BOXES_PER_IMAGE:,}")
    assert (Path(p.file), p.line) == (label, line)
    assert f"{MAX_BOXES_PER_IMAGE + 1:,} text regions" in p.message
    _many_boxes(fmt, label, MAX_BOXES_PER_IMAGE)
    assert not any("text regions" in q.message for q in problems_of(fmt, root))


def _polygon(n: int) -> list[list[float]]:
    import math

    return [[50 + 20 * math.cos(2 * math.pi * k / n), 30 + 10 * math.sin(2 * math.pi * k / n)]
            for k in range(n)]


@pytest.mark.parametrize("fmt", ["ppocrlabel", "labelstudio"])  # the formats with free polygons
def test_a_polygon_with_more_points_than_the_bound_is_refused(tmp_path, fmt):
    root, label, _ = example(fmt, tmp_path)
    n = MAX_POINTS_PER_POLYGON + 1
    if fmt == "ppocrlabel":
        rows = label.read_text().splitlines()
        path, boxes = rows[1].split("\t")
        items = json.loads(boxes)
        items[0]["points"] = _polygon(n)
        label.write_text("\n".join([rows[0], path + "\t" + json.dumps(items), *rows[2:]]) + "\n")
        line = 2
    else:
        tasks = json.loads(label.read_text())
        results = tasks[1]["annotations"][0]["result"]
        for r in (r for r in results if r["id"] == results[0]["id"]):
            r["type"] = "polygon" if r["type"] == "rectangle" else r["type"]
            r["value"] = {k: v for k, v in r["value"].items() if k not in ("x", "y", "width", "height")}
            r["value"]["points"] = [[x / 4, y / 4] for x, y in _polygon(n)]
        label.write_text("[\n" + ",\n".join(json.dumps(t) for t in tasks) + "\n]\n")
        line = 3
    p = the_problem(problems_of(fmt, root), f"polygon has {n} points, more than the limit")
    assert (Path(p.file), p.line) == (label, line)


# ------------------------------------------------------------------ images


def png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (1-bit grey): a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def jpeg_header(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose SOF0 segment is rewritten to claim ``width`` x ``height``."""
    buf = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


BOMBS = {
    # past Pillow's own bound (179 MP): it raises DecompressionBombError, not an OSError
    "png-30000x30000": (png_header(30000, 30000), "could be decompression bomb"),
    # past the project's bound, below Pillow's: refused before load() decodes it
    "jpeg-10000x6000": (jpeg_header(10000, 6000), "10000x6000 = 60.0 megapixels by its header"),
}


@pytest.mark.parametrize("bomb", BOMBS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_decompression_bomb_is_refused_by_its_header(tmp_path, fmt, bomb):
    root, label, image = example(fmt, tmp_path)
    data, needle = BOMBS[bomb]
    image.write_bytes(data)
    p = the_problem(problems_of(fmt, root), needle)
    assert Path(p.file) == label and (p.line is not None or not has_lines(fmt))
    assert image.name in p.message


def test_an_image_at_the_pixel_bound_is_decoded(tmp_path):
    root, _label, image = example("lines", tmp_path)
    assert MAX_IMAGE_PIXELS == 50_000_000
    Image.new("1", (10000, 5000)).save(image, "PNG")  # 50.0 MP exactly, 1 bit a pixel
    assert not [p for p in problems_of("lines", root) if image.name in p.message]


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_image_symlinked_out_of_the_root_is_refused(tmp_path, fmt):
    root, label, image = example(fmt, tmp_path)
    outside = tmp_path / "elsewhere.jpg"
    shutil.copy(image, outside)
    image.unlink()
    image.symlink_to(outside)
    p = the_problem(problems_of(fmt, root), "resolves (through a symlink) outside the dataset root")
    assert Path(p.file) == label and (p.line is not None or not has_lines(fmt))


def test_an_image_that_is_a_fifo_is_refused(tmp_path):
    root, label, image = example("ppocrlabel", tmp_path)
    image.unlink()
    os.mkfifo(image)
    p = the_problem(problems_of("ppocrlabel", root), "is not a regular file")
    assert (Path(p.file), p.line) == (label, 1)


# ------------------------------------------------------------------ XML and JSON


LAUGHS = "".join(f'  <!ENTITY l{i} "{f"&l{i - 1};" * 10 if i else "lol"}">\n' for i in range(10))
XML_ATTACKS = {
    "billion laughs": (f'<?xml version="1.0"?>\n<!DOCTYPE annotation [\n{LAUGHS}]>\n'
                       "<annotation><filename>&l9;</filename></annotation>\n",
                       3, "declares the entity 'l0'"),
    "external entity": ('<?xml version="1.0"?>\n<!DOCTYPE annotation [\n'
                        '  <!ENTITY x SYSTEM "file:///etc/passwd">\n]>\n'
                        "<annotation><filename>&x;</filename></annotation>\n",
                        3, "declares the entity 'x'"),
    "external parameter entity": ('<?xml version="1.0"?>\n<!DOCTYPE annotation [\n'
                                  '  <!ENTITY % p SYSTEM "file:///etc/passwd">\n  %p;\n]>\n'
                                  "<annotation/>\n", 3, "declares the parameter entity 'p'"),
    "undeclared entity": ("<annotation><filename>&x;</filename></annotation>\n", 1,
                          "malformed XML: undefined entity"),
}


@pytest.mark.parametrize("attack", XML_ATTACKS)
def test_labelimg_xml_entities_are_refused(tmp_path, attack):
    root, label, _ = example("labelimg", tmp_path)
    text, line, needle = XML_ATTACKS[attack]
    label.write_text(text)
    problems = problems_of("labelimg", root)
    p = the_problem(problems, needle)
    assert (Path(p.file), p.line) == (label, line)
    assert not any("root:" in str(q) or "lollol" in str(q) for q in problems)


def test_labelimg_never_loads_an_external_dtd(tmp_path):
    root, label, _ = example("labelimg", tmp_path)
    text = label.read_text()
    label.write_text(text.replace("<annotation>", '<!DOCTYPE annotation SYSTEM "/dev/zero">\n'
                                  "<annotation>", 1))
    samples, problems = get_reader("labelimg").parse(root)  # /dev/zero would never end
    assert not problems and [s.image.name for s in samples] == ["plate_1.jpg", "plate_4.jpg"]


@pytest.mark.parametrize("fmt,text,line", [
    ("labelstudio", '[{"id": 1},\n' + "[" * 100_000 + "]" * 100_000 + "]", 2),
    ("ppocrlabel", "plate_1.jpg\t" + "[" * 100_000 + "]" * 100_000 + "\n", 1),
], ids=["labelstudio", "ppocrlabel"])
def test_json_nested_past_the_decoder_is_a_located_problem(tmp_path, fmt, text, line):
    root, label, _ = example(fmt, tmp_path)
    label.write_text(text)
    p = the_problem(problems_of(fmt, root), "JSON nested too deeply")
    assert (Path(p.file), p.line) == (label, line)


# ------------------------------------------------------------------ the run directory


def _tree(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_refused_dataset_leaves_the_data_stage_as_it_was(tmp_path):
    root, label, _ = example("icdar2015", tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: hostile\nworkdir: {tmp_path / 'runs'}\n"
                      f"dataset: {{format: icdar2015, train: {root}, val_fraction: 0.34}}\n")
    cli = [sys.executable, "-m", "engine.cli", "run", str(recipe), "--only", "data"]
    first = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    data_dir = tmp_path / "runs" / "hostile" / "data"
    before = _tree(data_dir)
    good = label.read_bytes()
    label.unlink()
    label.symlink_to("/etc/passwd")
    res = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "Traceback" not in res.stdout + res.stderr
    assert "gt_plate_1.txt: label file resolves outside the dataset root" in res.stdout
    assert _tree(data_dir) == before  # manifest, crops, result.json: the last good data stage
    # doit forgets a failed task's success, so the data stage runs once more on the restored
    # file, and writes the same result.json: what the train stages depend on, so a run that had
    # trained would not train again
    label.unlink()
    label.write_bytes(good)
    again = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _tree(data_dir)["result.json"] == before["result.json"]
