"""In-context propagation: nearest labeled examples per question and their prompts.

  vectors.py        validation (NaN/inf/zero rows named), L2 normalisation, digests
  exact.py          exact top-k by dot product, chunked: small sets and the reference
  scann_backend.py  ScaNN tree + AH + reorder: derived params, pinned seeds, (de)serialise
  index.py          IndexConfig, build_index (backend choice), Index.search/save, load_index
  demos.py          neighbours as few-shot chat turns, farthest dropped to fit the budget
"""

from semievol_jax.retrieval.demos import DemoPrompt, build_demo_prompts, format_demonstrations
from semievol_jax.retrieval.exact import exact_top_k
from semievol_jax.retrieval.index import (
    Index,
    IndexConfig,
    build_index,
    load_index,
    recall_at_k,
)
from semievol_jax.retrieval.vectors import RetrievalError

__all__ = [
    "DemoPrompt",
    "Index",
    "IndexConfig",
    "RetrievalError",
    "build_demo_prompts",
    "build_index",
    "exact_top_k",
    "format_demonstrations",
    "load_index",
    "recall_at_k",
]
