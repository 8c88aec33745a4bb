"""The records of a task's splits: labeled / test examples, unlabeled questions (no
answer field, by design), and the unlabeled split's gold answers kept apart.

Also what makes two rows the same item, which validation (repeated rows) and leakage
(rows shared by splits) both count by.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Example:
    """One question of a labeled or test split.

    Attributes:
      id: unique within its split (`id` / `question_id` column, else `<split>-<index>`).
      question: the question text.
      options: option texts, labelled A, B, ... in order; empty for value/text tasks.
      answer: gold letter (choice), number (value) or text; None when unlabeled.
      meta: every other column of the row, verbatim (Subject, category, ...).
    """

    id: str
    question: str
    options: tuple[str, ...]
    answer: str | None
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)


@dataclasses.dataclass(frozen=True)
class UnlabeledQuestion:
    """One question of the unlabeled split; there is deliberately no answer field."""

    id: str
    question: str
    options: tuple[str, ...]
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)


class GoldAnswers:
    """Gold answers of the unlabeled split, keyed by question id; for scoring only.

    Selection functions refuse this type, so it travels separately from the questions.
    """

    __slots__ = ("_answers",)
    __iter__ = None  # not iterable: no accidental `for answer in gold` in pipeline code

    def __init__(self, answers: Mapping[str, str]):
        self._answers = dict(answers)

    def __getitem__(self, qid: str) -> str:
        return self._answers[qid]

    def get(self, qid: str, default: str | None = None) -> str | None:
        """The gold answer of `qid`, or `default` when it has none."""
        return self._answers.get(qid, default)

    def __contains__(self, qid: object) -> bool:
        return qid in self._answers

    def __len__(self) -> int:
        return len(self._answers)

    def ids(self) -> list[str]:
        """The question ids that have a gold answer."""
        return list(self._answers)

    def __repr__(self) -> str:  # never print the answers into a log by accident
        return f"GoldAnswers({len(self._answers)} answers)"



def same_item_key(question: str, options: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """What makes two rows the same item: question and options, whitespace/case-folded.

    Question text alone is not enough: MMLU repeats stems such as "Which of the
    following is true?" with different options.
    """
    norm = lambda s: " ".join(s.split()).casefold()  # noqa: E731
    return norm(question), tuple(norm(o) for o in options)


def excerpt(s: str, n: int = 60) -> str:
    """`s` on one line, cut to `n` characters: how problems and reports quote a field."""
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 3] + "..."
