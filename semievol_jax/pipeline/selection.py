"""Pseudo-label selection: vote, self-justify the disagreements, keep low entropy.

Pure functions over plain records; no model, no JAX. The flow of one round:

    votes = vote(candidates)                      # n collaborators per question
    qids = needs_reflection(votes)                # only the disagreements
    reflections = {...}                           # the model, outside this module
    sel = select(candidates, reflections, cfg)    # pseudo-labels + adaptive selection
    score = score_pseudo_labels(sel, gold, cands) # the only function taking gold

Voting rules (documented here once):

- A question is *consistent* when every collaborator produced an answer and all
  answers are equal (under `key`). A None answer (no `Answer:` line) is a
  disagreement, so such a question goes to reflection; the official code would have
  accepted an all-empty vote as the label "".
- With a single collaborator there is nothing to agree on: its answer is taken as a
  "single" pseudo-label and, under the official rule, goes through the entropy filter
  (otherwise the "without CL" ablation would keep everything and also lose AS).
- `majority` is the unique most frequent non-None answer; on a tie it is None.

Adaptive selection (AS), threshold t = the θ-quantile (numpy linear interpolation,
as `np.percentile` in the official code) of the pool's entropies:

- rule "official": keep every consistent pseudo-label; among the rest (reflected,
  majority or single) keep those with entropy < t, t taken over that pool.
- rule "all": t over every pseudo-label; keep those with entropy < t.
- rule "none": keep every pseudo-label (the "without AS" ablation).
- `per_class`: t is taken within each answer's part of the pool (class-balanced).

`inclusive=False` keeps `entropy < t` (official; θ=0 keeps none of the pool, θ=1 all
but the maximum); `inclusive=True` keeps `entropy <= t` (θ=1 keeps the whole pool).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from semievol_jax.pipeline.data.examples import GoldAnswers

RULES = ("official", "all", "none")
CONSISTENT, REFLECTED, MAJORITY, SINGLE = "consistent", "reflected", "majority", "single"


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One collaborator's response to one unlabeled question.

    Attributes:
      qid: question id.
      collaborator: collaborator index (0..n-1); the lowest is "first".
      response: the generated text.
      answer: extracted answer (`Task.extract_answer`), None when absent.
      entropy: mean negative log-probability of the response tokens.
    """

    qid: str
    collaborator: int
    response: str
    answer: str | None
    entropy: float


class Reflection(NamedTuple):
    """The self-justified answer of a disagreement; a plain `(answer, entropy)` works."""

    answer: str | None
    entropy: float
    response: str = ""


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
    """How pseudo-labels are chosen (field names match the run config's `select`).

    Attributes:
      theta: entropy quantile in [0, 1] (official 0.3).
      rule: "official" | "all" | "none"; see the module docstring.
      inclusive: keep `entropy <= t` instead of the official `entropy < t`.
      reflect: resolve disagreements with the reflection answers (False: majority).
      consistent_entropy: "first" (official: the first collaborator's) or "mean".
      per_class: the threshold is the θ-quantile within each answer's own pool (as
        class-balanced self-training does), so the kept labels keep the pool's class
        shares instead of the one class the model is surest of.
    """

    theta: float = 0.3
    rule: str = "official"
    inclusive: bool = False
    reflect: bool = True
    consistent_entropy: str = "first"
    per_class: bool = False

    def __post_init__(self):
        if not 0.0 <= self.theta <= 1.0:
            raise ValueError(f"theta must be in [0, 1], got {self.theta}")
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")
        if self.consistent_entropy not in ("first", "mean"):
            raise ValueError("consistent_entropy must be 'first' or 'mean'")


@dataclasses.dataclass(frozen=True)
class Vote:
    """The collaborators' answers to one question.

    Attributes:
      qid: question id.
      answers: per collaborator, in collaborator order (None = no answer).
      counts: (answer key, count) for non-None answers, most frequent first.
      consistent: all n >= 2 answers present and equal.
      majority: the unique most frequent answer, None on a tie or with no answers.
    """

    qid: str
    answers: tuple[str | None, ...]
    counts: tuple[tuple[str, int], ...]
    consistent: bool
    majority: str | None

    @property
    def n(self) -> int:
        """Number of collaborators."""
        return len(self.answers)


@dataclasses.dataclass(frozen=True)
class Decision:
    """The pseudo-label decision for one question.

    Attributes:
      qid: question id.
      source: "consistent" | "reflected" | "majority" | "single".
      answer: the pseudo-label, None when no answer could be formed.
      entropy: entropy of the response behind the answer (NaN without an answer).
      response: that response's text.
      selected: kept for final tuning.
      reason: why not kept ("" when kept).
    """

    qid: str
    source: str
    answer: str | None
    entropy: float
    response: str
    selected: bool
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class Selection:
    """The outcome of `select`.

    Attributes:
      decisions: one per question, in first-seen candidate order.
      threshold: the entropy threshold t (None under rule "none" or an empty pool).
      config: the config used.
      stats: summary numbers (see `summarize`).
      empty: no pseudo-label selected; final tuning then uses the labeled set only.
      message: a human sentence about the outcome (why it is empty, when it is).
    """

    decisions: tuple[Decision, ...]
    threshold: float | None
    config: SelectionConfig
    stats: Mapping[str, float]
    empty: bool
    message: str

    def selected(self) -> list[Decision]:
        """The decisions kept for final tuning."""
        return [d for d in self.decisions if d.selected]

    def pseudo_labels(self) -> dict[str, str]:
        """qid -> pseudo-label of the kept decisions."""
        return {d.qid: d.answer for d in self.decisions if d.selected and d.answer}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (NaN entropies as None) for a stage's output file."""
        nan_to_none = lambda x: None if isinstance(x, float) and np.isnan(x) else x
        return {
            "threshold": self.threshold,
            "config": dataclasses.asdict(self.config),
            "stats": {k: nan_to_none(v) for k, v in self.stats.items()},
            "empty": self.empty,
            "message": self.message,
            "decisions": [{k: nan_to_none(v) for k, v in dataclasses.asdict(d).items()}
                          for d in self.decisions],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Selection:
        """Inverse of `to_dict`."""
        nan = lambda x: float("nan") if x is None else x
        decisions = tuple(Decision(**{**x, "entropy": nan(x["entropy"])})
                          for x in d["decisions"])
        return cls(decisions, d["threshold"], SelectionConfig(**d["config"]),
                   {k: nan(v) for k, v in d["stats"].items()}, d["empty"], d["message"])


def _looks_like_gold(a: Any) -> bool:
    """GoldAnswers, or a plain mapping of question ids to answers (str or numbers):
    nothing a selection function takes maps ids to bare answers."""
    if isinstance(a, GoldAnswers):
        return True
    return (isinstance(a, Mapping) and len(a) > 0
            and all(isinstance(v, str | int | float) and not isinstance(v, bool)
                    for v in a.values()))


def _refuse_gold(*args: Any) -> None:
    if any(_looks_like_gold(a) for a in args):
        raise TypeError("selection must not see gold answers; only "
                        "score_pseudo_labels takes them (as GoldAnswers)")


def _group(candidates: Iterable[Candidate]) -> dict[str, list[Candidate]]:
    groups: dict[str, list[Candidate]] = {}
    for c in candidates:
        _refuse_gold(c)
        if not isinstance(c, Candidate):
            raise TypeError(f"expected Candidate, got {type(c).__name__}")
        groups.setdefault(c.qid, []).append(c)
    for qid, cs in groups.items():
        cs.sort(key=lambda c: c.collaborator)
        ids = [c.collaborator for c in cs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"question {qid!r}: collaborator ids repeat: {ids}")
        for c in cs:
            if c.answer is not None and np.isnan(c.entropy):
                raise ValueError(f"question {qid!r}, collaborator {c.collaborator}: "
                                 "entropy is NaN")
    return groups


def _vote_one(qid: str, cs: Sequence[Candidate], key: Callable[[str], str]) -> Vote:
    answers = tuple(c.answer for c in cs)
    keys = [key(a) for a in answers if a is not None]
    counter = collections.Counter(keys)
    # Most frequent first; ties in first-seen order (Counter keeps insertion order).
    counts = tuple(sorted(counter.items(), key=lambda kv: -kv[1]))
    consistent = len(answers) >= 2 and len(keys) == len(answers) and len(counter) == 1
    majority = None
    if counts and (len(counts) == 1 or counts[0][1] > counts[1][1]):
        majority = counts[0][0]
    return Vote(qid, answers, counts, consistent, majority)


def vote(candidates: Iterable[Candidate], *,
         key: Callable[[str], str] | None = None) -> dict[str, Vote]:
    """Tallies the collaborators' answers per question.

    Args:
      candidates: n candidates per question (any order).
      key: maps an answer to its vote form; `Task.answer_key` for value/text tasks
        ("1,000" and "1000" agree). Default: the answer as is.

    Returns:
      qid -> Vote, in first-seen order.
    """
    _refuse_gold(candidates)
    key = key or (lambda a: a)
    return {qid: _vote_one(qid, cs, key) for qid, cs in _group(candidates).items()}


def needs_reflection(votes: Mapping[str, Vote]) -> list[str]:
    """The questions whose collaborators disagree (n >= 2 and not consistent).

    Single-collaborator questions never need reflection (there is no disagreement).
    """
    _refuse_gold(votes)
    return [qid for qid, v in votes.items() if v.n >= 2 and not v.consistent]


def _entropy_of(cs: Sequence[Candidate], answer_key: str, key, how: str) -> tuple[float, str]:
    agreeing = [c for c in cs if c.answer is not None and key(c.answer) == answer_key]
    if how == "mean":
        return float(np.mean([c.entropy for c in agreeing])), agreeing[0].response
    return float(agreeing[0].entropy), agreeing[0].response


def _propose(qid: str, cs: Sequence[Candidate], v: Vote, reflections, cfg, key) -> Decision:
    """The pseudo-label of one question before adaptive selection."""
    if v.n == 1:
        c = cs[0]
        if c.answer is None:
            return Decision(qid, SINGLE, None, float("nan"), c.response, False, "no answer")
        return Decision(qid, SINGLE, c.answer, float(c.entropy), c.response, True)
    if v.consistent:
        ent, resp = _entropy_of(cs, v.counts[0][0], key, cfg.consistent_entropy)
        return Decision(qid, CONSISTENT, cs[0].answer, ent, resp, True)
    if cfg.reflect:
        r = Reflection(*reflections[qid])
        if r.answer is not None and np.isnan(r.entropy):
            raise ValueError(f"question {qid!r}: reflection entropy is NaN")
        if r.answer is None:
            return Decision(qid, REFLECTED, None, float("nan"), r.response, False,
                            "reflection gave no answer")
        return Decision(qid, REFLECTED, r.answer, float(r.entropy), r.response, True)
    if v.majority is None:
        why = "tie between answers" if v.counts else "no collaborator answered"
        return Decision(qid, MAJORITY, None, float("nan"), "", False, why)
    ent, resp = _entropy_of(cs, v.majority, key, cfg.consistent_entropy)
    answer = next(c.answer for c in cs if c.answer is not None and key(c.answer) == v.majority)
    return Decision(qid, MAJORITY, answer, ent, resp, True)


def quantile_threshold(entropies: Sequence[float], theta: float) -> float | None:
    """The θ-quantile of `entropies` (linear interpolation); None when empty."""
    if len(entropies) == 0:
        return None
    return float(np.quantile(np.asarray(entropies, dtype=np.float64), theta))


def apply_entropy_selection(decisions: Sequence[Decision], cfg: SelectionConfig
                            ) -> tuple[tuple[Decision, ...], float | None]:
    """Adaptive selection over proposed pseudo-labels (the module docstring's rules).

    Args:
      decisions: proposals; those with `answer is None` stay unselected.
      cfg: theta, rule, inclusive.

    Returns:
      (decisions with `selected`/`reason` set, the threshold t or None).
    """
    answered = [d for d in decisions if d.answer is not None]
    if cfg.rule == "none":
        pool, t = [], None
    else:
        pool = answered if cfg.rule == "all" else [d for d in answered
                                                   if d.source != CONSISTENT]
        t = quantile_threshold([d.entropy for d in pool], cfg.theta)
    in_pool = {id(d) for d in pool}
    by_class: dict[str, list[float]] = {}
    for d in pool if cfg.per_class else ():
        by_class.setdefault(d.answer.strip().upper(), []).append(d.entropy)
    per_class = {a: quantile_threshold(es, cfg.theta) for a, es in by_class.items()}
    out = []
    for d in decisions:
        if d.answer is None:
            out.append(dataclasses.replace(d, selected=False))
        elif id(d) not in in_pool:
            out.append(dataclasses.replace(d, selected=True, reason=""))
        else:
            t_d = per_class.get(d.answer.strip().upper(), t)
            keep = d.entropy <= t_d if cfg.inclusive else d.entropy < t_d
            out.append(dataclasses.replace(
                d, selected=keep,
                reason="" if keep else f"entropy {d.entropy:.4g} over the θ={cfg.theta} "
                                       f"threshold {t_d:.4g}"))
    return tuple(out), t


def summarize(decisions: Sequence[Decision], votes: Mapping[str, Vote]) -> dict[str, float]:
    """Counts and rates: questions, consistent, reflected, selected, their fractions."""
    n = len(decisions)
    by_source = collections.Counter(d.source for d in decisions)
    answered = sum(d.answer is not None for d in decisions)
    selected = sum(d.selected for d in decisions)
    multi = [v for v in votes.values() if v.n >= 2]
    return {
        "num_questions": n,
        "num_consistent": by_source[CONSISTENT],
        "num_reflected": by_source[REFLECTED],
        "num_majority": by_source[MAJORITY],
        "num_single": by_source[SINGLE],
        "num_answered": answered,
        "num_selected": selected,
        # Of the questions with several collaborators, how many agreed unanimously.
        "consistency_rate": (sum(v.consistent for v in multi) / len(multi)) if multi
        else float("nan"),
        "selected_fraction": selected / n if n else 0.0,
    }


def select(candidates: Iterable[Candidate],
           reflections: Mapping[str, Reflection | tuple] | None = None,
           cfg: SelectionConfig | Any = None, *,
           key: Callable[[str], str] | None = None) -> Selection:
    """Pseudo-labels for the unlabeled questions, and which of them to train on.

    Args:
      candidates: every collaborator's candidate (n per question; n = 1 is the
        "without CL" ablation).
      reflections: qid -> `Reflection` or `(answer, entropy)` for exactly the
        questions `needs_reflection` named (when `cfg.reflect`).
      cfg: a `SelectionConfig`, or any object with its field names (the run config's
        `select` section); missing fields take the defaults.
      key: answer -> vote form, as in `vote`.

    Returns:
      The `Selection`; `empty` is True when nothing was kept.

    Raises:
      TypeError: gold answers passed in (selection never sees them).
      ValueError: reflections missing for, or given for, the wrong questions.
    """
    _refuse_gold(candidates, reflections, cfg)
    cfg = _as_config(cfg)
    reflections = dict(reflections or {})
    key = key or (lambda a: a)
    groups = _group(candidates)
    votes = {qid: _vote_one(qid, cs, key) for qid, cs in groups.items()}
    if cfg.reflect:
        wanted = set(needs_reflection(votes))
        missing, extra = sorted(wanted - set(reflections)), sorted(set(reflections) - wanted)
        if missing or extra:
            raise ValueError(f"reflections must cover exactly the disagreements: missing "
                             f"{missing[:10]} ({len(missing)}), unexpected {extra[:10]} "
                             f"({len(extra)})")
    proposals = [_propose(qid, cs, votes[qid], reflections, cfg, key)
                 for qid, cs in groups.items()]
    decisions, t = apply_entropy_selection(proposals, cfg)
    stats = summarize(decisions, votes)
    empty = stats["num_selected"] == 0
    if not decisions:
        message = "no candidates: no pseudo-labels; final tuning uses the labeled set only"
    elif empty:
        message = (f"no pseudo-label selected ({stats['num_answered']} of "
                   f"{stats['num_questions']} answered, rule {cfg.rule!r}, θ={cfg.theta}); "
                   "final tuning uses the labeled set only")
    else:
        message = (f"selected {stats['num_selected']} of {stats['num_questions']} "
                   f"pseudo-labels ({stats['selected_fraction']:.1%})")
    return Selection(decisions, t, cfg, stats, empty, message)


def _as_config(cfg: Any) -> SelectionConfig:
    if cfg is None:
        return SelectionConfig()
    if isinstance(cfg, SelectionConfig):
        return cfg
    fields = {f.name for f in dataclasses.fields(SelectionConfig)}
    return SelectionConfig(**{k: getattr(cfg, k) for k in fields if hasattr(cfg, k)})


@dataclasses.dataclass(frozen=True)
class PseudoLabelScore:
    """How good the pseudo-labels are against the unlabeled split's gold answers.

    Attributes:
      accuracy_all: over every answered pseudo-label (before AS).
      accuracy_selected: over the selected ones (NaN when none).
      accuracy_by_source: per source ("consistent", "reflected", ...).
      accuracy_per_theta: θ -> accuracy of what AS keeps at that θ (same rule).
      selected_fraction_per_theta: θ -> fraction of questions kept at that θ.
      num_scored: pseudo-labels that had a gold answer to compare with.
      accuracy_proposals: over every collaborator's own answer (before any vote).
      accuracy_per_collaborator: the same per collaborator index.
      accuracy_majority: over the questions whose answers have a unique most frequent
        one (what a vote would label, without reflection).
    """

    accuracy_all: float
    accuracy_selected: float
    accuracy_by_source: Mapping[str, float]
    accuracy_per_theta: Mapping[float, float]
    selected_fraction_per_theta: Mapping[float, float]
    num_scored: int
    accuracy_proposals: float = float("nan")
    accuracy_per_collaborator: tuple[float, ...] = ()
    accuracy_majority: float = float("nan")


def score_pseudo_labels(selection: Selection, gold: GoldAnswers,
                        candidates: Iterable[Candidate] = (), *,
                        thetas: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 1.0),
                        is_correct: Callable[[str, str], bool] | None = None,
                        key: Callable[[str], str] | None = None) -> PseudoLabelScore:
    """Scores pseudo-labels against gold: the one place gold answers are used.

    Args:
      selection: the `select` output.
      gold: unlabeled gold answers (`load_unlabeled`); questions without gold are
        skipped.
      candidates: the collaborators' candidates, to score the step before the vote
        (their own answers and their majority).
      thetas: θ values to re-run adaptive selection at (same rule and boundary).
      is_correct: `(pred, gold) -> bool`; `Task.is_correct` for value/text tasks.
        Default: exact, case-insensitive match.

    Returns:
      The `PseudoLabelScore`.
    """
    if not isinstance(gold, GoldAnswers):
        raise TypeError(f"gold must be GoldAnswers, got {type(gold).__name__}")
    check = is_correct or (lambda p, g: p.strip().upper() == g.strip().upper())

    def acc(ds: Iterable[Decision]) -> float:
        hits = [check(d.answer, gold[d.qid]) for d in ds
                if d.answer is not None and d.qid in gold]
        return float(np.mean(hits)) if hits else float("nan")

    ds = selection.decisions
    sources = sorted({d.source for d in ds})
    per_theta, frac_theta = {}, {}
    for th in thetas:
        cfg = dataclasses.replace(selection.config, theta=float(th))
        again, _ = apply_entropy_selection(ds, cfg)
        per_theta[float(th)] = acc(d for d in again if d.selected)
        frac_theta[float(th)] = (sum(d.selected for d in again) / len(again)) if again else 0.0
    groups = _group(candidates)
    hits = [(c.collaborator, check(c.answer, gold[c.qid])) for cs in groups.values()
            for c in cs if c.answer is not None and c.qid in gold]
    per = sorted({j for j, _ in hits})
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    majority = [_vote_one(q, cs, key or (lambda a: a)) for q, cs in groups.items() if q in gold]
    return PseudoLabelScore(
        accuracy_proposals=mean([h for _, h in hits]),
        accuracy_per_collaborator=tuple(mean([h for j, h in hits if j == i]) for i in per),
        accuracy_majority=mean([check(v.majority, gold[v.qid]) for v in majority
                                if v.majority is not None]),
        accuracy_all=acc(ds),
        accuracy_selected=acc(d for d in ds if d.selected),
        accuracy_by_source={s: acc(d for d in ds if d.source == s) for s in sources},
        accuracy_per_theta=per_theta,
        selected_fraction_per_theta=frac_theta,
        num_scored=sum(d.answer is not None and d.qid in gold for d in ds),
    )
