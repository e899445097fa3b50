"""Label Studio JSON export (the full "JSON" export, a list of tasks) for OCR projects.

A task looks like ``{"id": 7, "data": {"image": "/data/local-files/?d=imgs/a.jpg"},
"annotations": [{"result": [...]}]}``.  Label Studio's OCR template stores each region as
several results sharing one ``id``: a geometry result (``rectangle``/``rectanglelabels`` with
``x, y, width, height, rotation`` or ``polygon``/``polygonlabels`` with ``points``; all in
*percent* of ``original_width``/``original_height``), optionally a ``labels`` result, and a
``textarea`` result whose ``value.text`` is a list of strings (joined with a space).

Rotation: a rectangle's ``rotation`` is in degrees, clockwise, about its top-left corner
``(x, y)`` — the corners are p0 = (x, y), p1 = p0 + w·(cos r, sin r), p2 = p1 + h·(-sin r, cos r),
p3 = p0 + h·(-sin r, cos r) in pixels (y down), which keeps the text's own top-left first.

An ``image_rotation`` other than 0 (the annotator rotated the *view*) is rejected: its
coordinates refer to the rotated view, not to the stored pixels.

Ignore: transcription ``###`` or a label named ``###``/``ignore``.  A region without a
transcription is a problem (label it ``###`` if unreadable) — dropping an annotator's box
silently would hide unfinished work.  Of several annotations the last not-cancelled one is used.

Image paths: ``/data/local-files/?d=REL`` resolves to ``root/REL``; uploads
(``/data/upload/N/1a2b3c4d-name.jpg``) and URLs resolve by file name in ``root`` or
``root/images``, with or without Label Studio's 8-hex upload prefix.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from ..errors import ProblemList
from ..limits import MAX_INDEX_FILE_BYTES
from ..manifest import ManifestRecord, atomic_write_text
from .base import (
    IGNORE_TEXTS,
    IMAGE_EXTENSIONS,
    DatasetReader,
    LabelLine,
    Sample,
    check_root,
    decode_label_text,
    json_value,
    parse_points,
    read_label_bytes,
)

GEOMETRY_TYPES = {"rectangle", "rectanglelabels", "polygon", "polygonlabels"}
IGNORE_LABELS = frozenset({"###", "ignore", "Ignore"})
UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")

#: Labelling config that matches what `write_labelstudio` produces (paste into the project).
LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Labels name="label" toName="image"><Label value="Text"/><Label value="###"/></Labels>
  <Rectangle name="bbox" toName="image" strokeWidth="3"/>
  <Polygon name="poly" toName="image" strokeWidth="3"/>
  <TextArea name="transcription" toName="image" editable="true" perRegion="true"
            required="true" maxSubmissions="1" rows="2" placeholder="Recognized Text"
            displayMode="region-list"/>
</View>"""


def rect_to_points(x: float, y: float, w: float, h: float, rotation_deg: float) -> list[list[float]]:
    """Corners (pixels) of a Label Studio rectangle rotated clockwise about its top-left."""
    r = math.radians(rotation_deg)
    c, s = math.cos(r), math.sin(r)
    p0 = (x, y)
    p1 = (x + w * c, y + w * s)
    p2 = (p1[0] - h * s, p1[1] + h * c)
    p3 = (x - h * s, y + h * c)
    return [list(p) for p in (p0, p1, p2, p3)]


def points_to_rect(points: list[list[float]], tol: float = 1e-3, max_err_px: float = 0.01):
    """(x, y, w, h, rotation_deg) if `points` is a clockwise rectangle (any rotation) that the
    rectangle form reproduces within `max_err_px`, else None (written as a polygon instead)."""
    if len(points) != 4:
        return None
    p = points
    edges = [(p[(i + 1) % 4][0] - p[i][0], p[(i + 1) % 4][1] - p[i][1]) for i in range(4)]
    lens = [math.hypot(*e) for e in edges]
    if min(lens) <= 0:
        return None
    for i in range(4):
        a, b = edges[i], edges[(i + 1) % 4]
        if abs(a[0] * b[0] + a[1] * b[1]) / (lens[i] * lens[(i + 1) % 4]) > tol:
            return None
    rot = math.degrees(math.atan2(edges[0][1], edges[0][0])) % 360.0
    rect = rect_to_points(p[0][0], p[0][1], lens[0], lens[1], rot)
    if any(math.dist(a, b) > max_err_px for a, b in zip(rect, p, strict=True)):
        return None  # rectangle but counter-clockwise: keep as polygon
    return p[0][0], p[0][1], lens[0], lens[1], rot


def _image_candidates(raw: str) -> list[str]:
    if raw.startswith("/data/local-files/"):
        q = parse_qs(urlparse(raw).query).get("d", [""])[0]
        return [unquote(q)]
    if "://" in raw or raw.startswith("/data/upload/"):
        name = unquote(Path(urlparse(raw).path).name)
        stripped = UPLOAD_PREFIX.sub("", name)
        return [name, f"images/{name}"] + ([stripped, f"images/{stripped}"] if stripped != name else [])
    return [unquote(raw)]


class LabelStudioReader(DatasetReader):
    name = "labelstudio"

    def parse(self, root: Path, label_file: Path | None = None) -> tuple[list[Sample], ProblemList]:
        problems = ProblemList()
        if not check_root(root, problems):
            return [], problems
        if label_file is None:
            found = sorted(root.glob("*.json"))
            if len(found) != 1:
                what = "no .json export" if not found else f"{len(found)} .json files"
                problems.add(root, None, f"{what} in the dataset root; pass label_file explicitly")
                return [], problems
            label_file = found[0]
        data = read_label_bytes(label_file, root, problems, MAX_INDEX_FILE_BYTES)
        text = decode_label_text(data, label_file, problems) if data is not None else None
        if text is None:
            return [], problems
        samples = []
        for k, line, task in _tasks(text, label_file, problems):
            s = self._task(task, k, line, root, label_file, problems)
            if s is not None:
                samples.append(s)
        return samples, problems

    def _task(self, task: Any, k: int, line: int, root: Path, lf: Path,
              problems: ProblemList) -> Sample | None:
        if not isinstance(task, dict):
            problems.add(lf, line, "a task must be a JSON object", f"task {k}")
            return None
        tid = task.get("id")
        where = f"task {k}" + (f" (id={tid})" if isinstance(tid, int | str) else "")
        data = task.get("data")
        if not isinstance(data, dict):
            problems.add(lf, line, "task has no \"data\" object", where)
            return None
        raw = data.get("image") or data.get("ocr")
        if raw is None:
            raw = next((v for v in data.values() if isinstance(v, str)
                        and v.lower().endswith(IMAGE_EXTENSIONS)), None)
        if not isinstance(raw, str):
            problems.add(lf, line, "task data has no image (expected data.image)", where)
            return None
        cands = _image_candidates(raw)
        rel = next((c for c in cands if (root / c).is_file()), cands[0])
        sample = Sample(root / rel, rel, str(lf), line, where=where)
        anns = task.get("annotations")
        anns = [a for a in anns if isinstance(a, dict) and not a.get("was_cancelled")] \
            if isinstance(anns, list) else []
        if not anns:
            problems.add(lf, line, "task has no (non-cancelled) annotation", where)
            return None
        results = anns[-1].get("result")
        regions: dict[str, dict] = {}
        for res in results if isinstance(results, list) else []:
            if not isinstance(res, dict):
                problems.add(lf, line, f"a result must be a JSON object, got {res!r:.40}", where)
                continue
            rid = str(res.get("id", len(regions)))
            reg = regions.setdefault(rid, {"geom": None, "text": None, "labels": [], "size": None})
            value = res.get("value")
            value = value if isinstance(value, dict) else {}
            rtype = res.get("type", "")
            if res.get("image_rotation"):
                reg["rotated_view"] = res["image_rotation"]
            try:
                size = _size(res)
            except ValueError as e:
                problems.add(lf, line, str(e), f"{where}, region {rid}")
                reg["bad"] = True
                continue
            if size is not None:
                reg["size"] = size
            if rtype in GEOMETRY_TYPES or (reg["geom"] is None and (
                "points" in value or "width" in value
            )):
                reg["geom"] = value
            if rtype == "textarea":
                txt = value.get("text", [])
                reg["text"] = " ".join(map(str, txt)) if isinstance(txt, list) else str(txt)
            for key in ("labels", "rectanglelabels", "polygonlabels"):
                labels = value.get(key, [])
                reg["labels"] += [str(lb) for lb in labels] if isinstance(labels, list) else []
        for rid, reg in regions.items():
            rwhere = f"{where}, region {rid}"
            geom, size = reg["geom"], reg["size"]
            if reg.get("bad"):
                continue
            if reg.get("rotated_view"):
                problems.add(lf, line, f"region was drawn on a view rotated by "
                             f"{reg['rotated_view']}° (image_rotation); reset the rotation in "
                             "Label Studio and re-export", rwhere)
                continue
            if geom is None:
                problems.add(lf, line, "region has a transcription but no rectangle/polygon",
                             rwhere)
                continue
            if size is None:
                problems.add(lf, line, "region lacks original_width/original_height", rwhere)
                continue
            sample.size_hint = (round(size[0]), round(size[1]))
            sx, sy = size[0] / 100.0, size[1] / 100.0
            try:
                if "points" in geom:
                    pts = parse_points(geom["points"], sx, sy)
                else:
                    pts = rect_to_points(float(geom["x"]) * sx, float(geom["y"]) * sy,
                                         float(geom["width"]) * sx, float(geom["height"]) * sy,
                                         float(geom.get("rotation", 0.0)))
            except (KeyError, TypeError, ValueError, OverflowError) as e:
                why = str(e) if str(e).startswith("polygon has") else f"bad geometry value {geom!r:.80}"
                problems.add(lf, line, why, rwhere)
                continue
            ignore = any(lbl in IGNORE_LABELS for lbl in reg["labels"])
            text = reg["text"]
            if text is None:
                if not ignore:
                    problems.add(lf, line, "region has no transcription (type ### if unreadable)",
                                 rwhere)
                    continue
                text = "###"
            ignore = ignore or text.strip() in IGNORE_TEXTS
            sample.lines.append(LabelLine(pts, text, ignore, str(lf), line, rwhere))
        return sample


_WS = re.compile(r"[ \t\n\r]*")


def _tasks(text: str, lf: Path, problems: ProblemList) -> Iterator[tuple[int, int, Any]]:
    """(index, line, task) for each task of an export, decoded one task at a time.

    Decoding task by task is what gives every problem in a task the line the task starts on;
    a JSON error stops the file there (with its line and column), after the tasks before it.
    """
    lines = _LineCounter(text)
    i = _WS.match(text).end()  # type: ignore[union-attr]
    try:
        if text[i:i + 1] == "{":  # a single task, not a list
            task, end = json_value(text, i)
            _expect_end(text, end)
            yield 0, lines.at(i), task
            return
        if text[i:i + 1] != "[":
            problems.add(lf, lines.at(i), "expected a list of tasks (Label Studio JSON export)")
            return
        i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
        k = 0
        while text[i:i + 1] != "]":
            task, end = json_value(text, i)
            yield k, lines.at(i), task
            k += 1
            i = _WS.match(text, end).end()  # type: ignore[union-attr]
            if text[i:i + 1] == ",":
                i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
            elif text[i:i + 1] != "]":
                raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
        _expect_end(text, i + 1)
    except json.JSONDecodeError as e:
        problems.add(lf, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})")
    except ValueError as e:  # nested too deeply
        problems.add(lf, lines.at(i), f"invalid JSON: {e}")


def _expect_end(text: str, end: int) -> None:
    end = _WS.match(text, end).end()  # type: ignore[union-attr]
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)


class _LineCounter:
    """1-based line of an offset, for offsets that only grow (linear in the text, not quadratic)."""

    def __init__(self, text: str):
        self.text, self.pos, self.line = text, 0, 1

    def at(self, offset: int) -> int:
        self.line += self.text.count("\n", self.pos, offset)
        self.pos = offset
        return self.line


def _size(res: dict) -> tuple[float, float] | None:
    """(original_width, original_height) of a result, None when absent; ValueError when bad."""
    w, h = res.get("original_width"), res.get("original_height")
    if not w or not h:
        return None
    try:
        size = float(w), float(h)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"original_width/original_height are not numbers: {w!r:.20}, "
                         f"{h!r:.20}") from None
    if not all(math.isfinite(v) and v > 0 for v in size):
        raise ValueError(f"original_width/original_height must be positive: {w!r:.20}, {h!r:.20}")
    return size


def write_labelstudio(
    records: list[ManifestRecord],
    out_dir: str | Path,
    copy_images: bool = True,
    as_predictions: bool = False,
    model_version: str = "engine",
) -> Path:
    """Write ``out_dir/tasks.json`` (+ images in ``out_dir/images``) in Label Studio's format.

    Rectangles (any rotation) become ``rectangle`` regions, other polygons ``polygon`` regions,
    each with a ``labels`` result (Text or ###) and a ``textarea`` transcription.  With
    `as_predictions` the regions go under ``predictions`` (pre-labelling for annotators to
    correct); image URLs are ``/data/local-files/?d=images/<name>``.  Returns the json path.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    tasks = []
    for i, rec in enumerate(records):
        src = Path(rec.image)
        if copy_images and src.resolve() != (out / "images" / src.name).resolve():
            shutil.copy2(src, out / "images" / src.name)
        W, H = float(rec.width), float(rec.height)
        results = []
        for j, ln in enumerate(rec.lines):
            rid = f"r{i}_{j}"
            rect = points_to_rect(ln.points)
            if rect is not None:
                x, y, w, h, rot = rect
                geom = {"x": 100 * x / W, "y": 100 * y / H, "width": 100 * w / W,
                        "height": 100 * h / H, "rotation": rot}
                gtype, gname = "rectangle", "bbox"
            else:
                geom = {"points": [[100 * px / W, 100 * py / H] for px, py in ln.points],
                        "closed": True}
                gtype, gname = "polygon", "poly"
            common = {"id": rid, "to_name": "image", "original_width": rec.width,
                      "original_height": rec.height, "image_rotation": 0}
            results.append({**common, "type": gtype, "from_name": gname, "value": dict(geom)})
            results.append({**common, "type": "labels", "from_name": "label",
                            "value": {**geom, "labels": ["###" if ln.ignore else "Text"]}})
            results.append({**common, "type": "textarea", "from_name": "transcription",
                            "value": {**geom, "text": [ln.text]}})
        key = "predictions" if as_predictions else "annotations"
        entry: dict = {"result": results}
        if as_predictions:
            entry["model_version"] = model_version
        tasks.append({"id": i + 1, "data": {"image": f"/data/local-files/?d=images/{src.name}"},
                      key: [entry]})
    path = out / "tasks.json"
    atomic_write_text(path, json.dumps(tasks, ensure_ascii=False, indent=1))
    return path
