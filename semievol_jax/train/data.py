"""SFT data: chat-render (prompt, response) pairs, mask the prompt, bucket, batch, resume.

Batches are a pure function of (examples, seed, step): the permutation of epoch e
comes from ``rng.numpy_rng(seed, "data", e)``, so the iterator's whole position is
the step counter, and a resumed run reads exactly the batches it would have read.
Unpacked, each example is one row padded to its step's length bucket, and the last
batch of an epoch is filled with weight-0 padding rows so every step has the same
batch shape. Packed (``pack=True``, `packing.py`), each microbatch's examples share
rows as separate segments, so the row count and length vary by step; with a
``program_cost`` the whole run's steps share a few planned shapes instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from semievol_jax import rng
from semievol_jax.errors import DataError
from semievol_jax.train.packing import first_fit_decreasing, plan_rows, plan_shapes

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SFTExample:
    """One supervised pair: the user turn and the assistant turn that is learned."""

    prompt: str
    response: str


@dataclasses.dataclass(frozen=True)
class TokenizedSet:
    """Tokenized examples, ready to batch.

    Attributes:
      ids: per example, ``[T_i]`` int32 token ids (prompt + response), T_i <= cutoff.
      loss_mask: per example, ``[T_i]`` bool, True on response tokens.
      num_truncated: examples cut at the cutoff (their response partly kept).
      num_dropped: examples with no response token left after the cut (excluded).
      digest: SHA-256 of all ids and masks (a resumed run checks it is the same data).
    """

    ids: list[np.ndarray]
    loss_mask: list[np.ndarray]
    num_truncated: int
    num_dropped: int
    digest: str

    def __len__(self) -> int:
        return len(self.ids)


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def tokenize_example(tokenizer: Any, ex: SFTExample) -> tuple[np.ndarray, np.ndarray]:
    """Chat-render one example; mask everything up to the assistant turn's content.

    Returns:
      ``(ids_T, loss_mask_T)``; the mask is True from the first response token through
      the end-of-turn token(s) the template appends (the model must learn to stop).
    """
    user = [{"role": "user", "content": ex.prompt}]
    prompt_text = _render(tokenizer, user, add_generation_prompt=True)
    full_text = _render(tokenizer, user + [{"role": "assistant", "content": ex.response}], False)
    if not full_text.startswith(prompt_text):
        raise DataError("chat template does not render the prompt as a prefix of prompt+response")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    # Tokenize the response part separately so the prompt/response boundary is exact
    # even where a BPE merge could cross it.
    resp_ids = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    ids = np.asarray(list(prompt_ids) + list(resp_ids), np.int32)
    mask = np.zeros(len(ids), bool)
    mask[len(prompt_ids):] = True
    return ids, mask


def tokenize_examples(
    tokenizer: Any, examples: Sequence[SFTExample], cutoff_len: int
) -> TokenizedSet:
    """Tokenize, cut at ``cutoff_len`` and check a list of examples.

    Raises:
      DataError: an empty list, a non-SFTExample, an empty response, or every example
        losing all of its response to the cutoff.
    """
    if len(examples) == 0:
        raise DataError("empty training set: no examples to fine-tune on")
    ids_all, masks, truncated, dropped, too_long = [], [], 0, 0, []
    h = hashlib.sha256()
    for i, ex in enumerate(examples):
        if not isinstance(ex, SFTExample):
            raise DataError(f"example {i} is a {type(ex).__name__}, expected SFTExample")
        if not ex.response.strip():
            raise DataError(f"example {i} has an empty response (nothing to learn)")
        ids, mask = tokenize_example(tokenizer, ex)
        if len(ids) > cutoff_len:
            truncated += 1
            too_long.append((i, len(ids)))
            ids, mask = ids[:cutoff_len], mask[:cutoff_len]
            # The token at position 0 is never a target, so a response must start at >= 1.
            if not mask[1:].any():
                dropped += 1
                continue
        ids_all.append(ids)
        masks.append(mask)
        h.update(ids.tobytes())
        h.update(mask.tobytes())
    if too_long:
        shown = ", ".join(f"#{i} ({n} tokens)" for i, n in too_long[:5])
        log.warning(
            "%d of %d examples longer than cutoff_len=%d were truncated (%d dropped: no "
            "response token left): %s%s", truncated, len(examples), cutoff_len, dropped, shown,
            " ..." if len(too_long) > 5 else "",
        )
    if not ids_all:
        raise DataError(
            f"all {len(examples)} examples lose their whole response at cutoff_len={cutoff_len}"
        )
    return TokenizedSet(ids_all, masks, truncated, dropped, h.hexdigest())


def padded_length(n: int, buckets: Sequence[int], cutoff_len: int) -> int:
    """Smallest bucket >= n (buckets above the cutoff are clamped to it)."""
    for b in sorted(set(min(b, cutoff_len) for b in buckets) | {cutoff_len}):
        if b >= n:
            return b
    return cutoff_len


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Batch:
    """One optimizer step's data, ``A`` microbatches of ``B`` rows of ``T`` tokens.

    Inputs are the sequence without its last token, targets without its first.
    Rows are right-padded; padding rows (end of an epoch) have an all-False mask.
    """

    tokens_ABT: np.ndarray  # int32 input ids
    targets_ABT: np.ndarray  # int32 next-token ids
    loss_mask_ABT: np.ndarray  # bool: target is a response token
    valid_ABT: np.ndarray  # bool: input token is real (not padding)
    positions_ABT: np.ndarray  # int32 positions (0.. for real tokens, per segment)
    score_at_ABR: np.ndarray  # int32: the positions whose logits the loss reads
    score_mask_ABR: np.ndarray  # bool: that position is a response target (not filler)
    segment_ABT: np.ndarray  # int32 example of a token within its row (1..); 0 = padding


MIN_SCORE_BUCKET = 8


def score_width(most: int, length: int) -> int:
    """A power of two (>= 8, <= length) above ``most`` response tokens in a row."""
    r = MIN_SCORE_BUCKET
    while r < most:
        r *= 2
    return min(r, length)


def score_positions(loss_mask_BT: np.ndarray, width: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Each row's loss positions, left-aligned in ``R`` slots, and which slots are real.

    The model computes logits only at these positions: a response is a few tokens of a
    long prompt, and the [B, T, V] logits would be the largest tensor of a step. R is
    `width`, or :func:`score_width` of the most response tokens in a row, so a run
    compiles a handful of shapes. Filler slots point at position 0 and are masked.
    """
    B, T = loss_mask_BT.shape
    counts = loss_mask_BT.sum(axis=1)
    r = width if width is not None else score_width(int(counts.max(initial=0)), T)
    if counts.max(initial=0) > r:
        raise ValueError(f"a row has {counts.max()} response tokens, more than R={r}")
    at = np.zeros((B, r), np.int32)
    mask = np.zeros((B, r), bool)
    for b in range(B):
        pos = np.flatnonzero(loss_mask_BT[b])
        at[b, :len(pos)] = pos
        mask[b, :len(pos)] = True
    return at, mask


class SFTBatcher:
    """Step -> batch, deterministic in (data, seed, step); its position is the step."""

    def __init__(
        self,
        data: TokenizedSet,
        *,
        batch_size: int,
        micro_batch_size: int,
        cutoff_len: int,
        buckets: Sequence[int],
        seed: int,
        shuffle: bool = True,
        pad_id: int = 0,
        pack: bool = False,
        pack_length: int = 1024,
        row_multiple: int = 1,
        attention_cost: float = 0.0,
        program_cost: float = 0.0,
    ):
        if len(data) == 0:
            raise DataError("empty training set: no examples to fine-tune on")
        self.data = data
        self.batch_size = batch_size
        self.micro = micro_batch_size
        self.cutoff_len = cutoff_len
        self.buckets = tuple(buckets)
        self.seed = seed
        self.shuffle = shuffle
        self.pad_id = pad_id
        self.pack = pack
        self.pack_length = pack_length  # the longest packed row considered
        self.row_multiple = row_multiple  # packed rows per microbatch divide by this
        self.attention_cost = attention_cost  # see packing.plan_rows
        self.program_cost = program_cost  # > 0: shapes planned per run (plan_shapes)
        self.steps_per_epoch = -(-len(data) // batch_size)
        self._perm_cache: dict[int, np.ndarray] = {}
        self._plan: dict[int, tuple[int, int, int]] | None = None  # step -> rows, T, R
        self._plan_steps = 0

    def plan(self, steps: int) -> None:
        """With packing and a ``program_cost``, fix the shapes of steps [0, steps) at
        once (:func:`packing.plan_shapes`); each shape's R is the widest its steps need.
        Without, a no-op: each step picks its own shape."""
        self._plan_steps = steps
        if not (self.pack and self.program_cost > 0):
            return
        plans = []  # per step: per microbatch its examples, the bucket and the cap
        for s in range(steps):
            idx, groups, t, cap = self._groups(s)
            plans.append(([[idx[i] for i in g] for g in groups], t, cap))
        lengths = [[[self._length(i) for i in g] for g in ex] for ex, _, _ in plans]
        shapes = plan_shapes([(ls, t, cap) for ls, (_, t, cap) in zip(lengths, plans, strict=True)],
                             program_cost=self.program_cost, row_multiple=self.row_multiple,
                             attention_cost=self.attention_cost)
        width: dict[tuple[int, int], int] = {}
        for (ex, _, _), ls, (b, t) in zip(plans, lengths, shapes, strict=True):
            responses = [[int(self.data.loss_mask[i][1:].sum()) for i in g] for g in ex]
            most = max(sum(r[j] for j in row) for r, n in zip(responses, ls, strict=True)
                       for row in first_fit_decreasing(n, t))
            width[(b, t)] = max(width.get((b, t), 0), score_width(most, t))
        self._plan = {s: (b, t, width[(b, t)]) for s, (b, t) in enumerate(shapes)}

    def reseed(self, seed: int) -> None:
        """Use another shuffling seed (a resumed run's saved one)."""
        self.seed = seed
        self._perm_cache = {}
        if self._plan is not None:
            self.plan(self._plan_steps)

    def permutation(self, epoch: int) -> np.ndarray:
        """Example order of ``epoch`` (seeded, independent per epoch)."""
        if epoch not in self._perm_cache:
            n = len(self.data)
            perm = rng.numpy_rng(self.seed, "data", epoch).permutation(n) if self.shuffle \
                else np.arange(n)
            self._perm_cache = {epoch: perm}
        return self._perm_cache[epoch]

    def position(self, step: int) -> dict[str, int]:
        """The checkpointable iterator position of global step ``step``."""
        return {"step": step, "epoch": step // self.steps_per_epoch,
                "batch_in_epoch": step % self.steps_per_epoch}

    def batch_at(self, step: int, process: tuple[int, int] | None = None) -> Batch:
        """The batch of optimizer step ``step`` (0-based).

        Args:
          step: global step; epoch = step // steps_per_epoch.
          process: ``(index, count)`` of this process (multi-host): it reads only its
            share of each microbatch's rows; shapes are chosen from the whole global
            batch, so all processes agree on them.
        """
        a = self.batch_size // self.micro
        idx, groups, t, cap = self._groups(step)
        width = None
        if self.pack:
            lengths = [[self._length(idx[i]) for i in g] for g in groups]
            if self._plan is not None:
                if step >= self._plan_steps:
                    raise ValueError(f"step {step} is past the {self._plan_steps} planned")
                b, t, width = self._plan[step]
                bins = [first_fit_decreasing(g, t) for g in lengths]
            else:
                b, t, bins = plan_rows(lengths, bucket=t, cap=cap,
                                       row_multiple=self.row_multiple,
                                       attention_cost=self.attention_cost)
            rows_of = [[[idx[g[i]] for i in row] for row in bn]
                       for g, bn in zip(groups, bins, strict=True)]
            rows_of += [[] for _ in range(a - len(rows_of))]  # microbatches of padding only
        else:
            b = self.micro
            rows_of = [[[i] for i in idx[j * b:(j + 1) * b]] for j in range(a)]
        tokens, targets, loss_mask, valid, positions, segments = (
            np.stack(x) for x in zip(*(self._microbatch(r, b, t) for r in rows_of), strict=True))
        # One score width for the whole step: every microbatch has the same shapes.
        score_at, score_mask = (x.reshape(a, b, -1) for x in
                                score_positions(loss_mask.reshape(a * b, t), width))
        arrays = [tokens, targets, loss_mask, valid, positions, score_at, score_mask, segments]
        if process is not None:
            per = b // process[1]
            if b % process[1]:
                raise DataError(f"{b} rows per microbatch do not split over {process[1]} "
                                "processes")
            arrays = [x[:, process[0] * per:(process[0] + 1) * per] for x in arrays]
        return Batch(*arrays)

    def _length(self, i: int) -> int:
        return len(self.data.ids[i]) - 1  # inputs: every token but the last

    def _groups(self, step: int) -> tuple[np.ndarray, list[list[int]], int, int]:
        """Step ``step``'s example indices, its microbatches (positions into those
        indices; packed only), its unpacked bucket and the longest packed row allowed."""
        epoch, k = divmod(step, self.steps_per_epoch)
        idx = self.permutation(epoch)[k * self.batch_size:(k + 1) * self.batch_size]
        t = padded_length(max(self._length(i) for i in idx), self.buckets, self.cutoff_len)
        a = self.batch_size // self.micro
        groups = [list(range(j * self.micro, min((j + 1) * self.micro, len(idx))))
                  for j in range(a)]
        return idx, [g for g in groups if g], t, max(t, min(self.pack_length, self.cutoff_len))

    def _microbatch(self, rows: list[list[int]], b: int, t: int) -> tuple[np.ndarray, ...]:
        """``b`` rows of ``t`` tokens; row r holds the examples ``rows[r]`` end to end."""
        tokens = np.full((b, t), self.pad_id, np.int32)
        targets = np.full((b, t), self.pad_id, np.int32)
        loss_mask = np.zeros((b, t), bool)
        valid = np.zeros((b, t), bool)
        positions = np.zeros((b, t), np.int32)
        segments = np.zeros((b, t), np.int32)
        for r, members in enumerate(rows):
            at = 0
            for s, i in enumerate(members, start=1):
                ids, m = self.data.ids[i], self.data.loss_mask[i]
                n = len(ids) - 1
                tokens[r, at:at + n] = ids[:-1]
                targets[r, at:at + n] = ids[1:]
                loss_mask[r, at:at + n] = m[1:]
                valid[r, at:at + n] = True
                positions[r, at:at + n] = np.arange(n, dtype=np.int32)
                segments[r, at:at + n] = s
                at += n
        return tokens, targets, loss_mask, valid, positions, segments
