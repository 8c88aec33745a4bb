"""scripts/bench_retrieval.py's goal block: what it calls met (no timing here)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_retrieval  # noqa: E402


def rows():
    return [
        dict(method="exact", setting="numpy", recall=1.0, qps=10.0),
        dict(method="scann", setting="defaults", recall=0.97, qps=120.0, default=True),
        dict(method="scann", setting="fast", recall=0.90, qps=500.0),
        dict(method="faiss", setting="IVF316,Flat, nprobe 24", recall=0.96, qps=20.0),
        dict(method="faiss", setting="IVF316,Flat, nprobe 8", recall=0.80, qps=900.0),
        dict(method="faiss", setting="IVF316,PQ1024x4fs,RFlat, nprobe 28, k_factor 3",
             recall=0.955, qps=150.0),
        dict(method="faiss", setting="IVF316,PQ1024x4fs,RFlat, nprobe 32, k_factor 3",
             recall=0.965, qps=110.0),
    ]


def test_goals_per_index_use_only_settings_reaching_the_recall_target():
    g = bench_retrieval.goals(rows(), exact_qps=10.0)
    assert g["default_recall"]["met"] and g["default_speedup"]["value"] == 12.0
    by = g["ahead_of_faiss_by_index"]
    # IVF-Flat's 900 q/s setting misses recall 0.95, so 20 q/s is the one to beat.
    assert by["met"] == {"IVF316,Flat": True, "IVF316,PQ1024x4fs,RFlat": False}
    assert by["value"] == {"IVF316,Flat": 6.0, "IVF316,PQ1024x4fs,RFlat": 0.8}
    assert not g["ahead_of_faiss"]["met"]
    # At equal recall: the fast-scan nprobe-32 setting (0.965, 110 q/s) is beaten by the
    # 0.97 / 120 q/s ScaNN default; nprobe 28 (150 q/s) is not.
    assert g["ahead_of_faiss_at_equal_recall"]["value"] == [
        "IVF316,PQ1024x4fs,RFlat, nprobe 28, k_factor 3"]


def test_builds_parse_index_fields_and_reject_others():
    assert bench_retrieval.parse_builds("pca_dims=128,dims_per_block=1;num_leaves=1000") == [
        {"pca_dims": 128, "dims_per_block": 1}, {"num_leaves": 1000}]
    with pytest.raises(SystemExit, match="pca"):
        bench_retrieval.parse_builds("pca=128")


def test_raw_scann_rows_do_not_count_for_the_goals():
    fast_raw = dict(method="scann-raw", setting="fast", recall=0.99, qps=10_000.0)
    g = bench_retrieval.goals([*rows(), fast_raw], exact_qps=10.0)
    assert not g["ahead_of_faiss"]["met"]
    assert g["ahead_of_faiss_by_index"]["value"]["IVF316,PQ1024x4fs,RFlat"] == 0.8
