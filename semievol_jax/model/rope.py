"""Rotary position embeddings (pure functions), including Llama 3.1 "llama3" scaling."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from semievol_jax.model.config import LlamaConfig


def rope_inv_freq(cfg: LlamaConfig) -> np.ndarray:
    """Inverse frequencies of the H/2 rotary pairs, float32 like transformers computes them.

    Returns:
        inv_freq of shape [H/2], a host constant (folded into the compiled graph).
    """
    dim = cfg.head_dim
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (1.0 / (np.float32(cfg.rope_theta) ** exponent)).astype(np.float32)
    scaling = cfg.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":
        return (inv_freq / np.float32(scaling.factor)).astype(np.float32)
    # llama3: long wavelengths are stretched by `factor`, short ones kept, and the band in
    # between interpolated smoothly (Llama 3.1 reference implementation).
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(
    positions_BT: jax.Array, inv_freq: np.ndarray, dtype: jnp.dtype
) -> tuple[jax.Array, jax.Array]:
    """cos and sin tables for the given positions.

    Args:
        positions_BT: int positions [B, T].
        inv_freq: [H/2] from `rope_inv_freq`.
        dtype: dtype to cast the tables to (the activations' dtype, as transformers does).

    Returns:
        (cos_BTH, sin_BTH), each [B, T, H] with the H/2 angles repeated twice.
    """
    # Angles in float32 regardless of dtype: bf16 positions*freq would lose whole radians.
    angles_BTh = positions_BT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    # cos/sin of the H/2 distinct angles, then repeated: the same values as taking them
    # of the repeated angles, at half the transcendental calls (on CPU, scalar libm
    # calls).
    cos_BTh, sin_BTh = jnp.cos(angles_BTh), jnp.sin(angles_BTh)
    return (jnp.concatenate([cos_BTh, cos_BTh], axis=-1).astype(dtype),
            jnp.concatenate([sin_BTh, sin_BTh], axis=-1).astype(dtype))


def apply_rope(x_BTNH: jax.Array, cos_BTH: jax.Array, sin_BTH: jax.Array) -> jax.Array:
    """Rotates each head vector by its position's angles (HF "rotate_half" pairing: i, i+H/2).

    Args:
        x_BTNH: queries or keys [B, T, N or K, H].
        cos_BTH, sin_BTH: from `rope_cos_sin`.

    Returns:
        The rotated tensor, same shape and dtype as x_BTNH.
    """
    half = x_BTNH.shape[-1] // 2
    rotated_BTNH = jnp.concatenate([-x_BTNH[..., half:], x_BTNH[..., :half]], axis=-1)
    return x_BTNH * cos_BTH[:, :, None, :] + rotated_BTNH * sin_BTH[:, :, None, :]
