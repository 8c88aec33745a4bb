"""Summaries of results: one definition for the terminal, the reports and the demo.

The standard deviation is the sample one (ddof=1), as a table of a few seeds reports it;
a single value has none. Balanced accuracy is the mean recall over the gold classes: a
model that gives one answer to every row scores 1/classes, however large that class.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1) of `values`; std None for one value.

    Raises:
      ValueError: no values.
    """
    if len(values) == 0:
        raise ValueError("mean_std of no values")
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def answer_summary(rows: Iterable[Mapping]) -> dict:
    """Recall per gold class, their mean (balanced accuracy), gold and answer counts of
    scored predictions (rows with `gold`, `pred` and `correct`, as `predictions.jsonl`).

    Raises:
      ValueError: no rows.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("answer_summary of no rows")
    gold = Counter(r["gold"] for r in rows)
    recall = {g: sum(bool(r["correct"]) for r in rows if r["gold"] == g) / n
              for g, n in sorted(gold.items())}
    return {"balanced_accuracy": sum(recall.values()) / len(recall), "recall": recall,
            "gold": dict(sorted(gold.items())),
            "answers": dict(sorted(Counter(str(r["pred"]) for r in rows).items()))}
