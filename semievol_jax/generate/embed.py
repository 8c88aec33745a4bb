"""Text embeddings from the model's own hidden states (SemiEvol's in-context propagation).

``embed`` runs the model without a cache over left-padded, length-bucketed batches (the
same bucketing as generation: one compiled program per length bucket), pools one
hidden layer over each text's tokens and L2-normalises, so cosine similarity is a dot
product for the retrieval index. The LM head's logits are never used, so XLA drops that
matmul from the compiled program.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from semievol_jax import sharding
from semievol_jax.generate import decode as decode_lib
from semievol_jax.generate.generator import PromptError, plan_batches

log = logging.getLogger(__name__)

POOLINGS = ("mean", "last")


def embed(model, tokenizer, texts: list[str], *, layer: int = -1, pooling: str = "mean",
          batch_size: int = 32, mesh=None, max_length: int | None = None,
          progress: bool = False) -> np.ndarray:
    """Pooled, L2-normalised hidden states, one row per text, in input order.

    Args:
      model: a ``semievol_jax.model.Llama`` (base + LoRA or merged).
      tokenizer: its tokenizer; texts are encoded as plain text with BOS.
      texts: strings to embed.
      layer: -1 for the final-norm output, i for the output of block i.
      pooling: "mean" over the text's tokens (a leading BOS excluded: its hidden state
        is the same for every text and only shrinks cosine differences) or "last" (the
        final token's state, which has attended to the whole text).
      batch_size: texts per compiled batch.
      mesh: optional mesh; batches are split over its batch axes. Multi-process, every
        process passes the same texts and gets all rows (as in ``generate``).
      max_length: texts longer than this keep their first ``max_length`` tokens (logged);
        default the model's ``max_position_embeddings``.
      progress: show a tqdm bar (process 0 only).

    Returns:
      [n, D] float32 numpy array with unit-norm rows.

    Raises:
      PromptError: a non-string or token-less text; ValueError: bad layer or pooling.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    num_layers = model.cfg.num_layers
    if not -1 <= layer < num_layers:
        raise ValueError(f"layer={layer} not in [-1, {num_layers}) for this model")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise PromptError(f"text {i} is {type(t).__name__}, expected str")
    D = model.cfg.hidden_size
    if not texts:
        return np.zeros((0, D), np.float32)
    ids = [list(x) for x in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
    empty = [i for i, x in enumerate(ids) if not x]
    if empty:
        raise PromptError(f"texts {empty[:10]} are empty after tokenisation (no BOS)")
    limit = max_length or getattr(model.cfg, "max_position_embeddings", None)
    if limit:
        long = [i for i, x in enumerate(ids) if len(x) > limit]
        if long:
            log.warning("embed: keeping the first %d tokens of %d text(s): %s", limit,
                        len(long), long[:10])
            ids = [x[:limit] for x in ids]

    bos = tokenizer.bos_token_id
    mesh = sharding.rows_mesh(mesh)  # multi-host: rows split as in generate (see generator.py)
    graphdef, state = decode_lib.split_model(model, mesh)
    b = min(batch_size, 1 << max(0, len(ids) - 1).bit_length())
    if mesh is not None:
        ways = mesh.shape["data"] * mesh.shape["fsdp"]
        b = -(-b // ways) * ways
    out = np.zeros((len(ids), D), np.float32)
    bar = tqdm(total=len(ids), desc="embed", unit="text",
               disable=not progress or not sharding.is_main_process())  # one bar per job
    for idx, length in plan_batches([len(x) for x in ids], b):
        tokens_BT = np.zeros((b, length), np.int32)
        valid_BT = np.zeros((b, length), bool)
        pool_BT = np.zeros((b, length), bool)
        for r, i in enumerate(idx):
            x = ids[i]
            tokens_BT[r, length - len(x):] = x
            valid_BT[r, length - len(x):] = True
            skip = 1 if len(x) > 1 and x[0] == bos else 0
            pool_BT[r, length - len(x) + skip:] = True
        valid_BT[len(idx):, -1] = pool_BT[len(idx):, -1] = True  # filler rows: one token
        arrays = [sharding.put_rows(a, mesh) for a in (tokens_BT, valid_BT, pool_BT)]
        emb_BD = _embed_jit(graphdef, state, *arrays, layer=layer, pooling=pooling)
        emb_BD = sharding.replicate_rows(emb_BD, mesh)  # multi-host: all rows everywhere
        out[idx] = np.asarray(jax.device_get(emb_BD))[:len(idx)]
        bar.update(len(idx))
    bar.close()
    return out


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("layer", "pooling"))
def _embed_jit(graphdef, state, tokens_BT, valid_BT, pool_BT, *, layer, pooling):
    model = nnx.merge(graphdef, state)
    positions_BT = jnp.maximum(jnp.cumsum(valid_BT.astype(jnp.int32), axis=1) - 1, 0)
    hidden_BTD = model(tokens_BT, positions_BT, valid_BT=valid_BT,
                       hidden_layer=layer).hidden_BTD.astype(jnp.float32)
    if pooling == "last":
        emb_BD = hidden_BTD[:, -1]  # left padding: the last column is every text's last token
    else:
        w_BT = pool_BT.astype(jnp.float32)
        emb_BD = jnp.einsum("BTD,BT->BD", hidden_BTD, w_BT) / jnp.maximum(
            w_BT.sum(-1, keepdims=True), 1.0)
    norm_B1 = jnp.linalg.norm(emb_BD, axis=-1, keepdims=True)
    return emb_BD / jnp.maximum(norm_B1, 1e-12)

