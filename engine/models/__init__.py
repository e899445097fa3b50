"""Detector and recognizer definitions, their registry and losses.

``engine.models.registry`` is the table (torch-free: the recipe schema is built from it);
``engine.models.build`` turns its names into torch modules. The names below are imported
lazily, on first use, so importing the registry (``recipe validate``, ``recipe plan``, a no-op
``recipe run``) never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "CRNN": "build", "DBLoss": "build", "DBNet": "build", "build_detector": "build",
    "build_recognizer": "build", "ctc_loss": "build", "encode_texts": "build",
    "make_db_targets": "build",
    "DEFAULT_CONFIGS": "registry", "ModelConfigError": "registry",
    "UnknownArchitectureError": "registry", "default_config": "registry", "input_spec": "registry",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
