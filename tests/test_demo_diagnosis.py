"""scripts/demo_diagnosis.py: the demo diagnosis's measurements on hand-made rows."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from semievol_jax.pipeline.data import synth

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import demo_diagnosis as diagnose  # noqa: E402


def row(i, person, relation, answer="A", split="test"):
    return {"id": f"{split}-{i}", "person": person, "relation": relation, "answer": answer}


LAB = [row(0, "Vivol", "job", split="labeled"), row(1, "Zoril", "town", split="labeled")]


def test_coverage_split_counts_facts_not_people_or_phrasings():
    test = [row(0, "Vivol", "job"), row(1, "Vivol", "town"), row(2, "Zoril", "town"),
            row(3, "Gofor", "job")]
    got = diagnose.coverage_split(test, LAB, {"test-0": True, "test-1": True,
                                              "test-2": False, "test-3": False})
    assert got["covered"] == {"n": 2, "accuracy": 0.5}  # Vivol/job, Zoril/town
    assert got["uncovered"] == {"n": 2, "accuracy": 0.5}  # Vivol/town (person known), Gofor


def test_coverage_split_skips_unscored_rows_and_reports_empty_as_nan():
    got = diagnose.coverage_split([row(0, "Vivol", "job"), row(1, "Gofor", "job")], LAB,
                                  {"test-0": True})
    assert got["covered"] == {"n": 1, "accuracy": 1.0}
    assert got["uncovered"]["n"] == 0 and np.isnan(got["uncovered"]["accuracy"])


def cand(q, answer, entropy, collaborator=0):
    return {"qid": q, "collaborator": collaborator, "response": f"Answer: {answer}",
            "answer": answer, "entropy": entropy}


def test_entropy_calibration_orders_by_entropy_and_uses_the_majority():
    cands = [cand("a", "A", 0.1), cand("a", "A", 0.1, 1), cand("a", "B", 0.1, 2),  # A, right
             cand("b", "C", 0.2), cand("b", "C", 0.2, 1),                          # C, wrong
             cand("c", "D", 0.9), cand("c", None, 0.9, 1)]                         # D, right
    gold = {"a": "A", "b": "B", "c": "D"}
    got = diagnose.entropy_calibration(cands, gold, fractions=(1 / 3, 2 / 3, 1.0))
    assert got == {f"{1 / 3:g}": 1.0, f"{2 / 3:g}": 0.5, "1": pytest.approx(2 / 3)}


def test_majority_is_the_methods_vote_none_on_a_tie():
    got = diagnose.majority_answers([cand("a", "A", 0.2), cand("a", "B", 0.4, 1)])
    assert got == {"a": (None, pytest.approx(0.3))}


def test_entropy_calibration_breaks_entropy_ties_by_qid():
    cands = [cand("b", "X", 0.5), cand("a", "A", 0.5)]
    assert diagnose.entropy_calibration(cands, {"a": "A", "b": "B"}, fractions=(0.5,)) == {
        "0.5": 1.0}


def test_neighbour_agreement():
    unl = [row(0, "Vivol", "job", split="u"), row(1, "Gofor", "town", split="u")]
    got = diagnose.neighbour_agreement(unl, LAB, np.array([[0, 1], [1, 0]]))
    assert got == {"same_fact": 0.5, "same_person": 0.5, "same_relation": 1.0,
                   "covered": 0.5}
    with pytest.raises(ValueError, match="3 rows for 2 unlabeled"):
        diagnose.neighbour_agreement(unl, LAB, np.zeros((3, 1), int))


def test_pooled_by_fact_votes_over_every_question_about_the_fact():
    unl = [row(0, "Vivol", "job", split="u"), row(1, "Vivol", "job", split="u"),
           row(2, "Zoril", "town", split="u"), row(3, "Vivol", "town", split="u")]
    cands = [cand("u-0", "B", 0.1), cand("u-0", "C", 0.1, 1),  # each question alone: a tie
             cand("u-1", "B", 0.1), cand("u-1", None, 0.1, 1),  # no answer: no vote
             cand("u-2", "D", 0.1), cand("u-2", "E", 0.1, 1),  # Zoril's town: a tie
             cand("u-3", "F", 0.1)]
    test = [row(0, "Vivol", "job"), row(1, "Zoril", "town"), row(2, "Gofor", "job"),
            row(3, "Vivol", "town")]
    assert diagnose.pooled_by_fact(cands, unl, test) == {
        "test-0": "B", "test-1": None, "test-2": None, "test-3": "F"}


def test_repairs_counts_covered_questions_only():
    test = [row(0, "Vivol", "job", "B"), row(1, "Vivol", "job", "B"), row(2, "Zoril", "town"),
            row(3, "Gofor", "job")]                                   # test-3: not covered
    pooled = {"test-0": "B", "test-1": "C", "test-2": None, "test-3": "A"}
    sft = {"test-0": False, "test-1": False, "test-2": True, "test-3": False}
    final = {"test-0": True, "test-1": False, "test-2": False, "test-3": True}
    assert diagnose.repairs(test, LAB, pooled, sft, final) == {
        "covered": 3, "sft_wrong": 2, "sft_wrong_pooled_right": 1, "of_those_final_right": 1,
        "sft_right_final_wrong": 1}


def stated(i, person, relation, phrasing, answer="A", split="test"):
    """A row with statement options in the relation's `phrasing`-th prose phrasing."""
    rel = next(r for r in synth.RELATIONS if r.name == relation)
    opts = [rel.statements[phrasing].format(e=person, v=v) for v in rel.values[:6]]
    return row(i, person, relation, answer, split) | {"options": json.dumps(opts)}


def test_option_phrasing_names_the_corpus_phrasing_of_the_options():
    assert diagnose.option_phrasing(stated(0, "Vivol", "job", 2)) == 2
    assert diagnose.option_phrasing(stated(0, "Vivol", "town", 0)) == 0
    bare = row(0, "Vivol", "job") | {"options": json.dumps(["baker", "farmer"])}
    assert diagnose.option_phrasing(bare) is None


def test_answer_purity_groups_by_fact_and_by_fact_and_phrasing():
    rows = [stated(0, "Vivol", "job", 0), stated(1, "Vivol", "job", 0),   # phrasing 0: right
            stated(2, "Vivol", "job", 1), stated(3, "Vivol", "job", 1),   # phrasing 1: wrong
            stated(4, "Zoril", "town", 0), stated(5, "Gofor", "job", 2)]  # groups of one
    correct = {"test-0": True, "test-1": True, "test-2": False, "test-3": False,
               "test-4": True}                                        # test-5: not scored
    got = diagnose.answer_purity(rows, correct)
    assert got["fact"] == {"questions": 4, "groups": 1, "purity": 0.5}
    assert got["fact_and_phrasing"] == {"questions": 4, "groups": 2, "purity": 1.0}


def test_carry_over_splits_test_by_where_right_pseudo_labels_are():
    unl = [stated(0, "Vivol", "job", 0, "B", "u"), stated(1, "Zoril", "town", 1, "C", "u"),
           stated(2, "Gofor", "food", 0, "D", "u")]
    pseudo = {"u-0": "B", "u-1": "C", "u-2": "A"}          # Gofor's label is wrong
    test = [stated(0, "Vivol", "job", 0, "B"), stated(1, "Zoril", "town", 2, "C"),
            stated(2, "Gofor", "food", 0, "D"), stated(3, "Vivol", "job", 1, "B")]
    models = {"sft": {"test-0": True, "test-1": False, "test-2": False, "test-3": False},
              "semievol": {"test-0": True, "test-1": True, "test-2": False, "test-3": False}}
    assert diagnose.carry_over(test, unl, pseudo, models) == {
        "none": {"n": 1, "sft": 0, "semievol": 0},
        "other_phrasings_only": {"n": 2, "sft": 0, "semievol": 1},
        "same_phrasing": {"n": 1, "sft": 1, "semievol": 1}}


def test_read_rows_names_the_file_without_synth_columns(tmp_path):
    p = tmp_path / "labeled.csv"
    p.write_text("id,question,options,answer\nx,q,[],A\n")
    with pytest.raises(ValueError, match=r"labeled\.csv.*person"):
        diagnose.read_rows(p)


def test_corpus_quizzes_parse_back_what_render_quiz_wrote(tmp_path):
    cfg = synth.SynthConfig(num_people=4, num_practice_people=2, num_labeled=8,
                            num_unlabeled=16, num_test=8, bios_per_person=1,
                            quizzes_per_practice_person=3)
    paths = synth.write_world(tmp_path, cfg)
    quizzes = diagnose.corpus_quizzes(paths["corpus"])
    assert len(quizzes) == 2 * 3
    docs = [d for d in synth.read_corpus(paths["corpus"]) if d.startswith("Question:")]
    for (q, opts, gold), doc in zip(quizzes, docs, strict=True):
        assert synth.render_quiz(q, opts, gold) == doc
        assert tuple(opts) in {r.values[: cfg.num_values] for r in synth.RELATIONS}


def test_corpus_quizzes_parse_back_statement_quizzes(tmp_path):
    cfg = synth.SynthConfig(num_people=4, num_practice_people=2, num_labeled=8,
                            num_unlabeled=16, num_test=8, bios_per_person=1,
                            quizzes_per_practice_person=3, statement_options=True)
    paths = synth.write_world(tmp_path, cfg)
    docs = [d for d in synth.read_corpus(paths["corpus"]) if d.startswith("Question:")]
    quizzes = diagnose.corpus_quizzes(paths["corpus"])
    for (q, opts, gold), doc in zip(quizzes, docs, strict=True):
        assert synth.render_quiz(q, opts, gold, synth.STATEMENT_TARGET) == doc
        assert all(o.endswith(".") and len(o.split()) >= 3 for o in opts)  # sentences


def test_quiz_accuracy_probes_each_target_layout(monkeypatch):
    opts = ["Vivol lives in Mora.", "Vivol lives in Tesk."]
    quizzes = [("Where does Vivol live?", opts, "B"), ("Vivol lives in ...", opts, "A")]
    seen = []

    def fake(outs):
        def gen(model, tok, texts, max_new_tokens, raw=True):
            seen.append((texts, max_new_tokens))
            return outs
        return gen

    bare = [synth.render_quiz(q, o, None) for q, o, _ in quizzes]
    monkeypatch.setattr(diagnose, "_greedy", fake([" B", " B"]))
    assert diagnose.quiz_accuracy(None, None, quizzes) == 0.5
    assert seen[-1] == ([t + "\nAnswer:" for t in bare], 2)
    monkeypatch.setattr(diagnose, "_greedy", fake(
        ["Vivol lives in Tesk.\nAnswer: B", "Vivol lives in Tesk.\nAnswer B"]))
    # the second reply does not parse (no colon): wrong, not skipped
    assert diagnose.quiz_accuracy(None, None, quizzes, synth.STATEMENT_TARGET) == 0.5
    assert seen[-1] == ([t + "\n" for t in bare], diagnose.GREEDY_TOKENS)


def test_prose_recall_scores_the_value_not_the_option(monkeypatch):
    # Statement options are sentences; recall is scored against the world's value.
    def gen(model, tok, texts, max_new_tokens, raw=True):
        return ["miner." if "Vivol" in t else "baker" for t in texts]

    monkeypatch.setattr(diagnose, "_greedy", gen)
    got = diagnose.prose_recall(None, None, {("Vivol", "job"): "miner",
                                             ("Zoril", "job"): "sailor"})
    assert got == {"phrasings": 0.5, "facts": 0.5, "num_facts": 2}


def test_corpus_quiz_layout_is_the_synth_one():
    # The diagnosis's raw-quiz prompt is render_quiz(..., None) + "\nAnswer:"; the corpus
    # quizzes end in "\nAnswer: X", so the model sees the same prefix it was trained on.
    # With statement options the worked answer restates the option first.
    q = synth.render_quiz("Where does Vivol live?", ["Mora", "Tesk"], "B")
    assert q == synth.render_quiz("Where does Vivol live?", ["Mora", "Tesk"], None) + (
        "\nAnswer: B")
    opts = ["Vivol lives in Mora.", "Vivol lives in Tesk."]
    q = synth.render_quiz("Where does Vivol live?", opts, "B", synth.STATEMENT_TARGET)
    assert q == synth.render_quiz("Where does Vivol live?", opts, None) + (
        "\nVivol lives in Tesk.\nAnswer: B")
    assert json.dumps(["Mora", "Tesk"])  # options are JSON lists in the CSVs


def test_teacher_vs_student_counts_labels_that_differ_from_m1():
    pseudo = {"u0": "A", "u1": "B", "u2": "C", "u3": "D"}
    m1 = {"u0": "A", "u1": "C", "u2": None, "u3": "A", "u4": "B"}  # u4: not selected
    gold = {"u0": "A", "u1": "B", "u2": "A", "u3": "A", "u4": "B"}
    assert diagnose.teacher_vs_student(pseudo, m1, gold) == {
        "selected": 4, "same_as_m1": 1, "differ": 3, "differ_label_right": 1,
        "differ_m1_right": 1}


def test_same_fact_demo_pairs_each_covered_question_with_the_first_labeled_row():
    lab = LAB + [row(2, "Vivol", "job", split="labeled")]
    unl = [row(0, "Vivol", "job", split="unlabeled"), row(1, "Vivol", "town", split="unlabeled"),
           row(2, "Zoril", "town", split="unlabeled")]
    assert diagnose.same_fact_demo(unl, lab) == [(0, 0), (2, 1)]


def test_demo_use_scores_the_pipelines_demonstration_prompts(monkeypatch):
    from semievol_jax.pipeline.data import Example
    from semievol_jax.pipeline.tasks import resolve_task
    from tests.train_helpers import tokenizer

    task = resolve_task({"name": "t", "kind": "choice",
                         "instruction": synth.INSTRUCTION})
    ex = lambda i, q, a: Example(id=str(i), question=q, options=("x", "y", "z"),  # noqa: E731
                                 answer=a, meta={})
    lab = [ex(0, "one", "B"), ex(1, "two", "C")]
    unl = [ex(2, "one?", "B"), ex(3, "two?", "C"), ex(4, "two!", "A")]
    seen = []

    def copier(model, tok, texts, max_new_tokens, raw=True):
        # a perfect copier: the last demonstration's letter, else "A"
        seen.extend(texts)
        return [f"Answer: {(re.findall(r'Answer: ([A-J])<', t) or ['A'])[-1]}" for t in texts]

    monkeypatch.setattr(diagnose, "_greedy", copier)

    class Model:
        class cfg:
            max_position_embeddings = 512

    got = diagnose.demo_use(Model, tokenizer(), task, unl, lab, [(0, 0), (1, 1), (2, 1)])
    assert got == {"n": 3, "accuracy_without_demo": 1 / 3,
                   "accuracy_with_same_fact_demo": 2 / 3}
    assert [len(re.findall(r"Answer: [A-J]<", t)) for t in seen] == [0] * 3 + [1] * 3
    with pytest.raises(ValueError, match="no unlabeled question"):
        diagnose.demo_use(Model, tokenizer(), task, unl, lab, [])
