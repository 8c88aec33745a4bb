"""The Llama decoder in Flax NNX: RMSNorm, GQA attention, SwiGLU MLP, blocks, LM head.

Axis alphabet (one for the package): B batch, T query length, S key/cache length,
D model width, N query heads, K kv heads, H head dim, F MLP hidden, V vocab, L layers,
R LoRA rank. Local to attention: G = N // K query heads sharing one kv head.
Parameters carry logical axis names (layers, embed, heads, kv_heads, head_dim, mlp,
vocab, lora_rank); no mesh axis is named here. The blocks are one stacked module
(leading L axis) scanned by the forward pass.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from semievol_jax.model import matmul
from semievol_jax.model.config import LlamaConfig
from semievol_jax.model.kv_cache import KVCache, is_split
from semievol_jax.model.lora import (
    LORA_GRADS,
    LORA_HIDDEN,
    MLP_PROJECTION,
    PROJECTION,
    Dense,
    LoraConfig,
    param,
)
from semievol_jax.model.rope import apply_rope, rope_cos_sin, rope_inv_freq

AXIS_NAMES = {"D": "embed", "N": "heads", "K": "kv_heads", "H": "head_dim", "F": "mlp"}
# What each scanned block keeps for the backward pass ("none": everything). "dots" keeps
# every matmul's output; "projections" keeps the frozen weights' products and the LoRA
# adapters' rank-R activations, and recomputes the attention scores and probabilities
# ([B, N, T, S] per layer, the largest activations at long T) and the adapters' outputs
# (as wide as the projections, R multiply-adds each); "attention" is "projections"
# without the MLP's gate and up products, the widest ones, which it recomputes (the same
# gradients bit for bit); "full" keeps only each block's input and recomputes the block
# (one more forward, least memory).
REMAT_POLICIES = {"none": None, "dots": jax.checkpoint_policies.dots_saveable,
                  "projections": jax.checkpoint_policies.save_only_these_names(
                      PROJECTION, MLP_PROJECTION, LORA_HIDDEN),
                  "attention": jax.checkpoint_policies.save_only_these_names(
                      PROJECTION, LORA_HIDDEN),
                  "full": jax.checkpoint_policies.nothing_saveable}


class ModelOutput(NamedTuple):
    logits_BTV: jax.Array  # float32 next-token logits
    cache: KVCache | None  # the updated cache (None when called without one)
    hidden_BTD: jax.Array | None  # the requested hidden layer (None unless asked)


class RMSNorm(nnx.Module):
    """x / rms(x) * scale, normalised in float32 (as transformers does)."""

    def __init__(self, dim: int, eps: float, *, dtype: jnp.dtype, param_dtype: jnp.dtype):
        self.eps = eps
        self.dtype = dtype
        self.scale = param(jnp.ones((dim,), param_dtype), ["embed"])

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        x32 = x_BTD.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(self.dtype) * normed.astype(self.dtype)


def _lora_for(lora: LoraConfig | None, target: str) -> LoraConfig | None:
    return lora if lora is not None and target in lora.targets else None


# A prompt's first pass (prefill) attends in blocks of this many queries: the [B, N, T, T]
# scores and probabilities of a whole long prompt are the largest buffers of a
# generation step (16 prompts of 900 tokens: 0.9 GB, more than the KV cache they fill),
# a block's are T / PREFILL_QUERY_BLOCK times smaller. Each query's row is computed as
# it would be at once; prompts up to the block length are not split at all.
PREFILL_QUERY_BLOCK = 256


def _attend(q_BKGTH, k_BKSH, v_BKSH, mask_BTS, dtype, key_layout="SH", matmul_dtype=None):
    """softmax(q k^T / sqrt(H), masked) v over the S keys, in float32 scores; the keys
    are [B, K, H, S] with `key_layout` "HS"; `matmul_dtype`: the matmuls' operands'."""
    H = q_BKGTH.shape[-1]
    spec = "BKGTH,BKSH->BKGTS" if key_layout == "SH" else "BKGTH,BKHS->BKGTS"
    scores_BKGTS = matmul.einsum(spec, q_BKGTH, k_BKSH, jnp.float32, matmul_dtype) * (H**-0.5)
    # finfo.min, not -inf: a query with no valid key (a pad slot) gets a uniform,
    # finite distribution instead of NaNs that would leak into gradients.
    scores_BKGTS = jnp.where(mask_BTS[:, None, None], scores_BKGTS,
                             jnp.finfo(jnp.float32).min)
    probs_BKGTS = jax.nn.softmax(scores_BKGTS, axis=-1).astype(dtype)
    return matmul.einsum("BKGTS,BKSH->BKGTH", probs_BKGTS, v_BKSH, operand_dtype=matmul_dtype)


def _attend_in_blocks(q_BKGTH, k_BKSH, v_BKSH, mask_BTS, dtype, matmul_dtype=None):
    """:func:`_attend` one block of PREFILL_QUERY_BLOCK queries at a time (a sequential
    ``lax.map``); the last block is padded with masked queries that are dropped."""
    B, K, G, T, H = q_BKGTH.shape
    C = PREFILL_QUERY_BLOCK
    nC = -(-T // C)
    pad = nC * C - T
    q_BKGTH = jnp.pad(q_BKGTH, ((0, 0), (0, 0), (0, 0), (0, pad), (0, 0)))
    mask_BTS = jnp.pad(mask_BTS, ((0, 0), (0, pad), (0, 0)))
    q_cBKGCH = q_BKGTH.reshape(B, K, G, nC, C, H).transpose(3, 0, 1, 2, 4, 5)
    mask_cBCS = mask_BTS.reshape(B, nC, C, -1).transpose(1, 0, 2, 3)
    out_cBKGCH = jax.lax.map(
        lambda qm: _attend(qm[0], k_BKSH, v_BKSH, qm[1], dtype, matmul_dtype=matmul_dtype),
        (q_cBKGCH, mask_cBCS))
    out_BKGTH = out_cBKGCH.transpose(1, 2, 3, 0, 4, 5).reshape(B, K, G, nC * C, H)
    return out_BKGTH[:, :, :, :T]


def _attend_causal(q_BKGTH, k_BKSH, v_BKSH, mask_BTS, dtype, block, matmul_dtype=None):
    """:func:`_attend` of a pass without a cache, `block` queries at a time, each block
    over the keys up to its last query only: the keys after it are all masked (causal),
    so at T = n x block this skips (n - 1) / 2n of the scores. Each query's output is
    the dense one's; the sums over fewer keys round in another order."""
    T = q_BKGTH.shape[3]
    outs = []
    for lo in range(0, T, block):
        hi = min(lo + block, T)
        outs.append(_attend(q_BKGTH[:, :, :, lo:hi], k_BKSH[:, :, :hi], v_BKSH[:, :, :hi],
                            mask_BTS[:, lo:hi, :hi], dtype, matmul_dtype=matmul_dtype))
    return jnp.concatenate(outs, axis=3)


class Attention(nnx.Module):
    """Causal grouped-query self-attention with RoPE and an optional KV cache."""

    def __init__(self, cfg: LlamaConfig, *, lora, dtype, param_dtype, rngs: nnx.Rngs):
        dims = {"D": cfg.hidden_size, "N": cfg.num_heads, "K": cfg.num_kv_heads,
                "H": cfg.head_dim}
        kw = dict(dims=dims, names=AXIS_NAMES, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q = Dense("D", "NH", lora=_lora_for(lora, "q"), **kw)
        self.k = Dense("D", "KH", lora=_lora_for(lora, "k"), **kw)
        self.v = Dense("D", "KH", lora=_lora_for(lora, "v"), **kw)
        self.o = Dense("NH", "D", lora=_lora_for(lora, "o"), **kw)
        self.num_kv_heads = cfg.num_kv_heads
        self.dtype = dtype
        self.matmul_dtype = None  # operands' dtype (matmul.set_matmul_dtype); None: dtype
        # Without a cache or into an empty one (a prompt's prefill), attend this many
        # queries at a time over the keys they can see (set_causal_block); 0: all T
        # queries over all T keys, masked.
        self.causal_block = 0

    def __call__(
        self,
        x_BTD: jax.Array,
        cos_sin: tuple[jax.Array, jax.Array],
        mask_BTS: jax.Array,
        kv: tuple[jax.Array, jax.Array, jax.Array, int] | None,
        lora_grad: str = "autodiff",
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """Attends the T new tokens to themselves (no cache) or to the cache's S slots.

        Args:
            x_BTD: normed block input.
            cos_sin: RoPE tables [B, T, H] for the new tokens' positions.
            mask_BTS: bool, query t may attend key slot s.
            kv: None, or (k_LBKSH, v_LBKSH, end, layer, fresh, key_layout): the cache
                buffers, where to write the new keys and values, this block's layer
                index (None: the buffers are this layer's own, [B, K, ...]), whether
                the cache was empty (attend to the T new keys only, mask_BTS
                [B, T, T]), and the keys' layout (KVCache.key_layout).
            lora_grad: how the adapters' B gradients are formed (lora.LORA_GRADS).

        Returns:
            (out_BTD, (k_LBKSH, v_LBKSH) with this layer's slots [end, end+T) written, or
            None without a cache).
        """
        q_BTNH = apply_rope(self.q(x_BTD, lora_grad), *cos_sin)
        k_BKTH = apply_rope(self.k(x_BTD, lora_grad), *cos_sin).transpose(0, 2, 1, 3)
        v_BKTH = self.v(x_BTD, lora_grad).transpose(0, 2, 1, 3)
        new_kv, fresh, key_layout = None, False, "SH"
        if kv is None:
            k_BKSH, v_BKSH = k_BKTH, v_BKTH
        else:
            k_LBKSH, v_LBKSH, end, layer, fresh, key_layout = kv
            zero = jnp.zeros((), jnp.int32)
            # layer None: the buffers are this layer's own, [B, K, ...] (a split cache).
            lead = () if layer is None else (jnp.int32(layer),)
            start = (*lead, zero, zero, end, zero)
            k_new, k_start = k_BKTH, start
            if key_layout == "HS":
                k_new, k_start = k_BKTH.transpose(0, 1, 3, 2), (*lead, zero, zero, zero, end)
            v_new = v_BKTH
            if layer is not None:
                k_new, v_new = k_new[None], v_new[None]
            k_LBKSH = jax.lax.dynamic_update_slice(k_LBKSH, k_new.astype(k_LBKSH.dtype),
                                                   k_start)
            v_LBKSH = jax.lax.dynamic_update_slice(v_LBKSH, v_new.astype(v_LBKSH.dtype), start)
            new_kv = (k_LBKSH, v_LBKSH)
            if fresh:  # an empty cache: the new tokens are all there is to attend to
                k_BKSH = k_BKTH.astype(k_LBKSH.dtype).astype(self.dtype)
                v_BKSH = v_BKTH.astype(v_LBKSH.dtype).astype(self.dtype)
                key_layout = "SH"  # the new keys, [B, K, T, H]
            else:
                if layer is not None:
                    k_LBKSH, v_LBKSH = k_LBKSH[layer], v_LBKSH[layer]
                k_BKSH = k_LBKSH.astype(self.dtype)  # [B, K, H, S] with "HS"
                v_BKSH = v_LBKSH.astype(self.dtype)
        B, T, N, H = q_BTNH.shape
        K = self.num_kv_heads
        q_BKGTH = q_BTNH.reshape(B, T, K, N // K, H).transpose(0, 2, 3, 1, 4)
        if (kv is None or fresh) and 0 < self.causal_block < T:
            out_BKGTH = _attend_causal(q_BKGTH, k_BKSH, v_BKSH, mask_BTS, self.dtype,
                                       self.causal_block, self.matmul_dtype)
        elif fresh and T > PREFILL_QUERY_BLOCK:
            out_BKGTH = _attend_in_blocks(q_BKGTH, k_BKSH, v_BKSH, mask_BTS, self.dtype,
                                          self.matmul_dtype)
        else:
            out_BKGTH = _attend(q_BKGTH, k_BKSH, v_BKSH, mask_BTS, self.dtype, key_layout,
                                self.matmul_dtype)
        out_BTKGH = out_BKGTH.transpose(0, 3, 1, 2, 4)
        return self.o(out_BTKGH.reshape(B, T, N, H), lora_grad), new_kv


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: LlamaConfig, *, lora, dtype, param_dtype, rngs: nnx.Rngs):
        dims = {"D": cfg.hidden_size, "F": cfg.intermediate_size}
        kw = dict(dims=dims, names=AXIS_NAMES, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate = Dense("D", "F", lora=_lora_for(lora, "gate"), save_name=MLP_PROJECTION, **kw)
        self.up = Dense("D", "F", lora=_lora_for(lora, "up"), save_name=MLP_PROJECTION, **kw)
        self.down = Dense("F", "D", lora=_lora_for(lora, "down"), **kw)

    def __call__(self, x_BTD: jax.Array, lora_grad: str = "autodiff") -> jax.Array:
        hidden_BTF = jax.nn.silu(self.gate(x_BTD, lora_grad)) * self.up(x_BTD, lora_grad)
        return self.down(hidden_BTF, lora_grad)


class Block(nnx.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: LlamaConfig, *, lora, dtype, param_dtype, rngs: nnx.Rngs):
        norm = dict(dtype=dtype, param_dtype=param_dtype)
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **norm)
        self.attn = Attention(cfg, lora=lora, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **norm)
        self.mlp = MLP(cfg, lora=lora, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x_BTD, cos_sin, mask_BTS, kv, lora_grad="autodiff"):
        attn_BTD, new_kv = self.attn(self.attn_norm(x_BTD), cos_sin, mask_BTS, kv, lora_grad)
        x_BTD = x_BTD + attn_BTD
        return x_BTD + self.mlp(self.mlp_norm(x_BTD), lora_grad), new_kv


def set_causal_block(model: nnx.Module, block: int) -> int:
    """Passes without a KV cache (training, embedding) and prefills attend `block`
    queries at a time over the keys up to each block's end, skipping the masked future
    (0: dense; a prefill then blocks its queries by PREFILL_QUERY_BLOCK over all keys).
    Returns the block the model had."""
    if block < 0:
        raise ValueError(f"causal block {block} < 0")
    old = 0
    for _, module in nnx.iter_modules(model):
        if isinstance(module, Attention):
            old, module.causal_block = module.causal_block, int(block)
    return old


def _check_room(cache: KVCache, T: int) -> None:
    """Outside jit, refuse to write past the cache (inside jit the write would be clamped)."""
    try:
        end = int(cache.end)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
        return
    if end + T > cache.max_len:
        raise ValueError(f"KV cache overflow: {end} slots used + {T} new > max_len "
                         f"{cache.max_len}")


class Llama(nnx.Module):
    """Llama causal LM. `dtype` is the compute dtype, `param_dtype` the storage dtype."""

    def __init__(
        self,
        cfg: LlamaConfig,
        *,
        lora: LoraConfig | None = None,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.cfg = cfg
        self.lora = lora
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.matmul_dtype = None  # operands' dtype (matmul.set_matmul_dtype); None: dtype
        D, V = cfg.hidden_size, cfg.vocab_size
        self.embedding_VD = param(
            jax.random.normal(rngs.params(), (V, D), param_dtype) / D**0.5, ["vocab", "embed"])
        # One Block whose every variable has a leading L axis ("layers"), built by vmapping
        # the block constructor over L split key streams; the forward pass scans over it,
        # so each program holds one copy of the block, not L (compile time and program
        # size do not grow with depth).
        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def stack(rngs: nnx.Rngs) -> Block:
            return Block(cfg, lora=lora, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

        self.layers = stack(rngs)
        self.norm = RMSNorm(D, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head_VD = param(
                jax.random.normal(rngs.params(), (V, D), param_dtype) / D**0.5,
                ["vocab", "embed"])

    def __call__(
        self,
        tokens_BT: jax.Array,
        positions_BT: jax.Array,
        *,
        valid_BT: jax.Array | None = None,
        segment_BT: jax.Array | None = None,
        cache: KVCache | None = None,
        prefill: bool = False,
        hidden_layer: int | None = None,
        logits_at_BR: jax.Array | None = None,
        remat: str = "none",
        unroll: int | bool = 1,
        layer_slices: tuple | None = None,
        lora_grad: str = "autodiff",
    ) -> ModelOutput:
        """Next-token logits for T new tokens.

        Args:
            tokens_BT: int token ids.
            positions_BT: int RoPE positions (left padding: cumsum(valid) - 1, clipped at 0).
            valid_BT: bool, False for padding (default: all True).
            segment_BT: int, packed rows (no cache): which example of its row a token
                belongs to; a query attends only keys of its own segment.
            cache: None (query t attends key s iff s <= t and valid[s]) or a KVCache whose
                slots [end, end+T) receive the new tokens (query at slot end+t attends slot
                s iff s <= end+t and the slot is valid).
            prefill: the cache is empty (a prompt's first pass): the T tokens attend to
                each other only, not to the S - T slots still to be written, which at
                a long prompt is most of the attention's work; the cache is written.
            hidden_layer: None, -1 (final-norm output) or i (output of block i).
            logits_at_BR: optional int positions into T, R per row: logits only there
                (a loss over response tokens needs no [B, T, V] tensor; at a 128k vocab
                that tensor is the largest activation of a training step).
            remat: what each scanned block keeps for the backward pass (REMAT_POLICIES):
                "none", "dots", "projections" or "full".
            unroll: layers per scan iteration (True: the whole stack, one program copy
                per layer as a Python loop would give).
            layer_slices: optional `unstacked_layers()`, taken by the caller: the blocks
                then run as straight-line code over these per-layer weights instead of
                scanning the stack. A decode loop takes them once, outside its steps:
                XLA:CPU's matmuls do not read a slice of a stacked weight in place, so
                slicing inside the steps copies every weight at every step. The same
                holds for the cache: with layer_slices it may be split by layer
                (`kv_cache.split_layers`), and stays split.
            lora_grad: how the adapters' B gradients are formed (lora.LORA_GRADS).

        Returns:
            ModelOutput(logits float32 [B, T, V], or [B, R, V] at `logits_at_BR`;
            updated cache or None; hidden_BTD or None).
        """
        cfg = self.cfg
        B, T = tokens_BT.shape
        if hidden_layer is not None and not -1 <= hidden_layer < cfg.num_layers:
            raise ValueError(f"hidden_layer={hidden_layer} not in [-1, {cfg.num_layers})")
        if valid_BT is None:
            valid_BT = jnp.ones((B, T), jnp.bool_)
        valid_BT = valid_BT.astype(jnp.bool_)
        t_T = jnp.arange(T, dtype=jnp.int32)
        if cache is None or prefill:
            causal_TS = t_T[None, :] <= t_T[:, None]
            mask_BTS = causal_TS[None] & valid_BT[:, None, :]
        if cache is not None:
            _check_room(cache, T)
            valid_BS = jax.lax.dynamic_update_slice(
                cache.valid_BS, valid_BT, (jnp.zeros((), jnp.int32), cache.end))
            s_S = jnp.arange(cache.max_len, dtype=jnp.int32)
            if not prefill:
                causal_TS = s_S[None, :] <= (cache.end + t_T)[:, None]
                mask_BTS = causal_TS[None] & valid_BS[:, None, :]
        if segment_BT is not None:
            if cache is not None:
                raise ValueError("segment_BT (packed rows) is for passes without a KV cache")
            mask_BTS = mask_BTS & (segment_BT[:, :, None] == segment_BT[:, None, :])
        cos_sin = rope_cos_sin(positions_BT, rope_inv_freq(cfg), self.dtype)

        x_BTD = jnp.take(self.embedding_VD[...], tokens_BT, axis=0).astype(self.dtype)
        x_BTD, kv_bufs, hidden_BTD = self._blocks(
            x_BTD, cos_sin, mask_BTS, cache, hidden_layer, remat=remat, unroll=unroll,
            prefill=prefill, lora_grad=lora_grad, layer_slices=layer_slices)
        x_BTD = self.norm(x_BTD)
        if hidden_layer == -1:
            hidden_BTD = x_BTD
        if logits_at_BR is not None:
            x_BTD = jnp.take_along_axis(x_BTD, logits_at_BR[..., None], axis=1)
        head_VD = self.embedding_VD if cfg.tie_word_embeddings else self.lm_head_VD
        # float32 logits: the loss, sampling and entropy all want them at full precision.
        head = head_VD[...] if self.matmul_dtype is not None else head_VD[...].astype(self.dtype)
        logits_BTV = matmul.einsum("BTD,VD->BTV", x_BTD, head, jnp.float32, self.matmul_dtype)
        new_cache = None
        if cache is not None:
            new_cache = KVCache(kv_bufs[0], kv_bufs[1], valid_BS, cache.end + T,
                                cache.key_layout)
        return ModelOutput(logits_BTV, new_cache, hidden_BTD)

    def unstacked_layers(self) -> tuple:
        """Each layer's (RNG state, state), sliced out of the stack's [L, ...] arrays, for
        `layer_slices`."""
        _, rng_state, state = nnx.split(self.layers, nnx.RngState, ...)
        return tuple(jax.tree.map(lambda x, i=i: x[i], (rng_state, state))
                     for i in range(self.cfg.num_layers))

    def _blocks(self, x_BTD, cos_sin, mask_BTS, cache, hidden_layer, *, remat, unroll,
                prefill=False, lora_grad="autodiff", layer_slices=None):
        """Scans the stacked blocks with `jax.lax.scan` (or, given `layer_slices`, runs
        the same body over them in a Python loop); the cache buffers ride in the carry,
        so each layer's write is an in-place update of the [L, ...] buffers.

        The stack is split into a graph and per-layer state, and each iteration merges
        one layer's slice: a plain functional scan, so the model may also be closed over
        by a caller's `jax.jit`. Only in train mode (active dropout) does the RNG state
        that the blocks advanced go back into the module.
        """
        if remat not in REMAT_POLICIES:
            raise ValueError(f"remat={remat!r}; expected one of {sorted(REMAT_POLICIES)}")
        if lora_grad not in LORA_GRADS:
            raise ValueError(f"lora_grad={lora_grad!r}; expected one of {LORA_GRADS}")
        keep = hidden_layer is not None and hidden_layer >= 0
        split = is_split(cache)  # one [B, K, ...] buffer per layer
        if split and layer_slices is None:
            raise ValueError("a cache split by layer (kv_cache.split_layers) is for "
                             "layer_slices; the scan reads the stacked buffers")
        end = None if cache is None else cache.end
        key_layout = None if cache is None else cache.key_layout
        graphdef, rng_state, state = nnx.split(self.layers, nnx.RngState, ...)

        def body(carry, xs):
            x_BTD, kv_bufs, hidden_BTD = carry
            rng_l, state_l, i = xs
            block = nnx.merge(graphdef, rng_l, state_l)
            kv = None if kv_bufs is None else (*kv_bufs, end, None if split else i,
                                               prefill, key_layout)
            x_BTD, kv_bufs = block(x_BTD, cos_sin, mask_BTS, kv, lora_grad)
            if keep:
                hidden_BTD = jnp.where(i == hidden_layer, x_BTD, hidden_BTD)
            return (x_BTD, kv_bufs, hidden_BTD), nnx.state(block, nnx.RngState)

        if remat != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[remat])
        kv_bufs = None if cache is None else (cache.k_LBKSH, cache.v_LBKSH)
        hidden_BTD = jnp.zeros_like(x_BTD) if keep else None
        if layer_slices is not None:
            if _dropout_active(self.layers):
                raise ValueError("layer_slices is for passes without active dropout")
            if isinstance(unroll, bool) or unroll != 1:
                raise ValueError("layer_slices runs every layer apart; unroll is for the scan")
            if len(layer_slices) != self.cfg.num_layers:
                raise ValueError(f"layer_slices holds {len(layer_slices)} layers, the model "
                                 f"{self.cfg.num_layers}")
            if not split:
                carry = (x_BTD, kv_bufs, hidden_BTD)
                for i, (rng_l, state_l) in enumerate(layer_slices):
                    carry, _ = body(carry, (rng_l, state_l, i))
                return carry
            if len(kv_bufs[0]) != self.cfg.num_layers:
                raise ValueError(f"the split cache holds {len(kv_bufs[0])} layers, the "
                                 f"model {self.cfg.num_layers}")
            ks, vs = list(kv_bufs[0]), list(kv_bufs[1])
            for i, (rng_l, state_l) in enumerate(layer_slices):
                (x_BTD, (ks[i], vs[i]), hidden_BTD), _ = body(
                    (x_BTD, (ks[i], vs[i]), hidden_BTD), (rng_l, state_l, i))
            return x_BTD, (tuple(ks), tuple(vs)), hidden_BTD
        layer_L = jnp.arange(self.cfg.num_layers, dtype=jnp.int32)
        carry, new_rng_state = jax.lax.scan(
            body, (x_BTD, kv_bufs, hidden_BTD), (rng_state, state, layer_L), unroll=unroll)
        if _dropout_active(self.layers):
            nnx.update(self.layers, new_rng_state)
        return carry


def _dropout_active(module: nnx.Module) -> bool:
    return any(isinstance(m, nnx.Dropout) and not m.deterministic and m.rate > 0
               for _, m in nnx.iter_modules(module))
