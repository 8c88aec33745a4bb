"""Two SemiEvol rounds end to end on the tiny Llama and the tiny synthetic task.

Every stage runs for real in both rounds; round 2's base is round 1's M2: a merged
checkpoint for LoRA, a digested reference to M2's checkpoint for full fine-tuning.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_pipeline_e2e import tiny_overrides

from semievol_jax.config import load_config
from semievol_jax.pipeline.config import RunConfig

LATER = ["01_base", "02_sft", "03_index", "04_propose", "05_select", "06_final", "07_eval"]


def mtimes(run: Path) -> dict[str, int]:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("record.json")}


def vanilla_predictions(stage_dir: Path) -> list[tuple]:
    rows = [json.loads(x) for x in (stage_dir / "predictions.jsonl").read_text().splitlines()]
    return [(r["id"], r["response"]) for r in rows if r["model"] == "vanilla"]


def logits(model, ids: list[int]) -> np.ndarray:
    import jax.numpy as jnp

    tokens = jnp.asarray([ids], jnp.int32)
    return np.asarray(model(tokens, jnp.arange(len(ids))[None]).logits_BTV)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_ckpt_dir, tiny_task):
    """(overrides, config, run dir, records) of one two-round LoRA run."""
    from semievol_jax.pipeline import graph

    over = tiny_overrides(tiny_ckpt_dir, tiny_task) + ["rounds=2"]
    cfg = load_config(RunConfig, None, over)
    run = tmp_path_factory.mktemp("lora") / "run"
    return over, cfg, run, graph.run_pipeline(cfg, run)


def manifests(run: Path) -> dict[str, dict[str, str]]:
    return {sub: {k: v["output_digest"] for k, v in
                  json.loads((run / sub / "manifest.json").read_text()).items()}
            for sub in (".", "round2")}


@pytest.mark.slow
def test_two_rounds_lora(lora_run, tiny_ckpt_dir):
    from semievol_jax import model as m
    from semievol_jax.pipeline import graph, summary, verify
    from semievol_jax.pipeline.models import ModelRef, load_model
    from semievol_jax.pipeline.runner import status

    _, cfg, run, records = lora_run
    assert sorted(p.name for p in (run / "round2").iterdir() if p.name[:2].isdigit()) == LATER
    assert records["round2/base"]["input_digests"]["prev_final"] == \
        records["final"]["output_digest"]

    # Round 2's base is round 1's base with M2's adapter folded in.
    base2 = run / "round2" / "01_base"
    assert json.loads((base2 / "base.json").read_text()) == {"model": "model", "local": True}
    merged, _ = m.load_hf(base2 / "model")
    m2, _ = load_model(ModelRef(str(tiny_ckpt_dir), str(run / "06_final" / "model")),
                       cfg.base)
    ids = list(range(3, 40))
    np.testing.assert_allclose(logits(merged, ids), logits(m2, ids), atol=2e-5)
    plain, _ = m.load_hf(tiny_ckpt_dir)
    assert not np.allclose(logits(plain, ids), logits(merged, ids), atol=1e-4)
    # Round 2 tunes fresh adapters on the merged weights; vanilla stays the original base.
    assert (run / "round2" / "02_sft" / "model" / "adapter_config.json").exists()
    assert vanilla_predictions(run / "round2" / "07_eval") == \
        vanilla_predictions(run / "07_eval")

    summarised = summary.write_run_report(run, run, cfg, {0: {"semievol": records}}, 1.0,
                                        title="tiny")
    assert summarised["semievol"]["per_seed"] == \
        [records["round2/eval"]["metrics"]["acc_semievol"]]
    text = (run / "report.md").read_text()
    assert "## Accuracy per round" in text and "| round 1 | round 2 |" in text
    assert "![accuracy_per_round](accuracy_per_round.png)" in text
    assert (run / "accuracy_per_round.png").stat().st_size > 1000
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["accuracy_per_round"]["semievol"] == [
        records["eval"]["metrics"]["acc_semievol"],
        records["round2/eval"]["metrics"]["acc_semievol"]]
    assert sorted(metrics["pseudo_labels"]) == ["1", "2"]

    assert [r["stage"] for r in status(run)][-7:] == [f"round2/{s}" for s in LATER]
    assert verify.verify(run) == 0
    before = mtimes(run)
    graph.run_pipeline(cfg, run)
    assert mtimes(run) == before  # both rounds skipped
    pseudo = run / "round2" / "05_select" / "pseudo.jsonl"
    kept = pseudo.read_bytes()
    with open(pseudo, "a") as f:
        f.write("{}\n")
    assert verify.verify(run) == 1  # names the round-2 stage
    pseudo.write_bytes(kept)


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from semievol_jax.config import load_config
    from semievol_jax.pipeline.graph import run_pipeline
    from semievol_jax.pipeline.config import RunConfig
    run_pipeline(load_config(RunConfig, None, sys.argv[2:]), Path(sys.argv[1]))
""")


@pytest.mark.slow
def test_sigkill_in_round2_resumes_to_same_digests(tmp_path, lora_run):
    """Killed while round 2 trains its M1, a rerun resumes there and ends bit-identical."""
    over, _, ref, _ = lora_run
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(run), *over])
    marker = run / "round2" / "01_base" / "record.json"
    deadline = time.monotonic() + 600
    while proc.poll() is None and not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before round 2 started"
    time.sleep(2.0)  # into round 2's SFT
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "round2" / "07_eval").exists()
    subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(run), *over], check=True)
    assert manifests(run) == manifests(ref)


@pytest.mark.slow
def test_two_rounds_full_finetuning(tmp_path, tiny_ckpt_dir, tiny_task):
    from semievol_jax.pipeline import graph
    from semievol_jax.pipeline.runner import read_record

    over = tiny_overrides(tiny_ckpt_dir, tiny_task) + [
        "rounds=2", "sft.train.mode=full", "sft.train.learning_rate=1e-4"]
    cfg = load_config(RunConfig, None, over)
    run = tmp_path / "run"
    records = graph.run_pipeline(cfg, run)
    # Full fine-tuning: round 2's base references M2's checkpoint, with its digests.
    info = json.loads((run / "round2" / "01_base" / "base.json").read_text())
    assert info["model"] == "../../06_final/model" and info["local"] is True
    outputs = read_record(run / "06_final")["outputs"]
    assert info["files"] == {k[len("model/"):]: v for k, v in outputs.items()
                             if k.startswith("model/")}
    assert not (run / "round2" / "01_base" / "model").exists()  # no copy of M2
    assert (run / "round2" / "06_final" / "model" / "config.json").exists()
    assert vanilla_predictions(run / "round2" / "07_eval") == \
        vanilla_predictions(run / "07_eval")
    assert records["round2/eval"]["input_digests"]["vanilla"] == \
        records["base"]["output_digest"]
