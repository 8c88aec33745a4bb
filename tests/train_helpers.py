"""Shared by the train tests (and their subprocess scripts): tiny model, tokenizer, tasks."""

from __future__ import annotations

import functools
import os
import tempfile

import jax
import numpy as np
from flax import nnx

from semievol_jax.model.config import LlamaConfig
from semievol_jax.model.llama import Llama
from semievol_jax.model.lora import LoraConfig
from semievol_jax.train import SFTExample, TrainConfig

# Every train() call jits its step afresh; the persistent cache turns the repeats (same
# program in another test, a subprocess, a resumed run) into cache hits.
CACHE_DIR = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "semievol_jax_test_jit"))
jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

WORDS = "zero one two three four five six seven eight nine".split()


@functools.cache
def tokenizer():
    """A real HF tokenizer with the project's chat template (byte-level BPE, vocab 320)."""
    from semievol_jax.model.tiny import train_tokenizer

    texts = [" ".join(WORDS), "copy the last digit: 0 1 2 3 4 5 6 7 8 9"] * 20
    return train_tokenizer(texts, 320)


def tiny_model(mode: str = "lora", seed: int = 0, dropout: float = 0.0) -> Llama:
    """The STYLE tiny Llama (D 64, L 2, N 4 / K 2), float32, LoRA rank 4 on all linears."""
    tok = tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=16)
    lora = LoraConfig(rank=4, alpha=8.0, dropout=dropout) if mode == "lora" else None
    return Llama(cfg, lora=lora, rngs=nnx.Rngs(seed))


def digit_examples(n: int, seed: int = 0, length: int = 6) -> list[SFTExample]:
    """'copy the last digit' task: chance accuracy is 10%."""
    r = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        d = r.integers(0, 10, length)
        out.append(SFTExample("copy the last digit: " + " ".join(map(str, d)), str(d[-1])))
    return out


def small_cfg(**kw) -> TrainConfig:
    """Fast float32 config for tests: one length bucket, no tqdm/TB, sync checkpoints."""
    base = dict(learning_rate=1e-3, epochs=1, batch_size=8, cutoff_len=32, length_buckets=(32,),
                compute_dtype=None, progress=False, tensorboard=False, async_checkpoint=False,
                checkpoint_every=2)
    base.update(kw)
    return TrainConfig(**base)
