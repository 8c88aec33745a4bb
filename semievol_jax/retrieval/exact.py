"""Exact (brute-force) top-k by dot product: the small-set backend and the reference."""

from __future__ import annotations

import numpy as np


def exact_top_k(
    db_ND: np.ndarray, q_QD: np.ndarray, k: int, *, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of db by dot product with each query, in chunks of queries.

    Ties are broken by the lower row index, so duplicates come out in a fixed order.

    Args:
      db_ND: [N, D] float32 database rows (unit rows for cosine).
      q_QD: [Q, D] float32 queries.
      k: neighbours per query, 1 <= k <= N.
      chunk: queries per matrix product; bounds the [chunk, N] score block in memory.

    Returns:
      (idx_QK int64, score_QK float32), best first.
    """
    n = db_ND.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in [1, {n}]")
    q_total = q_QD.shape[0]
    idx_QK = np.empty((q_total, k), np.int64)
    score_QK = np.empty((q_total, k), np.float32)
    for start in range(0, q_total, chunk):
        s_CN = q_QD[start : start + chunk] @ db_ND.T
        if k < n:
            # Partition on the k-th largest score, then take every row that ties with it
            # too, so the lower-index rule below decides ties rather than introselect.
            kth_C = -np.partition(-s_CN, k - 1, axis=1)[:, k - 1]
            cand = [np.flatnonzero(row >= t) for row, t in zip(s_CN, kth_C, strict=True)]
        else:
            cand = [np.arange(n)] * s_CN.shape[0]
        for c, (row, ids) in enumerate(zip(s_CN, cand, strict=True)):
            # lexsort: last key is primary -> score descending, then index ascending.
            order = np.lexsort((ids, -row[ids]))[:k]
            idx_QK[start + c] = ids[order]
            score_QK[start + c] = row[ids[order]]
    return idx_QK, score_QK
