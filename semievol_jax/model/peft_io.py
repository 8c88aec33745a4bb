"""PEFT LoRA adapters: adapter_config.json <-> LoraConfig, adapter weights in and out."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from semievol_jax.model.config import CheckpointError, read_json
from semievol_jax.model.hf_io import BLOCK_DENSE, to_host
from semievol_jax.model.llama import Llama
from semievol_jax.model.lora import LoraConfig

_PEFT_PREFIX = "base_model.model."
_TARGET_HF = {proj: hf.split(".")[1] for (_, proj), hf in BLOCK_DENSE.items()}  # q -> q_proj


def _lora_modules(model: Llama) -> Iterator[tuple[list[str], Any]]:
    """(PEFT module name per layer, stacked Dense) for every projection with an adapter."""
    for (sub, proj), hf in BLOCK_DENSE.items():
        dense = getattr(getattr(model.layers, sub), proj)
        if dense.lora is not None:
            names = [f"{_PEFT_PREFIX}model.layers.{i}.{hf}" for i in range(model.cfg.num_layers)]
            yield names, dense


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
    for names, dense in _lora_modules(model):
        a_L = to_host(dense.lora_a[...])
        b_L = to_host(dense.lora_b[...])
        for name, a, b in zip(names, a_L, b_L, strict=True):
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
        for names, dense in _lora_modules(model):
            for var, part in ((dense.lora_a, "lora_A"), (dense.lora_b, "lora_B")):
                old = var.get_value()
                layer_shape = old.shape[1:]
                expect = ((want.rank, math.prod(layer_shape[1:])) if part == "lora_A"
                          else (math.prod(layer_shape[:-1]), want.rank))
                host = np.empty(old.shape, old.dtype)
                for i, name in enumerate(names):
                    key = f"{name}.{part}.weight"
                    if key not in keys and f"{name}.{part}.default.weight" in keys:
                        key = f"{name}.{part}.default.weight"
                    if key not in keys:
                        raise CheckpointError(f"{file}: tensor {key!r} is missing")
                    value = f.get_tensor(key)
                    if tuple(value.shape) != expect:
                        raise CheckpointError(f"{file}: tensor {key!r} has shape "
                                              f"{tuple(value.shape)}, expected {expect}")
                    host[i] = value.reshape(layer_shape)
                var.set_value(jax.device_put(jnp.asarray(host), old.sharding))
    return model
