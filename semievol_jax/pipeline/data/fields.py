"""What a row's `options` and `answer` fields mean, in the formats users hold.

Options: a JSON list of strings (the official release), a Python list literal (what
pandas writes for a list column: `['a', 'b']`), or a list already (JSONL, datasets); a
JSON `NaN` option is the text "None" (pandas wrote MMLU's option "None" as NaN).

Answers of a choice task: a letter, or, when every answer in the file is a whole
number, an option index. The rule, per file: 0-based when some answer is 0 (the
Hugging Face MMLU copies), else 1-based (some science-QA sets); one note says which.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Sequence
from typing import Any

from semievol_jax.pipeline.data.examples import excerpt
from semievol_jax.pipeline.data.problems import Findings
from semievol_jax.pipeline.tasks import LETTERS, Task, canonical_number

_WHOLE = re.compile(r"^\s*(\d+)(?:\.0+)?\s*$")  # "2", " 2 ", "2.0" (pandas' float column)


def parse_options(value: Any, loc: str, found: Findings) -> tuple[str, ...] | None:
    """Options as a tuple of strings; None (and a problem) when unusable."""
    if isinstance(value, str):
        text = value
        if not text.strip():
            found.problem(loc, "options-not-json", "options is empty (expected a list of "
                                                   "strings)")
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            value = _python_list(text)
            if value is None:
                quote = " (a quote left open in an earlier field?)" if '""' in text else ""
                found.problem(loc, "options-not-json", f"options is not valid JSON ({e.msg} "
                              f"at column {e.colno}) nor a Python list: {excerpt(text)}"
                              f"{quote}")
                return None
            found.note(loc, "options-python-literal", "options written as a Python list "
                       "(what pandas writes); read as that list")
    if not isinstance(value, list | tuple):
        found.problem(loc, "options-not-list", f"options must be a list of strings, got "
                      f"{type(value).__name__}: {excerpt(repr(value))}")
        return None
    if not value:
        found.problem(loc, "options-not-list", "options is an empty list")
        return None
    if len(value) > len(LETTERS):
        found.problem(loc, "options-not-list", f"{len(value)} options; at most "
                                               f"{len(LETTERS)} (A-Z)")
        return None
    out = []
    for i, v in enumerate(value):
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, float) and math.isnan(v):
            found.note(loc, "option-nan", f"option {LETTERS[i]} is NaN; read as the text "
                                          "'None'")
            out.append("None")
        else:
            found.problem(loc, "options-not-list", f"option {LETTERS[i]} is "
                          f"{type(v).__name__} {excerpt(repr(v))}, expected a string")
            return None
    return tuple(out)


def _python_list(text: str) -> list | tuple | None:
    """A Python list / tuple literal of strings (and NaN-free scalars), or None."""
    stripped = text.strip()
    if not stripped.startswith(("[", "(")):
        return None
    try:
        value = ast.literal_eval(stripped)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, list | tuple) else None


def _whole_number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and (m := _WHOLE.match(value)):
        return int(m.group(1))
    return None


def index_base(answers: Sequence[Any]) -> int | None:
    """0 or 1 when every non-empty answer is a whole number (the file's answers are
    option indices: 0-based when a 0 appears, else 1-based); None otherwise."""
    values = [a for a in answers if not _is_empty(a)]
    numbers = [_whole_number(a) for a in values]
    if not values or any(n is None for n in numbers):
        return None
    return 0 if 0 in numbers else 1


def index_note(base: int, num_rows: int) -> str:
    """The one note saying how a file's numeric answers were read."""
    why = "a 0 appears" if base == 0 else "no 0 appears"
    return (f"answers are option indices, read as {base}-based ({why}): {base} -> A, "
            f"{base + 1} -> B, ... ({num_rows} rows)")


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and not value.strip())


def parse_answer(value: Any, task: Task, options: tuple[str, ...] | None, loc: str,
                 found: Findings, *, require: bool, base: int | None) -> str | None:
    """The answer as the task keeps it (a letter for a choice task); None when empty or
    unusable (a problem, when it is unusable or required)."""
    if _is_empty(value):
        if require:
            found.problem(loc, "answer-empty", "answer is empty")
        return None
    n = len(options) if options else None
    if task.kind == "choice":
        if base is not None:
            return _letter_of_index(_whole_number(value), base, n, loc, found)
        letter = str(value).strip().upper()
        if len(letter) != 1 or letter not in LETTERS:
            hint = " (one option's text?)" if options and any(
                str(value).strip().casefold() == o.strip().casefold() for o in options) else ""
            found.problem(loc, "answer-not-letter", f"answer {excerpt(str(value))!r} is not a "
                          f"letter for {n or 'its'} options{hint}")
            return None
        if n is not None and LETTERS.index(letter) >= n:
            found.problem(loc, "answer-out-of-range", f"answer {letter!r} is not a valid "
                          f"letter for {n} options (A-{LETTERS[n - 1]})")
            return None
        return letter
    text = str(value).strip()
    if task.kind == "value" and canonical_number(text) is None:
        found.problem(loc, "answer-not-number", f"answer {excerpt(text)!r} is not a number")
        return None
    return text


def _letter_of_index(index: int, base: int, n: int | None, loc: str,
                     found: Findings) -> str | None:
    i = index - base
    if i < 0 or (n is not None and i >= n) or i >= len(LETTERS):
        top = (n or len(LETTERS)) - 1 + base
        found.problem(loc, "answer-out-of-range", f"answer {index} is not a {base}-based "
                      f"index for {n or 'its'} options ({base}-{top})")
        return None
    return LETTERS[i]
