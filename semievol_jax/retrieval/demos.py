"""Retrieved neighbours rendered as few-shot chat turns, trimmed to a token budget.

A prompt is a multi-turn conversation: for each demonstration a user turn (the
labeled question) and an assistant turn (its target line, "Answer: X"), then the query
as the last user turn, rendered with the tokenizer's chat template and ending in the
assistant generation prompt. When the rendered prompt exceeds the budget the farthest
demonstration is dropped first, so the nearest ones survive a tight context.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from semievol_jax.retrieval.vectors import RetrievalError

ORDERS = ("nearest_last", "nearest_first")


@dataclass(frozen=True)
class DemoPrompt:
    """One rendered prompt and what went into it."""

    text: str  # chat-rendered, ends with the assistant generation prompt
    messages: tuple[dict[str, str], ...]  # the conversation that was rendered
    demo_rows: tuple[int, ...]  # labeled rows used, in prompt order
    num_demos: int  # demonstrations actually used (<= retrieved)
    num_dropped: int  # retrieved demonstrations dropped to fit max_tokens
    num_tokens: int  # tokens of text (no extra special tokens added)


def _messages(question: str, demos: Sequence[tuple[str, str]], system: str | None
              ) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    for q, a in demos:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    msgs.append({"role": "user", "content": question})
    return msgs


def _render(tokenizer, msgs: list[dict[str, str]]) -> tuple[str, int]:
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    # The template already writes BOS etc. as text; counting must not add them twice.
    return text, len(tokenizer(text, add_special_tokens=False)["input_ids"])


def format_demonstrations(
    tokenizer: Any,
    question: str,
    demos: Sequence[tuple[str, str]],
    *,
    max_tokens: int,
    order: str = "nearest_last",
    demo_rows: Sequence[int] | None = None,
    system: str | None = None,
) -> DemoPrompt:
    """Renders a query with its demonstrations, dropping the farthest until it fits.

    Args:
      tokenizer: a transformers tokenizer with a chat template.
      question: the query's user text (already formatted).
      demos: (user text, assistant text) pairs, nearest first (search order).
      max_tokens: most tokens the rendered prompt may have: the model's context minus
        the room kept for the response.
      order: "nearest_last" puts the nearest demonstration next to the query (default),
        "nearest_first" right after the system turn.
      demo_rows: labeled row numbers of demos (recorded in the result), same order.
      system: optional system turn.

    Returns:
      DemoPrompt with the number of demonstrations actually used.

    Raises:
      RetrievalError: unknown order, no chat template, mismatched demo_rows, or a query
        that alone (zero demonstrations) exceeds max_tokens.
    """
    if order not in ORDERS:
        raise RetrievalError(f"demonstration order {order!r}; expected one of {ORDERS}")
    if not getattr(tokenizer, "chat_template", None):
        raise RetrievalError("tokenizer has no chat template; demonstrations are chat turns")
    rows = tuple(int(r) for r in demo_rows) if demo_rows is not None else tuple(range(len(demos)))
    if len(rows) != len(demos):
        raise RetrievalError(f"{len(demos)} demonstrations but {len(rows)} demo_rows")
    # Token count grows with the number kept, so try from all of them down; most
    # prompts fit at the first try.
    for m in range(len(demos), -1, -1):
        kept, kept_rows = list(demos[:m]), list(rows[:m])
        if order == "nearest_last":
            kept, kept_rows = kept[::-1], kept_rows[::-1]
        msgs = _messages(question, kept, system)
        text, n_tok = _render(tokenizer, msgs)
        if n_tok <= max_tokens:
            return DemoPrompt(text=text, messages=tuple(msgs), demo_rows=tuple(kept_rows),
                              num_demos=m, num_dropped=len(demos) - m, num_tokens=n_tok)
    raise RetrievalError(
        f"the query alone renders to {n_tok} tokens, over the budget of {max_tokens} "
        f"(question starts {question[:60]!r})")


def build_demo_prompts(
    tokenizer: Any,
    queries: Sequence[Any],
    labeled: Sequence[Any],
    idx_QK: np.ndarray,
    *,
    format_question: Callable[[Any], str],
    format_answer: Callable[[Any], str] | None = None,
    max_tokens: int,
    order: str = "nearest_last",
    system: str | None = None,
) -> list[DemoPrompt]:
    """Prompts for a batch of queries from their retrieved labeled neighbours.

    Args:
      tokenizer: a transformers tokenizer with a chat template.
      queries: Q query examples (anything format_question accepts).
      labeled: the indexed labeled examples; idx_QK points into it.
      idx_QK: [Q, K] neighbour rows, nearest first (Index.search output).
      format_question: example -> user text, e.g. functools.partial(format_question, task).
      format_answer: labeled example -> assistant text; default "Answer: {ex.answer}".
      max_tokens: budget per rendered prompt (context minus response room).
      order, system: as in format_demonstrations.

    Returns:
      Q DemoPrompts; DemoPrompt.num_demos records how many each one used.
    """
    idx_QK = np.asarray(idx_QK)
    if idx_QK.ndim != 2 or idx_QK.shape[0] != len(queries):
        raise RetrievalError(f"idx_QK has shape {idx_QK.shape}; expected ({len(queries)}, K)")
    if idx_QK.size and (idx_QK.min() < 0 or idx_QK.max() >= len(labeled)):
        raise RetrievalError(f"idx_QK holds row {int(idx_QK.max())} or {int(idx_QK.min())}, "
                             f"outside the {len(labeled)} labeled examples")
    answer = format_answer or (lambda ex: f"Answer: {ex.answer}")
    out = []
    for query, rows in zip(queries, idx_QK, strict=True):
        demos = [(format_question(labeled[r]), answer(labeled[r])) for r in rows]
        out.append(format_demonstrations(tokenizer, format_question(query), demos,
                                         max_tokens=max_tokens, order=order,
                                         demo_rows=rows.tolist(), system=system))
    return out
