"""Dataset readers on the example datasets, malformed inputs, writers round-tripping."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.data.errors import DatasetError
from engine.data.formats import (
    UnknownFormatError,
    canonical_format,
    get_reader,
    get_writer,
    write_icdar2015,
    write_labelstudio,
    write_ppocrlabel,
)
from engine.data.formats.labelstudio import points_to_rect, rect_to_points
from engine.data.manifest import ManifestRecord, TextLine
from engine.data.validate import validate_samples

EX = Path(__file__).resolve().parents[1] / "examples" / "datasets"


def by_name(samples):
    return {s.image.name: s for s in samples}


def copy_example(fmt: str, tmp_path: Path) -> Path:
    dst = tmp_path / fmt
    shutil.copytree(EX / fmt, dst)
    return dst


def close(a, b, tol=0.05):
    return all(math.dist(p, q) <= tol for p, q in zip(a, b, strict=True))


# ---------------------------------------------------------------- readers on the examples


def test_icdar2015_example():
    s = by_name(get_reader("icdar2015").read(EX / "icdar2015" / "train"))
    assert sorted(s) == ["plate_1.jpg", "plate_2.jpg", "plate_3.jpg"]
    p1 = s["plate_1.jpg"].lines
    # first line of a BOM-prefixed file parses as a number, transcription keeps its comma
    assert p1[0].points == [[50, 29.5], [270, 29.5], [270, 50.5], [50, 50.5]]
    assert p1[0].text == "SERIAL NO: 4711-B" and p1[0].line == 1
    assert p1[1].text == "230V, 50Hz"
    assert p1[2].text == "###" and p1[2].ignore
    assert not any(ln.ignore for ln in s["plate_2.jpg"].lines)


def test_ppocrlabel_example():
    s = by_name(get_reader("ppocrlabel").read(EX / "ppocrlabel" / "images"))
    assert len(s) == 3
    assert s["plate_1.jpg"].image.is_file()  # "images/plate_1.jpg" resolved against the parent
    first = s["plate_3.jpg"].lines[0]
    assert first.ignore and first.text == "MADE IN GERMANY"  # difficult: ignored, text kept
    assert [ln.text for ln in s["plate_1.jpg"].lines][2] == "###"


def test_labelimg_example():
    s = by_name(get_reader("voc").read(EX / "labelimg"))
    p1 = s["plate_1.jpg"]
    assert p1.size_hint == (320, 128)
    assert p1.lines[0].text == "SERIAL NO: 4711-B"
    assert p1.lines[0].points == [[50, 30], [270, 30], [270, 50], [50, 50]]  # TL TR BR BL
    assert p1.lines[2].ignore
    assert p1.image.is_file()


def test_labelstudio_example_matches_icdar_geometry():
    ls = by_name(get_reader("label-studio").read(EX / "labelstudio"))
    ic = by_name(get_reader("icdar2015").read(EX / "icdar2015" / "train"))
    assert sorted(ls) == ["plate_1.jpg", "plate_2.jpg", "plate_3.jpg"]  # upload prefix stripped
    for name in ls:
        got = [(ln.text, ln.points) for ln in ls[name].lines]
        want = [(ln.text, ln.points) for ln in ic[name].lines]
        assert [t for t, _ in got] == [t for t, _ in want]
        for (_, a), (_, b) in zip(got, want, strict=True):
            assert close(a, b), (name, a, b)  # rotated rectangles and polygons alike
    assert ls["plate_1.jpg"].lines[2].ignore  # "###" label without a transcription


def test_lines_example():
    samples = get_reader("lines").read(EX / "lines")
    assert [s.lines[0].text for s in samples] == ["4711-B", "230V", "IP65", "AC-12", "50Hz"]
    assert all(s.recognition_only and s.lines[0].points is None for s in samples)
    res = validate_samples(samples, EX / "lines", "train")
    assert not res.problems
    r = res.records[0]
    assert r.recognition_only and r.lines[0].points[2] == [r.width, r.height]


# ---------------------------------------------------------------- registry


def test_registry_did_you_mean_and_aliases():
    with pytest.raises(UnknownFormatError) as e:
        get_reader("icdar2051")
    assert "did you mean 'icdar2015'" in str(e.value).lower()
    assert "labelstudio" in str(e.value) and "ppocrlabel" in str(e.value)
    assert canonical_format("Label_Studio") == "labelstudio"
    assert canonical_format("PaddleOCR") == "ppocrlabel"
    with pytest.raises(UnknownFormatError, match="no writer"):
        get_writer("lines")


# ---------------------------------------------------------------- malformed inputs


def _icdar(tmp_path: Path, files: dict[str, bytes | str]) -> Path:
    root = copy_example("icdar2015", tmp_path) / "train"
    for name, body in files.items():
        p = root / "gt" / name
        p.write_bytes(body if isinstance(body, bytes) else body.encode())
    return root


def test_icdar_malformed_lines_all_reported(tmp_path):
    root = _icdar(tmp_path, {
        "gt_plate_2.txt": "1,1,50,1,50,20,1,20,OK\n1,1,50,1,50,20,TRI\n1,x,3,4,5,6,7,8,A\n"
                          "1,1,50,1,50,20,1,20\n",
        "gt_plate_3.txt": b"1,1,50,1,50,20,1,20,ok\n1,1,50,1,50,20,1,20,\xff\xfe\n",
        "gt_missing.txt": "1,1,2,1,2,2,1,2,A\n",
    })
    with pytest.raises(DatasetError) as e:
        get_reader("icdar2015").read(root)
    msg = str(e.value)
    assert "gt_plate_2.txt:2: polygon has 3 points (need >= 4)" in msg
    assert "gt_plate_2.txt:3: expected 8 comma-separated coordinates" in msg
    assert "gt_plate_2.txt:4: missing transcription" in msg
    assert "gt_plate_3.txt:2: not valid UTF-8" in msg
    assert "gt_missing.txt: no image missing.*" in msg
    probs = e.value.problems
    assert len(probs) == 5
    assert {(Path(p.file).name, p.line) for p in probs} >= {("gt_plate_2.txt", 2),
                                                            ("gt_plate_3.txt", 2)}


def test_icdar_image_without_gt(tmp_path):
    root = copy_example("icdar2015", tmp_path) / "train"
    (root / "gt" / "gt_plate_3.txt").unlink()
    with pytest.raises(DatasetError, match=r"plate_3.jpg: image has no ground-truth file"):
        get_reader("icdar2015").read(root)


def test_ppocrlabel_malformed(tmp_path):
    root = copy_example("ppocrlabel", tmp_path) / "images"
    lines = (root / "Label.txt").read_text().splitlines()
    lines[1] = "images/plate_2.jpg [no tab]"
    lines.append("images/plate_3.jpg\t[{\"transcription\": \"A\", \"points\": [[1, 2], [3]]}]")
    lines.append("images/plate_3.jpg\t[{\"transcription\": \"A\", \"points\": ")
    (root / "Label.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as e:
        get_reader("ppocrlabel").read(root)
    msg = str(e.value)
    assert "Label.txt:2: expected IMAGE_PATH<TAB>JSON list" in msg
    assert "Label.txt:4: box 0: points must be [[x, y], ...]" in msg
    assert "Label.txt:5: invalid JSON" in msg


def test_labelimg_malformed(tmp_path):
    root = copy_example("labelimg", tmp_path)
    xml = (root / "annotations" / "plate_1.xml").read_text()
    (root / "annotations" / "plate_1.xml").write_text(xml.replace("<xmax>270</xmax>", "<xmax>abc</xmax>"))
    (root / "annotations" / "plate_4.xml").write_text("<annotation>\n<filename>x.jpg\n</annotation>")
    with pytest.raises(DatasetError) as e:
        get_reader("labelimg").read(root)
    msg = str(e.value)
    line = xml.splitlines().index("      <xmax>270</xmax>") + 1
    assert f"plate_1.xml:{line}: <xmax> is not a number: 'abc'" in msg
    assert "plate_4.xml:3: malformed XML: mismatched tag" in msg


def test_labelimg_rotated_box(tmp_path):
    root = copy_example("labelimg", tmp_path)
    xml = (root / "annotations" / "plate_4.xml").read_text()
    rot = ("<object><type>robndbox</type><name>ROT</name><difficult>0</difficult><robndbox>"
           "<cx>100</cx><cy>50</cy><w>40</w><h>10</h><angle>1.5707963</angle></robndbox></object>")
    (root / "annotations" / "plate_4.xml").write_text(xml.replace("</annotation>", rot + "</annotation>"))
    s = by_name(get_reader("labelimg").read(root))
    pts = s["plate_4.jpg"].lines[-1].points
    # rotated 90° clockwise: the text's top-left is now at the right top
    assert close(pts, [[105, 30], [105, 70], [95, 70], [95, 30]], tol=1e-3)


def test_labelstudio_malformed(tmp_path):
    root = copy_example("labelstudio", tmp_path)
    tasks = json.loads((root / "export.json").read_text())
    tasks[0]["annotations"][0]["result"] = [
        r for r in tasks[0]["annotations"][0]["result"]
        if not (r["id"] == "2r1" and r["type"] == "textarea")]
    del tasks[1]["data"]["image"]
    # one task per line: every problem names the line its task starts on
    (root / "export.json").write_text("[\n" + ",\n".join(json.dumps(t) for t in tasks) + "\n]\n")
    with pytest.raises(DatasetError) as e:
        get_reader("labelstudio").read(root)
    msg = str(e.value)
    assert "export.json:2: task 0 (id=1), region 2r1: region has no transcription" in msg
    assert "export.json:3: task 1 (id=2): task data has no image" in msg
    (root / "export.json").write_text('[{"id": 1,\n "data": }]')
    with pytest.raises(DatasetError, match=r"export.json:2: invalid JSON"):
        get_reader("labelstudio").read(root)


# ---------------------------------------------------------------- writers -> readers


def _records(tmp_path: Path) -> list[ManifestRecord]:
    res = validate_samples(get_reader("icdar2015").read(EX / "icdar2015" / "train"),
                           EX / "icdar2015" / "train", "train")
    assert not res.problems
    recs = res.records
    # non-integer coordinates and an ignored line that keeps a text
    recs[0].lines.append(TextLine([[10.125, 5.5], [40.75, 5.5], [40.75, 20.25], [10.125, 20.25]],
                                  "X, Y", False))
    recs[1].lines.append(TextLine([[60, 60], [80, 60], [80, 70], [60, 70]], "###", True))
    return recs


def _compare(records, samples, keep_ignored_text=True, tol=1e-3):
    got = by_name(samples)
    assert sorted(got) == sorted(Path(r.image).name for r in records)
    for r in records:
        lines = got[Path(r.image).name].lines
        assert len(lines) == len(r.lines)
        for a, b in zip(r.lines, lines, strict=True):
            assert a.ignore == b.ignore
            if keep_ignored_text or not a.ignore:
                assert a.text == b.text
            assert close(a.points, b.points, tol), (a.points, b.points)


def test_icdar2015_round_trip(tmp_path):
    recs = _records(tmp_path)
    root = write_icdar2015(recs, tmp_path / "out")
    _compare(recs, get_reader("icdar2015").read(root), keep_ignored_text=False)


def test_ppocrlabel_round_trip(tmp_path):
    recs = _records(tmp_path)
    recs[2].lines[0].ignore = True  # ignored line with a real text: written as difficult
    root = write_ppocrlabel(recs, tmp_path / "out")
    assert (root / "fileState.txt").read_text().count("\t1\n") == 3
    _compare(recs, get_reader("ppocrlabel").read(root))


@pytest.mark.parametrize("as_predictions", [False, True])
def test_labelstudio_round_trip(tmp_path, as_predictions):
    recs = _records(tmp_path)
    recs[2].lines.append(TextLine([[5, 5], [30, 8], [28, 20], [6, 18]], "QUAD", False))
    path = write_labelstudio(recs, tmp_path / "out", as_predictions=as_predictions)
    tasks = json.loads(path.read_text())
    types = {r["type"] for t in tasks for a in t.get("annotations", t.get("predictions"))
             for r in a["result"]}
    assert types == {"rectangle", "polygon", "labels", "textarea"}
    if as_predictions:  # predictions are pre-labels, not ground truth: the reader refuses them
        with pytest.raises(DatasetError, match="no \\(non-cancelled\\) annotation"):
            get_reader("labelstudio").read(path.parent)
        return
    _compare(recs, get_reader("labelstudio").read(path.parent), tol=0.02)


@settings(max_examples=60, deadline=None)
@given(x=st.floats(0, 500), y=st.floats(0, 500), w=st.floats(1, 300), h=st.floats(1, 100),
       rot=st.floats(0, 359.9))
def test_rect_points_inverse(x, y, w, h, rot):
    pts = rect_to_points(x, y, w, h, rot)
    back = points_to_rect(pts)
    assert back is not None
    assert close(rect_to_points(*back), pts, tol=0.01)


def test_icdar_official_directory_names(tmp_path):
    src = EX / "icdar2015" / "train"
    root = tmp_path / "ic15"
    shutil.copytree(src / "images", root / "ch4_training_images")
    shutil.copytree(src / "gt", root / "ch4_training_localization_transcription_gt")
    assert len(get_reader("icdar2015").read(root)) == 3


def test_labelstudio_rotated_view_rejected(tmp_path):
    root = copy_example("labelstudio", tmp_path)
    tasks = json.loads((root / "export.json").read_text())
    for r in tasks[2]["annotations"][0]["result"]:
        r["image_rotation"] = 90
    (root / "export.json").write_text(json.dumps(tasks))
    with pytest.raises(DatasetError, match=r"task 2 \(id=3\), region 1r0: region was drawn on a "
                       r"view rotated by 90°"):
        get_reader("labelstudio").read(root)


def test_labelimg_transcription_sidecar(tmp_path):
    root = copy_example("labelimg", tmp_path)
    xml = root / "annotations" / "plate_1.xml"
    xml.write_text(xml.read_text().replace("<name>SERIAL NO: 4711-B</name>", "<name>text</name>"))
    sidecar = xml.with_suffix(".txt")
    sidecar.write_text("SERIAL NO: 4711-C\nSECOND\n###\n")
    s = by_name(get_reader("labelimg").read(root))
    lines = s["plate_1.jpg"].lines
    assert [ln.text for ln in lines[:2]] == ["SERIAL NO: 4711-C", "SECOND"]
    assert lines[2].ignore
    sidecar.write_text("ONLY ONE\n")
    with pytest.raises(DatasetError) as e:
        get_reader("labelimg").read(root)
    assert f"{sidecar}:1: 1 transcriptions for 3 <object> elements in plate_1.xml" in str(e.value)
