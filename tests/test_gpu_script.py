"""scripts/gpu_bench.sh --smoke: the GPU script's every step at toy shapes on the CPU."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = ["Profit rose sharply this quarter .", "Sales fell by half .",
             "The company kept its guidance .", "Shares jumped after the report .",
             "The board met on Tuesday .", "Losses widened again ."]


def _fpb(folder: Path) -> None:
    folder.mkdir(parents=True)
    options = json.dumps(["negative", "neutral", "positive"])
    for split in ("labeled", "unlabeled", "test"):
        with open(folder / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["question", "options", "answer"])
            for i, s in enumerate(SENTENCES):
                w.writerow([f"Judge the sentiment ({split} {i}):\n{s}", options, "ABC"[i % 3]])


@pytest.mark.slow
def test_gpu_script_smoke(tmp_path):
    _fpb(tmp_path / "data" / "fpb")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "DATA": str(tmp_path / "data"),
           "PYTHON": sys.executable, "SEMIEVOL_XLA_CACHE": str(tmp_path / "xla")}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_bench.sh"), "--smoke"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for name in ("env", "selftest", "train", "generate", "compile", "real_run"):
        assert (out / f"{name}.json").stat().st_size > 0, name
    run = next(iter(json.loads((out / "real_run.json").read_text()).values()))
    assert run["wall_s"] > 0 and set(run["stages"]) >= {"sft", "propose", "eval"}
    assert set(run["stage_digests"]) == set(run["stages"])
    assert all(re.fullmatch(r"[0-9a-f]{64}", d) for d in run["stage_digests"].values())
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", run["code"]), run["code"]
    assert run["compile_s"] > 0 and run["programs_compiled"] > 0
    # The programs the pipeline drops between stages come back from the persistent cache.
    assert run["xla_cache"] == str(tmp_path / "xla") and run["drop_programs"] is True
    assert run["programs_loaded_from_cache"] > 0
    peaks = run["stage_peak_rss_bytes"]
    assert set(peaks) >= {"sft", "propose", "eval"} and max(peaks.values()) > 0
    assert max(peaks.values()) <= run["peak_rss_bytes"]
    assert run["memory_budget"]["weights_float32"] > 0
    programs = run["stage_largest_program"]  # XLA's accounting, per stage
    assert set(programs) >= {"sft", "propose", "eval"}
    assert programs["sft"]["temp_bytes"] > 0 and programs["sft"]["argument_bytes"] > 0
    gen = json.loads((out / "generate.json").read_text())["runs"]["accelerator-8b"]
    assert gen["accelerator_8b"]["tokens_per_s"] > 0
