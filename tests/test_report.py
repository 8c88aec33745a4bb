"""The report renders from fake metrics: markdown tables, strict-JSON metrics, PNGs."""

import json
import math

import pytest

from semievol_jax.pipeline.data import GoldAnswers
from semievol_jax.pipeline.report import (
    PseudoLabelStats,
    ReportInputs,
    accuracy_table,
    format_accuracy,
    pseudo_label_stats,
    write_report,
)
from semievol_jax.pipeline.selection import (
    Candidate,
    SelectionConfig,
    score_pseudo_labels,
    select,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_inputs():
    return ReportInputs(
        run_name="fake",
        accuracy={"semievol": {"mmlu": [0.70, 0.72], "fpb": [0.96]},
                  "vanilla": {"mmlu": [0.66, 0.66], "fpb": [0.81]},
                  "sft": {"mmlu": [0.68, 0.69]},
                  "no_as": {"mmlu": [0.69, 0.70]}},
        pseudo_labels={1: PseudoLabelStats(0.6, 0.75, 100, 75, 0.9,
                                           {0.1: 0.95, 0.3: 0.92, 1.0: float("nan")},
                                           {0.1: 0.62, 0.3: 0.68, 1.0: 0.99})},
        entropies={"vanilla": [0.5, 0.9, 1.2], "sft": [0.2, 0.3], "semievol": [0.1, 0.2]},
        accuracy_per_round={"semievol": [0.70, 0.71, 0.715]},
        config={"select": {"theta": 0.3}},
        versions={"jax": "0.10.2"},
        device={"backend": "cpu", "count": 1},
        stage_seconds={"sft": 12.5, "propose": 30.0},
        notes=["labeled/test: 9 shared"],
    )


def test_format_accuracy():
    assert format_accuracy([0.7031]) == "70.3"
    assert format_accuracy([0.70, 0.72]) == "71.0 ± 1.4"  # sample std, ddof=1
    assert format_accuracy([]) == "-"


def test_accuracy_table_rows_in_paper_order():
    lines = accuracy_table(fake_inputs().accuracy)
    # Cells ran 1 or 2 seeds: the note says so instead of claiming 2 everywhere.
    assert lines[0] == ("Test accuracy (%), mean ± std over the seeds each cell ran (1 to 2; "
                        "a cell without ± ran one).")
    same = accuracy_table({"sft": {"fpb": [0.5, 0.7]}, "semievol": {"fpb": [0.6, 0.6]}})
    assert same[0] == "Test accuracy (%), mean ± std over 2 seeds."
    assert lines[2] == "| strategy | fpb | mmlu |"
    rows = [ln.split(" | ")[0].lstrip("| ") for ln in lines[4:]]
    assert rows == ["Vanilla", "SFT", "SemiEvol", "w/o AS"]
    assert lines[5] == "| SFT | - | 68.5 ± 0.7 |"


def test_write_report_files(tmp_path):
    files = write_report(fake_inputs(), tmp_path / "run")
    md = files.report_md.read_text()
    assert "| Vanilla | 81.0 | 66.0 ± 0.0 |" in md
    assert "| 1 | 60.0% | 75.0% | 75/100 | 90.0% |" in md
    assert "| 1 | 95.0% (62.0%) | 92.0% (68.0%) | - (99.0%) |" in md  # NaN -> "-"
    assert "| total | 42.5 |" in md and '"theta": 0.3' in md
    assert [p.name for p in files.plots] == ["entropy_distributions.png",
                                             "pseudo_label_accuracy_vs_theta.png",
                                             "accuracy_per_round.png"]
    for p in files.plots:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000
        assert f"]({p.name})" in md
    metrics = json.loads(files.metrics_json.read_text())  # strict: NaN became null
    assert metrics["accuracy"]["semievol"]["mmlu"]["mean"] == pytest.approx(0.71)
    assert metrics["accuracy"]["semievol"]["fpb"]["std"] is None
    assert metrics["pseudo_labels"]["1"]["accuracy_per_theta"]["1.0"] is None
    assert metrics["entropy_summary"]["vanilla"]["count"] == 3


def test_minimal_report_has_no_plots(tmp_path):
    files = write_report(ReportInputs(run_name="bare"), tmp_path)
    assert files.plots == () and files.report_md.read_text().startswith("# SemiEvol run")


def test_stats_from_a_real_selection():
    cs = ([Candidate("a", i, "", "A", 1.0) for i in range(2)]
          + [Candidate("b", 0, "", "A", 1.0), Candidate("b", 1, "", "B", 1.0)])
    sel = select(cs, {"b": ("B", 0.5)}, SelectionConfig(rule="none"))
    st = pseudo_label_stats(sel, score_pseudo_labels(sel, GoldAnswers({"a": "A", "b": "A"}),
                                                     thetas=(0.5,)))
    assert (st.consistency_rate, st.selected_fraction, st.num_selected) == (0.5, 1.0, 2)
    assert st.accuracy_selected == 0.5 and not math.isnan(st.accuracy_per_theta[0.5])


def test_stage_seconds_count_a_shared_stage_once():
    from semievol_jax.pipeline.summary import stage_seconds

    def rec(key, s, digest="same"):
        return {"key": key, "output_digest": digest, "wall_s": s}

    shared = {"data": rec("d", 0.5), "base": rec("b", 100.0)}  # seed 0 made, seeds adopt
    per_seed = {seed: {"semievol": {**shared, "sft": rec(f"s{seed}", 10.0 + seed)}}
                for seed in range(3)}
    # Each seed's sft ran, though all three wrote equal outputs (digest "same").
    assert stage_seconds(per_seed) == {"data": 0.5, "base": 100.0, "sft": 33.0}


def test_recorded_seconds_sum_every_run_once(tmp_path):
    from semievol_jax.pipeline.summary import recorded_seconds

    def write(rel, key, wall):
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "record.json").write_text(json.dumps({"key": key, "wall_s": wall}))

    assert recorded_seconds(tmp_path) is None  # no record
    write("seed0/02_sft", "s0", 10.0)
    write("seed0/ablations/no_as/06_final", "f", 2.5)
    write("seed1/06_final", "f", 2.5)  # the same stage, adopted: counted once
    assert recorded_seconds(tmp_path) == 12.5
    write("seed1/07_eval", "e", None)  # a record without its time: no total
    assert recorded_seconds(tmp_path) is None
