"""Sampling rules and response entropy: pure functions over logits and log-probs.

Every rule returns three things per row: the sampled token, its log-probability
under the model's *unmodified* distribution (``log_softmax(logits)``, what SemiEvol's
entropy score needs) and its log-probability under the distribution actually sampled
from (after temperature, top-k and top-p; what importance weights or a policy-gradient
would need). Greedy decoding samples from a point mass, so its sample log-prob is 0.

Axis letters follow docs/interfaces.md: ``B`` rows, ``V`` vocab, ``N`` generated steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field

import jax
import jax.numpy as jnp

from semievol_jax.files import DIGEST_OMITS
from semievol_jax.model.kv_cache import KEY_LAYOUTS

# Large negative instead of -inf: keeps log_softmax finite for filtered-out tokens
# while their probability is still exactly 0 in float32.
_MASKED = -1e30


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """How to sample one response; hashable, so the decode loop can be jit-static on it."""

    temperature: float = 1.0  # 0.0 means greedy (argmax); SemiEvol's collaborators use 1.0
    top_k: int = 0  # keep the k most likely tokens; 0 disables
    top_p: float = 1.0  # nucleus: smallest set with cumulative prob >= top_p; 1.0 disables
    max_new_tokens: int = 256  # hard cap on generated tokens per sample
    stop: tuple[str, ...] = ("\n\n",)  # stop strings; the text is cut before the first one
    batch_size: int = 32  # prompts per compiled batch (samples per prompt multiply this)
    # Cap on slots x cache length of one batch (0 = none): prompts whose cache (prompt +
    # max_new_tokens, times the samples) would exceed it go in smaller batches. Like
    # batch_size it shapes the batches, and with them the matmuls' rounding on CPU.
    cache_tokens: int = 0
    truncate: str = "error"  # prompt longer than the context: "error" or "left" (drop oldest)
    # The KV cache's key layout (model.kv_cache.KEY_LAYOUTS): "HS" decodes faster on
    # XLA:CPU; "SH" gives the committed results' bits. Named in records only when "HS".
    key_layout: str = field(default="SH", metadata={DIGEST_OMITS: "SH"})
    # Decode steps run the layers as straight-line code over weights sliced out of the
    # [L, ...] stacks and a KV cache split by layer, both once per loop (a second copy of
    # each while it runs), where the scan copies every layer's weights and cache at every
    # step. On XLA:CPU 64-token float32 samples come 1.1-1.4x faster, the same tokens;
    # with bf16 matmuls it is slower, for 4-token samples no faster, and each loop
    # program compiles about 4x longer (docs/results.md); off by default.
    unroll_layers: bool = field(default=False, metadata={DIGEST_OMITS: False})

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"SampleConfig.temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"SampleConfig.top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SampleConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 0:
            raise ValueError(
                f"SampleConfig.max_new_tokens must be >= 0, got {self.max_new_tokens}"
            )
        if self.cache_tokens < 0:
            raise ValueError(f"SampleConfig.cache_tokens must be >= 0, got {self.cache_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"SampleConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.key_layout not in KEY_LAYOUTS:
            raise ValueError(f"SampleConfig.key_layout must be one of {KEY_LAYOUTS}, "
                             f"got {self.key_layout!r}")
        if self.truncate not in ("error", "left"):
            raise ValueError(
                f"SampleConfig.truncate must be 'error' or 'left', got {self.truncate!r}"
            )
        # Lists from YAML/OmegaConf would make the config unhashable (jit-static).
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def greedy(logits_BV: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Argmax decoding.

    Args:
      logits_BV: [B, V] next-token logits.

    Returns:
      ``(token_B int32, logprob_B, sample_logprob_B)``; the sample log-prob is 0.
    """
    logits_BV = logits_BV.astype(jnp.float32)
    token_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logprob_B = _take(jax.nn.log_softmax(logits_BV, axis=-1), token_B)
    return token_B, logprob_B, jnp.zeros_like(logprob_B)


def filter_logits(logits_BV: jax.Array, *, temperature: float, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
    """Applies temperature, then top-k, then top-p (the order HF transformers uses).

    Args:
      logits_BV: [B, V] raw logits.
      temperature: > 0.
      top_k: keep this many highest logits (0: all).
      top_p: keep the smallest prefix of the sorted distribution with mass >= top_p.

    Returns:
      [B, V] float32 logits of the distribution to sample from; removed tokens hold a
      large negative value (probability exactly 0).
    """
    if temperature <= 0:
        raise ValueError(f"filter_logits needs temperature > 0, got {temperature}")
    x_BV = logits_BV.astype(jnp.float32) / temperature
    vocab = x_BV.shape[-1]
    if 0 < top_k < vocab:
        kth_B1 = jax.lax.top_k(x_BV, top_k)[0][:, -1:]
        x_BV = jnp.where(x_BV < kth_B1, _MASKED, x_BV)
    if top_p < 1.0:
        sorted_BV = jnp.sort(x_BV, axis=-1)[:, ::-1]
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        # Mass strictly before each sorted token: a token is kept while the tokens
        # ahead of it have not yet reached top_p, so the most likely one always is.
        before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
        keep_BV = before_BV < top_p
        threshold_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
        x_BV = jnp.where(x_BV < threshold_B1, _MASKED, x_BV)
    return x_BV


def sample(logits_BV: jax.Array, keys_B: jax.Array, cfg: SampleConfig
           ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Samples one token per row, each row with its own key.

    Per-row keys (rather than one key for the batch) make a row's draw independent of
    which other rows share its batch, so bucketing does not change the output.

    Args:
      logits_BV: [B, V] next-token logits.
      keys_B: [B] typed PRNG keys (or [B, 2] raw uint32 keys).
      cfg: the sampling rule; ``cfg.temperature == 0`` means greedy.

    Returns:
      ``(token_B int32, logprob_B, sample_logprob_B)``: log-probs of the token under the
      unmodified model distribution and under the filtered distribution sampled from.
    """
    if cfg.greedy:
        return greedy(logits_BV)
    filtered_BV = filter_logits(logits_BV, temperature=cfg.temperature, top_k=cfg.top_k,
                                top_p=cfg.top_p)
    sample_logp_BV = jax.nn.log_softmax(filtered_BV, axis=-1)
    token_B = inverse_cdf(keys_B, jnp.exp(sample_logp_BV))
    logp_BV = (sample_logp_BV if cfg.temperature == 1.0 and cfg.top_k == 0 and cfg.top_p == 1.0
               else jax.nn.log_softmax(logits_BV.astype(jnp.float32), axis=-1))
    return token_B, _take(logp_BV, token_B), _take(sample_logp_BV, token_B)


def inverse_cdf(keys_B: jax.Array, probs_BV: jax.Array) -> jax.Array:
    """One token per row drawn from `probs_BV` with one uniform number per row.

    The first token whose cumulative probability reaches u * total: a token of
    probability 0 (filtered out) is never drawn. One uniform per row instead of the
    V Gumbel draws of `jax.random.categorical`: on CPU the V random numbers per row and
    step cost several times the cumulative sum.

    Args:
      keys_B: [B] typed PRNG keys.
      probs_BV: [B, V] float32 probabilities (rows sum to ~1).

    Returns:
      [B] int32 token ids.
    """
    cdf_BV = jnp.cumsum(probs_BV, axis=-1)
    u_B = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys_B)
    x_B1 = (jnp.maximum(u_B, jnp.finfo(jnp.float32).tiny) * cdf_BV[:, -1])[:, None]
    token_B = jnp.sum(cdf_BV < x_B1, axis=-1)
    return jnp.minimum(token_B, probs_BV.shape[-1] - 1).astype(jnp.int32)


def response_entropy(logprobs_BN: jax.Array, mask_BN: jax.Array) -> jax.Array:
    """SemiEvol's response entropy H = -(1/|y|) sum_t log p(y_t | x, y_<t).

    Args:
      logprobs_BN: [B, N] per-token log-probs under the unmodified model distribution.
      mask_BN: [B, N] true exactly on the response tokens (not prompt, not padding,
        nothing after the end of the response).

    Returns:
      [B] float32 entropy; NaN for a row with no response token (|y| = 0 has no mean).
    """
    mask_BN = mask_BN.astype(jnp.float32)
    total_B = -jnp.sum(jnp.where(mask_BN > 0, logprobs_BN, 0.0), axis=-1)
    count_B = jnp.sum(mask_BN, axis=-1)
    return jnp.where(count_B > 0, total_B / jnp.maximum(count_B, 1.0), jnp.nan)


def _take(x_BV: jax.Array, index_B: jax.Array) -> jax.Array:
    return jnp.take_along_axis(x_BV, index_B[:, None], axis=-1)[:, 0]
