"""Hugging Face / PEFT checkpoint I/O: the only module that knows HF parameter names.

Loading streams one tensor at a time (read into an aligned buffer that the CPU backend
adopts, or copied to the accelerator and dropped), so a checkpoint never has two host
copies; with a mesh each tensor goes straight into its target sharding.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from semievol_jax.model.config import CheckpointError, LlamaConfig, read_json
from semievol_jax.model.llama import Llama
from semievol_jax.model.lora import LoraConfig
from semievol_jax.sharding import logical_to_sharding

# HF submodule of each Dense projection, keyed by its path inside a Block.
_BLOCK_DENSE = {
    ("attn", "q"): "self_attn.q_proj",
    ("attn", "k"): "self_attn.k_proj",
    ("attn", "v"): "self_attn.v_proj",
    ("attn", "o"): "self_attn.o_proj",
    ("mlp", "gate"): "mlp.gate_proj",
    ("mlp", "up"): "mlp.up_proj",
    ("mlp", "down"): "mlp.down_proj",
}
_BLOCK_NORMS = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}
_TOKENIZER_PATTERNS = ["tokenizer*", "special_tokens_map.json", "*.jinja", "*.model",
                       "generation_config.json"]
DEFAULT_MAX_SHARD_BYTES = 4 * 2**30


def weight_names(cfg: LlamaConfig) -> dict[str, tuple]:
    """HF tensor name -> path of the Variable in `Llama` (attribute names and layer ints)."""
    names: dict[str, tuple] = {"model.embed_tokens.weight": ("embedding_VD",)}
    for i in range(cfg.num_layers):
        for (sub, proj), hf in _BLOCK_DENSE.items():
            names[f"model.layers.{i}.{hf}.weight"] = ("layers", i, sub, proj, "w")
        for norm, hf in _BLOCK_NORMS.items():
            names[f"model.layers.{i}.{hf}.weight"] = ("layers", i, norm, "scale")
    names["model.norm.weight"] = ("norm", "scale")
    if not cfg.tie_word_embeddings:
        names["lm_head.weight"] = ("lm_head_VD",)
    return names


def hf_tensor_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> the shape a checkpoint of `cfg` stores it with."""
    model = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))
    return {name: _hf_shape(model, path) for name, path in weight_names(cfg).items()}


def _resolve(model: nnx.Module, path: tuple) -> Any:
    node = model
    for part in path:
        node = node[part] if isinstance(part, int) else getattr(node, part)
    return node


def _hf_shape(model: nnx.Module, path: tuple) -> tuple[int, ...]:
    """HF stores every projection as a 2-D [out, in] matrix; ours splits heads out."""
    var = _resolve(model, path)
    if path[-1] != "w":
        return tuple(var.shape)
    dense = _resolve(model, path[:-1])
    n_out = len(dense.out_axes)
    return (math.prod(var.shape[:n_out]), math.prod(var.shape[n_out:]))


# ---------------------------------------------------------------------------------------
# Finding and reading checkpoints


def resolve_checkpoint(path_or_hub_id: str | Path, *, allow_pickle: bool = False,
                       revision: str | None = None) -> Path:
    """A local checkpoint directory: the path itself, or a hub snapshot of config, tokenizer
    and safetensors files (pickle `.bin` files only with allow_pickle)."""
    path = Path(path_or_hub_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path}: expected a checkpoint directory, got a file")
        return path
    repo_id = str(path_or_hub_id)
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        raise CheckpointError(f"{repo_id}: no such directory, and not a hub id 'org/name'")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", *_TOKENIZER_PATTERNS]
    if allow_pickle:
        patterns.append("*.bin")
    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))


class _Weights:
    """Tensor-by-tensor reader over single-file, sharded or (opt-in) pickle checkpoints."""

    def __init__(self, ckpt_dir: Path, allow_pickle: bool):
        self.ckpt_dir = ckpt_dir
        self.file_of: dict[str, Path] = {}
        self._torch_state: dict[str, Any] | None = None
        self._headers: dict[Path, _SafetensorsHeader] = {}
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
                self._headers[file] = _SafetensorsHeader(file)
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
            import torch

            self._torch_state = {}
            for file in bins:
                part = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                for name, t in part.items():
                    self._torch_state[name] = t
                    self.file_of[name] = file

    def get(self, name: str) -> np.ndarray:
        if name not in self.file_of:
            raise CheckpointError(f"{self.ckpt_dir}: tensor {name!r} is missing")
        if self._torch_state is not None:
            return _torch_to_numpy(self._torch_state[name])
        file = self.file_of[name]
        if file not in self._headers:
            self._headers[file] = _SafetensorsHeader(file)
        return self._headers[file].read(name)


_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": jnp.bfloat16,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
              "BOOL": np.bool_}
_ALIGN = 64  # XLA:CPU adopts 64-byte-aligned host buffers without copying them


class _SafetensorsHeader:
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
        raw = np.empty(end - begin + _ALIGN, np.uint8)
        offset = -raw.ctypes.data % _ALIGN
        buf = raw[offset:offset + end - begin]
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


# ---------------------------------------------------------------------------------------
# Placement


def _place(value: np.ndarray, var: nnx.Variable, dtype: Any, mesh) -> jax.Array:
    dtype = np.dtype(dtype)
    if mesh is None:
        return jax.device_put(value.astype(dtype, copy=False), may_alias=True)
    sharding = logical_to_sharding(var.get_metadata("out_sharding"), mesh, value.shape)
    return jax.make_array_from_callback(
        value.shape, sharding, lambda idx: value[idx].astype(dtype, copy=False))


# ---------------------------------------------------------------------------------------
# Public API: load


def load_hf(
    path_or_hub_id: str | Path,
    *,
    lora: LoraConfig | None = None,
    dtype: Any = jnp.float32,
    param_dtype: Any = None,
    mesh: jax.sharding.Mesh | None = None,
    allow_pickle: bool = False,
    revision: str | None = None,
    seed: int = 0,
) -> tuple[Llama, LlamaConfig]:
    """Loads an HF Llama checkpoint into a Flax `Llama`.

    Args:
        path_or_hub_id: local directory or hub id ("org/name"; only json, safetensors and
            tokenizer files are fetched; remote code is never executed).
        lora: adds fresh adapters (A random, B zero) when given.
        dtype: compute dtype.
        param_dtype: storage dtype of the base weights (default: `dtype`).
        mesh: place each tensor directly into its sharding on this mesh.
        allow_pickle: accept pickle `.bin` weights when no safetensors exist.
        seed: seed of the LoRA initialisation and dropout stream.

    Returns:
        (model, cfg).

    Raises:
        CheckpointError: bad config, missing or wrongly shaped tensor, pickle-only weights.
    """
    ckpt_dir = resolve_checkpoint(path_or_hub_id, allow_pickle=allow_pickle, revision=revision)
    cfg = LlamaConfig.from_hf(ckpt_dir)
    weights = _Weights(ckpt_dir, allow_pickle)
    param_dtype = param_dtype or dtype

    def build() -> Llama:
        return Llama(cfg, lora=lora, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed))

    model = nnx.eval_shape(build)
    # LoRA params and dropout RNG state get real initial values; under jit the base weights'
    # random init is dead code and never materialises.
    nnx.update(model, jax.jit(lambda: nnx.state(build(), _NOT_BASE))())
    for name, path in weight_names(cfg).items():
        var = _resolve(model, path)
        value = weights.get(name)
        want = _hf_shape(model, path)
        if tuple(value.shape) != want:
            raise CheckpointError(
                f"{weights.file_of[name]}: tensor {name!r} has shape {tuple(value.shape)}, "
                f"expected {want}")
        var.set_value(_place(value.reshape(var.shape), var, param_dtype, mesh))
        del value
    if mesh is not None:
        for _, var in nnx.iter_graph(model):
            if isinstance(var, nnx.LoRAParam):
                v = var.get_value()
                var.set_value(jax.device_put(
                    v, logical_to_sharding(var.get_metadata("out_sharding"), mesh, v.shape)))
    return model, cfg


_NOT_BASE = nnx.Any(nnx.LoRAParam, nnx.Not(nnx.Param))


def load_tokenizer(path_or_hub_id: str | Path):
    """The checkpoint's tokenizer via AutoTokenizer (never with remote code)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path_or_hub_id), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path_or_hub_id}: cannot load tokenizer ({e})") from e


# ---------------------------------------------------------------------------------------
# Public API: save


def _to_host(x: jax.Array) -> np.ndarray:
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _hf_tensors(model: Llama) -> Iterator[tuple[str, tuple, tuple[int, ...]]]:
    for name, path in weight_names(model.cfg).items():
        yield name, path, _hf_shape(model, path)


def _hf_value(model: Llama, path: tuple, merge: bool) -> jax.Array:
    if path[-1] == "w":
        dense = _resolve(model, path[:-1])
        return dense.merged_weight() if merge else dense.w[...]
    return _resolve(model, path)[...]


def save_hf(
    model: Llama,
    out_dir: str | Path,
    tokenizer: Any = None,
    *,
    merge_lora: bool = True,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Writes an HF checkpoint (config.json, generation_config.json, safetensors, tokenizer).

    Tensors are fetched and written one shard at a time; above `max_shard_bytes` the
    weights are split into `model-0000i-of-0000n.safetensors` with an index. With
    `merge_lora` the adapters are folded in (W + alpha/R B A), else only base weights go out.
    Multi-host: every process must call this; process 0 writes.
    """
    out_dir = Path(out_dir)
    writer = jax.process_index() == 0
    cfg = model.cfg
    dtype = np.dtype(model.param_dtype)
    tensors = list(_hf_tensors(model))
    shards: list[list[tuple[str, tuple, tuple[int, ...]]]] = [[]]
    size = 0
    for item in tensors:
        nbytes = math.prod(item[2]) * dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for k, shard in enumerate(shards):
        file = ("model.safetensors" if len(shards) == 1
                else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors")
        arrays = {}
        for name, path, hf_shape in shard:
            host = _to_host(_hf_value(model, path, merge_lora)).astype(dtype, copy=False)
            arrays[name] = np.ascontiguousarray(host.reshape(hf_shape))
            weight_map[name] = file
        if writer:
            save_file(arrays, str(out_dir / file), metadata={"format": "pt"})
        del arrays
    if not writer:
        return out_dir
    if len(shards) > 1:
        total = sum(math.prod(s) * dtype.itemsize for _, _, s in tensors)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    hf_cfg = cfg.to_hf()
    hf_cfg["torch_dtype"] = dtype.name
    (out_dir / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    gen = {k: hf_cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
           if hf_cfg[k] is not None}
    (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    return out_dir


# ---------------------------------------------------------------------------------------
# PEFT LoRA adapters

_PEFT_PREFIX = "base_model.model."
_TARGET_HF = {proj: hf.split(".")[1] for (_, proj), hf in _BLOCK_DENSE.items()}  # q -> q_proj


def _lora_modules(model: Llama) -> Iterator[tuple[str, Any]]:
    """(PEFT module name, Dense) for every projection that has an adapter."""
    for i, block in enumerate(model.layers):
        for (sub, proj), hf in _BLOCK_DENSE.items():
            dense = getattr(getattr(block, sub), proj)
            if dense.lora is not None:
                yield f"{_PEFT_PREFIX}model.layers.{i}.{hf}", dense


def lora_config_from_peft(adapter_dir: str | Path) -> LoraConfig:
    """The LoraConfig of a PEFT adapter directory (`adapter_config.json`).

    Raises:
        CheckpointError: not a plain LoRA adapter of Llama linear layers (DoRA, rsLoRA,
            per-module ranks, biases, extra saved modules, a regex target).
    """
    path = Path(adapter_dir) / "adapter_config.json"
    c = read_json(path)
    if c.get("peft_type") != "LORA":
        raise CheckpointError(f"{path}: peft_type {c.get('peft_type')!r} is not LORA")
    for key, ok in (("use_dora", False), ("use_rslora", False), ("fan_in_fan_out", False),
                    ("bias", "none"), ("lora_bias", False)):
        if c.get(key, ok) != ok:
            raise CheckpointError(f"{path}: {key}={c[key]!r} is not supported")
    for key in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform"):
        if c.get(key):
            raise CheckpointError(f"{path}: {key} is not supported (got {c[key]!r})")
    modules = c.get("target_modules")
    if modules == "all-linear":
        modules = list(_TARGET_HF.values())
    if not isinstance(modules, list):
        raise CheckpointError(f"{path}: target_modules must be a list, got {modules!r}")
    by_hf = {hf: t for t, hf in _TARGET_HF.items()}
    unknown = [m for m in modules if m not in by_hf]
    if unknown:
        raise CheckpointError(f"{path}: unsupported target_modules {unknown}")
    targets = tuple(t for t in _TARGET_HF if _TARGET_HF[t] in modules)
    return LoraConfig(rank=int(c["r"]), alpha=float(c["lora_alpha"]),
                      dropout=float(c.get("lora_dropout", 0.0)), targets=targets)


def save_peft_adapter(model: Llama, out_dir: str | Path, base_model_name_or_path: str) -> Path:
    """Writes the adapters as a PEFT LoRA adapter (adapter_config.json +
    adapter_model.safetensors with PEFT's key names), loadable by `peft.PeftModel`."""
    lora = model.lora
    if lora is None:
        raise ValueError("model has no LoRA adapters (it was built with lora=None)")
    tensors = {}
    for name, dense in _lora_modules(model):
        a = _to_host(dense.lora_a[...])
        b = _to_host(dense.lora_b[...])
        tensors[f"{name}.lora_A.weight"] = np.ascontiguousarray(a.reshape(lora.rank, -1))
        tensors[f"{name}.lora_B.weight"] = np.ascontiguousarray(b.reshape(-1, lora.rank))
    out_dir = Path(out_dir)
    if jax.process_index() != 0:
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora.rank,
        "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
        "target_modules": [_TARGET_HF[t] for t in lora.targets], "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
        "layers_to_transform": None, "base_model_name_or_path": str(base_model_name_or_path),
        "revision": None,
    }
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def load_peft_adapter(model: Llama, adapter_dir: str | Path) -> Llama:
    """Fills the LoRA params of `model` (built with `lora=lora_config_from_peft(dir)`)
    from a PEFT adapter directory, in place; keeps each param's sharding.

    Raises:
        CheckpointError: the adapter's rank/alpha/targets differ from the model's, or a
            tensor is missing or has the wrong shape (named).
    """
    adapter_dir = Path(adapter_dir)
    want = lora_config_from_peft(adapter_dir)
    have = model.lora
    if have is None or (have.rank, have.alpha, set(have.targets)) != (
            want.rank, want.alpha, set(want.targets)):
        raise CheckpointError(
            f"{adapter_dir}: adapter is r={want.rank} alpha={want.alpha} "
            f"targets={want.targets}, model has {have}; build the model with "
            "lora=lora_config_from_peft(adapter_dir)")
    file = adapter_dir / "adapter_model.safetensors"
    if not file.is_file():
        raise CheckpointError(f"{file}: not found (pickle adapter_model.bin is not read)")
    with safe_open(file, "numpy") as f:
        keys = set(f.keys())
    for name, dense in _lora_modules(model):
        for var, part in ((dense.lora_a, "lora_A"), (dense.lora_b, "lora_B")):
            key = f"{name}.{part}.weight"
            if key not in keys and f"{name}.{part}.default.weight" in keys:
                key = f"{name}.{part}.default.weight"
            if key not in keys:
                raise CheckpointError(f"{file}: tensor {key!r} is missing")
            with safe_open(file, "numpy") as f:
                value = f.get_tensor(key)
            rank = want.rank
            expect = ((rank, math.prod(var.shape[1:])) if part == "lora_A"
                      else (math.prod(var.shape[:-1]), rank))
            if tuple(value.shape) != expect:
                raise CheckpointError(
                    f"{file}: tensor {key!r} has shape {tuple(value.shape)}, expected {expect}")
            old = var.get_value()
            new = jnp.asarray(value.reshape(var.shape), dtype=old.dtype)
            var.set_value(jax.device_put(new, old.sharding))
    return model
