"""LabelImg Pascal VOC XML (one ``<stem>.xml`` per image), plus roLabelImg's rotated boxes.

Transcription: the object's ``<name>``.  LabelImg's class-name box accepts free text, which is how
people use it for OCR.  Teams that keep ``<name>`` as a class ("text") put the transcriptions in a
sidecar ``<xml stem>.txt`` beside the XML instead: one line per ``<object>``, in document order;
when the sidecar exists it wins, and a line count that differs from the objects is an error
naming the sidecar.  ``<name>###</name>`` (or ``###`` in the sidecar) or ``<difficult>1`` marks a
region to ignore.  Boxes: ``<bndbox>`` (xmin, ymin, xmax, ymax) becomes the quadrilateral
TL, TR, BR, BL; roLabelImg's ``<robndbox>`` (cx, cy, w, h, angle in radians, clockwise) becomes
the rotated rectangle with the same corner order.

XML files live in ``root/annotations`` or ``root/Annotations`` (else ``root``; `label_file` may
name the directory).  The image is ``<filename>`` looked up next to the XML, then in
``root/images`` / ``root/JPEGImages``; ``<path>`` is ignored (LabelImg stores the annotator's
absolute path, meaningless elsewhere).  The parser is expat driven directly so every problem can
name the XML line.

XML from outside is parsed with a closed configuration: a document that declares an entity
(internal ones are how "billion laughs" expands a 1 KB file into gigabytes; external ones,
``<!ENTITY x SYSTEM "file:///etc/passwd">``, read other files) is refused at the declaration,
parameter entities and external DTDs are never loaded, and a reference to an undeclared entity
is malformed XML. LabelImg never writes a DTD, so nothing real is lost.
"""

from __future__ import annotations

import math
import xml.parsers.expat
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ProblemList
from .base import (
    IGNORE_TEXTS,
    DatasetReader,
    LabelLine,
    Sample,
    check_root,
    first_existing_dir,
    looks_absolute,
    normalise_label_path,
    read_label_bytes,
    read_text_lines,
)


@dataclass
class _Node:
    tag: str
    line: int
    text: str = ""
    children: list[_Node] = field(default_factory=list)

    def find(self, tag: str) -> _Node | None:
        return next((c for c in self.children if c.tag == tag), None)

    def findall(self, tag: str) -> list[_Node]:
        return [c for c in self.children if c.tag == tag]


class XMLRefused(Exception):
    """A construct the reader does not parse (entity declarations); ``line`` is where it is."""

    def __init__(self, line: int, message: str):
        self.line = line
        super().__init__(message)


def _parse_xml(data: bytes) -> _Node:
    """Tiny element tree with line numbers (ElementTree's C parser does not keep them).

    Raises ExpatError for malformed XML, XMLRefused for entity declarations and external
    entities (see the module docstring).
    """
    parser = xml.parsers.expat.ParserCreate()
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[_Node] = []
    root: list[_Node] = []

    def entity_decl(name: str, is_parameter: int, *_rest: object) -> None:
        kind = "parameter entity" if is_parameter else "entity"
        raise XMLRefused(parser.CurrentLineNumber,
                         f"declares the {kind} {name!r}: entity declarations are not accepted "
                         "(they can expand without bound or read other files)")

    def external_ref(_context: object, _base: object, system_id: str | None, _public: object) -> int:
        raise XMLRefused(parser.CurrentLineNumber,
                         f"refers to an external entity ({system_id!r}): not accepted")

    def start(tag: str, _attrs: dict) -> None:
        node = _Node(tag, parser.CurrentLineNumber)
        if stack:
            stack[-1].children.append(node)
        else:
            root.append(node)
        stack.append(node)

    def end(_tag: str) -> None:
        stack.pop()

    def chars(text: str) -> None:
        if stack:
            stack[-1].text += text

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.EntityDeclHandler = entity_decl
    parser.ExternalEntityRefHandler = external_ref
    parser.Parse(data, True)
    return root[0]


def _float(node: _Node | None, tag: str, xml_path: Path, problems: ProblemList) -> float | None:
    child = node.find(tag) if node is not None else None
    if child is None:
        problems.add(xml_path, node.line if node else None, f"missing <{tag}>")
        return None
    try:
        return float(child.text.strip())
    except ValueError:
        problems.add(xml_path, child.line, f"<{tag}> is not a number: {child.text.strip()!r}")
        return None


class LabelImgReader(DatasetReader):
    name = "labelimg"

    def parse(self, root: Path, label_file: Path | None = None) -> tuple[list[Sample], ProblemList]:
        problems = ProblemList()
        if not check_root(root, problems):
            return [], problems
        xml_dir = label_file or first_existing_dir(root, ("annotations", "Annotations"))
        img_dirs = [xml_dir, first_existing_dir(root, ("images", "JPEGImages")), root]
        xml_files = sorted(xml_dir.glob("*.xml"))
        if not xml_files:
            problems.add(xml_dir, None, "no Pascal VOC .xml files found")
        samples: list[Sample] = []
        for xp in xml_files:
            data = read_label_bytes(xp, root, problems)
            if data is None:
                continue
            try:
                tree = _parse_xml(data)
            except xml.parsers.expat.ExpatError as e:
                problems.add(xp, e.lineno, f"malformed XML: {xml.parsers.expat.ErrorString(e.code)}")
                continue
            except XMLRefused as e:
                problems.add(xp, e.line, f"XML {e}")
                continue
            if tree.tag != "annotation":
                problems.add(xp, tree.line, f"root element is <{tree.tag}>, expected <annotation>")
                continue
            fn = tree.find("filename")
            if fn is None or not fn.text.strip():
                problems.add(xp, tree.line, "missing <filename>")
                continue
            rel = normalise_label_path(fn.text)
            if looks_absolute(rel):
                image = Path(rel)
            else:
                image = next((d / rel for d in img_dirs if (d / rel).is_file()), xml_dir / rel)
            size_hint = None
            size = tree.find("size")
            if size is not None:
                w, h = size.find("width"), size.find("height")
                try:
                    if w is not None and h is not None and int(w.text) > 0 and int(h.text) > 0:
                        size_hint = (int(w.text), int(h.text))
                except ValueError:
                    problems.add(xp, size.line, "<size> width/height are not integers")
            sample = Sample(image, rel, str(xp), fn.line, size_hint=size_hint)
            objects = tree.findall("object")
            sidecar = self._sidecar(xp, root, len(objects), problems)
            for i, obj in enumerate(objects):
                name = obj.find("name")
                text = name.text.strip() if name is not None else ""
                if sidecar is not None:
                    text = sidecar[i]
                diff = obj.find("difficult")
                ignore = text in IGNORE_TEXTS or (diff is not None and diff.text.strip() == "1")
                points = self._box(obj, xp, problems)
                if points is not None:
                    sample.lines.append(LabelLine(points, text, ignore, str(xp), obj.line))
            samples.append(sample)
        return samples, problems

    @staticmethod
    def _sidecar(xp: Path, root: Path, n_objects: int, problems: ProblemList) -> list[str] | None:
        path = xp.with_suffix(".txt")
        if not path.is_file():
            return None
        lines = read_text_lines(path, root, problems)
        if lines is None:
            return None
        while lines and not lines[-1].strip():
            lines.pop()
        if len(lines) != n_objects:
            problems.add(path, len(lines) or None,
                         f"{len(lines)} transcriptions for {n_objects} <object> elements in {xp.name}")
            return None
        return [line.strip() for line in lines]

    @staticmethod
    def _box(obj: _Node, xp: Path, problems: ProblemList) -> list[list[float]] | None:
        box, rbox = obj.find("bndbox"), obj.find("robndbox")
        if box is not None:
            vals = [_float(box, t, xp, problems) for t in ("xmin", "ymin", "xmax", "ymax")]
            if any(v is None for v in vals):
                return None
            x0, y0, x1, y1 = (float(v) for v in vals)  # type: ignore[arg-type]
            if x1 < x0 or y1 < y0:
                problems.add(xp, box.line, f"xmax/ymax smaller than xmin/ymin ({x0},{y0},{x1},{y1})")
                return None
            return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
        if rbox is not None:
            vals = [_float(rbox, t, xp, problems) for t in ("cx", "cy", "w", "h", "angle")]
            if any(v is None for v in vals):
                return None
            cx, cy, w, h, a = (float(v) for v in vals)  # type: ignore[arg-type]
            if not math.isfinite(a):
                problems.add(xp, rbox.line, f"<angle> is not a finite number: {a}")
                return None
            c, s = math.cos(a), math.sin(a)
            corners = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
            return [[cx + dx * c - dy * s, cy + dx * s + dy * c] for dx, dy in corners]
        problems.add(xp, obj.line, "object has neither <bndbox> nor <robndbox>")
        return None
