"""The int8 weight grid a recipe's targets quantize to (standard library only: the graph asks).

onnxruntime's static QDQ quantizes weights per output channel, symmetric, to [-127, 127], or to
[-64, 64] with ``reduce_range`` (7-bit weights, for x86 CPUs with AVX2 but no VNNI, whose
u8 x s8 products saturate otherwise). Quantization-aware fine-tuning (engine/compress/qat.py)
trains the weights for one of the two grids, so the graph keys that stage on the choice.
"""

from __future__ import annotations

from typing import Any


def qmax_for(reduce_range: bool) -> int:
    """onnxruntime's symmetric QInt8 weight range: [-64, 64] with reduce_range, else [-127, 127]."""
    return 64 if reduce_range else 127


def qat_reduce_range(loaded: Any) -> bool:
    """The grid the weights are trained for: 7-bit when any int8 target of the recipe quantizes
    with reduce_range (an 8-bit grid rounded again to 7 bits would lose what QAT gained; the
    other way round costs only ordinary 8-bit rounding), else 8-bit."""
    q = loaded.recipe.optimize.quantize
    if q.reduce_range is not None:
        return bool(q.reduce_range)
    int8 = [p for p in loaded.profiles.values()
            if p.runtime == "onnxruntime" and p.precision in ("int8", "auto")]
    return any(p.reduce_range for p in int8)
