"""scripts/estimate_preset.py: the 8B presets' expected cost (an estimate, not a bench)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import estimate_preset as ep  # noqa: E402


def test_counts_match_llama_3_1_8b():
    c = ep.model_counts(dict(ep.PRESETS["llama8b"]), lora_rank=16)
    assert c["n"] == 8_030_261_248  # Llama-3.1-8B's published parameter count
    assert c["n_lora"] == 41_943_040  # rank 16 on all seven projections (PEFT's count)


def test_estimate_scales_with_the_work_and_flags_what_does_not_fit():
    from semievol_jax.config import load_config
    from semievol_jax.pipeline.config import RunConfig

    cfg = load_config(RunConfig, "llama3.1-8b-fpb", [])
    splits = {s: {"rows": 400, "prompt_tokens": 100.0} for s in ("labeled", "unlabeled",
                                                                "test")}
    kw = dict(mfu=0.35, hbm_util=0.6, selected_fraction=0.8, disagree_fraction=0.3)
    one = ep.estimate(cfg, splits, "H100", **kw)
    more = dataclasses.replace(cfg, sft=dataclasses.replace(
        cfg.sft, train=dataclasses.replace(cfg.sft.train, epochs=2 * cfg.sft.train.epochs)))
    two = ep.estimate(more, splits, "H100", **kw)
    assert two["seconds"]["sft"] == pytest.approx(2 * one["seconds"]["sft"], abs=0.2)
    assert one["fits"]
    full = dataclasses.replace(cfg, sft=dataclasses.replace(
        cfg.sft, train=dataclasses.replace(cfg.sft.train, mode="full")))
    assert not ep.estimate(full, splits, "H100", **kw)["fits"]  # 16 B/param > 80 GB
    no_unlabeled = ep.estimate(cfg, {**splits, "unlabeled": None}, "H100", **kw)
    assert "propose" not in no_unlabeled["seconds"]
