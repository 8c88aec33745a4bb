"""One decode step's attention over the KV cache, in the cache layouts XLA:CPU could run.

Times, on SmolLM2-135M's shape (``--tiny``: a 2-layer toy, for the test), one decode
step's attention for every layer: the new token's key and value written into the cache,
then scores, softmax and weighted values against the cache's S slots, with keys [H, S]
(``sample.key_layout=HS``), float32. Variants:
  stacked     the model's own: one [L, B, K, ...] buffer per K and V in the scanned
              layers' carry, written in place; each layer's slice is read by
              ``llama._attend``'s matmuls, which XLA:CPU cannot feed a dynamic slice of a
              buffer, so the slice is copied out first (``profile.json``'s layer slices)
  per_layer   L buffers of [B, K, ...] each and the layers as straight-line code, as
              the decode loop keeps them with ``sample.unroll_layers``
              (``kv_cache.split_layers``): the same matmuls with nothing copied
  in_place    the stacked buffers, the scores and weighted values as elementwise
              products summed over H and S, which XLA fuses with the slice (no copy, no
              matmul)
Also, in the same process, the decode ceiling's program at the same slots: the step's
projection and LM-head matmuls over the scanned weights, their per-step slices included
(``bench_common.jax_decode_matmul_step_s``, the ceiling of scripts/bench_generate.py),
so attention's seconds are read against the rest of a step from the same minutes.
Rounds interleave the variants (this machine's speed drifts); per variant: the best
and the median over rounds. The outputs of the variants are compared with the stacked
one's.
Writes results/bench/decode_attention.json (key per shape, ``--tag`` appended).

Usage:
  python scripts/bench_decode_attention.py [--slots 64] [--cache-len 192] [--rounds 15]
  python scripts/bench_decode_attention.py --tiny --out /tmp/a.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from semievol_jax.environment import set_determinism_flags  # noqa: E402

set_determinism_flags()  # the pipeline's CPU mode ($SEMIEVOL_CPU_MODE), before jax starts
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

VARIANTS = ("stacked", "per_layer", "in_place")


def _in_place_attend(q_BKGH, k_BKHS, v_BKSH, mask_BS):
    """Attention of one query per (row, head) as products summed by reductions: XLA
    fuses the cache slice into them, where a matmul needs it copied first."""
    H = q_BKGH.shape[-1]
    scores_BKGS = (q_BKGH[..., None] * k_BKHS[:, :, None]).sum(axis=3) * H**-0.5
    scores_BKGS = jnp.where(mask_BS[:, None, None], scores_BKGS, jnp.finfo(jnp.float32).min)
    probs_BKGS = jax.nn.softmax(scores_BKGS, axis=-1)
    return (probs_BKGS[..., None] * v_BKSH[:, :, None]).sum(axis=3)


def _programs(L: int, end: int):
    """Each variant's jitted step: (k, v, q_BKGH, mask_BS) -> (k, v, out_BKGH), the
    caches donated and written in place at slot `end`; every layer's output feeds the
    next layer's query and new key and value, so no layer's work can be dropped."""
    from semievol_jax.model.llama import _attend

    def write(k, v, x_BKGH, layer=()):
        """The new key and value (the query's first head, standing in) into slot `end`
        of the buffers, at index `layer` of a stacked buffer's leading axis."""
        lead = tuple(range(len(layer)))
        z = jnp.zeros((), jnp.int32)
        k_new = jnp.expand_dims(x_BKGH[:, :, 0, :, None], lead)  # [(1,) B, K, H, 1]
        v_new = jnp.expand_dims(x_BKGH[:, :, :1, :], lead)  # [(1,) B, K, 1, H]
        return (jax.lax.dynamic_update_slice(k, k_new, (*layer, z, z, z, end)),
                jax.lax.dynamic_update_slice(v, v_new, (*layer, z, z, end, z)))

    def matmul_attend(q_BKGH, k_BKHS, v_BKSH, mask_BS):
        out = _attend(q_BKGH[:, :, :, None], k_BKHS, v_BKSH, mask_BS[:, None], jnp.float32,
                      key_layout="HS")
        return out[:, :, :, 0]

    donate = functools.partial(jax.jit, donate_argnums=(0, 1))

    def scanned(attend):
        @donate
        def step(k_LBKHS, v_LBKSH, q_BKGH, mask_BS):
            def layer(carry, i):
                k, v, x = carry
                k, v = write(k, v, x, (i,))
                return (k, v, 0.5 * x + attend(x, k[i], v[i], mask_BS)), None

            (k, v, x), _ = jax.lax.scan(layer, (k_LBKHS, v_LBKSH, q_BKGH), jnp.arange(L))
            return k, v, x
        return step

    @donate
    def per_layer(ks, vs, q_BKGH, mask_BS):
        ks, vs, x = list(ks), list(vs), q_BKGH
        for i in range(L):
            ks[i], vs[i] = write(ks[i], vs[i], x)
            x = 0.5 * x + matmul_attend(x, ks[i], vs[i], mask_BS)
        return tuple(ks), tuple(vs), x

    return {"stacked": scanned(matmul_attend), "per_layer": per_layer,
            "in_place": scanned(_in_place_attend)}


def measure(shape: dict, slots: int, cache_len: int, rounds: int) -> dict:
    L, K, H = shape["num_layers"], shape["num_kv_heads"], shape["head_dim"]
    G = shape["num_heads"] // K
    end = cache_len - cache_len // 4  # a step three quarters into the cache
    key = jax.random.key(0)
    k0 = jax.random.normal(key, (L, slots, K, H, cache_len), jnp.float32)
    v0 = jax.random.normal(jax.random.fold_in(key, 1), (L, slots, K, cache_len, H),
                           jnp.float32)
    q = jax.random.normal(jax.random.fold_in(key, 2), (slots, K, G, H), jnp.float32)
    mask_BS = jnp.broadcast_to(jnp.arange(cache_len) <= end, (slots, cache_len))
    programs = _programs(L, end)
    state, outs, first_s = {}, {}, {}
    for name in VARIANTS:
        k, v = (tuple(k0.copy()), tuple(v0.copy())) if name == "per_layer" else (
            k0.copy(), v0.copy())
        t = time.perf_counter()
        k, v, out = programs[name](k, v, q, mask_BS)
        jax.block_until_ready(out)
        first_s[name] = time.perf_counter() - t
        state[name], outs[name] = (k, v), out
    times = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name in VARIANTS:
            k, v = state[name]
            t = time.perf_counter()
            k, v, out = programs[name](k, v, q, mask_BS)
            jax.block_until_ready(out)
            times[name].append(time.perf_counter() - t)
            state[name] = (k, v)
    cache_bytes = 2 * k0.size * k0.dtype.itemsize
    rows = {}
    for name in VARIANTS:
        diff = float(jnp.max(jnp.abs(outs[name] - outs["stacked"])))
        rows[name] = {"best_s": round(min(times[name]), 5),
                      "median_s": round(statistics.median(times[name]), 5),
                      "first_call_s": round(first_s[name], 3),
                      "cache_read_gb_per_s": round(cache_bytes / min(times[name]) / 1e9, 2),
                      "max_abs_diff_vs_stacked": diff}
    from bench_common import jax_decode_matmul_step_s

    return {"slots": slots, "cache_len": cache_len, "written_slot": end,
            "layers": L, "kv_heads": K, "query_heads_per_kv_head": G, "head_dim": H,
            "cache_bytes": cache_bytes, "rounds": rounds, "variants": rows,
            "matmuls_step_s": round(jax_decode_matmul_step_s(shape, slots), 5)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a 2-layer toy shape (smoke test)")
    ap.add_argument("--slots", type=int, default=64,
                    help="decode rows (bench_generate: 16 prompts x 4 samples)")
    ap.add_argument("--cache-len", type=int, default=192,
                    help="cache slots S (bench_generate's prompts fill a 128 bucket, +64 new)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--tag", default="", help="suffix of this run's key in the JSON")
    ap.add_argument("--out", default="results/bench/decode_attention.json")
    args = ap.parse_args()
    from bench_common import cpu_model, git_commit, load_average
    from bench_compile import SHAPES

    name = "tiny" if args.tiny else "smollm2-135m"
    load_start = load_average()
    result = measure(SHAPES[name], args.slots, args.cache_len, args.rounds)
    record = {"command": "python scripts/bench_decode_attention.py " + " ".join(sys.argv[1:]),
              "git_commit": git_commit(),
              "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
              "load_avg_at_start": load_start, "load_avg_at_end": load_average(),
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "jax": jax.__version__, **result}
    print(f"{name}: {args.slots} slots x {args.cache_len} cache slots, {result['layers']} "
          f"layers, K+V {result['cache_bytes'] / 1e6:.1f} MB")
    print(f"{'variant':<11}{'best s':>10}{'median s':>10}{'GB/s':>8}{'max |diff|':>12}")
    for v, r in result["variants"].items():
        print(f"{v:<11}{r['best_s']:>10.4f}{r['median_s']:>10.4f}"
              f"{r['cache_read_gb_per_s']:>8.1f}{r['max_abs_diff_vs_stacked']:>12.2e}")
    print(f"the decode ceiling's program (the step's matmuls): {result['matmuls_step_s']:.4f} s")
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.is_file() else {}
    key = f"{name}/{jax.default_backend()}" + (f"/{args.tag}" if args.tag else "")
    doc.setdefault("runs", {})[key] = record
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out} ({key})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
