"""The demo world: invented people, facts about them, a prose corpus and a quiz task.

The embedded demo needs a task where SemiEvol's mechanism has something to work with
(docs/demo.md has the argument, docs/results.md the measured numbers):

* **Latent knowledge.** Every fact about a *task person* ("Bapis lives in Vasso") is
  stated in the pretraining corpus, many times and in three phrasings, but never as a
  quiz: the base model knows the fact and has not been taught to answer questions
  about it.
* **A closed answer set.** Each relation has `num_values` values and, by default, every
  question lists all of them in one fixed order (like FPB's negative / neutral /
  positive), so answering = recalling the value + mapping it to its letter. The
  mapping (relation, value) -> letter and the question phrasings are what fine-tuning
  must teach; 100 labeled rows cover each (relation, value) pair only a few times.
  With `statement_options`, each option is instead the fact stated in a corpus
  phrasing ("Vivol works as a miner.") and the worked answer restates the chosen one
  before its letter (`STATEMENT_TARGET`), so answering = completing a sentence the
  base was pretrained on, then naming its letter.
* **Unique questions, shared facts.** A question *stem* is a (person, relation,
  phrasing) triple and is used at most once across the three splits, so no test
  question appears in labeled or unlabeled; but there are few people, so the same fact
  is asked again under another phrasing across splits, as subject matter repeats
  across the splits of a real benchmark. Confidently (and mostly correctly)
  pseudo-labeled unlabeled rows thus add examples of the letter mapping and of
  answering about the very facts the test asks.
* **Practice quizzes.** A few *practice people* (never asked in the splits) also have
  quiz documents, laid out like the pipeline's prompt, so the tokenizer and the base
  have met the exam layout, as a real LLM has.

`icl_docs > 0` adds chat documents that can only be completed by copying from the
context (in-context learning taught in pretraining; off in the demo, docs/demo.md).
`fixed_options=False` gives the harder variant (random distractors, random order).
Everything is a pure function of `SynthConfig` (seeded `numpy.random.Generator`
streams, no global RNG), so the same seed writes byte-identical files.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from semievol_jax.files import write_jsonl, write_text_atomic

LETTERS = "ABCDEFGHIJ"
# The demo preset's task instruction (data.task_def; a test keeps the two equal), so the
# corpus quizzes read like the prompts the demo is evaluated with. One short line: the
# tiny model reads it on every training step.
INSTRUCTION = "Reply 'Answer: LETTER' ({letters})."
# Worked answers in the corpus quizzes, as the task's `target` writes them: the letter
# alone, or, with `statement_options` (the demo preset), the chosen option restated
# first. The restated option is then a corpus sentence, so the model answers by
# completing a sentence it was pretrained on ("Vivol works as a" -> "miner") instead of
# mapping a name straight to a letter (docs/demo.md, "The world").
LETTER_TARGET = "Answer: {answer}"
STATEMENT_TARGET = "{option}\nAnswer: {answer}"


def target_of(cfg: SynthConfig) -> str:
    """The response format of `cfg`'s world (set the run's `data.task_def.target` to it)."""
    return STATEMENT_TARGET if cfg.statement_options else LETTER_TARGET


@dataclasses.dataclass(frozen=True)
class Relation:
    """One kind of fact: its values, prose phrasings and question phrasings."""

    name: str  # short id, written to the CSV's `relation` column
    values: tuple[str, ...]  # closed set of answers; distractors come from here too
    statements: tuple[str, ...]  # prose templates with {e} (person) and {v} (value)
    questions: tuple[str, ...]  # plain question templates with {e} (see question_templates)

    def question_templates(self) -> tuple[str, ...]:
        """Cloze questions (one per prose phrasing, "Complete: {e} lives in ...") first,
        then the plain ones; a question's `template` indexes this tuple."""
        cloze = tuple(f"Complete: {t.split('{v}')[0].rstrip()} ..." for t in self.statements)
        return cloze + self.questions


RELATIONS: tuple[Relation, ...] = (
    Relation(
        "town",
        ("Mora", "Tesk", "Lund", "Pira", "Vasso", "Kell", "Orna", "Dunmo", "Sarn", "Ebro"),
        ("{e} lives in {v}.", "The home of {e} is in {v}.", "{e} has a house in {v}."),
        ("Where does {e} live?", "What is the home town of {e}?",
         "Which town does {e} call home?", "In which town is the house of {e}?",
         "Where is the home of {e}?"),
    ),
    Relation(
        "colour",
        ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "grey",
         "pink"),
        ("The favourite colour of {e} is {v}.", "{e} loves the colour {v}.",
         "{e} likes {v} best of all colours."),
        ("Which colour does {e} like most?", "What colour is dearest to {e}?",
         "Which colour would {e} pick?", "What is the best colour for {e}?",
         "Which colour does {e} love?"),
    ),
    Relation(
        "food",
        ("plums", "rice", "bread", "cheese", "figs", "soup", "beans", "honey", "pears",
         "nuts"),
        ("{e} likes to eat {v}.", "The favourite food of {e} is {v}.",
         "Every day {e} eats {v}."),
        ("Which food does {e} enjoy?", "What is on the plate of {e}?",
         "Which food would {e} pick?", "What does {e} like to eat?",
         "Which food does {e} eat every day?"),
    ),
    Relation(
        "job",
        ("baker", "farmer", "sailor", "painter", "miner", "weaver", "doctor", "singer",
         "smith", "potter"),
        ("{e} works as a {v}.", "The job of {e} is {v}.", "By trade {e} is a {v}."),
        ("What work does {e} do?", "How does {e} earn a living?",
         "Which job does {e} have?", "What is the trade of {e}?",
         "Where does {e} work, and as what?"),
    ),
)

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "n", "r", "l", "s")

class SynthError(ValueError):
    """A SynthConfig that cannot produce the requested splits."""


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Knobs of the demo world. The defaults are the letter-only world (bare values as
    options, the letter alone as the response); the demo preset sets
    `statement_options`, `bios_per_person=6` and `labeled_people=8` (docs/demo.md)."""

    seed: int = 0  # root seed of the world, corpus and splits
    num_people: int = 16  # task people: their facts are asked in the splits
    num_practice_people: int = 16  # people with quiz documents in the corpus, never asked
    relations: tuple[str, ...] = ("town", "colour", "food", "job")  # names from RELATIONS
    labeled_relations: tuple[str, ...] = ("town", "colour", "food", "job")  # in labeled.csv
    labeled_people: int = 0  # labeled.csv asks only the first N task people (0: all)
    num_labeled: int = 100  # rows of labeled.csv (the official release: about 1 : 3 : 1)
    num_unlabeled: int = 300  # rows of unlabeled.csv
    num_test: int = 100  # rows of test.csv
    num_values: int = 6  # values per relation in use (the first ones of Relation.values)
    fixed_options: bool = True  # options = all values in a fixed order (FPB-like closed set)
    statement_options: bool = False  # an option is a corpus sentence ("Vivol works as a
    #                                  miner."), not the bare value; answers restate it
    canonical_options: bool = False  # statement options always in the relation's first
    #                                  prose phrasing, whatever the question's phrasing
    num_options: int = 4  # options per question when not fixed_options (random distractors)
    bios_per_person: int = 12  # prose documents per person (task and practice)
    quizzes_per_practice_person: int = 16  # quiz documents per practice person
    icl_docs: int = 0  # chat documents of quizzes whose last one repeats an earlier fact
    icl_demos: int = 3  # quizzes before the last one in an icl document
    icl_match: float = 0.7  # share of icl documents whose last fact is among the demos


@dataclasses.dataclass(frozen=True)
class Fact:
    """One (person, relation, value) fact of the world."""

    person: str
    relation: str
    value: str


@dataclasses.dataclass(frozen=True)
class Question:
    """One multiple-choice row in the official CSV schema (plus provenance columns)."""

    id: str
    question: str
    options: tuple[str, ...]
    answer: str  # a letter
    relation: str
    person: str
    template: int  # index into the relation's question phrasings


@dataclasses.dataclass(frozen=True)
class World:
    """The facts of the task people and of the practice people."""

    people: tuple[str, ...]
    practice_people: tuple[str, ...]
    facts: dict[tuple[str, str], str]  # (person, relation) -> value


def _relations(names: Sequence[str]) -> tuple[Relation, ...]:
    by_name = {r.name: r for r in RELATIONS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SynthError(f"unknown relations {unknown}; known: {sorted(by_name)}")
    return tuple(by_name[n] for n in names)


def _rng(cfg: SynthConfig, stream: str) -> np.random.Generator:
    # One independent stream per purpose, so changing the corpus size does not reshuffle
    # the splits (and vice versa).
    tag = int.from_bytes(stream.encode()[:8].ljust(8, b"\0"), "little")
    return np.random.Generator(np.random.PCG64([cfg.seed, tag]))


def _names(rng: np.random.Generator, count: int) -> list[str]:
    """`count` distinct invented two-syllable names, e.g. "Bralo", "Kimet"."""
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < count:
        parts = [
            _ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
            for _ in range(2)
        ]
        name = ("".join(parts) + _CODAS[rng.integers(len(_CODAS))]).capitalize()
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def make_world(cfg: SynthConfig) -> World:
    """Draws the people and one value per (person, relation)."""
    rels = _relations(cfg.relations)
    if not 2 <= cfg.num_values <= min(len(LETTERS), *(len(r.values) for r in rels)):
        raise SynthError(f"num_values={cfg.num_values} must be in [2, values per relation]")
    rng = _rng(cfg, "world")
    names = _names(rng, cfg.num_people + cfg.num_practice_people)
    people = tuple(names[: cfg.num_people])
    practice = tuple(names[cfg.num_people:])
    facts = {
        (p, r.name): r.values[rng.integers(cfg.num_values)]
        for p in people + practice
        for r in rels
    }
    return World(people, practice, facts)


def _bio(world: World, person: str, rels: Sequence[Relation], rng: np.random.Generator) -> str:
    order = rng.permutation(len(rels))
    sentences = []
    for i in order:
        r = rels[i]
        tpl = r.statements[rng.integers(len(r.statements))]
        sentences.append(tpl.format(e=person, v=world.facts[(person, r.name)]))
    return " ".join(sentences)


def _options(person: str, value: str, rel: Relation, template: int, cfg: SynthConfig,
             rng: np.random.Generator) -> tuple[list[str], str]:
    """The options of a question about `person` and their answer letter.

    With `statement_options`, every option states the fact in one prose phrasing (the
    question's own for a cloze question, one fixed per plain phrasing otherwise).
    """
    values = list(rel.values[: cfg.num_values])
    if cfg.fixed_options:
        options = values
    else:
        k = cfg.num_options
        distractors = [v for v in values if v != value]
        picked = [distractors[i] for i in rng.choice(len(distractors), size=k - 1,
                                                     replace=False)]
        options = picked + [value]
        options = [options[i] for i in rng.permutation(k)]
    letter = LETTERS[options.index(value)]
    if cfg.statement_options:
        statement = rel.statements[0 if cfg.canonical_options else template % len(rel.statements)]
        options = [statement.format(e=person, v=v) for v in options]
    return options, letter


def render_quiz(question: str, options: Sequence[str], answer: str | None,
                target: str = LETTER_TARGET) -> str:
    """A quiz in the layout of the pipeline's prompt, plus the worked answer (`target`).

    The layout (question, `Options:` with `A. ...` lines, the instruction) matches
    `semievol_jax.pipeline.prompts.format_question` for a 4-option choice task, the way
    a real LLM has met exams laid out like its evaluation prompts; tests check the two
    agree. `answer=None` gives the bare question (no answer line).
    """
    lines = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    letters = ", ".join(LETTERS[: len(options)])
    text = (f"Question:\n{question}\n\nOptions:\n{lines}\n\n"
            + INSTRUCTION.replace("{letters}", letters))
    return text if answer is None else f"{text}\n{worked_answer(target, options, answer)}"


def worked_answer(target: str, options: Sequence[str], letter: str) -> str:
    """`target` (`LETTER_TARGET` or `STATEMENT_TARGET`) filled in for the answer `letter`."""
    return target.format(option=options[LETTERS.index(letter)], answer=letter)


def make_corpus(world: World, cfg: SynthConfig) -> list[str]:
    """Pretraining documents: prose bios of everyone, quizzes about practice people only.

    Returns:
      Plain-text documents in a seeded order; no document mentions a task person in
      quiz form, so the base model knows the task facts without having been taught to
      answer questions about them.
    """
    rels = _relations(cfg.relations)
    rng = _rng(cfg, "corpus")
    docs = [
        _bio(world, p, rels, rng)
        for p in world.people + world.practice_people
        for _ in range(cfg.bios_per_person)
    ]
    for p in world.practice_people:
        for _ in range(cfg.quizzes_per_practice_person):
            r = rels[rng.integers(len(rels))]
            tpls = r.question_templates()
            t = int(rng.integers(len(tpls)))
            options, letter = _options(p, world.facts[(p, r.name)], r, t, cfg, rng)
            docs.append(render_quiz(tpls[t].format(e=p), options, letter, target_of(cfg)))
    docs += _icl_docs(world, cfg, rels)
    return [docs[i] for i in rng.permutation(len(docs))]


def _chat_turn(quiz: str, response: str) -> str:
    return f"<|user|>\n{quiz}<|eot|><|assistant|>\n{response}<|eot|>"


def _icl_docs(world: World, cfg: SynthConfig, rels: Sequence[Relation]) -> list[str]:
    """Chat documents laid out like ICP prompts: `icl_demos` answered quizzes about
    throwaway people (fresh names and random facts, so nothing can be memorised), then
    one more quiz. In `icl_match` of them the last quiz asks a demo's fact again under
    another phrasing, so its answer can only come from the context; otherwise it asks
    about a practice person, whose facts the corpus bios state."""
    if not cfg.icl_docs:
        return []
    rng = _rng(cfg, "icl")
    taken = set(world.people + world.practice_people)
    # (4x the names needed: the draw count fixes the stream the documents then use.)
    fresh = iter([n for n in _names(rng, 4 * cfg.icl_docs * cfg.icl_demos + len(taken))
                  if n not in taken])

    def turn(person: str, r: Relation, value: str, t: int) -> str:
        options, letter = _options(person, value, r, t, cfg, rng)
        return _chat_turn(render_quiz(r.question_templates()[t].format(e=person), options,
                                      None),
                          worked_answer(target_of(cfg), options, letter))

    docs = []
    for _ in range(cfg.icl_docs):
        asked, turns = [], []
        for _ in range(cfg.icl_demos):
            r = rels[rng.integers(len(rels))]
            asked.append((next(fresh), r, r.values[rng.integers(cfg.num_values)],
                          int(rng.integers(len(r.question_templates())))))
            turns.append(turn(*asked[-1]))
        if rng.random() < cfg.icl_match:
            person, r, value, t0 = asked[rng.integers(len(asked))]
            n_t = len(r.question_templates())
            t = (t0 + 1 + int(rng.integers(n_t - 1))) % n_t  # another phrasing
        else:
            person = world.practice_people[rng.integers(len(world.practice_people))]
            r = rels[rng.integers(len(rels))]
            value, t = world.facts[(person, r.name)], int(rng.integers(len(r.question_templates())))
        turns.append(turn(person, r, value, t))
        docs.append("".join(turns))
    return docs


def make_splits(world: World, cfg: SynthConfig) -> dict[str, list[Question]]:
    """The labeled / unlabeled / test questions (see the module docstring for the design).

    Raises:
      SynthError: when there are not enough distinct question stems for the splits.
    """
    rels = _relations(cfg.relations)
    lab_rels = set(cfg.labeled_relations)
    if not lab_rels <= {r.name for r in rels}:
        raise SynthError(f"labeled_relations {sorted(lab_rels)} not within {cfg.relations}")
    if not 2 <= cfg.num_values <= min(len(LETTERS), *(len(r.values) for r in rels)):
        raise SynthError(f"num_values={cfg.num_values} must be in [2, values per relation]")
    if not cfg.fixed_options and not 2 <= cfg.num_options <= cfg.num_values:
        raise SynthError(f"num_options={cfg.num_options} must be in [2, num_values]")
    rng = _rng(cfg, "splits")
    stems = [(p, r, t) for p in world.people for r in rels
             for t in range(len(r.question_templates()))]
    stems = [stems[i] for i in rng.permutation(len(stems))]
    if not 0 <= cfg.labeled_people <= cfg.num_people:
        raise SynthError(f"labeled_people={cfg.labeled_people} must be in [0, num_people]")
    lab_people = set(world.people[: cfg.labeled_people or cfg.num_people])
    lab_pool = [s for s in stems if s[1].name in lab_rels and s[0] in lab_people]
    if len(lab_pool) < cfg.num_labeled:
        raise SynthError(
            f"only {len(lab_pool)} question stems over {sorted(lab_rels)} for "
            f"num_labeled={cfg.num_labeled}; raise num_people, labeled_people or "
            f"labeled_relations"
        )
    labeled = lab_pool[: cfg.num_labeled]
    used = set(labeled)
    rest = [s for s in stems if s not in used]
    need = cfg.num_unlabeled + cfg.num_test
    if len(rest) < need:
        raise SynthError(
            f"only {len(rest)} unused question stems for {need} unlabeled+test rows; "
            f"raise num_people"
        )
    chosen = {
        "labeled": labeled,
        "unlabeled": rest[: cfg.num_unlabeled],
        "test": rest[cfg.num_unlabeled: need],
    }
    out: dict[str, list[Question]] = {}
    for split, rows in chosen.items():
        qs = []
        for i, (p, r, t) in enumerate(rows):
            options, letter = _options(p, world.facts[(p, r.name)], r, t, cfg, rng)
            qs.append(Question(f"{split}-{i:04d}", r.question_templates()[t].format(e=p),
                               tuple(options), letter, r.name, p, t))
        out[split] = qs
    return out


def questions_to_csv(questions: Sequence[Question]) -> str:
    """Official schema (question, options as a JSON list, answer letter) plus provenance."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "question", "options", "answer", "relation", "person"])
    for q in questions:
        w.writerow([q.id, q.question, json.dumps(list(q.options)), q.answer, q.relation,
                    q.person])
    return buf.getvalue()


def write_world(out_dir: str | Path, cfg: SynthConfig = SynthConfig()) -> dict[str, Path]:
    """Writes labeled.csv, unlabeled.csv, test.csv and corpus.jsonl under `out_dir`.

    Returns:
      Split name ("labeled", "unlabeled", "test", "corpus") -> the file written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = make_world(cfg)
    paths: dict[str, Path] = {}
    for split, qs in make_splits(world, cfg).items():
        paths[split] = out / f"{split}.csv"
        write_text_atomic(paths[split], questions_to_csv(qs))
    paths["corpus"] = out / "corpus.jsonl"
    write_jsonl(paths["corpus"], ({"text": d} for d in make_corpus(world, cfg)))
    return paths


def read_corpus(path: str | Path) -> list[str]:
    """The documents of a corpus.jsonl written by `write_world`."""
    docs = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        try:
            docs.append(json.loads(line)["text"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SynthError(f"{path}:{n}: not a {{\"text\": ...}} JSON line ({e})") from e
    return docs
