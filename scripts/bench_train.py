"""Train-step throughput: our jit'd sharded step vs Hugging Face transformers on torch.

Same Llama shape, batch, sequence length, AdamW, loss over every token; LoRA (rank 16 on
all seven projections, PEFT on the torch side) and full fine-tuning. Prints a table
and writes results/bench/train.json with the device and the command.

FLOPs per trained token (N = base params, N_lora = adapter params, L/T/D as usual;
attention scores+values add 2*2*L*T*D forward per token, causal mask not discounted):
  full FT: 6*N + 12*L*T*D      (forward 2N, backward 4N: activation and weight grads)
  LoRA:    4*N + 6*N_lora + 12*L*T*D   (the frozen base needs activation grads only,
                                        2N, not weight grads; the adapter is fully trained)
MFU = achieved FLOP/s / peak, for devices with a known peak; on a CPU, the fraction of
the measured float32 matmul peak and of the theoretical one (scripts/bench_common.py).

Each framework runs in a process of its own: torch in a child (``--torch-only``), ours
in this process before and after it, so a change in load shows up on both sides
(``--same-process`` interleaves the two step by step in one process instead). Per entry
the JSON also has the process's page faults and kernel seconds per timed step, and each
framework's own matmul peak per dtype (``cpu_peak.by_framework``). docs/results.md reads
the figures.

Usage:
  python scripts/bench_train.py --preset small            # CPU table, JSON
  python scripts/bench_train.py --preset llama8b --mode lora --no-torch   # accelerators
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

PRESETS = {
    # STYLE's tiny test model (dispatch-bound: numbers say little about kernels).
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                 num_heads=4, num_kv_heads=2, head_dim=16, batch=8, seq=128),
    # A small but matmul-bound model for CPU comparisons.
    "small": dict(vocab_size=4096, hidden_size=512, intermediate_size=1408, num_layers=4,
                  num_heads=8, num_kv_heads=4, head_dim=64, batch=8, seq=256),
    # SmolLM2-135M-Instruct's real shape (30 layers, tied embeddings), the pipeline's
    # SFT batch: LoRA on CPU against HF + PEFT on torch.
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
                         tie_word_embeddings=True, rope_theta=100000.0, batch=8, seq=128),
    # Llama-3.1-8B shapes with random weights: for GPUs/TPUs.
    "llama8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                    num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, batch=8,
                    seq=1024),
}

# Dense bf16 peak FLOP/s per device (vendor figures, no sparsity).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v5 lite": 197e12,
              "TPU v4": 275e12, "TPU v5p": 459e12}


def _shape(preset: str, args: argparse.Namespace) -> dict:
    s = dict(PRESETS[preset])
    if args.batch:
        s["batch"] = args.batch
    if args.seq:
        s["seq"] = args.seq
    return s


def flops_per_token(n_base: int, n_lora: int, layers: int, seq: int, width: int,
                    mode: str) -> float:
    attn = 12 * layers * seq * width
    if mode == "full":
        return 6 * n_base + attn
    return 4 * n_base + 6 * n_lora + attn


def build_jax(shape: dict, mode: str, dtype: str, *, donate: bool = True,
              part: str = "step", mesh_cfg: tuple[int, int, int] = (-1, 1, 1),
              remat: str = "none", lora_grad: str = "autodiff",
              matmul_dtype: str | None = None, causal_block: int = 0) -> dict:
    """Our train step on random weights; ``part`` = step | fwd_bwd | fwd (profiling);
    ``remat``: what each layer keeps for the backward pass (train.remat); ``lora_grad``:
    how the backward pass forms the LoRA B gradients (train.lora_grad); ``matmul_dtype``:
    the matmuls' operand dtype (base.matmul_dtype); ``causal_block``: queries attended
    at a time over the keys up to their block (base.causal_block; 0: dense)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from semievol_jax import rng, sharding
    from semievol_jax.model import matmul, set_causal_block
    from semievol_jax.model.config import LlamaConfig
    from semievol_jax.model.llama import Llama
    from semievol_jax.model.lora import LoraConfig
    from semievol_jax.train import step as step_lib
    from semievol_jax.train.config import TrainConfig
    from semievol_jax.train.data import Batch
    from semievol_jax.train.optim import make_optimizer

    b, t = shape["batch"], shape["seq"]
    cfg = LlamaConfig(**{k: v for k, v in shape.items() if k not in ("batch", "seq")})
    lora = LoraConfig(rank=16, alpha=32.0, dropout=0.0) if mode == "lora" else None
    mesh = sharding.make_mesh(sharding.MeshConfig(*mesh_cfg))
    # Abstract init + placement by logical names: an 8B model never sits on one device.
    model = nnx.eval_shape(lambda: Llama(cfg, lora=lora, rngs=nnx.Rngs(0)))
    state = nnx.state(model)
    shardings = sharding.state_shardings(state, mesh)
    keys = iter(jax.random.split(jax.random.key(0), 10_000))

    def init(x, s):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):  # RNG streams (LoRA dropout)
            return jax.device_put(jax.random.split(next(keys), x.shape), s) if x.shape \
                else jax.device_put(next(keys), s)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return jax.device_put(jnp.zeros(x.shape, x.dtype), s)
        return jax.jit(lambda k: 0.02 * jax.random.normal(k, x.shape, x.dtype),
                       out_shardings=s)(next(keys))

    nnx.update(model, jax.tree.map(init, state, shardings))
    matmul.set_matmul_dtype(model, matmul_dtype)
    set_causal_block(model, causal_block)
    tc = TrainConfig(mode=mode, compute_dtype=dtype, batch_size=b, learning_rate=1e-4,
                     remat=remat, lora_grad=lora_grad)
    old = step_lib.set_compute_dtype(model, dtype)
    split = step_lib.split_model(model, mode)
    step_lib.restore_compute_dtype(old)
    tx = make_optimizer(tc, 1000)
    state_sh = step_lib.state_shardings(split, tx, mesh)
    rest = step_lib.cast_rest(split.rest, dtype)
    rest = sharding.put(rest, sharding.state_shardings(rest, mesh))
    r = np.random.default_rng(0)
    tok = r.integers(0, cfg.vocab_size, (1, b, t + 1)).astype(np.int32)
    ones = np.ones((1, b, t), bool)
    pos = np.broadcast_to(np.arange(t, dtype=np.int32), (1, b, t)).copy()
    batch = jax.device_put(Batch(tok[..., :-1], tok[..., 1:], ones, ones, pos, pos, ones,
                                 ones.astype(np.int32)),
                           step_lib.batch_shardings(mesh))
    key = rng.key_for(0, "train")
    holder = {"state": step_lib.init_train_state(split, tx, state_sh)}
    if part == "step":
        fn = step_lib.make_train_step(split, tx, tc, mesh, state_sh,
                                      sharding.state_shardings(rest, mesh), donate=donate)

        def run():
            holder["state"], m = fn(holder["state"], rest, batch, key)
            return jax.block_until_ready(m["loss"])
        compiled = fn.lower(holder["state"], rest, batch, key).compile()
        flops = compiled.cost_analysis()
        memory = compiled.memory_analysis()
    else:
        def loss(params):
            mb = jax.tree.map(lambda x: x[0], batch)
            out = split.merge(params, rest)(mb.tokens_ABT, mb.positions_ABT,
                                            valid_BT=mb.valid_ABT)
            ls, n = step_lib.masked_cross_entropy(out.logits_BTV, mb.targets_ABT,
                                                  mb.loss_mask_ABT)
            return ls / n
        fn = jax.jit(jax.value_and_grad(loss) if part == "fwd_bwd" else loss)

        def run():
            return jax.block_until_ready(fn(holder["state"]["params"]))
        compiled = fn.lower(holder["state"]["params"]).compile()
        flops = compiled.cost_analysis()
        memory = compiled.memory_analysis()
    if isinstance(flops, list):
        flops = flops[0]
    n_base = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
                 if not isinstance(v, nnx.LoRAParam))
    n_lora = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(
        nnx.state(model, nnx.LoRAParam)))
    name = (f"jax/{part}/{dtype}" + ("" if donate else "/no_donate")
            + ("" if remat == "none" else f"/remat={remat}")
            + ("" if lora_grad == "autodiff" else f"/lora_grad={lora_grad}")
            + ("" if matmul_dtype is None else f"/matmul={matmul_dtype}")
            + ("" if not causal_block else f"/causal_block={causal_block}"))
    return dict(name=name, run=run, framework="jax", mode=mode, dtype=dtype, part=part,
                donate=donate, remat=remat, lora_grad=lora_grad, matmul_dtype=matmul_dtype,
                causal_block=causal_block,
                n_base=n_base, n_lora=n_lora,
                xla_flops_per_step=float((flops or {}).get("flops", 0.0)),
                # XLA's buffers besides arguments and outputs: the activations kept for
                # the backward pass and the step's scratch (what train.remat changes).
                xla_temp_bytes=getattr(memory, "temp_size_in_bytes", None),
                device=str(jax.devices()[0].device_kind), platform=jax.devices()[0].platform,
                num_devices=len(jax.devices()))


def build_torch(shape: dict, mode: str, dtype: str, part: str = "step",
                autocast: str | None = None) -> dict:
    """HF LlamaForCausalLM (+PEFT LoRA) with torch AdamW, same shapes and loss;
    ``autocast``: run the forward pass under torch.autocast in that dtype (its matmuls
    in it, weights and the rest in ``dtype``)."""
    import contextlib

    import numpy as np
    import torch
    import transformers

    b, t = shape["batch"], shape["seq"]
    hf_cfg = transformers.LlamaConfig(
        vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"], num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"], num_key_value_heads=shape["num_kv_heads"],
        head_dim=shape["head_dim"], tie_word_embeddings=shape.get("tie_word_embeddings", False),
        rope_theta=shape.get("rope_theta", 10000.0))
    torch.manual_seed(0)
    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = transformers.LlamaForCausalLM(hf_cfg).to(tdt)
    if mode == "lora":
        import peft

        pc = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                             "gate_proj", "up_proj", "down_proj"])
        model = peft.get_peft_model(model, pc)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    r = np.random.default_rng(0)
    ids = torch.from_numpy(r.integers(0, shape["vocab_size"], (b, t + 1)).astype(np.int64))
    x, y = ids[:, :-1], ids[:, 1:]

    cast = (torch.autocast("cpu", dtype=getattr(torch, autocast)) if autocast
            else contextlib.nullcontext())

    def run():
        with torch.set_grad_enabled(part != "fwd"), cast:
            logits = model(input_ids=x).logits
            loss = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        if part != "fwd":
            loss.backward()
        if part == "step":
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return dict(name=f"torch/{part}/{dtype}" + (f"/autocast={autocast}" if autocast else ""),
                run=run, framework="torch", mode=mode, dtype=dtype, part=part,
                autocast=autocast, threads=torch.get_num_threads(),
                torch=torch.__version__, transformers=transformers.__version__)


def time_interleaved(entries: list[dict], steps: int, warmup: int, first: bool = True) -> None:
    """Median step time of each entry, timed round-robin so load swings hit all alike;
    ``first=False`` adds ``steps`` more timed rounds to entries already timed."""
    import time as _t

    import numpy as np

    for e in entries if first else ():
        t0 = _t.perf_counter()
        e["run"]()  # compile / first call
        e["first_call_s"] = _t.perf_counter() - t0
        for _ in range(warmup):
            e["run"]()
        e["times"] = []
    for _ in range(steps):
        for e in entries:
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), _t.perf_counter()
            e["run"]()
            e["times"].append(_t.perf_counter() - t0)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            # The process's page faults and kernel time during this entry's timed steps:
            # what the kernel spends mapping in the step's freshly allocated buffers.
            e.setdefault("sys", []).append(r1.ru_stime - r0.ru_stime)
            e.setdefault("minor_faults", []).append(r1.ru_minflt - r0.ru_minflt)
    for e in entries:
        e["step_s"] = float(np.median(e["times"]))
        e["sys_s_per_step"] = float(np.median(e["sys"]))
        e["minor_faults_per_step"] = int(np.median(e["minor_faults"]))


def torch_entries(shape: dict, mode: str, dtype: str, variants: bool,
                  autocasts: tuple = ()) -> list[dict]:
    entries = [build_torch(shape, mode, dtype)]
    entries += [build_torch(shape, mode, dtype, autocast=a) for a in autocasts]
    if variants:
        entries += [build_torch(shape, mode, dtype, part) for part in ("fwd_bwd", "fwd")]
    return entries


def torch_in_child(spec: dict) -> list[dict]:
    """The torch entries timed in a process of their own (``--torch-only``). Once torch
    has run in a process, XLA's step in that process runs slower: the kernel takes longer
    to fault in the step's buffers, which glibc maps afresh at every step (``--same-process``
    keeps both in one process and shows it). The parent times ours before and after."""
    proc = subprocess.run([sys.executable, __file__, "--torch-only", json.dumps(spec)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def goal_2x(row: dict, torch_step: dict, best_matmul_flops: float | None) -> dict:
    """What a step twice as fast as torch's would need: its tokens/s, and that in model
    FLOPs as a fraction of the theoretical peak, of `row`'s own framework-and-dtype
    matmul peak, and of the fastest matmul peak either framework reached here in that
    dtype (`best_matmul_flops`, bench_common.matmul_peaks): above 1 there, the step
    would have to run all its FLOPs faster than either framework's plain matmul."""
    tps = 2 * torch_step["tokens_per_s"]
    out = {"tokens_per_s": tps}
    for key in ("fraction_of_theoretical_peak", "fraction_of_own_matmul_peak"):
        if key in row:
            out[key] = row[key] * tps / row["tokens_per_s"]
    if best_matmul_flops:
        out["fraction_of_best_matmul_peak"] = tps * row["flops_per_token"] / best_matmul_flops
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--mode", default="both", choices=["lora", "full", "both"])
    p.add_argument("--dtype", default=None, help="float32|bfloat16 (default: fp32 on CPU)")
    p.add_argument("--batch", type=int, default=0)
    p.add_argument("--seq", type=int, default=0)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--variants", action="store_true",
                   help="also time bf16 compute and no-donation JAX variants (profiling)")
    p.add_argument("--xla-flags", default="",
                   help="extra XLA_FLAGS for this run, e.g. --xla_cpu_use_onednn=true")
    p.add_argument("--causal-block", default="0",
                   help="comma list of base.causal_block values, one JAX step each "
                        "(0: dense attention)")
    p.add_argument("--remat", default="none",
                   help="comma-separated train.remat policies, one JAX step each "
                        "(e.g. projections,attention)")
    p.add_argument("--lora-grad", default="autodiff",
                   help="comma-separated train.lora_grad values, one LoRA step each per "
                        "remat policy (e.g. autodiff,direct)")
    p.add_argument("--matmul-dtype", default="none",
                   help="comma list of the matmuls' operand dtypes (base.matmul_dtype), e.g. "
                        "none,bfloat16; torch gets a torch.autocast row per dtype")
    p.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor (e.g. 1,-1,1 = FSDP)")
    p.add_argument("--tag", default="", help="suffix of this run's key in the JSON")
    p.add_argument("--same-process", action="store_true",
                   help="time torch in this process, interleaved with ours step by step")
    p.add_argument("--out", default="results/bench/train.json")
    p.add_argument("--torch-only", metavar="SPEC", help=argparse.SUPPRESS)  # the child
    args = p.parse_args(argv)
    if args.torch_only:
        spec = json.loads(args.torch_only)
        entries = torch_entries(spec["shape"], spec["mode"], spec["dtype"], spec["variants"],
                                tuple(spec.get("autocasts", ())))
        time_interleaved(entries, spec["steps"], spec["warmup"])
        for e in entries:
            e.pop("run")
        print(json.dumps(entries))
        return

    from semievol_jax import environment

    if args.xla_flags:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {args.xla_flags}".strip()
    environment.set_determinism_flags()  # before JAX starts a backend
    import jax

    shape = _shape(args.preset, args)
    platform_name = jax.devices()[0].platform
    dtype = args.dtype or ("float32" if platform_name == "cpu" else "bfloat16")
    modes = ["lora", "full"] if args.mode == "both" else [args.mode]
    kind = jax.devices()[0].device_kind
    peak = next((v for k, v in PEAK_FLOPS.items() if k in kind), None)
    cpu_peak = None
    if platform_name == "cpu":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_common import cpu_peak_flops

        cpu_peak = cpu_peak_flops()
    tokens = shape["batch"] * shape["seq"]
    rows = []
    for mode in modes:
        mesh_cfg = tuple(int(x) for x in args.mesh.split(","))
        grads = args.lora_grad.split(",") if mode == "lora" else ["autodiff"]
        matmuls = [None if d == "none" else d for d in args.matmul_dtype.split(",")]
        autocasts = tuple(d for d in matmuls if d is not None)
        entries = [build_jax(shape, mode, dtype, mesh_cfg=mesh_cfg, remat=r, lora_grad=g,
                             matmul_dtype=d, causal_block=int(c))
                   for r in args.remat.split(",") for g in grads for d in matmuls
                   for c in args.causal_block.split(",")]
        if args.variants:
            entries += [build_jax(shape, mode, dtype, part="fwd_bwd"),
                        build_jax(shape, mode, dtype, part="fwd"),
                        build_jax(shape, mode, dtype, donate=False)]
            if platform_name == "cpu" and dtype == "float32":
                entries.append(build_jax(shape, mode, "bfloat16"))
        if args.same_process and not args.no_torch:
            entries += torch_entries(shape, mode, dtype, args.variants, autocasts)
        time_interleaved(entries, args.steps, args.warmup)
        if not args.same_process and not args.no_torch:
            # Ours before and after torch, so a change in load shows up on both sides.
            entries += torch_in_child(dict(shape=shape, mode=mode, dtype=dtype,
                                           variants=args.variants, autocasts=autocasts,
                                           steps=args.steps,
                                           warmup=args.warmup))
            time_interleaved([e for e in entries if "run" in e], args.steps, 0, first=False)
        fpt = flops_per_token(entries[0]["n_base"], entries[0]["n_lora"], shape["num_layers"],
                              shape["seq"], shape["hidden_size"], mode)

        def peer(e: dict, entries: list = entries) -> dict | None:  # same matmul dtype
            cast = e.get("matmul_dtype") if e["framework"] == "jax" else e.get("autocast")
            return next((t for t in entries if t["framework"] == "torch" and t["part"] == "step"
                         and t.get("autocast") == cast), None)

        for e in entries:
            e.pop("run", None)
            e["process"] = "shared" if args.same_process else "own"  # torch and ours
            e["tokens_per_s"] = tokens / e["step_s"]
        for e in entries:
            e["flops_per_token"] = fpt
            best = None  # the fastest matmul either framework ran in e's matmul dtype
            e["mfu"] = (e["tokens_per_s"] * fpt / (peak * e.get("num_devices", 1))) \
                if peak and e["part"] == "step" else None
            if cpu_peak and e["part"] == "step":  # the model FLOPs, not XLA's count
                e["fraction_of_measured_matmul_peak"] = (
                    e["tokens_per_s"] * fpt / cpu_peak["measured_matmul_flops"])
                if cpu_peak["theoretical_flops"]:
                    e["fraction_of_theoretical_peak"] = (
                        e["tokens_per_s"] * fpt / cpu_peak["theoretical_flops"])
                mm = e.get("matmul_dtype") or e.get("autocast") or e["dtype"]
                by_framework = cpu_peak["by_framework"]
                own = by_framework.get(e["framework"], {}).get(mm)
                if own:  # against the matmul peak of the row's own framework and dtype
                    e["fraction_of_own_matmul_peak"] = e["tokens_per_s"] * fpt / own
                best = max((p[mm] for p in by_framework.values()
                            if isinstance(p, dict) and mm in p), default=None)
            if (torch_step := peer(e)) is not None:
                e["vs_torch_step"] = e["tokens_per_s"] / torch_step["tokens_per_s"]
                if e["framework"] == "jax":
                    e["goal_2x_torch"] = goal_2x(e, torch_step, best)
            rows.append(e)

    print(f"{'mode':5} {'name':28} {'step_s':>8} {'sys_s':>6} {'tokens/s':>10} {'vs torch':>8} "
          f"{'MFU':>6} {'own peak':>8}")
    for r in rows:
        mfu = r.get("mfu") or r.get("fraction_of_measured_matmul_peak")
        mfu = f"{mfu:.3f}" if mfu else "-"
        own = r.get("fraction_of_own_matmul_peak")
        own = f"{own:.3f}" if own else "-"
        vs = f"{r['vs_torch_step']:.2f}" if "vs_torch_step" in r else "-"
        print(f"{r['mode']:5} {r['name']:28} {r['step_s']:8.4f} {r['sys_s_per_step']:6.2f} "
              f"{r['tokens_per_s']:10.0f} {vs:>8} {mfu:>6} {own:>8}")
    for r in rows:
        if "goal_2x_torch" in r:
            g = r["goal_2x_torch"]
            need = ", ".join(f"{g[k]:.2f} of the {k.removeprefix('fraction_of_').replace('_', ' ')}"
                             for k in ("fraction_of_theoretical_peak",
                                       "fraction_of_own_matmul_peak",
                                       "fraction_of_best_matmul_peak") if k in g)
            print(f"2x torch for {r['name']}: {g['tokens_per_s']:.0f} tokens/s, {need}")

    record = {
        "command": " ".join(["python", "scripts/bench_train.py", *(argv or sys.argv[1:])]),
        "preset": args.preset, "shape": shape, "device": kind, "platform": platform_name,
        "host": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""), "rows": rows,
        "cpu_peak": cpu_peak,
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],  # other jobs skew torch most
        "flops_note": "full: 6N + 12*L*T*D per token; LoRA: 4N (frozen base: forward + "
                      "activation grads only) + 6*N_lora + 12*L*T*D",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = json.loads(out.read_text()) if out.exists() else {}
    if not any(k.startswith("llama8b/") for k in doc.get("runs", {})) and args.preset != "llama8b":
        doc["llama8b"] = ("not run: no GPU/TPU on the machine that wrote this file; command: "
                          "python scripts/bench_train.py --preset llama8b --mode lora --no-torch "
                          "(and --mode full; full FT of 8B needs ~128 GB for fp32 masters + "
                          "Adam, i.e. several devices with --mesh 1,-1,1)")
    key = f"{args.preset}/{platform_name}" + (f"/{args.tag}" if args.tag else "")
    doc.setdefault("runs", {})[key] = record
    out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
