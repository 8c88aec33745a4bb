"""The split formats users hold (TSV, Python-literal options, numeric answer keys), whole
columns that fail one way, unusable unlabeled gold, leakage refused, every official task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semievol_jax.errors import DataError
from semievol_jax.pipeline.data.splits import load_splits
from semievol_jax.pipeline.data.validation import validate_split
from semievol_jax.pipeline.tasks import resolve_task

OFFICIAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "semievol"
TASK = resolve_task("mmlu_pro")
HEADER = "question,options,answer\n"


def opts(*texts: str) -> str:
    """An options cell as the official CSV writes it."""
    return '"' + json.dumps(list(texts)).replace('"', '""') + '"'


def write(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text(header + "".join(r + "\n" for r in rows))
    return path


def test_tsv_by_its_suffix(tmp_path):
    path = tmp_path / "labeled.tsv"
    path.write_text('question\toptions\tanswer\nQ, with a comma?\t["a", "b"]\tB\n')
    (ex,) = validate_split(path, TASK).examples
    assert (ex.question, ex.options, ex.answer) == ("Q, with a comma?", ("a", "b"), "B")


def test_tab_separated_file_named_csv_is_one_line_with_the_fix(tmp_path):
    path = tmp_path / "labeled.csv"
    path.write_text('question\toptions\tanswer\nQ?\t["a", "b"]\tB\n')
    with pytest.raises(DataError) as e:
        validate_split(path, TASK)
    (line,) = e.value.problems
    assert line.startswith(f"{path}:1: the header is one column holding tabs")
    assert "name the file *.tsv" in line


def test_python_literal_options_one_note(tmp_path):
    rows = [f"Q{i}?,\"['a', \"\"it's\"\"]\",A" for i in range(6)]
    result = validate_split(write(tmp_path / "t.csv", rows), TASK)
    assert result.examples[0].options == ("a", "it's")
    (note,) = result.notes
    assert "options written as a Python list" in note and "(6 rows like this)" in note


@pytest.mark.parametrize(("answers", "base", "letters"), [
    (["0", "1", "2", "1"], 0, "ABCB"),
    (["1", "2", "3", "3"], 1, "ABCC"),
    (["2.0", "1.0", "0.0", "0.0"], 0, "CBAA"),  # pandas' float column
])
def test_numeric_answer_keys_per_file(tmp_path, answers, base, letters):
    rows = [f"Q{i}?,{opts('a', 'b', 'c')},{a}" for i, a in enumerate(answers)]
    result = validate_split(write(tmp_path / "t.csv", rows), TASK)
    assert "".join(e.answer for e in result.examples) == letters
    (note,) = result.notes
    assert f"read as {base}-based" in note and f"{base} -> A" in note


def test_numeric_keys_out_of_range_and_mixed_with_letters(tmp_path):
    rows = [f"Q{i}?,{opts('a', 'b')},{a}" for i, a in enumerate(["0", "1", "2"])]
    with pytest.raises(DataError, match=r":4: answer 2 is not a 0-based index for 2 options"):
        validate_split(write(tmp_path / "a.csv", rows), TASK)
    rows = [f"Q{i}?,{opts('a', 'b')},{a}" for i, a in enumerate(["A", "1"])]
    with pytest.raises(DataError, match=r":3: answer '1' is not a letter"):
        validate_split(write(tmp_path / "b.csv", rows), TASK)


def test_jsonl_integer_answers(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"question": f"Q{i}", "options": ["a", "b"],
                                        "answer": i % 2}) + "\n" for i in range(4)))
    assert [e.answer for e in validate_split(path, TASK).examples] == list("ABAB")


def test_a_whole_column_failing_one_way_is_one_line_with_a_hint(tmp_path):
    rows = [f"Q{i}?,{opts('negative', 'positive')},positive" for i in range(40)]
    with pytest.raises(DataError) as e:
        validate_split(write(tmp_path / "t.csv", rows), TASK)
    (line,) = e.value.problems
    assert line.startswith(f"{tmp_path / 't.csv'}:2: 40 of 40 rows fail the same way")
    assert "(one option's text?)" in line and "hint: answers must be option letters" in line


def test_scattered_bad_rows_are_listed_one_by_one(tmp_path):
    rows = [f"Q{i}?,{opts('a', 'b')},{'Z' if i in (3, 7) else 'A'}" for i in range(20)]
    with pytest.raises(DataError) as e:
        validate_split(write(tmp_path / "t.csv", rows), TASK)
    assert [p.split(":")[1] for p in e.value.problems] == ["5", "9"]


def test_a_bad_record_after_multi_line_ones_names_its_physical_line(tmp_path):
    rows = ['"Two\nlines?",' + opts("a", "b") + ",A", '"Three\nphysical\nlines?",'
            + opts("a", "b") + ",Q", '"Q?",' + opts("a", "b") + ",A,extra"]
    with pytest.raises(DataError) as e:
        validate_split(write(tmp_path / "t.csv", rows), TASK)
    assert [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in e.value.problems] == ["4", "7"]
    assert "4 fields, the header has 3" in e.value.problems[1]


def test_unusable_unlabeled_gold_is_kept_with_a_note_and_strict_refuses(tmp_path):
    rows = [f"U{i}?,{opts('a', 'b')},{a}" for i, a in enumerate(["A", "Z", "", "B"])]
    path = write(tmp_path / "unlabeled.csv", rows)
    result = validate_split(path, TASK, split_name="unlabeled")
    assert [e.answer for e in result.examples] == ["A", None, None, "B"]
    (note,) = result.notes
    assert note.startswith(f"{path}:3: gold answer 'Z'") and "--strict refuses" in note
    with pytest.raises(DataError, match=r":3: answer 'Z'"):
        validate_split(path, TASK, split_name="unlabeled", strict=True)


def test_duplicate_notes_are_summarised_and_strict_refuses(tmp_path):
    rows = [f"Q?,{opts('a', 'b')},A"] * 8
    result = validate_split(write(tmp_path / "t.csv", rows), TASK)
    assert len(result.examples) == 8 and len(result.notes) == 4
    assert result.notes[-1].endswith("... and 4 more like that (duplicate)")
    with pytest.raises(DataError, match=r"duplicate of line 2 \(--strict\)"):
        validate_split(write(tmp_path / "t.csv", rows), TASK, strict=True)


def _splits(tmp_path: Path, test_rows: list[str]) -> dict[str, str]:
    lab = [f"L{i}?,{opts('a', 'b')},A" for i in range(20)]
    unl = [f"U{i}?,{opts('a', 'b')},B" for i in range(20)]
    return {"labeled": str(write(tmp_path / "labeled.csv", lab)),
            "unlabeled": str(write(tmp_path / "unlabeled.csv", unl)),
            "test": str(write(tmp_path / "test.csv", test_rows))}


def test_leakage_is_counted_and_refused_above_the_allowed_share(tmp_path):
    test = [f"T{i}?,{opts('a', 'b')},A" for i in range(18)] + [
        f"L0?,{opts('a', 'b')},A", f"U1?,{opts('A', 'B')},B"]
    sources = _splits(tmp_path, test)
    splits = load_splits(sources, TASK, max_leakage=0.1)
    assert splits.leakage.test_rows_shared == 2 and splits.leakage.test_share == 0.1
    assert splits.leakage.test_line() == (
        "leakage: 2 of 20 test rows (10.0%) also in another split (labeled/test 1, "
        "unlabeled/test 1 shared items)")
    with pytest.raises(DataError, match=r"more than data.max_leakage=0.05 of the test split"):
        load_splits(sources, TASK, max_leakage=0.05)


def test_max_rows_limits_every_split_and_all_files_report_at_once(tmp_path):
    sources = _splits(tmp_path, [f"T{i}?,{opts('a', 'b')},A" for i in range(20)])
    assert load_splits(sources, TASK, max_rows=5).counts() == {
        "labeled": 5, "unlabeled": 5, "test": 5}
    write(tmp_path / "test.csv", [f"T?,{opts('a', 'b')},C"])
    write(tmp_path / "labeled.csv", [f"L?,{opts('a', 'b')},D"])
    with pytest.raises(DataError) as e:
        load_splits({**sources, "unlabeled": ""}, TASK)
    assert [p.split(":")[0].rsplit("/", 1)[-1] for p in e.value.problems] == [
        "data.unlabeled", "labeled.csv", "test.csv"]
    assert e.value.rows == {}


@pytest.mark.parametrize("task", ["fpb", "mmlu", "usmle", "mmlu_pro"])
def test_every_official_task_loads_as_released(task):
    if not (OFFICIAL / task).is_dir():
        pytest.skip(f"official data for {task} not at {OFFICIAL}")
    d = OFFICIAL / task
    # usmle and mmlu_pro ship no unlabeled split: their labeled file stands in for it.
    unlabeled = d / "unlabeled.csv" if (d / "unlabeled.csv").exists() else d / "labeled.csv"
    splits = load_splits({"labeled": str(d / "labeled.csv"), "unlabeled": str(unlabeled),
                          "test": str(d / "test.csv")}, resolve_task(task))
    assert min(splits.counts().values()) > 400
    assert splits.leakage.test_share < 0.05
    assert all(not n.startswith("Traceback") for n in splits.notes)
