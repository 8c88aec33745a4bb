"""Benchmark: our jit-compiled n-sample generator vs HF transformers generate, same checkpoint.

Prints one table and writes results/bench/generate.json. Three parts:

1. Throughput (CPU, default): 16 chat-rendered prompts x 4 samples x 64 new tokens,
   temperature 1.0, on a random 4-layer, 256-wide Llama written as a real HF checkpoint
   (our tiny-checkpoint builder, vocab 384). Ours: ``generate(num_samples=4)`` (one
   compiled program, per-token log-probs and entropy included). HF:
   ``generate(do_sample=True, num_return_sequences=4, output_scores=True)`` plus
   ``compute_transition_scores`` for its per-token log-probs. Both stop rows at EOS;
   tokens/s counts generated tokens (up to and including EOS) over wall time, median
   of ``--repeats`` runs, runs of the two engines interleaved so shared-machine load
   hits both alike. Our first (compiling) call is reported separately. Ours runs once
   per KV-cache key layout of ``--key-layouts`` (``SampleConfig.key_layout``; the first
   is the headline ``ours``), each layout's runs interleaved with the others'. A layout
   written ``HS+bfloat16`` also multiplies in bf16 with float32 sums
   (``base.matmul_dtype``), ``HS+bfloat16+bfloat16`` over weights stored in bf16 too
   (``base.dtype``); HF then runs once more with the model in torch bf16. A variant
   ending in ``/unrolled`` (``HS/unrolled``) decodes with ``SampleConfig.unroll_layers``.
   Beside them, a ceiling for float32 decoding of the shape here: one step's projection
   and LM-head matmuls alone, at the batch's 64 slots, each framework in its own layout
   of the weights (``decode_matmul_ceiling``), against the goal of 3x HF's tokens/s.
2. Compilations: one pass of ``generate`` over ``--many`` prompts of 5 to ~1,000 tokens
   (batch 32, 4 new tokens): the number of decode programs traced (target <= 13: lengths
   1.5x apart).
3. ``--accelerator-8b``: an 8B-shaped random Llama (bf16, vocab 128,256) decoding on
   the default JAX device, tokens/s vs the HBM-bandwidth bound (every decode step must
   read all weights once). Not run on CPU.

Usage:
    python scripts/bench_generate.py                 # parts 1 and 2, writes the JSON
    python scripts/bench_generate.py --accelerator-8b --hbm-gbps 3350   # on an H100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from semievol_jax.generate import SampleConfig, generate, render_prompt
from semievol_jax.generate import decode as decode_lib
from semievol_jax.generate.generator import bucket_length
from semievol_jax.model import load_hf, load_tokenizer, make_tiny_checkpoint

BENCH_MODEL = dict(hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=8,
                   num_kv_heads=4, head_dim=32, max_position_embeddings=2048)
# SmolLM2-135M-Instruct's shape: its real weights when fetched, else random ones.
SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
               num_heads=9, num_kv_heads=3, head_dim=64, tie_word_embeddings=True,
               rope_theta=100000.0, max_position_embeddings=8192)
GOAL_SPEEDUP = 3.0  # the sampling goal: 3x HF generate's float32 tokens/s
WORDS = ("the model answers a question about the cat and the dog in the park while rain "
         "falls on the sea and numbers like 42 and 2024 appear").split()


def make_prompts(tokenizer, n: int, lo: int, hi: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [render_prompt(tokenizer, " ".join(rng.choice(WORDS, int(rng.integers(lo, hi)))))
            for _ in range(n)]


def run_ours(model, tokenizer, prompts, cfg, num_samples, seed):
    t = time.perf_counter()
    out = generate(model, tokenizer, prompts, cfg, key=jax.random.key(seed),
                   num_samples=num_samples, progress=False)
    dt = time.perf_counter() - t
    return sum(len(s.token_ids) for x in out for s in x), dt


def run_hf(hf, tokenizer, prompts, cfg, num_samples, eos, seed):
    import torch

    torch.manual_seed(seed)
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left",
                      add_special_tokens=False)
    t = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(**batch, do_sample=True, temperature=cfg.temperature, top_k=0,
                          top_p=1.0, num_return_sequences=num_samples,
                          max_new_tokens=cfg.max_new_tokens, output_scores=True,
                          return_dict_in_generate=True, eos_token_id=eos,
                          pad_token_id=tokenizer.pad_token_id)
        logprobs = hf.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    dt = time.perf_counter() - t
    new = out.sequences[:, batch["input_ids"].shape[1]:].numpy()
    n_tokens = 0
    for row in new:  # tokens up to and including the first EOS
        hit = np.flatnonzero(np.isin(row, eos))
        n_tokens += int(hit[0]) + 1 if len(hit) else len(row)
    assert logprobs.shape == new.shape
    return n_tokens, dt


def hf_runs(args, ckpt: Path) -> dict:
    """HF warm-up + timed runs; called in a subprocess of its own (--hf-only) so JAX's
    threads and memory in this process do not slow torch down."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = load_tokenizer(ckpt)
    eos = json.loads((ckpt / "config.json").read_text())["eos_token_id"]
    eos = [eos] if isinstance(eos, int) else list(eos)
    prompts = make_prompts(tokenizer, args.prompts, 8, 60, seed=0)
    cfg = _throughput_cfg(args, "SH")
    out = {"torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    for dtype in ("float32", *args.hf_dtypes.split(",")[1:]):
        hf = LlamaForCausalLM.from_pretrained(ckpt, dtype=getattr(torch, dtype)).eval()
        run_hf(hf, tokenizer, prompts, cfg, args.samples, eos, seed=100)  # warm-up
        out["runs" if dtype == "float32" else f"runs_{dtype}"] = [
            run_hf(hf, tokenizer, prompts, cfg, args.samples, eos, seed=r)
            for r in range(args.repeats)]
    return out


def smollm2_checkpoint(out: Path) -> tuple[Path, str]:
    """SmolLM2 as an HF directory both engines load: the fetched GGUF converted, or random
    weights of its shape (with the tiny tokenizer) when it is not fetched."""
    from semievol_jax.model import registry, save_hf
    from semievol_jax.model.tiny import config_for_tokenizer, random_llama, train_tokenizer

    name = "smollm2-135m-instruct"
    if registry.is_fetched(name):
        model, _ = load_hf(name)
        save_hf(model, out, tokenizer=load_tokenizer(name))
        return out, "real (fetched GGUF, dequantized)"
    tokenizer = train_tokenizer(WORDS, 384)
    cfg = config_for_tokenizer(tokenizer, **SMOLLM2)
    save_hf(random_llama(cfg, seed=0), out, tokenizer=tokenizer)
    return out, "random (SmolLM2 not fetched)"


def throughput(args, ckpt: Path) -> dict:
    import jax.numpy as jnp
    import transformers

    from semievol_jax.model import set_matmul_dtype

    layouts = args.key_layouts.split(",")
    # LAYOUT[+MATMUL[+STORED]][/unrolled]: the matmuls' operand dtype and the weights'
    # (float32); "/unrolled" decodes with SampleConfig.unroll_layers.
    for k in layouts:
        if "/" in k and not k.endswith("/unrolled"):
            raise SystemExit(f"--key-layouts: {k!r} ends in neither nothing nor /unrolled")
    parts = {k: (k.partition("/")[0].split("+") + [None, None])[1:3] for k in layouts}
    matmuls = {k: mm for k, (mm, _) in parts.items()}
    models = {}
    for mm, stored in dict.fromkeys(tuple(p) for p in parts.values()):
        models[mm, stored], mcfg = load_hf(ckpt, param_dtype=jnp.dtype(stored or "float32"))
        set_matmul_dtype(models[mm, stored], mm)
    model = next(iter(models.values()))
    tokenizer = load_tokenizer(ckpt)
    prompts = make_prompts(tokenizer, args.prompts, 8, 60, seed=0)
    cfgs = {k: _throughput_cfg(args, k.partition("+")[0].partition("/")[0],
                               k.endswith("/unrolled")) for k in layouts}
    first_call_s = {}
    for k, cfg in cfgs.items():
        t = time.perf_counter()
        run_ours(models[tuple(parts[k])], tokenizer, prompts, cfg, args.samples, seed=100)
        first_call_s[k] = time.perf_counter() - t
    runs: dict[str, list] = {k: [] for k in layouts}
    hf_dtypes = ["float32", *sorted({mm for mm in matmuls.values() if mm})]

    def ours_round():
        for r in range(args.repeats):
            for k, cfg in cfgs.items():
                runs[k].append(run_ours(models[tuple(parts[k])], tokenizer, prompts, cfg,
                                        args.samples, seed=r))

    # Ours before and after HF, so a change in the shared machine's load over the
    # run shows up on both sides.
    ours_round()
    proc = subprocess.run([sys.executable, __file__, "--hf-only", str(ckpt),
                           "--prompts", str(args.prompts), "--samples", str(args.samples),
                           "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats),
                           "--hf-dtypes", ",".join(hf_dtypes)],
                          capture_output=True, text=True, check=True)
    hf = json.loads(proc.stdout.strip().splitlines()[-1])
    ours_round()
    tps = {k: statistics.median(n / dt for n, dt in runs[k]) for k in layouts}
    ours_tps = tps[layouts[0]]
    hf_tps = statistics.median(n / dt for n, dt in hf["runs"])
    hf_by_dtype = {d: statistics.median(n / dt for n, dt in hf[f"runs_{d}"])
                   for d in hf_dtypes[1:]}

    def peer_tps(k):  # HF with the variant's matmul dtype
        return hf_by_dtype[matmuls[k]] if matmuls[k] else hf_tps

    def ours_entry(k):
        return {"key_layout": k, "tokens_per_s_median": round(tps[k], 1),
                "runs": [{"tokens": n, "seconds": round(dt, 4)} for n, dt in runs[k]],
                "first_call_incl_compile_s": round(first_call_s[k], 2)}

    shape = {k: getattr(mcfg, k) for k in ("vocab_size", "hidden_size", "intermediate_size",
                                            "num_layers", "num_heads", "num_kv_heads")}
    return {
        "model": {**shape, "dtype": "float32"},
        "prompts": args.prompts, "samples_per_prompt": args.samples,
        "max_new_tokens": args.new_tokens, "temperature": 1.0, "repeats": args.repeats,
        "prompt_tokens": [len(x) for x in tokenizer(prompts, add_special_tokens=False)
                          ["input_ids"]],
        "ours": ours_entry(layouts[0]),
        "ours_by_key_layout": {k: ours_entry(k) for k in layouts},
        "speedup_by_key_layout": {k: round(tps[k] / peer_tps(k), 2) for k in layouts},
        "hf": {"tokens_per_s_median": round(hf_tps, 1),
               **{f"tokens_per_s_median_{d}": round(v, 1) for d, v in hf_by_dtype.items()},
               **{f"runs_{d}": [{"tokens": n, "seconds": round(dt, 4)} for n, dt in
                                hf[f"runs_{d}"]] for d in hf_dtypes[1:]},
               "runs": [{"tokens": n, "seconds": round(dt, 4)} for n, dt in hf["runs"]],
               "torch_threads": hf["torch_threads"], "torch": hf["torch"],
               "transformers": transformers.__version__,
               "call": "generate(do_sample=True, num_return_sequences=M, output_scores=True, "
                       "return_dict_in_generate=True) + compute_transition_scores"},
        "speedup": round(ours_tps / hf_tps, 2),
        "goal_speedup": GOAL_SPEEDUP,
        **_fraction_of_peak(model, ours_tps, hf_tps),
        **_matmul_ceiling(shape, mcfg.head_dim, args.prompts * args.samples, hf_tps),
    }


def _fraction_of_peak(model, ours_tps: float, hf_tps: float) -> dict:
    """Decode FLOPs (2 per weight per token, attention left out) against this CPU's
    float32 peak: a small-batch decode reads every weight per step, so it is memory
    bound and sits far below the matmul peak."""
    from bench_common import cpu_peak_flops
    from flax import nnx

    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    peak = cpu_peak_flops()
    return {"decode_flops_per_token": 2 * n, "cpu_peak": peak,
            "fraction_of_measured_matmul_peak": {
                "ours": round(ours_tps * 2 * n / peak["measured_matmul_flops"], 4),
                "hf": round(hf_tps * 2 * n / peak["measured_matmul_flops"], 4)}}


def _matmul_ceiling(shape: dict, head_dim: int, rows: int, hf_tps: float) -> dict:
    """The tokens/s that the float32 decode step's matmuls alone allow at `rows` slots
    (every slot live, every step), per framework, and the goal's tokens/s against it: a
    decode that runs these matmuls in this layout cannot pass the ceiling."""
    from bench_common import decode_matmul_ceiling

    ceiling = decode_matmul_ceiling({**shape, "head_dim": head_dim}, rows)
    goal = GOAL_SPEEDUP * hf_tps
    return {"decode_matmul_ceiling": ceiling, "goal_tokens_per_s": round(goal, 1),
            "goal_over_matmul_ceiling": {
                fw: round(goal / ceiling[fw]["tokens_per_s"], 2)
                for fw in ("jax", "torch") if fw in ceiling}}


def _throughput_cfg(args, key_layout: str, unroll_layers: bool = False) -> SampleConfig:
    return SampleConfig(temperature=1.0, max_new_tokens=args.new_tokens, stop=(),
                        batch_size=args.prompts, key_layout=key_layout,
                        unroll_layers=unroll_layers)


def compilations(args, ckpt: Path) -> dict:
    model, _ = load_hf(ckpt)
    tokenizer = load_tokenizer(ckpt)
    prompts = make_prompts(tokenizer, args.many, 1, 450, seed=1)
    lengths = [len(x) for x in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    cfg = SampleConfig(temperature=1.0, max_new_tokens=4, stop=(), batch_size=32)
    before = sum(decode_lib.TRACES.values())
    t = time.perf_counter()
    out = generate(model, tokenizer, prompts, cfg, key=jax.random.key(0), progress=False)
    dt = time.perf_counter() - t
    assert len(out) == len(prompts)
    return {"model": "STYLE tiny (D 64, L 2, vocab 384)", "prompts": len(prompts),
            "prompt_tokens_min": min(lengths),
            "prompt_tokens_max": max(lengths), "batch_size": 32, "max_new_tokens": 4,
            "length_buckets": sorted({bucket_length(n) for n in lengths}),
            "programs_compiled": sum(decode_lib.TRACES.values()) - before,
            "target_max_programs": 13, "wall_s_incl_compiles": round(dt, 1)}


def accelerator_8b(args) -> dict:
    import jax.numpy as jnp
    from flax import nnx

    from semievol_jax.generate import stopping
    from semievol_jax.model import Llama, LlamaConfig

    if args.smoke:  # the same program at a toy shape: checks the script, measures nothing
        cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                          num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=1024)
    else:
        cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                          num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
                          rope_theta=500000.0, max_position_embeddings=8192)
    model = nnx.eval_shape(lambda: Llama(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
                                         rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    key = jax.random.key(0)
    state = jax.tree.map(lambda x: (0.02 * jax.random.normal(key, x.shape, jnp.float32)
                                    ).astype(x.dtype), state)
    model = nnx.merge(graphdef, state)
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    B, T, M, N = (2, 16, 1, 8) if args.smoke else (args.batch_8b, 512, 1, 256)
    tokens = jax.random.randint(key, (B, T), 0, cfg.vocab_size)
    valid = jnp.ones((B, T), bool)
    keys = decode_lib.sample_keys(key, jnp.arange(B), M)
    none = jnp.zeros((cfg.vocab_size,), bool)
    tables = stopping.StopTables(none, none, jnp.zeros((8, cfg.vocab_size), bool),
                                 jnp.zeros((8, cfg.vocab_size), bool))
    g, s = decode_lib.split_model(model)
    sc = SampleConfig(temperature=1.0, max_new_tokens=N)
    jax.block_until_ready(decode_lib.decode(g, s, tokens, valid, keys, tables, sc))
    t = time.perf_counter()
    jax.block_until_ready(decode_lib.decode(g, s, tokens, valid, keys, tables, sc))
    dt = time.perf_counter() - t
    bound_steps = args.hbm_gbps * 1e9 / weight_bytes
    return {"device": str(jax.devices()[0]), "batch": B, "prompt_tokens": T,
            "new_tokens": N, "seconds_incl_prefill": round(dt, 3),
            "tokens_per_s": round(B * M * N / dt, 1),
            "weight_gb": round(weight_bytes / 1e9, 2), "hbm_gbps": args.hbm_gbps,
            "bound_tokens_per_s": round(bound_steps * B * M, 1),
            "fraction_of_bound": round((B * M * N / dt) / (bound_steps * B * M), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--many", type=int, default=1000)
    ap.add_argument("--key-layouts", default="SH,HS",
                    help="KV-cache key layouts to time ours with (the first is the headline)")
    ap.add_argument("--preset", choices=["bench", "smollm2-135m"], default="bench",
                    help="bench: a random 4-layer model; smollm2-135m: SmolLM2's shape")
    ap.add_argument("--accelerator-8b", action="store_true")
    ap.add_argument("--batch-8b", type=int, default=16)
    ap.add_argument("--hbm-gbps", type=float, default=3350.0,
                    help="HBM bandwidth for the bound: H100 SXM 3350, H200 4800")
    ap.add_argument("--smoke", action="store_true",
                    help="--accelerator-8b at a toy shape (a test of the script on CPU)")
    ap.add_argument("--tag", default="", help="suffix of this run's key in the JSON (e.g. "
                    "another CPU's runs beside the headline ones)")
    ap.add_argument("--out", default="results/bench/generate.json")
    ap.add_argument("--no-json", action="store_true")
    ap.add_argument("--hf-only", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--hf-dtypes", default="float32", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hf_only:
        print(json.dumps(hf_runs(args, args.hf_only)))
        return 0

    from bench_common import git_commit

    result: dict = {
        "command": "python " + " ".join(sys.argv),
        "git_commit": git_commit(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": {"jax_devices": [str(d) for d in jax.devices()],
                   "platform": platform.platform(), "processor": platform.processor(),
                   "cpu_count": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        # No CPU-mode flags are set here: XLA's own CPU defaults (the "native" mode), as
        # torch runs with its own; the pipeline's reproducible mode caps the ISA.
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    if args.accelerator_8b:
        result["accelerator_8b"] = accelerator_8b(args)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            if args.preset == "smollm2-135m":
                ckpt, weights = smollm2_checkpoint(Path(tmp) / "smollm2")
            else:
                ckpt, weights = make_tiny_checkpoint(Path(tmp) / "bench", seed=0,
                                                     **BENCH_MODEL), "random"
            result["throughput"] = {**throughput(args, ckpt), "weights": weights,
                                    "preset": args.preset}
            # Program count does not depend on model size: the STYLE tiny model keeps
            # the 1,000-prompt pass (up to ~1,000-token prompts) short.
            small = make_tiny_checkpoint(Path(tmp) / "small", seed=0,
                                         max_position_embeddings=2048)
            result["compilations"] = compilations(args, small)
        result["accelerator_8b"] = "not run: no accelerator on the machine that wrote this file"
        result["device"]["load_avg_at_end"] = os.getloadavg()
    _print_table(result)
    if not args.no_json:
        # One entry per preset and platform, so the real shape and the small benchmark
        # model's figures live side by side.
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = json.loads(out.read_text()) if out.is_file() else {}
        if "runs" not in doc:
            doc = {"runs": {}}
        key = "accelerator-8b" if args.accelerator_8b else f"{args.preset}/{jax.default_backend()}"
        key += f"/{args.tag}" if args.tag else ""
        doc["runs"][key] = result
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {out} ({key})")
    return 0


def _print_table(r: dict) -> None:
    if "throughput" in r:
        t = r["throughput"]
        print(f"{'engine':<28}{'tokens/s (median)':>20}")
        for k, o in t.get("ours_by_key_layout", {"": t["ours"]}).items():
            name = f"ours (jit, vmap M){', keys ' + k if k else ''}"
            print(f"{name:<28}{o['tokens_per_s_median']:>20.1f}")
        print(f"{'HF generate (torch CPU)':<28}{t['hf']['tokens_per_s_median']:>20.1f}")
        for k, v in t["hf"].items():
            if k.startswith("tokens_per_s_median_"):
                name = f"HF generate, {k.removeprefix('tokens_per_s_median_')}"
                print(f"{name:<28}{v:>20.1f}")
        print(f"speedup {t['speedup']}x (goal >= {t['goal_speedup']}x); our first call "
              f"incl. compile {t['ours']['first_call_incl_compile_s']} s")
        c = t["decode_matmul_ceiling"]
        for fw in ("jax", "torch"):
            if fw in c:
                print(f"{fw} float32 matmuls alone at {c['rows']} slots: "
                      f"{c[fw]['tokens_per_s']} tokens/s at most (goal "
                      f"{t['goal_tokens_per_s']}: {t['goal_over_matmul_ceiling'][fw]}x that)")
        c = r["compilations"]
        print(f"compilations over {c['prompts']} prompts of {c['prompt_tokens_min']}-"
              f"{c['prompt_tokens_max']} tokens: {c['programs_compiled']} (target <= 13)")
    if isinstance(r.get("accelerator_8b"), dict):
        a = r["accelerator_8b"]
        print(f"8B on {a['device']}: {a['tokens_per_s']} tokens/s, bound "
              f"{a['bound_tokens_per_s']} ({a['fraction_of_bound']:.0%})")


if __name__ == "__main__":
    raise SystemExit(main())
