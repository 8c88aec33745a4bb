"""Checkpoint I/O without torch: bf16 round trip, sharded files, the tiny tokenizer's contract."""

import json

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open

from semievol_jax.model import load_hf, save_hf
from semievol_jax.model.tiny import train_tokenizer


def _params(model):
    return {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_bf16_save_load_is_bit_exact(tiny_model, tmp_path):
    model, _ = load_hf(tiny_model.ckpt_dir, dtype=jnp.bfloat16)
    out = save_hf(model, tmp_path / "bf16", max_shard_bytes=60_000)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    with safe_open(out / first, "numpy") as f:
        assert all(f.get_tensor(k).dtype == jnp.bfloat16 for k in f.keys())
    again, cfg = load_hf(out, dtype=jnp.bfloat16)
    assert cfg.torch_dtype == "bfloat16"
    a, b = _params(model), _params(again)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_tiny_tokenizer_contract(tiny_model):
    tok = tiny_model.tokenizer
    assert len(tok) <= 512 and tok.padding_side == "left"
    assert tok.eos_token == "<|eot|>" and tok.pad_token == "<|pad|>"
    ids = tok("Answer: B").input_ids
    assert ids[0] == tok.bos_token_id  # like Llama 3, encoding adds BOS
    assert tok.decode(ids, skip_special_tokens=True) == "Answer: B"
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}],
        tokenize=False)
    assert chat == "<|begin_of_text|><|user|>\n2 + 2?<|eot|><|assistant|>\n4<|eot|>"
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n")
    enc = tok(prompt, add_special_tokens=False).input_ids
    assert enc.count(tok.bos_token_id) == 1
    assert tok.convert_tokens_to_ids("<|eot|>") in tiny_model.cfg.eos_token_id


def test_train_tokenizer_on_own_corpus():
    tok = train_tokenizer(["zebra quagga zebra okapi " * 3, "no unknown bytes: é ü 🙂"], 300)
    assert len(tok) <= 300
    text = "zebra 🙂 never seen: Ω"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text  # byte-level
    assert len(tok("zebra", add_special_tokens=False).input_ids) == 1  # merges were learned


# config.json of meta-llama/Llama-3.1-8B-Instruct (transformers 4.43 layout), verbatim keys.
LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
    "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0", "use_cache": True, "vocab_size": 128256,
}


def test_llama31_8b_config_and_shapes():
    from semievol_jax.model import LlamaConfig
    from semievol_jax.model.hf_io import hf_tensor_shapes
    from semievol_jax.model.rope import rope_inv_freq

    cfg = LlamaConfig.from_hf(LLAMA31_8B)
    assert (cfg.head_dim, cfg.num_kv_heads, cfg.eos_token_id) == (128, 8, (128001, 128008, 128009))
    shapes = hf_tensor_shapes(cfg)
    assert len(shapes) == 2 + 32 * 9 + 1
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (1024, 4096)
    assert sum(int(np.prod(s)) for s in shapes.values()) == 8_030_261_248  # "8B"
    inv = rope_inv_freq(cfg)
    # Llama 3.1: the highest frequencies are untouched, the lowest divided by 8.
    plain = 1.0 / 500000.0 ** (np.arange(0, 128, 2) / 128)
    np.testing.assert_allclose(inv[:8], plain[:8], rtol=1e-6)
    np.testing.assert_allclose(inv[-8:], plain[-8:] / 8, rtol=1e-6)
