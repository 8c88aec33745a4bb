"""The pipeline end to end on a tiny random Llama and a tiny synthetic task.

Every stage runs for real (LoRA SFT, embeddings + index, vmapped proposals, reflection,
final tuning, evaluation); then a rerun skips everything, a config change reruns only
from the affected stage, and runs killed with SIGKILL resume to the same digests.
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

import pytest

from semievol_jax.config import load_config
from semievol_jax.pipeline.config import ABLATIONS, RunConfig

STAGES = ["00_data", "01_base", "02_sft", "03_index", "04_propose", "05_select", "06_final",
          "07_eval"]


def tiny_overrides(ckpt: Path, data: Path) -> list[str]:
    return [
        "data.task=mmlu_pro", f"data.labeled={data / 'labeled.csv'}",
        f"data.unlabeled={data / 'unlabeled.csv'}", f"data.test={data / 'test.csv'}",
        f"base.model={ckpt}", "base.dtype=float32",
        "sft.lora.rank=4", "sft.train.epochs=1", "sft.train.batch_size=4",
        "sft.train.cutoff_len=256", "sft.train.length_buckets=[128,256]",
        "sft.train.checkpoint_every=2", "sft.train.progress=false",
        "sft.train.tensorboard=false", "sft.train.async_checkpoint=false",
        "final.train.learning_rate=1e-4", "final.train.epochs=1", "final.train.batch_size=4",
        "final.train.cutoff_len=256", "final.train.length_buckets=[128,256]",
        "final.train.checkpoint_every=2", "final.train.progress=false",
        "final.train.tensorboard=false", "final.train.async_checkpoint=false",
        "index.k=2", "propose.n=3", "propose.sample.max_new_tokens=6",
        "propose.sample.batch_size=8", "select.reflect_sample.max_new_tokens=6",
        "eval.sample.max_new_tokens=6", "eval.sample.batch_size=8",
        # The tiny model rarely agrees with itself: keep M2 a trained model.
        "final.data=labeled+selected",
    ]


def record_times(run: Path) -> dict[str, float]:
    return {s: (run / s / "record.json").stat().st_mtime_ns for s in STAGES}


def manifest(run: Path) -> dict[str, str]:
    return {k: v["output_digest"] for k, v in json.loads((run / "manifest.json").read_text())
            .items()}


def test_run_skip_and_partial_rerun(tmp_path, tiny_ckpt_dir, tiny_task):
    from semievol_jax.pipeline.graph import run_pipeline

    run = tmp_path / "run"
    cfg = load_config(RunConfig, None, tiny_overrides(tiny_ckpt_dir, tiny_task))
    records = run_pipeline(cfg, run)
    assert sorted(p.name for p in run.iterdir() if p.name[:2].isdigit()) == STAGES
    ev = json.loads((run / "07_eval" / "eval.json").read_text())
    assert set(ev["models"]) == {"vanilla", "sft", "semievol"}
    cands = [json.loads(line) for line in
             (run / "04_propose" / "candidates.jsonl").read_text().splitlines()]
    assert len(cands) == 12 * 3  # n collaborators per unlabeled question
    # Exactly the questions whose collaborators disagree (an answer missing counts as a
    # disagreement) were reflected on, each once.
    answers: dict[str, list] = {}
    for c in cands:
        answers.setdefault(c["qid"], []).append(c["answer"])
    disagree = {q for q, a in answers.items() if None in a or len(set(a)) > 1}
    reflected = [json.loads(line)["qid"] for line in
                 (run / "05_select" / "reflections.jsonl").read_text().splitlines()]
    assert sorted(reflected) == sorted(disagree)
    assert records["select"]["metrics"]["reflected"] == len(disagree)
    assert records["select"]["metrics"]["num_consistent"] == 12 - len(disagree)
    # The select stage's inputs never include the held gold answers.
    assert "data" in records["select"]["input_digests"]
    assert not (run / "05_select" / "held").exists()

    from semievol_jax.pipeline.summary import write_run_report

    summary = write_run_report(run, run, cfg, {0: {"semievol": records}}, 1.0, title="tiny")
    assert summary["semievol"]["per_seed"] == [records["eval"]["metrics"]["acc_semievol"]]
    assert "| SemiEvol |" in (run / "report.md").read_text()
    assert json.loads((run / "metrics.json").read_text())

    from semievol_jax.pipeline.verify import verify

    assert verify(run) == 0
    assert verify(run, fresh=str(run)) == 0  # a run compared with itself agrees

    before = record_times(run)
    run_pipeline(cfg, run)
    assert record_times(run) == before  # everything skipped

    changed = load_config(RunConfig, None,
                          tiny_overrides(tiny_ckpt_dir, tiny_task) + ["select.theta=0.9"])
    run_pipeline(changed, run)
    after = record_times(run)
    same = [s for s in STAGES if after[s] == before[s]]
    assert same == STAGES[:5]  # data .. propose untouched; select, final, eval rerun

    control = load_config(RunConfig, None, tiny_overrides(tiny_ckpt_dir, tiny_task)
                          + ["select.theta=0.9", "final.data=labeled"])
    final = run_pipeline(control, run)["final"]["metrics"]
    assert (final["labeled"], final["pseudo"]) == (
        records["final"]["metrics"]["labeled"], 0)  # the same labeled rows, no pseudo-label

    with open(run / "05_select" / "pseudo.jsonl", "a") as f:
        f.write("{}\n")  # tampered output: verify names the stage
    assert verify(run) == 1


@pytest.mark.slow
def test_bf16_matmuls_rerun_every_stage_that_loads_the_model(tmp_path, tiny_ckpt_dir,
                                                             tiny_task):
    """base.matmul_dtype runs every stage, and setting it on a finished run reruns the
    base and every stage after it, the data staying: base.json records it. So does
    base.causal_block."""
    from semievol_jax.pipeline.graph import run_pipeline

    run = tmp_path / "run"
    over = tiny_overrides(tiny_ckpt_dir, tiny_task)
    plain = run_pipeline(load_config(RunConfig, None, over), run)
    assert "matmul_dtype" not in json.loads((run / "01_base" / "base.json").read_text())
    before = record_times(run)
    low = run_pipeline(load_config(RunConfig, None, over + ["base.matmul_dtype=bfloat16"]),
                       run)
    after = record_times(run)
    assert [s for s in STAGES if after[s] == before[s]] == ["00_data"]
    base = json.loads((run / "01_base" / "base.json").read_text())
    assert (base["dtype"], base["matmul_dtype"]) == ("float32", "bfloat16")
    assert low["sft"]["output_digest"] != plain["sft"]["output_digest"]  # bf16 products
    assert set(json.loads((run / "07_eval" / "eval.json").read_text())["models"]) == {
        "vanilla", "sft", "semievol"}
    # base.causal_block, likewise: attention in query blocks reruns every model stage.
    run_pipeline(load_config(RunConfig, None, over + ["base.causal_block=16"]), run)
    blocked = record_times(run)
    assert [s for s in STAGES if blocked[s] == after[s]] == ["00_data"]
    base = json.loads((run / "01_base" / "base.json").read_text())
    assert base["causal_block"] == 16 and "matmul_dtype" not in base


def test_bad_data_stops_before_any_stage(tmp_path, tiny_ckpt_dir, tiny_task):
    bad = tmp_path / "bad"
    bad.mkdir()
    for split in ("labeled", "unlabeled", "test"):
        (bad / f"{split}.csv").write_text((tiny_task / f"{split}.csv").read_text())
    (bad / "test.csv").write_text("question,options,answer\nQ?,\"[\"\"x\"\", \"\"y\"\"]\",C\n")
    out = subprocess.run(
        [sys.executable, "-m", "semievol_jax", "run", "--config", "demo",
         "--run-dir", str(tmp_path / "run"), *tiny_overrides(tiny_ckpt_dir, bad),
         "data.synth=null", "data.task_def=null", "base.pretrain=null"],
        capture_output=True, text=True)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "test.csv:2" in out.stderr
    assert "Traceback" not in out.stderr
    leftovers = [p.name for p in (tmp_path / "run").iterdir()
                 if p.name[:2].isdigit() or p.name.startswith(".0")]
    assert leftovers == []


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from semievol_jax.config import load_config
    from semievol_jax.pipeline.graph import run_pipeline
    from semievol_jax.pipeline.config import RunConfig
    run_pipeline(load_config(RunConfig, None, sys.argv[2:]), Path(sys.argv[1]))
""")


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_s", [4.0, 9.0, 15.0])
def test_sigkill_anywhere_resumes_to_same_digests(tmp_path, tiny_ckpt_dir, tiny_task,
                                                  kill_after_s):
    over = tiny_overrides(tiny_ckpt_dir, tiny_task)
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(ref), *over], check=True)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(run), *over])
    time.sleep(kill_after_s)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(run), *over], check=True)
    assert manifest(run) == manifest(ref)


@pytest.mark.slow
def test_ablations_recompute_only_the_stages_they_change(tmp_path, tiny_ckpt_dir, tiny_task,
                                                       monkeypatch):
    from semievol_jax.pipeline import stages
    from semievol_jax.pipeline.graph import make_mesh
    from semievol_jax.pipeline.models import AnswerCache
    from semievol_jax.pipeline.variants import run_ablations

    answers = AnswerCache()
    monkeypatch.setattr(stages, "EVAL_ANSWERS", answers)
    cfg = load_config(RunConfig, None, tiny_overrides(tiny_ckpt_dir, tiny_task))
    records = run_ablations(cfg, tmp_path, mesh=make_mesh(cfg))
    # Each distinct model was decoded once (5 runs x 3 models, but one base, and M1 is
    # shared by every variant except no_iwp), and the reused answers are the main run's.
    runs = [tmp_path, *(tmp_path / "ablations" / ab for ab in ABLATIONS)]

    def models(run):
        d = json.loads((run / "07_eval" / "record.json").read_text())["input_digests"]
        return {(d["base"],), (d["base"], d["sft"]), (d["base"], d["sft"], d["final"])}
    distinct = set().union(*map(models, runs))
    assert len(answers) == len(distinct) <= 3 * len(runs) - 7

    def answers(run, model):
        rows = (run / "07_eval" / "predictions.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, rows) if r["model"] == model]
    for ab in ABLATIONS:
        for model in ("vanilla", "sft") if ab != "no_iwp" else ("vanilla",):
            assert answers(tmp_path / "ablations" / ab, model) == answers(tmp_path, model)
    assert set(records) == {"semievol", "no_iwp", "no_icp", "no_cl", "no_as"}
    first_own = {"no_iwp": "02_sft", "no_icp": "03_index", "no_cl": "04_propose",
                 "no_as": "05_select"}
    for ab, first in first_own.items():
        own = sorted(p.name for p in (tmp_path / "ablations" / ab).iterdir()
                     if p.name[:2].isdigit())
        assert own == STAGES[STAGES.index(first):], ab


def test_tiny_base_pretrains_on_a_real_tasks_unlabeled_prompts(tmp_path, tiny_task):
    """fpb-tiny's path: no synthetic corpus, so the base learns from the unlabeled
    questions in the task's prompt layout (never their answers)."""
    from semievol_jax.model import load_tokenizer
    from semievol_jax.pipeline import stages as st
    from semievol_jax.pipeline.config import BaseConfig, DataConfig
    from semievol_jax.pipeline.runner import StageContext
    from semievol_jax.train.pretrain import PretrainConfig

    data_cfg = DataConfig(task="mmlu_pro", labeled=str(tiny_task / "labeled.csv"),
                          unlabeled=str(tiny_task / "unlabeled.csv"),
                          test=str(tiny_task / "test.csv"))
    data = tmp_path / "data"
    data.mkdir()
    st.run_data(StageContext(data, tmp_path / "w0", {}, data_cfg))
    assert not (data / "raw").exists()
    pcfg = PretrainConfig(vocab_size=320, hidden_size=32, num_heads=2, num_kv_heads=1,
                          intermediate_size=64, seq_len=32, batch_size=2, steps=2)
    base = tmp_path / "base"
    base.mkdir()
    out = st.run_base(StageContext(base, tmp_path / "w1", {"data": data},
                                   BaseConfig(dtype="float32", pretrain=pcfg)),
                      seed=0, task=st.task_of(data_cfg))
    assert out == {"pretrained": True}
    tok = load_tokenizer(base / st.MODEL_DIR)
    # The tokenizer was trained on the prompt layout: its words are whole tokens.
    assert tok.tokenize("Options:") != list("Options:")
