"""Deterministic train/val split by a seeded hash of file names.

Each name is assigned on its own (sha256 of ``"<seed>:<name>"`` mapped to [0, 1)), so adding or
removing images never moves the *other* images between splits — a random shuffle would, and the
val set of a rerun would leak into training.  Names should be paths relative to the dataset root
(POSIX), so the split does not depend on where the dataset is mounted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def hash_fraction(name: str, seed: int = 0) -> float:
    """A uniform number in [0, 1) determined by (seed, name)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_by_hash(
    names: Iterable[str], val_fraction: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split `names` into (train, val), each in input order.

    A name goes to val when its hash fraction is below `val_fraction`.  If that leaves val empty
    although `val_fraction` > 0 and there are at least two names, the name with the smallest hash
    moves to val (still deterministic), so small datasets still get something to evaluate on;
    likewise train never ends up empty when there are two or more names.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    names = list(names)
    fr = {n: hash_fraction(n, seed) for n in names}
    val_set = {n for n in names if fr[n] < val_fraction}
    if not val_set and val_fraction > 0 and len(names) >= 2:
        val_set = {min(names, key=lambda n: fr[n])}
    if len(val_set) == len(names) and len(names) >= 2:
        val_set.discard(max(names, key=lambda n: fr[n]))
    train = [n for n in names if n not in val_set]
    val = [n for n in names if n in val_set]
    return train, val
