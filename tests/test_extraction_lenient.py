"""Lenient answer reading: what SmolLM2-135M-Instruct writes when it ignores the format."""

import pytest

from semievol_jax.pipeline.tasks import get_task

OPTS = ["negative", "neutral", "positive"]


@pytest.mark.parametrize("response, want", [
    ("B. Neutral", "B"),                       # an option restated with its letter
    ("A", "A"),
    ("(C) positive", "C"),
    ("The answer is C.", "C"),
    ("I think the correct answer is: B", "B"),
    ("The company has the positive sentiment of the sentence.", "C"),  # one option's text
    ("A. negative\nB. neutral\nC. positive", None),                    # the list again
    ("It is negative or positive, hard to say.", None),                # two options named
    ("D. unknown", None),                                              # past the last option
    ("The energy shot is packed in a bag.", None),
    ("Reasoning...\nAnswer: A\nThe answer is C", "A"),                 # Answer: line wins
])
def test_lenient_choice(response, want):
    task = get_task("fpb")
    assert task.extract_answer(response, OPTS, rule="lenient") == want


def test_strict_reading_ignores_everything_but_answer_lines():
    task = get_task("fpb")
    for response in ("B. Neutral", "The answer is C.", "A"):
        assert task.extract_answer(response, OPTS) is None
    assert task.extract_answer("so...\nAnswer: b", OPTS) == "B"


def test_lenient_applies_to_choice_tasks_only():
    task = get_task("gsm8k")
    assert task.extract_answer("The answer is 42", None, rule="lenient") is None


def test_official_rule_takes_the_first_token_as_written():
    task = get_task("fpb")
    assert task.extract_answer("Answer: B.\nAnswer: C", OPTS, rule="official") == "B."
    assert not task.is_correct(task.extract_answer("Answer: B.", OPTS, rule="official"), "B")
    assert task.extract_answer("answer: B", OPTS, rule="official") is None
    with pytest.raises(ValueError):
        task.extract_answer("Answer: B", OPTS, rule="first")
