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
    """Overlaps between every pair of splits (zero-count pairs included).

    Attributes:
      overlaps: one per pair of splits.
      test_rows: rows of the "test" split (0 when there is none).
      test_rows_shared: test rows whose item is also in another split.
    """

    overlaps: tuple[Overlap, ...]
    test_rows: int = 0
    test_rows_shared: int = 0

    @property
    def test_share(self) -> float:
        """The fraction of the test split that another split holds too."""
        return self.test_rows_shared / self.test_rows if self.test_rows else 0.0

    def test_line(self) -> str:
        """One line for the terminal and the report: what the test split shares."""
        pairs = ", ".join(f"{o.splits[0]}/{o.splits[1]} {o.count}" for o in self.overlaps
                          if "test" in o.splits)
        return (f"leakage: {self.test_rows_shared} of {self.test_rows} test rows "
                f"({100 * self.test_share:.1f}%) also in another split ({pairs} shared "
                "items)")

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
    splits = {name: list(items) for name, items in splits.items()}
    index: dict[str, dict[tuple, str]] = {}
    for name, items in splits.items():
        keyed: dict[tuple, str] = {}
        for e in items:
            keyed.setdefault(same_item_key(e.question, e.options), e.id)
        index[name] = keyed
    names = list(index)
    others = {k for name in names if name != "test" for k in index[name]}
    test = splits.get("test", [])
    test_shared = sum(same_item_key(e.question, e.options) in others for e in test)
    overlaps = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = [k for k in index[a] if k in index[b]]
            ex = tuple((index[a][k], index[b][k], excerpt(k[0])) for k in shared[:max_examples])
            overlaps.append(Overlap((a, b), len(shared), ex))
    return LeakageReport(tuple(overlaps), test_rows=len(test), test_rows_shared=test_shared)

