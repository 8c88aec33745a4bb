"""scripts/smollm2_table.py merges per-task studies into one table, with each task's rows."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import smollm2_table  # noqa: E402

from semievol_jax import stats  # noqa: E402


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
    assert "| fpb | 192 | 0 | 0 | 10 | 0 | 0 | 0 | 0 | 5 | 15 | - |" in report
    assert "| mmlu | all | 0 | 0 | 10 |" in report
    assert "| fpb | +10.0, +0.0, +10.0 | +6.7 |" in report


def test_no_study_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["smollm2_table.py", str(tmp_path)])
    assert smollm2_table.main() == 2
    assert str(tmp_path) in capsys.readouterr().err


def _predictions(run: Path, rows: list[tuple[str, str, str]]) -> None:
    (run / "07_eval").mkdir(parents=True)
    (run / "07_eval" / "predictions.jsonl").write_text("".join(
        json.dumps({"model": m, "gold": g, "pred": p, "correct": g == p}) + "\n"
        for m, g, p in rows))


def test_balanced_accuracy_per_seed_tells_a_collapse(tmp_path, monkeypatch):
    _study(tmp_path, "fpb", "192", [0.5, 0.5], [0.75, 0.5])
    gold = ["B", "B", "B", "C"]
    # seed 0: SemiEvol learns both classes; seed 1: it answers B everywhere (75%, balanced 50%)
    _predictions(tmp_path / "fpb" / "seed0", [("semievol", g, g) for g in gold]
                 + [("sft", g, "B") for g in gold] + [("vanilla", g, "C") for g in gold])
    for run, seconds in (("02_sft", 7.5), ("ablations/no_as/06_final", 2.0)):
        (tmp_path / "fpb" / "seed0" / run).mkdir(parents=True)
        (tmp_path / "fpb" / "seed0" / run / "record.json").write_text(
            json.dumps({"wall_s": seconds}))
    _predictions(tmp_path / "fpb" / "seed1", [("semievol", g, "B") for g in gold]
                 + [("sft", g, "B") for g in gold] + [("vanilla", g, "C") for g in gold])
    (tmp_path / "fpb" / "seed0" / "00_data").mkdir()
    for split in ("labeled", "test"):
        (tmp_path / "fpb" / "seed0" / "00_data" / f"{split}.jsonl").write_text(
            "".join(json.dumps({"answer": g}) + "\n" for g in gold))
    monkeypatch.setattr(sys, "argv", ["smollm2_table.py", str(tmp_path)])
    assert smollm2_table.main() == 0
    report = (tmp_path / "report.md").read_text()
    assert "| fpb | method, seed0 | B 75 C 25 | B 75 C 25 | - | C 100 | B 100 | B 75 C 25 |" \
        in report
    assert "| fpb | method, seed1 | B 75 C 25 | B 75 C 25 | - | C 100 | B 100 | B 100 |" in report
    assert "| fpb | 192 | 0 | 0 | 10 | 0 | 0 | 0 | 0 | 5 | 15 | 10 |" in report
    assert "| fpb | method | 50.0 / 50.0 | 50.0 / 50.0 | 100.0 / 50.0 |" in report


def test_answer_summary_recall_per_gold_class():
    s = stats.answer_summary([{"gold": "A", "pred": "A", "correct": True},
                              {"gold": "A", "pred": "B", "correct": False},
                              {"gold": "B", "pred": "B", "correct": True},
                              {"gold": "B", "pred": None, "correct": False}])
    assert s["recall"] == {"A": 0.5, "B": 0.5}
    assert s["balanced_accuracy"] == 0.5
    assert s["answers"] == {"A": 1, "B": 2, "None": 1}
    with pytest.raises(ValueError, match="no rows"):
        stats.answer_summary([])
