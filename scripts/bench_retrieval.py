"""Benchmark: ScaNN (our Index) vs exact search vs FAISS IVF on clustered embeddings.

Prints one table and writes results/bench/retrieval.json. Default: 100k x 4096 float32
database, 2,000 held-out queries, k = 4; recall@k is measured against exact search.

Data: a stand-in for question embeddings: few broad topics, each much larger than an
index partition, with low-dimensional variation inside a topic:
    x = topic[t] + latent_scale * z @ B + noise_scale * eps,  then L2-normalised,
with `clusters` topics (standard normal D-vectors), z a standard normal
`latent_dim`-vector, B a fixed random [latent_dim, D] map with rows of norm sqrt(D) and
eps isotropic noise. Topics span several partitions, so true neighbours straddle
partition boundaries; the low latent dimension keeps a real gap between the nearest
rows and the rest. Queries are fresh draws, not database rows.

Usage:
    python scripts/bench_retrieval.py                       # the full run (~10+ min)
    python scripts/bench_retrieval.py --rows 20000 --dim 512 --no-json   # quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from semievol_jax.retrieval import IndexConfig, build_index, recall_at_k, scann_backend


def make_data(n: int, d: int, *, clusters: int, latent_dim: int, latent_scale: float,
              noise_scale: float, seed: int, chunk: int = 8192) -> np.ndarray:
    """[n, d] float32 unit rows, generated in chunks (one copy of the matrix in memory)."""
    rng = np.random.default_rng(seed)
    # The topic structure has its own stream so queries (another seed) share it.
    srng = np.random.default_rng(1234)
    topics = srng.standard_normal((clusters, d), dtype=np.float32)
    basis = srng.standard_normal((latent_dim, d), dtype=np.float32)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        block = topics[rng.integers(0, clusters, m)]
        block += latent_scale * (rng.standard_normal((m, latent_dim), dtype=np.float32) @ basis)
        block += noise_scale * rng.standard_normal((m, d), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[s : s + m] = block
    return out


def timed(fn, repeats: int):
    """(result of the last call, best wall time of `repeats` calls)."""
    best, res = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        res = fn()
        best = min(best, time.perf_counter() - t)
    return res, best


def row(method, setting, build_s, search_s, nq, found, truth, **extra):
    return dict(method=method, setting=setting, build_s=round(build_s, 2),
                qps=round(nq / search_s, 1), recall=round(recall_at_k(found, truth), 4),
                **extra)


def bench_exact(db, q, k, repeats):
    # The exact backend of our Index: chunked float32 matmul + top-k (numpy BLAS).
    t = time.perf_counter()
    ix = build_index(db, IndexConfig(backend="exact"))
    build_s = time.perf_counter() - t
    (idx, _), s = timed(lambda: ix.search(q, k), repeats)
    return idx, [row("exact", "numpy matmul, 1024-query chunks", build_s, s, len(q), idx, idx)]


def bench_scann(db, q, k, truth, repeats, dims_list, leaves_list, reorder_list, sample):
    rows = []
    for dpb in dims_list:
        cfg = IndexConfig(backend="scann", dims_per_block=dpb, training_sample_size=sample)
        t = time.perf_counter()
        ix = build_index(db, cfg)
        build_s = time.perf_counter() - t
        (idx, _), s = timed(lambda ix=ix: ix.search(q, k), repeats)
        rows.append(row("scann", f"defaults: {ix.describe().split('; ', 1)[1]}", build_s, s,
                        len(q), idx, truth, default=True))
        for leaves in leaves_list:
            for reorder in reorder_list:
                p = dataclasses.replace(
                    ix.params, leaves_to_search=min(leaves, ix.params.num_leaves), reorder=reorder)
                (res, _), s = timed(lambda p=p, ix=ix: scann_backend.search(
                    ix._searcher, q, k, p, ix.params.num_leaves), repeats)
                setting = (f"leaves {p.num_leaves}, search {p.leaves_to_search}, "
                           f"AH {p.dims_per_block} dims/block, reorder {reorder}")
                rows.append(row("scann", setting, build_s, s, len(q), res, truth))
        del ix
        gc.collect()
    return rows


def bench_faiss(db, q, k, truth, repeats, specs, nprobes, train_rows):
    try:
        import faiss
    except ImportError:
        print("faiss not installed (bench extra); skipping FAISS", file=sys.stderr)
        return []
    rows = []
    for spec in specs:
        t = time.perf_counter()
        index = faiss.index_factory(db.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
        # Train on as many rows as our ScaNN index samples (same k-means budget).
        pick = np.sort(np.random.default_rng(0).choice(len(db), train_rows, replace=False))
        index.train(db[pick])
        index.add(db)
        build_s = time.perf_counter() - t
        ivf = faiss.extract_index_ivf(index)
        for nprobe in nprobes:
            ivf.nprobe = nprobe
            params = None
            if "RFlat" in spec:
                params = faiss.IndexRefineSearchParameters(k_factor=25)
            (res, _), s = timed(lambda params=params, index=index: index.search(
                q, k, params=params)[::-1], repeats)
            rows.append(row("faiss", f"{spec}, nprobe {nprobe}" + (", k_factor 25" if params
                                                                    else ""),
                            build_s, s, len(q), res, truth))
        del index, ivf
        gc.collect()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--clusters", type=int, default=100)
    ap.add_argument("--latent-dim", type=int, default=16)
    ap.add_argument("--latent-scale", type=float, default=1.0)
    ap.add_argument("--noise-scale", type=float, default=0.3)
    ap.add_argument("--repeats", type=int, default=2, help="timed searches; best is kept")
    ap.add_argument("--scann-dims", default="0", help="AH dims per block to build (0=derived)")
    ap.add_argument("--scann-leaves", default="16,32,64", help="leaves_to_search sweep")
    ap.add_argument("--scann-reorder", default="50,100", help="reorder sweep")
    ap.add_argument("--scann-sample", type=int, default=0, help="0 = the derived default")
    ap.add_argument("--faiss", default="IVF316,Flat;IVF316,PQ1024x4fs,RFlat",
                    help="';'-separated faiss index_factory strings ('' to skip)")
    ap.add_argument("--nprobe", default="16,32,64")
    ap.add_argument("--out", default="results/bench/retrieval.json")
    ap.add_argument("--no-json", action="store_true")
    args = ap.parse_args(argv)
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731

    gen = dict(clusters=args.clusters, latent_dim=args.latent_dim,
               latent_scale=args.latent_scale, noise_scale=args.noise_scale)
    t = time.perf_counter()
    db = make_data(args.rows, args.dim, seed=0, **gen)
    q = make_data(args.queries, args.dim, seed=1, **gen)
    print(f"data {db.shape} + queries {q.shape} in {time.perf_counter() - t:.1f}s", flush=True)

    truth, rows = bench_exact(db, q, args.k, max(1, args.repeats - 2))
    print(f"exact: {rows[0]['qps']} q/s", flush=True)
    rows += bench_scann(db, q, args.k, truth, args.repeats, ints(args.scann_dims),
                        ints(args.scann_leaves), ints(args.scann_reorder), args.scann_sample)
    print("scann done", flush=True)
    sample = scann_backend.resolve_params(IndexConfig(training_sample_size=args.scann_sample),
                                          *db.shape).training_sample_size
    rows += bench_faiss(db, q, args.k, truth, args.repeats,
                        [s for s in args.faiss.split(";") if s], ints(args.nprobe), sample)

    exact_qps = rows[0]["qps"]
    for r in rows:
        r["speedup_vs_exact"] = round(r["qps"] / exact_qps, 1)
    print(f"\n{'method':7} {'build s':>8} {'q/s':>9} {'x exact':>8} {'recall@' + str(args.k):>9}"
          "  setting")
    for r in rows:
        print(f"{r['method']:7} {r['build_s']:8.1f} {r['qps']:9.1f} {r['speedup_vs_exact']:8.1f} "
              f"{r['recall']:9.4f}  {r['setting']}")

    def best_at(method, target):
        ok = [r for r in rows if r["method"] == method and r["recall"] >= target]
        return max(ok, key=lambda r: r["qps"]) if ok else None

    summary = {}
    for target in (0.95, 0.99):
        summary[f"recall>={target}"] = {m: best_at(m, target) for m in ("scann", "faiss")}
    print("\nfastest setting reaching recall@k >= 0.95:")
    for m, r in summary["recall>=0.95"].items():
        print(f"  {m}: " + (f"{r['qps']} q/s ({r['speedup_vs_exact']}x exact), recall "
                            f"{r['recall']}: {r['setting']}" if r else "none"))
    if args.no_json:
        return 0
    import faiss  # noqa: F401  (version record only; present when the FAISS rows ran)
    record = {
        "command": "python " + " ".join([sys.argv[0], *sys.argv[1:]] if argv is None
                                        else ["scripts/bench_retrieval.py", *argv]),
        "device": {"cpu": _cpu_name(), "cores_visible": os.cpu_count(),
                   "machine": platform.machine(), "python": platform.python_version(),
                   "note": "shared with other jobs while running; qps = best of repeats"},
        "versions": _versions(),
        "data": {"rows": args.rows, "dim": args.dim, "queries": args.queries, "k": args.k,
                 "dtype": "float32", "generator": gen},
        "repeats": args.repeats,
        "rows": rows,
        "summary": summary,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in ("scann", "faiss-cpu", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


if __name__ == "__main__":
    raise SystemExit(main())
