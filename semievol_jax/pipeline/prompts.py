"""Prompt texts: the question prompt, the SFT target line, the self-justification prompt.

Plain user-turn text; the caller renders it with the tokenizer's chat template. The
layout follows the official SemiEvol templates (`common.py`: QUERY_TEMPLATE_MULTICHOICE,
REFLECTION) with the instruction moved after the options, so the last thing the model
reads is how to end its answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from semievol_jax.pipeline.tasks import DEFAULT_TARGET, LETTERS, Task

TARGET_TEMPLATE = DEFAULT_TARGET  # the default SFT / pseudo-label target (Task.target)

_REFLECTION_HEAD = (
    "Here are several answers to the question below. Consider them thoroughly and give "
    "the correct answer."
)
_REFLECTION_TAIL = "Now, directly give the final correct answer."


class QuestionLike(Protocol):
    """Anything with a question and options: `Example`, `UnlabeledQuestion`."""

    question: str
    options: Sequence[str]


def format_options(options: Sequence[str]) -> str:
    """Options as `A. text` lines."""
    if len(options) > len(LETTERS):
        raise ValueError(f"{len(options)} options; at most {len(LETTERS)} can be lettered")
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def _body(ex: QuestionLike) -> str:
    parts = [f"Question:\n{ex.question.strip()}"]
    if ex.options:
        parts.append(f"Options:\n{format_options(ex.options)}")
    return "\n\n".join(parts)


def format_question(task: Task, ex: QuestionLike) -> str:
    """The user prompt for one question: question, `A. ...` options, instruction.

    Args:
      task: gives the closing instruction (letters filled in from the option count).
      ex: an `Example` or `UnlabeledQuestion`.

    Returns:
      e.g. "Question:\\n...\\n\\nOptions:\\nA. x\\nB. y\\n\\nAnswer the multiple-choice
      question. Your response should end with a line of the form 'Answer: LETTER'
      (without quotes), where LETTER is one of A, B."
    """
    return f"{_body(ex)}\n\n{task.render_instruction(len(ex.options) or None)}"


def target(task: Task, answer: str, options: Sequence[str] = ()) -> str:
    """The training target for a gold or pseudo answer: `task.target` filled in.

    Args:
      task: choice answers are upper-cased letters; other kinds are kept as given.
      answer: the answer (letter, number or text).
      options: the question's options; a target that restates `{option}` needs them.

    Raises:
      ValueError: an empty answer (a target must teach something), or a letter with no
        option to restate.
    """
    answer = answer.strip()
    if not answer:
        raise ValueError("empty answer: no target to train on")
    if task.kind == "choice":
        answer = answer.upper()
    if "{option}" not in task.target:  # Task only allows {option} for choice tasks
        return task.target.format(answer=answer)
    i = LETTERS.find(answer)
    if len(answer) != 1 or not 0 <= i < len(options):
        raise ValueError(f"answer {answer!r} names none of the {len(options)} options "
                         f"that task {task.name!r}'s target restates")
    return task.target.format(answer=answer, option=options[i])


def format_reflection(task: Task, ex: QuestionLike, responses: Sequence[str], *,
                      max_response_chars: int = 2000) -> str:
    """The self-justification prompt: the question, all n responses, a final-answer ask.

    SemiEvol's collaborative learning: when the collaborators disagree, the model
    reads every candidate response and settles on one answer.

    Args:
      task: gives the closing instruction.
      ex: the question (an `UnlabeledQuestion` or `Example`).
      responses: the n candidate responses, in collaborator order.
      max_response_chars: each response is cut to its last this-many characters (the
        end carries the `Answer:` line) so n long responses still fit the context.

    Returns:
      The prompt text.
    """
    if not responses:
        raise ValueError("reflection needs at least one candidate response")
    shown = []
    for i, r in enumerate(responses, start=1):
        r = r.strip()
        if len(r) > max_response_chars:
            r = "..." + r[-max_response_chars:]
        shown.append(f"Response {i}:\n{r}")
    answers = "\n\n".join(shown)
    instruction = task.render_instruction(len(ex.options) or None)
    return (f"{_REFLECTION_HEAD}\n\n{_body(ex)}\n\nMultiple answers:\n{answers}\n\n"
            f"{_REFLECTION_TAIL} {instruction}")
