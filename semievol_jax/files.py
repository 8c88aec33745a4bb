"""Result files: JSON values of dataclasses, atomic writes, JSONL rows, file digests.

Every file a stage or a report writes goes through here, so that a reader never sees a
half-written file (a temporary file in the same directory, renamed into place; its name
is unique, so processes writing the same path never share one) and every JSONL file has
one encoding (sorted keys, UTF-8 as is).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# A dataclass field's metadata key: the value at which records and digests leave the
# field out, so that adding a setting keeps the digests of everything made without it.
DIGEST_OMITS = "digest_omits"
_KEEP = object()


def to_jsonable(obj: Any) -> Any:
    """Dataclasses / tuples / paths -> plain JSON values (for records and digests)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(v) for f in dataclasses.fields(obj)
                if (v := getattr(obj, f.name)) != f.metadata.get(DIGEST_OMITS, _KEEP)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


@functools.cache
def _file_mode() -> int:
    """The mode `open()` gives a new file (0o666 less the umask); mkstemp's is 0o600."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` via a uniquely named temporary file in the same
    directory and a rename: readers see the old file or the new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON to `path`, atomically."""
    write_text_atomic(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object per line (sorted keys, non-ASCII kept), atomically."""
    write_text_atomic(path, "".join(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n"
                                    for row in rows))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The objects of a JSONL file (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def file_digest(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
