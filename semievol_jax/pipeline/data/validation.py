"""Validating the labeled / unlabeled / test splits, before any compute.

Every problem in a file is collected and raised at once in one `DataError`, one line
each, `file:line: what is wrong` (locations from `readers`). Problems that the official
release itself has are warnings (`DataWarning`), not errors: repeated items (two in
fpb/unlabeled.csv, a few in every MMLU file) and JSON `NaN` options (pandas wrote the
MMLU option "None" as NaN; it is restored as "None").

The unlabeled split's gold answers exist only to score pseudo-labels: `load_unlabeled`
returns questions without an answer field and a separate `GoldAnswers`, so selection
code cannot see them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

from semievol_jax.errors import DataError
from semievol_jax.pipeline.data.examples import (
    Example,
    GoldAnswers,
    UnlabeledQuestion,
    excerpt,
    same_item_key,
)
from semievol_jax.pipeline.data.readers import read_rows
from semievol_jax.pipeline.tasks import LETTERS, Task, canonical_number, resolve_task

MAX_QUESTION_CHARS = 100_000
ID_COLUMNS = ("id", "question_id")  # first present, unique one names the examples
DUPLICATE_MODES = ("warn", "error", "drop")


class DataWarning(UserWarning):
    """A data oddity that the official release has too: reported, not fatal."""


def _parse_options(value: Any, loc: str, problems: list[str],
                   notes: list[str]) -> tuple[str, ...] | None:
    """Options as a tuple of strings; None (and a problem) when unusable."""
    if isinstance(value, str):
        if not value.strip():
            problems.append(f"{loc}: options is empty (expected a JSON list of strings)")
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            problems.append(f"{loc}: options is not valid JSON ({e.msg} at column "
                            f"{e.colno}): {excerpt(value)}")
            return None
    if not isinstance(value, list | tuple):
        problems.append(f"{loc}: options must be a JSON list of strings, got "
                        f"{type(value).__name__}: {excerpt(repr(value))}")
        return None
    if not value:
        problems.append(f"{loc}: options is an empty list")
        return None
    if len(value) > len(LETTERS):
        problems.append(f"{loc}: {len(value)} options; at most {len(LETTERS)} (A-Z)")
        return None
    out = []
    for i, v in enumerate(value):
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, float) and math.isnan(v):
            # pandas reads an option "None" as NaN and json.dumps writes it back as NaN.
            notes.append(f"{loc}: option {LETTERS[i]} is NaN; read as the text 'None'")
            out.append("None")
        else:
            problems.append(f"{loc}: option {LETTERS[i]} is {type(v).__name__} "
                            f"{excerpt(repr(v))}, expected a string")
            return None
    return tuple(out)


def _parse_answer(value: Any, task: Task, options: tuple[str, ...] | None, loc: str,
                  require: bool, problems: list[str]) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        value = ""
    if not isinstance(value, str):
        if task.kind == "choice":
            problems.append(f"{loc}: answer must be a letter, got {type(value).__name__} "
                            f"{value!r}")
            return None
        value = str(value)
    value = value.strip()
    if not value:
        if require:
            problems.append(f"{loc}: answer is empty")
        return None
    if task.kind == "choice":
        letter = value.upper()
        n = len(options) if options else None
        if len(letter) != 1 or letter not in LETTERS or (n is not None and
                                                         LETTERS.index(letter) >= n):
            valid = f"A-{LETTERS[n - 1]}" if n else "A-Z"
            problems.append(f"{loc}: answer {excerpt(value)!r} is not a valid letter for "
                            f"{n or 'its'} options ({valid})")
            return None
        return letter
    if task.kind == "value" and canonical_number(value) is None:
        problems.append(f"{loc}: answer {excerpt(value)!r} is not a number")
        return None
    return value


def _line_of(problem: str) -> int:
    """Sort key: the line (or row) a problem names; file-level problems first."""
    m = re.search(r"(?::|\[|#)(\d+)(?:\]|:)", problem)
    return int(m.group(1)) if m else 0


def _short(loc: str) -> str:
    """`line 12` for `path:12`; dataset locations (`src[split]#3`) as they are."""
    tail = loc.rsplit(":", 1)[-1]
    return f"line {tail}" if tail.isdigit() else loc


def load_split(source: str | Path, task: Task | str, *, split_name: str | None = None,
               require_answer: bool | None = None,
               max_question_chars: int = MAX_QUESTION_CHARS,
               duplicates: str = "warn") -> list[Example]:
    """Loads and validates one split; raises on any problem, listing all of them.

    Args:
      source: a .csv / .jsonl / .json file, a `save_to_disk` directory, or `hf:<hub id>`.
      task: the task (or its registered name); decides which columns are needed and
        what a valid answer is.
      split_name: "labeled" | "unlabeled" | "test" | ...; names ids (`test-17`), picks
        the split of a DatasetDict/hub dataset. Default: the file's stem.
      require_answer: whether every row needs an answer. Default: all splits but
        "unlabeled" (whose answers, when present, are gold for scoring only).
      max_question_chars: longer questions are errors (a broken quote can swallow a
        whole file into one field).
      duplicates: rows repeating an earlier row's question, options and answer:
        "warn" (keep, as the official code does), "error", or "drop" (keep the first).
        A repeat with a *different* answer is always an error.

    Returns:
      The examples in file order.

    Raises:
      DataError: every problem found, one `file:line: what` line each.
    """
    task = resolve_task(task)
    if duplicates not in DUPLICATE_MODES:
        raise ValueError(f"duplicates must be one of {DUPLICATE_MODES}, got {duplicates!r}")
    if split_name is None:
        split_name = Path(str(source)).stem if not str(source).startswith("hf:") else "train"
    if require_answer is None:
        require_answer = split_name != "unlabeled"
    raw = read_rows(source, split_name)
    problems, notes = list(raw.problems), []
    required = ["question"] + (["options"] if task.kind == "choice" else []) + (
        ["answer"] if require_answer else [])
    absent: list[str] = []  # required columns the header lacks: reported once, here
    if raw.columns is not None:
        absent = [c for c in required if c not in raw.columns]
        if absent:
            where = f"{source}:1" if raw.is_text_file else str(source)
            problems.append(f"{where}: missing required column(s) {absent}; found "
                            f"{raw.columns}")
    if not raw.rows and not problems:
        where = f"{source}:2" if raw.is_text_file else str(source)
        problems.append(f"{where}: no data rows (only a header, or nothing but blanks)")

    examples: list[Example] = []
    seen: dict[tuple, tuple[str, str | None]] = {}
    for i, (loc, row) in enumerate(raw.rows):
        n_before = len(problems)
        missing = [c for c in required if c not in row and c not in absent]
        if missing:
            problems.append(f"{loc}: missing field(s) {missing}")
            continue
        if absent:  # still check the columns that are there, so one run lists all
            if "options" not in absent and task.kind == "choice":
                _parse_options(row.get("options"), loc, problems, notes)
            continue
        question = row["question"]
        if not isinstance(question, str) or not question.strip():
            problems.append(f"{loc}: question is empty" if isinstance(question, str)
                            else f"{loc}: question is {type(question).__name__}, not text")
        elif len(question) > max_question_chars:
            problems.append(f"{loc}: question is {len(question):,} characters (limit "
                            f"{max_question_chars:,}); a stray quote can merge rows")
        options: tuple[str, ...] | None = ()
        if task.kind == "choice" or row.get("options") not in (None, "", "[]", []):
            options = _parse_options(row.get("options"), loc, problems, notes)
        if options is not None and task.num_options and len(options) != task.num_options:
            problems.append(f"{loc}: {len(options)} options; task {task.name!r} has "
                            f"{task.num_options}")
        answer = _parse_answer(row.get("answer"), task, options, loc, require_answer,
                               problems)
        if len(problems) > n_before:
            continue
        key = same_item_key(question, options)
        if key in seen:
            first_loc, first_answer = seen[key]
            if first_answer != answer and None not in (first_answer, answer):
                problems.append(f"{loc}: repeats the question and options of "
                                f"{_short(first_loc)} with a different answer ({answer} vs "
                                f"{first_answer})")
                continue
            msg = f"{loc}: duplicate of {_short(first_loc)}"
            if duplicates == "error":
                problems.append(msg)
                continue
            notes.append(msg + (" (dropped)" if duplicates == "drop" else ""))
            if duplicates == "drop":
                continue
        else:
            seen[key] = (loc, answer)
        meta = {k: v for k, v in row.items() if k not in ("question", "options", "answer")}
        examples.append(Example(f"{split_name}-{i}", question, options, answer, meta))

    if problems:
        raise DataError(sorted(problems, key=_line_of), source=str(source))
    if notes:
        warnings.warn(DataWarning(f"{source}: {len(notes)} note(s):\n" + "\n".join(notes)),
                      stacklevel=2)
    return _assign_ids(examples)


def _assign_ids(examples: list[Example]) -> list[Example]:
    """Uses an `id`/`question_id` column when its values are unique and non-empty."""
    for col in ID_COLUMNS:
        values = [str(e.meta.get(col, "")).strip() for e in examples]
        if all(values) and len(set(values)) == len(values):
            return [dataclasses.replace(e, id=v) for e, v in zip(examples, values,
                                                                  strict=True)]
    return examples


def load_unlabeled(source: str | Path, task: Task | str, *, split_name: str = "unlabeled",
                   **kwargs: Any) -> tuple[list[UnlabeledQuestion], GoldAnswers]:
    """Loads the unlabeled split with its gold answers split off.

    Args:
      source, task, kwargs: as `load_split` (answers are optional here).
      split_name: the split's name (ids are `<split_name>-<index>` without an id column).

    Returns:
      (questions without answers, gold answers of the rows that have one).
    """
    kwargs.setdefault("require_answer", False)
    examples = load_split(source, task, split_name=split_name, **kwargs)
    questions = [UnlabeledQuestion(e.id, e.question, e.options, e.meta) for e in examples]
    gold = GoldAnswers({e.id: e.answer for e in examples if e.answer is not None})
    return questions, gold

