"""ScaNN tree + asymmetric-hashing searcher: parameters, build, search, (de)serialise.

Determinism. ScaNN 1.4.2's builder defaults to `random_init=True` for the k-means tree,
and that initialisation is drawn from an unseeded generator: the same data gives a
different partition (and different neighbours) on every build, and setting the
partitioner's `clustering_seed` does not change that. k-means++ initialisation
(`random_init=False`) is seeded by `clustering_seed`, and the AH codebook training is
seeded by its own `clustering_seed` / `sampling_seed`; with those three fixed, builds
are bit-identical across runs, processes and training-thread counts (multi-threaded
training included; see tests/test_retrieval_determinism.py). Artifacts are serialised
with relative asset paths so the directory bytes do not depend on where it was written.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from semievol_jax.files import DIGEST_OMITS


@dataclass(frozen=True)
class ScannParams:
    """Resolved ScaNN parameters (everything derived from the data is filled in)."""

    num_leaves: int  # k-means tree partitions
    leaves_to_search: int  # partitions scored per query
    dims_per_block: int  # AH: dimensions per 4-bit (LUT16) code
    anisotropic_threshold: float | None  # AH: score-aware quantisation eta; None = off
    reorder: int  # candidates rescored exactly (float32) after AH scoring
    training_sample_size: int  # rows sampled to train the tree and the codebooks
    min_partition_size: int  # k-means leaves smaller than this are merged
    seed: int  # clustering / sampling seed of the tree and the codebooks
    training_threads: int  # 0 = all cores; does not change the result
    # SOAR: each row is also stored in a second leaf, picked to be orthogonal to its first
    # residual (weight lambda); None = off. Default None reads manifests written before it.
    soar_lambda: float | None = None
    # Candidates rescored = max(reorder, reorder_per_k * k): the AH ranking error grows
    # with the rank asked for. Default 0 reads manifests written before it.
    reorder_per_k: int = 0
    # PCA projection to this many dims before the tree and AH; 0 = off (and in manifests
    # written before it, which is why a manifest names it only when on).
    pca_dims: int = field(default=0, metadata={DIGEST_OMITS: 0})


def resolve_params(cfg, n: int, d: int) -> ScannParams:
    """Fills the IndexConfig fields left at 0/None with values derived from the data.

    Fixed with scripts/bench_retrieval.py (results/bench/retrieval.json: 100k x 4096,
    k=4, topics wider than a partition) and the 20k x 256 sets of the tests (k=10):
    about sqrt(N) leaves, so scoring the centroids and scoring a leaf cost about the
    same; SOAR spilling (lambda 1.5), since true neighbours straddle leaf boundaries: on
    100k x 4096 it reached recall@4 0.968 searching 16 of 316 leaves where the plain
    tree needed 32 for 0.950, at 4% more queries/s; searching 8% of the leaves (at
    least 8), since 6% was too few on 20k x 256 (`--rows 20000 --dim 256`: 0.949 at 9 of
    141 leaves, 0.988 at 16); exact rescoring of max(40, 10 k) AH candidates: the 4-bit
    AH ranking is coarse, so the candidates needed grow with k
    (tests/test_retrieval_index.py: 40 rescored miss recall 0.95 at k=10, 100 do not),
    while rescoring more costs memory traffic for little recall (100k x 4096: 100
    instead of 40 cost 5-12% of the queries/s); 2 dims per AH block up to D=1024 and 4
    above (D/8 bytes per row; 8 dims/block ranked too coarsely to reach 0.95 in an
    exploratory sweep); plain (isotropic) AH: the anisotropic loss ScaNN suggests for
    MIPS (eta = 0.2) ranked worse here (30k x 4096: recall@4 0.946 with eta 0.2, 0.984
    without); a training sample of 100 rows per leaf (at least 20k), which k-means needs
    and no more. Not adopted after exploratory sweeps: spherical k-means with int8
    centroids (lower recall at the same leaves), int8 rescoring (a few % faster, lower
    recall, inexact scores), larger search batches (no change).

    Args:
      cfg: an IndexConfig.
      n: database rows.
      d: embedding width.
    """
    num_leaves = cfg.num_leaves or max(2, round(math.sqrt(n)))
    # Leaves smaller than min_partition_size get merged by ScaNN; keep enough rows each.
    num_leaves = max(2, min(num_leaves, n // max(cfg.min_partition_size, 1)))
    leaves_to_search = cfg.leaves_to_search or max(8, math.ceil(0.08 * num_leaves))
    leaves_to_search = min(leaves_to_search, num_leaves)
    dims_per_block = cfg.dims_per_block or (2 if d <= 1024 else 4)
    pca_dims = cfg.pca_dims if 0 < cfg.pca_dims < d else 0
    dims_per_block = min(dims_per_block, pca_dims or d)
    eta = None if cfg.anisotropic_threshold is None else float(cfg.anisotropic_threshold)
    sample = cfg.training_sample_size or max(20_000, 100 * num_leaves)
    return ScannParams(
        num_leaves=int(num_leaves),
        leaves_to_search=int(leaves_to_search),
        dims_per_block=int(dims_per_block),
        anisotropic_threshold=eta,
        reorder=int(cfg.reorder or 40),
        training_sample_size=int(min(sample, n)),
        min_partition_size=int(cfg.min_partition_size),
        seed=int(cfg.seed),
        training_threads=int(cfg.training_threads),
        soar_lambda=float(cfg.soar_lambda) if cfg.soar_lambda > 0 else None,
        reorder_per_k=int(cfg.reorder_per_k),
        pca_dims=int(pca_dims),
    )


def _import_scann():
    # ScaNN is imported lazily: the exact backend (small sets, tests) works without it.
    from scann.scann_ops.py import scann_ops_pybind

    return scann_ops_pybind


def config_text(db_ND: np.ndarray, p: ScannParams, num_neighbors: int) -> str:
    """The ScaNN text-proto config for unit rows under dot product, seeds pinned."""
    sp = _import_scann()
    b = sp.builder(db_ND, num_neighbors, "dot_product")
    if p.pca_dims:
        b = b.pca(reduction_dim=p.pca_dims, pca_significance_threshold=None)
    b = b.tree(
        num_leaves=p.num_leaves,
        num_leaves_to_search=p.leaves_to_search,
        training_sample_size=p.training_sample_size,
        min_partition_size=p.min_partition_size,
        random_init=False,  # the random init is unseeded; k-means++ honours the seed
        soar_lambda=p.soar_lambda,
    )
    b = b.score_ah(
        p.dims_per_block,
        # ScaNN spells "off" as nan; None keeps the JSON manifest standard and comparable.
        anisotropic_quantization_threshold=(
            math.nan if p.anisotropic_threshold is None else p.anisotropic_threshold),
        training_sample_size=p.training_sample_size,
    )
    b = b.reorder(p.reorder)
    text = b.create_config()
    # The builder exposes no seed arguments; the proto fields exist, so set them here.
    text = text.replace("partitioning {", f"partitioning {{\n clustering_seed: {p.seed}", 1)
    text = text.replace(
        "asymmetric_hash {",
        f"asymmetric_hash {{\n clustering_seed: {p.seed}\n sampling_seed: {p.seed}",
        1,
    )
    return text


def build_searcher(db_ND: np.ndarray, p: ScannParams, num_neighbors: int = 10):
    """Trains and returns a ScaNN searcher over the [N, D] unit rows."""
    sp = _import_scann()
    return sp.create_searcher(db_ND, config_text(db_ND, p, num_neighbors), p.training_threads)


def search(searcher, q_QD: np.ndarray, k: int, p: ScannParams, num_leaves_total: int,
           *, batch_size: int = 256, db_ND: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Batched ScaNN search returning exactly k neighbours per query.

    ScaNN pads with (row 0, NaN) when the searched leaves hold fewer than k rows (a
    query near a small leaf); those queries are searched again over every leaf, which
    for a tree+AH+reorder searcher always yields k rows when k <= N.

    With db_ND, the rows ScaNN returns are rescored here and re-sorted by (score desc,
    row asc). With SOAR, ScaNN's own rescored values vary in the last bit from call to
    call (it deduplicates spilled candidates in hash sets whose order is per-call), so
    one spare neighbour is asked for and the final k are picked from exact, per-row
    scores: the same query gives the same rows and scores in every call and process,
    and equal rows (duplicates) come out lower index first, as in exact_top_k.

    Args:
      db_ND: the [N, D] unit rows the searcher indexes (in memory or memory-mapped).

    Returns:
      (idx_QK int64, score_QK float32), best first.
    """
    n = searcher.size()
    k_ask = min(k + 1, n) if db_ND is not None else k
    pre = max(p.reorder, p.reorder_per_k * k, k_ask)
    idx, score = searcher.search_batched_parallel(
        q_QD, final_num_neighbors=k_ask, pre_reorder_num_neighbors=pre,
        leaves_to_search=p.leaves_to_search, batch_size=batch_size,
    )
    idx = np.asarray(idx, np.int64)
    score = np.asarray(score, np.float32)
    full = score.shape[1] == k_ask
    short_Q = np.isnan(score[:, :k]).any(axis=1) if full else np.ones(len(q_QD), bool)
    if short_Q.any():
        rows = np.flatnonzero(short_Q)
        i2, s2 = searcher.search_batched(
            q_QD[rows], final_num_neighbors=k_ask, pre_reorder_num_neighbors=pre,
            leaves_to_search=num_leaves_total,
        )
        full_idx = np.zeros((len(q_QD), k_ask), np.int64)
        full_score = np.full((len(q_QD), k_ask), np.nan, np.float32)
        if full:
            full_idx[:], full_score[:] = idx, score
        full_idx[rows], full_score[rows] = np.asarray(i2, np.int64), np.asarray(s2, np.float32)
        idx, score = full_idx, full_score
    if db_ND is None:
        return idx[:, :k], score[:, :k]
    return _rescore(db_ND, q_QD, idx, np.isnan(score), k)


def _rescore(db_ND: np.ndarray, q_QD: np.ndarray, idx_QC: np.ndarray, pad_QC: np.ndarray,
             k: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores of C candidate rows per query; the best k by (score desc, row asc).

    Each score is one row-by-row float32 dot product (einsum over d alone, no BLAS), so
    it does not depend on which other rows or queries share the call. The query is
    broadcast over its candidates, not copied once per candidate. Padding slots (NaN
    from ScaNN; only the spare one can remain) sort last.
    """
    q_total, _ = idx_QC.shape
    out_idx = np.empty((q_total, k), np.int64)
    out_score = np.empty((q_total, k), np.float32)
    for s in range(0, q_total, chunk):
        ids = idx_QC[s : s + chunk]
        rows_QCD = np.asarray(db_ND[ids], np.float32)
        sc = np.einsum("qcd,qd->qc", rows_QCD, q_QD[s : s + chunk])
        sc[pad_QC[s : s + chunk]] = -np.inf
        # lexsort: last key is primary -> score descending, then row ascending.
        order = np.lexsort((ids, -sc), axis=1)[:, :k]
        out_idx[s : s + chunk] = np.take_along_axis(ids, order, axis=1)
        out_score[s : s + chunk] = np.take_along_axis(sc, order, axis=1)
    return out_idx, out_score


def save_searcher(searcher, out_dir: Path) -> None:
    """Serialises with ScaNN's own serializer; relative asset paths keep the bytes
    independent of the directory (so a stage's tmp dir can be renamed into place)."""
    os.makedirs(out_dir, exist_ok=True)
    searcher.serialize(str(out_dir), relative_path=True)


def load_searcher(art_dir: Path):
    """Loads a searcher written by save_searcher."""
    return _import_scann().load_searcher(str(art_dir), assets_backcompat_shim=False)


def load_rows(art_dir: Path) -> np.ndarray | None:
    """The float32 rows ScaNN serialised for its exact reorder (memory-mapped), or None."""
    path = Path(art_dir) / "dataset.npy"
    return np.load(path, mmap_mode="r", allow_pickle=False) if path.is_file() else None
