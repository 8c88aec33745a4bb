"""Why the demo's gain is what it is: measurements on a finished `semievol demo` run.

The demo's headline (SemiEvol over SFT by two seed stds) rests on a premise: the base
knows the task facts from pretraining, SFT teaches it to answer, and confident
pseudo-labels are mostly right. Each function here measures one link of that chain
from the run's own files (the synth CSVs keep `person` and `relation`), so docs/demo.md
can say which link holds and which does not (scripts/demo_diagnose.py prints and
writes them):

* `prose_recall`: does the base complete the corpus's own sentences about task people
  ("Vivol works as a" -> "miner")? That is the knowledge.
* `quiz_accuracy`: does the base answer quizzes laid out as in its corpus?
  On practice people (corpus documents) that is the skill as trained; on the test
  questions, the skill transferred to task people.
* `coverage_split`: test accuracy on facts the labeled set asks about (under another
  phrasing) against facts it never asks about. If SFT answered from the base's
  knowledge, the two would be close.
* `entropy_calibration`: precision of the collaborators' majority answers among the
  lowest-entropy fraction of unlabeled questions; flat = entropy does not separate
  right from wrong.
* `neighbour_agreement`: how often ICP's nearest labeled example asks about the same
  fact, person or relation as the unlabeled question.
* `pooled_by_fact`: the collaborators' answers to every unlabeled question about a
  fact, pooled into one vote and scored against the test questions about that fact:
  what a plain vote across a fact's questions would add to the method's
  question-by-question labels. `repairs` counts, on the covered test questions M1
  gets wrong, how often that vote is right and how often the final model fixes them.
* `answer_purity`: how far M1's right/wrong on a question is fixed by its fact alone
  and by its fact together with the prose phrasing its options use (`option_phrasing`).
  The response restates an option, so M1 reads its knowledge out in that phrasing.
* `carry_over`: test accuracy of M1 and the final model, split by whether a right
  selected pseudo-label about the question's fact uses the same option phrasing, only
  other phrasings, or none. Training on a fact in one phrasing helps the test only if
  it carries over to the others.
* `teacher_vs_student`: how many selected pseudo-labels differ from M1's own greedy
  answer to the same prompt. The final tuning starts from M1, so only those rows can
  teach it anything M1 does not already answer.
* `demo_use`: does a model answer better when the one demonstration in its prompt is
  a labeled example about the same fact (an oracle retriever)? That is the most ICP
  could give: if the model ignores even that demonstration, no retriever helps.
"""

from __future__ import annotations

import collections
import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semievol_jax.config import load_config
from semievol_jax.files import read_jsonl
from semievol_jax.generate import SampleConfig, generate
from semievol_jax.pipeline import prompts, selection
from semievol_jax.pipeline.config import BaseConfig, RunConfig
from semievol_jax.pipeline.data import Example, synth
from semievol_jax.pipeline.models import base_ref, load_model, tuned_ref
from semievol_jax.pipeline.stages import task_of
from semievol_jax.retrieval import build_demo_prompts

FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
GREEDY_TOKENS = 24  # room for a restated option before `Answer: X` (generation stops at EOS)


def read_rows(path: Path) -> list[dict[str, str]]:
    """A synth CSV (official schema plus `relation` and `person`)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"id", "answer", "relation", "person"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path}: not a synth split (no column(s) {sorted(missing)})")
    return rows


def fact_of(row: Mapping[str, str]) -> tuple[str, str]:
    return row["person"], row["relation"]


def coverage_split(rows: Sequence[Mapping[str, str]], labeled: Iterable[Mapping[str, str]],
                   correct: Mapping[str, bool]) -> dict[str, dict[str, float]]:
    """Accuracy over rows whose fact the labeled set asks about vs the rest.

    Args:
      rows: evaluated rows (test or unlabeled).
      labeled: the labeled rows.
      correct: row id -> whether the model's answer was right (ids absent are skipped).
    """
    taught = {fact_of(r) for r in labeled}
    out = {}
    for name, want in (("covered", True), ("uncovered", False)):
        hits = [correct[r["id"]] for r in rows
                if r["id"] in correct and (fact_of(r) in taught) == want]
        out[name] = {"n": len(hits), "accuracy": float(np.mean(hits)) if hits else float("nan")}
    return out


def option_phrasing(row: Mapping[str, str]) -> int | None:
    """Index of the corpus prose phrasing (`synth.Relation.statements`) that the row's
    statement options use; None for bare-value options."""

    rel = next(r for r in synth.RELATIONS if r.name == row["relation"])
    first = json.loads(row["options"])[0]
    return next((i for i, t in enumerate(rel.statements)
                 if first == t.format(e=row["person"], v=rel.values[0])), None)


def answer_purity(rows: Sequence[Mapping[str, str]], correct: Mapping[str, bool]
                  ) -> dict[str, dict[str, float]]:
    """Share of questions whose right/wrong equals their group's majority right/wrong,
    over groups of at least two scored rows, grouping by fact and by (fact, option
    phrasing). 1.0 means the grouping key alone decides whether the model is right."""
    out = {}
    for name, key in (("fact", fact_of), ("fact_and_phrasing",
                                           lambda r: (*fact_of(r), option_phrasing(r)))):
        groups: dict[Any, list[bool]] = collections.defaultdict(list)
        for r in rows:
            if r["id"] in correct:
                groups[key(r)].append(bool(correct[r["id"]]))
        sizes = [g for g in groups.values() if len(g) > 1]
        n = sum(len(g) for g in sizes)
        agree = sum(max(sum(g), len(g) - sum(g)) for g in sizes)
        out[name] = {"questions": n, "groups": len(sizes),
                     "purity": agree / n if n else float("nan")}
    return out


def carry_over(test: Sequence[Mapping[str, str]], unlabeled: Sequence[Mapping[str, str]],
               pseudo: Mapping[str, str], models: Mapping[str, Mapping[str, bool]]
               ) -> dict[str, dict[str, Any]]:
    """Test accuracy per model (name -> id -> right), split by where the right selected
    pseudo-labels (unlabeled id -> letter) about the test question's fact are: in the
    question's own option phrasing, only in other phrasings, or nowhere."""
    right_in: dict[tuple[str, str], set] = collections.defaultdict(set)
    for r in unlabeled:
        if pseudo.get(r["id"]) == r["answer"]:
            right_in[fact_of(r)].add(option_phrasing(r))
    out: dict[str, dict[str, Any]] = {}
    for r in test:
        got = right_in[fact_of(r)]
        where = ("same_phrasing" if option_phrasing(r) in got
                 else "other_phrasings_only" if got else "none")
        b = out.setdefault(where, {"n": 0, **{m: 0 for m in models}})
        b["n"] += 1
        for m, c in models.items():
            b[m] += bool(c[r["id"]])
    return dict(sorted(out.items()))


def majority_answers(candidates: Iterable[Mapping[str, Any]]
                     ) -> dict[str, tuple[str | None, float]]:
    """qid -> (the collaborators' majority, mean response entropy), from candidates.jsonl
    rows. The majority is the method's own (`selection.vote`): None on a tie."""

    cands = [selection.Candidate(c["qid"], c["collaborator"], c["response"], c["answer"],
                                 c["entropy"]) for c in candidates]
    entropies: dict[str, list[float]] = collections.defaultdict(list)
    for c in cands:
        entropies[c.qid].append(c.entropy)
    return {q: (v.majority, float(np.mean(entropies[q])))
            for q, v in selection.vote(cands).items()}


def majority_right(candidates: Iterable[Mapping[str, Any]], gold: Mapping[str, str]
                   ) -> dict[str, bool]:
    """unlabeled id -> whether the collaborators' majority answer is the gold one."""
    return {q: m == gold[q] for q, (m, _) in majority_answers(candidates).items()}


def entropy_calibration(candidates: Iterable[Mapping[str, Any]], gold: Mapping[str, str],
                        fractions: Sequence[float] = FRACTIONS) -> dict[str, float]:
    """Precision of the majority answer among the lowest-entropy fraction of questions.

    Returns:
      {"0.2": precision, ...}: questions sorted by (mean entropy, qid), so ties are
      broken the same way every run.
    """
    maj = majority_answers(candidates)
    order = sorted(maj, key=lambda q: (maj[q][1], q))
    right = np.array([maj[q][0] == gold[q] for q in order], bool)
    if not len(right):
        raise ValueError("no candidates")
    return {f"{f:g}": float(right[: max(1, round(f * len(right)))].mean()) for f in fractions}


def neighbour_agreement(unlabeled: Sequence[Mapping[str, str]],
                        labeled: Sequence[Mapping[str, str]],
                        neighbours_QK: np.ndarray) -> dict[str, float]:
    """Fraction of unlabeled rows whose nearest labeled neighbour (column 0) shares
    the fact, the person or the relation; `covered` = the fact is in labeled at all
    (the most a retriever could reach)."""
    if neighbours_QK.shape[0] != len(unlabeled):
        raise ValueError(f"neighbours has {neighbours_QK.shape[0]} rows for "
                         f"{len(unlabeled)} unlabeled questions")
    taught = {fact_of(r) for r in labeled}
    pairs = [(labeled[int(j)], u) for j, u in zip(neighbours_QK[:, 0], unlabeled, strict=True)]
    return {
        "same_fact": float(np.mean([fact_of(n) == fact_of(u) for n, u in pairs])),
        "same_person": float(np.mean([n["person"] == u["person"] for n, u in pairs])),
        "same_relation": float(np.mean([n["relation"] == u["relation"] for n, u in pairs])),
        "covered": float(np.mean([fact_of(u) in taught for u in unlabeled])),
    }


def pooled_by_fact(candidates: Iterable[Mapping[str, Any]],
                   unlabeled: Sequence[Mapping[str, str]],
                   test: Sequence[Mapping[str, str]]) -> dict[str, str | None]:
    """test id -> the method's vote (`selection.vote`: plurality, None on a tie) over all
    collaborators' answers (candidates.jsonl rows) to the unlabeled questions about the
    test question's fact; None when no unlabeled question asks that fact. With fixed
    options one fact has one letter, so the pooled answer compares with the test gold."""

    fact = {r["id"]: "\t".join(fact_of(r)) for r in unlabeled}
    seen: collections.Counter = collections.Counter()
    pooled = []
    for c in candidates:  # one question per fact; collaborators renumbered within it
        f = fact[c["qid"]]
        pooled.append(selection.Candidate(f, seen[f], c["response"], c["answer"],
                                          c["entropy"]))
        seen[f] += 1
    votes = selection.vote(pooled)
    return {r["id"]: (votes[k].majority if (k := "\t".join(fact_of(r))) in votes else None)
            for r in test}


def repairs(test: Sequence[Mapping[str, str]], labeled: Iterable[Mapping[str, str]],
            pooled: Mapping[str, str | None], sft: Mapping[str, bool],
            final: Mapping[str, bool]) -> dict[str, int]:
    """On the test questions whose fact the labeled set asks: how many M1 (`sft`, id ->
    right) gets wrong, on how many of those the pooled vote is right, how many of
    those the final model gets right, and how many M1 got right that the final model
    gets wrong."""
    taught = {fact_of(r) for r in labeled}
    rows = [r for r in test if fact_of(r) in taught]
    wrong = [r for r in rows if not sft[r["id"]]]
    teachable = [r for r in wrong if pooled[r["id"]] == r["answer"]]
    return {"covered": len(rows), "sft_wrong": len(wrong),
            "sft_wrong_pooled_right": len(teachable),
            "of_those_final_right": sum(final[r["id"]] for r in teachable),
            "sft_right_final_wrong": sum(sft[r["id"]] and not final[r["id"]] for r in rows)}


def same_fact_demo(unlabeled: Sequence[Mapping[str, str]],
                   labeled: Sequence[Mapping[str, str]]) -> list[tuple[int, int]]:
    """(unlabeled row, labeled row) pairs: every unlabeled question whose fact the
    labeled set asks, with the first labeled row that asks it."""
    first: dict[tuple[str, str], int] = {}
    for j, r in enumerate(labeled):
        first.setdefault(fact_of(r), j)
    return [(i, first[fact_of(u)]) for i, u in enumerate(unlabeled) if fact_of(u) in first]


def greedy_answers(model, tokenizer, task, qs, pool, demos_QK: np.ndarray) -> list[str | None]:
    """The model's greedy answer letter to each of `qs`, in the pipeline's own prompt
    layout, with `pool[demos_QK[q]]` as its demonstrations (K = 0: none)."""
    import functools


    fmt = functools.partial(prompts.format_question, task)
    ans = lambda e: prompts.target(task, e.answer, e.options)  # noqa: E731
    budget = model.cfg.max_position_embeddings - 16
    texts = [p.text for p in build_demo_prompts(tokenizer, qs, pool, demos_QK,
                                                max_tokens=budget, format_question=fmt,
                                                format_answer=ans)]
    return [task.extract_answer(o, q.options) for o, q in
            zip(_greedy(model, tokenizer, texts, max_new_tokens=GREEDY_TOKENS, raw=False), qs,
                strict=True)]


def demo_use(model, tokenizer, task, unlabeled, labeled,
             pairs: Sequence[tuple[int, int]]) -> dict[str, float]:
    """Greedy answers to `unlabeled[i]` with `labeled[j]` as the only demonstration
    (the pipeline's own demonstration layout) and with none, for each (i, j) pair.

    Args:
      task: the run's Task (prompt layout, answer extraction).
      unlabeled, labeled: `data.Example`s with gold answers.
      pairs: from `same_fact_demo`.

    Returns:
      {"n", "accuracy_without_demo", "accuracy_with_same_fact_demo"}.
    """
    if not pairs:
        raise ValueError("no unlabeled question asks a fact the labeled set asks")
    qs = [unlabeled[i] for i, _ in pairs]
    got = {k: greedy_answers(model, tokenizer, task, qs, labeled, idx)
           for k, idx in (("none", np.zeros((len(qs), 0), int)),
                          ("same", np.array([[j] for _, j in pairs])))}
    gold = [q.answer for q in qs]

    def share(a):
        return float(np.mean([x == y for x, y in zip(a, gold, strict=True)]))

    return {"n": len(qs), "accuracy_without_demo": share(got["none"]),
            "accuracy_with_same_fact_demo": share(got["same"])}


def teacher_vs_student(pseudo: Mapping[str, str], m1: Mapping[str, str | None],
                       gold: Mapping[str, str]) -> dict[str, int]:
    """How many selected pseudo-labels the final tuning can learn anything new from.

    The final model starts from M1; a row whose pseudo-label is M1's own greedy answer
    only rehearses what M1 already answers. Only the rows where the two differ can move
    the final model, towards the gold answer when the label is right.

    Args:
      pseudo: unlabeled id -> the selected pseudo-label letter.
      m1: unlabeled id -> M1's greedy answer (None: unparsed) on the same prompt.
      gold: unlabeled id -> the held-out gold letter.
    """
    differ = [q for q, a in pseudo.items() if a != m1[q]]
    return {"selected": len(pseudo), "same_as_m1": len(pseudo) - len(differ),
            "differ": len(differ),
            "differ_label_right": sum(pseudo[q] == gold[q] for q in differ),
            "differ_m1_right": sum(m1[q] == gold[q] for q in differ)}


def _greedy(model, tokenizer, texts: list[str], max_new_tokens: int, *,
            raw: bool = True) -> list[str]:
    import jax


    cfg = SampleConfig(temperature=0.0, max_new_tokens=max_new_tokens, batch_size=128)
    # Raw text, as in pretraining: BOS, no chat template; rendered prompts carry their own.
    bos = (tokenizer.bos_token or "") if raw else ""
    out = generate(model, tokenizer, [bos + t for t in texts], cfg, key=jax.random.key(0),
                   progress=False)
    return [s[0].text for s in out]


def prose_recall(model, tokenizer, facts: Mapping[tuple[str, str], str]) -> dict[str, float]:
    """Greedy completion of every corpus phrasing of every (person, relation) -> value fact.

    Returns:
      {"phrasings": share of (fact, phrasing) completions whose first word is the value,
       "facts": share of facts completed right in at least 2 of their 3 phrasings,
       "num_facts": ...}
    """

    rels = {r.name: r for r in synth.RELATIONS}
    keys = sorted(facts)
    texts, gold, owner = [], [], []
    for i, (person, rel) in enumerate(keys):
        for tpl in rels[rel].statements:
            texts.append(tpl.split("{v}")[0].format(e=person).rstrip())
            gold.append(facts[(person, rel)])
            owner.append(i)
    outs = _greedy(model, tokenizer, texts, max_new_tokens=3)
    first_words = [(o.split() or [""])[0].rstrip(".,") for o in outs]
    ok = np.array([w == g for w, g in zip(first_words, gold, strict=True)])
    per_fact = np.bincount(owner, weights=ok, minlength=len(keys))
    per_count = np.bincount(owner, minlength=len(keys))
    return {"phrasings": float(ok.mean()),
            "facts": float(np.mean(per_fact >= np.minimum(2, per_count))),
            "num_facts": len(keys)}


def quiz_accuracy(model, tokenizer, quizzes: Sequence[tuple[str, Sequence[str], str]],
                  target: str | None = None) -> float:
    """Greedy answer letter to (question, options, gold letter) quizzes in the corpus
    layout (`synth.render_quiz`), whose worked answers follow `target` (default:
    `synth.LETTER_TARGET`).

    A letter-only target is probed after the prompted `Answer:` (the letter is the next
    token); a target that restates the option first is generated and parsed.
    """
    import re


    if target in (None, synth.LETTER_TARGET):
        texts = [synth.render_quiz(q, opts, None) + "\nAnswer:" for q, opts, _ in quizzes]
        got = [o.strip()[:1] for o in _greedy(model, tokenizer, texts, max_new_tokens=2)]
    else:
        texts = [synth.render_quiz(q, opts, None) + "\n" for q, opts, _ in quizzes]
        outs = _greedy(model, tokenizer, texts, max_new_tokens=GREEDY_TOKENS)
        got = [(m.group(1) if (m := re.search(r"Answer: ([A-Z])", o)) else None) for o in outs]
    return float(np.mean([a == g for a, (_, _, g) in zip(got, quizzes, strict=True)]))


def corpus_quizzes(corpus_path: Path) -> list[tuple[str, list[str], str]]:
    """The practice-person quizzes of a corpus.jsonl, parsed back into (q, options, gold)."""

    out = []
    for doc in synth.read_corpus(corpus_path):
        if not doc.startswith("Question:\n"):
            continue
        body, _, gold = doc.rpartition("\nAnswer: ")
        question = body.split("\n", 2)[1]
        opts = body.split("Options:\n", 1)[1].split("\n\n", 1)[0].split("\n")
        out.append((question, [o.split(". ", 1)[1] for o in opts], gold.strip()))
    return out


def seed_diagnosis(seed_dir: Path, data_dir: Path) -> dict[str, Any]:
    """The model-free measurements of one seed's sub-run (and its with_icp ablation)."""

    raw = data_dir / "raw"
    lab, unl, test = (read_rows(raw / f"{s}.csv") for s in ("labeled", "unlabeled", "test"))
    preds: dict[str, dict[str, bool]] = collections.defaultdict(dict)
    for p in read_jsonl(seed_dir / "07_eval" / "predictions.jsonl"):
        preds[p["model"]][p["id"]] = bool(p["correct"])
    gold = {r["id"]: r["answer"] for r in unl}
    cands = read_jsonl(seed_dir / "04_propose" / "candidates.jsonl")
    pseudo = {p["id"]: p["answer"] for p in read_jsonl(seed_dir / "05_select" / "pseudo.jsonl")}
    pooled = pooled_by_fact(cands, unl, test)
    out: dict[str, Any] = {
        "test_by_coverage": {m: coverage_split(test, lab, c) for m, c in sorted(preds.items())},
        "pseudo_labels_by_coverage": coverage_split(
            unl, lab, {q: a == gold[q] for q, a in pseudo.items()}),
        "majority_precision_by_entropy": entropy_calibration(cands, gold),
        "test_by_pooled_collaborators": coverage_split(
            test, lab, {r["id"]: pooled[r["id"]] == r["answer"] for r in test}),
        "repairs": repairs(test, lab, pooled, preds["sft"], preds["semievol"]),
        "m1_purity": answer_purity(test + unl, {**majority_right(cands, gold),
                                                **preds["sft"]}),
        "carry_over": carry_over(test, unl, pseudo, {m: preds[m] for m in ("sft", "semievol")}),
    }
    # The "with ICP" row of a demo run, or the run's own index when it retrieves (k > 0).
    icp = seed_dir / "ablations" / "with_icp" / "03_index" / "neighbours.npy"
    if not icp.is_file():
        icp = seed_dir / "03_index" / "neighbours.npy"
    if icp.is_file():
        out["icp_nearest_neighbour"] = neighbour_agreement(unl, lab, np.load(icp))
    return out


def _examples(rows: Sequence[Mapping[str, str]]) -> list:

    return [Example(id=r["id"], question=r["question"], options=tuple(json.loads(r["options"])),
                    answer=r["answer"], meta={}) for r in rows]


def load_stage_model(base_dir: Path, model_dir: Path | None = None):
    """(model, tokenizer): the base, or the model a tuning stage (02_sft) made from it."""

    ref = base_ref(base_dir)
    if model_dir is not None:
        ref = tuned_ref(model_dir, ref)
    return load_model(ref, BaseConfig(dtype="float32"), merged=True)


def _task_of(run_config: Path):

    return task_of(load_config(RunConfig, str(run_config)).data)


def _synth_of(run_config: Path):

    synth = load_config(RunConfig, str(run_config)).data.synth
    if synth is None:
        raise ValueError(f"{run_config}: not a demo run (no data.synth)")
    return synth


def demo_use_of(model, tokenizer, run_config: Path, data_dir: Path) -> dict[str, float]:
    """`demo_use` on a run's splits, with the task of the run whose `config.yaml` is
    `run_config`."""
    lab, unl = (read_rows(data_dir / "raw" / f"{s}.csv") for s in ("labeled", "unlabeled"))
    return demo_use(model, tokenizer, _task_of(run_config), _examples(unl), _examples(lab),
                    same_fact_demo(unl, lab))


def teacher_vs_student_of(model, tokenizer, seed_dir: Path, data_dir: Path) -> dict[str, int]:
    """`teacher_vs_student` for one seed's sub-run, `model` being its M1 (02_sft)."""

    unl = read_rows(data_dir / "raw" / "unlabeled.csv")
    qs = _examples(unl)
    m1 = greedy_answers(model, tokenizer, _task_of(seed_dir / "config.yaml"), qs, qs,
                        np.zeros((len(qs), 0), int))
    pseudo = {p["id"]: p["answer"] for p in read_jsonl(seed_dir / "05_select" / "pseudo.jsonl")}
    return teacher_vs_student(pseudo, {q.id: a for q, a in zip(qs, m1, strict=True)},
                              {r["id"]: r["answer"] for r in unl})


def base_diagnosis(base_dir: Path, data_dir: Path, run_config: Path) -> dict[str, Any]:
    """The base model's knowledge (prose), skill (quizzes) and use of a same-fact
    demonstration (`demo_use`), seed-independent; `run_config` is a sub-run's
    config.yaml (its synth world and task)."""

    raw = data_dir / "raw"
    rows = [r for s in ("labeled", "unlabeled", "test") for r in read_rows(raw / f"{s}.csv")]
    test = read_rows(raw / "test.csv")
    synth_cfg = _synth_of(run_config)
    world = synth.make_world(synth_cfg)
    target = synth.target_of(synth_cfg)
    model, tok = load_stage_model(base_dir)
    practice = corpus_quizzes(raw / "corpus.jsonl")
    return {
        "same_fact_demo": demo_use_of(model, tok, run_config, data_dir),
        "prose_recall_task_facts": prose_recall(
            model, tok, {fact_of(r): world.facts[fact_of(r)] for r in rows}),
        "quiz_accuracy_practice_people": quiz_accuracy(model, tok, practice, target),
        "quiz_accuracy_test_questions": quiz_accuracy(
            model, tok, [(r["question"], json.loads(r["options"]), r["answer"]) for r in test],
            target),
        "num_practice_quizzes": len(practice),
    }
