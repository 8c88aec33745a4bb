"""Task registry: what each SemiEvol task asks for, how an answer is read and scored.

A task is a frozen `Task` record. Its `kind` decides three things:

- `"choice"`: options labelled A, B, ...; the answer is a letter; scoring is exact letter
  match.
- `"value"`: a number (gsm8k, convfinqa); scoring is numeric agreement within 1%
  relative (`math.isclose(rel_tol=0.01)`, as the official `check_value_equal`).
- `"text"`: a short free-text answer (drop); scoring is a normalised fuzzy match:
  lowercase, punctuation and the articles a/an/the removed, whitespace collapsed, then
  exact match or token F1 >= `text_f1_threshold` (0.8).

Every response is expected to end with `Answer: X`; `extract_answer` reads the *last*
such line (a model that revises itself is judged on its final word). With
`rule="lenient"` a response without that line is read as a small instruct model writes
one: "The answer is B", "B. neutral", or the text of exactly one option; a response that
only lists the options again gives no answer. User-defined
tasks come from a dict or YAML (`Task.from_dict`, `register_tasks`) without code changes.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import re
import string
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from semievol_jax.errors import UserError

KINDS = ("choice", "value", "text")
LETTERS = string.ascii_uppercase  # option labels; 26 options at most

DEFAULT_TARGET = "Answer: {answer}"  # what SFT and the final tuning teach, by default

_CHOICE_INSTRUCTION = (
    "Answer the multiple-choice question. Your response should end with a line of the "
    "form 'Answer: LETTER' (without quotes), where LETTER is one of {letters}."
)
_VALUE_INSTRUCTION = (
    "Answer the {question_type} question. The answer should be in digits. Your response "
    "should end with a line of the form 'Answer: NUMBER' (without quotes)."
)
_TEXT_INSTRUCTION = (
    "Answer the {question_type} question. The answer should be a single word or in "
    "digits. Your response should end with a line of the form 'Answer: ANSWER' "
    "(without quotes)."
)

# `answer`, optional markdown emphasis, then a colon (ASCII or full width).
_ANSWER_RE = re.compile(r"answer\s*[*_]*\s*[:：]", re.IGNORECASE)
# Wrapping a model likes to put around the answer itself: markdown, quotes, brackets.
_WRAP = " \t*_`'\"([{<"
_TRAIL = " \t*_`'\")]}>.,;:!"
_LEADING_WORD = re.compile(r"^(?:option|choice)\s+", re.IGNORECASE)
# An uppercase letter needs only a non-alphanumeric after it ("B. foo", "B)"); a
# lowercase one must stand alone on its line so "Answer: a lot" does not read as A.
_UPPER_LETTER = re.compile(r"^([A-Z])(?![A-Za-z0-9])")
_LOWER_LETTER = re.compile(r"^([a-z])[\s).\]*_'\"`,;:!]*$")
# A number: thousands commas only in groups of three, so "1,2" is not read as 12.
EXTRACTION_RULES = ("last", "lenient", "official")
_OFFICIAL_RE = re.compile(r"Answer:\s*(\S+)")  # the official code's extraction
# Lenient reading: "the (correct|final) answer is B", "answer would be: B", "option B".
_PHRASE_RE = re.compile(
    r"\b(?:the\s+)?(?:correct\s+|final\s+|right\s+|best\s+)?(?:answer|option|choice)"
    r"\s*(?:is|would\s+be|will\s+be)?\s*[:：]?\s*", re.IGNORECASE)
# An option line as a model restates it: "B. text", "(B) text", "B) text", "B: text", "B".
_OPTION_LINE = re.compile(r"^\s*[(\[]?([A-Z])(?:[.):\]]|\s*$)")
_NUMBER_RE = re.compile(
    r"(?P<sign>[-+−]?)\s*\$?\s*(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?P<exp>[eE][-+]?\d+)?\s*(?P<pct>%)?"
)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


class TaskError(UserError, ValueError):
    """An unknown task name or a malformed task definition."""


@dataclasses.dataclass(frozen=True)
class Task:
    """One task: prompt instruction, answer extraction and scoring rule.

    Attributes:
      name: registry key, e.g. "mmlu".
      kind: "choice" | "value" | "text".
      instruction: the line(s) appended to every question. `{letters}` is replaced by
        the valid letters ("A, B, C, D"), `{question_type}` by `question_type`.
      question_type: words for the instruction ("math", "reading comprehension");
        empty = the kind's default.
      num_options: the fixed option count, checked at load time; None = any (1..26).
      value_rel_tol: relative tolerance of "value" scoring.
      text_f1_threshold: token-F1 a "text" answer needs to count as correct.
      target: the response that SFT and the final tuning teach for an answer (gold or
        pseudo). `{answer}` is the answer; for choice tasks `{option}` is the chosen
        option's text, so a response can restate what it picks before its letter. It
        must end with the `Answer: {answer}` line the extraction reads.
    """

    name: str
    kind: str
    instruction: str = ""
    question_type: str = ""
    num_options: int | None = None
    value_rel_tol: float = 0.01
    text_f1_threshold: float = 0.8
    target: str = DEFAULT_TARGET

    def __post_init__(self):
        if self.kind not in KINDS:
            raise TaskError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if not self.instruction:
            default = {"choice": _CHOICE_INSTRUCTION, "value": _VALUE_INSTRUCTION,
                       "text": _TEXT_INSTRUCTION}[self.kind]
            object.__setattr__(self, "instruction", default)
        if self.num_options is not None and not 1 <= self.num_options <= len(LETTERS):
            raise TaskError(f"task {self.name!r}: num_options must be in 1..26, "
                            f"got {self.num_options}")
        fields = {f for _, f, _, _ in string.Formatter().parse(self.target) if f is not None}
        allowed = {"answer", "option"} if self.kind == "choice" else {"answer"}
        if not self.target.endswith("Answer: {answer}") or not fields <= allowed:
            raise TaskError(f"task {self.name!r}: target {self.target!r} must end with "
                            f"'Answer: {{answer}}' and use only {sorted(allowed)}")
        if not self.question_type:
            default = {"choice": "multiple-choice", "value": "math",
                       "text": "reading comprehension"}[self.kind]
            object.__setattr__(self, "question_type", default)

    # -- construction --------------------------------------------------------------

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], *, name: str | None = None) -> Task:
        """Builds a task from a plain mapping (a YAML entry, a config node).

        Args:
          spec: keys are `Task` field names; `name` may come from the `name` argument.
          name: the task name when `spec` has none (e.g. the key of a YAML mapping).

        Raises:
          TaskError: an unknown key, a missing name/kind, or a bad value.
        """
        spec = dict(spec)
        if name is not None:
            spec.setdefault("name", name)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(spec) - fields)
        if unknown:
            raise TaskError(f"task {spec.get('name', '?')!r}: unknown keys {unknown}; "
                            f"allowed: {sorted(fields)}")
        missing = [k for k in ("name", "kind") if not spec.get(k)]
        if missing:
            raise TaskError(f"task definition {dict(spec)!r} lacks {missing}")
        try:
            return cls(**spec)
        except TypeError as e:
            raise TaskError(f"task {spec['name']!r}: {e}") from e

    # -- prompt --------------------------------------------------------------------

    def render_instruction(self, num_options: int | None = None) -> str:
        """The instruction with `{letters}` and `{question_type}` filled in.

        Args:
          num_options: how many options this question has (choice tasks).
        """
        n = num_options or self.num_options or 4
        letters = ", ".join(LETTERS[:n])
        return self.instruction.replace("{letters}", letters).replace(
            "{question_type}", self.question_type)

    # -- answers -------------------------------------------------------------------

    def extract_answer(self, response: str | None, options: Sequence[str] | None = None,
                       *, rule: str = "last") -> str | None:
        """Reads the final answer out of a model response.

        The last `Answer: X` that parses wins. Case, whitespace, markdown emphasis,
        quotes, brackets and trailing punctuation around X are tolerated.

        Args:
          response: the generated text.
          options: the question's options (choice tasks). When given, a letter past the
            last option gives None, and an answer that repeats an option's text
            ("Answer: positive") maps to that option's letter.
          rule: "last" (the last `Answer:` that parses), "lenient" (that, else, for
            choice tasks, the response read as a model that ignores the format writes
            it; see the module docstring) or "official" (the official code's rule: the
            first "Answer:" and the whitespace-free token after it, as written, so "B." is not "B").

        Returns:
          choice: an uppercase letter; value: a canonical number string ("1234.5",
          "12%"); text: the answer text with wrapping removed. None when absent.
        """
        if rule not in EXTRACTION_RULES:
            raise ValueError(f"rule {rule!r}; expected one of {EXTRACTION_RULES}")
        if not response:
            return None
        if rule == "official":
            m = _OFFICIAL_RE.search(response)
            return m.group(1) if m else None
        for m in reversed(list(_ANSWER_RE.finditer(response))):
            got = self._parse_answer_text(_text_after(response, m.end()), options)
            if got is not None:
                return got
        if rule == "lenient" and self.kind == "choice":
            return _lenient_choice(response, options)
        return None

    def _parse_answer_text(self, text: str, options: Sequence[str] | None) -> str | None:
        text = text.strip(_WRAP)
        if self.kind == "choice":
            return _parse_letter(text, options)
        if self.kind == "value":
            return canonical_number(text)
        text = text.rstrip(_TRAIL).strip()
        return text or None

    def answer_key(self, answer: str) -> str:
        """The form under which two answers count as the same vote.

        choice: the uppercase letter; value: the canonical number; text: the
        normalised text (lowercase, no punctuation or articles).
        """
        if self.kind == "choice":
            return answer.strip().upper()
        if self.kind == "value":
            return canonical_number(answer) or answer.strip()
        return normalize_text(answer)

    def is_correct(self, pred: str | None, gold: str | Sequence[str]) -> bool:
        """Whether an extracted answer matches the gold answer.

        Args:
          pred: the extracted answer (`extract_answer` output); None is never correct.
          gold: the gold answer; for text tasks also a JSON list (as a string) or a
            sequence of acceptable answers, any of which counts.
        """
        if pred is None:
            return False
        golds = _gold_list(gold)
        if self.kind == "choice":
            return any(pred.strip().upper() == g.strip().upper() for g in golds)
        if self.kind == "value":
            return any(_values_match(pred, g, self.value_rel_tol) for g in golds)
        return any(_text_match(pred, g, self.text_f1_threshold) for g in golds)


def _text_after(response: str, start: int) -> str:
    """The rest of the line after `Answer:`, or the next non-empty line if it is empty."""
    rest = response[start:]
    for line in rest.split("\n"):
        if line.strip(_WRAP + _TRAIL):
            return line
    return ""


def _parse_letter(text: str, options: Sequence[str] | None) -> str | None:
    text = _LEADING_WORD.sub("", text).lstrip(_WRAP)
    m = _UPPER_LETTER.match(text) or _LOWER_LETTER.match(text)
    if m:
        letter = m.group(1).upper()
        if options is not None and LETTERS.index(letter) >= len(options):
            return None
        return letter
    if options:
        wanted = normalize_text(text.rstrip(_TRAIL))
        hits = [i for i, o in enumerate(options) if wanted and normalize_text(o) == wanted]
        if len(hits) == 1:
            return LETTERS[hits[0]]
    return None


def _lenient_choice(response: str, options: Sequence[str] | None) -> str | None:
    """A letter from a response with no `Answer:` line, or None when it names no single
    option (a response that restates two or more options is a list, not an answer)."""
    lines = [ln for ln in response.strip().splitlines() if ln.strip()]
    listed = {m.group(1) for ln in lines if (m := _OPTION_LINE.match(ln))}
    for m in reversed(list(_PHRASE_RE.finditer(response))):
        got = _parse_letter(_text_after(response, m.end()).strip(_WRAP), options)
        if got is not None:
            return got
    if len(listed) > 1:
        return None
    if lines and (m := _OPTION_LINE.match(lines[0])):
        letter = m.group(1)
        if options is None or LETTERS.index(letter) < len(options):
            return letter
    if options:
        text = f" {normalize_text(response)} "
        hits = [i for i, o in enumerate(options)
                if normalize_text(o) and f" {normalize_text(o)} " in text]
        if len(hits) == 1:
            return LETTERS[hits[0]]
    return None


def canonical_number(text: str) -> str | None:
    """The first number in `text` as a canonical string, or None.

    Thousands commas, `$` and a leading `+` are dropped, trailing zeros removed, a
    percent sign kept: "$1,234.50" -> "1234.5", "-12 %" -> "-12%".
    """
    m = _NUMBER_RE.search(text)
    if not m:
        return None
    raw = m.group("num").replace(",", "") + (m.group("exp") or "")
    try:
        d = Decimal(raw)
    except InvalidOperation:
        return None
    if m.group("sign") in ("-", "−"):
        d = -d
    out = format(d.normalize(), "f")
    if out in ("-0", "+0"):
        out = "0"
    return out + ("%" if m.group("pct") else "")


def _number_values(text: str) -> list[float]:
    """The readings of a canonical number: "12%" may mean 12 or 0.12."""
    canon = canonical_number(text)
    if canon is None:
        return []
    if canon.endswith("%"):
        v = float(canon[:-1])
        return [v / 100.0, v]
    return [float(canon)]


def _values_match(pred: str, gold: str, rel_tol: float) -> bool:
    # A percent on either side is read both ways (official code only reads x/100, so
    # "Answer: 12%" against gold "12" would fail there; a percent is the same number).
    return any(math.isclose(p, g, rel_tol=rel_tol, abs_tol=1e-9)
               for p in _number_values(pred) for g in _number_values(gold))


def normalize_text(s: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse whitespace."""
    s = s.lower().translate(_PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def token_f1(pred: str, gold: str) -> float:
    """SQuAD-style token F1 between two normalised strings."""
    p, g = normalize_text(pred).split(), normalize_text(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((collections.Counter(p) & collections.Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def _text_match(pred: str, gold: str, threshold: float) -> bool:
    p, g = normalize_text(pred), normalize_text(gold)
    if not p or not g:
        return p == g
    return p == g or token_f1(p, g) >= threshold


def _gold_list(gold: str | Sequence[str]) -> list[str]:
    if isinstance(gold, str):
        if gold.lstrip().startswith("["):
            try:
                parsed = json.loads(gold)
            except json.JSONDecodeError:
                return [gold]
            if isinstance(parsed, list) and all(isinstance(x, str) for x in parsed):
                return parsed
        return [gold]
    return [str(g) for g in gold]


# -- the registry --------------------------------------------------------------------

OFFICIAL_TASKS: tuple[Task, ...] = (
    Task("mmlu", "choice", num_options=4),
    Task("mmlu_pro", "choice"),  # 3 to 10 options per question
    Task("arc", "choice"),  # 3 to 5 options
    Task("fpb", "choice", num_options=3),  # negative / neutral / positive
    Task("pubmedqa", "choice", num_options=3),  # yes / no / maybe
    Task("usmle", "choice"),  # MedQA: 4 in the release, 5 in some copies
    Task("convfinqa", "value", question_type="math and value extraction"),
    Task("gsm8k", "value", question_type="math"),
    Task("drop", "text", question_type="reading comprehension"),
)

_REGISTRY: dict[str, Task] = {t.name: t for t in OFFICIAL_TASKS}


def get_task(name: str) -> Task:
    """The registered task called `name`.

    Raises:
      TaskError: no such task; the message lists the known ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(task_names())} "
                        "(define your own with register_task / a `tasks:` YAML)") from None


def task_names() -> list[str]:
    """Names of every registered task, sorted."""
    return sorted(_REGISTRY)


def register_task(task: Task | Mapping[str, Any], *, overwrite: bool = False) -> Task:
    """Adds a task (a `Task` or a dict for `Task.from_dict`) to the registry.

    Raises:
      TaskError: the name is taken by a different task and `overwrite` is False.
    """
    if not isinstance(task, Task):
        task = Task.from_dict(task)
    old = _REGISTRY.get(task.name)
    if old is not None and old != task and not overwrite:
        raise TaskError(f"task {task.name!r} is already registered with a different "
                        "definition; pass overwrite=True to replace it")
    _REGISTRY[task.name] = task
    return task


def register_tasks(source: str | Path | Mapping[str, Any], *,
                   overwrite: bool = False) -> list[Task]:
    """Registers user tasks from a YAML file or a mapping `{name: {kind: ..., ...}}`.

    A top-level `tasks:` key is looked through, so a run config's section works as is.

    Example YAML::

        tasks:
          sentiment3:
            kind: choice
            num_options: 3
            instruction: "Pick the sentiment. End with 'Answer: LETTER' ({letters})."
    """
    if isinstance(source, str | Path):
        try:
            spec = yaml.safe_load(Path(source).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise TaskError(f"{source}: cannot read task definitions: {e}") from e
    else:
        spec = source
    if isinstance(spec, Mapping) and "tasks" in spec:
        spec = spec["tasks"]
    if not isinstance(spec, Mapping):
        raise TaskError(f"{source}: task definitions must be a mapping name -> fields")
    return [register_task(Task.from_dict(v or {}, name=k), overwrite=overwrite)
            for k, v in spec.items()]


def resolve_task(spec: str | Task | Mapping[str, Any]) -> Task:
    """A task from a name, a `Task`, or an inline definition (registered on the way)."""
    if isinstance(spec, Task):
        return spec
    if isinstance(spec, str):
        return get_task(spec)
    return register_task(spec)
