"""Image checks of the HTTP service (runtime.serve): the size is read from the header before
anything is decoded, so a decompression bomb is refused without allocating its pixels.

A 100 KB PNG can claim 30000x30000 pixels (2.7 GB decoded).  :func:`image_size` parses the
header (PNG, JPEG, BMP, WebP; other formats are refused with 415, since their size cannot be
bounded before decoding) and :func:`check_image` refuses images above the pixel limit with 413.
The standard library only, plus OpenCV and numpy for the decode itself.
"""

from __future__ import annotations

import struct
from typing import Any

__all__ = ["ImageRejected", "check_image", "decode_image", "image_size"]


class ImageRejected(Exception):
    """An upload that is not decoded: ``status`` is the HTTP answer (400, 413 or 415)."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the first SOFn segment; markers are walked, nothing is decoded."""
    sof = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
    i, n = 2, len(data)
    while i + 1 < n:
        if data[i] != 0xFF:
            raise ImageRejected(400, "JPEG header is corrupt (marker expected)")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        if marker in (0xD9, 0xDA):
            break
        if i + 4 > n:
            break
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in sof:
            if i + 9 > n:
                break
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            if height == 0 or width == 0:
                raise ImageRejected(400, "JPEG header gives no image size")
            return width, height
        i += 2 + length
    raise ImageRejected(400, "JPEG header is truncated or has no frame (SOF) segment")


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    raise ImageRejected(400, "WebP header is truncated or of an unknown kind")


def image_size(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) read from the header alone.

    Raises ImageRejected: 415 for image formats this service does not decode (their size cannot
    be bounded before decoding), 400 for bytes that are no image or a broken header.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageRejected(400, "PNG header is truncated (no IHDR chunk)")
        w, h = struct.unpack(">II", data[16:24])
        return "png", w, h
    if data.startswith(b"\xff\xd8"):
        return ("jpeg", *_jpeg_size(data))
    if data.startswith(b"BM") and len(data) >= 26:
        (dib,) = struct.unpack("<I", data[14:18])
        if dib == 12:
            w, h = struct.unpack("<HH", data[18:22])
        else:
            w, h = struct.unpack("<ii", data[18:26])
        return "bmp", abs(w), abs(h)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ("webp", *_webp_size(data))
    for magic, name in ((b"GIF8", "GIF"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
                        (b"\x00\x00\x00\x0cjP", "JPEG 2000")):
        if data.startswith(magic):
            raise ImageRejected(415, f"{name} images are not accepted; send PNG, JPEG, BMP or WebP")
    raise ImageRejected(400, "the body is not a PNG, JPEG, BMP or WebP image")


def check_image(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """image_size, plus the pixel bound: a decompression bomb is refused with 413."""
    fmt, w, h = image_size(data)
    if w <= 0 or h <= 0:
        raise ImageRejected(400, f"{fmt.upper()} header gives an empty image ({w}x{h})")
    if w * h > max_pixels:
        raise ImageRejected(413, f"image is {w}x{h} = {w * h / 1e6:.1f} megapixels, more than the "
                                 f"limit of {max_pixels / 1e6:g} (--max-megapixels)")
    return fmt, w, h


def decode_image(data: bytes) -> Any:
    """RGB uint8, stored pixel order (EXIF ignored), as pipeline.load_image reads files."""
    import cv2
    import numpy as np

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise ImageRejected(400, "cannot decode the image (corrupt or truncated data)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
