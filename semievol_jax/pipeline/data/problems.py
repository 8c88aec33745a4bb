"""Problems and notes about a split file, collected row by row and reported in a few lines.

Each finding has a location (`file:line` as an editor shows it), a kind (a stable tag:
`answer-not-letter`, `options-not-json`, ...) and its text. When most rows of a file
fail the same way (a whole column holds numbers, or Python lists, or the file is
tab-separated but named .csv) one line says so, with the first row and a hint, instead
of one line per row; a few scattered bad rows are listed one by one.
"""

from __future__ import annotations

import dataclasses
import re

# A kind that fails in at least this many rows, and this share of the file's rows, is
# reported in one line.
COLLAPSE_MIN_ROWS = 5
COLLAPSE_MIN_SHARE = 0.5
# Notes of one kind beyond this many are summarised in one line.
MAX_NOTES_PER_KIND = 3
# Notes about how a file is written (not about one row): one line per file.
FORMAT_NOTES = ("options-python-literal", "option-nan")

HINTS = {
    "answer-not-letter": "answers must be option letters (A, B, ...); a column of whole "
                         "numbers is read as option indices (0-based when a 0 appears)",
    "answer-out-of-range": "an index or letter past the row's last option: is the "
                           "answer column the right one?",
    "answer-empty": "every labeled and test row needs its answer",
    "answer-not-number": "this task's answers are numbers",
    "options-not-json": "options must be a list, written as JSON (\"[\\\"a\\\", "
                        "\\\"b\\\"]\") or as a Python list (['a', 'b']); is the "
                        "delimiter right (a tab-separated file must be named .tsv)?",
    "options-not-list": "options must be a list of strings",
    "option-count": "this task has a fixed number of options",
    "fields": "unbalanced quotes, or a delimiter other than the file's suffix says "
              "(.csv: comma, .tsv: tab)",
    "question-empty": "every row needs its question text",
    "duplicate": "the same question and options appear more than once",
}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem or note about one row (or the file: line 1)."""

    loc: str  # `file:line` (a multi-line record: its first line), or a dataset row
    kind: str  # stable tag, a key of HINTS where one applies
    text: str  # what is wrong, after the location

    def line(self) -> str:
        return f"{self.loc}: {self.text}"


class Findings:
    """Problems and notes of one file, as rows are validated."""

    def __init__(self, source: str):
        self.source = source
        self.problems: list[Finding] = []
        self.notes: list[Finding] = []

    def problem(self, loc: str, kind: str, text: str) -> None:
        self.problems.append(Finding(loc, kind, text))

    def note(self, loc: str, kind: str, text: str) -> None:
        self.notes.append(Finding(loc, kind, text))

    def count(self) -> int:
        return len(self.problems)

    def problem_lines(self, num_rows: int) -> list[str]:
        """The problems in line order, a kind that fails most rows in one line."""
        return _collapse(self.source, self.problems, num_rows)

    def note_lines(self) -> list[str]:
        """Notes: a format note (FORMAT_NOTES) once per file with its row count, other
        kinds at most MAX_NOTES_PER_KIND lines, then one line counting the rest."""
        out = []
        for kind, items in _by_kind(self.notes).items():
            if kind in FORMAT_NOTES and len(items) > 1:
                out.append(f"{items[0].line()} ({len(items)} rows like this)")
                continue
            out += [f.line() for f in items[:MAX_NOTES_PER_KIND]]
            if len(items) > MAX_NOTES_PER_KIND:
                out.append(f"{self.source}: ... and {len(items) - MAX_NOTES_PER_KIND} more "
                           f"like that ({kind})")
        return out


def _by_kind(findings: list[Finding]) -> dict[str, list[Finding]]:
    groups: dict[str, list[Finding]] = {}
    for f in findings:
        groups.setdefault(f.kind, []).append(f)
    return groups


def line_of(text: str) -> int:
    """Sort key: the line (or row) a problem names; file-level problems first."""
    m = re.search(r"(?::|\[|#)(\d+)(?:\]|:)", text)
    return int(m.group(1)) if m else 0


def _collapse(source: str, problems: list[Finding], num_rows: int) -> list[str]:
    lines = []
    for kind, items in _by_kind(problems).items():
        rows = len({f.loc for f in items})
        if rows >= COLLAPSE_MIN_ROWS and rows >= COLLAPSE_MIN_SHARE * max(num_rows, 1):
            first = min(items, key=lambda f: line_of(f.line()))
            hint = f"; hint: {HINTS[kind]}" if kind in HINTS else ""
            lines.append(f"{first.loc}: {rows} of {num_rows} rows fail the same way, "
                         f"e.g. this one: {first.text}{hint}")
        else:
            lines += [f.line() for f in items]
    return sorted(lines, key=line_of)
