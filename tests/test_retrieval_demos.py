"""Demonstration prompts: chat turns, order, trimming to a token budget."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import pytest

from semievol_jax.retrieval import RetrievalError, build_demo_prompts, format_demonstrations


@pytest.fixture(scope="module")
def tokenizer(tiny_ckpt_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(tiny_ckpt_dir)


def ex(i: int, answer: str = "A"):
    return SimpleNamespace(question=f"Which colour is item {i}?", options=["red", "blue"],
                           answer=answer)


def fmt(e) -> str:
    return f"Question: {e.question}\nA. {e.options[0]}\nB. {e.options[1]}"


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_multi_turn_layout_nearest_last(tokenizer):
    demos = [("near question", "Answer: A"), ("mid question", "Answer: B"),
             ("far question", "Answer: C")]
    p = format_demonstrations(tokenizer, "the query", demos, max_tokens=10_000,
                              demo_rows=[7, 3, 9])
    roles = [m["role"] for m in p.messages]
    assert roles == ["user", "assistant"] * 3 + ["user"]
    assert [m["content"] for m in p.messages[::2]] == ["far question", "mid question",
                                                       "near question", "the query"]
    assert p.messages[-2]["content"] == "Answer: A"  # nearest answer right before the query
    assert p.demo_rows == (9, 3, 7) and p.num_demos == 3 and p.num_dropped == 0
    assert p.text == tokenizer.apply_chat_template(list(p.messages), tokenize=False,
                                                   add_generation_prompt=True)
    assert p.text.endswith("<|assistant|>\n") and p.num_tokens == n_tokens(tokenizer, p.text)


def test_nearest_first_order(tokenizer):
    demos = [("near", "Answer: A"), ("far", "Answer: B")]
    p = format_demonstrations(tokenizer, "q", demos, max_tokens=10_000, order="nearest_first")
    assert [m["content"] for m in p.messages[::2]] == ["near", "far", "q"]
    assert p.demo_rows == (0, 1)


def test_trimming_drops_farthest_first_and_respects_budget(tokenizer):
    demos = [(f"demonstration number {i} " * 5, f"Answer: {'ABCD'[i]}") for i in range(4)]
    full = format_demonstrations(tokenizer, "the query", demos, max_tokens=10_000)
    two = format_demonstrations(tokenizer, "the query", demos[:2], max_tokens=10_000)
    # A budget between the 2-demo and 3-demo sizes keeps exactly the two nearest.
    p = format_demonstrations(tokenizer, "the query", demos, max_tokens=two.num_tokens + 1)
    assert p.num_demos == 2 and p.num_dropped == 2 and p.demo_rows == (1, 0)
    assert p.text == two.text and p.num_tokens <= two.num_tokens + 1 < full.num_tokens
    # Budget for the query alone: zero demonstrations, never over budget.
    bare = format_demonstrations(tokenizer, "the query", [], max_tokens=10_000)
    p0 = format_demonstrations(tokenizer, "the query", demos, max_tokens=bare.num_tokens)
    assert p0.num_demos == 0 and p0.text == bare.text
    with pytest.raises(RetrievalError, match="over the budget"):
        format_demonstrations(tokenizer, "the query", demos, max_tokens=bare.num_tokens - 1)


def test_build_demo_prompts_uses_callables_and_records_counts(tokenizer):
    labeled = [ex(i, "ABCDEF"[i]) for i in range(6)]
    queries = [ex(100), ex(101)]
    idx_QK = np.array([[4, 1, 2], [0, 5, 3]])
    out = build_demo_prompts(tokenizer, queries, labeled, idx_QK, format_question=fmt,
                             max_tokens=10_000)
    assert [p.num_demos for p in out] == [3, 3]
    assert out[0].demo_rows == (2, 1, 4)
    assert out[0].messages[-1]["content"] == fmt(queries[0])
    assert out[0].messages[-2]["content"] == "Answer: E"  # nearest: labeled[4]
    assert out[1].messages[1]["content"] == "Answer: D"  # farthest: labeled[3]
    # A tight budget trims per prompt; the counts say how many each one kept.
    tight = build_demo_prompts(tokenizer, queries, labeled, idx_QK, format_question=fmt,
                               format_answer=lambda e: f"Answer: {e.answer}.",
                               max_tokens=out[0].num_tokens - 1)
    assert all(p.num_demos < 3 for p in tight)
    assert all(p.num_tokens <= out[0].num_tokens - 1 for p in tight)


def test_with_pipeline_prompt_formatter(tokenizer):
    prompts = pytest.importorskip("semievol_jax.pipeline.prompts")
    tasks = pytest.importorskip("semievol_jax.pipeline.tasks")
    data = pytest.importorskip("semievol_jax.pipeline.data")
    task = tasks.get_task("mmlu")
    labeled = [data.Example(id=str(i), question=f"q{i}?", options=["x", "y"], answer="B")
               for i in range(3)]
    out = build_demo_prompts(tokenizer, labeled[:1], labeled, np.array([[1, 2]]),
                             format_question=functools.partial(prompts.format_question, task),
                             format_answer=lambda e: prompts.target(task, e.answer, e.options),
                             max_tokens=10_000)
    assert out[0].messages[1]["content"] == "Answer: B" and out[0].num_demos == 2


def test_bad_inputs(tokenizer):
    with pytest.raises(RetrievalError, match="order"):
        format_demonstrations(tokenizer, "q", [], max_tokens=100, order="random")
    with pytest.raises(RetrievalError, match="outside the 2 labeled"):
        build_demo_prompts(tokenizer, [ex(0)], [ex(1), ex(2)], np.array([[5]]),
                           format_question=fmt, max_tokens=100)
    with pytest.raises(RetrievalError, match="shape"):
        build_demo_prompts(tokenizer, [ex(0)], [ex(1)], np.array([0]), format_question=fmt,
                           max_tokens=100)
    no_template = SimpleNamespace(chat_template=None)
    with pytest.raises(RetrievalError, match="chat template"):
        format_demonstrations(no_template, "q", [], max_tokens=100)
