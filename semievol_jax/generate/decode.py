"""The compiled generator: prefill a left-padded batch once, then sample M continuations.

Three compiled pieces: a prefill per (batch size, prompt length, M, max_new_tokens,
sampling rule) writes each prompt into the KV cache once and repeats it for the M
samples, which become M x B *slots* of one batch (slot m * B + b); a
``jax.lax.while_loop`` decodes all slots a token at a time, with the sampling rule
``jax.vmap``-ed over the slots, each on its own key stream, until every slot has ended
(EOS, stop string) or ``max_new_tokens`` is reached, with no Python per token. When at
most a quarter of the slots are still live, the loop exits and the live ones are
gathered into a batch a quarter the size (``SHRINK``), so a few long samples do not
keep the whole batch's matmuls running. So the M collaborators of one prompt run as
one program; different prompt variants of one question (other demonstrations, other
instructions) are simply other rows of B.

Left padding: position of a real token = number of real tokens before it, so a prompt's
positions do not depend on the bucket it was padded to. The last column must be a real
token in every row (the generator's filler rows are one-token prompts).

Axis letters: ``B`` prompts, ``M`` samples per prompt, ``R`` = M x B output rows,
``T`` prompt length, ``S`` cache length, ``N`` generated steps, ``V`` vocab.
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from semievol_jax.generate import stopping
from semievol_jax.generate.sampling import SampleConfig, sample
from semievol_jax.model.kv_cache import (
    CACHE_KV_AXES,
    CACHE_VALID_AXES,
    init_cache,
    join_layers,
    key_axes,
    split_layers,
)

# Traces of the prefill program by (B, T, M, max_new_tokens) and of the decode loop by
# (slots, cache length, max_new_tokens): a trace is a compilation, so tests and the
# benchmark read how many programs a pass over many prompts built.
TRACES: collections.Counter = collections.Counter()
LOOP_TRACES: collections.Counter = collections.Counter()


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeState:
    """The while-loop carry. The model decodes R' *slots*; slot i produces output row
    ``row_ids[i]`` of the R = M * B rows (row m * B + b). Compaction moves the live
    slots into a smaller R', so per-slot fields shrink while the outputs stay [R, ...].
    """

    step: jax.Array  # int32 scalar: tokens generated so far
    row_ids: jax.Array  # int32 [R']: output row of each slot (R = filler, writes dropped)
    token: jax.Array  # int32 [R']: last token, fed at the next step
    position: jax.Array  # int32 [R']: its position
    cache: object  # KVCache over the R' slots
    keys: jax.Array  # typed PRNG keys [R'], one stream per sample
    done: jax.Array  # bool [R']: slot has ended (fillers are done)
    tokens_RN: jax.Array  # int32 generated tokens (0 after the end)
    logprobs_RN: jax.Array  # float32 log p under the unmodified model distribution
    sample_logprobs_RN: jax.Array  # float32 log q under the distribution sampled from
    length_R: jax.Array  # int32: tokens generated, including the one that ended it
    finish_R: jax.Array  # int32: 0 running, else stopping.FINISH_*


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeOutput:
    """What the decode program returns, per prompt b and sample m."""

    tokens_BMN: jax.Array  # int32; positions >= length hold 0
    logprobs_BMN: jax.Array  # float32; 0 past length
    sample_logprobs_BMN: jax.Array  # float32; 0 past length
    length_BM: jax.Array  # int32 number of generated tokens (EOS / stop token included)
    finish_BM: jax.Array  # int32 stopping.FINISH_EOS | FINISH_STOP | FINISH_LENGTH


# Compaction: when at most 1/SHRINK of the slots are live, they move to a batch SHRINK
# times smaller. Rows end at very different steps (a terse answer next to a sample that
# wanders to the token budget), and every step costs the whole batch's matmuls.
SHRINK = 4


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
    """Samples M continuations of each left-padded prompt.

    One compiled prefill per (B, T, M, N) shares each prompt's cache among its M
    samples; a compiled loop then decodes until every row has ended or N tokens are
    out. When at most a quarter of the slots are live, the loop exits, the live slots
    are gathered into a batch a quarter the size, and the loop goes on there. Each
    slot keeps its own key stream, cache and position, so a sample's tokens do not
    depend on when the others end.

    Args:
      graphdef, state: from :func:`split_model`.
      tokens_BT: [B, T] int32 left-padded prompt ids; ``tokens_BT[:, -1]`` real.
      valid_BT: [B, T] bool, true on real tokens.
      keys_BM: [B, M] typed PRNG keys (see :func:`sample_keys`).
      tables: stop lookups from :func:`stopping.stop_tables`.
      cfg: sampling rule and ``max_new_tokens`` (>= 1); ``stop`` is read via ``tables``.
      mesh: optional mesh; slots are then batch-sharded.

    Returns:
      :class:`DecodeOutput` with N = ``cfg.max_new_tokens``.
    """
    if cfg.max_new_tokens < 1:
        raise ValueError("decode needs max_new_tokens >= 1 (the generator handles 0)")
    # Only the fields that change the program are static; stop strings, batch size
    # and truncation policy are host-side and must not trigger recompiles.
    rule = SampleConfig(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                        max_new_tokens=cfg.max_new_tokens, stop=(), key_layout=cfg.key_layout,
                        unroll_layers=cfg.unroll_layers)
    from semievol_jax.sharding import batch_ways, replicate_rows

    ways = batch_ways(mesh)
    # The prefill runs once and scans its layers whatever the loop does: one program.
    s = _prefill_jit(graphdef, state, tokens_BT, valid_BT, keys_BM,
                     rule=dataclasses.replace(rule, unroll_layers=False), mesh=mesh)
    while True:
        slots = s.done.shape[0]
        smaller = _compact_size(slots, ways)
        s = _loop_jit(graphdef, state, s, tables, rule=rule, mesh=mesh,
                      exit_at=slots // SHRINK if smaller < slots else -1)
        if smaller == slots:
            break
        done = np.asarray(jax.device_get(replicate_rows(s.done, mesh)))
        step = int(jax.device_get(s.step))
        if done.all() or step >= rule.max_new_tokens:
            break
        live = np.flatnonzero(~done)
        pick = np.concatenate([live, np.full(smaller - len(live), -1)]).astype(np.int32)
        s = _compact_jit(s, jnp.asarray(pick), mesh=mesh)
    return _output_jit(s, m=keys_BM.shape[1])


def _compact_size(slots: int, ways: int) -> int:
    """The slot count after one compaction: a quarter, a multiple of the mesh's batch
    ways (the slot count itself when it cannot shrink)."""
    smaller = -(-(slots // SHRINK) // ways) * ways
    return smaller if 0 < smaller < slots else slots


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("rule", "mesh"))
def _prefill_jit(graphdef, state, tokens_BT, valid_BT, keys_BM, *, rule, mesh):
    B, T = tokens_BT.shape
    M = keys_BM.shape[1]
    N = rule.max_new_tokens
    TRACES[(B, T, M, N)] += 1
    model = nnx.merge(graphdef, state)
    positions_BT = jnp.maximum(jnp.cumsum(valid_BT.astype(jnp.int32), axis=1) - 1, 0)
    # Prefill all but the last prompt token: the loop's first step feeds that one and
    # gets the first next-token logits, so the prefill's [B, T, V] logits are dead
    # code that XLA drops (at 128k vocab they would be the largest tensor here).
    cache = init_cache(model.cfg, B, T + N, _cache_dtype(model), rule.key_layout)
    if T > 1:
        cache = model(tokens_BT[:, :-1], positions_BT[:, :-1], valid_BT=valid_BT[:, :-1],
                      cache=cache, prefill=True).cache
    # Share the prefill: one cache per prompt, repeated for its M samples. The M copies
    # are flattened into the model's batch axis (slot m * B + b) rather than vmapped:
    # under vmap the cache write becomes a scatter that rewrites the whole cache every
    # step, while a plain batch keeps it an in-place dynamic_update_slice.
    cache = _constrain(_repeat_batch(cache, M), mesh)
    R = M * B
    zeros_R = jnp.zeros((R,), jnp.int32)
    return DecodeState(
        step=jnp.int32(0),
        row_ids=jnp.arange(R, dtype=jnp.int32),
        token=jnp.tile(tokens_BT[:, -1], M).astype(jnp.int32),
        position=jnp.tile(positions_BT[:, -1], M).astype(jnp.int32),
        cache=cache,
        keys=keys_BM.T.reshape(R),
        done=jnp.zeros((R,), bool),
        tokens_RN=jnp.zeros((R, N), jnp.int32),
        logprobs_RN=jnp.zeros((R, N), jnp.float32),
        sample_logprobs_RN=jnp.zeros((R, N), jnp.float32),
        length_R=zeros_R,
        finish_R=zeros_R,
    )


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("rule", "mesh", "exit_at"),
                   donate_argnums=(2,))
def _loop_jit(graphdef, state, s: DecodeState, tables, *, rule, mesh, exit_at):
    """Decodes until every slot has ended, N tokens are out, or (exit_at >= 0) at most
    ``exit_at`` slots are live."""
    LOOP_TRACES[(s.done.shape[0], s.cache.max_len, rule.max_new_tokens)] += 1
    model = nnx.merge(graphdef, state)
    N = rule.max_new_tokens
    R = s.tokens_RN.shape[0]

    def sample_one(logits_V, key):  # the rule for one sample, vmapped over the slots
        return tuple(x[0] for x in sample(logits_V[None], key[None], rule))

    # Sliced here, before the loop, so that the steps read each layer's weights and
    # cache in place; the slices are a second copy of the layers' weights and of the
    # cache while the loop runs.
    layers = model.unstacked_layers() if rule.unroll_layers else None
    if rule.unroll_layers:
        s = dataclasses.replace(s, cache=split_layers(s.cache))

    def body(s: DecodeState) -> DecodeState:
        out = model(s.token[:, None], s.position[:, None],
                    valid_BT=jnp.ones((s.token.shape[0], 1), bool), cache=s.cache,
                    layer_slices=layers)
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, s.step))(s.keys)
        token, logp, sample_logp = jax.vmap(sample_one)(out.logits_BTV[:, 0], step_keys)
        live = ~s.done
        token = jnp.where(live, token, 0)
        eos, stop = stopping.check_stop(s.token, token, s.step > 0, tables)
        at_cap = s.step + 1 >= N
        finish = jnp.where(eos, stopping.FINISH_EOS,
                           jnp.where(stop, stopping.FINISH_STOP,
                                     jnp.where(at_cap, stopping.FINISH_LENGTH, 0)))
        # Writes of ended slots and fillers go nowhere (out of range, dropped).
        rows = jnp.where(live, s.row_ids, R)
        put = lambda a, v: a.at[rows, s.step].set(v, mode="drop")  # noqa: E731
        return DecodeState(
            step=s.step + 1,
            row_ids=s.row_ids,
            token=token,
            position=s.position + 1,
            cache=out.cache,
            keys=s.keys,
            done=s.done | (finish != 0),
            tokens_RN=put(s.tokens_RN, token),
            logprobs_RN=put(s.logprobs_RN, logp),
            sample_logprobs_RN=put(s.sample_logprobs_RN, sample_logp),
            length_R=s.length_R.at[rows].set(s.step + 1, mode="drop"),
            finish_R=s.finish_R.at[rows].set(finish.astype(jnp.int32), mode="drop"),
        )

    def cond(s: DecodeState) -> jax.Array:
        live = jnp.sum(~s.done)
        return (s.step < N) & (live > max(exit_at, 0))

    s = jax.lax.while_loop(cond, body, s)
    return dataclasses.replace(s, cache=join_layers(s.cache)) if rule.unroll_layers else s


@functools.partial(jax.jit, static_argnames=("mesh",))
def _compact_jit(s: DecodeState, pick: jax.Array, *, mesh) -> DecodeState:
    """The slots ``pick`` (-1: a filler, already done) as the new, smaller batch.

    Not donated: no output has an input's shape, so XLA could alias nothing; the large
    batch is freed when the caller drops it."""
    filler = pick < 0
    at = jnp.maximum(pick, 0)
    take = lambda x: jnp.take(x, at, axis=0)  # noqa: E731
    cache = dataclasses.replace(
        s.cache, k_LBKSH=jnp.take(s.cache.k_LBKSH, at, axis=1),
        v_LBKSH=jnp.take(s.cache.v_LBKSH, at, axis=1), valid_BS=take(s.cache.valid_BS))
    R = s.tokens_RN.shape[0]
    return dataclasses.replace(
        s, row_ids=jnp.where(filler, R, take(s.row_ids)), token=take(s.token),
        position=take(s.position), cache=_constrain(cache, mesh), keys=take(s.keys),
        done=take(s.done) | filler)


@functools.partial(jax.jit, static_argnames=("m",))
def _output_jit(s: DecodeState, *, m: int) -> DecodeOutput:
    def bm(x):  # [R, ...] rows m * B + b -> [B, M, ...]
        x = x.reshape(m, -1, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return DecodeOutput(tokens_BMN=bm(s.tokens_RN), logprobs_BMN=bm(s.logprobs_RN),
                        sample_logprobs_BMN=bm(s.sample_logprobs_RN),
                        length_BM=bm(s.length_R), finish_BM=bm(s.finish_R))


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
        cache, k_LBKSH=one(cache.k_LBKSH, key_axes(cache)),
        v_LBKSH=one(cache.v_LBKSH, CACHE_KV_AXES),
        valid_BS=one(cache.valid_BS, CACHE_VALID_AXES))
