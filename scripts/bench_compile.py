"""Compile time of the programs a run builds, at real shapes, without allocating weights.

Each program is lowered from abstract inputs (shapes and dtypes only) and compiled by
XLA for this machine's backend; the seconds of `lower` (tracing to StableHLO) and of
`compile` are timed separately, with the size of the optimized HLO. Programs:
  train    the LoRA train step (rank 16, every projection), batch 8 x 128 tokens
  decode   prefill 16 prompts of 64 tokens, then the first loop over their 4 x 16 slots
           (up to 64 new tokens; it exits at 16 live slots), as decode.decode builds
           them (``--unroll-layers``: with sample.unroll_layers); the two programs'
           seconds are summed, and kept apart under "prefill" and "loop"
  embed    final-norm hidden states, mean-pooled, 32 texts x 128 tokens
Shapes: smollm2-135m (30 layers) and llama8b (32 layers; abstract, so no 16 GB needed).

Usage:
  python scripts/bench_compile.py [--shapes smollm2-135m llama8b] [--out results/bench/compile.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                 num_heads=4, num_kv_heads=2, head_dim=16),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
                         tie_word_embeddings=True, rope_theta=100000.0),
    "llama8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                    num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
                    rope_theta=500000.0),
}


def _abstract(tree):
    import jax

    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
                        if hasattr(x, "shape") else x, tree)


def _timed(jitted, *args, **kw) -> dict:
    t0 = time.perf_counter()
    lowered = jitted.lower(*args, **kw)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    hlo = compiled.as_text() or ""
    return {"lower_s": round(t1 - t0, 3), "compile_s": round(t2 - t1, 3),
            "total_s": round(t2 - t0, 3), "hlo_lines": hlo.count("\n")}


def program_train(cfg, dtype):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from semievol_jax import rng, sharding
    from semievol_jax.model.llama import Llama
    from semievol_jax.model.lora import LoraConfig
    from semievol_jax.train import step as step_lib
    from semievol_jax.train.config import TrainConfig
    from semievol_jax.train.data import Batch
    from semievol_jax.train.optim import make_optimizer

    b, t, r = 8, 128, 32
    lora = LoraConfig(rank=16, alpha=32.0, dropout=0.0)
    model = nnx.eval_shape(lambda: Llama(cfg, lora=lora, dtype=dtype, param_dtype=dtype,
                                         rngs=nnx.Rngs(0)))
    mesh = sharding.make_mesh(sharding.MeshConfig())
    tc = TrainConfig(mode="lora", batch_size=b, learning_rate=1e-4)
    split = step_lib.split_model(model, "lora")
    tx = make_optimizer(tc, 1000)
    state_sh = step_lib.state_shardings(split, tx, mesh)
    rest_sh = sharding.state_shardings(split.rest, mesh)
    fn = step_lib.make_train_step(split, tx, tc, mesh, state_sh, rest_sh)
    params = _abstract(split.params)
    state = {"params": params, "opt_state": jax.eval_shape(tx.init, params),
             "step": jax.ShapeDtypeStruct((), jnp.int32)}
    i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)  # noqa: E731
    bl = lambda *s: jax.ShapeDtypeStruct(s, jnp.bool_)  # noqa: E731
    batch = Batch(i32(1, b, t), i32(1, b, t), bl(1, b, t), bl(1, b, t), i32(1, b, t),
                  i32(1, b, r), bl(1, b, r), i32(1, b, t))
    key = rng.key_for(0, "train")
    return _timed(fn, state, _abstract(split.rest), batch, key)


def program_decode(cfg, dtype, unroll_layers=False):
    import dataclasses

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from semievol_jax.generate import decode as decode_lib
    from semievol_jax.generate.sampling import SampleConfig
    from semievol_jax.generate.stopping import StopTables
    from semievol_jax.model.llama import Llama

    b, t, m, n = 16, 64, 4, 64
    model = nnx.eval_shape(lambda: Llama(cfg, dtype=dtype, param_dtype=dtype,
                                         rngs=nnx.Rngs(0)))
    graphdef, state = decode_lib.split_model(model)
    state = _abstract(state)
    V = cfg.vocab_size
    tables = StopTables(jax.ShapeDtypeStruct((V,), jnp.bool_),
                        jax.ShapeDtypeStruct((V,), jnp.bool_),
                        jax.ShapeDtypeStruct((1, V), jnp.bool_),
                        jax.ShapeDtypeStruct((1, V), jnp.bool_))
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), (b, m)))
    rule = SampleConfig(temperature=1.0, max_new_tokens=n, stop=(), unroll_layers=unroll_layers)
    # As decode.decode builds them: the prefill (never unrolled), then the first loop,
    # which exits to compact the slots when a quarter are live.
    prompt = (jax.ShapeDtypeStruct((b, t), jnp.int32), jax.ShapeDtypeStruct((b, t), jnp.bool_),
              keys)
    prefill_rule = dataclasses.replace(rule, unroll_layers=False)
    prefill = _timed(decode_lib._prefill_jit, graphdef, state, *prompt, rule=prefill_rule,
                     mesh=None)
    s = jax.eval_shape(lambda st, *a: decode_lib._prefill_jit(graphdef, st, *a,
                                                              rule=prefill_rule, mesh=None),
                       state, *prompt)
    loop = _timed(decode_lib._loop_jit, graphdef, state, s, tables, rule=rule, mesh=None,
                  exit_at=b * m // decode_lib.SHRINK)
    return {**{k: round(prefill[k] + loop[k], 3) for k in prefill},
            "unroll_layers": rule.unroll_layers, "prefill": prefill, "loop": loop}


def program_embed(cfg, dtype):
    import importlib

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from semievol_jax.model.llama import Llama

    # the module, not the function of the same name that the package re-exports
    embed_lib = importlib.import_module("semievol_jax.generate.embed")
    b, t = 32, 128
    model = nnx.eval_shape(lambda: Llama(cfg, dtype=dtype, param_dtype=dtype,
                                         rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    i32, bl = (jax.ShapeDtypeStruct((b, t), d) for d in (jnp.int32, jnp.bool_))
    return _timed(embed_lib._embed_jit, graphdef, _abstract(state), i32, bl, bl,
                  layer=-1, pooling="mean")


PROGRAMS = {"train": program_train, "decode": program_decode, "embed": program_embed}


def _one(shape: str, program: str, dtype: str, unroll_layers: bool) -> dict:
    """Runs in a fresh process: no compilation cache, no program shared with another row."""
    import jax
    import jax.numpy as jnp

    # A persistent cache hit would time a load, not a compile ($SEMIEVOL_XLA_CACHE is
    # "off" in this process; JAX's own cache may be on by $JAX_COMPILATION_CACHE_DIR).
    jax.config.update("jax_enable_compilation_cache", False)

    from semievol_jax.model.config import LlamaConfig

    cfg = LlamaConfig(**SHAPES[shape])
    if program == "decode":
        return program_decode(cfg, jnp.dtype(dtype), unroll_layers)
    return PROGRAMS[program](cfg, jnp.dtype(dtype))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["smollm2-135m", "llama8b"],
                   choices=list(SHAPES))
    p.add_argument("--programs", nargs="+", default=list(PROGRAMS), choices=list(PROGRAMS))
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--unroll-layers", action="store_true",
                   help="the decode loop with sample.unroll_layers")
    p.add_argument("--label", default="", help="a name for this build (e.g. scan, unrolled)")
    p.add_argument("--out", default="results/bench/compile.json")
    p.add_argument("--one", nargs=2, metavar=("SHAPE", "PROGRAM"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(_one(*args.one, args.dtype, args.unroll_layers)))
        return
    import jax
    from bench_common import cpu_model

    rows = []
    for shape in args.shapes:
        for program in args.programs:
            env = dict(os.environ, SEMIEVOL_XLA_CACHE="off")
            flags = ["--unroll-layers"] if args.unroll_layers else []
            out = subprocess.run([sys.executable, __file__, "--one", shape, program,
                                  "--dtype", args.dtype, *flags], capture_output=True,
                                 text=True, env=env, check=True).stdout.strip().splitlines()[-1]
            row = {"shape": shape, "program": program, "dtype": args.dtype,
                   **json.loads(out)}
            rows.append(row)
            print(f"{shape:<14} {program:<7} lower {row['lower_s']:7.2f} s  compile "
                  f"{row['compile_s']:7.2f} s  HLO {row['hlo_lines']:>7} lines", flush=True)
    path = Path(args.out)
    doc = json.loads(path.read_text()) if path.is_file() else {}
    doc[args.label or "current"] = {
        "rows": rows,
        "device": f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}",
        "host": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "command": "python scripts/bench_compile.py " + " ".join(sys.argv[1:]),
        "load_average_1m": os.getloadavg()[0],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
