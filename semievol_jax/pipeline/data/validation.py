"""Validating the labeled / unlabeled / test splits, before any compute.

Every problem in a file is collected and raised at once in one `DataError`, one line
each, `file:line: what is wrong` (locations from `readers`; a kind that fails most rows
in one line, `problems`). Oddities that the official release itself has are notes, not
errors: repeated items (two in fpb/unlabeled.csv, a few in every MMLU file) and JSON
`NaN` options; so are the other formats users hold (`fields`: Python-literal option
lists, numeric answer keys).

The unlabeled split's gold answers exist only to score pseudo-labels: `load_unlabeled`
returns questions without an answer field and a separate `GoldAnswers`, so selection
code cannot see them. A row whose gold answer is unusable is kept (the method never
reads it), left out of scoring, with a note; `strict` refuses it, and repeated rows.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

from semievol_jax.errors import DataError
from semievol_jax.pipeline.data.examples import (
    Example,
    GoldAnswers,
    UnlabeledQuestion,
    same_item_key,
)
from semievol_jax.pipeline.data.fields import index_base, index_note, parse_answer, parse_options
from semievol_jax.pipeline.data.problems import Findings
from semievol_jax.pipeline.data.readers import RawRows, read_rows
from semievol_jax.pipeline.tasks import Task, resolve_task

MAX_QUESTION_CHARS = 100_000
ID_COLUMNS = ("id", "question_id")  # first present, unique one names the examples
DUPLICATE_MODES = ("warn", "error", "drop")


class DataWarning(UserWarning):
    """A data oddity that the official release has too: reported, not fatal."""


@dataclasses.dataclass(frozen=True)
class Validated:
    """One split's examples, and the notes about it (one line each)."""

    examples: list[Example]
    notes: list[str]


def _short(loc: str) -> str:
    """`line 12` for `path:12`; dataset locations (`src[split]#3`) as they are."""
    tail = loc.rsplit(":", 1)[-1]
    return f"line {tail}" if tail.isdigit() else loc


def validate_split(source: str | Path, task: Task | str, *, split_name: str | None = None,
                   require_answer: bool | None = None,
                   max_question_chars: int = MAX_QUESTION_CHARS,
                   duplicates: str = "warn", strict: bool = False) -> Validated:
    """Loads and validates one split; raises on any problem, listing all of them.

    Args:
      source: a .csv / .tsv / .jsonl / .json file, a `save_to_disk` directory, or
        `hf:<hub id>`.
      task: the task (or its registered name); decides which columns are needed and
        what a valid answer is.
      split_name: "labeled" | "unlabeled" | "test" | ...; names ids (`test-17`), picks
        the split of a DatasetDict/hub dataset. Default: the file's stem.
      require_answer: whether every row needs an answer. Default: all splits but
        "unlabeled" (whose answers, when present, are gold for scoring only; an unusable
        one is dropped with a note).
      max_question_chars: longer questions are errors (a broken quote can swallow a
        whole file into one field).
      duplicates: rows repeating an earlier row's question, options and answer:
        "warn" (keep, as the official code does), "error", or "drop" (keep the first).
        A repeat with a *different* answer is always an error.
      strict: refuse what is otherwise kept with a note: repeated rows, unusable gold
        answers of the unlabeled split.

    Returns:
      The examples in file order (an unusable unlabeled gold answer is None), and notes.

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
    if strict and duplicates == "warn":
        duplicates = "error"
    raw = read_rows(source, split_name)
    found = Findings(str(source))
    found.problems += raw.problems
    required = ["question"] + (["options"] if task.kind == "choice" else []) + (
        ["answer"] if require_answer else [])
    absent = _absent_columns(raw, required, source, found)
    base = None
    if task.kind == "choice" and not absent:
        base = index_base([row.get("answer") for _, row in raw.rows])
        if base is not None:
            found.note(str(source), "answer-index", index_note(base, len(raw.rows)))

    examples: list[Example] = []
    seen: dict[tuple, tuple[str, str | None]] = {}
    for i, (loc, row) in enumerate(raw.rows):
        n_before = found.count()
        missing = [c for c in required if c not in row and c not in absent]
        if missing:
            found.problem(loc, "missing-field", f"missing field(s) {missing}")
            continue
        if absent:  # still check the columns that are there, so one run lists all
            if "options" not in absent and task.kind == "choice":
                parse_options(row.get("options"), loc, found)
            continue
        question = _question(row["question"], loc, found, max_question_chars)
        options: tuple[str, ...] | None = ()
        if task.kind == "choice" or row.get("options") not in (None, "", "[]", []):
            options = parse_options(row.get("options"), loc, found)
        if options is not None and task.num_options and len(options) != task.num_options:
            found.problem(loc, "option-count", f"{len(options)} options; task {task.name!r} "
                                               f"has {task.num_options}")
        answer = _answer(row.get("answer"), task, options, loc, found, require=require_answer,
                         base=base, strict=strict)
        if found.count() > n_before:
            continue
        key = same_item_key(question, options)
        if key in seen:
            first_loc, first_answer = seen[key]
            if first_answer != answer and None not in (first_answer, answer):
                found.problem(loc, "conflict", f"repeats the question and options of "
                              f"{_short(first_loc)} with a different answer ({answer} vs "
                              f"{first_answer})")
                continue
            msg = f"duplicate of {_short(first_loc)}"
            if duplicates == "error":
                found.problem(loc, "duplicate", msg + (" (--strict)" if strict else ""))
                continue
            found.note(loc, "duplicate", msg + (" (dropped)" if duplicates == "drop" else ""))
            if duplicates == "drop":
                continue
        else:
            seen[key] = (loc, answer)
        meta = {k: v for k, v in row.items() if k not in ("question", "options", "answer")}
        examples.append(Example(f"{split_name}-{i}", question, options, answer, meta))

    if found.problems:
        raise DataError(found.problem_lines(len(raw.rows)), source=str(source))
    return Validated(_assign_ids(examples), found.note_lines())


def _absent_columns(raw: RawRows, required: list[str], source: str | Path,
                    found: Findings) -> list[str]:
    """Required columns the header lacks (reported once, here); no-rows problems."""
    absent: list[str] = []
    if raw.columns is not None and not any(f.kind == "delimiter" for f in raw.problems):
        absent = [c for c in required if c not in raw.columns]
        if absent:
            where = f"{source}:1" if raw.is_text_file else str(source)
            found.problem(where, "columns", f"missing required column(s) {absent}; found "
                                            f"{raw.columns}")
    if not raw.rows and not found.problems:
        where = f"{source}:2" if raw.is_text_file else str(source)
        found.problem(where, "no-rows", "no data rows (only a header, or nothing but "
                                        "blanks)")
    return absent


def _question(question: Any, loc: str, found: Findings, max_chars: int) -> Any:
    if not isinstance(question, str) or not question.strip():
        found.problem(loc, "question-empty", "question is empty" if isinstance(question, str)
                      else f"question is {type(question).__name__}, not text")
    elif len(question) > max_chars:
        found.problem(loc, "question-long", f"question is {len(question):,} characters "
                      f"(limit {max_chars:,}); a stray quote can merge rows")
    return question


def _answer(value: Any, task: Task, options: tuple[str, ...] | None, loc: str,
            found: Findings, *, require: bool, base: int | None, strict: bool) -> str | None:
    """The row's answer; for the unlabeled split (not `require`) an unusable gold answer
    is None with a note, unless `strict`."""
    if require or strict:
        return parse_answer(value, task, options, loc, found, require=require, base=base)
    scratch = Findings(found.source)
    answer = parse_answer(value, task, options, loc, scratch, require=False, base=base)
    for f in scratch.problems:
        found.note(f.loc, "gold-unusable", f"gold {f.text}; the row is still pseudo-labelled "
                   "and left out of pseudo-label scoring (--strict refuses it)")
    return answer


def _assign_ids(examples: list[Example]) -> list[Example]:
    """Uses an `id`/`question_id` column when its values are unique and non-empty."""
    for col in ID_COLUMNS:
        values = [str(e.meta.get(col, "")).strip() for e in examples]
        if all(values) and len(set(values)) == len(values):
            return [dataclasses.replace(e, id=v) for e, v in zip(examples, values,
                                                                  strict=True)]
    return examples


def load_split(source: str | Path, task: Task | str, **kwargs: Any) -> list[Example]:
    """`validate_split`'s examples; its notes as one `DataWarning` (for library use: the
    pipeline prints notes itself)."""
    result = validate_split(source, task, **kwargs)
    if result.notes:
        warnings.warn(DataWarning(f"{source}: {len(result.notes)} note(s):\n"
                                  + "\n".join(result.notes)), stacklevel=2)
    return result.examples


def split_unlabeled(examples: list[Example]) -> tuple[list[UnlabeledQuestion], GoldAnswers]:
    """The unlabeled split's questions without answers, and their gold apart."""
    questions = [UnlabeledQuestion(e.id, e.question, e.options, e.meta) for e in examples]
    gold = GoldAnswers({e.id: e.answer for e in examples if e.answer is not None})
    return questions, gold


def load_unlabeled(source: str | Path, task: Task | str, *, split_name: str = "unlabeled",
                   **kwargs: Any) -> tuple[list[UnlabeledQuestion], GoldAnswers]:
    """Loads the unlabeled split with its gold answers split off.

    Args:
      source, task, kwargs: as `validate_split` (answers are optional here).
      split_name: the split's name (ids are `<split_name>-<index>` without an id column).

    Returns:
      (questions without answers, gold answers of the rows that have a usable one).
    """
    kwargs.setdefault("require_answer", False)
    result = validate_split(source, task, split_name=split_name, **kwargs)
    if result.notes:
        warnings.warn(DataWarning(f"{source}: {len(result.notes)} note(s):\n"
                                  + "\n".join(result.notes)), stacklevel=2)
    return split_unlabeled(result.examples)
