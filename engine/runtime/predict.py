"""``python -m runtime.predict IMAGE... [--bundle DIR] [--precision P] [--json]`` on a device.

Run from the bundle directory (so ``runtime`` is importable); see pipeline.predict_cli.
"""

from __future__ import annotations

import sys

from .pipeline import predict_cli

if __name__ == "__main__":
    sys.exit(predict_cli())
