"""semievol_jax: SemiEvol semi-supervised LLM fine-tuning in JAX / Flax NNX."""

__version__ = "0.1.0"
