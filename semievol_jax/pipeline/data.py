"""Loading and validating the labeled / unlabeled / test splits, before any compute.

Formats: the official SemiEvol CSV (`question`, `options` as a JSON list of strings,
`answer` letter, extra columns kept in `Example.meta`), JSONL with the same fields, a
`datasets` directory written by `save_to_disk`, or a hub id written `hf:owner/name`
(needs network; `datasets.load_dataset`).

Every problem in a file is collected and raised at once in one `DataError`, one line
each, `file:line: what is wrong`, with line numbers as an editor shows them (the CSV
header is line 1; a record spanning several lines is named by its first line).
Problems that the official release itself has are warnings (`DataWarning`), not
errors: repeated items (two in fpb/unlabeled.csv, a few in every MMLU file) and JSON
`NaN` options (pandas wrote the MMLU option "None" as NaN; it is restored as "None").

The unlabeled split's gold answers exist only to score pseudo-labels: `load_unlabeled`
returns questions without an answer field and a separate `GoldAnswers`, so selection
code cannot see them.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from semievol_jax.errors import UserError
from semievol_jax.pipeline.tasks import LETTERS, Task, canonical_number, resolve_task

MAX_QUESTION_CHARS = 100_000
ID_COLUMNS = ("id", "question_id")  # first present, unique one names the examples
DUPLICATE_MODES = ("warn", "error", "drop")
_SURROGATE = re.compile("[\udc80-\udcff]")  # undecodable bytes under surrogateescape


class DataError(UserError, ValueError):
    """A split file with problems; `problems` lists them, one `file:line: ...` each."""

    def __init__(self, problems: str | Sequence[str], *, source: str = ""):
        self.source = source
        if isinstance(problems, str):  # a ready message: keep it, one problem per line
            self.problems = tuple(ln for ln in problems.splitlines() if ln.strip())
            super().__init__(problems)
            return
        self.problems = tuple(problems)
        head = f"{len(self.problems)} problem(s) in {source}:\n" if source else ""
        super().__init__(head + "\n".join(self.problems))

    @classmethod
    def combine(cls, errors: Sequence[DataError]) -> DataError:
        """One error for several files (e.g. the three splits), every problem kept."""
        if len(errors) == 1:
            return errors[0]
        err = cls("\n\n".join(str(e) for e in errors))
        err.problems = tuple(p for e in errors for p in e.problems)
        return err


class DataWarning(UserWarning):
    """A data oddity that the official release has too: reported, not fatal."""


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


# -- reading ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Raw:
    """Rows as read, before validation: (location, fields) plus reader problems."""

    columns: list[str] | None  # header (CSV); None where rows carry their own keys
    rows: list[tuple[str, dict[str, Any]]]
    problems: list[str]
    is_text_file: bool = True


def _decode(path: Path, data: bytes, problems: list[str]) -> str:
    """UTF-8 text of `data`; each line with undecodable bytes becomes one problem."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        problems.append(f"{path}:1: the file is UTF-16 (byte-order mark {data[:2]!r}); "
                        "re-save it as UTF-8")
        return ""
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # Excel writes a UTF-8 BOM
    text = data[bom:].decode("utf-8", errors="surrogateescape")
    last_line, byte_off, prev = -1, bom, 0
    for m in _SURROGATE.finditer(text):
        byte_off += len(text[prev:m.start()].encode("utf-8", "surrogateescape"))
        prev = m.start()
        line = text.count("\n", 0, m.start()) + 1
        if line != last_line:
            bad = ord(m.group()) - 0xDC00
            problems.append(
                f"{path}:{line}: not valid UTF-8 (byte 0x{bad:02X} at byte offset "
                f"{byte_off}); re-save the file as UTF-8 (it looks like Latin-1/cp1252)")
            last_line = line
    return _SURROGATE.sub("\ufffd", text) if last_line > 0 else text


def _read_csv(path: Path) -> _Raw:
    problems: list[str] = []
    data = path.read_bytes()
    if not data.strip():
        return _Raw(None, [], [f"{path}:1: file is empty (expected a header line)"])
    text = _decode(path, data, problems)
    old_limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # long questions are reported below, not by csv
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        rows: list[tuple[str, dict[str, Any]]] = []
        header: list[str] | None = None
        start = 1
        try:
            for record in reader:
                if header is None:
                    header = [c.strip() or f"Unnamed: {i}" for i, c in enumerate(record)]
                elif record and any(c.strip() for c in record):
                    loc = f"{path}:{start}"
                    if len(record) != len(header):
                        problems.append(f"{loc}: {len(record)} fields, the header has "
                                        f"{len(header)} (unbalanced quotes or commas?)")
                    else:
                        rows.append((loc, dict(zip(header, record, strict=True))))
                start = reader.line_num + 1
        except csv.Error as e:
            problems.append(f"{path}:{start}: CSV syntax error: {e}")
    finally:
        csv.field_size_limit(old_limit)
    return _Raw(header, rows, problems)


def _read_jsonl(path: Path) -> _Raw:
    problems: list[str] = []
    data = path.read_bytes()
    if not data.strip():
        return _Raw(None, [], [f"{path}:1: file is empty"])
    text = _decode(path, data, problems)
    rows: list[tuple[str, dict[str, Any]]] = []
    if text.lstrip().startswith("["):  # a .json file holding one array
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            return _Raw(None, [], [*problems, f"{path}:{e.lineno}: invalid JSON: {e.msg}"])
        for i, item in enumerate(items):
            _add_json_row(f"{path}[{i}]", item, rows, problems)
        return _Raw(None, rows, problems)
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})")
            continue
        _add_json_row(f"{path}:{lineno}", item, rows, problems)
    return _Raw(None, rows, problems)


def _add_json_row(loc: str, item: Any, rows: list, problems: list[str]) -> None:
    if isinstance(item, dict):
        rows.append((loc, item))
    else:
        problems.append(f"{loc}: expected a JSON object, got {type(item).__name__}")


def _read_datasets(source: str, split_name: str) -> _Raw:
    import datasets  # heavy; only for this format

    try:
        if source.startswith("hf:"):
            ds = datasets.load_dataset(source[3:], split=split_name)
        else:
            ds = datasets.load_from_disk(source)
    except Exception as e:  # noqa: BLE001 - any loader failure is the user's input
        raise DataError([f"{source}: cannot load as a datasets dataset: {e}"]) from e
    if isinstance(ds, datasets.DatasetDict):
        if split_name not in ds:
            raise DataError([f"{source}: no split {split_name!r}; it has {sorted(ds)}"])
        ds = ds[split_name]
    rows = [(f"{source}[{split_name}]#{i}", dict(r)) for i, r in enumerate(ds)]
    return _Raw(list(ds.column_names), rows, [], is_text_file=False)


def _read(source: str | Path, split_name: str) -> _Raw:
    s = str(source)
    if s.startswith("hf:"):
        return _read_datasets(s, split_name)
    path = Path(source)
    if not path.exists():
        raise DataError([f"{path}: no such file or directory (a Hugging Face hub "
                         "dataset is written hf:owner/name)"])
    if path.is_dir():
        return _read_datasets(str(path), split_name)
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return _read_jsonl(path)
    if path.suffix.lower() in (".csv", ".tsv", ""):
        return _read_csv(path)
    raise DataError([f"{path}: unknown format {path.suffix!r}; use .csv, .jsonl or a "
                     "datasets directory"])


# -- validating ------------------------------------------------------------------------


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
                            f"{e.colno}): {_clip(value)}")
            return None
    if not isinstance(value, list | tuple):
        problems.append(f"{loc}: options must be a JSON list of strings, got "
                        f"{type(value).__name__}: {_clip(repr(value))}")
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
                            f"{_clip(repr(v))}, expected a string")
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
            problems.append(f"{loc}: answer {_clip(value)!r} is not a valid letter for "
                            f"{n or 'its'} options ({valid})")
            return None
        return letter
    if task.kind == "value" and canonical_number(value) is None:
        problems.append(f"{loc}: answer {_clip(value)!r} is not a number")
        return None
    return value


def _clip(s: str, n: int = 60) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 3] + "..."


def _line_of(problem: str) -> int:
    """Sort key: the line (or row) a problem names; file-level problems first."""
    m = re.search(r"(?::|\[|#)(\d+)(?:\]|:)", problem)
    return int(m.group(1)) if m else 0


def _short(loc: str) -> str:
    """`line 12` for `path:12`; dataset locations (`src[split]#3`) as they are."""
    tail = loc.rsplit(":", 1)[-1]
    return f"line {tail}" if tail.isdigit() else loc


def _question_key(question: str, options: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """What makes two rows the same item: question and options, whitespace/case-folded."""
    norm = lambda s: " ".join(s.split()).casefold()
    return norm(question), tuple(norm(o) for o in options)


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
    raw = _read(source, split_name)
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
        key = _question_key(question, options)
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


# -- leakage ---------------------------------------------------------------------------


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

    Question text alone is not enough: MMLU repeats stems such as "Which of the
    following is true?" with different options.

    Args:
      splits: split name -> its examples or unlabeled questions.
      max_examples: how many shared items to quote per pair.
    """
    index: dict[str, dict[tuple, str]] = {}
    for name, items in splits.items():
        keyed: dict[tuple, str] = {}
        for e in items:
            keyed.setdefault(_question_key(e.question, e.options), e.id)
        index[name] = keyed
    names = list(index)
    overlaps = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = [k for k in index[a] if k in index[b]]
            ex = tuple((index[a][k], index[b][k], _clip(k[0])) for k in shared[:max_examples])
            overlaps.append(Overlap((a, b), len(shared), ex))
    return LeakageReport(tuple(overlaps))

