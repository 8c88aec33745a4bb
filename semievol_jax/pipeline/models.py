"""The models a run's stages make: references to them, loading them, and the test
answers already decoded for each.

A stage never passes a model object to the next one; it writes a checkpoint (or an
adapter) into its directory, and a later stage rebuilds the model from a `ModelRef`
to it. Every reference is relative to stage directories, so a run directory can move.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from semievol_jax import model as m
from semievol_jax.pipeline.config import BaseConfig

MODEL_DIR = "model"  # where a stage keeps the checkpoint or adapter it made


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """How to rebuild a model from stage outputs: a base plus an optional adapter."""

    base: str  # HF directory or hub id
    adapter: str | None = None  # PEFT adapter directory (LoRA) on top of `base`


def base_ref(base_dir: Path) -> ModelRef:
    """The base a `base` stage resolved or made."""
    info = json.loads((base_dir / "base.json").read_text())
    return ModelRef(str(base_dir / info["model"]) if info["local"] else info["model"])


def base_name(base_dir: Path) -> str:
    """The base's name as configured (written into adapters: no machine paths)."""
    return json.loads((base_dir / "base.json").read_text())["model"]


def tuned_ref(stage_dir: Path, fallback: ModelRef) -> ModelRef:
    """The model a tuning stage produced (`fallback` when the stage was disabled)."""
    info = json.loads((stage_dir / "train.json").read_text())
    if info.get("disabled"):
        return fallback
    if info["mode"] == "lora":
        return ModelRef(fallback.base, str(stage_dir / MODEL_DIR))
    return ModelRef(str(stage_dir / MODEL_DIR))


def previous_m2(inputs: dict[str, Path]) -> ModelRef:
    """The previous round's M2 from its adopted `prev_base`, `prev_sft`, `prev_final`."""
    m1 = tuned_ref(inputs["prev_sft"], base_ref(inputs["prev_base"]))
    return tuned_ref(inputs["prev_final"], m1)


def load_model(ref: ModelRef, base_cfg: BaseConfig, *, mesh=None, lora=None,
               merged: bool = False):
    """(model, tokenizer) for `ref`; `lora` adds (or, with an adapter, sizes) adapters.

    `merged=True` folds the adapter into the weights: for inference, where it is faster
    and every model (vanilla, M1, M2) then shares one compiled program per shape. With
    a bf16 `base.matmul_dtype` the folded weights are rounded to bf16 in each matmul:
    an update below half a bf16 step survives in expectation only, as when torch
    merges an adapter into bf16 weights.
    """
    if ref.adapter is not None:
        lora = m.lora_config_from_peft(ref.adapter)
    # With a matmul dtype the model computes in float32 between its matmuls, over
    # weights stored in base.dtype (model/matmul.py says why not in bf16 throughout).
    stored = jnp.dtype(base_cfg.dtype)
    model, _ = m.load_hf(ref.base, lora=lora, mesh=mesh, allow_pickle=base_cfg.allow_pickle,
                         dtype=jnp.float32 if base_cfg.matmul_dtype else stored,
                         param_dtype=stored)
    m.set_matmul_dtype(model, base_cfg.matmul_dtype)
    m.set_causal_block(model, base_cfg.causal_block)
    if ref.adapter is not None:
        m.load_peft_adapter(model, ref.adapter)
        if merged:
            model = m.merge_lora(model)
    return model, m.load_tokenizer(ref.base)


class AnswerCache:
    """Test-set answers, by what determines them (the key): the stages that made the
    model, the test split, the task, the sampling settings and the seed.

    Generation is deterministic, so a process that evaluates the same base or M1 again
    (every ablation and sweep variant of a seed shares them with the method's own run)
    takes the answers from here instead of decoding them again.
    """

    def __init__(self) -> None:
        self._answers: dict[str, list] = {}

    def get(self, key: str, decode: Callable[[], list]) -> list:
        """The answers under `key`, decoded by `decode()` the first time."""
        if key not in self._answers:
            self._answers[key] = decode()
        return self._answers[key]

    def __len__(self) -> int:
        return len(self._answers)

    def clear(self) -> None:
        self._answers.clear()


# One per process: the eval stages of every run this process makes share it.
EVAL_ANSWERS = AnswerCache()


def answers_key(made_by: list[str], *parts: Any) -> str:
    """The AnswerCache key of the output digests of the stages that made a model and
    everything else its answers depend on (JSON-able values)."""
    return json.dumps([made_by, *parts], sort_keys=True, default=repr)
