"""Matmuls with low-precision operands and float32 sums (model/matmul.py)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from semievol_jax.model import matmul
from semievol_jax.model.lora import LoraConfig, merge_lora

_DOT = re.compile(r"stablehlo\.dot_general .*: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> "
                  r"(tensor<[^>]*>)")


def _dots(lowered_text: str) -> list[tuple[str, str, str]]:
    """(lhs, rhs, result) element types of every dot in a lowered program."""
    out = []
    for lhs, rhs, res in _DOT.findall(lowered_text):
        out.append(tuple(t.rsplit("x", 1)[-1].rstrip(">") for t in (lhs, rhs, res)))
    return out


def _operands(seed=0):
    k = jax.random.split(jax.random.key(seed), 2)
    return jax.random.normal(k[0], (2, 5, 8)), jax.random.normal(k[1], (6, 8))


@pytest.mark.parametrize("operand_dtype", [None, jnp.float32])
@pytest.mark.parametrize("out_dtype", [None, jnp.float32])
def test_float32_is_jnp_einsum_itself(out_dtype, operand_dtype):
    """float32 operands: the same jaxpr as the plain call, so float32 programs (and
    the committed digests) do not move."""
    x, w = _operands()
    ours = jax.make_jaxpr(lambda x, w: matmul.einsum("...I,OI->...O", x, w, out_dtype,
                                                     operand_dtype))(x, w)
    plain = jax.make_jaxpr(lambda x, w: jnp.einsum("...I,OI->...O", x, w,
                                                   preferred_element_type=out_dtype))(x, w)
    assert str(ours) == str(plain)
    assert "custom_vjp" not in str(ours)


def test_explicit_spells_out_the_leading_axes():
    assert matmul._explicit("...I,OI->...O", 3, 2) == "abI,OI->abO"
    assert matmul._explicit("...R,OR->...O", 4, 2) == "abcR,OR->abcO"
    assert matmul._explicit("BTD,VD->BTV", 3, 2) == "BTD,VD->BTV"


def test_bf16_operands_sum_in_float32_in_both_passes():
    """Forward and both gradients are bf16 x bf16 -> float32 dots (what XLA:CPU runs on
    AMX tiles); the values are those dots rounded, and near the float32 ones."""
    x, w = _operands()

    def loss(x, w, operand_dtype):
        y = matmul.einsum("...I,OI->...O", x, w, operand_dtype=operand_dtype)
        return jnp.sum(jnp.sin(y))

    grad = jax.jit(jax.grad(loss, (0, 1)), static_argnums=2)
    text = grad.lower(x, w, jnp.bfloat16).as_text()
    assert _dots(text) and all(d == ("bf16", "bf16", "f32") for d in _dots(text)), _dots(text)
    gx, gw = grad(x, w, jnp.bfloat16)
    assert gx.dtype == x.dtype and gw.dtype == w.dtype  # cotangents in the operands' dtypes
    rx, rw = grad(x, w, None)
    np.testing.assert_allclose(gx, rx, atol=0.05 * float(jnp.abs(rx).max()))
    np.testing.assert_allclose(gw, rw, atol=0.05 * float(jnp.abs(rw).max()))
    assert not np.array_equal(gx, rx)  # it did multiply in bf16
    # The forward value is the bf16 dot summed in float32, exactly.
    y = matmul.einsum("...I,OI->...O", x, w, operand_dtype=jnp.bfloat16)
    ref = jnp.einsum("...I,OI->...O", x.astype(jnp.bfloat16), w.astype(jnp.bfloat16),
                     preferred_element_type=jnp.float32)
    np.testing.assert_array_equal(y, ref)
    assert y.dtype == jnp.float32  # the activations stay in the compute dtype


def test_without_an_operand_dtype_bf16_stays_a_plain_dot():
    """A model computing in bf16 throughout (the GPU presets, the selftest's bf16 LoRA
    step) keeps its plain bf16 dots, and their bits, unless it asks for float32 sums."""
    x, w = (t.astype(jnp.bfloat16) for t in _operands())
    ours = jax.make_jaxpr(lambda x, w: matmul.einsum("...I,OI->...O", x, w))(x, w)
    assert str(ours) == str(jax.make_jaxpr(
        lambda x, w: jnp.einsum("...I,OI->...O", x, w))(x, w))
    text = jax.jit(lambda x, w: matmul.einsum("...I,OI->...O", x, w,
                                              operand_dtype=jnp.bfloat16)).lower(x, w).as_text()
    assert _dots(text) == [("bf16", "bf16", "f32")]


def _tiny(tiny_ckpt_dir, matmul_dtype):
    from semievol_jax.model import load_hf

    model, cfg = load_hf(tiny_ckpt_dir, lora=LoraConfig(rank=4, alpha=8.0, dropout=0.0))
    matmul.set_matmul_dtype(model, matmul_dtype)
    return model, cfg


def test_model_in_bf16_matmuls_keeps_float32_activations(tiny_ckpt_dir):
    """The tiny Llama with bf16 matmuls: logits near the float32 model's; in the LoRA
    gradient every dot is bf16 x bf16 -> float32, and no bf16 tensor is written into a
    scanned stack (XLA:CPU would convert the whole stack to float32 and back)."""
    ref_model, cfg = _tiny(tiny_ckpt_dir, None)
    model, _ = _tiny(tiny_ckpt_dir, jnp.bfloat16)
    assert model.matmul_dtype == jnp.bfloat16 and model.layers.attn.q.matmul_dtype == jnp.bfloat16
    tokens = jnp.arange(24, dtype=jnp.int32).reshape(2, 12) % cfg.vocab_size
    positions = jnp.broadcast_to(jnp.arange(12, dtype=jnp.int32), (2, 12))
    ref = ref_model(tokens, positions).logits_BTV
    out = model(tokens, positions).logits_BTV
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, atol=0.05 * float(jnp.abs(ref).max()))
    assert not np.array_equal(out, ref)

    graphdef, lora_state, rest = nnx.split(model, nnx.LoRAParam, ...)

    def loss(lora_state):
        logits = nnx.merge(graphdef, lora_state, rest)(tokens, positions).logits_BTV
        return jnp.mean(jax.nn.logsumexp(logits, -1))

    text = jax.jit(jax.grad(loss)).lower(lora_state).as_text()
    dots = _dots(text)
    big = [d for d in dots if d != ("bf16", "bf16", "f32")]
    assert not big, big
    assert not re.search(r"dynamic_update_slice.*tensor<[^>]*xbf16>", text)


def test_merged_model_keeps_matmul_dtype(tiny_ckpt_dir):
    model, _ = _tiny(tiny_ckpt_dir, jnp.bfloat16)
    merged = merge_lora(model)
    assert merged.matmul_dtype == jnp.bfloat16
    assert merged.layers.mlp.down.matmul_dtype == jnp.bfloat16


def test_pipeline_loads_bf16_matmuls_over_float32_activations(tiny_ckpt_dir, tmp_path):
    """base.matmul_dtype: float32 compute over weights stored in base.dtype, the
    adapter folded in for inference as without it."""
    from semievol_jax.model import load_hf, save_peft_adapter
    from semievol_jax.pipeline.config import BaseConfig
    from semievol_jax.pipeline.models import ModelRef, load_model

    tuned, _ = load_hf(tiny_ckpt_dir, lora=LoraConfig(rank=4, alpha=8.0, dropout=0.0))
    adapter = save_peft_adapter(tuned, tmp_path / "adapter", str(tiny_ckpt_dir))
    ref = ModelRef(str(tiny_ckpt_dir), str(adapter))
    low = BaseConfig(model=str(tiny_ckpt_dir), dtype="bfloat16", matmul_dtype="bfloat16")
    model, _ = load_model(ref, low)
    assert model.dtype == jnp.float32 and model.matmul_dtype == jnp.bfloat16
    assert model.layers.mlp.up.w[...].dtype == jnp.bfloat16
    assert model.layers.mlp.up.lora_a[...].dtype == jnp.float32  # adapters train in f32
    merged, _ = load_model(ref, low, merged=True)
    assert merged.lora is None and merged.matmul_dtype == jnp.bfloat16
    assert merged.dtype == jnp.float32
    plain, _ = load_model(ref, BaseConfig(model=str(tiny_ckpt_dir), dtype="float32"))
    assert plain.matmul_dtype is None and plain.layers.mlp.up.w[...].dtype == jnp.float32
