"""The compiled generator: prefill a left-padded batch once, then sample M continuations.

One jit-compiled program per (batch size, prompt length, M, max_new_tokens, sampling
rule): the prompt is prefilled into the KV cache once, the cache is repeated for the M
samples, and a ``jax.lax.while_loop`` decodes until every row has ended (EOS, stop
string) or ``max_new_tokens`` is reached, with no Python per token. The sampling rule
and the stop checks are ``jax.vmap``-ed over the M axis of the per-sample PRNG keys;
the model step sees the M x B rows as one batch (see ``_decode_jit``). So the M
collaborators of one prompt run as one program; different prompt variants of one
question (other demonstrations, other instructions) are simply other rows of B.

Left padding: position of a real token = number of real tokens before it, so a prompt's
positions do not depend on the bucket it was padded to. The last column must be a real
token in every row (the generator's filler rows are one-token prompts).

Axis letters: ``B`` prompts, ``M`` samples per prompt, ``T`` prompt length, ``S`` cache
length, ``N`` generated steps, ``V`` vocab.
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from semievol_jax.generate import stopping
from semievol_jax.generate.sampling import SampleConfig, sample
from semievol_jax.model.kv_cache import CACHE_KV_AXES, CACHE_VALID_AXES, init_cache

# Traces of the decode program by (B, T, M, max_new_tokens): a trace is a compilation,
# so tests and the benchmark read how many programs a pass over many prompts built.
TRACES: collections.Counter = collections.Counter()


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeState:
    """The while-loop carry; every per-row field is [M, B, ...]."""

    step: jax.Array  # int32 scalar: tokens generated so far
    token_MB: jax.Array  # int32: last token, fed at the next step
    position_MB: jax.Array  # int32: its position
    cache: object  # KVCache over M * B rows (row m * B + b)
    keys_MB: jax.Array  # typed PRNG keys, one stream per sample
    tokens_MBN: jax.Array  # int32 generated tokens (0 after the end)
    logprobs_MBN: jax.Array  # float32 log p under the unmodified model distribution
    sample_logprobs_MBN: jax.Array  # float32 log q under the distribution sampled from
    done_MB: jax.Array  # bool: row has ended
    length_MB: jax.Array  # int32: tokens generated, including the one that ended it
    finish_MB: jax.Array  # int32: 0 running, else stopping.FINISH_*


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeOutput:
    """What the decode program returns, per prompt b and sample m."""

    tokens_BMN: jax.Array  # int32; positions >= length hold 0
    logprobs_BMN: jax.Array  # float32; 0 past length
    sample_logprobs_BMN: jax.Array  # float32; 0 past length
    length_BM: jax.Array  # int32 number of generated tokens (EOS / stop token included)
    finish_BM: jax.Array  # int32 stopping.FINISH_EOS | FINISH_STOP | FINISH_LENGTH


def sample_keys(key: jax.Array, index_B: jax.Array, num_samples: int) -> jax.Array:
    """Per-sample key streams: ``fold_in(fold_in(key, prompt_index), m)``.

    Keyed on the prompt's index in the caller's list, not its batch slot, so a prompt
    gets the same samples whatever it is batched with; and on m alone, so sample m is
    the same whether 1 or 8 samples are drawn.

    Args:
      key: a typed PRNG key.
      index_B: [B] int32 prompt indices.
      num_samples: M.

    Returns:
      [B, M] typed keys.
    """
    per_prompt = jax.vmap(lambda i: jax.random.fold_in(key, i))(index_B)
    return jax.vmap(lambda k: jax.vmap(lambda m: jax.random.fold_in(k, m))(
        jnp.arange(num_samples)))(per_prompt)


def split_model(model: nnx.Module, mesh=None) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph and state of the model in inference mode (dropout off), for :func:`decode`.

    With a mesh, the state is placed by its params' logical axis names (tensor
    parallel); a model already sharded that way (``load_hf(mesh=...)``) is not moved.
    """
    graphdef, state = nnx.split(nnx.view(model, deterministic=True, raise_if_not_found=False))
    if mesh is not None:
        from semievol_jax.sharding import put, state_shardings

        state = put(state, state_shardings(state, mesh))  # put: also multi-process
    return graphdef, state


def decode(graphdef: nnx.GraphDef, state: nnx.State, tokens_BT: jax.Array,
           valid_BT: jax.Array, keys_BM: jax.Array, tables: stopping.StopTables,
           cfg: SampleConfig, *, mesh=None) -> DecodeOutput:
    """Samples M continuations of each left-padded prompt in one compiled program.

    Args:
      graphdef, state: from :func:`split_model`.
      tokens_BT: [B, T] int32 left-padded prompt ids; ``tokens_BT[:, -1]`` real.
      valid_BT: [B, T] bool, true on real tokens.
      keys_BM: [B, M] typed PRNG keys (see :func:`sample_keys`).
      tables: stop lookups from :func:`stopping.stop_tables`.
      cfg: sampling rule and ``max_new_tokens`` (>= 1); ``stop`` is read via ``tables``.
      mesh: optional mesh; the cache is then constrained batch-sharded.

    Returns:
      :class:`DecodeOutput` with N = ``cfg.max_new_tokens``.
    """
    if cfg.max_new_tokens < 1:
        raise ValueError("decode needs max_new_tokens >= 1 (the generator handles 0)")
    # Only the fields that change the program are static; stop strings, batch size
    # and truncation policy are host-side and must not trigger recompiles.
    rule = SampleConfig(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                        max_new_tokens=cfg.max_new_tokens, stop=())
    return _decode_jit(graphdef, state, tokens_BT, valid_BT, keys_BM, tables, rule=rule,
                       mesh=mesh)


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("rule", "mesh"))
def _decode_jit(graphdef, state, tokens_BT, valid_BT, keys_BM, tables, *, rule, mesh):
    B, T = tokens_BT.shape
    M = keys_BM.shape[1]
    N = rule.max_new_tokens
    TRACES[(B, T, M, N)] += 1
    model = nnx.merge(graphdef, state)
    positions_BT = jnp.maximum(jnp.cumsum(valid_BT.astype(jnp.int32), axis=1) - 1, 0)

    # Prefill all but the last prompt token: the loop's first step feeds that one and
    # gets the first next-token logits, so the prefill's [B, T, V] logits are dead
    # code that XLA drops (at 128k vocab they would be the largest tensor here).
    cache = init_cache(model.cfg, B, T + N, _cache_dtype(model))
    if T > 1:
        cache = model(tokens_BT[:, :-1], positions_BT[:, :-1], valid_BT=valid_BT[:, :-1],
                      cache=cache).cache
    # Share the prefill: one cache per prompt, repeated for its M samples. The M copies
    # are flattened into the model's batch axis (row m * B + b) rather than vmapped:
    # under vmap the cache write becomes a scatter that rewrites the whole cache every
    # step, while a plain batch keeps it an in-place dynamic_update_slice.
    cache = _constrain(_repeat_batch(cache, M), mesh)

    def step_all(token_MB, position_MB, cache):
        out = model(token_MB.reshape(M * B, 1), position_MB.reshape(M * B, 1),
                    valid_BT=jnp.ones((M * B, 1), bool), cache=cache)
        return out.logits_BTV.reshape(M, B, -1), out.cache

    sample_all = jax.vmap(lambda logits_BV, keys_B: sample(logits_BV, keys_B, rule))
    check_all = jax.vmap(lambda prev_B, tok_B, has_prev: stopping.check_stop(
        prev_B, tok_B, has_prev, tables), in_axes=(0, 0, None))

    def body(s: DecodeState) -> DecodeState:
        logits_MBV, cache = step_all(s.token_MB, s.position_MB, s.cache)
        step_keys_MB = jax.vmap(jax.vmap(lambda k: jax.random.fold_in(k, s.step)))(s.keys_MB)
        token_MB, logp_MB, sample_logp_MB = sample_all(logits_MBV, step_keys_MB)
        live_MB = ~s.done_MB
        token_MB = jnp.where(live_MB, token_MB, 0)
        logp_MB = jnp.where(live_MB, logp_MB, 0.0)
        sample_logp_MB = jnp.where(live_MB, sample_logp_MB, 0.0)
        eos_MB, stop_MB = check_all(s.token_MB, token_MB, s.step > 0)
        at_cap = s.step + 1 >= N
        finish_MB = jnp.where(eos_MB, stopping.FINISH_EOS,
                              jnp.where(stop_MB, stopping.FINISH_STOP,
                                        jnp.where(at_cap, stopping.FINISH_LENGTH, 0)))
        finish_MB = jnp.where(live_MB, finish_MB, s.finish_MB)
        return DecodeState(
            step=s.step + 1,
            token_MB=token_MB,
            position_MB=s.position_MB + 1,
            cache=cache,
            keys_MB=s.keys_MB,
            tokens_MBN=s.tokens_MBN.at[:, :, s.step].set(token_MB),
            logprobs_MBN=s.logprobs_MBN.at[:, :, s.step].set(logp_MB),
            sample_logprobs_MBN=s.sample_logprobs_MBN.at[:, :, s.step].set(sample_logp_MB),
            done_MB=s.done_MB | (finish_MB != 0),
            length_MB=jnp.where(live_MB, s.step + 1, s.length_MB),
            finish_MB=finish_MB.astype(jnp.int32),
        )

    def cond(s: DecodeState) -> jax.Array:
        return (s.step < N) & ~jnp.all(s.done_MB)

    zeros_MB = jnp.zeros((M, B), jnp.int32)
    init = DecodeState(
        step=jnp.int32(0),
        token_MB=jnp.broadcast_to(tokens_BT[:, -1], (M, B)).astype(jnp.int32),
        position_MB=jnp.broadcast_to(positions_BT[:, -1], (M, B)).astype(jnp.int32),
        cache=cache,
        keys_MB=keys_BM.T,
        tokens_MBN=jnp.zeros((M, B, N), jnp.int32),
        logprobs_MBN=jnp.zeros((M, B, N), jnp.float32),
        sample_logprobs_MBN=jnp.zeros((M, B, N), jnp.float32),
        done_MB=jnp.zeros((M, B), bool),
        length_MB=zeros_MB,
        finish_MB=zeros_MB,
    )
    s = jax.lax.while_loop(cond, body, init)
    return DecodeOutput(
        tokens_BMN=s.tokens_MBN.transpose(1, 0, 2),
        logprobs_BMN=s.logprobs_MBN.transpose(1, 0, 2),
        sample_logprobs_BMN=s.sample_logprobs_MBN.transpose(1, 0, 2),
        length_BM=s.length_MB.T,
        finish_BM=s.finish_MB.T,
    )


def _repeat_batch(cache, M: int):
    """[L, B, ...] / [B, S] cache leaves -> M copies along the batch axis, m-major."""
    if M == 1:
        return cache
    return dataclasses.replace(
        cache, k_LBKSH=jnp.tile(cache.k_LBKSH, (1, M, 1, 1, 1)),
        v_LBKSH=jnp.tile(cache.v_LBKSH, (1, M, 1, 1, 1)),
        valid_BS=jnp.tile(cache.valid_BS, (M, 1)))


def _cache_dtype(model) -> jnp.dtype:
    dtype = getattr(model, "dtype", None)
    return jnp.dtype(dtype) if dtype is not None else jnp.float32


def _constrain(cache, mesh):
    """Keeps the cache's batch axis on the mesh's batch axes (GSPMD may otherwise pick a
    replicated layout for an array created inside the program)."""
    if mesh is None:
        return cache
    from semievol_jax.sharding import logical_to_sharding

    def one(x, names):
        return jax.lax.with_sharding_constraint(x, logical_to_sharding(names, mesh, x.shape))

    return dataclasses.replace(
        cache, k_LBKSH=one(cache.k_LBKSH, CACHE_KV_AXES), v_LBKSH=one(cache.v_LBKSH, CACHE_KV_AXES),
        valid_BS=one(cache.valid_BS, CACHE_VALID_AXES))
