"""Parity with transformers.LlamaForCausalLM, HF export round trips, PEFT adapter interop."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from semievol_jax.model import (
    LoraConfig,
    RopeScaling,
    load_hf,
    load_peft_adapter,
    lora_config_from_peft,
    make_tiny_checkpoint,
    merge_lora,
    save_hf,
    save_peft_adapter,
)
from semievol_jax.model.llama import Llama

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LLAMA31_SMALL = RopeScaling("llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                            original_max_position_embeddings=32)


# One batch shape for every test (eager JAX compiles each primitive once per shape).
LENGTHS, WIDTH = [8, 5, 1], 8


def _batch(vocab, lengths, width, seed=0):
    """Left-padded random rows: tokens, positions, valid as numpy."""
    rng = np.random.RandomState(seed)
    tokens = rng.randint(4, vocab, (len(lengths), width)).astype(np.int64)
    valid = np.zeros((len(lengths), width), bool)
    for b, n in enumerate(lengths):
        valid[b, width - n:] = True
    tokens[~valid] = 2
    positions = np.maximum(np.cumsum(valid, 1) - 1, 0)
    return tokens, positions, valid


def _hf_logits(path, tokens, positions, valid, dtype=torch.float32, peft_dir=None):
    model = transformers.LlamaForCausalLM.from_pretrained(path, dtype=dtype).eval()
    if peft_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, peft_dir).eval()
    tokens, positions, valid = (np.asarray(x) for x in (tokens, positions, valid))
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens), position_ids=torch.tensor(positions),
                    attention_mask=torch.tensor(valid.astype(np.int64)))
    return out.logits.float().numpy()


def _flax_logits(model, tokens, positions, valid):
    out = model(jnp.asarray(tokens), jnp.asarray(positions), valid_BT=jnp.asarray(valid))
    return np.asarray(out.logits_BTV, np.float32)


def _max_diff(a, b, valid):
    return float(np.abs(a - b)[valid].max())


@pytest.fixture(scope="module")
def llama31_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("l31") / "ck", rope_scaling=LLAMA31_SMALL,
                                seed=1)


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tied") / "ck", tie_word_embeddings=True,
                                seed=2)


def test_parity_gqa_untied_padded(tiny_model):
    tokens, positions, valid = _batch(tiny_model.cfg.vocab_size, LENGTHS, WIDTH)
    ref = _hf_logits(tiny_model.ckpt_dir, tokens, positions, valid)
    ours = _flax_logits(tiny_model.model, tokens, positions, valid)
    assert tiny_model.cfg.num_kv_heads < tiny_model.cfg.num_heads
    assert _max_diff(ours, ref, valid) <= 1e-4
    assert np.abs(ref).max() > 1.0  # a sensitive probe, not near-zero logits


def test_parity_tied_embeddings(tied_dir):
    model, cfg = load_hf(tied_dir)
    assert cfg.tie_word_embeddings and not hasattr(model, "lm_head_VD")
    tokens, positions, valid = _batch(cfg.vocab_size, LENGTHS, WIDTH, seed=1)
    ref = _hf_logits(tied_dir, tokens, positions, valid)
    assert _max_diff(_flax_logits(model, tokens, positions, valid), ref, valid) <= 1e-4


def test_parity_llama31_rope_scaling_past_original_length(llama31_dir):
    model, cfg = load_hf(llama31_dir)
    assert cfg.rope_scaling == LLAMA31_SMALL
    width = 3 * LLAMA31_SMALL.original_max_position_embeddings  # 96 > 32
    tokens, positions, valid = _batch(cfg.vocab_size, [width, width - 20], width=width, seed=2)
    ref = _hf_logits(llama31_dir, tokens, positions, valid)
    ours = _flax_logits(model, tokens, positions, valid)
    assert _max_diff(ours, ref, valid) <= 1e-4
    # The scaling matters at these lengths: plain RoPE would not match.
    import dataclasses

    plain = Llama(dataclasses.replace(cfg, rope_scaling=None), rngs=nnx.Rngs(0))
    nnx.update(plain, nnx.state(model))
    assert _max_diff(_flax_logits(plain, tokens, positions, valid), ref, valid) > 1e-3


@pytest.mark.slow
# bf16 tolerance, measured: with these O(1)-logit random models both implementations
# drift from the fp32 reference by ~0.05-0.1 (bf16 has an 8-bit mantissa: 2^-8 relative
# per op, compounding over 2 layers and a 64-wide contraction). We require our bf16
# logits to be no further from HF's fp32 logits than 2x HF's own bf16 drift, plus 0.02.
def test_parity_bf16(tiny_model):
    tokens, positions, valid = _batch(tiny_model.cfg.vocab_size, LENGTHS, WIDTH, seed=3)
    ref32 = _hf_logits(tiny_model.ckpt_dir, tokens, positions, valid)
    ref16 = _hf_logits(tiny_model.ckpt_dir, tokens, positions, valid, dtype=torch.bfloat16)
    model, _ = load_hf(tiny_model.ckpt_dir, dtype=jnp.bfloat16)
    assert model.embedding_VD[...].dtype == jnp.bfloat16
    ours = _flax_logits(model, tokens, positions, valid)
    hf_drift = _max_diff(ref16, ref32, valid)
    our_drift = _max_diff(ours, ref32, valid)
    print(f"bf16 max|diff| vs fp32: ours {our_drift:.4f}, HF {hf_drift:.4f}, "
          f"ours vs HF bf16 {_max_diff(ours, ref16, valid):.4f}")
    assert our_drift <= 2 * hf_drift + 0.02


def test_export_roundtrip_transformers_loads(tiny_model, tmp_path):
    """load HF -> save_hf (sharded) -> transformers and load_hf both give the same logits."""
    out = save_hf(tiny_model.model, tmp_path / "export", tiny_model.tokenizer,
                  max_shard_bytes=100_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    tokens, positions, valid = _batch(tiny_model.cfg.vocab_size, LENGTHS, WIDTH, seed=4)
    ours = _flax_logits(tiny_model.model, tokens, positions, valid)
    assert _max_diff(_hf_logits(out, tokens, positions, valid), ours, valid) <= 1e-4
    reloaded, cfg = load_hf(out)
    assert cfg == tiny_model.cfg
    np.testing.assert_array_equal(_flax_logits(reloaded, tokens, positions, valid), ours)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and tok.eos_token == tiny_model.tokenizer.eos_token


def _random_lora_model(tiny_model, lora):
    model = Llama(tiny_model.cfg, lora=lora, rngs=nnx.Rngs(5))
    nnx.update(model, nnx.state(tiny_model.model, nnx.Param))
    key = jax.random.key(7)
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.LoRAParam):
            key, sub = jax.random.split(key)
            var.set_value(0.2 * jax.random.normal(sub, var.shape, var.dtype))
    return model


def test_peft_adapter_interop(tiny_model, tmp_path):
    lora = LoraConfig(rank=4, alpha=8.0, dropout=0.0)
    model = _random_lora_model(tiny_model, lora)
    adapter = save_peft_adapter(model, tmp_path / "adapter", str(tiny_model.ckpt_dir))
    tokens, positions, valid = _batch(tiny_model.cfg.vocab_size, LENGTHS, WIDTH, seed=5)
    ours = _flax_logits(model, tokens, positions, valid)
    base = _flax_logits(tiny_model.model, tokens, positions, valid)
    assert _max_diff(ours, base, valid) > 1e-2  # the adapter does something
    peft_ref = _hf_logits(tiny_model.ckpt_dir, tokens, positions, valid, peft_dir=adapter)
    assert _max_diff(ours, peft_ref, valid) <= 1e-4
    merged = _flax_logits(merge_lora(model), tokens, positions, valid)
    assert _max_diff(merged, peft_ref, valid) <= 1e-4
    # Merged export: plain transformers (no PEFT) reproduces the adapter's logits.
    out = save_hf(model, tmp_path / "merged", merge_lora=True)
    assert _max_diff(_hf_logits(out, tokens, positions, valid), peft_ref, valid) <= 1e-4
    # And the adapter loads back into a fresh Flax model.
    assert lora_config_from_peft(adapter) == LoraConfig(rank=4, alpha=8.0, dropout=0.0)
    fresh, _ = load_hf(tiny_model.ckpt_dir, lora=lora_config_from_peft(adapter), seed=9)
    load_peft_adapter(fresh, adapter)
    np.testing.assert_allclose(_flax_logits(fresh, tokens, positions, valid), ours, atol=1e-6)


@pytest.mark.slow
def test_peft_trained_adapter_loads(tiny_model, tmp_path):
    """An adapter written by PEFT itself (subset of targets) loads and matches PeftModel."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM.from_pretrained(tiny_model.ckpt_dir)
    peft_model = get_peft_model(hf, PeftLoraConfig(
        r=2, lora_alpha=6, target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "peft")
    lora = lora_config_from_peft(tmp_path / "peft")
    assert lora.targets == ("q", "v", "down") and lora.rank == 2 and lora.alpha == 6.0
    model, _ = load_hf(tiny_model.ckpt_dir, lora=lora)
    load_peft_adapter(model, tmp_path / "peft")
    tokens, positions, valid = _batch(tiny_model.cfg.vocab_size, LENGTHS, WIDTH, seed=6)
    ref = _hf_logits(tiny_model.ckpt_dir, tokens, positions, valid, peft_dir=tmp_path / "peft")
    assert _max_diff(_flax_logits(model, tokens, positions, valid), ref, valid) <= 1e-4
