"""Text-level generation: prompts in, M samples per prompt out, bucketed and in input order.

Prompts are tokenised, sorted by length (less padding), cut into batches of one batch
size per call and padded on the left to one of a few lengths (16, 24, 32, 48, ..., 1.5x
apart), so a pass over any number of prompts compiles one program per length bucket:
1,000 prompts of 10 to 1,000 tokens build at most 13. Each prompt's samples are keyed
on its index in ``prompts`` (see :func:`decode.sample_keys`), so the output does not
depend on the bucketing or on the other prompts of the call.

Prompt length policy: a prompt that does not leave room for ``max_new_tokens`` inside
the model's context (``max_position_embeddings``) raises :class:`PromptError` by
default; with ``SampleConfig.truncate="left"`` its oldest tokens are dropped and the
count is reported in ``Sample.prompt_tokens_dropped`` (and logged).

Multi-host: every process passes the same prompts and runs the same plan of global
batches on the global mesh; each process builds only its devices' rows of each batch
(:func:`sharding.put`), so the rows are split over processes, and the outputs are
all-gathered (:func:`sharding.replicate_rows`) so every process returns the whole list.
The global mesh rather than per-process local meshes because the params may be
sharded across hosts (fsdp / tensor over an 8B model), which local meshes cannot use,
and because each device then decodes exactly the rows, padded to exactly the length,
it would in a one-process run on the same mesh: the output is bit-identical and does
not depend on the process count. Without a mesh, a multi-process call builds the
data-parallel mesh over all devices.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from semievol_jax import sharding
from semievol_jax.generate import decode as decode_lib
from semievol_jax.generate import stopping
from semievol_jax.generate.sampling import SampleConfig

log = logging.getLogger(__name__)

MIN_BUCKET = 16


class PromptError(ValueError):
    """A prompt that cannot be generated from (empty, too long, not a string)."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One sampled response.

    Attributes:
      text: decoded response, cut before the first stop string, without EOS.
      token_ids: [n] generated ids, up to and including the EOS or the token that
        completed a stop string.
      logprobs: [n] float32 log p(y_t | x, y_<t) under the unmodified model.
      sample_logprobs: [n] float32 log-probs under the distribution sampled from
        (temperature / top-k / top-p applied; 0 for greedy).
      entropy: -mean(logprobs), SemiEvol's response entropy; NaN when n == 0.
      finish_reason: "eos", "stop" or "length".
      prompt_tokens_dropped: tokens cut from the prompt's left (truncate="left").
    """

    text: str
    token_ids: np.ndarray
    logprobs: np.ndarray
    sample_logprobs: np.ndarray
    entropy: float
    finish_reason: str
    prompt_tokens_dropped: int = 0


def render_prompt(tokenizer, user_text: str) -> str:
    """The chat-template rendering of one user turn, ready for the assistant's answer.

    A tokenizer without a chat template (a base model) gets the text unchanged.
    """
    if not getattr(tokenizer, "chat_template", None):
        return user_text
    return tokenizer.apply_chat_template([{"role": "user", "content": user_text}],
                                         tokenize=False, add_generation_prompt=True)


def tokenize_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids per prompt; BOS is added once even when the rendered text carries it."""
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise PromptError(f"prompt {i} is {type(p).__name__}, expected str")
    ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    # Chat templates write the BOS text themselves; tokenising that with special
    # tokens on would give two BOS tokens, which the model never saw in training.
    return [x[1:] if bos is not None and len(x) > 1 and x[0] == x[1] == bos else list(x)
            for x in ids]


def bucket_length(n: int, minimum: int = MIN_BUCKET) -> int:
    """The padded prompt length: the smallest of 16, 24, 32, 48, 64, 96, ... (powers of
    two and 1.5x them) >= max(n, minimum). Steps of 1.5x waste at most a third of a
    batch on padding, where powers of two waste up to half, for twice the programs."""
    n = max(int(n), minimum)
    p = 1 << max(0, n - 1).bit_length()  # smallest power of two >= n
    return 3 * p // 4 if p >= 4 and 3 * p // 4 >= n else p


def plan_batches(lengths: list[int], batch_size: int,
                 rows_for: Callable[[int], int] | None = None) -> list[tuple[list[int], int]]:
    """Groups prompt indices into batches of similar length.

    Args:
      lengths: token count per prompt.
      batch_size: prompts per batch.
      rows_for: optional cap on the prompts of a batch padded to a given length (a
        memory budget: long prompts go in smaller batches).

    Returns:
      ``[(indices, padded_length)]``: indices sorted by length, ``batch_size`` (or the
      cap) per batch (the last may be short; the caller pads it with filler rows).
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches, idx = [], []
    for i in order:  # ascending: the newest prompt is the batch's longest
        cap = batch_size if rows_for is None else max(1, rows_for(bucket_length(lengths[i])))
        if idx and len(idx) >= min(batch_size, cap):
            batches.append((idx, bucket_length(lengths[idx[-1]])))
            idx = []
        idx.append(i)
    if idx:
        batches.append((idx, bucket_length(lengths[idx[-1]])))
    return batches


def generate(model, tokenizer, prompts: list[str], cfg: SampleConfig, *, key: jax.Array,
             num_samples: int = 1, mesh=None, progress: bool = True) -> list[list[Sample]]:
    """Samples ``num_samples`` responses for each prompt.

    Args:
      model: a ``semievol_jax.model.Llama`` (LoRA or merged; sharded or not).
      tokenizer: its Hugging Face tokenizer.
      prompts: already chat-rendered prompts (see :func:`render_prompt`).
      cfg: sampling rule, ``max_new_tokens``, stop strings, batch size, truncation.
      key: typed PRNG key; sample m of prompt i uses ``fold_in(fold_in(key, i), m)``.
      num_samples: M, responses per prompt (SemiEvol's collaborators).
      mesh: optional mesh: batches are split over its batch axes (data x fsdp) and the
        params placed by their logical names (tensor parallel; see split_model).
        Multi-process, every process passes the same arguments and gets the whole
        output; each decodes only its devices' rows (see the module docstring).
      progress: show a tqdm bar with prompts/s and generated tokens/s (process 0 only).

    Returns:
      ``out[i][m]``: sample m of prompt i, in input order.

    Raises:
      PromptError: a non-string, empty (no tokens) or too long prompt.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not prompts:
        return []
    ids = tokenize_prompts(tokenizer, prompts)
    ids, dropped = _fit_context(ids, cfg, _max_positions(model))
    if cfg.max_new_tokens == 0:
        return [[_empty_sample(d) for _ in range(num_samples)] for d in dropped]

    mesh = sharding.rows_mesh(mesh)
    graphdef, state = decode_lib.split_model(model, mesh)
    tables = stopping.stop_tables(tokenizer, cfg.stop, model.cfg.vocab_size,
                                  tuple(model.cfg.eos_token_id or ()))
    filler = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 0
    batch_size = _batch_size(cfg.batch_size, len(ids), mesh)
    ways = sharding.batch_ways(mesh)

    def rows_for(length: int) -> int:
        """Prompts per batch at this padded length: the cache of every slot within
        ``cfg.cache_tokens`` (a multiple of the mesh's batch ways)."""
        if not cfg.cache_tokens:
            return batch_size
        fit = cfg.cache_tokens // (num_samples * (length + cfg.max_new_tokens))
        return min(batch_size, max(ways, fit // ways * ways))

    out: list[list[Sample] | None] = [None] * len(ids)
    bar = tqdm(total=len(ids), desc="generate", unit="prompt",
               disable=not progress or not sharding.is_main_process())  # one bar per job
    start, n_tokens = time.perf_counter(), 0

    def collect(idx: list[int], res: decode_lib.DecodeOutput) -> None:
        nonlocal n_tokens
        res = jax.device_get(res)
        for b, i in enumerate(idx):
            out[i] = [_to_sample(tokenizer, res, b, m, cfg, dropped[i])
                      for m in range(num_samples)]
            n_tokens += int(res.length_BM[b].sum())
        bar.update(len(idx))
        elapsed = max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(prompts_s=f"{bar.n / elapsed:.1f}", tokens_s=f"{n_tokens / elapsed:.0f}")

    pending = None
    for idx, length in plan_batches([len(x) for x in ids], batch_size, rows_for):
        b_rows = rows_for(length)
        rows = idx + [-1] * (b_rows - len(idx))  # -1: filler row, a one-token prompt
        tokens_BT = np.zeros((b_rows, length), np.int32)
        valid_BT = np.zeros((b_rows, length), bool)
        for b, i in enumerate(rows):
            x = ids[i] if i >= 0 else [filler]
            tokens_BT[b, length - len(x):] = x
            valid_BT[b, length - len(x):] = True
        index_B = jnp.asarray([max(i, 0) for i in rows], jnp.int32)
        keys_BM = sharding.put_rows(decode_lib.sample_keys(key, index_B, num_samples), mesh)
        tokens_BT, valid_BT = sharding.put_rows(tokens_BT, mesh), sharding.put_rows(valid_BT, mesh)
        # Dispatch is asynchronous: detokenising the previous batch on the host overlaps
        # with this batch's decoding on the device.
        res = decode_lib.decode(graphdef, state, tokens_BT, valid_BT, keys_BM, tables, cfg,
                                mesh=mesh)
        res = sharding.replicate_rows(res, mesh)  # multi-host: every process gets every row
        if pending is not None:
            collect(*pending)
        pending = (idx, res)
    if pending is not None:
        collect(*pending)
    bar.close()
    return out  # type: ignore[return-value]


def _to_sample(tokenizer, res: decode_lib.DecodeOutput, b: int, m: int, cfg: SampleConfig,
               dropped: int) -> Sample:
    n = int(res.length_BM[b, m])
    token_ids = np.asarray(res.tokens_BMN[b, m, :n])
    logprobs = np.asarray(res.logprobs_BMN[b, m, :n], np.float32)
    sample_logprobs = np.asarray(res.sample_logprobs_BMN[b, m, :n], np.float32)
    finish = stopping.FINISH_NAMES[int(res.finish_BM[b, m])]
    text_ids = token_ids[:-1] if finish == "eos" else token_ids
    text, cut = stopping.cut_at_stop(tokenizer, text_ids.tolist(), cfg.stop)
    if cut is not None:
        token_ids, logprobs, sample_logprobs = token_ids[:cut], logprobs[:cut], \
            sample_logprobs[:cut]
        finish = "stop"
    entropy = float(-logprobs.mean()) if len(logprobs) else float("nan")
    return Sample(text, token_ids, logprobs, sample_logprobs, entropy, finish, dropped)


def _empty_sample(dropped: int) -> Sample:
    empty_i, empty_f = np.zeros(0, np.int32), np.zeros(0, np.float32)
    return Sample("", empty_i, empty_f, empty_f, float("nan"), "length", dropped)


def _fit_context(ids: list[list[int]], cfg: SampleConfig, max_positions: int | None
                 ) -> tuple[list[list[int]], list[int]]:
    empty = [i for i, x in enumerate(ids) if not x]
    if empty:
        raise PromptError(f"prompts {empty[:10]} are empty after tokenisation (the tokenizer "
                          "adds no BOS): nothing to condition on")
    if max_positions is None:
        return ids, [0] * len(ids)
    room = max_positions - cfg.max_new_tokens
    if room < 1:
        raise PromptError(f"max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt "
                          f"in the model's {max_positions}-token context")
    long = [i for i, x in enumerate(ids) if len(x) > room]
    if long and cfg.truncate == "error":
        detail = ", ".join(f"{i} ({len(ids[i])} tokens)" for i in long[:10])
        raise PromptError(f"{len(long)} prompt(s) exceed the {room} tokens the context "
                          f"({max_positions}) leaves beside max_new_tokens={cfg.max_new_tokens}:"
                          f" {detail}; shorten them or set truncate='left'")
    if long:
        log.warning("left-truncating %d prompt(s) to %d tokens: %s", len(long), room, long[:10])
    dropped = [max(0, len(x) - room) for x in ids]
    return [x[len(x) - room:] if len(x) > room else x for x in ids], dropped


def _batch_size(batch_size: int, n: int, mesh) -> int:
    # One batch size per call keeps the program count at the number of length
    # buckets; a call with few prompts uses the next power of two instead.
    b = min(batch_size, 1 << max(0, n - 1).bit_length())
    if mesh is not None:
        ways = mesh.shape["data"] * mesh.shape["fsdp"]
        b = -(-b // ways) * ways
    return b


def _max_positions(model) -> int | None:
    return getattr(model.cfg, "max_position_embeddings", None)

