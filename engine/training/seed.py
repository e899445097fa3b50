"""Seeding and RNG-state capture for reproducible, exactly resumable training.

Checkpoints are loaded with ``torch.load(weights_only=True)``, which refuses arbitrary Python
objects. Every RNG state therefore has to be expressed as tensors, numbers, strings, lists and
dicts: torch's CPU/CUDA states already are uint8 tensors; numpy's legacy ``RandomState`` tuple is
turned into a dict of plain lists; Python's ``random`` state tuple becomes a list of ints.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed torch (CPU and CUDA), numpy's global RNG and Python's ``random``.

    With ``deterministic`` the cuDNN autotuner is switched off and torch is asked for
    deterministic kernels (``warn_only`` so an op without a deterministic version warns instead
    of crashing a long run); ``CUBLAS_WORKSPACE_CONFIG`` is set because cuBLAS needs it.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "name": str(name),
        "keys": [int(k) for k in keys],
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _set_numpy_state(state: dict[str, Any]) -> None:
    np.random.set_state(
        (
            state["name"],
            np.asarray(state["keys"], dtype=np.uint32),
            int(state["pos"]),
            int(state["has_gauss"]),
            float(state["cached_gaussian"]),
        )
    )


def _python_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"version": int(version), "state": [int(v) for v in internal], "gauss_next": gauss}


def _set_python_state(state: dict[str, Any]) -> None:
    gauss = state.get("gauss_next")
    random.setstate((int(state["version"]), tuple(int(v) for v in state["state"]), gauss))


def capture_rng_state() -> dict[str, Any]:
    """All RNG states as weights_only-loadable data (tensors, lists, numbers)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state().clone(),
        "numpy": _numpy_state(),
        "python": _python_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`. CUDA states are restored only when CUDA is present."""
    torch.set_rng_state(state["torch"].to(dtype=torch.uint8, device="cpu"))
    _set_numpy_state(state["numpy"])
    _set_python_state(state["python"])
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available():
        n = min(len(cuda_states), torch.cuda.device_count())
        for i in range(n):
            torch.cuda.set_rng_state(cuda_states[i].to(dtype=torch.uint8, device="cpu"), i)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that fixes the shuffling order of one epoch.

    The order depends only on (seed, epoch), never on how many random numbers were drawn before,
    so a resumed run shuffles epoch k exactly as the uninterrupted run did.
    """
    g = torch.Generator()
    g.manual_seed(int(seed) * 1_000_003 + int(epoch))
    return g


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy and ``random`` in a DataLoader worker from the seed torch gave that worker.

    torch derives each worker's seed from the loader's generator (our per-epoch generator),
    so augmentation in workers is as reproducible as the shuffle order.
    """
    seed = torch.initial_seed() % (2**32)
    np.random.seed(seed)
    random.seed(seed)
