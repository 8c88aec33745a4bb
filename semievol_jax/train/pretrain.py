"""Pretraining a tiny Llama from scratch on a plain-text corpus (the `base` stage's
`base.pretrain`: the demo's base, or fpb-tiny's).

The result is an ordinary Hugging Face checkpoint directory (config.json,
model.safetensors, tokenizer files with a chat template), so every later stage loads it
through exactly the code path of a real Llama checkpoint.

Pretraining is plain next-token prediction on packed documents: every document is
encoded as `<bos> text <eos>`, the documents (in a seeded order per pass) are
concatenated into one token stream and cut into rows of `seq_len + 1` tokens. Attention
crosses document boundaries inside a row, as in most LLM pretraining; the `<eos>` and
`<bos>` markers tell the model where a document starts.

Determinism: the tokenizer trainer, the parameter init (`nnx.Rngs(seed)`), the document
order (a numpy Generator seeded with `seed`) and the XLA CPU program are all deterministic, so the
same corpus and config give bit-identical weights.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from semievol_jax.model import Llama, LlamaConfig, save_hf
from semievol_jax.model.tiny import config_for_tokenizer, train_tokenizer
from semievol_jax.train.optim import clipped_adamw


class PretrainError(ValueError):
    """A corpus or config the pretraining cannot run on."""


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """The tiny base model and its pretraining run (defaults: about a minute on 2 cores)."""

    vocab_size: int = 1024  # BPE vocabulary incl. special tokens (names become one token)
    hidden_size: int = 128  # model width D
    num_layers: int = 3  # transformer blocks L
    num_heads: int = 4  # query heads N
    num_kv_heads: int = 2  # kv heads K (GQA, like Llama 3)
    intermediate_size: int = 256  # MLP hidden F
    seq_len: int = 128  # tokens per packed row T
    batch_size: int = 8  # rows per step B
    steps: int = 800  # optimizer steps
    learning_rate: float = 3e-3  # peak AdamW lr (tiny models tolerate a high one)
    warmup_steps: int = 30  # linear warmup, then cosine to 10% of the peak
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    grad_clip: float = 1.0  # global-norm clipping (0 = off)
    rope_theta: float = 10000.0  # rotary base
    tie_embeddings: bool = True  # share input embedding and LM head (small vocab)


def model_config(cfg: PretrainConfig, tokenizer) -> LlamaConfig:
    """The LlamaConfig of the tiny base, with the tokenizer's vocab and special ids."""
    return config_for_tokenizer(
        tokenizer, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_layers=cfg.num_layers, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
        head_dim=cfg.hidden_size // cfg.num_heads, rope_theta=cfg.rope_theta,
        max_position_embeddings=max(512, 2 * cfg.seq_len),
        tie_word_embeddings=cfg.tie_embeddings, torch_dtype="float32")


def pack_corpus(docs_ids: Sequence[Sequence[int]], *, bos: int, eos: int, rows: int,
                row_len: int, seed: int) -> np.ndarray:
    """Packs documents into `rows` rows of `row_len` tokens.

    Documents are taken in a fresh seeded permutation on every pass over the corpus,
    each as `bos + ids + eos`, until the stream is long enough.

    Returns:
      int32 array [rows, row_len].
    """
    need = rows * row_len
    rng = np.random.Generator(np.random.PCG64(seed))
    lens = np.array([len(d) + 2 for d in docs_ids])
    if lens.sum() <= 2 * len(docs_ids):
        raise PretrainError("corpus encodes to no tokens")
    chunks: list[np.ndarray] = []
    total = 0
    while total < need:
        for i in rng.permutation(len(docs_ids)):
            chunks.append(np.asarray([bos, *docs_ids[i], eos], dtype=np.int32))
            total += lens[i]
            if total >= need:
                break
    return np.concatenate(chunks)[:need].reshape(rows, row_len)


def _loss(params, graphdef, rest, tokens_BT):
    model = nnx.merge(graphdef, params, rest)
    inputs_BT, targets_BT = tokens_BT[:, :-1], tokens_BT[:, 1:]
    positions_BT = jnp.broadcast_to(jnp.arange(inputs_BT.shape[1]), inputs_BT.shape)
    logits_BTV = model(inputs_BT, positions_BT).logits_BTV.astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT).mean()


def pretrain_base(corpus_texts: Sequence[str], out_dir: str | Path, *,
                  cfg: PretrainConfig = PretrainConfig(), seed: int = 0,
                  work_dir: str | Path | None = None,
                  log: Callable[[str], None] = print) -> Path:
    """Trains a tokenizer and a tiny Llama on `corpus_texts`; writes an HF checkpoint.

    Args:
      corpus_texts: plain-text documents (e.g. `synth.make_corpus(...)`).
      out_dir: the checkpoint directory to write (created; files in it are replaced).
      cfg: model size and optimisation.
      seed: parameter init and document order (the tokenizer depends only on the corpus).
      work_dir: accepted for the stage API; unused, since a run this short restarts
        rather than resumes.
      log: progress lines (loss every ~10% of the steps, tokens/s).

    Returns:
      `out_dir`, holding config.json, model.safetensors, the tokenizer files and
      pretrain_metrics.json (the loss curve; no timings, so the stage digest is stable).

    Raises:
      PretrainError: an empty corpus or an impossible config.
    """
    docs = [d for d in corpus_texts if d.strip()]
    if not docs:
        raise PretrainError("pretraining corpus has no non-empty document")
    if cfg.hidden_size % cfg.num_heads or cfg.num_heads % cfg.num_kv_heads:
        raise PretrainError(
            f"hidden_size={cfg.hidden_size} must divide by num_heads={cfg.num_heads}, "
            f"which must divide by num_kv_heads={cfg.num_kv_heads}"
        )
    if cfg.steps < 1 or cfg.learning_rate <= 0:
        raise PretrainError(f"steps={cfg.steps} and learning_rate={cfg.learning_rate} "
                            "must be positive")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = train_tokenizer(docs, cfg.vocab_size)
    docs_ids = [tokenizer.encode(d, add_special_tokens=False) for d in docs]
    data = pack_corpus(docs_ids, bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id,
                       rows=cfg.steps * cfg.batch_size, row_len=cfg.seq_len + 1,
                       seed=seed)
    n_tokens = sum(len(d) + 2 for d in docs_ids)
    log(f"pretrain: corpus {len(docs)} docs, {n_tokens} tokens; "
        f"{cfg.steps * cfg.batch_size * cfg.seq_len / n_tokens:.1f} passes")

    mcfg = model_config(cfg, tokenizer)
    model = Llama(mcfg, lora=None, dtype=jnp.float32, param_dtype=jnp.float32,
                  rngs=nnx.Rngs(seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, max(1, min(cfg.warmup_steps, cfg.steps - 1)), cfg.steps,
        end_value=0.1 * cfg.learning_rate,
    )
    tx = clipped_adamw(schedule, b1=0.9, b2=0.95, eps=1e-8, weight_decay=cfg.weight_decay,
                       max_grad_norm=cfg.grad_clip)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, tokens_BT):
        loss, grads = jax.value_and_grad(_loss)(params, graphdef, rest, tokens_BT)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses: list[float] = []
    every = max(1, cfg.steps // 10)
    t0 = time.perf_counter()
    for i in range(cfg.steps):
        batch = data[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        params, opt_state, loss = step(params, opt_state, jnp.asarray(batch))
        if (i + 1) % every == 0 or i == cfg.steps - 1:
            losses.append(float(loss))
            dt = time.perf_counter() - t0
            log(f"pretrain: step {i + 1}/{cfg.steps} loss {losses[-1]:.3f} "
                f"({(i + 1) * cfg.batch_size * cfg.seq_len / dt:,.0f} tok/s)")
        if not np.isfinite(float(loss)):
            raise PretrainError(f"pretraining loss is {float(loss)} at step {i + 1}; "
                                f"lower learning_rate={cfg.learning_rate}")
    nnx.update(model, params)
    save_hf(model, out, tokenizer)
    (out / "pretrain_metrics.json").write_text(json.dumps({
        "config": dataclasses.asdict(cfg),
        "seed": seed,
        "corpus_docs": len(docs),
        "corpus_tokens": n_tokens,
        "loss_every": every,
        "loss": losses,
    }, indent=1))
    return out
