"""Generate the small example datasets in this directory (one per supported format).

Run ``python examples/datasets/make_examples.py`` to rebuild them.  Every image is a synthetic
nameplate: text drawn with a DejaVu font onto a plate-coloured background, so each text polygon is
known exactly (the corners of the drawn text tile, rotated where the example wants rotation).
The label files are written here *by hand* in each format's own syntax — not with the engine's
writers — so the reader tests check the readers against the formats, not against themselves.
Output is deterministic (no randomness; fixed JPEG quality).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
PAD = 3


def plate(w: int, h: int, tint: int = 0) -> Image.Image:
    """A brushed-metal-ish plate with a dark border and four screws."""
    img = Image.new("RGB", (w, h))
    px = img.load()
    for y in range(h):
        for x in range(w):
            v = 200 + (x * 13 + y * 7) % 17 - tint
            px[x, y] = (v, v, v - 8)
    d = ImageDraw.Draw(img)
    d.rectangle([2, 2, w - 3, h - 3], outline=(60, 60, 60), width=2)
    for cx, cy in ((9, 9), (w - 10, 9), (9, h - 10), (w - 10, h - 10)):
        d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=(120, 120, 115))
    return img


def draw_text(img: Image.Image, text: str, center: tuple[float, float], size: int,
              angle_deg: float = 0.0) -> list[list[float]]:
    """Draw `text` centred at `center`, rotated clockwise by `angle_deg`; return its quad
    (TL, TR, BR, BL of the text tile, clockwise on screen) rounded to 0.01 px."""
    font = ImageFont.truetype(FONT, size)
    x0, t, r, b = font.getbbox(text)
    tw, th = (r - x0) + 2 * PAD, (b - t) + 2 * PAD
    tile = Image.new("RGBA", (tw, th), (0, 0, 0, 0))
    ImageDraw.Draw(tile).text((PAD - x0, PAD - t), text, font=font, fill=(25, 25, 30, 255))
    th_r = math.radians(angle_deg)
    c, s = math.cos(th_r), math.sin(th_r)
    cx, cy = center
    data = (c, s, tw / 2 - cx * c - cy * s, -s, c, th / 2 + cx * s - cy * c)
    layer = tile.transform(img.size, Image.Transform.AFFINE, data, Image.Resampling.BICUBIC)
    img.paste(layer, (0, 0), layer)

    def fwd(u: float, v: float) -> list[float]:
        du, dv = u - tw / 2, v - th / 2
        return [round(cx + du * c - dv * s, 2), round(cy + du * s + dv * c, 2)]

    return [fwd(0, 0), fwd(tw, 0), fwd(tw, th), fwd(0, th)]


def scribble(img: Image.Image, box: tuple[int, int, int, int]) -> list[list[float]]:
    """An unreadable smudge (to be labelled ###)."""
    x0, y0, x1, y1 = box
    d = ImageDraw.Draw(img)
    for k in range(x0, x1, 4):
        d.line([k, y0 + (k % 7), k + 3, y1 - (k % 5)], fill=(90, 90, 95), width=1)
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


# name -> (size, [(text, center, font size, angle)], smudge box or None)
PLATES = {
    "plate_1": ((320, 128), [("SERIAL NO: 4711-B", (160, 40), 20, 0.0),
                             ("230V, 50Hz", (110, 88), 18, 0.0)], (220, 76, 290, 100)),
    "plate_2": ((320, 128), [("TYPE AC-12", (160, 44), 22, -6.0),
                             ("IP65", (90, 92), 18, 0.0), ("50%", (230, 92), 18, 0.0)], None),
    "plate_3": ((288, 112), [("MADE IN GERMANY", (144, 36), 18, 4.0),
                             ("P/N 88.21-03", (144, 78), 18, 0.0)], None),
    "plate_4": ((256, 96), [("MOTOR 3PH", (128, 32), 18, 0.0),
                            ("(C) 2024 #7+1", (128, 66), 16, 0.0)], None),
}


def render(name: str):
    (w, h), lines, smudge = PLATES[name]
    img = plate(w, h, tint=int(name[-1]) * 4)
    out = [(text, draw_text(img, text, ctr, size, ang)) for text, ctr, size, ang in lines]
    if smudge:
        out.append(("###", scribble(img, smudge)))
    return img, out


def fnum(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}".rstrip("0").rstrip(".")


def save_jpg(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=85)


def make_icdar2015(root: Path) -> None:
    for split, names in (("train", ["plate_1", "plate_2", "plate_3"]), ("val", ["plate_4"])):
        for name in names:
            img, lines = render(name)
            save_jpg(img, root / split / "images" / f"{name}.jpg")
            rows = [",".join(fnum(v) for p in pts for v in p) + "," + text for text, pts in lines]
            bom = "\ufeff" if name == "plate_1" else ""  # the official files carry a BOM
            gt = root / split / "gt" / f"gt_{name}.txt"
            gt.parent.mkdir(parents=True, exist_ok=True)
            gt.write_text(bom + "\r\n".join(rows) + "\r\n", encoding="utf-8")


def make_ppocrlabel(root: Path) -> None:
    folder = root / "images"
    rows = []
    for name in ("plate_1", "plate_2", "plate_3"):
        img, lines = render(name)
        save_jpg(img, folder / f"{name}.jpg")
        items = [{"transcription": text, "points": [[round(x), round(y)] for x, y in pts],
                  "difficult": False} for text, pts in lines]
        if name == "plate_3":
            items[0]["difficult"] = True  # a box the annotator flagged: ignored, text kept
        rows.append(f"images/{name}.jpg\t{json.dumps(items, ensure_ascii=False)}")
    (folder / "Label.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")


def make_labelimg(root: Path) -> None:
    for name in ("plate_1", "plate_4"):  # axis-aligned text only: VOC boxes cannot rotate
        img, lines = render(name)
        save_jpg(img, root / "images" / f"{name}.jpg")
        objs = []
        for text, pts in lines:
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            objs.append(f"""  <object>
    <name>{text.replace("&", "&amp;").replace("<", "&lt;")}</name>
    <pose>Unspecified</pose>
    <truncated>0</truncated>
    <difficult>0</difficult>
    <bndbox>
      <xmin>{round(min(xs))}</xmin>
      <ymin>{round(min(ys))}</ymin>
      <xmax>{round(max(xs))}</xmax>
      <ymax>{round(max(ys))}</ymax>
    </bndbox>
  </object>""")
        xml = f"""<annotation>
  <folder>images</folder>
  <filename>{name}.jpg</filename>
  <path>C:\\Users\\annotator\\plates\\images\\{name}.jpg</path>
  <source><database>Unknown</database></source>
  <size><width>{img.width}</width><height>{img.height}</height><depth>3</depth></size>
  <segmented>0</segmented>
{chr(10).join(objs)}
</annotation>
"""
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"{name}.xml").write_text(xml, encoding="utf-8")


def make_labelstudio(root: Path) -> None:
    tasks = []
    for tid, name in enumerate(("plate_2", "plate_3", "plate_1"), 1):
        img, lines = render(name)
        save_jpg(img, root / "images" / f"{name}.jpg")
        W, H = img.size
        results = []
        for k, (text, pts) in enumerate(lines):
            rid = f"{name[-1]}r{k}"
            common = {"id": rid, "to_name": "image", "original_width": W, "original_height": H,
                      "image_rotation": 0}
            if name == "plate_3" and k == 1:  # one region drawn with the polygon tool
                geom = {"points": [[100 * x / W, 100 * y / H] for x, y in pts], "closed": True}
                results.append({**common, "type": "polygon", "from_name": "poly", "value": geom})
            else:  # rectangles: top-left corner, size, clockwise rotation about that corner
                (x0, y0), (x1, y1), (x3, y3) = pts[0], pts[1], pts[3]
                geom = {"x": 100 * x0 / W, "y": 100 * y0 / H,
                        "width": 100 * math.hypot(x1 - x0, y1 - y0) / W,
                        "height": 100 * math.hypot(x3 - x0, y3 - y0) / H,
                        "rotation": math.degrees(math.atan2(y1 - y0, x1 - x0)) % 360}
                results.append({**common, "type": "rectangle", "from_name": "bbox",
                                "value": geom})
            results.append({**common, "type": "labels", "from_name": "label",
                            "value": {**geom, "labels": ["###" if text == "###" else "Text"]}})
            if text != "###":
                results.append({**common, "type": "textarea", "from_name": "transcription",
                                "value": {**geom, "text": [text]}})
        image_url = (f"/data/upload/1/1a2b3c4d-{name}.jpg" if name == "plate_1"
                     else f"/data/local-files/?d=images/{name}.jpg")
        tasks.append({"id": tid, "data": {"image": image_url},
                      "annotations": [{"id": 100 + tid, "was_cancelled": False,
                                       "result": results}],
                      "predictions": []})
    (root / "export.json").write_text(json.dumps(tasks, indent=1), encoding="utf-8")


def make_lines(root: Path) -> None:
    words = ["4711-B", "230V", "IP65", "AC-12", "50Hz"]
    rows = []
    for k, word in enumerate(words):
        font = ImageFont.truetype(FONT, 20)
        x0, t, r, b = font.getbbox(word)
        img = plate(r - x0 + 12, b - t + 10, tint=k * 3)
        ImageDraw.Draw(img).text((6 - x0, 5 - t), word, font=font, fill=(25, 25, 30))
        save_jpg(img, root / "crops" / f"word_{k}.jpg")
        rows.append(f"crops/word_{k}.jpg\t{word}")
    (root / "labels.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")


def main() -> None:
    for fmt, fn in (("icdar2015", make_icdar2015), ("ppocrlabel", make_ppocrlabel),
                    ("labelimg", make_labelimg), ("labelstudio", make_labelstudio),
                    ("lines", make_lines)):
        root = HERE / fmt
        shutil.rmtree(root, ignore_errors=True)
        fn(root)
        print(f"wrote {root}")


if __name__ == "__main__":
    main()
