"""Llama architecture config: the one place that reads and writes HF `config.json`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from semievol_jax.errors import UserError


class CheckpointError(UserError, ValueError):
    """A checkpoint (config, weights, adapter) that cannot be used; the message names the file,
    key or tensor at fault."""


def read_json(path: Path) -> dict:
    """A checkpoint's JSON file, or one CheckpointError naming the file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: {path.name} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling (HF `rope_parameters` / legacy `rope_scaling`)."""

    rope_type: str  # "llama3" (Llama 3.1 smooth wavelength scaling) or "linear"
    factor: float  # context extension factor (8.0 for Llama 3.1)
    low_freq_factor: float = 1.0  # llama3: wavelengths above original_len / this get / factor
    high_freq_factor: float = 4.0  # llama3: wavelengths below original_len / this are kept
    original_max_position_embeddings: int = 8192  # llama3: context length the base model saw


SUPPORTED_ROPE_TYPES = ("default", "llama3", "linear")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Shape and numerics of a Llama decoder. Hashable, so it can be a static jit argument."""

    vocab_size: int  # V
    hidden_size: int  # D
    intermediate_size: int  # F
    num_layers: int  # L
    num_heads: int  # N
    num_kv_heads: int  # K (N % K == 0; K < N is grouped-query attention)
    head_dim: int  # H
    rms_norm_eps: float = 1e-5  # epsilon inside RMSNorm's rsqrt
    rope_theta: float = 10000.0  # RoPE base wavelength
    rope_scaling: RopeScaling | None = None  # None: plain RoPE
    max_position_embeddings: int = 2048  # advertised context length (informational)
    tie_word_embeddings: bool = False  # lm_head reuses the token embedding matrix
    bos_token_id: int | None = None  # beginning-of-sequence id
    eos_token_id: tuple[int, ...] = ()  # every id that ends generation
    pad_token_id: int | None = None  # padding id (None: the tokenizer's)
    torch_dtype: str = "float32"  # dtype the weights were stored in (informational)

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise CheckpointError(
                f"num_attention_heads={self.num_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise CheckpointError(f"head_dim={self.head_dim} must be even for RoPE")

    @classmethod
    def from_hf(cls, source: dict[str, Any] | str | Path) -> LlamaConfig:
        """Builds the config from an HF `config.json` dict, file, or checkpoint directory.

        Accepts both the transformers>=5 `rope_parameters` layout and the older top-level
        `rope_theta` + `rope_scaling` layout.

        Raises:
            CheckpointError: unknown `model_type`, unsupported RoPE type or activation,
                biases, or a missing required key; the message names the file.
        """
        where = "config dict"
        if not isinstance(source, dict):
            path = Path(source)
            if path.is_dir():
                path = path / "config.json"
            where = str(path)
            source = read_json(path)
        d = source
        model_type = d.get("model_type")
        if model_type != "llama":
            raise CheckpointError(
                f"{where}: model_type {model_type!r} is not supported (only 'llama'); "
                "custom code (auto_map / trust_remote_code) is never executed"
            )
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise CheckpointError(f"{where}: hidden_act {act!r} is not supported (only 'silu')")
        for key in ("attention_bias", "mlp_bias"):
            if d.get(key):
                raise CheckpointError(f"{where}: {key}=true is not supported")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads"):
            if key not in d:
                raise CheckpointError(f"{where}: required key {key!r} missing")
        theta, scaling = _parse_rope(d, where)
        eos = d.get("eos_token_id")
        eos_ids = () if eos is None else tuple(eos) if isinstance(eos, list) else (int(eos),)
        num_heads = int(d["num_attention_heads"])
        return cls(
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_layers=int(d["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(d.get("num_key_value_heads") or num_heads),
            head_dim=int(d.get("head_dim") or d["hidden_size"] // num_heads),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=eos_ids,
            pad_token_id=d.get("pad_token_id"),
            torch_dtype=str(d.get("dtype") or d.get("torch_dtype") or "float32"),
        )

    def to_hf(self) -> dict[str, Any]:
        """The HF `config.json` dict (readable by transformers 4.x and 5.x)."""
        rope_parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        legacy_scaling = None
        if self.rope_scaling is not None:
            legacy_scaling = dataclasses.asdict(self.rope_scaling)
            if self.rope_scaling.rope_type == "linear":
                legacy_scaling = {"rope_type": "linear", "factor": self.rope_scaling.factor}
            rope_parameters = {**legacy_scaling, "rope_theta": self.rope_theta}
        eos: int | list[int] | None = list(self.eos_token_id) or None
        if eos is not None and len(eos) == 1:
            eos = eos[0]
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": legacy_scaling,
            "rope_parameters": rope_parameters,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": False,
            "mlp_bias": False,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "pretraining_tp": 1,
            "use_cache": True,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.torch_dtype,
        }


def _parse_rope(d: dict[str, Any], where: str) -> tuple[float, RopeScaling | None]:
    """(theta, scaling) from either HF rope layout."""
    params = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise CheckpointError(f"{where}: rope_parameters must be an object, got {params!r}")
    theta = float(params.get("rope_theta", d.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise CheckpointError(
            f"{where}: rope type {rope_type!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    if float(params.get("partial_rotary_factor", 1.0)) != 1.0:
        raise CheckpointError(f"{where}: partial_rotary_factor != 1 is not supported")
    if rope_type == "default":
        return theta, None
    if "factor" not in params:
        raise CheckpointError(f"{where}: rope type {rope_type!r} needs a 'factor'")
    if rope_type == "linear":
        return theta, RopeScaling("linear", float(params["factor"]))
    missing = [k for k in ("low_freq_factor", "high_freq_factor",
                           "original_max_position_embeddings") if k not in params]
    if missing:
        raise CheckpointError(f"{where}: llama3 rope scaling lacks {missing}")
    return theta, RopeScaling(
        "llama3",
        float(params["factor"]),
        float(params["low_freq_factor"]),
        float(params["high_freq_factor"]),
        int(params["original_max_position_embeddings"]),
    )
