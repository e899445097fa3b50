"""Synthetic training data: photos of equipment nameplates with exact ICDAR 2015 labels.

Public API:
- :func:`generate_sample` — one (RGB uint8 image, lines) pair in memory, for on-the-fly training;
- :func:`generate_dataset` — ``out_dir/images/<stem>.jpg`` + ``out_dir/gt/gt_<stem>.txt``;
- :func:`read_icdar_gt` — parse one ICDAR 2015 gt file;
- :data:`DEFAULT_CHARSET`, :func:`discover_fonts`, :class:`NoFontsError`.
"""

from .content import DEFAULT_CHARSET
from .fonts import FONT_PACKAGES, NoFontsError, discover_fonts
from .generator import (
    generate_dataset,
    generate_sample,
    icdar_line,
    read_icdar_gt,
    tune_allocator,
)

__all__ = [
    "DEFAULT_CHARSET",
    "FONT_PACKAGES",
    "NoFontsError",
    "discover_fonts",
    "generate_dataset",
    "generate_sample",
    "icdar_line",
    "read_icdar_gt",
    "tune_allocator",
]
