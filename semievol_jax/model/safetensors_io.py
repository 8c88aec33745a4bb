"""Tensor-by-tensor reading of HF weight files: single or sharded safetensors, opt-in pickle.

Each tensor is read into a fresh 64-byte-aligned buffer that XLA:CPU adopts without a
copy, so a checkpoint is never held twice in host memory while it is placed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from semievol_jax.model.config import CheckpointError

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": jnp.bfloat16,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
              "BOOL": np.bool_}
ALIGN = 64  # XLA:CPU adopts 64-byte-aligned host buffers without copying them


def aligned_empty(nbytes: int) -> np.ndarray:
    """A uint8 buffer of `nbytes` whose start is ALIGN-byte aligned."""
    raw = np.empty(nbytes + ALIGN, np.uint8)
    offset = -raw.ctypes.data % ALIGN
    return raw[offset:offset + nbytes]


class SafetensorsWeights:
    """HF tensor name -> array over single-file, sharded or (opt-in) pickle checkpoints."""

    def __init__(self, ckpt_dir: Path, allow_pickle: bool):
        self.ckpt_dir = ckpt_dir
        self.file_of: dict[str, Path] = {}
        self._torch_state: dict[str, Any] | None = None
        self._headers: dict[Path, SafetensorsHeader] = {}
        index = ckpt_dir / "model.safetensors.index.json"
        files = sorted(ckpt_dir.glob("*.safetensors"))
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: unreadable shard index ({e})") from e
            for name, file in weight_map.items():
                self.file_of[name] = ckpt_dir / file
            for file in set(self.file_of.values()):
                if not file.is_file():
                    raise CheckpointError(f"{index}: shard {file.name} is missing")
        elif files:
            for file in files:
                self._headers[file] = SafetensorsHeader(file)
                for name in self._headers[file].entries:
                    self.file_of[name] = file
        else:
            bins = sorted(ckpt_dir.glob("*.bin")) + sorted(ckpt_dir.glob("*.pt"))
            if not bins:
                raise CheckpointError(f"{ckpt_dir}: no *.safetensors weights found")
            if not allow_pickle:
                raise CheckpointError(
                    f"{ckpt_dir}: only pickle weights ({', '.join(b.name for b in bins)}); "
                    "unpickling can run arbitrary code, so they are refused. Convert them to "
                    "safetensors, or pass allow_pickle=True if you trust the source."
                )
            import torch  # only for opted-in pickle checkpoints; torch is not a runtime dep

            self._torch_state = {}
            for file in bins:
                part = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                for name, t in part.items():
                    self._torch_state[name] = t
                    self.file_of[name] = file

    def where(self, name: str) -> str:
        """The file holding `name` (for error messages)."""
        return str(self.file_of.get(name, self.ckpt_dir))

    def get(self, name: str) -> np.ndarray:
        if name not in self.file_of:
            raise CheckpointError(f"{self.ckpt_dir}: tensor {name!r} is missing")
        if self._torch_state is not None:
            return _torch_to_numpy(self._torch_state[name])
        file = self.file_of[name]
        if file not in self._headers:
            self._headers[file] = SafetensorsHeader(file)
        return self._headers[file].read(name)


class SafetensorsHeader:
    """The index of one .safetensors file; reads a tensor's byte range into a fresh aligned
    buffer. Unlike safe_open's memory map (whose touched pages count as resident until
    closed, on top of the copy it returns) this holds each tensor in host memory once."""

    def __init__(self, file: Path):
        self.file = file
        try:
            with open(file, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                if not 0 < n < 2**28:
                    raise ValueError(f"header length {n}")
                header = json.loads(f.read(n))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from e
        header.pop("__metadata__", None)
        self.entries = header
        self.data_start = 8 + n

    def read(self, name: str) -> np.ndarray:
        entry = self.entries[name]
        dtype = _ST_DTYPES.get(entry["dtype"])
        if dtype is None:  # exotic dtypes (fp8, ...): let safetensors decode them
            with safe_open(self.file, "numpy") as f:
                return f.get_tensor(name)
        begin, end = entry["data_offsets"]
        buf = aligned_empty(end - begin)
        with open(self.file, "rb") as f:
            f.seek(self.data_start + begin)
            if f.readinto(memoryview(buf)) != end - begin:
                raise CheckpointError(f"{self.file}: tensor {name!r} is truncated")
        try:
            return buf.view(dtype).reshape(entry["shape"])
        except ValueError as e:
            raise CheckpointError(f"{self.file}: tensor {name!r} is malformed ({e})") from e


def _torch_to_numpy(t: Any) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:  # numpy has no bf16; reinterpret the bits
        return t.contiguous().view(torch.int16).numpy().view(jnp.bfloat16)
    return t.contiguous().numpy()
