"""scripts/bench_train.py on the 2-layer toy shape: ours in this process, torch in its own."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("torch")
pytest.importorskip("peft")


@pytest.mark.slow
def test_torch_rows_come_from_a_child_process_and_ours_are_timed_on_both_sides(tmp_path):
    out = tmp_path / "train.json"
    subprocess.run([sys.executable, "scripts/bench_train.py", "--preset", "tiny", "--mode",
                    "lora", "--steps", "2", "--warmup", "0", "--out", str(out)],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    run = json.loads(out.read_text())["runs"]["tiny/cpu"]
    rows = {r["name"]: r for r in run["rows"]}
    ours, peer = rows["jax/step/float32"], rows["torch/step/float32"]
    assert len(ours["times"]) == 4 and len(peer["times"]) == 2  # before and after torch
    assert ours["process"] == peer["process"] == "own"
    # Counted per timed step; a toy step whose buffers the heap reuses may fault none.
    assert len(ours["minor_faults"]) == len(ours["times"])
    assert min(ours["minor_faults"]) >= 0 and ours["sys_s_per_step"] >= 0
    assert ours["minor_faults_per_step"] == int(np.median(ours["minor_faults"]))
    assert peer["vs_torch_step"] == 1.0
    assert ours["vs_torch_step"] == pytest.approx(ours["tokens_per_s"] / peer["tokens_per_s"])
    peaks = run["cpu_peak"]["by_framework"]
    assert {"float32", "bfloat16"} <= set(peaks["jax"]) and {"float32", "bfloat16"} <= set(
        peaks["torch"])
    for r in (ours, peer):  # each against its own framework's fp32 matmul peak
        own = r["tokens_per_s"] * r["flops_per_token"] / peaks[r["framework"]]["float32"]
        assert r["fraction_of_own_matmul_peak"] == pytest.approx(own)
    # Twice torch's tokens/s, as fractions of the same peaks as ours.
    goal = ours["goal_2x_torch"]
    assert goal["tokens_per_s"] == pytest.approx(2 * peer["tokens_per_s"])
    for key in ("fraction_of_theoretical_peak", "fraction_of_own_matmul_peak"):
        if key in ours:
            assert goal[key] == pytest.approx(2 * peer["tokens_per_s"] * ours[key]
                                              / ours["tokens_per_s"])
    best = max(peaks["jax"]["float32"], peaks["torch"]["float32"])
    assert goal["fraction_of_best_matmul_peak"] == pytest.approx(
        2 * peer["tokens_per_s"] * ours["flops_per_token"] / best)
    assert "goal_2x_torch" not in peer
