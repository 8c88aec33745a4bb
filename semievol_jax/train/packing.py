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

Every distinct step shape is one more compiled program (seconds each for a deep model
on a CPU). ``plan_shapes`` plans a whole run at once: it picks a few shared shapes and
gives each step the cheapest of them that holds it, weighing the steps' work against a
price per program.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
        rows = _rows(packed, row_multiple)
        cost = _step_cost(rows, p, attention_cost)
        if best is None or cost < best[0]:
            best = (cost, rows, p, packed)
    _, rows, p, packed = best
    return rows, p, packed


def _step_cost(rows: int, length: int, attention_cost: float) -> float:
    return rows * length * (1.0 + attention_cost * length)


def _rows(packed: Sequence[Sequence[Sequence[int]]], row_multiple: int) -> int:
    """Rows per microbatch for these groups' bins: the most bins, rounded up to a
    multiple of ``row_multiple``."""
    return -(-max(len(b) for b in packed) // row_multiple) * row_multiple


def _rows_needed(groups: Sequence[Sequence[int]], length: int, row_multiple: int) -> int:
    return _rows([first_fit_decreasing(g, length) for g in groups], row_multiple)


def plan_shapes(steps: Sequence[tuple[Sequence[Sequence[int]], int, int]], *,
                program_cost: float, row_multiple: int = 1, attention_cost: float = 0.0
                ) -> list[tuple[int, int]]:
    """One (rows, length) shape per step, from a few shapes shared by the whole run.

    Args:
      steps: per step, ``(groups, bucket, cap)`` as :func:`plan_rows` takes them.
      program_cost: the price of one more shape (one more compiled program), in the
        steps' cost unit (rows x length x (1 + attention_cost x length)).
      row_multiple, attention_cost: as :func:`plan_rows`.

    Starts from every shape some step would pick for itself at one of its candidate
    lengths, then drops, one at a time, the shape whose loss lowers the run's cost
    most (each step moves to the cheapest remaining shape that holds it: a length at
    least its longest example, enough rows), while the cost falls. A pure function of
    the lengths.
    """
    needed: list[dict[int, int]] = []  # per step: length -> rows it needs there
    shapes: set[tuple[int, int]] = set()
    for groups, bucket, cap in steps:
        longest = max(max(g) for g in groups)
        own = {p: _rows_needed(groups, p, row_multiple)
               for p in row_lengths(longest, bucket, max(cap, bucket))}
        needed.append(own)
        shapes.update((rows, p) for p, rows in own.items())
    shapes_u = sorted(shapes)
    cost = np.full((len(steps), len(shapes_u)), np.inf)
    for s, (groups, _, _) in enumerate(steps):
        longest = max(max(g) for g in groups)
        for u, (rows, p) in enumerate(shapes_u):
            if p < longest:
                continue
            if p not in needed[s]:
                needed[s][p] = _rows_needed(groups, p, row_multiple)
            if rows >= needed[s][p]:
                cost[s, u] = _step_cost(rows, p, attention_cost)
    kept = np.ones(len(shapes_u), bool)

    def total(mask: np.ndarray) -> float:
        return float(cost[:, mask].min(axis=1).sum()) + program_cost * int(mask.sum())

    best = total(kept)
    while kept.sum() > 1:
        trials = []
        for u in np.flatnonzero(kept):
            mask = kept.copy()
            mask[u] = False
            trials.append((total(mask), u))
        value, u = min(trials)
        if not value < best:
            break
        best, kept[u] = value, False
    picks = np.where(kept, cost, np.inf).argmin(axis=1)
    return [shapes_u[u] for u in picks]
