"""Validation, L2 normalisation and digests of embedding matrices fed to the index.

Retrieval-local letters: `N` database rows, `Q` queries, `D` embedding width (the model
width), `K` neighbours per query (not kv heads: no attention code lives here).
"""

from __future__ import annotations

import hashlib

import numpy as np

from semievol_jax.errors import UserError


class RetrievalError(UserError, ValueError):
    """Bad embeddings, queries, index directories or settings for retrieval."""


def unit_rows(x_ND: np.ndarray, what: str) -> np.ndarray:
    """Checks a 2-D float matrix and returns its rows scaled to unit L2 norm.

    Cosine similarity is the dot product of unit rows, so both the index and the
    queries go through here.

    Args:
      x_ND: [N, D] embeddings (any float dtype, or anything np.asarray accepts).
      what: a name for messages ("embeddings", "queries").

    Returns:
      [N, D] float32, C-contiguous, rows of norm 1.

    Raises:
      RetrievalError: not 2-D, empty width, a NaN/inf entry or an all-zero row (named).
    """
    x = np.asarray(x_ND)
    if x.ndim != 2:
        raise RetrievalError(f"{what}: expected a 2-D [rows, dim] array, got shape {x.shape}")
    if x.shape[1] == 0:
        raise RetrievalError(f"{what}: rows have dimension 0 (shape {x.shape})")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise RetrievalError(f"{what}: expected a numeric array, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    finite_N = np.isfinite(x).all(axis=1)
    if not finite_N.all():
        bad = np.flatnonzero(~finite_N)
        raise RetrievalError(
            f"{what}: row {bad[0]} contains NaN or inf ({bad.size} such row(s) of "
            f"{x.shape[0]}; first ones: {bad[:5].tolist()})"
        )
    # float64 accumulation: float32 sums over D=4096 lose the last digits, and the
    # norm decides every score.
    norm_N = np.sqrt(np.einsum("nd,nd->n", x, x, dtype=np.float64))
    if (norm_N == 0).any():
        bad = np.flatnonzero(norm_N == 0)
        raise RetrievalError(
            f"{what}: row {bad[0]} is all zeros and has no direction ({bad.size} such row(s))"
        )
    return (x / norm_N[:, None]).astype(np.float32, copy=False)


def digest_rows(x_ND: np.ndarray) -> str:
    """sha256 of a float32 matrix's shape and bytes (C order): identifies an index's data."""
    x = np.ascontiguousarray(x_ND, dtype=np.float32)
    h = hashlib.sha256(f"{x.shape[0]}x{x.shape[1]}:float32:".encode())
    h.update(memoryview(x).cast("B"))
    return h.hexdigest()
