"""Nearest-neighbour index over unit embeddings: ScaNN for large sets, exact otherwise.

Similarity is the dot product of L2-normalised rows (cosine). `build_index` picks the
backend (reported by `Index.describe()`), `Index.search` returns the k best rows per
query, `Index.save` / `load_index` round-trip it through a directory holding ScaNN's
own serialisation (or the exact backend's matrix) and a JSON manifest.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semievol_jax.files import DIGEST_OMITS, to_jsonable
from semievol_jax.retrieval import scann_backend
from semievol_jax.retrieval.exact import exact_top_k
from semievol_jax.retrieval.vectors import RetrievalError, digest_rows, unit_rows

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
BACKENDS = ("auto", "scann", "exact")


@dataclass(frozen=True)
class IndexConfig:
    """How to index; 0 / None fields are derived from the data (see resolve_params)."""

    backend: str = "auto"  # "auto": ScaNN from min_rows_for_partitioning rows, else exact
    min_rows_for_partitioning: int = 10_000  # below this a partition saves nothing
    num_leaves: int = 0  # ScaNN tree leaves; 0 -> about sqrt(N)
    leaves_to_search: int = 0  # leaves scored per query; 0 -> max(8, 8% of leaves)
    reorder: int = 0  # AH candidates rescored exactly, at least; 0 -> 40 (never below k)
    reorder_per_k: int = 10  # ... and at least this many per neighbour asked (k); 0 = off
    soar_lambda: float = 1.5  # SOAR: each row also in a 2nd, orthogonal-residual leaf; 0 = off
    dims_per_block: int = 0  # AH dims per code; 0 -> 2 for D <= 1024, else 4
    # ScaNN's PCA before the tree and AH: rows projected onto this many principal
    # directions (candidates are still rescored on the full rows); 0 = off, and then
    # left out of manifests and stage keys, which keep the bytes of indexes made before it
    pca_dims: int = field(default=0, metadata={DIGEST_OMITS: 0})
    anisotropic_threshold: float | None = None  # AH eta; None -> off (plain AH ranked better)
    training_sample_size: int = 0  # rows sampled to train; 0 -> max(20k, 100 per leaf)
    min_partition_size: int = 50  # smallest leaf ScaNN keeps
    seed: int = 0  # tree + codebook seeds; same data and seed -> same index bytes
    training_threads: int = 0  # 0 = all cores (the result does not depend on it)
    search_batch_size: int = 256  # queries per ScaNN worker batch
    exact_chunk: int = 1024  # queries per matmul block in exact search (memory bound)

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise RetrievalError(
                f"IndexConfig.backend={self.backend!r}; expected one of {BACKENDS}")
        for name in ("min_rows_for_partitioning", "num_leaves", "leaves_to_search", "reorder",
                     "reorder_per_k", "dims_per_block", "pca_dims", "training_threads",
                     "training_sample_size"):
            if getattr(self, name) < 0:
                raise RetrievalError(f"IndexConfig.{name}={getattr(self, name)} must be >= 0")
        if not self.soar_lambda >= 0:  # also rejects NaN
            raise RetrievalError(f"IndexConfig.soar_lambda={self.soar_lambda} must be >= 0")
        for name in ("min_partition_size", "search_batch_size", "exact_chunk"):
            if getattr(self, name) < 1:
                raise RetrievalError(f"IndexConfig.{name}={getattr(self, name)} must be >= 1")


class Index:
    """A searchable set of N unit rows of width D. Build with build_index / load_index."""

    def __init__(self, *, backend: str, num_rows: int, dim: int, digest: str,
                 reason: str, cfg: IndexConfig, db_ND: np.ndarray | None = None,
                 searcher: Any = None, params: scann_backend.ScannParams | None = None):
        self.backend = backend
        self.num_rows = num_rows
        self.dim = dim
        self.digest = digest  # sha256 of the normalised float32 rows
        self.reason = reason  # why this backend was chosen
        self.cfg = cfg
        self.params = params
        self._db_ND = db_ND
        self._searcher = searcher

    def describe(self) -> str:
        """One line: backend, why, size and the resolved parameters."""
        head = f"{self.backend} index of {self.num_rows} x {self.dim} ({self.reason})"
        if self.params is None:
            return head + "; exact dot product on unit rows"
        p = self.params
        eta = "off" if p.anisotropic_threshold is None else p.anisotropic_threshold
        soar = "off" if p.soar_lambda is None else p.soar_lambda
        pca = f"PCA to {p.pca_dims} dims; " if p.pca_dims else ""
        return (f"{head}; {pca}tree {p.num_leaves} leaves, search {p.leaves_to_search}, SOAR "
                f"{soar}; AH {p.dims_per_block} dims/block, eta {eta}; "
                f"reorder max({p.reorder}, {p.reorder_per_k} k); seed {p.seed}")

    def search(self, queries_QD: np.ndarray, k: int, *, exclude_self: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar rows per query (cosine), best first.

        k larger than the number of rows returns every row (K = N, or N - 1 with
        exclude_self); duplicates of a row are distinct rows and are all returned.

        Args:
          queries_QD: [Q, D] query embeddings (normalised here).
          k: neighbours per query, >= 1.
          exclude_self: the queries are the indexed rows themselves, in order
            (retrieval within D_L); query q never gets row q back.

        Returns:
          (idx_QK int64 row numbers, score_QK float32 cosine), K = min(k, available).

        Raises:
          RetrievalError: bad k, queries of another width, NaN/inf/zero query rows, or
            exclude_self with a query count different from the row count.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise RetrievalError(f"search: k must be a positive integer, got {k!r}")
        q = np.asarray(queries_QD)
        if q.ndim == 2 and q.shape[1] != self.dim:
            raise RetrievalError(
                f"search: queries have dimension {q.shape[1]} but the index was built on "
                f"dimension {self.dim} ({self.num_rows} rows)")
        q_QD = unit_rows(q, "queries")
        if exclude_self and q_QD.shape[0] != self.num_rows:
            raise RetrievalError(
                f"search: exclude_self needs the indexed rows as queries, in order "
                f"({self.num_rows} rows), got {q_QD.shape[0]} queries")
        available = self.num_rows - (1 if exclude_self else 0)
        k_eff = min(int(k), available)
        if k_eff < 1:
            return np.zeros((q_QD.shape[0], 0), np.int64), np.zeros((q_QD.shape[0], 0), np.float32)
        # One extra neighbour leaves room to drop the query's own row.
        k_ask = k_eff + 1 if exclude_self else k_eff
        idx, score = self._search(q_QD, k_ask)
        if exclude_self:
            idx, score = _drop_self(idx, score, k_eff)
        return idx, score

    def _search(self, q_QD: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._searcher is not None:
            return scann_backend.search(self._searcher, q_QD, k, self.params,
                                        self.params.num_leaves,
                                        batch_size=self.cfg.search_batch_size,
                                        db_ND=self._db_ND)
        return exact_top_k(self._db_ND, q_QD, k, chunk=self.cfg.exact_chunk)

    def manifest(self) -> dict:
        """What save() writes next to the artifacts."""
        return {
            "format_version": FORMAT_VERSION,
            "backend": self.backend,
            "reason": self.reason,
            "num_rows": self.num_rows,
            "dim": self.dim,
            "digest": self.digest,
            "config": to_jsonable(self.cfg),
            "params": None if self.params is None else to_jsonable(self.params),
        }

    def save(self, out_dir: str | Path) -> Path:
        """Writes the index into out_dir (created): manifest.json plus scann/ (ScaNN's
        serialisation) or rows.npy (exact). Deterministic bytes for the same index."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self._searcher is not None:
            scann_backend.save_searcher(self._searcher, out / "scann")
        else:
            np.save(out / "rows.npy", self._db_ND, allow_pickle=False)
        (out / MANIFEST).write_text(json.dumps(self.manifest(), indent=2, sort_keys=True) + "\n")
        return out


def _drop_self(idx_QK: np.ndarray, score_QK: np.ndarray, k: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Removes row q from query q's list (or the last entry when q was not retrieved)."""
    q_rows = np.arange(idx_QK.shape[0])[:, None]
    is_self = idx_QK == q_rows
    # Keep the first k entries that are not the query itself; stable order preserved.
    keep = ~is_self & (np.cumsum(~is_self, axis=1) <= k)
    return (idx_QK[keep].reshape(-1, k), score_QK[keep].reshape(-1, k))


def _choose_backend(cfg: IndexConfig, n: int) -> tuple[str, str]:
    if cfg.backend == "exact":
        return "exact", "backend=exact requested"
    if cfg.backend == "scann":
        if n < 2 * cfg.min_partition_size:
            return "exact", (f"backend=scann requested but {n} rows are too few to "
                             f"partition (< 2 x min_partition_size {cfg.min_partition_size})")
        return "scann", "backend=scann requested"
    threshold = cfg.min_rows_for_partitioning
    if n >= threshold:
        return "scann", f"auto: {n} rows >= min_rows_for_partitioning {threshold}"
    return "exact", f"auto: {n} rows < min_rows_for_partitioning {threshold}"


def build_index(emb_ND: np.ndarray, cfg: IndexConfig | None = None) -> Index:
    """Indexes [N, D] embeddings (L2-normalised here) for cosine search.

    Args:
      emb_ND: [N, D] float embeddings, N >= 1.
      cfg: IndexConfig; default: auto backend with derived parameters.

    Raises:
      RetrievalError: empty set, NaN/inf/all-zero rows (the first bad row is named).
    """
    cfg = cfg or IndexConfig()
    db_ND = unit_rows(emb_ND, "embeddings")
    n, d = db_ND.shape
    if n == 0:
        raise RetrievalError("embeddings: cannot index an empty set (0 rows)")
    backend, reason = _choose_backend(cfg, n)
    common = dict(num_rows=n, dim=d, digest=digest_rows(db_ND), reason=reason, cfg=cfg)
    if backend == "exact":
        return Index(backend="exact", db_ND=db_ND, **common)
    params = scann_backend.resolve_params(cfg, n, d)
    searcher = scann_backend.build_searcher(db_ND, params)
    # The rows stay referenced: search rescores ScaNN's candidates from them (determinism).
    return Index(backend="scann", searcher=searcher, params=params, db_ND=db_ND, **common)


def load_index(index_dir: str | Path) -> Index:
    """Loads an index written by Index.save.

    Raises:
      RetrievalError: no/unreadable manifest, unknown format, missing artifacts, or
        artifacts whose shape disagrees with the manifest.
    """
    root = Path(index_dir)
    path = root / MANIFEST
    if not path.is_file():
        raise RetrievalError(f"{root}: not an index directory (no {MANIFEST})")
    try:
        man = json.loads(path.read_text())
        version, backend = man["format_version"], man["backend"]
        n, d = int(man["num_rows"]), int(man["dim"])
        cfg = IndexConfig(**man["config"])
    except (ValueError, KeyError, TypeError) as e:
        raise RetrievalError(f"{path}: unreadable index manifest ({e})") from e
    if version != FORMAT_VERSION:
        raise RetrievalError(f"{path}: index format {version}, this code reads {FORMAT_VERSION}")
    common = dict(num_rows=n, dim=d, digest=man["digest"], reason=man["reason"], cfg=cfg)
    if backend == "exact":
        rows = root / "rows.npy"
        if not rows.is_file():
            raise RetrievalError(f"{root}: exact index without rows.npy")
        db_ND = np.load(rows, allow_pickle=False)
        if db_ND.shape != (n, d) or db_ND.dtype != np.float32:
            raise RetrievalError(f"{rows}: {db_ND.dtype} {db_ND.shape}, manifest says float32 "
                                 f"({n}, {d})")
        if digest_rows(db_ND) != man["digest"]:
            raise RetrievalError(f"{rows}: contents do not match the manifest digest")
        return Index(backend="exact", db_ND=db_ND, **common)
    if backend == "scann":
        art = root / "scann"
        if not (art / "scann_assets.pbtxt").is_file():
            raise RetrievalError(f"{root}: ScaNN index without scann/scann_assets.pbtxt")
        params = scann_backend.ScannParams(**man["params"])
        searcher = scann_backend.load_searcher(art)
        if searcher.size() != n:
            raise RetrievalError(f"{art}: ScaNN searcher holds {searcher.size()} rows, "
                                 f"manifest says {n}")
        rows = scann_backend.load_rows(art)
        if rows is not None and rows.shape != (n, d):
            raise RetrievalError(f"{art}/dataset.npy: shape {rows.shape}, manifest says "
                                 f"({n}, {d})")
        return Index(backend="scann", searcher=searcher, params=params, db_ND=rows, **common)
    raise RetrievalError(f"{path}: unknown backend {backend!r}")


def recall_at_k(found_QK: np.ndarray, truth_QK: np.ndarray) -> float:
    """Fraction of the true k neighbours found (set overlap per query, averaged)."""
    k = truth_QK.shape[1]
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found_QK, truth_QK,
                                                                     strict=True))
    return hits / (k * max(len(truth_QK), 1)) if k else math.nan
