"""Reading a split's rows as they are, before validation: CSV, JSONL, `datasets`.

Formats: the official SemiEvol CSV (`question`, `options` as a JSON list of strings,
`answer` letter, extra columns kept), the same tab-separated (`.tsv`), JSONL with the
same fields, a `datasets` directory written by `save_to_disk`, or a hub id written
`hf:owner/name` (needs network; `datasets.load_dataset`). Each row keeps its location as
an editor shows it (`file:line`: the CSV header is line 1; a record spanning several
lines is named by its first line), and what cannot be read becomes one problem each,
not an exception, so validation can report a file's every problem at once.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
from pathlib import Path
from typing import Any

from semievol_jax.errors import DataError
from semievol_jax.pipeline.data.problems import Finding

_SURROGATE = re.compile("[\udc80-\udcff]")  # undecodable bytes under surrogateescape
DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t", "": ","}  # by the file's suffix
_OTHER_DELIMITERS = {"\t": ("tab", "name the file *.tsv"),
                     ",": ("comma", "name the file *.csv"),
                     ";": ("semicolon", "re-save it comma-separated")}
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclasses.dataclass
class RawRows:
    """Rows as read, before validation: (location, fields) plus reader problems."""

    columns: list[str] | None  # header (CSV); None where rows carry their own keys
    rows: list[tuple[str, dict[str, Any]]]
    problems: list[Finding]
    is_text_file: bool = True


def _decode(path: Path, data: bytes, problems: list[Finding]) -> str:
    """UTF-8 text of `data`; each line with undecodable bytes becomes one problem."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        problems.append(Finding(f"{path}:1", "encoding", "the file is UTF-16 (byte-order "
                                f"mark {data[:2]!r}); re-save it as UTF-8"))
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
            problems.append(Finding(
                f"{path}:{line}", "encoding", f"not valid UTF-8 (byte 0x{bad:02X} at byte "
                f"offset {byte_off}); re-save the file as UTF-8 (it looks like "
                "Latin-1/cp1252)"))
            last_line = line
    return _SURROGATE.sub("\ufffd", text) if last_line > 0 else text


def _text(path: Path, problems: list[Finding], empty: str) -> str | None:
    """The file's text (`_decode`); None, with the problem `empty`, when it holds
    nothing but white space."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError([f"{path}: cannot read ({e.strerror or e})"]) from e
    if not data.strip():
        problems.append(Finding(f"{path}:1", "empty", empty))
        return None
    return _decode(path, data, problems)


def _read_csv(path: Path) -> RawRows:
    problems: list[Finding] = []
    if (text := _text(path, problems, "file is empty (expected a header line)")) is None:
        return RawRows(None, [], problems)
    delimiter = DELIMITERS.get(path.suffix.lower(), ",")
    old_limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # long questions are reported below, not by csv
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        rows: list[tuple[str, dict[str, Any]]] = []
        header: list[str] | None = None
        start = 1
        try:
            for record in reader:
                if header is None:
                    header = [c.strip() or f"Unnamed: {i}" for i, c in enumerate(record)]
                    if (hint := _delimiter_hint(header, delimiter, path)) is not None:
                        problems.append(Finding(f"{path}:1", "delimiter", hint))
                        return RawRows(header, [], problems)
                elif record and any(c.strip() for c in record):
                    loc = f"{path}:{start}"
                    if len(record) != len(header):
                        span = (f"; the record runs to line {reader.line_num}"
                                if reader.line_num > start else "")
                        problems.append(Finding(loc, "fields", f"{len(record)} fields, the "
                                                f"header has {len(header)} (unbalanced "
                                                f"quotes or delimiters?{span})"))
                    else:
                        rows.append((loc, dict(zip(header, record, strict=True))))
                start = reader.line_num + 1
        except csv.Error as e:
            problems.append(Finding(f"{path}:{start}", "fields", f"CSV syntax error: {e}"))
    finally:
        csv.field_size_limit(old_limit)
    return RawRows(header, rows, problems)


def _delimiter_hint(header: list[str], delimiter: str, path: Path) -> str | None:
    """Why a one-column header that holds another delimiter cannot be read, or None."""
    if len(header) != 1:
        return None
    for other, (name, fix) in _OTHER_DELIMITERS.items():
        if other != delimiter and other in header[0]:
            shown = header[0].replace("\t", "\\t")
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            return (f"the header is one column holding {name}s ({shown}): {fix} (the "
                    "delimiter follows the suffix: .csv comma, .tsv tab)")
    return None


def _read_jsonl(path: Path) -> RawRows:
    problems: list[Finding] = []
    if (text := _text(path, problems, "file is empty")) is None:
        return RawRows(None, [], problems)
    rows: list[tuple[str, dict[str, Any]]] = []
    if text.lstrip().startswith("["):  # a .json file holding one array
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            return RawRows(None, [], [*problems, Finding(f"{path}:{e.lineno}", "json",
                                                         f"invalid JSON: {e.msg}")])
        if not isinstance(items, list):
            return RawRows(None, [], [*problems, Finding(f"{path}:1", "json",
                                                         "expected a JSON array of objects")])
        for i, item in enumerate(items):
            _add_json_row(f"{path}[{i}]", item, rows, problems)
        return RawRows(None, rows, problems)
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(Finding(f"{path}:{lineno}", "json",
                                    f"invalid JSON: {e.msg} (column {e.colno})"))
            continue
        _add_json_row(f"{path}:{lineno}", item, rows, problems)
    return RawRows(None, rows, problems)


def _add_json_row(loc: str, item: Any, rows: list, problems: list[Finding]) -> None:
    if isinstance(item, dict):
        rows.append((loc, item))
    else:
        problems.append(Finding(loc, "json", f"expected a JSON object, got "
                                             f"{type(item).__name__}"))


def _read_datasets(source: str, split_name: str) -> RawRows:
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
    return RawRows(list(ds.column_names), rows, [], is_text_file=False)


def read_rows(source: str | Path, split_name: str) -> RawRows:
    """The rows of one split's source (a file by its suffix, a directory, `hf:` id)."""
    s = str(source)
    if s.startswith("hf:"):
        return _read_datasets(s, split_name)
    path = Path(source)
    if not path.exists():
        raise DataError([f"{path}: no such file or directory (a Hugging Face hub "
                         "dataset is written hf:owner/name)"])
    if path.is_dir():
        return _read_datasets(str(path), split_name)
    if path.suffix.lower() in JSON_SUFFIXES:
        return _read_jsonl(path)
    if path.suffix.lower() in DELIMITERS:
        return _read_csv(path)
    raise DataError([f"{path}: unknown format {path.suffix!r}; use .csv, .tsv, .jsonl or a "
                     "datasets directory"])

