"""What a stage reads from outside the run directory, digested: files, directories, names.

A stage's record key covers its config and its upstream stages' outputs; the files it
reads from elsewhere (a split's CSV, a `datasets` directory, a base checkpoint) are keyed
here, by content, so editing one in place reruns the stage and, through its changed
output, everything downstream. Large files are re-hashed only when their size, mtime or
inode changed since the record that last hashed them (an 8B checkpoint is 16 GB); small
ones are hashed every time. A source that is not a local path is keyed by what pins it:
a fetchable model by its pinned sha256, a hub repo by its name and current revision.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from semievol_jax.files import file_digest

# Files at most this large are hashed on every start (milliseconds); larger ones only
# when their stat differs from the record's.
ALWAYS_HASH_BYTES = 64 * 2**20
HUB_PREFIX = "hf:"  # a Hugging Face hub dataset, as readers.py spells it


def _stat(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _file_entry(path: Path, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    stat = _stat(path)
    if (stat["size"] > ALWAYS_HASH_BYTES and previous
            and {k: previous.get(k) for k in stat} == stat and previous.get("sha256")):
        return {**stat, "sha256": previous["sha256"]}
    return {**stat, "sha256": file_digest(path)}


def _visible_files(root: Path) -> list[Path]:
    """Files under `root`, hidden ones (and those in hidden folders) left out: a
    checkpoint's `.cache/` or an editor's swap file is not part of what is read."""
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).parts
        if p.is_file() and not any(part.startswith(".") for part in rel):
            out.append(p)
    return out


def digest_source(value: str, previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What `value` (a path, `hf:owner/name`, a fetchable model, a hub id) is, by content.

    `previous` is this source's entry in the last record, whose digests are reused for
    large files whose stat is unchanged.
    """
    from semievol_jax.model.registry import MODELS  # no JAX: the registry is plain Python

    if value.startswith(HUB_PREFIX):
        name = value[len(HUB_PREFIX):]
        return {"hub": name, "revision": hub_revision(name, "dataset")}
    if value in MODELS:
        return {"pinned": MODELS[value].sha256}
    path = Path(value).expanduser()
    if path.is_file():
        return {"file": _file_entry(path, (previous or {}).get("file"))}
    if path.is_dir():
        before = (previous or {}).get("files", {})
        files = {p.relative_to(path).as_posix(): _file_entry(p, before.get(
            p.relative_to(path).as_posix())) for p in _visible_files(path)}
        return {"files": files}
    if value.count("/") == 1 and not value.startswith((".", "/", "~")):
        return {"hub": value, "revision": hub_revision(value, "model")}
    return {"missing": value}  # the stage itself reports it, naming the setting


def hub_revision(name: str, kind: str) -> str | None:
    """The commit a hub repo's main branch is at now; None offline (the name alone keys
    it then, and the stage's own download fails or uses the local cache)."""
    try:
        from huggingface_hub import HfApi

        info = (HfApi().dataset_info if kind == "dataset" else HfApi().model_info)(
            name, timeout=10)
    except Exception:  # noqa: BLE001 - offline, unknown repo, no client: not keyed by it
        return None
    return getattr(info, "sha", None)


def content_key(entry: Mapping[str, Any]) -> Any:
    """The part of a digested source that identifies its content (no stat fields)."""
    if "file" in entry:
        return entry["file"]["sha256"]
    if "files" in entry:
        text = json.dumps({k: v["sha256"] for k, v in entry["files"].items()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()
    return dict(entry)


def digest_sources(sources: Mapping[str, str],
                   previous: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """{name: digested source} of a stage's `sources` ({name: path or id})."""
    previous = previous or {}
    return {name: {"source": value, **digest_source(value, previous.get(name))}
            for name, value in sources.items()}


def sources_key(digested: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """{name: content key}: what a record key hashes of its stage's sources."""
    return {name: content_key(entry) for name, entry in digested.items()}


def file_digests(entry: Mapping[str, Any]) -> dict[str, str]:
    """{relative path: sha256} of a digested directory ({} for anything else)."""
    return {rel: v["sha256"] for rel, v in entry.get("files", {}).items()}


def is_local(value: str) -> bool:
    """Whether a source names a local file or directory (as opposed to a hub id)."""
    return bool(value) and not value.startswith(HUB_PREFIX) and os.path.exists(
        os.path.expanduser(value))
