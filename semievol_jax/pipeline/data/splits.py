"""A run's three splits, loaded as the data stage loads them (and `semievol validate`).

Every file's problems are reported at once; the notes (formats read, repeated rows,
unusable unlabeled gold) and the leakage line come back for the caller to print.
Leakage, the share of the test split that labeled or unlabeled also hold, above the
allowed share refuses the run: a model scored on questions it was tuned on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from semievol_jax.errors import DataError
from semievol_jax.pipeline.data.examples import Example, GoldAnswers, UnlabeledQuestion
from semievol_jax.pipeline.data.leakage import LeakageReport, find_leakage
from semievol_jax.pipeline.data.validation import split_unlabeled, validate_split
from semievol_jax.pipeline.tasks import Task

SPLITS = ("labeled", "unlabeled", "test")
LEAKAGE_SETTING = "data.max_leakage"


@dataclasses.dataclass(frozen=True)
class Splits:
    """The loaded splits, their notes and their leakage."""

    labeled: list[Example]
    unlabeled: list[UnlabeledQuestion]
    gold: GoldAnswers  # the unlabeled split's usable gold answers (scoring only)
    test: list[Example]
    notes: list[str]
    leakage: LeakageReport

    def counts(self) -> dict[str, int]:
        """Rows per split (after the row limit)."""
        return {"labeled": len(self.labeled), "unlabeled": len(self.unlabeled),
                "test": len(self.test)}


class SplitsError(DataError):
    """The problems of a run's split files; `rows` counts the splits that loaded."""

    def __init__(self, error: DataError, rows: dict[str, int]):
        super().__init__(str(error))
        self.problems = error.problems
        self.rows = rows


def missing_sources(sources: Mapping[str, str]) -> list[str]:
    """Problems for splits that have no source, one line each naming the setting."""
    out = []
    for split in SPLITS:
        if sources.get(split):
            continue
        hint = ""
        if split == "unlabeled" and Path(sources.get("labeled") or "").is_file():
            beside = Path(sources["labeled"]).parent
            if not any(beside.glob("unlabeled.*")):
                hint = (f"; {beside} holds no unlabeled file (the official usmle and "
                        "mmlu_pro releases ship none)")
        out.append(f"data.{split}: not set: give its CSV / TSV / JSONL file, datasets "
                   f"directory or hf:owner/name{hint}")
    return out


def load_splits(sources: Mapping[str, str], task: Task, *, max_rows: int = 0,
                strict: bool = False, max_leakage: float = 1.0) -> Splits:
    """Loads and validates the labeled / unlabeled / test splits of `sources`.

    Args:
      sources: split name -> file, directory or `hf:` id.
      task: the task the splits are of.
      max_rows: keep the first N rows of each split (0 = all).
      strict: refuse repeated rows and unusable unlabeled gold answers.
      max_leakage: the largest share of the test split that may also be in labeled or
        unlabeled.

    Raises:
      SplitsError: every problem of every file (and a missing source).
      DataError: too much leakage.
    """
    missing = missing_sources(sources)
    errors, loaded, notes = [DataError(missing)] if missing else [], {}, []
    for split in SPLITS:
        if not sources.get(split):
            continue
        try:
            result = validate_split(sources[split], task, split_name=split,
                                    require_answer=split != "unlabeled", strict=strict)
        except DataError as e:  # keep going: report every file's problems at once
            errors.append(e)
            continue
        loaded[split] = result.examples[:max_rows] if max_rows else result.examples
        notes += result.notes
    if errors:
        raise SplitsError(DataError.combine(errors),
                          {k: len(v) for k, v in loaded.items()})
    unlabeled, gold = split_unlabeled(loaded["unlabeled"])
    leakage = find_leakage({"labeled": loaded["labeled"], "unlabeled": unlabeled,
                            "test": loaded["test"]})
    if leakage.test_share > max_leakage:
        raise DataError([f"{leakage.test_line()}: more than {LEAKAGE_SETTING}="
                         f"{max_leakage:g} of the test split; remove those rows, or allow "
                         f"it with {LEAKAGE_SETTING}=1"])
    return Splits(loaded["labeled"], unlabeled, gold, loaded["test"], notes, leakage)

