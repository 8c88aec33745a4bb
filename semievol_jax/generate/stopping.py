"""When a sampled response ends: EOS ids, stop strings, max_new_tokens, per sequence.

Stop strings are matched in two places. Inside the compiled decode loop a row stops
as soon as a token whose text contains a stop string is sampled, or two consecutive
tokens spell one across their boundary (``"\\n"`` then ``"\\n"`` for ``"\\n\\n"``): cheap
[V]-sized lookups that need no detokenisation on device. After the loop,
:func:`cut_at_stop` finds the exact first occurrence in the decoded text (also the
rare ones spread over three or more tokens) and cuts the text before it and the
tokens after the token that completed it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

# End-of-turn markers of common chat templates; a chat model ends its answer with one
# of these rather than with tokenizer.eos_token (Llama-3's <|eot_id|>, Qwen's <|im_end|>).
_END_OF_TURN = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")

FINISH_EOS = 1
FINISH_STOP = 2
FINISH_LENGTH = 3
FINISH_NAMES = {FINISH_EOS: "eos", FINISH_STOP: "stop", FINISH_LENGTH: "length"}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StopTables:
    """Per-vocab lookups the decode loop checks each sampled token against.

    Attributes:
      eos_V: [V] bool, token ends the sequence (EOS / end of turn).
      stop_V: [V] bool, the token's own text contains a stop string.
      ends_JV: [J, V] bool, token text ends with the first part of split j of a stop.
      starts_JV: [J, V] bool, token text starts with the rest of split j.
    """

    eos_V: jax.Array
    stop_V: jax.Array
    ends_JV: jax.Array
    starts_JV: jax.Array


def eos_ids(tokenizer) -> tuple[int, ...]:
    """Token ids that end a response: the tokenizer's EOS, end-of-turn markers, and the
    ``eos_token_id`` list of a ``generation_config.json`` next to the tokenizer files."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    ids.update(int(vocab[t]) for t in _END_OF_TURN if t in vocab)
    gen_cfg = Path(str(getattr(tokenizer, "name_or_path", ""))) / "generation_config.json"
    if gen_cfg.is_file():
        eos = json.loads(gen_cfg.read_text()).get("eos_token_id")
        ids.update(int(i) for i in ([eos] if isinstance(eos, int) else eos or []))
    return tuple(sorted(ids))


def stop_tables(tokenizer, stop: tuple[str, ...], vocab_size: int,
                extra_eos: tuple[int, ...] = ()) -> StopTables:
    """Builds the [V] lookups for ``stop`` strings and the EOS ids.

    Args:
      tokenizer: a Hugging Face tokenizer.
      stop: stop strings (empty strings are ignored).
      vocab_size: the model's V (may exceed the tokenizer's size: padded embeddings).
      extra_eos: more ids that end a response (the model config's ``eos_token_id``).

    Returns:
      :class:`StopTables` as device arrays.
    """
    eos_V, stop_V, ends_JV, starts_JV = _stop_tables_np(tokenizer, tuple(stop), vocab_size)
    eos_V = eos_V.copy()
    eos_V[[i for i in extra_eos if 0 <= i < vocab_size]] = True
    return StopTables(jnp.asarray(eos_V), jnp.asarray(stop_V), jnp.asarray(ends_JV),
                      jnp.asarray(starts_JV))


@functools.lru_cache(maxsize=8)
def _stop_tables_np(tokenizer, stop: tuple[str, ...], vocab_size: int):
    texts = _token_texts(tokenizer, vocab_size)
    eos_V = np.zeros(vocab_size, bool)
    eos_V[[i for i in eos_ids(tokenizer) if i < vocab_size]] = True
    stop = tuple(s for s in stop if s)
    stop_V = np.array([any(s in t for s in stop) for t in texts], bool)
    splits = [(s[:j], s[j:]) for s in stop for j in range(1, len(s))]
    # J padded to a multiple of 8 with all-false rows: a new stop string then reuses
    # the compiled decode program instead of changing its input shapes.
    shape = (-(-len(splits) // 8) * 8 or 8, vocab_size)
    ends_JV, starts_JV = np.zeros(shape, bool), np.zeros(shape, bool)
    for j, (a, b) in enumerate(splits):
        ends_JV[j] = [t.endswith(a) for t in texts]
        starts_JV[j] = [t.startswith(b) for t in texts]
    return eos_V, stop_V, ends_JV, starts_JV


def _token_texts(tokenizer, vocab_size: int) -> list[str]:
    n = min(len(tokenizer), vocab_size)
    texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=True,
                                   clean_up_tokenization_spaces=False)
    return texts + [""] * (vocab_size - n)


def check_stop(prev_B: jax.Array, token_B: jax.Array, has_prev: jax.Array,
               tables: StopTables) -> tuple[jax.Array, jax.Array]:
    """Whether the token just sampled ends the row.

    Args:
      prev_B: [B] int32 previous generated token.
      token_B: [B] int32 token just sampled.
      has_prev: bool scalar or [B]; false at the first generated token, whose
        predecessor belongs to the prompt (a stop string must lie in the response).
      tables: from :func:`stop_tables`.

    Returns:
      ``(eos_B, stop_B)`` bool: an EOS id, and a stop string completed by this token
      (within it, or across the boundary with ``prev_B``).
    """
    eos_B = tables.eos_V[token_B]
    pair_B = jnp.any(tables.ends_JV[:, prev_B] & tables.starts_JV[:, token_B], axis=0)
    return eos_B, tables.stop_V[token_B] | (pair_B & has_prev)


def cut_at_stop(tokenizer, token_ids: list[int], stop: tuple[str, ...]
                ) -> tuple[str, int | None]:
    """Finds the first stop string in the decoded response.

    Args:
      tokenizer: a Hugging Face tokenizer.
      token_ids: the generated ids (without EOS).
      stop: stop strings.

    Returns:
      ``(text, n_tokens)``: the decoded text cut before the first stop string, and the
      number of tokens up to and including the one that completed it (None when no stop
      string occurs: the text is then the whole decoded response).
    """
    text = _decode(tokenizer, token_ids)
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    if not hits:
        return text, None
    # Binary search for the shortest prefix whose text holds a stop string: decoding
    # prefixes is monotone in practice and this costs log2(N) decodes instead of N.
    lo, hi = 1, len(token_ids)
    while lo < hi:
        mid = (lo + hi) // 2
        prefix = _decode(tokenizer, token_ids[:mid])
        if any(s in prefix for s in stop if s):
            hi = mid
        else:
            lo = mid + 1
    return text[: min(hits)], lo


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
