"""One root seed -> independent random streams, split by name.

Each stream is ``fold_in(key(seed), hash(name))`` with a hash that is stable across
processes and Python versions (SHA-256, not ``hash()``), so adding a stage or a
stream never shifts another one: ``key_for(0, "data")`` is the same whether or not
``"sample"`` is ever asked for.
"""

from __future__ import annotations

import hashlib

import jax
import numpy as np


def name_hash(name: str) -> int:
    """A stable 31-bit integer for ``name`` (fits fold_in's uint32 and numpy seeds)."""
    if not name:
        raise ValueError("stream name must be a non-empty string")
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little") & 0x7FFFFFFF


def key_for(seed: int, name: str) -> jax.Array:
    """The JAX key of stream ``name`` under root ``seed`` (a typed threefry key)."""
    return jax.random.fold_in(jax.random.key(int(seed)), name_hash(name))


def keys_for(seed: int, *names: str) -> dict[str, jax.Array]:
    """``{name: key_for(seed, name)}`` for several streams at once."""
    return {n: key_for(seed, n) for n in names}


def subkey(key: jax.Array, name: str) -> jax.Array:
    """A named child of an existing key (e.g. ``subkey(train_key, "dropout")``)."""
    return jax.random.fold_in(key, name_hash(name))


def numpy_rng(seed: int, name: str, *extra: int) -> np.random.Generator:
    """A host-side numpy generator for stream ``name`` (data shuffling on the host).

    ``extra`` integers (e.g. the epoch) give independent sub-streams.
    """
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, name_hash(name), *map(int, extra)])
