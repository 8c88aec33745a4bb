"""Vote, reflection routing, θ-quantile boundaries, empty / all-consistent cases,
ablation switches, gold separation, pseudo-label scoring."""

import dataclasses
import json
import math

import numpy as np
import pytest

from semievol_jax.pipeline import selection as S
from semievol_jax.pipeline.data import GoldAnswers
from semievol_jax.pipeline.selection import (
    Candidate,
    Reflection,
    SelectionConfig,
    needs_reflection,
    score_pseudo_labels,
    select,
    vote,
)
from semievol_jax.pipeline.tasks import get_task


def cands(qid, answers, entropies=None):
    entropies = entropies or [1.0] * len(answers)
    return [Candidate(qid, i, f"r{i}: Answer: {a}", a, e)
            for i, (a, e) in enumerate(zip(answers, entropies, strict=True))]


def test_vote_consistent_disagree_tie_none():
    cs = (cands("agree", ["A", "A", "A"]) + cands("two_one", ["A", "B", "A"])
          + cands("tie", ["A", "B", "B", "A"]) + cands("none", ["A", None, "A"])
          + cands("all_none", [None, None]))
    v = vote(reversed(cs))  # order of candidates does not matter
    assert v["agree"].consistent and v["agree"].majority == "A"
    assert v["agree"].answers == ("A", "A", "A")
    assert not v["two_one"].consistent and v["two_one"].majority == "A"
    assert v["two_one"].counts == (("A", 2), ("B", 1))
    assert not v["tie"].consistent and v["tie"].majority is None
    assert not v["none"].consistent and v["none"].majority == "A"  # None = disagreement
    assert not v["all_none"].consistent and v["all_none"].majority is None
    assert needs_reflection(v) == ["all_none", "none", "tie", "two_one"]


def test_vote_key_for_value_answers():
    g = get_task("gsm8k")
    v = vote(cands("q", ["1,000", "1000", "1000.0"]), key=g.answer_key)
    assert v["q"].consistent


def test_reflection_only_for_disagreements_and_combine():
    cs = cands("c", ["B", "B"], [0.5, 0.9]) + cands("d", ["A", "C"], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"missing \['d'\]"):
        select(cs, {}, SelectionConfig(rule="none"))
    with pytest.raises(ValueError, match=r"unexpected \['c'\]"):
        select(cs, {"c": ("B", 0.1), "d": ("C", 0.3)}, SelectionConfig(rule="none"))
    sel = select(cs, {"d": ("C", 0.3)}, SelectionConfig(rule="none"))
    c, d = sel.decisions
    assert (c.source, c.answer, c.entropy, c.selected) == ("consistent", "B", 0.5, True)
    assert (d.source, d.answer, d.entropy, d.selected) == ("reflected", "C", 0.3, True)
    assert sel.pseudo_labels() == {"c": "B", "d": "C"}
    mean = select(cs, {"d": ("C", 0.3)}, SelectionConfig(rule="none",
                                                         consistent_entropy="mean"))
    assert mean.decisions[0].entropy == pytest.approx(0.7)


def _reflected_pool(entropies):
    """Questions that all disagree, reflected with the given entropies."""
    cs, refl = [], {}
    for i, e in enumerate(entropies):
        cs += cands(f"q{i}", ["A", "B"])
        refl[f"q{i}"] = Reflection("A", e, "why")
    return cs, refl


def test_official_rule_theta_quantile_strict_vs_inclusive():
    ent = [0.0, 1.0, 2.0, 3.0, 4.0]
    cs, refl = _reflected_pool(ent)
    cs += cands("cons", ["C", "C"], [9.0, 9.0])  # consistent: kept whatever its entropy
    # θ=0.25 over the five reflected entropies: np.quantile -> exactly 1.0.
    strict = select(cs, refl, SelectionConfig(theta=0.25))
    assert strict.threshold == pytest.approx(1.0)
    assert sorted(strict.pseudo_labels()) == ["cons", "q0"]  # 1.0 < 1.0 is false
    incl = select(cs, refl, SelectionConfig(theta=0.25, inclusive=True))
    assert sorted(incl.pseudo_labels()) == ["cons", "q0", "q1"]
    # Interpolated θ: official 30th percentile of [0..4] = 1.2.
    off = select(cs, refl, SelectionConfig(theta=0.3))
    assert off.threshold == pytest.approx(np.percentile(ent, 30)) == pytest.approx(1.2)
    assert sorted(off.pseudo_labels()) == ["cons", "q0", "q1"]
    dropped = [d for d in off.decisions if not d.selected]
    assert all("over the θ=0.3 threshold 1.2" in d.reason for d in dropped)
    # Extremes: θ=0 strict keeps none of the pool, θ=1 strict all but the maximum.
    assert sorted(select(cs, refl, SelectionConfig(theta=0.0)).pseudo_labels()) == ["cons"]
    assert len(select(cs, refl, SelectionConfig(theta=1.0)).selected()) == 5
    assert len(select(cs, refl, SelectionConfig(theta=1.0, inclusive=True)).selected()) == 6


def test_all_rule_takes_quantile_over_every_pseudo_label():
    cs, refl = _reflected_pool([0.0, 2.0])
    cs += cands("cons_low", ["C", "C"], [1.0, 5.0]) + cands("cons_high", ["D", "D"], [3.0, 0])
    sel = select(cs, refl, SelectionConfig(theta=0.5, rule="all"))
    assert sel.threshold == pytest.approx(1.5)  # median of [0, 2, 1, 3]
    assert sorted(sel.pseudo_labels()) == ["cons_low", "q0"]


def test_all_consistent_case():
    cs = cands("a", ["A", "A"], [3, 3]) + cands("b", ["B", "B"], [4, 4])
    sel = select(cs, {}, SelectionConfig())
    assert needs_reflection(vote(cs)) == []
    assert sel.threshold is None  # empty reflected pool
    assert sel.stats["consistency_rate"] == 1.0 and sel.stats["selected_fraction"] == 1.0
    assert not sel.empty


def test_selection_json_round_trip():
    cs, refl = _reflected_pool([0.0, 1.0, 2.0])
    refl["q2"] = Reflection(None, 0.0)
    sel = select(cs, refl, SelectionConfig(theta=0.5))
    d = json.loads(json.dumps(sel.to_dict(), allow_nan=False))
    back = S.Selection.from_dict(d)
    assert back.pseudo_labels() == sel.pseudo_labels() == {"q0": "A"}
    assert back.config == sel.config and back.threshold == sel.threshold
    assert math.isnan(back.decisions[2].entropy)


def test_empty_selection_flag_and_message():
    cs, refl = _reflected_pool([1.0, 1.0])
    refl["q1"] = Reflection(None, 0.0)  # reflection with no Answer: line
    sel = select(cs, refl, SelectionConfig(theta=0.3))
    assert sel.empty and sel.pseudo_labels() == {}
    assert "final tuning uses the labeled set only" in sel.message
    assert sel.decisions[1].reason == "reflection gave no answer"
    nothing = select([], {}, SelectionConfig())
    assert nothing.empty and nothing.decisions == ()


def test_without_cl_single_collaborator_goes_through_entropy():
    cs = [Candidate(f"q{i}", 0, "r", a, e)
          for i, (a, e) in enumerate([("A", 0.1), ("B", 0.5), (None, 0.2), ("C", 0.9)])]
    sel = select(cs, None, SelectionConfig(theta=0.5, reflect=False))
    assert [d.source for d in sel.decisions] == ["single"] * 4
    assert needs_reflection(vote(cs)) == []
    assert sel.threshold == pytest.approx(0.5)  # median of [0.1, 0.5, 0.9]
    assert sel.pseudo_labels() == {"q0": "A"}
    assert math.isnan(sel.stats["consistency_rate"])  # no question had several votes


def test_without_as_keeps_all_and_majority_without_reflection():
    cs = cands("two_one", ["A", "B", "A"], [0.3, 0.1, 0.7]) + cands("tie", ["A", "B"])
    sel = select(cs, None, SelectionConfig(rule="none", reflect=False))
    two_one, tie = sel.decisions
    assert (two_one.source, two_one.answer, two_one.entropy) == ("majority", "A", 0.3)
    assert tie.answer is None and tie.reason == "tie between answers"
    assert sel.threshold is None and sel.pseudo_labels() == {"two_one": "A"}


def test_config_from_run_config_like_object():
    @dataclasses.dataclass(frozen=True)
    class RunSelect:  # the run config's section: extra fields, no `inclusive`
        theta: float = 0.0
        rule: str = "official"
        reflect: bool = True
        sweep_thetas: tuple = (0.1,)

    cs, refl = _reflected_pool([1.0, 2.0])
    assert select(cs, refl, RunSelect()).config == SelectionConfig(theta=0.0)
    with pytest.raises(ValueError, match="rule must be one of"):
        SelectionConfig(rule="best")
    with pytest.raises(ValueError, match="theta"):
        SelectionConfig(theta=1.5)


@pytest.mark.parametrize("gold", [GoldAnswers({"q0": "A"}), {"q0": "A"}, {"q0": "A", "q1": 3}],
                         ids=["GoldAnswers", "dict", "dict-with-a-number"])
def test_selection_refuses_gold_answers_wherever_they_are_passed(gold):
    cs, refl = _reflected_pool([1.0])
    calls = [lambda: select(cs, gold), lambda: select(gold), lambda: select(cs, refl, gold),
             lambda: vote(gold), lambda: needs_reflection(gold)]
    for call in calls:
        with pytest.raises(TypeError, match="must not see gold"):
            call()


def test_gold_answers_change_the_score_and_nothing_selected():
    """The pseudo-labels follow the candidates and reflections even where every gold
    answer disagrees with them; only the score, the one function given gold, moves."""
    cs, refl = _reflected_pool([0.0, 1.0, 2.0, 3.0])
    cs += cands("cons", ["A", "A"], [5.0, 5.0])
    qids = [f"q{i}" for i in range(4)] + ["cons"]
    sel = select(cs, refl, SelectionConfig(theta=0.5))
    assert sel.pseudo_labels() == {"q0": "A", "q1": "A", "cons": "A"}
    right = score_pseudo_labels(sel, GoldAnswers(dict.fromkeys(qids, "A")))
    wrong = score_pseudo_labels(sel, GoldAnswers(dict.fromkeys(qids, "B")))
    assert (right.accuracy_selected, wrong.accuracy_selected) == (1.0, 0.0)
    # Reflections map ids to Reflection tuples, not bare answers: never taken for gold,
    # and neither is an empty mapping.
    assert select(cands("c", ["A", "A"]), {}, SelectionConfig()).pseudo_labels() == {"c": "A"}
    with pytest.raises(ValueError, match="collaborator ids repeat"):
        vote(cs + cs)


def test_score_pseudo_labels_per_theta():
    cs, refl = _reflected_pool([0.0, 1.0, 2.0, 3.0])
    refl["q2"] = Reflection("B", 2.0)  # wrong
    refl["q3"] = Reflection("B", 3.0)  # wrong
    cs += cands("cons", ["A", "A"], [5.0, 5.0])
    gold = GoldAnswers({f"q{i}": "A" for i in range(4)} | {"cons": "A"})
    sel = select(cs, refl, SelectionConfig(theta=0.5))  # t = 1.5: keeps q0, q1, cons
    score = score_pseudo_labels(sel, gold, thetas=(0.0, 0.5, 1.0))
    assert score.accuracy_all == pytest.approx(3 / 5)
    assert score.accuracy_selected == 1.0
    assert score.accuracy_by_source == {"consistent": 1.0, "reflected": 0.5}
    assert score.accuracy_per_theta == {0.0: 1.0, 0.5: 1.0, 1.0: pytest.approx(3 / 4)}
    assert score.selected_fraction_per_theta[0.0] == pytest.approx(1 / 5)
    assert score.num_scored == 5
    with pytest.raises(TypeError, match="GoldAnswers"):
        score_pseudo_labels(sel, {"q0": "A"})
    # Value task scoring through the task's rule.
    v = select(cands("n", ["100", "100"]), {}, SelectionConfig())
    s = score_pseudo_labels(v, GoldAnswers({"n": "100.5"}),
                            is_correct=get_task("gsm8k").is_correct)
    assert s.accuracy_all == 1.0


def test_score_of_the_collaborators_own_answers_and_their_majority():
    """Before any vote: each collaborator's answers against gold, and the majority's."""
    cs = (cands("a", ["A", "A", "B"]) + cands("b", ["B", "C", "C"])
          + cands("tie", ["A", "B", None]))
    sel = select(cs, {"a": Reflection("A", 1.0), "b": Reflection("B", 1.0),
                      "tie": Reflection("A", 1.0)}, SelectionConfig())
    gold = GoldAnswers({"a": "A", "b": "C", "tie": "B"})
    score = score_pseudo_labels(sel, gold, cs)
    assert score.accuracy_proposals == pytest.approx(5 / 8)  # 8 parsed answers, 5 right
    assert score.accuracy_per_collaborator == (pytest.approx(1 / 3), 1.0, 0.5)
    assert score.accuracy_majority == 1.0  # a -> A, b -> C; the tie has no majority
    assert math.isnan(score_pseudo_labels(sel, gold).accuracy_proposals)  # not given


def test_per_class_threshold_keeps_each_answer_class_share():
    """The sure class (low entropy A) fills the pooled θ-quantile; per class, every
    answer keeps its own lowest-entropy share."""
    cs, refl = [], {}
    for i, (a, e) in enumerate([("A", 0.1), ("A", 0.2), ("A", 0.3), ("A", 0.4),
                                ("B", 1.1), ("B", 1.2), ("B", 1.3), ("B", 1.4)]):
        cs += cands(f"q{i}", ["A", "B"])
        refl[f"q{i}"] = Reflection(a, e)
    pooled = select(cs, refl, SelectionConfig(theta=0.5))
    assert set(pooled.pseudo_labels().values()) == {"A"}
    balanced = select(cs, refl, SelectionConfig(theta=0.5, per_class=True))
    assert balanced.pseudo_labels() == {"q0": "A", "q1": "A", "q4": "B", "q5": "B"}
