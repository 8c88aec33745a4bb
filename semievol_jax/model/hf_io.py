"""Hugging Face checkpoint I/O: HF parameter names <-> the Flax Llama, load and save.

A checkpoint is an HF directory (safetensors), a hub id, a `.gguf` file, or the name of a
fetchable model (`MODELS`). Loading streams one tensor at a time (read into an
aligned buffer that the CPU backend adopts, or copied to the accelerator and dropped), so
a checkpoint never has two host copies; with a mesh each tensor goes straight into its
target sharding.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from semievol_jax.model.config import CheckpointError, LlamaConfig
from semievol_jax.model.gguf_io import GGUFCheckpoint, is_gguf, load_gguf_tokenizer
from semievol_jax.model.llama import Llama
from semievol_jax.model.lora import LoraConfig
from semievol_jax.model.registry import MODELS, fetch
from semievol_jax.model.safetensors_io import SafetensorsWeights, aligned_empty
from semievol_jax.sharding import logical_to_sharding

# HF submodule of each Dense projection, keyed by its path inside a Block.
BLOCK_DENSE = {
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


def weight_names(cfg: LlamaConfig) -> dict[str, tuple[tuple[str, ...], int | None]]:
    """HF tensor name -> (path of the Variable in `Llama`, layer index into its leading L
    axis, or None for an unstacked variable). Layers of one stacked variable come in a
    row, so a loader or saver handles one variable at a time."""
    names: dict[str, tuple[tuple[str, ...], int | None]] = {
        "model.embed_tokens.weight": (("embedding_VD",), None)}
    for (sub, proj), hf in BLOCK_DENSE.items():
        for i in range(cfg.num_layers):
            names[f"model.layers.{i}.{hf}.weight"] = (("layers", sub, proj, "w"), i)
    for norm, hf in _BLOCK_NORMS.items():
        for i in range(cfg.num_layers):
            names[f"model.layers.{i}.{hf}.weight"] = (("layers", norm, "scale"), i)
    names["model.norm.weight"] = (("norm", "scale"), None)
    if not cfg.tie_word_embeddings:
        names["lm_head.weight"] = (("lm_head_VD",), None)
    return names


def hf_tensor_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> the shape a checkpoint of `cfg` stores it with."""
    model = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))
    return {name: _hf_shape(model, path, layer)
            for name, (path, layer) in weight_names(cfg).items()}


def _resolve(model: nnx.Module, path: tuple) -> Any:
    node = model
    for part in path:
        node = getattr(node, part)
    return node


def _hf_shape(model: nnx.Module, path: tuple, layer: int | None) -> tuple[int, ...]:
    """HF stores every projection as a 2-D [out, in] matrix; ours splits heads out (and
    stacks layers)."""
    shape = tuple(_resolve(model, path).shape)
    if layer is not None:
        shape = shape[1:]
    if path[-1] != "w":
        return shape
    n_out = len(_resolve(model, path[:-1]).out_axes)
    return (math.prod(shape[:n_out]), math.prod(shape[n_out:]))


def _by_variable(names: dict[str, tuple[tuple, int | None]]
                 ) -> dict[tuple, list[tuple[str, int | None]]]:
    groups: dict[tuple, list[tuple[str, int | None]]] = {}
    for name, (path, layer) in names.items():
        groups.setdefault(path, []).append((name, layer))
    return groups


# ---------------------------------------------------------------------------------------
# Finding and reading checkpoints


def resolve_checkpoint(path_or_hub_id: str | Path, *, allow_pickle: bool = False,
                       revision: str | None = None) -> Path:
    """A local checkpoint: an HF directory or a `.gguf` file as given, a fetchable model's
    cached file (fetched on first use), or a hub snapshot of config, tokenizer and
    safetensors files (pickle `.bin` files only with allow_pickle)."""
    name = str(path_or_hub_id)
    if name in MODELS:
        return fetch(name, log=_log)
    path = Path(path_or_hub_id).expanduser()
    if path.exists():
        if path.is_file() and is_gguf(path):
            return path
        if not path.is_dir():
            raise CheckpointError(
                f"{path}: expected a checkpoint directory or a .gguf file, got another file")
        return path
    if is_gguf(path):
        raise CheckpointError(f"{path}: no such GGUF file")
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise CheckpointError(
            f"{name}: no such directory or .gguf file, not a hub id 'org/name', and not a "
            f"fetchable model ({', '.join(sorted(MODELS))})")
    from huggingface_hub import snapshot_download  # network client: only for hub ids

    patterns = ["*.json", "*.safetensors", *_TOKENIZER_PATTERNS]
    if allow_pickle:
        patterns.append("*.bin")
    return Path(snapshot_download(name, revision=revision, allow_patterns=patterns))


def _log(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


def open_checkpoint(path_or_hub_id: str | Path, *, allow_pickle: bool = False,
                    revision: str | None = None) -> tuple[LlamaConfig, Any]:
    """(config, weights) of a checkpoint without reading any tensor; `weights.get(hf_name)`
    reads one tensor in the HF layout and `weights.where(hf_name)` names its file.

    Raises:
        CheckpointError: no such checkpoint, a bad config or GGUF header.
    """
    resolved = resolve_checkpoint(path_or_hub_id, allow_pickle=allow_pickle, revision=revision)
    if resolved.is_file():
        weights = GGUFCheckpoint(resolved)
        return weights.cfg, weights
    return LlamaConfig.from_hf(resolved), SafetensorsWeights(resolved, allow_pickle)


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
        path_or_hub_id: HF directory, `.gguf` file, fetchable model name, or hub id
            ("org/name"; only json, safetensors and tokenizer files are fetched; remote
            code is never executed).
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
    cfg, weights = open_checkpoint(path_or_hub_id, allow_pickle=allow_pickle, revision=revision)
    param_dtype = param_dtype or dtype

    model = nnx.eval_shape(lambda: _build(cfg, lora, dtype, param_dtype, seed))
    nnx.update(model, _initial_non_base(cfg, lora, jnp.dtype(dtype), jnp.dtype(param_dtype),
                                        seed))
    for path, items in _by_variable(weight_names(cfg)).items():
        var = _resolve(model, path)
        if items[0][1] is None:  # one tensor, one variable
            (name, _), = items
            host = _checked(weights, name, model, path, None).reshape(var.shape)
        else:  # a stacked variable: its L tensors fill one aligned buffer, placed once
            host = aligned_empty(math.prod(var.shape) * np.dtype(param_dtype).itemsize)
            host = host.view(param_dtype).reshape(var.shape)
            for name, layer in items:
                value = _checked(weights, name, model, path, layer)
                host[layer] = value.reshape(var.shape[1:]).astype(param_dtype, copy=False)
                del value
        var.set_value(_place(host, var, param_dtype, mesh))
        del host
    if mesh is not None:
        for _, var in nnx.iter_graph(model):
            if isinstance(var, nnx.LoRAParam):
                v = var.get_value()
                var.set_value(jax.device_put(
                    v, logical_to_sharding(var.get_metadata("out_sharding"), mesh, v.shape)))
    return model, cfg


_NOT_BASE = nnx.Any(nnx.LoRAParam, nnx.Not(nnx.Param))


def _build(cfg: LlamaConfig, lora, dtype, param_dtype, seed: int) -> Llama:
    return Llama(cfg, lora=lora, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _initial_non_base(cfg: LlamaConfig, lora, dtype, param_dtype, seed: int):
    """The initial LoRA params and RNG state of a freshly built model. Under jit the base
    weights' random init is dead code and never materialises; one program per distinct
    model (static arguments), so the stages of a run that load the same model compile it
    once."""
    return nnx.state(_build(cfg, lora, dtype, param_dtype, seed), _NOT_BASE)


def _checked(weights: Any, name: str, model: Llama, path: tuple, layer: int | None
             ) -> np.ndarray:
    value = weights.get(name)
    want = _hf_shape(model, path, layer)
    if tuple(value.shape) != want:
        raise CheckpointError(
            f"{weights.where(name)}: tensor {name!r} has shape {tuple(value.shape)}, "
            f"expected {want}")
    return value


def load_tokenizer(path_or_hub_id: str | Path):
    """The checkpoint's tokenizer: from a GGUF file's metadata, else via AutoTokenizer
    (never with remote code)."""
    if str(path_or_hub_id) in MODELS or is_gguf(path_or_hub_id):
        return load_gguf_tokenizer(resolve_checkpoint(path_or_hub_id))
    # Imported only here: transformers' auto classes import torch when it is installed
    # (the test environment has it): 177 MB resident (results/bench/load.json) that a
    # GGUF run never uses.
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path_or_hub_id), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path_or_hub_id}: cannot load tokenizer ({e})") from e


# ---------------------------------------------------------------------------------------
# Public API: save


def to_host(x: jax.Array) -> np.ndarray:
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _hf_tensors(model: Llama) -> Iterator[tuple[str, tuple, int | None, tuple[int, ...]]]:
    for name, (path, layer) in weight_names(model.cfg).items():
        yield name, path, layer, _hf_shape(model, path, layer)


def _hf_value(model: Llama, path: tuple, merge: bool) -> jax.Array:
    """The variable at `path` (all layers, when stacked), LoRA folded in with `merge`."""
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
    shards: list[list[tuple[str, tuple, int | None, tuple[int, ...]]]] = [[]]
    size = 0
    for item in tensors:
        nbytes = math.prod(item[3]) * dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    current: dict[tuple, np.ndarray] = {}  # the one variable on the host (all its layers)
    for k, shard in enumerate(shards):
        file = ("model.safetensors" if len(shards) == 1
                else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors")
        arrays = {}
        for name, path, layer, hf_shape in shard:
            if path not in current:
                current.clear()
                current[path] = to_host(_hf_value(model, path, merge_lora)).astype(
                    dtype, copy=False)
            host = current[path] if layer is None else current[path][layer]
            arrays[name] = np.ascontiguousarray(host.reshape(hf_shape))
            weight_map[name] = file
        if writer:
            save_file(arrays, str(out_dir / file), metadata={"format": "pt"})
        del arrays
    if not writer:
        return out_dir
    if len(shards) > 1:
        total = sum(math.prod(s) * dtype.itemsize for *_, s in tensors)
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


