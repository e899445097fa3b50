"""What a dataset may make the data stage read: the bounds, in one place, and why each number.

Label files come from export tools and contractors, images from wherever they were taken, so the
readers treat both as hostile: every label file is opened through
`engine.data.formats.base.read_label_bytes` (inside the dataset root once symlinks are followed,
a regular file, at most its size bound, never read past it), every image through
`engine.data.validate` (the same root and file checks, then its pixel count read from the header
before anything is decoded). Each refusal is a `Problem` naming the file (and line) like any
other mistake in a dataset, so it lands in the one `DatasetError` the data stage raises.
"""

from __future__ import annotations

MiB = 1 << 20

#: A label file that describes one image (ICDAR 2015 ``gt_*.txt``, a LabelImg ``.xml`` and its
#: transcription sidecar). The densest ICDAR / VOC files are tens of KB (a page of 1,000 words
#: at ~150 bytes a box is 150 KB); 4 MiB is room for any real one and bounds what a single
#: file can cost to parse (expat: ~40 ms a MiB here).
MAX_LABEL_FILE_BYTES = 4 * MiB

#: A label file for the whole split (PPOCRLabel ``Label.txt``, a line list, a Label Studio JSON
#: export). Label Studio's OCR export is the largest per image: three results per region, ~1 KB
#: a region, so 256 MiB is ~10,000 images of 25 regions; ``json.loads`` of that takes several
#: seconds and ~2 GB of memory, which is where a bound has to be. Split a larger export.
MAX_INDEX_FILE_BYTES = 256 * MiB

#: Longest line of a line-oriented label file (ICDAR, PPOCRLabel, line lists), in characters.
#: An ICDAR line is under 200 characters; a PPOCRLabel line holds one image's boxes as JSON,
#: ~120 characters a box, so 256 Ki characters carry `MAX_BOXES_PER_IMAGE` of them.
MAX_LINE_CHARS = 256 * 1024

#: Most text regions one image may have. ICDAR 2015 images have at most ~100; a dense document
#: page at word level ~1,000. Each box costs a polygon offset and a fill when the detector's
#: targets are drawn, every epoch.
MAX_BOXES_PER_IMAGE = 2000

#: Most points one polygon may have. Quadrilaterals have 4; curved-text sets (Total-Text,
#: CTW1500) use 10-16; PPOCRLabel's polygon tool rarely more than 30.
MAX_POINTS_PER_POLYGON = 100

#: Largest image, in pixels, read from its header before decoding. A 48-megapixel phone photo
#: (8000x6000) fits; decoded as RGB that is 144 MB. A 100 KB "decompression bomb" PNG claiming
#: 30000x30000 (2.7 GB decoded; Pillow raises DecompressionBombError, not an OSError, past 179
#: megapixels) is refused from its first 33 bytes.
MAX_IMAGE_PIXELS = 50_000_000

#: Largest image file, in bytes: images are read whole (sha256, then decoding). An uncompressed
#: image of `MAX_IMAGE_PIXELS` is 150 MB; 256 MiB bounds a file that is mostly not image.
MAX_IMAGE_BYTES = 256 * MiB
