"""Inference: sampling rules, the jit-compiled prefill + decode loop, n-sample generation,
and hidden-state embeddings.

  sampling.py   pure rules (greedy / temperature / top-k / top-p) and response entropy
  stopping.py   EOS ids, stop strings, finish reasons
  decode.py     the compiled program: shared prefill, vmapped M samples, while_loop
  generator.py  text-level generate(): tokenise, bucket, batch, detokenise, in input order
  embed.py      embed(): pooled, L2-normalised hidden states for retrieval
"""

from semievol_jax.generate.embed import embed
from semievol_jax.generate.generator import (
    PromptError,
    Sample,
    generate,
    render_prompt,
)
from semievol_jax.generate.sampling import SampleConfig, response_entropy

__all__ = [
    "PromptError",
    "Sample",
    "SampleConfig",
    "embed",
    "generate",
    "render_prompt",
    "response_entropy",
]
