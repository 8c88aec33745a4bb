"""scripts/demo_bases.py: the demo's method under several base draws, reduced to seconds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from demo_helpers import REDUCED

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import demo_bases  # noqa: E402


def test_summary_pools_the_paired_gaps():
    rows = [{"base_seed": b, "seed": s, "vanilla": 0.1, "sft": sft, "semievol": semi}
            for b, s, sft, semi in [(0, 0, 0.70, 0.78), (0, 1, 0.75, 0.79),
                                    (1, 0, 0.80, 0.79), (1, 1, 0.74, 0.74)]]
    summary = demo_bases.summarise(rows)
    assert summary["per_base"]["0"]["paired_gaps"] == pytest.approx([0.08, 0.04])
    assert summary["per_base"]["1"]["gap"] == pytest.approx(-0.005)
    pooled = summary["pooled"]
    assert (pooled["ahead"], pooled["level"], pooled["behind"]) == (2, 1, 1)
    assert pooled["gap"] == pytest.approx((0.08 + 0.04 - 0.01 + 0.0) / 4)
    text = demo_bases.table(rows, summary)
    assert "| 0 | 70 / 75 | 78 / 79 | +8, +4 | +6.0 |" in text
    assert "ahead 2, level 1, behind 1" in text


@pytest.mark.slow
def test_two_bases_draw_two_bases_and_resume(tmp_path):
    out, js = tmp_path / "grid", tmp_path / "bases.json"
    argv = ["--out", str(out), "--bases", "0", "1", "--seeds", "0", "--json", str(js),
            *REDUCED]
    assert demo_bases.main(argv) == 0
    first = json.loads(js.read_text())
    assert [(r["base_seed"], r["seed"]) for r in first["rows"]] == [(0, 0), (1, 0)]
    assert first["rows"][0]["base_digest"] != first["rows"][1]["base_digest"]
    assert set(first["summary"]["per_base"]) == {"0", "1"}
    assert first["cpu"]["cores"] >= 1
    # A second invocation reuses every finished stage and gives the same rows.
    assert demo_bases.main(argv) == 0
    assert json.loads(js.read_text())["rows"] == first["rows"]
