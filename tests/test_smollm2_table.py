"""scripts/smollm2_table.py merges per-task studies into one table, with each task's rows."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import smollm2_table  # noqa: E402


def _study(root: Path, task: str, rows: str | None, sft: list[float], semievol: list[float]):
    d = root / task
    d.mkdir(parents=True)
    overrides = [f"data.max_rows={rows}"] if rows is not None else []
    (d / "provenance.json").write_text(json.dumps({"args": {"overrides": overrides}}))
    gaps = [b - a for a, b in zip(sft, semievol, strict=True)]
    (d / "metrics.json").write_text(json.dumps({
        "accuracy": {"vanilla": {task: {"values": [0.3]}},
                     "sft": {task: {"values": sft}},
                     "semievol": {task: {"values": semievol}}},
        "headline": {"paired_gaps": gaps, "paired_gap_std": 0.01, "sft_beats_vanilla": True},
        "diagnostics": {"eval.demo_gold_match": {"mean": 0.5}},
        "stage_seconds": {"sft": 10.0, "eval": 5.0}}))


def test_merges_tasks_with_their_row_counts(tmp_path, monkeypatch):
    _study(tmp_path, "fpb", "192", [0.5, 0.6, 0.7], [0.6, 0.6, 0.8])
    _study(tmp_path, "mmlu", None, [0.25], [0.2])
    monkeypatch.setattr(sys, "argv", ["smollm2_table.py", str(tmp_path)])
    assert smollm2_table.main() == 0
    merged = json.loads((tmp_path / "metrics.json").read_text())
    assert merged["tasks"] == ["fpb", "mmlu"]
    assert merged["accuracy"]["semievol"]["fpb"]["values"] == [0.6, 0.6, 0.8]
    assert merged["accuracy"]["sft"]["mmlu"]["mean"] == pytest.approx(0.25)
    report = (tmp_path / "report.md").read_text()
    assert "| fpb | 192 | 0 | 0 | 10 |" in report
    assert "| mmlu | all | 0 | 0 | 10 |" in report
    assert "| fpb | +10.0, +0.0, +10.0 | +6.7 |" in report


def test_no_study_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["smollm2_table.py", str(tmp_path)])
    assert smollm2_table.main() == 2
    assert str(tmp_path) in capsys.readouterr().err
