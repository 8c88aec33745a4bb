"""Key/value cache for incremental decoding: a pytree of fixed-size slot buffers."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from semievol_jax.model.config import LlamaConfig

# Logical axis names of the cache arrays, for callers that shard the decode state.
CACHE_KV_AXES = (None, "batch", "kv_heads", "seq", "head_dim")  # k_LBKSH, v_LBKSH
CACHE_KEYS_HS_AXES = (None, "batch", "kv_heads", "head_dim", "seq")  # keys, layout "HS"
CACHE_VALID_AXES = ("batch", "seq")  # valid_BS

# How the keys are laid out per (row, kv head). "SH": [S, H], the values' layout, with
# which the committed results were made. "HS": [H, S], so a decode step's scores are a
# plain [G, H] x [H, S] matmul; XLA:CPU runs the [S, H] form as a matmul with a
# transposed operand, slower (results/bench/generate.json times both). The scores
# agree up to summation order, so their last bits may not.
KEY_LAYOUTS = ("SH", "HS")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Keys/values of every layer for S slots; slots [0, end) are written.

    A forward pass with T new tokens writes slots [end, end+T); a query in slot s attends
    slots s' <= s with valid_BS[s'] (so left padding is just invalid slots). Keys are
    stored after RoPE. Writing past S is not checked inside jit: size the cache for the
    prompt plus every token to be generated.
    """

    # [L, B, K, S, H] (keys [L, B, K, H, S] with key_layout "HS"): each (row, kv
    # head)'s block is contiguous, so decoding never transposes the cache. Split by
    # layer (split_layers): a tuple of L [B, K, ...] buffers.
    k_LBKSH: jax.Array  # keys, post-RoPE
    v_LBKSH: jax.Array  # values
    valid_BS: jax.Array  # bool: slot holds a real (non-pad) token
    end: jax.Array  # int32 scalar: number of slots written
    key_layout: str = dataclasses.field(default="SH", metadata={"static": True})

    @property
    def max_len(self) -> int:
        return self.valid_BS.shape[1]


def init_cache(
    cfg: LlamaConfig, batch: int, max_len: int, dtype: jnp.dtype = jnp.float32,
    key_layout: str = "SH",
) -> KVCache:
    """An empty cache of `max_len` slots for `batch` sequences.

    Returns:
        KVCache with zero k/v [L, B, K, S, H] (keys [L, B, K, H, S] with `key_layout`
        "HS") in `dtype`, valid_BS all False, end 0.

    Raises:
        ValueError: `key_layout` not in KEY_LAYOUTS.
    """
    if key_layout not in KEY_LAYOUTS:
        raise ValueError(f"key_layout must be one of {KEY_LAYOUTS}, got {key_layout!r}")
    shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
    k_shape = shape if key_layout == "SH" else (*shape[:3], cfg.head_dim, max_len)
    return KVCache(
        k_LBKSH=jnp.zeros(k_shape, dtype),
        v_LBKSH=jnp.zeros(shape, dtype),
        valid_BS=jnp.zeros((batch, max_len), jnp.bool_),
        end=jnp.zeros((), jnp.int32),
        key_layout=key_layout,
    )


def split_layers(cache: KVCache) -> KVCache:
    """The cache with its keys and values as tuples of L [B, K, ...] buffers, one per
    layer (a copy of each). Layers run as straight-line code (``Llama``'s
    ``layer_slices``) then read and write their own buffer in place: XLA:CPU's matmuls
    cannot read a layer's slice of the stacked buffer in place, so they copy it first.
    Not [1, B, K, ...]: inside a while loop, XLA:CPU copies such a buffer at every
    iteration to read it through the reshape that drops the 1.
    """
    def split(x):
        return tuple(x[i] for i in range(x.shape[0]))

    return dataclasses.replace(cache, k_LBKSH=split(cache.k_LBKSH),
                               v_LBKSH=split(cache.v_LBKSH))


def join_layers(cache: KVCache) -> KVCache:
    """:func:`split_layers` undone: the per-layer buffers stacked again."""
    return dataclasses.replace(cache, k_LBKSH=jnp.stack(cache.k_LBKSH),
                               v_LBKSH=jnp.stack(cache.v_LBKSH))


def is_split(cache: KVCache | None) -> bool:
    """Whether the cache holds one buffer per layer (:func:`split_layers`)."""
    return cache is not None and isinstance(cache.k_LBKSH, tuple)


def key_axes(cache: KVCache) -> tuple:
    """Logical axis names of the cache's keys."""
    return CACHE_KV_AXES if cache.key_layout == "SH" else CACHE_KEYS_HS_AXES
