"""Hidden-state embeddings: pooling, padding/bucketing invariance, LoRA == merged."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from semievol_jax.generate import SampleConfig, generate
from semievol_jax.generate.embed import embed
from semievol_jax.model import LoraConfig, load_hf, merge_lora

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Rain",
    "Question: Which option is correct? Options: A. red B. green C. blue D. yellow",
    "The cat sat on the mat.",
    "",
]


@pytest.fixture(scope="module")
def hf_model(tiny_model):
    torch = pytest.importorskip("torch")
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(tiny_model.ckpt_dir, dtype=torch.float32).eval()


def _reference(hf_model, tokenizer, text, layer, pooling):
    """One text, no padding, in HF transformers: the pooled hidden state by hand."""
    import torch

    ids = tokenizer(text)["input_ids"]
    with torch.no_grad():
        hs = hf_model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    # hidden_states[i + 1] is block i's output; the last entry is after the final norm.
    h = hs[-1 if layer == -1 else layer + 1][0].numpy()
    skip = 1 if len(ids) > 1 and ids[0] == tokenizer.bos_token_id else 0
    v = h[-1] if pooling == "last" else h[skip:].mean(0)
    return v / np.linalg.norm(v)


@pytest.mark.parametrize("pooling,layer", [("mean", -1), ("last", 0)])
def test_embed_matches_unpadded_hf_reference(tiny_model, hf_model, pooling, layer):
    m, tok = tiny_model.model, tiny_model.tokenizer
    emb = embed(m, tok, TEXTS, layer=layer, pooling=pooling, batch_size=2)
    assert emb.shape == (len(TEXTS), tiny_model.cfg.hidden_size) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    for i, text in enumerate(TEXTS):
        np.testing.assert_allclose(emb[i], _reference(hf_model, tok, text, layer, pooling),
                                   atol=1e-4)


def test_embed_order_and_batching_invariant(tiny_model):
    m, tok = tiny_model.model, tiny_model.tokenizer
    a = embed(m, tok, TEXTS, batch_size=2)
    b = embed(m, tok, TEXTS[::-1], batch_size=2)[::-1]
    np.testing.assert_allclose(a, b, atol=1e-5)
    other = embed(m, tok, TEXTS, layer=0)
    assert np.abs(other - a).max() > 1e-3  # the layer argument is honoured


@pytest.fixture(scope="module")
def lora_pair(tiny_model):
    lora_model, _ = load_hf(tiny_model.ckpt_dir, lora=LoraConfig(rank=4, alpha=8.0))
    # Fresh adapters have B = 0; give them a real update so the check is not vacuous.
    key = jax.random.key(0)
    for path, var in nnx.iter_graph(lora_model):
        if isinstance(var, nnx.LoRAParam) and path[-1] == "lora_b":
            key, sub = jax.random.split(key)
            var.set_value(0.3 * jax.random.normal(sub, var.shape, var.dtype))
    return lora_model, merge_lora(lora_model)


def test_lora_unmerged_equals_merged_embed(tiny_model, lora_pair):
    lora_model, merged = lora_pair
    tok = tiny_model.tokenizer
    a, b = embed(lora_model, tok, TEXTS[:4]), embed(merged, tok, TEXTS[:4])
    np.testing.assert_allclose(a, b, atol=1e-4)
    base = embed(tiny_model.model, tok, TEXTS[:4])
    assert np.abs(a - base).max() > 1e-3


@pytest.mark.slow
def test_lora_unmerged_equals_merged_generate(tiny_model, lora_pair):
    lora_model, merged = lora_pair
    tok = tiny_model.tokenizer
    cfg = SampleConfig(temperature=0.0, max_new_tokens=6, stop=(), batch_size=4)
    g1 = generate(lora_model, tok, TEXTS[:4], cfg, key=jax.random.key(0), progress=False)
    g2 = generate(merged, tok, TEXTS[:4], cfg, key=jax.random.key(0), progress=False)
    for x, y in zip(g1, g2, strict=True):
        np.testing.assert_array_equal(x[0].token_ids, y[0].token_ids)
        np.testing.assert_allclose(x[0].logprobs, y[0].logprobs, atol=1e-4)


def test_embed_rejects_bad_arguments(tiny_model):
    m, tok = tiny_model.model, tiny_model.tokenizer
    with pytest.raises(ValueError, match="pooling"):
        embed(m, tok, TEXTS, pooling="max")
    with pytest.raises(ValueError, match="layer=5"):
        embed(m, tok, TEXTS, layer=5)
    assert embed(m, tok, []).shape == (0, tiny_model.cfg.hidden_size)


def test_sampleconfig_is_hashable_with_list_stops():
    cfg = SampleConfig(stop=["\n\n"])
    assert hash(cfg) == hash(dataclasses.replace(cfg))
