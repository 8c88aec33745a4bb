"""Expected run time and memory of a paper-scale preset, from FLOPs and bytes.

Not a measurement: no paper-scale run has been made on an accelerator, so
the llama3.1-8b presets document what their stages *should* cost, computed here from the
preset, the data files (row counts and prompt lengths) and vendor peak figures, under
the utilisation assumptions printed with the result. Replace with measured numbers
(scripts/bench_train.py --preset llama8b, scripts/bench_generate.py) once a run exists.

  python scripts/estimate_preset.py --config llama3.1-8b-fpb --device H100

Model: training FLOPs per token from scripts/bench_train.py (LoRA: 4N + 6N_lora + attn;
full: 6N + attn) at `--mfu`; prefill 2N per prompt token at `--mfu`; decoding reads the
weights and KV cache once per step at `--hbm-util` of the memory bandwidth. Tokens are
prompt characters / `--chars-per-token` (Llama 3's tokenizer cannot be loaded offline).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from bench_train import PEAK_FLOPS, PRESETS, flops_per_token

# (chips, bf16 dense FLOP/s per chip, HBM bytes/s per chip, HBM bytes per chip)
DEVICES = {
    "H100": (1, PEAK_FLOPS["H100"], 3.35e12, 80e9),
    "v5e-8": (8, PEAK_FLOPS["TPU v5 lite"], 819e9, 16e9),
    "v4-8": (4, PEAK_FLOPS["TPU v4"], 1.2e12, 32e9),
}
GB = 1e9


def model_counts(shape: dict, lora_rank: int) -> dict[str, float]:
    """Parameters of a Llama of `shape`, of rank-r LoRA on its seven projections, and
    the KV values (and bf16 bytes) one cached token holds."""
    d, f, h, v = shape["hidden_size"], shape["intermediate_size"], shape["head_dim"], \
        shape["vocab_size"]
    q, kv = shape["num_heads"] * h, shape["num_kv_heads"] * h
    mats = [(d, q), (d, kv), (d, kv), (q, d), (d, f), (d, f), (f, d)]
    per_layer = sum(a * b for a, b in mats) + 2 * d
    embeddings = (1 if shape.get("tie_word_embeddings") else 2) * v * d
    n = shape["num_layers"] * per_layer + embeddings + d
    n_lora = shape["num_layers"] * sum(lora_rank * (a + b) for a, b in mats)
    kv_values = 2 * shape["num_layers"] * kv
    return {"n": n, "n_lora": n_lora, "kv_values_per_token": kv_values,
            "kv_bytes_per_token": kv_values * 2}


def split_tokens(cfg, chars_per_token: float) -> dict[str, dict[str, float]]:
    """Rows and mean prompt tokens of each split the preset names (absent files: None)."""
    from semievol_jax.pipeline import prompts
    from semievol_jax.pipeline.data import load_split, load_unlabeled
    from semievol_jax.pipeline.stages import task_of

    task = task_of(cfg.data)
    out = {}
    for split in ("labeled", "unlabeled", "test"):
        path = getattr(cfg.data, split)
        if not path or not Path(path).exists():
            out[split] = None
            continue
        rows = (load_unlabeled(path, task)[0] if split == "unlabeled"
                else load_split(path, task, split_name=split))
        chars = [len(prompts.format_question(task, r)) for r in rows]
        out[split] = {"rows": len(rows), "prompt_tokens": sum(chars) / len(chars) / chars_per_token}
    return out


def estimate(cfg, splits: dict, device: str, *, mfu: float, hbm_util: float,
             selected_fraction: float, disagree_fraction: float) -> dict:
    """Seconds per stage and peak bytes per chip (see the module docstring)."""
    chips, flops, bw, hbm = DEVICES[device]
    shape = dict(PRESETS["llama8b"])
    c = model_counts(shape, cfg.sft.lora.rank)
    target = 6  # "Answer: X" plus end of turn; the prompt dominates
    compute = chips * flops * mfu
    weights = 2 * c["n"]  # bf16

    def train_s(rows: float, tokens: float, tcfg) -> float:
        seq = min(tcfg.cutoff_len, tokens + target)
        fpt = flops_per_token(c["n"], c["n_lora"], shape["num_layers"], seq,
                              shape["hidden_size"], tcfg.mode)
        return rows * tcfg.epochs * seq * fpt / compute

    def generate_s(rows: float, prompt: float, n: int, scfg) -> float:
        prefill = rows * prompt * 2 * c["n"] / compute
        batches = math.ceil(rows / scfg.batch_size)
        kv = scfg.batch_size * n * (prompt + scfg.max_new_tokens) * c["kv_bytes_per_token"]
        decode = batches * scfg.max_new_tokens * (weights + kv) / (chips * bw * hbm_util)
        return prefill + decode

    lab, unl, test = splits["labeled"], splits["unlabeled"], splits["test"]
    k = cfg.index.k
    s = {}
    s["sft"] = train_s(lab["rows"], lab["prompt_tokens"], cfg.sft.train) if lab else None
    if lab and unl:
        s["index"] = (lab["rows"] + unl["rows"]) * unl["prompt_tokens"] * 2 * c["n"] / compute
        demo_prompt = unl["prompt_tokens"] + k * (lab["prompt_tokens"] + target)
        s["propose"] = generate_s(unl["rows"], demo_prompt, cfg.propose.n, cfg.propose.sample)
        s["select"] = generate_s(disagree_fraction * unl["rows"],
                                 unl["prompt_tokens"] * (1 + cfg.propose.n / 4), 1,
                                 cfg.select.reflect_sample)
        rows = lab["rows"] + selected_fraction * unl["rows"]
        s["final"] = train_s(rows, lab["prompt_tokens"], cfg.final.train)
    if test:
        s["eval"] = 3 * generate_s(test["rows"], test["prompt_tokens"], 1, cfg.eval.sample)
    tcfg = cfg.sft.train
    b, t = tcfg.batch_size, tcfg.cutoff_len
    if tcfg.mode == "lora":
        state = weights + 16 * c["n_lora"]  # adapters: fp32 master + Adam m, v + grads
    else:
        state = 16 * c["n"]  # bf16 weights and grads, fp32 master, Adam m and v
    # remat keeps one bf16 residual per layer; one layer's internals; fp32 logits
    acts = (b * t * shape["hidden_size"] * 2 * shape["num_layers"]
            + b * t * (4 * shape["hidden_size"] + 3 * shape["intermediate_size"]) * 2
            + 2 * b * t * shape["vocab_size"] * 4)
    kv_gen = (cfg.propose.sample.batch_size * cfg.propose.n
              * (cfg.propose.sample.max_new_tokens + 1024) * c["kv_bytes_per_token"])
    train_peak = state / chips + acts / chips
    gen_peak = (weights + kv_gen) / chips
    return {
        "device": f"{device} ({chips} chip{'s' if chips > 1 else ''}, "
                  f"{hbm / GB:.0f} GB HBM each)",
        "params": c["n"], "lora_params": c["n_lora"], "splits": splits,
        "seconds": {k: (round(v, 1) if v is not None else None) for k, v in s.items()},
        "total_minutes": round(sum(v for v in s.values() if v is not None) / 60, 1),
        "peak_gb_per_chip": {"training": round(train_peak / GB, 1),
                             "generation": round(gen_peak / GB, 1)},
        "fits": bool(max(train_peak, gen_peak) < 0.9 * hbm),
        "assumptions": {"mfu": mfu, "hbm_util": hbm_util,
                        "selected_fraction": selected_fraction,
                        "disagree_fraction": disagree_fraction,
                        "training_batch": b, "cutoff_len": t},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="a preset, e.g. llama3.1-8b-fpb")
    ap.add_argument("--device", choices=sorted(DEVICES), default="H100")
    ap.add_argument("--mfu", type=float, default=0.35, help="training and prefill")
    ap.add_argument("--hbm-util", type=float, default=0.6, help="decoding")
    ap.add_argument("--chars-per-token", type=float, default=4.0)
    ap.add_argument("--selected-fraction", type=float, default=0.8,
                    help="of the unlabeled rows, kept for final tuning")
    ap.add_argument("--disagree-fraction", type=float, default=0.3,
                    help="of the unlabeled rows, sent to reflection")
    ap.add_argument("--json", help="also write the estimate here")
    args = ap.parse_args(argv)
    from semievol_jax.config import load_config
    from semievol_jax.pipeline.config import RunConfig

    cfg = load_config(RunConfig, args.config, [])
    if cfg.sft.train.mode not in ("lora", "full"):
        sys.exit(f"unknown training mode {cfg.sft.train.mode!r}")
    est = estimate(cfg, split_tokens(cfg, args.chars_per_token), args.device,
                   mfu=args.mfu, hbm_util=args.hbm_util,
                   selected_fraction=args.selected_fraction,
                   disagree_fraction=args.disagree_fraction)
    est = {"command": "python " + " ".join(["scripts/estimate_preset.py", *(argv or sys.argv[1:])]),
           "preset": args.config, "kind": "estimate, not a measurement", **est}
    print(f"{args.config} on {est['device']}: ~{est['total_minutes']} min, peak "
          f"{est['peak_gb_per_chip']['training']} GB/chip training, "
          f"{est['peak_gb_per_chip']['generation']} GB/chip generation "
          f"({'fits' if est['fits'] else 'DOES NOT FIT'})")
    for stage, sec in est["seconds"].items():
        print(f"  {stage:<8} {'n/a (split missing)' if sec is None else f'{sec:8.1f} s'}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(est, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
