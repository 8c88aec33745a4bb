"""Tiny random Llama checkpoints in real HF format, and the tokenizer/saving helpers behind them.

Tests and the demo build their models here, so every code path that reads a real
checkpoint (config.json, safetensors, tokenizer.json with a chat template) is exercised
without downloading anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from semievol_jax.model.config import LlamaConfig, RopeScaling
from semievol_jax.model.hf_io import save_hf
from semievol_jax.model.llama import Llama

BOS, EOS, PAD, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>", "<|eot|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (BOS, EOS, PAD, EOT, *ROLE_TOKENS)

# Llama-3-like: a role header token, the content, an end-of-turn token (also an eos id).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|eot|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# Built-in corpus for the default tiny tokenizer: prose, digits and the answer format.
_TEXT = """\
The quick brown fox jumps over the lazy dog. A language model predicts the next token.
Question: Which option is correct? Options: A. red B. green C. blue D. yellow
Answer: A. Answer: B. Answer: C. Answer: D. The answer is the option that fits best.
Semi-supervised learning uses a few labeled examples and many unlabeled ones.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 42 100 2024. Sum, difference, product.
In the beginning the model knows nothing; after training it answers questions well.
The cat sat on the mat. The dog ran in the park. Rain falls and rivers flow to the sea.
"""


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    *,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
    bos_token: str = BOS,
    eos_token: str = EOT,
    pad_token: str = PAD,
    chat_template: str = CHAT_TEMPLATE,
):
    """Trains a byte-level BPE tokenizer (never produces unknown tokens).

    Like Llama 3, encoding prepends `bos_token` and the chat template starts with it too,
    so tokenize rendered chats with `add_special_tokens=False`.

    Returns:
        transformers.PreTrainedTokenizerFast with bos/eos/pad and the chat template set.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    for tok in (bos_token, eos_token, pad_token):
        if tok not in special_tokens:
            raise ValueError(f"{tok!r} must be one of special_tokens {list(special_tokens)}")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(special_tokens):
        raise ValueError(f"vocab_size {vocab_size} < 256 bytes + {len(special_tokens)} specials")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(special_tokens), initial_alphabet=alphabet,
        min_frequency=1, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    bos_id = tokenizer.token_to_id(bos_token)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos_token} $A", pair=f"{bos_token} $A {bos_token} $B",
        special_tokens=[(bos_token, bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=bos_token, eos_token=eos_token,
        pad_token=pad_token, chat_template=chat_template, padding_side="left")


def config_for_tokenizer(tokenizer: Any, **overrides: Any) -> LlamaConfig:
    """The STYLE tiny config (D 64, F 128, L 2, N 4, K 2, H 16) sized to `tokenizer`."""
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in (EOT, EOS)
               if t in tokenizer.get_vocab()]
    if tokenizer.eos_token_id not in eos_ids:
        eos_ids.insert(0, tokenizer.eos_token_id)
    fields = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0,
        max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tuple(eos_ids), pad_token_id=tokenizer.pad_token_id)
    fields.update(overrides)
    return LlamaConfig(**fields)


def random_llama(cfg: LlamaConfig, *, seed: int = 0, param_dtype: Any = jnp.float32) -> Llama:
    """A random Llama whose norm scales are also random, so a swapped norm shows in tests."""
    model = Llama(cfg, dtype=param_dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed))
    key = jax.random.key(seed + 1)
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param) and path[-1] == "scale":  # RMSNorm scales
            key, sub = jax.random.split(key)
            noise = 0.2 * jax.random.normal(sub, var.shape, jnp.float32)
            var.set_value((1.0 + noise).astype(var.dtype))
    return model


def write_hf_checkpoint(model: Llama, tokenizer: Any, out_dir: str | Path, **kw: Any) -> Path:
    """Saves a model and tokenizer exactly like a real HF checkpoint (see `save_hf`)."""
    return save_hf(model, out_dir, tokenizer, **kw)


def make_tiny_checkpoint(
    out_dir: str | Path,
    *,
    vocab_size: int = 384,
    tie_word_embeddings: bool = False,
    rope_scaling: RopeScaling | None = None,
    texts: Iterable[str] | None = None,
    seed: int = 0,
    param_dtype: Any = jnp.float32,
    **config_overrides: Any,
) -> Path:
    """Writes a random tiny Llama + trained tokenizer as an HF checkpoint directory.

    Defaults are the STYLE tiny model: vocab <= 512, width 64, 2 layers, 4 query / 2 kv
    heads, untied embeddings. Loadable by `load_hf`, transformers.AutoTokenizer and
    transformers.LlamaForCausalLM.

    Returns:
        out_dir.
    """
    lines = list(texts) if texts is not None else _TEXT.splitlines()
    tokenizer = train_tokenizer(lines, vocab_size)
    cfg = config_for_tokenizer(
        tokenizer, tie_word_embeddings=tie_word_embeddings, rope_scaling=rope_scaling,
        torch_dtype=jnp.dtype(param_dtype).name, **config_overrides)
    model = random_llama(cfg, seed=seed, param_dtype=param_dtype)
    return write_hf_checkpoint(model, tokenizer, out_dir)
