"""The demo world: synthetic task + corpus generator (fast, pure Python)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from semievol_jax.pipeline.data import synth
from semievol_jax.pipeline.data.synth import SynthConfig, SynthError

SPLITS = ("labeled", "unlabeled", "test")


@pytest.fixture(scope="module")
def world_splits():
    cfg = SynthConfig()
    world = synth.make_world(cfg)
    return cfg, world, synth.make_splits(world, cfg), synth.make_corpus(world, cfg)


def _bytes(out_dir):
    return {p.name: p.read_bytes() for p in sorted(out_dir.iterdir())}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = _bytes(synth.write_world(tmp_path / "a", SynthConfig(seed=3))["test"].parent)
    b = _bytes(synth.write_world(tmp_path / "b", SynthConfig(seed=3))["test"].parent)
    c = _bytes(synth.write_world(tmp_path / "c", SynthConfig(seed=4))["test"].parent)
    assert set(a) == {"labeled.csv", "unlabeled.csv", "test.csv", "corpus.jsonl"}
    assert a == b
    assert all(a[k] != c[k] for k in a)


def test_splits_load_with_the_pipeline_loader(tmp_path):
    data = pytest.importorskip("semievol_jax.pipeline.data")
    paths = synth.write_world(tmp_path, SynthConfig())
    cfg = SynthConfig()
    for split, n in zip(SPLITS, (cfg.num_labeled, cfg.num_unlabeled, cfg.num_test),
                        strict=True):
        rows = data.load_split(paths[split], "mmlu_pro", split_name=split)
        assert len(rows) == n
        assert all(len(r.options) == cfg.num_values for r in rows)
        assert all(r.answer in synth.LETTERS[:cfg.num_values] for r in rows)
        assert all(r.options[ord(r.answer) - 65] for r in rows)
    unl, gold = data.load_unlabeled(paths["unlabeled"], "mmlu_pro")
    assert len(unl) == cfg.num_unlabeled and len(gold.ids()) == cfg.num_unlabeled


def test_ratio_is_the_official_one_to_three_to_one(world_splits):
    _, _, splits, _ = world_splits
    n = {k: len(v) for k, v in splits.items()}
    assert n["unlabeled"] == 3 * n["labeled"] and n["test"] == n["labeled"]


@pytest.mark.parametrize("fixed", [True, False])
def test_answers_are_the_facts_and_letters_are_balanced(fixed):
    cfg = SynthConfig(fixed_options=fixed)
    world = synth.make_world(cfg)
    letters = []
    for qs in synth.make_splits(world, cfg).values():
        for q in qs:
            assert q.options[synth.LETTERS.index(q.answer)] == world.facts[(q.person,
                                                                              q.relation)]
            assert len(set(q.options)) == len(q.options)
            assert len(q.options) == (cfg.num_values if fixed else cfg.num_options)
            letters.append(q.answer)
    n = cfg.num_values if fixed else cfg.num_options
    counts = [letters.count(x) for x in synth.LETTERS[:n]]
    assert min(counts) > 0.5 * len(letters) / n  # no strong letter prior to exploit


def test_overlap_is_the_intended_one(world_splits):
    """Unique question stems across splits; shared facts; labeled covers 2 relations."""
    cfg, _, splits, _ = world_splits
    stems = {s: {(q.person, q.relation, q.template) for q in qs} for s, qs in splits.items()}
    texts = {s: {q.question for q in qs} for s, qs in splits.items()}
    for a, b in (("labeled", "unlabeled"), ("labeled", "test"), ("unlabeled", "test")):
        assert not stems[a] & stems[b] and not texts[a] & texts[b]
    assert {q.relation for q in splits["labeled"]} == set(cfg.labeled_relations)
    assert {q.relation for q in splits["test"]} == set(cfg.relations)
    facts = {s: {(q.person, q.relation) for q in qs} for s, qs in splits.items()}
    test_in_unl = len(facts["test"] & facts["unlabeled"]) / len(facts["test"])
    test_in_lab = len(facts["test"] & facts["labeled"]) / len(facts["test"])
    # Most test facts are asked (in another phrasing) in unlabeled; fewer in labeled.
    assert test_in_unl > 0.6 and test_in_lab < test_in_unl


def test_corpus_states_every_fact_and_quizzes_only_practice_people(world_splits):
    cfg, world, _, corpus = world_splits
    quizzes = [d for d in corpus if d.startswith("Question:")]
    prose = [d for d in corpus if not d.startswith("Question:")]
    assert len(quizzes) == cfg.num_practice_people * cfg.quizzes_per_practice_person
    task_people = set(world.people)
    for q in quizzes:
        assert not any(f" {p}" in q or f"{p}?" in q for p in task_people)
        assert q.rsplit("\n", 1)[1] in {f"Answer: {x}" for x in synth.LETTERS}
    text = "\n".join(prose)
    for (person, rel), value in world.facts.items():
        r = next(r for r in synth.RELATIONS if r.name == rel)
        assert any(t.format(e=person, v=value) in text for t in r.statements)


def test_quiz_layout_matches_the_demo_presets_prompt():
    from semievol_jax.config import load_config
    from semievol_jax.pipeline import prompts
    from semievol_jax.pipeline.config import RunConfig
    from semievol_jax.pipeline.data import Example
    from semievol_jax.pipeline.stages import task_of

    data = load_config(RunConfig, "demo", []).data
    task = task_of(data)  # the demo's own task
    # The corpus quizzes' worked answers are the task's target: SFT teaches what the
    # base met in pretraining.
    assert task.target == synth.target_of(data.synth)
    ex = Example(id="x", question="Where does Bralo live?",
                 options=("Bralo lives in Mora.", "Bralo lives in Tesk.",
                          "Bralo lives in Lund.", "Bralo lives in Pira."), answer="B")
    expected = (prompts.format_question(task, ex) + "\n"
                + prompts.target(task, "B", ex.options))
    assert synth.render_quiz(ex.question, ex.options, "B", synth.target_of(data.synth)) == (
        expected)
    assert expected.endswith("\nBralo lives in Tesk.\nAnswer: B")


def test_csv_round_trips_options_with_commas_and_quotes():
    q = synth.Question("t-0", 'Is "x", y?', ('a, "b"', "c"), "A", "town", "P", 0)
    text = synth.questions_to_csv([q])
    import csv
    import io

    row = list(csv.DictReader(io.StringIO(text)))[0]
    assert json.loads(row["options"]) == ['a, "b"', "c"] and row["question"] == q.question


@pytest.mark.parametrize("change, match", [
    (dict(relations=("town", "weather")), "unknown relations"),
    (dict(labeled_relations=("food",), relations=("town", "colour")), "labeled_relations"),
    (dict(num_people=4), "question stems"),
    (dict(labeled_people=17), "labeled_people"),
    (dict(labeled_people=2), "question stems over"),
    (dict(num_values=11), "num_values"),
    (dict(fixed_options=False, num_options=7), "num_options"),
])
def test_impossible_configs_raise_clear_errors(change, match):
    cfg = dataclasses.replace(SynthConfig(), **change)
    with pytest.raises(SynthError, match=match):
        synth.make_splits(synth.make_world(cfg), cfg)


def test_read_corpus_names_the_bad_line(tmp_path):
    p = tmp_path / "corpus.jsonl"
    p.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(SynthError, match="corpus.jsonl:2"):
        synth.read_corpus(p)


@pytest.mark.parametrize("semi, sft, strict, paired", [
    ([0.54, 0.50, 0.52], [0.48, 0.45, 0.47], True, True),
    ([0.44, 0.39, 0.39], [0.36, 0.40, 0.35], False, False),  # ahead on average, not per seed
    ([0.60, 0.50, 0.55], [0.55, 0.45, 0.50], False, True),  # SFT spread large, gap steady
])
def test_headline_criteria(semi, sft, strict, paired):
    from semievol_jax.study import headline, headline_markdown

    h = headline({"semievol": {"per_seed": semi}, "sft": {"per_seed": sft},
                  "vanilla": {"per_seed": [0.0] * len(semi)}})
    assert (h["met_strict"], h["met_paired"], h["sft_beats_vanilla"]) == (strict, paired, True)
    assert ("**no**" in headline_markdown(h)) == (not strict or not paired)


def test_icl_documents_repeat_a_demo_fact_or_ask_a_practice_person():
    cfg = SynthConfig(icl_docs=40)
    world = synth.make_world(cfg)
    docs = [d for d in synth.make_corpus(world, cfg) if d.startswith("<|user|>")]
    assert len(docs) == 40
    assert not any(d.startswith("<|user|>") for d in synth.make_corpus(world, SynthConfig()))
    known = set(world.people)
    matched = 0
    for d in docs:
        turns = d.split("<|user|>\n")[1:]
        assert len(turns) == cfg.icl_demos + 1 and d.endswith("<|eot|>")
        parsed = [(t.split("\n")[1], t.rsplit("Answer: ", 1)[1][0]) for t in turns]
        names = [next(w.strip("?.,") for w in q.split() if w[0].isupper() and w not in
                      {"Complete:", "What", "Which", "Where", "How", "In", "The", "Every", "By"})
                 for q, _ in parsed]
        assert not known & set(names), "icl documents never name a task person"
        last_name, last_letter = names[-1], parsed[-1][1]
        if last_name in names[:-1]:
            matched += 1
            # the demo's fact again, under another phrasing: with fixed options, same letter
            i = names.index(last_name)
            assert parsed[i][0] != parsed[-1][0] and parsed[i][1] == last_letter
        else:
            assert last_name in world.practice_people
    assert 0.5 < matched / len(docs) < 0.9  # icl_match = 0.7
    # the layout is the project's chat template, as the pipeline's ICP prompts render it
    from tests.train_helpers import tokenizer

    tok = tokenizer()
    msgs = []
    for t in docs[0].split("<|user|>\n")[1:]:
        user, reply = t.split("<|eot|><|assistant|>\n")
        msgs += [{"role": "user", "content": user},
                 {"role": "assistant", "content": reply.removesuffix("<|eot|>")}]
    assert tok.apply_chat_template(msgs, tokenize=False) == tok.bos_token + docs[0]


def test_statement_options_state_the_fact_in_the_questions_phrasing():
    cfg = synth.SynthConfig(num_people=4, num_practice_people=2, num_labeled=8,
                            num_unlabeled=16, num_test=8, bios_per_person=1,
                            quizzes_per_practice_person=3, statement_options=True)
    world = synth.make_world(cfg)
    rels = {r.name: r for r in synth.RELATIONS}
    for q in [q for qs in synth.make_splits(world, cfg).values() for q in qs]:
        r = rels[q.relation]
        tpl = r.statements[q.template % len(r.statements)]
        assert list(q.options) == [tpl.format(e=q.person, v=v)
                                   for v in r.values[: cfg.num_values]]
        assert q.options[synth.LETTERS.index(q.answer)] == tpl.format(
            e=q.person, v=world.facts[(q.person, q.relation)])
        if q.question.startswith("Complete: "):  # a cloze restates its own phrasing
            assert q.options[0].startswith(q.question[len("Complete: "):-len(" ...")])
    quizzes = [d for d in synth.make_corpus(world, cfg) if d.startswith("Question:")]
    assert quizzes
    for doc in quizzes:  # the worked answer restates the option it names
        *_, restated, answer = doc.split("\n")
        letter = answer.removeprefix("Answer: ")
        assert f"\n{letter}. {restated}\n" in doc
    assert synth.target_of(cfg) == synth.STATEMENT_TARGET
    assert synth.target_of(synth.SynthConfig()) == synth.LETTER_TARGET


def test_labeled_people_keeps_the_labeled_set_to_the_first_people(world_splits):
    cfg = dataclasses.replace(SynthConfig(), labeled_people=8)
    world = synth.make_world(cfg)
    splits = synth.make_splits(world, cfg)
    assert {q.person for q in splits["labeled"]} <= set(world.people[:8])
    assert len(splits["labeled"]) == cfg.num_labeled
    assert {q.person for q in splits["test"]} - set(world.people[:8])  # others are asked
    cfg, world, default, _ = world_splits  # 0 (the default) draws from every person
    assert len({q.person for q in default["labeled"]}) > 8
    everyone = dataclasses.replace(cfg, labeled_people=cfg.num_people)
    assert synth.make_splits(world, everyone) == default


def test_canonical_options_use_the_first_phrasing_for_every_question():
    cfg = synth.SynthConfig(num_people=4, num_practice_people=2, num_labeled=8,
                            num_unlabeled=16, num_test=8, bios_per_person=1,
                            quizzes_per_practice_person=3, statement_options=True,
                            canonical_options=True)
    rels = {r.name: r for r in synth.RELATIONS}
    qs = [q for qs in synth.make_splits(synth.make_world(cfg), cfg).values() for q in qs]
    assert {q.template for q in qs} - {0}  # questions keep their own phrasings
    for q in qs:
        r = rels[q.relation]
        assert list(q.options) == [r.statements[0].format(e=q.person, v=v)
                                   for v in r.values[: cfg.num_values]]


def test_statement_quiz_layout_matches_the_run_with_the_statement_target():
    from semievol_jax.config import load_config
    from semievol_jax.pipeline import prompts
    from semievol_jax.pipeline.config import RunConfig
    from semievol_jax.pipeline.data import Example
    from semievol_jax.pipeline.stages import task_of

    # the command line of the docs' variant: the target survives override parsing (a
    # task name of its own: this process has registered the demo's letter-only task)
    cfg = load_config(RunConfig, "demo", ["data.task=demo_statements",
                                          "data.synth.statement_options=true",
                                          'data.task_def.target="{option}\\nAnswer: {answer}"'])
    task = task_of(cfg.data)
    assert task.target == synth.STATEMENT_TARGET
    opts = ("Bralo lives in Mora.", "Bralo lives in Tesk.")
    ex = Example(id="x", question="Where does Bralo live?", options=opts, answer="B")
    expected = prompts.format_question(task, ex) + "\n" + prompts.target(task, "B", opts)
    assert synth.render_quiz(ex.question, opts, "B", synth.STATEMENT_TARGET) == expected
    assert expected.endswith("\nBralo lives in Tesk.\nAnswer: B")
