"""Font discovery for the synthetic generator.

Nothing can be downloaded at run time, so the generator renders with whatever TrueType fonts the
system has: the Debian packages fonts-dejavu-core, fonts-liberation2, fonts-freefont-ttf and
fonts-noto-mono put them under /usr/share/fonts/truetype/.  Several families matter: an OCR
model trained on one typeface overfits to its glyph shapes and transfers badly to real plates.
matplotlib (a project dependency) bundles DejaVu, which is the last-resort fallback.

Discovery is deterministic (sorted paths) so a seed picks the same font on every machine with
the same fonts installed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import ImageFont

#: Directories searched, in order.  ENGINE_FONT_DIRS (os.pathsep separated) is searched first.
SYSTEM_FONT_DIRS = (
    "/usr/share/fonts/truetype/dejavu",
    "/usr/share/fonts/truetype/liberation2",
    "/usr/share/fonts/truetype/liberation",
    "/usr/share/fonts/truetype/freefont",
    "/usr/share/fonts/truetype/noto",
)

#: Debian packages that provide the fonts above (reported in the error message).
FONT_PACKAGES = ("fonts-dejavu-core", "fonts-liberation2", "fonts-freefont-ttf", "fonts-noto-mono")

# Faces that are not text faces or are unreadable at nameplate sizes.
_SKIP_WORDS = ("math", "extralight", "display", "symbol", "lastresort", "stix")


class NoFontsError(RuntimeError):
    """No usable TrueType font was found; the generator cannot render text."""


@dataclass(frozen=True)
class FontFace:
    """One font file with the attributes the layout code chooses by."""

    path: str
    family: str
    kind: str  # "sans", "serif", "mono" or "condensed"
    bold: bool
    italic: bool

    @property
    def name(self) -> str:
        return Path(self.path).stem


def _classify(path: Path) -> FontFace | None:
    stem = path.stem
    low = stem.lower()
    # matplotlib's Computer Modern files (cm*) are maths fonts.
    if any(w in low for w in _SKIP_WORDS) or low.startswith("cm"):
        return None
    family = stem.split("-")[0]
    for suffix in ("Oblique", "Italic", "Regular", "Bold") * 2:
        if family.endswith(suffix) and family != suffix:
            family = family[: -len(suffix)]
    if "mono" in low:
        kind = "mono"
    elif "condensed" in low:
        kind = "condensed"
    elif "serif" in low and "sansserif" not in low:
        kind = "serif"
    else:
        kind = "sans"
    bold = "bold" in low
    italic = "italic" in low or "oblique" in low
    return FontFace(str(path), family, kind, bold, italic)


def _matplotlib_font_dir() -> str | None:
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return None
    d = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf"
    return str(d) if d.is_dir() else None


def _loads(path: Path) -> bool:
    try:
        ImageFont.truetype(str(path), 12).getbbox("A0")
    except OSError:
        return False
    return True


@lru_cache(maxsize=8)
def discover_fonts(
    dirs: tuple[str, ...] | None = None, fallback: bool = True
) -> tuple[FontFace, ...]:
    """Return the usable fonts found under ``dirs`` (default: system dirs), sorted by path.

    Falls back to matplotlib's bundled DejaVu when none is found and ``fallback`` is true.
    Raises NoFontsError with the packages to install otherwise.
    """
    if dirs is None:
        extra = tuple(p for p in os.environ.get("ENGINE_FONT_DIRS", "").split(os.pathsep) if p)
        dirs = extra + SYSTEM_FONT_DIRS
    faces: list[FontFace] = []
    seen: set[str] = set()
    for d in dirs:
        p = Path(d)
        if not p.is_dir():
            continue
        for f in sorted(p.glob("*.[tT][tT][fF]")):
            face = _classify(f)
            if face is None or f.name in seen or not _loads(f):
                continue
            seen.add(f.name)
            faces.append(face)
    if not faces and fallback:
        mpl = _matplotlib_font_dir()
        if mpl is not None:
            return discover_fonts((mpl,), fallback=False)
    if not faces:
        raise NoFontsError(
            "no TrueType fonts found for the synthetic generator (searched "
            + ", ".join(dirs)
            + "); install the Debian packages "
            + " ".join(FONT_PACKAGES)
            + " or point ENGINE_FONT_DIRS at a directory of .ttf files"
        )
    return tuple(sorted(faces, key=lambda f: f.path))


@lru_cache(maxsize=4096)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    """A cached FreeType font object (loading a face costs ~1 ms; rendering reuses it)."""
    return ImageFont.truetype(path, max(4, int(size)))


@lru_cache(maxsize=65536)
def font_supports(path: str, ch: str) -> bool:
    """True when the face has a real glyph for ``ch`` (not the .notdef box).

    ASCII is assumed present (every face used here covers it); other characters are compared
    against the rendering of a code point no font maps.
    """
    if ord(ch) < 128:
        return True
    font = load_font(path, 24)
    missing = font.getmask("\U000f0000")
    glyph = font.getmask(ch)
    if glyph.size != missing.size:
        return True
    return bytes(glyph) != bytes(missing)


class FontPicker:
    """Chooses faces for nameplate roles (title, labels, values, stamped serials, fine print)."""

    def __init__(self, faces: tuple[FontFace, ...] | None = None) -> None:
        self.faces = faces if faces is not None else discover_fonts()
        upright = [f for f in self.faces if not f.italic]
        self._upright = upright or list(self.faces)
        self._bold = [f for f in self._upright if f.bold] or self._upright
        self._regular = [f for f in self._upright if not f.bold] or self._upright
        self._mono = [f for f in self._upright if f.kind == "mono"] or self._upright
        self._italic = [f for f in self.faces if f.italic] or self._upright

    def pick(self, rng: np.random.Generator, role: str) -> FontFace:
        """Pick a face for ``role``: 'title', 'body', 'bold', 'mono', 'any'."""
        if role == "title":
            pool = self._bold if rng.random() < 0.75 else self._upright
        elif role == "bold":
            pool = self._bold
        elif role == "mono":
            pool = self._mono
        elif role == "body":
            pool = self._regular if rng.random() < 0.7 else self._upright
            if rng.random() < 0.03:
                pool = self._italic
        else:
            pool = self._upright
        return pool[int(rng.integers(len(pool)))]

    def supports_all(self, face: FontFace, text: str) -> bool:
        return all(font_supports(face.path, c) for c in set(text))
