"""Packing: several examples of one step in one row, each attending only to itself.

A step's examples are laid end to end in rows of one length P (first-fit decreasing),
each example its own *segment*: positions restart at 0, and attention is causal
within a segment only (``Llama(segment_BT=...)``). The step sees exactly the tokens it
would see unpacked, so its loss and gradients are the unpacked ones (up to float
summation order); what changes is how much of the batch is padding. Short prompts
bucketed to a 1.5x-spaced length waste up to a third of every row, and a batch whose
longest example is 3x its mean wastes two thirds.

The row length is chosen per step among a few candidates to minimise the step's
estimated cost: rows x P x (1 + attention_cost x P), where ``attention_cost`` is the
attention's FLOPs per token per key position over the projections' per token (longer
rows hold more examples but attend over more keys; the block-diagonal mask does not
make dense attention cheaper).
"""

from __future__ import annotations

from collections.abc import Sequence

PACK_STEP = 128  # candidate row lengths above the longest example: multiples of this


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of example indices whose lengths sum to at most ``capacity``.

    Longest first, each into the first bin with room (ties in index order), so the
    packing is a pure function of the lengths.

    Raises:
      ValueError: an example longer than ``capacity``.
    """
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"example {i} has {n} tokens, more than the row length {capacity}")
        for b, r in enumerate(room):
            if n <= r:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(capacity - n)
    return bins


def row_lengths(longest: int, bucket: int, cap: int) -> list[int]:
    """Candidate row lengths: the unpacked bucket, then multiples of PACK_STEP above the
    longest example up to ``cap`` (never below the bucket's own length)."""
    out = {bucket}
    p = -(-longest // PACK_STEP) * PACK_STEP
    while p <= cap:
        out.add(max(p, longest))
        p += PACK_STEP
    return sorted(out)


def plan_rows(groups: Sequence[Sequence[int]], *, bucket: int, cap: int,
              row_multiple: int = 1, attention_cost: float = 0.0
              ) -> tuple[int, int, list[list[list[int]]]]:
    """Packs each group (a microbatch's example lengths) into rows of one shared length.

    Args:
      groups: per microbatch, the token count of each example.
      bucket: the unpacked padded length of the longest example (a candidate).
      cap: the longest row considered (at least ``bucket`` is always allowed).
      row_multiple: rows per microbatch are a multiple of this (the mesh's batch ways).
      attention_cost: attention FLOPs per token per key position / projection FLOPs
        per token (``Llama``: 2 D / parameters of one block).

    Returns:
      ``(rows, length, bins)``: rows per microbatch, the row length, and per group its
      bins (lists of indices into that group), at most ``rows`` of them.
    """
    longest = max(max(g) for g in groups)
    best = None
    for p in row_lengths(longest, bucket, max(cap, bucket)):
        packed = [first_fit_decreasing(g, p) for g in groups]
        rows = max(len(b) for b in packed)
        rows = -(-rows // row_multiple) * row_multiple
        cost = rows * p * (1.0 + attention_cost * p)
        if best is None or cost < best[0]:
            best = (cost, rows, p, packed)
    _, rows, p, packed = best
    return rows, p, packed
