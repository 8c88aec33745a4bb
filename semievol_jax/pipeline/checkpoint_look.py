"""A cheap look at the base checkpoint before any stage runs: config, tensor index, format.

Reads `config.json`, the safetensors headers (or the shard index and its shards'
headers) or the GGUF header, and compares the tensor names, shapes and byte ranges with
what a Llama of that config needs; no tensor data is read and nothing is downloaded. A
fetchable model that is not fetched yet and a hub id are accepted with a note: the base
stage fetches them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from semievol_jax.model.config import CheckpointError, LlamaConfig
from semievol_jax.model.gguf_io import GGUFCheckpoint, is_gguf
from semievol_jax.model.hf_io import hf_tensor_shapes
from semievol_jax.model.registry import MODELS, cached_path, is_fetched
from semievol_jax.model.safetensors_io import SafetensorsHeader, SafetensorsWeights

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
MAX_LISTED = 3  # missing / misshapen tensors named in one line


@dataclasses.dataclass
class Look:
    """What the look found: problems (the run would fail), notes, the model config."""

    problems: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    cfg: LlamaConfig | None = None


def look_at_checkpoint(model: str, *, allow_pickle: bool = False) -> Look:
    """Checks `base.model` (a directory, a .gguf file, a fetchable name, a hub id)."""
    look = Look()
    try:
        _look(model, allow_pickle, look)
    except CheckpointError as e:
        # The loaders' messages speak of keyword arguments; a run is set by settings.
        text = str(e).replace("pass allow_pickle=True", "set base.allow_pickle=true")
        named = text.startswith(str(Path(model).expanduser()))
        look.problems.append(f"base.model: {text}" if named else f"base.model={model}: {text}")
    return look


def _look(model: str, allow_pickle: bool, look: Look) -> None:
    if model in MODELS:
        if not is_fetched(model):
            look.notes.append(f"base.model={model}: not fetched yet; the base stage fetches "
                              "it (or run `semievol fetch " + model + "` first)")
            return
        _look_gguf(cached_path(model), look)
        return
    path = Path(model).expanduser()
    if path.is_file():
        if not is_gguf(path):
            raise CheckpointError(f"{path}: a file, but not a .gguf checkpoint (give the "
                                  "checkpoint's directory)")
        _look_gguf(path, look)
    elif path.is_dir():
        _look_hf_dir(path, allow_pickle, look)
    elif is_gguf(path):
        raise CheckpointError(f"{path}: no such GGUF file")
    elif model.count("/") == 1 and not model.startswith((".", "/", "~")):
        look.notes.append(f"base.model={model}: a hub id, fetched by the base stage "
                          "(not checked here)")
    else:
        raise CheckpointError(
            f"no such directory or .gguf file, not a hub id 'org/name', and not a "
            f"fetchable model ({', '.join(sorted(MODELS))})")


def _look_gguf(path: Path, look: Look) -> None:
    ckpt = GGUFCheckpoint(path)
    look.cfg = ckpt.cfg
    missing = [hf for hf, g in ckpt.gguf_name.items() if g not in ckpt.tensors]
    if missing:
        raise CheckpointError(_listed(f"{path}: tensor(s) missing", missing))
    size = path.stat().st_size
    end = max((t.data_offset + t.n_bytes for t in ckpt.tensors.values()), default=0)
    if end > size:
        raise CheckpointError(f"{path}: truncated ({size:,} bytes; its tensors need "
                              f"{end:,})")


def _look_hf_dir(path: Path, allow_pickle: bool, look: Look) -> None:
    cfg = LlamaConfig.from_hf(path)
    look.cfg = cfg
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        look.problems.append(f"base.model: {path}: no tokenizer "
                             f"({' / '.join(TOKENIZER_FILES)})")
    has_safetensors = (path / "model.safetensors.index.json").is_file() or any(
        path.glob("*.safetensors"))
    if not has_safetensors and allow_pickle and any(path.glob("*.bin")):
        look.notes.append(f"base.model={path}: pickle weights, allowed by base.allow_pickle; "
                          "their tensors are checked when loaded")
        return
    weights = SafetensorsWeights(path, allow_pickle)  # refuses pickle-only weights
    want = hf_tensor_shapes(cfg)
    missing = [n for n in want if n not in weights.file_of]
    if missing:
        raise CheckpointError(_listed(f"{path}: tensor(s) missing", missing))
    headers = {f: SafetensorsHeader(f) for f in sorted(set(weights.file_of.values()))}
    wrong = []
    for name, shape in want.items():
        entry = headers[weights.file_of[name]].entries.get(name)
        if entry is None:
            raise CheckpointError(f"{weights.file_of[name]}: tensor {name!r} is not in this "
                                  "shard, although the shard index says so")
        if tuple(entry["shape"]) != tuple(shape):
            wrong.append(f"{name} {tuple(entry['shape'])} (expected {tuple(shape)})")
    if wrong:
        raise CheckpointError(_listed(f"{path}: tensor(s) of the wrong shape for its "
                                      "config.json", wrong))
    for file, header in headers.items():
        end = header.data_start + max((e["data_offsets"][1] for e in header.entries.values()),
                                      default=0)
        if end > file.stat().st_size:
            raise CheckpointError(f"{file}: truncated ({file.stat().st_size:,} bytes; its "
                                  f"header needs {end:,})")


def _listed(head: str, items: list[str]) -> str:
    more = f", and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"{head}: {', '.join(items[:MAX_LISTED])}{more}"
