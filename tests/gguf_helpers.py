"""Small GGUF files written with `gguf.GGUFWriter`, laid out as llama.cpp's converter does.

A tiny random Llama (with the tiny byte-level BPE tokenizer and chat template) is written
with every matrix in the requested GGML type. The Q and K projections get the converter's
row permutation, so reading them back tests that it is undone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, quants

from semievol_jax.model import LlamaConfig
from semievol_jax.model.hf_io import hf_tensor_shapes
from semievol_jax.model.tiny import config_for_tokenizer, random_llama, train_tokenizer

Q = GGMLQuantizationType
# Types gguf-py can quantize; the K-quants it only dequantizes, so their blocks are random.
QUANTIZABLE = (Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0)
DEQUANT_ONLY = (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K)

_TEXT = ["Question: Which option is correct? A. red B. green C. blue D. yellow",
         "Answer: A. Answer: B. The quick brown fox jumps over the lazy dog.",
         "Semi-supervised learning uses a few labeled examples and many unlabeled ones."]

_TO_GGUF = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
            "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
            "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
            "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def tiny_gguf_model(*, tie: bool, seed: int = 0):
    """(model, tokenizer, cfg): width 256 so rows fit the K-quants' 256-element blocks."""
    tokenizer = train_tokenizer(_TEXT, 384)
    cfg = config_for_tokenizer(tokenizer, hidden_size=256, intermediate_size=512,
                               num_layers=2, num_heads=4, num_kv_heads=2, head_dim=64,
                               tie_word_embeddings=tie, rope_theta=100000.0)
    return random_llama(cfg, seed=seed), tokenizer, cfg


def gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, i, *rest = hf.split(".")
    return f"blk.{i}.{_TO_GGUF['.'.join(rest[:-1])]}.weight"


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf's Q/K permutation (HF rotate-half -> interleaved)."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def hf_arrays(model, cfg: LlamaConfig) -> dict[str, np.ndarray]:
    """HF name -> float32 array in the HF layout (what save_hf would write)."""
    from semievol_jax.model.hf_io import _hf_value, weight_names

    shapes = hf_tensor_shapes(cfg)
    out = {}
    for name, (path, layer) in weight_names(cfg).items():
        value = np.asarray(_hf_value(model, path, False), np.float32)
        out[name] = (value if layer is None else value[layer]).reshape(shapes[name])
    return out


def _encode(w: np.ndarray, qtype: GGMLQuantizationType, rng: np.random.Generator):
    """(raw array for the writer, raw_dtype) of a 2-D float32 tensor in `qtype`."""
    if qtype in (Q.F32,):
        return w.astype(np.float32), None
    if qtype in QUANTIZABLE:
        return quants.quantize(w, qtype), qtype
    # random K-quant blocks whose fp16 scale fields are finite and small
    shape = quants.quant_shape_to_byte_shape(w.shape, qtype)
    raw = rng.integers(0, 256, shape, dtype=np.uint8)
    halves = raw.view(np.float16)
    bad = ~np.isfinite(halves) | (np.abs(halves) > 1)
    halves[bad] = np.float16(0.01)
    return raw, qtype


def write_tiny_gguf(out: Path, qtype: GGMLQuantizationType = Q.F32, *, tie: bool = True,
                    arch: str = "llama", drop: str | None = None,
                    wrong_shape: str | None = None, seed: int = 0) -> tuple[Path, dict]:
    """Writes a tiny Llama as GGUF with matrices in `qtype` (norms stay F32).

    drop / wrong_shape: a GGUF tensor name to leave out / to write with one row too few.

    Returns:
        (path, the float32 HF arrays the file was made from).
    """
    model, tokenizer, cfg = tiny_gguf_model(tie=tie, seed=seed)
    arrays = hf_arrays(model, cfg)
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(out), arch)
    w.add_name("tiny")
    w.add_uint32(f"{arch}.block_count", cfg.num_layers)
    w.add_uint32(f"{arch}.context_length", cfg.max_position_embeddings)
    w.add_uint32(f"{arch}.embedding_length", cfg.hidden_size)
    w.add_uint32(f"{arch}.feed_forward_length", cfg.intermediate_size)
    w.add_uint32(f"{arch}.attention.head_count", cfg.num_heads)
    w.add_uint32(f"{arch}.attention.head_count_kv", cfg.num_kv_heads)
    w.add_float32(f"{arch}.rope.freq_base", cfg.rope_theta)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps)
    w.add_uint32(f"{arch}.vocab_size", cfg.vocab_size)
    w.add_uint32(f"{arch}.rope.dimension_count", cfg.head_dim)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = {**spec["model"]["vocab"], **{t["content"]: t["id"] for t in spec["added_tokens"]}}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    specials = set(tokenizer.all_special_tokens) | {t["content"] for t in spec["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in specials else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_pad_token_id(tokenizer.pad_token_id)
    w.add_add_bos_token(True)
    w.add_chat_template(tokenizer.chat_template)
    for hf, value in arrays.items():
        name = gguf_name(hf)
        if name == drop:
            continue
        if ".attn_q." in name:
            value = permute(value, cfg.num_heads)
        elif ".attn_k." in name:
            value = permute(value, cfg.num_kv_heads)
        if name == wrong_shape:
            value = value[:-1] if value.ndim == 1 else value[:-32]
        if value.ndim == 1:
            w.add_tensor(name, value.astype(np.float32))
            continue
        raw, raw_dtype = _encode(value, qtype, rng)
        w.add_tensor(name, raw, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out, arrays
