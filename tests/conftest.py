"""Shared tiny-model fixtures: one random tiny Llama checkpoint in HF format per session.

The STYLE tiny model: vocab 384 (byte-level BPE with a chat template), width 64,
2 layers, 4 query / 2 kv heads, head dim 16, untied embeddings, float32.
Session-scoped: do not mutate `tiny_model.model` in place (use `nnx.clone` first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import pytest

from semievol_jax import environment

# The CLI's CPU mode (and XLA flags) for the test process and the processes it starts,
# before any test starts a JAX backend: runs made here, in a demo worker and by a CLI
# subprocess then compute alike.
environment.set_determinism_flags()


class TinyModel(NamedTuple):
    model: Any  # semievol_jax.model.Llama, float32, no LoRA
    tokenizer: Any  # transformers tokenizer loaded from the checkpoint directory
    cfg: Any  # semievol_jax.model.LlamaConfig
    ckpt_dir: Path  # the HF checkpoint directory it was loaded from


@pytest.fixture(scope="session")
def tiny_ckpt_dir(tmp_path_factory) -> Path:
    """An HF checkpoint dir (config.json, model.safetensors, tokenizer files)."""
    from semievol_jax.model import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_ckpt") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt_dir) -> TinyModel:
    """The tiny checkpoint loaded into Flax, with its tokenizer."""
    from semievol_jax.model import load_hf, load_tokenizer

    model, cfg = load_hf(tiny_ckpt_dir)
    return TinyModel(model, load_tokenizer(tiny_ckpt_dir), cfg, tiny_ckpt_dir)


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory) -> Path:
    """A tiny synthetic task (the demo world's generator) for the pipeline tests."""
    from semievol_jax.pipeline.data.synth import SynthConfig, write_world

    out = tmp_path_factory.mktemp("task")
    write_world(out, SynthConfig(num_people=8, num_practice_people=2, num_labeled=8,
                                     num_unlabeled=12, num_test=8))
    return out
