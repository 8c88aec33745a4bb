"""Key/value cache for incremental decoding: a pytree of fixed-size slot buffers."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from semievol_jax.model.config import LlamaConfig

# Logical axis names of the cache arrays, for callers that shard the decode state.
CACHE_KV_AXES = (None, "batch", "kv_heads", "seq", "head_dim")  # k_LBKSH, v_LBKSH
CACHE_VALID_AXES = ("batch", "seq")  # valid_BS


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Keys/values of every layer for S slots; slots [0, end) are written.

    A forward pass with T new tokens writes slots [end, end+T); a query in slot s attends
    slots s' <= s with valid_BS[s'] (so left padding is just invalid slots). Keys are
    stored after RoPE. Writing past S is not checked inside jit: size the cache for the
    prompt plus every token to be generated.
    """

    # [L, B, K, S, H]: each (row, kv head)'s S x H block is contiguous, the layout the
    # attention dots read, so decoding never transposes the cache.
    k_LBKSH: jax.Array  # keys, post-RoPE
    v_LBKSH: jax.Array  # values
    valid_BS: jax.Array  # bool: slot holds a real (non-pad) token
    end: jax.Array  # int32 scalar: number of slots written

    @property
    def max_len(self) -> int:
        return self.valid_BS.shape[1]


def init_cache(
    cfg: LlamaConfig, batch: int, max_len: int, dtype: jnp.dtype = jnp.float32
) -> KVCache:
    """An empty cache of `max_len` slots for `batch` sequences.

    Returns:
        KVCache with zero k/v [L, B, K, S, H] in `dtype`, valid_BS all False, end 0.
    """
    shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
    return KVCache(
        k_LBKSH=jnp.zeros(shape, dtype),
        v_LBKSH=jnp.zeros(shape, dtype),
        valid_BS=jnp.zeros((batch, max_len), jnp.bool_),
        end=jnp.zeros((), jnp.int32),
    )
