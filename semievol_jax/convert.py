"""`semievol convert`: tiny random checkpoints, GGUF files as HF checkpoints, LoRA merges."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from semievol_jax.errors import UserError

_DTYPES = ("float32", "bfloat16", "float16")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="convert_command", required=True, metavar="WHAT")
    sp = sub.add_parser("tiny", help="write a tiny random Llama checkpoint (HF format + tokenizer)")
    sp.add_argument("out", help="output directory (must not exist, or be empty)")
    sp.add_argument("--seed", type=int, default=0)
    sp = sub.add_parser("gguf", help="a GGUF file (or fetchable model name) as an HF checkpoint "
                                      "directory that transformers loads")
    sp.add_argument("input", help="a .gguf file, or a fetchable model (e.g. smollm2-135m-instruct)")
    sp.add_argument("out", help="output directory (must not exist, or be empty)")
    sp.add_argument("--dtype", choices=_DTYPES, default="float32",
                    help="dtype of the written weights (default float32: the dequantized "
                         "values exactly)")
    sp = sub.add_parser("merge", help="merge a PEFT LoRA adapter into its base: an HF directory")
    sp.add_argument("--base", required=True, help="HF checkpoint directory or hub id")
    sp.add_argument("--adapter", required=True, help="PEFT adapter directory")
    sp.add_argument("--out", required=True,
                    help="output HF directory (must not exist, or be empty)")
    sp.add_argument("--allow-pickle", action="store_true",
                    help="allow pickle .bin weights (they can run code: only for trusted files)")


def main(args: argparse.Namespace) -> int:
    from semievol_jax import model as m  # JAX and flax: not for `semievol --help`

    if args.convert_command == "tiny":
        with _fresh_dir(Path(args.out)) as tmp:
            m.make_tiny_checkpoint(tmp, seed=args.seed)
        print(f"wrote tiny checkpoint to {args.out}")
        return 0
    if args.convert_command == "gguf":
        import jax.numpy as jnp

        with _fresh_dir(Path(args.out)) as tmp:
            model, _ = m.load_hf(args.input, dtype=jnp.dtype(args.dtype))
            m.save_hf(model, tmp, tokenizer=m.load_tokenizer(args.input), merge_lora=False)
        print(f"wrote HF checkpoint to {args.out}")
        return 0
    adapter = Path(args.adapter)
    if not adapter.is_dir():
        raise UserError(f"--adapter {adapter}: no such adapter directory")
    with _fresh_dir(Path(args.out)) as tmp:
        lora = m.lora_config_from_peft(adapter)
        model, _ = m.load_hf(args.base, lora=lora, allow_pickle=args.allow_pickle)
        m.load_peft_adapter(model, adapter)
        m.save_hf(model, tmp, tokenizer=m.load_tokenizer(args.base), merge_lora=True)
    print(f"wrote merged checkpoint to {args.out}")
    return 0


class _fresh_dir:
    """Writes into a temporary sibling of `out` and renames it into place on success, so a
    failed or killed conversion leaves no half-written checkpoint."""

    def __init__(self, out: Path):
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UserError(f"{out}: already exists and is not an empty directory")
        self.out = out
        self.tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.out.is_dir():
            self.out.rmdir()
        os.replace(self.tmp, self.out)
