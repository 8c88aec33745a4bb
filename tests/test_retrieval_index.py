"""Retrieval index: recall vs exact search, determinism, save/load, degenerate inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from semievol_jax.retrieval import (
    IndexConfig,
    RetrievalError,
    build_index,
    exact_top_k,
    load_index,
    recall_at_k,
)
from semievol_jax.retrieval.index import MANIFEST


def clustered(n: int, d: int, *, clusters: int, seed: int, noise: float = 0.5) -> np.ndarray:
    # Fixed centers (seed 99) so that query sets drawn with another seed share them.
    centers = np.random.default_rng(99).standard_normal((clusters, d)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = centers[rng.integers(0, clusters, n)]
    return x + noise * rng.standard_normal((n, d)).astype(np.float32)


@pytest.fixture(scope="module")
def big():
    """20k x 256 clustered set, 400 held-out queries, one ScaNN index and exact truth."""
    pytest.importorskip("scann")
    x = clustered(20_000, 256, clusters=200, seed=0)
    q = clustered(400, 256, clusters=200, seed=1)
    index = build_index(x, IndexConfig(backend="scann"))
    truth, truth_score = build_index(x, IndexConfig(backend="exact")).search(q, 10)
    return x, q, index, truth, truth_score


def test_scann_recall_against_exact(big):
    _, q, index, truth, truth_score = big
    assert index.backend == "scann" and "scann" in index.describe()
    idx, score = index.search(q, 10)
    assert idx.shape == (400, 10) and idx.dtype == np.int64 and score.dtype == np.float32
    assert recall_at_k(idx, truth) >= 0.95
    # Scores are exact cosines after the float32 reorder, sorted best first.
    assert np.all(np.diff(score, axis=1) <= 1e-6)
    np.testing.assert_allclose(score[:, 0], truth_score[:, 0], atol=1e-4)


def test_rescored_candidates_grow_with_k(big):
    # 40 AH candidates (enough for k=4) rank too coarsely for k=10 here; the default
    # rescores max(40, 10 k) = 100 and passes the recall bar above.
    pytest.importorskip("scann")
    import dataclasses

    from semievol_jax.retrieval import scann_backend

    _, q, index, truth, _ = big
    assert index.params.reorder == 40 and index.params.reorder_per_k == 10
    fixed = dataclasses.replace(index.params, reorder_per_k=0)
    idx, _ = scann_backend.search(index._searcher, q, 10, fixed, fixed.num_leaves,
                                  db_ND=index._db_ND)
    assert recall_at_k(idx, truth) < 0.95 <= recall_at_k(index.search(q, 10)[0], truth)


def test_two_builds_give_identical_neighbours(big):
    x, q, index, _, _ = big
    again = build_index(x, IndexConfig(backend="scann"))
    i1, s1 = index.search(q, 10)
    i2, s2 = again.search(q, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)


def test_save_load_round_trip_scann(big, tmp_path):
    _, q, index, _, _ = big
    index.save(tmp_path / "ix")
    loaded = load_index(tmp_path / "ix")
    assert loaded.backend == "scann" and loaded.params == index.params
    assert loaded.digest == index.digest and loaded.describe() == index.describe()
    for a, b in zip(index.search(q, 7), loaded.search(q, 7), strict=True):
        np.testing.assert_array_equal(a, b)


def test_pca_projection_codes_fewer_dims_and_round_trips(tmp_path):
    # Rows near a 32-dim subspace of R^256: ScaNN's PCA keeps the neighbours while the
    # AH codes cover 32 dims, not 256 (2 dims per code: 16 codes a row, not 128).
    pytest.importorskip("scann")
    basis = np.random.default_rng(99).standard_normal((32, 256)).astype(np.float32)
    centers = np.random.default_rng(98).standard_normal((200, 32)).astype(np.float32)

    def rows(n, seed):
        r = np.random.default_rng(seed)
        z = centers[r.integers(0, 200, n)] + 0.5 * r.standard_normal((n, 32)).astype(np.float32)
        return z @ basis + 0.05 * r.standard_normal((n, 256)).astype(np.float32)

    x, q = rows(20_000, 0), rows(400, 1)
    truth = build_index(x, IndexConfig(backend="exact")).search(q, 10)[0]
    plain = build_index(x, IndexConfig(backend="scann"))
    pca = build_index(x, IndexConfig(backend="scann", pca_dims=32))
    assert pca.params.pca_dims == 32 and "PCA to 32 dims" in pca.describe()
    assert plain.params.pca_dims == 0 and "PCA" not in plain.describe()
    assert recall_at_k(pca.search(q, 10)[0], truth) >= 0.95
    plain.save(tmp_path / "plain")
    pca.save(tmp_path / "pca")
    codes = {name: np.load(tmp_path / name / "scann" / "hashed_dataset.npy")
             for name in ("plain", "pca")}
    assert codes["plain"].shape[1] == 128 and codes["pca"].shape[1] == 16
    loaded = load_index(tmp_path / "pca")
    assert loaded.params == pca.params
    for a, b in zip(pca.search(q, 10), loaded.search(q, 10), strict=True):
        np.testing.assert_array_equal(a, b)


def test_pca_dims_at_or_above_the_width_is_off():
    from semievol_jax.retrieval import scann_backend

    assert scann_backend.resolve_params(IndexConfig(pca_dims=256), 20_000, 256).pca_dims == 0
    assert scann_backend.resolve_params(IndexConfig(pca_dims=64), 20_000, 256).pca_dims == 64
    with pytest.raises(RetrievalError, match="pca_dims"):
        IndexConfig(pca_dims=-1)


def test_save_load_round_trip_exact(tmp_path):
    x = clustered(300, 16, clusters=5, seed=2)
    index = build_index(x)
    assert index.backend == "exact" and "auto" in index.describe()
    index.save(tmp_path / "ix")
    loaded = load_index(tmp_path / "ix")
    for a, b in zip(index.search(x[:20], 3), loaded.search(x[:20], 3), strict=True):
        np.testing.assert_array_equal(a, b)


def test_load_rejects_tampered_or_missing(tmp_path):
    with pytest.raises(RetrievalError, match="no manifest.json"):
        load_index(tmp_path)
    x = clustered(50, 8, clusters=3, seed=0)
    build_index(x).save(tmp_path / "ix")
    np.save(tmp_path / "ix" / "rows.npy", np.ones((50, 8), np.float32))
    with pytest.raises(RetrievalError, match="digest"):
        load_index(tmp_path / "ix")


def test_exact_matches_naive_sort():
    rng = np.random.default_rng(0)
    db = rng.standard_normal((500, 12)).astype(np.float32)
    q = rng.standard_normal((37, 12)).astype(np.float32)
    idx, score = exact_top_k(db, q, 6, chunk=8)  # several chunks
    naive = np.argsort(-(q @ db.T), axis=1, kind="stable")[:, :6]
    np.testing.assert_array_equal(idx, naive)
    np.testing.assert_allclose(score, np.take_along_axis(q @ db.T, naive, 1), rtol=1e-6)


def test_auto_backend_choice():
    x = clustered(400, 8, clusters=4, seed=0)
    assert build_index(x, IndexConfig(min_rows_for_partitioning=1000)).backend == "exact"
    # Too few rows to partition: a ScaNN request falls back, and says so.
    small = build_index(x[:60], IndexConfig(backend="scann"))
    assert small.backend == "exact" and "too few" in small.describe()


def test_fewer_rows_than_k_returns_all_rows():
    x = clustered(3, 8, clusters=2, seed=0)
    idx, score = build_index(x).search(x[:2], 10)
    assert idx.shape == (2, 3)
    assert sorted(idx[0].tolist()) == [0, 1, 2] and idx[0, 0] == 0


def test_single_row():
    idx, score = build_index(np.ones((1, 5))).search(np.ones((4, 5)), 3)
    np.testing.assert_array_equal(idx, np.zeros((4, 1), np.int64))
    np.testing.assert_allclose(score, 1.0, rtol=1e-6)
    idx, _ = build_index(np.ones((1, 5))).search(np.ones((1, 5)), 3, exclude_self=True)
    assert idx.shape == (1, 0)


def test_duplicates_are_distinct_rows_in_index_order():
    base = clustered(20, 8, clusters=2, seed=0)
    x = np.concatenate([base, base[:1], base[:1]])  # rows 0, 20, 21 identical
    idx, score = build_index(x).search(base[:1] * 3.0, 3)  # scale does not matter
    assert idx[0].tolist() == [0, 20, 21]
    np.testing.assert_allclose(score[0], 1.0, rtol=1e-6)
    idx, _ = build_index(x).search(x, 2, exclude_self=True)
    assert idx[0].tolist() == [20, 21] and idx[20].tolist() == [0, 21]


def test_exclude_self_drops_own_row():
    x = clustered(200, 16, clusters=4, seed=3)
    index = build_index(x)
    idx, score = index.search(x, 5, exclude_self=True)
    assert idx.shape == (200, 5)
    assert not (idx == np.arange(200)[:, None]).any()
    full, _ = index.search(x, 6)
    np.testing.assert_array_equal(idx, full[:, 1:])  # own row is each query's best
    with pytest.raises(RetrievalError, match="exclude_self"):
        index.search(x[:10], 3, exclude_self=True)


def test_exclude_self_scann(big):
    x = big[0]
    sub = build_index(x[:3000], IndexConfig(backend="scann"))
    idx, _ = sub.search(x[:3000], 4, exclude_self=True)
    assert idx.shape == (3000, 4) and not (idx == np.arange(3000)[:, None]).any()


def test_nan_and_inf_rows_are_named():
    x = clustered(30, 8, clusters=2, seed=0)
    x[17, 3] = np.nan
    with pytest.raises(RetrievalError, match="embeddings: row 17 contains NaN"):
        build_index(x)
    x[17, 3] = 0.0
    index = build_index(x)
    q = x[:4].copy()
    q[2, 0] = np.inf
    with pytest.raises(RetrievalError, match="queries: row 2"):
        index.search(q, 2)


def test_zero_row_and_bad_shapes():
    x = clustered(10, 4, clusters=2, seed=0)
    x[5] = 0
    with pytest.raises(RetrievalError, match="row 5 is all zeros"):
        build_index(x)
    with pytest.raises(RetrievalError, match="2-D"):
        build_index(np.ones(8))
    with pytest.raises(RetrievalError, match="empty"):
        build_index(np.ones((0, 4)))


def test_dimension_mismatch_is_clear():
    index = build_index(clustered(10, 4, clusters=2, seed=0))
    with pytest.raises(RetrievalError, match="dimension 6 but the index was built on dimension 4"):
        index.search(np.ones((2, 6)), 1)
    with pytest.raises(RetrievalError, match="positive integer"):
        index.search(np.ones((2, 4)), 0)


def test_bad_config_is_rejected():
    with pytest.raises(RetrievalError, match="backend"):
        IndexConfig(backend="faiss")
    with pytest.raises(RetrievalError, match="num_leaves"):
        IndexConfig(num_leaves=-1)


def test_manifest_names_pca_only_when_on(tmp_path):
    x = clustered(300, 16, clusters=4, seed=0)
    build_index(x, IndexConfig(backend="exact")).save(tmp_path / "off")
    build_index(x, IndexConfig(backend="exact", pca_dims=8)).save(tmp_path / "on")
    off = json.loads((tmp_path / "off" / MANIFEST).read_text())
    on = json.loads((tmp_path / "on" / MANIFEST).read_text())
    assert "pca_dims" not in off["config"] and on["config"]["pca_dims"] == 8
    assert load_index(tmp_path / "off").cfg == IndexConfig(backend="exact")
    assert load_index(tmp_path / "on").cfg.pca_dims == 8


def test_rescore_is_per_row_and_independent_of_the_batch():
    # The candidates' exact scores must be the same bits whichever queries share a call.
    from semievol_jax.retrieval import scann_backend

    rng = np.random.default_rng(3)
    db = rng.standard_normal((500, 96)).astype(np.float32)
    q = rng.standard_normal((40, 96)).astype(np.float32)
    idx = rng.integers(0, 500, (40, 6))
    pad = np.zeros((40, 6), bool)
    pad[7, 5] = True  # a ScaNN pad slot sorts last
    i_all, s_all = scann_backend._rescore(db, q, idx, pad, 4)
    i_one, s_one = scann_backend._rescore(db, q, idx, pad, 4, chunk=1)
    np.testing.assert_array_equal(i_all, i_one)
    assert s_all.tobytes() == s_one.tobytes()
    ref = np.einsum("cd,cd->c", db[idx.ravel()], np.repeat(q, 6, axis=0)).reshape(40, 6)
    for r in range(40):
        expect = sorted((-ref[r, j], idx[r, j]) for j in range(6) if not pad[r, j])[:4]
        assert i_all[r].tolist() == [int(i) for _, i in expect]
        assert s_all[r].tobytes() == np.array([-s for s, _ in expect], np.float32).tobytes()
