"""Items shared by splits (the same question and options, case/whitespace-folded)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from semievol_jax.pipeline.data.examples import (
    Example,
    UnlabeledQuestion,
    excerpt,
    same_item_key,
)


@dataclasses.dataclass(frozen=True)
class Overlap:
    """Items shared by two splits.

    Attributes:
      splits: the two split names.
      count: how many items of the first split also occur in the second.
      examples: up to `max_examples` (id in first, id in second, question excerpt).
    """

    splits: tuple[str, str]
    count: int
    examples: tuple[tuple[str, str, str], ...]


@dataclasses.dataclass(frozen=True)
class LeakageReport:
    """Overlaps between every pair of splits (zero-count pairs included)."""

    overlaps: tuple[Overlap, ...]

    @property
    def total(self) -> int:
        """Sum of the pair counts."""
        return sum(o.count for o in self.overlaps)

    def summary(self) -> str:
        """One line per pair, e.g. `labeled/test: 9 shared`."""
        return "\n".join(f"{a}/{b}: {o.count} shared" for o in self.overlaps
                         for a, b in [o.splits])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for metrics files."""
        return {f"{o.splits[0]}/{o.splits[1]}": {"count": o.count,
                                                 "examples": [list(e) for e in o.examples]}
                for o in self.overlaps}


def find_leakage(splits: Mapping[str, Iterable[Example | UnlabeledQuestion]], *,
                 max_examples: int = 5) -> LeakageReport:
    """Counts items (same question and options, case/whitespace-folded) shared by splits.

    Args:
      splits: split name -> its examples or unlabeled questions.
      max_examples: how many shared items to quote per pair.
    """
    index: dict[str, dict[tuple, str]] = {}
    for name, items in splits.items():
        keyed: dict[tuple, str] = {}
        for e in items:
            keyed.setdefault(same_item_key(e.question, e.options), e.id)
        index[name] = keyed
    names = list(index)
    overlaps = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = [k for k in index[a] if k in index[b]]
            ex = tuple((index[a][k], index[b][k], excerpt(k[0])) for k in shared[:max_examples])
            overlaps.append(Overlap((a, b), len(shared), ex))
    return LeakageReport(tuple(overlaps))

