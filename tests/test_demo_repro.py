"""`semievol demo`, reduced to seconds, run twice from scratch (in this process, then in two
worker processes): every stage digest agrees.

The committed results/demo is only worth something if a reviewer's rerun reproduces it
digest for digest; this runs the demo's own code path (synthetic world, base
pretraining, every stage, the ablations) twice on the same machine and compares, then
checks that `semievol verify` accepts the second run against the first's digests.
"""

from __future__ import annotations

import json

import pytest
from demo_helpers import REDUCED


@pytest.mark.slow
def test_reduced_demo_twice_gives_identical_digests(tmp_path):
    from semievol_jax.demo.driver import run_demo
    from semievol_jax.pipeline.runner import DIGESTS
    from semievol_jax.pipeline.verify import verify

    runs = [tmp_path / "a", tmp_path / "b"]
    # The second run spreads the runs over two worker processes (one core each where
    # there are two): parallel execution must not change a digest either.
    for out, workers in zip(runs, (1, 2), strict=True):
        assert run_demo(out, quick=True, overrides=REDUCED, workers=workers) == 0
    a, b = (json.loads((r / DIGESTS).read_text()) for r in runs)
    # The method plus its ablations, each with its own stage digests.
    assert len(a) >= 4 and all(len(v) >= 2 for v in a.values())
    assert a == b
    assert verify(runs[0], fresh=str(runs[1])) == 0
    # The diagnosis script reads the same run (and knows it equals the other's digests).
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import demo_diagnose

    out = tmp_path / "diagnosis.json"
    assert demo_diagnose.main([str(runs[1]), "--committed", str(runs[0] / DIGESTS),
                               "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["digests_equal_committed"] is True
    base = d["base"]
    assert base["num_practice_quizzes"] == 2 * 2  # practice people x quizzes each
    assert 0 <= base["prose_recall_task_facts"]["phrasings"] <= 1
    assert 0 <= base["quiz_accuracy_test_questions"] <= 1
    seed = d["seeds"]["seed0"]
    cov = seed["test_by_coverage"]["sft"]
    assert cov["covered"]["n"] + cov["uncovered"]["n"] == 8  # num_test
    assert list(seed["majority_precision_by_entropy"]) == ["0.2", "0.4", "0.6", "0.8", "1"]
    vs_m1 = seed["pseudo_labels_vs_m1_greedy"]
    selected = (runs[1] / "seed0" / "05_select" / "pseudo.jsonl").read_text().splitlines()
    assert vs_m1["selected"] == len(selected) == vs_m1["same_as_m1"] + vs_m1["differ"]
    assert vs_m1["differ_label_right"] + vs_m1["differ_m1_right"] <= vs_m1["differ"]
