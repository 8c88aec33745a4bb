"""`semievol convert`: tiny random checkpoints, and LoRA adapters merged into HF weights."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="convert_command", required=True, metavar="WHAT")
    sp = sub.add_parser("tiny", help="write a tiny random Llama checkpoint (HF format + tokenizer)")
    sp.add_argument("out", help="output directory")
    sp.add_argument("--seed", type=int, default=0)
    sp = sub.add_parser("merge", help="merge a PEFT LoRA adapter into its base: an HF directory")
    sp.add_argument("--base", required=True, help="HF checkpoint directory or hub id")
    sp.add_argument("--adapter", required=True, help="PEFT adapter directory")
    sp.add_argument("--out", required=True, help="output HF directory")
    sp.add_argument("--allow-pickle", action="store_true",
                    help="allow pickle .bin weights (they can run code: only for trusted files)")


def main(args: argparse.Namespace) -> int:
    from semievol_jax import model as m  # JAX and flax: not for `semievol --help`

    if args.convert_command == "tiny":
        out = m.make_tiny_checkpoint(Path(args.out), seed=args.seed)
        print(f"wrote tiny checkpoint to {out}")
        return 0
    adapter = Path(args.adapter)
    lora = m.lora_config_from_peft(adapter)
    model, _ = m.load_hf(args.base, lora=lora, allow_pickle=args.allow_pickle)
    m.load_peft_adapter(model, adapter)
    m.save_hf(model, Path(args.out), tokenizer=m.load_tokenizer(args.base), merge_lora=True)
    print(f"wrote merged checkpoint to {args.out}")
    return 0
