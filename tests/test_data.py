"""Split loading and validation: official files, the broken-file corpus, JSONL,
datasets directories, unlabeled gold separation, leakage."""

import json
import warnings
from pathlib import Path

import pytest

from semievol_jax.pipeline.data import (
    DataError,
    DataWarning,
    Example,
    GoldAnswers,
    UnlabeledQuestion,
    find_leakage,
    load_split,
    load_unlabeled,
)

BROKEN = Path(__file__).parent / "data" / "broken"
OFFICIAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "semievol"
# Row counts of the official release (labeled, unlabeled, test); None = not shipped.
OFFICIAL_ROWS = {"fpb": (452, 1359, 453), "mmlu": (2808, 8425, 2809),
                 "usmle": (2290, None, 2291), "mmlu_pro": (2406, None, 2407)}
# Items (question + options) shared by labeled/unlabeled, labeled/test, unlabeled/test
# (pairs of the splits present), as counted independently with the csv module.
OFFICIAL_OVERLAP = {"fpb": [2, 1, 0], "mmlu": [23, 9, 20], "usmle": [0], "mmlu_pro": [19]}


def _load(name, task="mmlu_pro", **kw):
    with pytest.raises(DataError) as e:
        load_split(BROKEN / name, task, split_name="labeled", **kw)
    return e.value


@pytest.mark.parametrize("task", sorted(OFFICIAL_ROWS))
def test_official_files_load_and_validate(task):
    if not (OFFICIAL / task).is_dir():
        pytest.skip(f"official data for {task} not at {OFFICIAL}")
    splits = {}
    for split, want in zip(("labeled", "unlabeled", "test"), OFFICIAL_ROWS[task],
                           strict=True):
        path = OFFICIAL / task / f"{split}.csv"
        assert path.exists() == (want is not None)
        if want is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)  # the release's own repeats
            if split == "unlabeled":
                questions, gold = load_unlabeled(path, task)
                assert len(questions) == len(gold) == want
                assert not hasattr(questions[0], "answer")
                splits[split] = questions
            else:
                examples = load_split(path, task)
                assert len(examples) == want
                assert all(e.answer and e.options for e in examples)
                assert len({e.id for e in examples}) == want
                splits[split] = examples
    leak = find_leakage(splits)
    assert [o.count for o in leak.overlaps] == OFFICIAL_OVERLAP[task]


def test_official_mmlu_nan_option_restored_and_meta_kept():
    path = OFFICIAL / "mmlu" / "test.csv"
    if not path.exists():
        pytest.skip("official mmlu absent")
    with pytest.warns(DataWarning, match=r"test.csv:\d+: option D is NaN"):
        examples = load_split(path, "mmlu")
    assert any("None" in e.options for e in examples)
    assert {"Unnamed: 0", "Subject"} <= set(examples[0].meta)


def test_official_mmlu_pro_ids_from_question_id():
    path = OFFICIAL / "mmlu_pro" / "test.csv"
    if not path.exists():
        pytest.skip("official mmlu_pro absent")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ex = load_split(path, "mmlu_pro")
    assert ex[0].id == ex[0].meta["question_id"] == "3172"
    assert max(len(e.options) for e in ex) == 10


def test_missing_column():
    e = _load("missing_column.csv")
    assert e.problems == (f"{BROKEN / 'missing_column.csv'}:1: missing required "
                          "column(s) ['options']; found ['question', 'answer']",)


def test_bad_options_every_row_reported():
    e = _load("bad_options.csv")
    p = str(BROKEN / "bad_options.csv")
    assert [x.split(": ", 1)[0] for x in e.problems] == [f"{p}:{n}" for n in (3, 4, 5, 6)]
    assert "not valid JSON" in e.problems[0]
    assert "must be a list of strings, got dict" in e.problems[1]
    assert "empty list" in e.problems[2]
    assert "option B is int 3" in e.problems[3]


def test_answer_letter_out_of_range():
    e = _load("answer_out_of_range.csv")
    assert len(e.problems) == 3
    assert ":2: answer 'C' is not a valid letter for 2 options (A-B)" in e.problems[0]
    assert ":3: answer 'AB'" in e.problems[1]
    assert e.problems[2].endswith(":4: answer is empty")
    # The same file as unlabeled: a missing answer is fine there, and a wrong one only
    # leaves the row out of pseudo-label scoring (a note); --strict refuses it.
    with pytest.warns(DataWarning, match=r":2: gold answer 'C' .* left out of pseudo-label"):
        questions, gold = load_unlabeled(BROKEN / "answer_out_of_range.csv", "mmlu_pro")
    assert len(questions) == 3 and len(gold) == 0
    with pytest.raises(DataError) as e2:
        load_unlabeled(BROKEN / "answer_out_of_range.csv", "mmlu_pro", strict=True)
    assert len(e2.value.problems) == 2


def test_fixed_option_count_of_task():
    e = _load("answer_out_of_range.csv", task="mmlu")
    assert any(":2: 2 options; task 'mmlu' has 4" in p for p in e.problems)


def test_empty_and_header_only():
    assert _load("empty.csv").problems[0].endswith("empty.csv:1: file is empty "
                                                   "(expected a header line)")
    assert ":2: no data rows" in _load("header_only.csv").problems[0]


def test_latin1_bytes_reported_with_line_and_offset():
    e = _load("latin1.csv")
    assert len(e.problems) == 2  # lines 2 and 4; line 3 is clean
    assert e.problems[0].endswith("latin1.csv:2: not valid UTF-8 (byte 0xE9 at byte "
                                  "offset 27); re-save the file as UTF-8 (it looks like "
                                  "Latin-1/cp1252)")
    assert "latin1.csv:4: not valid UTF-8 (byte 0xE9" in e.problems[1]


def test_bom_crlf_and_utf16(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfquestion,options,answer\r\n"
                     b'"Two\r\nlines","[""a"", ""b""]",A\r\n"Q?","[""a""]",B\r\n')
    with pytest.raises(DataError) as e:
        load_split(path, "mmlu_pro")
    assert e.value.problems == (f"{path}:4: answer 'B' is not a valid letter for 1 "
                                "options (A-A)",)
    utf16 = tmp_path / "u16.csv"
    utf16.write_text("question,options,answer\n", encoding="utf-16")
    with pytest.raises(DataError, match=r"u16.csv:1: the file is UTF-16"):
        load_split(utf16, "mmlu_pro")


def test_one_megabyte_question(tmp_path):
    path = tmp_path / "long.csv"
    q = "x" * 1_000_000
    path.write_text(f'question,options,answer\n"{q}","[""a"", ""b""]",A\n'
                    '"ok?","[""a"", ""b""]",A\n')
    with pytest.raises(DataError) as e:
        load_split(path, "mmlu_pro")
    assert e.value.problems == (f"{path}:2: question is 1,000,000 characters (limit "
                                "100,000); a stray quote can merge rows",)
    assert len(load_split(path, "mmlu_pro", max_question_chars=2_000_000)) == 2


def test_duplicates_warn_error_drop(tmp_path):
    path = BROKEN / "duplicates.csv"
    # Line 5 repeats line 2 with another answer: always an error.
    e = _load("duplicates.csv")
    assert len(e.problems) == 1 and e.problems[0].endswith(
        ":5: repeats the question and options of line 2 with a different answer (B vs A)")
    no_conflict = path.read_text().splitlines()[:4]
    tmp = tmp_path / "dup.csv"
    tmp.write_text("\n".join(no_conflict) + "\n")
    with pytest.warns(DataWarning, match=r"dup.csv:4: duplicate of line 2"):
        assert len(load_split(tmp, "mmlu_pro")) == 3
    with pytest.raises(DataError, match=r"dup.csv:4: duplicate of line 2"):
        load_split(tmp, "mmlu_pro", duplicates="error")
    with pytest.warns(DataWarning, match="dropped"):
        assert len(load_split(tmp, "mmlu_pro", duplicates="drop")) == 2


def test_all_problems_at_once_in_line_order_with_multiline_records():
    e = _load("many_problems.csv")
    lines = [int(p.split(":")[1]) for p in e.problems]
    assert lines == [5, 6, 7, 8]
    assert "question is empty" in e.problems[0]
    assert "4 fields, the header has 5" in e.problems[3]
    assert str(e).count("\n") == 4  # "4 problem(s) in ...:" then one line each


def test_data_error_from_string_and_combined():
    assert DataError("x.csv:2: bad\ny.csv:3: worse").problems == ("x.csv:2: bad",
                                                                    "y.csv:3: worse")
    a, b = _load("missing_column.csv"), _load("bad_options.csv")
    both = DataError.combine([a, b])
    assert both.problems == a.problems + b.problems
    assert "1 problem(s) in" in str(both) and "4 problem(s) in" in str(both)
    assert DataError.combine([a]) is a


def test_jsonl_problems():
    e = _load("bad.jsonl")
    assert [p.split(": ", 1)[1] for p in e.problems] == [
        "invalid JSON: Expecting ',' delimiter (column 57)",
        "expected a JSON object, got list",
        "missing field(s) ['options']",
    ]
    assert [int(p.split(":")[1]) for p in e.problems] == [2, 4, 5]


def test_jsonl_and_options_as_list(tmp_path):
    path = tmp_path / "test.jsonl"
    rows = [{"id": "a1", "question": "Q?", "options": ["x", "y"], "answer": "b",
             "src": "s"},
            {"id": "a2", "question": "R?", "options": '["x", "y"]', "answer": "A"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ex = load_split(path, "mmlu_pro")
    assert ex[0] == Example("a1", "Q?", ("x", "y"), "B")
    assert ex[0].meta == {"id": "a1", "src": "s"}
    assert ex[1].id == "a2"


def test_value_and_text_tasks(tmp_path):
    path = tmp_path / "labeled.csv"
    path.write_text("question,answer\nHow many?,\"1,200\"\nAnd now?,twelve\n")
    with pytest.raises(DataError, match=r"labeled.csv:3: answer 'twelve' is not a number"):
        load_split(path, "gsm8k")
    assert [e.answer for e in load_split(path, "drop")] == ["1,200", "twelve"]


def test_datasets_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    d = datasets.DatasetDict({
        "test": datasets.Dataset.from_dict({"question": ["Q?", "R?"],
                                            "options": [["x", "y"], ["x", "y", "z"]],
                                            "answer": ["A", "D"]}),
    })
    d.save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError) as e:
        load_split(tmp_path / "ds", "mmlu_pro", split_name="test")
    assert e.value.problems == (f"{tmp_path / 'ds'}[test]#1: answer 'D' is not a valid "
                                "letter for 3 options (A-C)",)
    with pytest.raises(DataError, match=r"no split 'train'; it has \['test'\]"):
        load_split(tmp_path / "ds", "mmlu_pro", split_name="train")


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_split(tmp_path / "nope.csv", "mmlu")
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataError, match="unknown format"):
        load_split(tmp_path / "x.parquet", "mmlu")


def test_unlabeled_gold_is_separate(tmp_path):
    path = tmp_path / "unlabeled.csv"
    path.write_text('question,options,answer\n"Q?","[""a"", ""b""]",B\n'
                    '"R?","[""a"", ""b""]",\n')
    questions, gold = load_unlabeled(path, "mmlu_pro")
    assert questions[0] == UnlabeledQuestion("unlabeled-0", "Q?", ("a", "b"))
    assert "answer" not in {f for f in UnlabeledQuestion.__dataclass_fields__}
    assert isinstance(gold, GoldAnswers) and len(gold) == 1
    assert gold["unlabeled-0"] == "B" and "unlabeled-1" not in gold
    assert "B" not in repr(gold)
    with pytest.raises(TypeError):
        list(gold)


def test_leakage_counts_question_and_options():
    a = [Example("l0", "Same  question?", ("x", "y"), "A"),
         Example("l1", "Which is true?", ("p", "q"), "A")]
    b = [UnlabeledQuestion("u0", "same question?", ("X", "y")),
         UnlabeledQuestion("u1", "Which is true?", ("r", "s"))]  # other options
    rep = find_leakage({"labeled": a, "unlabeled": b, "test": []})
    (lu, lt, ut) = rep.overlaps
    assert lu.splits == ("labeled", "unlabeled") and lu.count == 1
    assert lu.examples == (("l0", "u0", "same question?"),)
    assert lt.count == ut.count == 0 and rep.total == 1
    assert "labeled/unlabeled: 1 shared" in rep.summary()
    assert rep.to_dict()["labeled/unlabeled"]["count"] == 1
