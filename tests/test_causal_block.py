"""base.causal_block: attention in query blocks over the keys up to each block's end
gives the dense attention's results, in training, embeddings and prefills."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_train_packing import _batchers, _loss_and_grads
from train_helpers import tiny_model

from semievol_jax.model import init_cache, merge_lora, set_causal_block
from semievol_jax.model.lora import LoraConfig


def _noisy_adapters(model, seed):
    state = nnx.state(model, nnx.LoRAParam)
    keys = iter(jax.random.split(jax.random.key(seed), 100))
    nnx.update(model, jax.tree.map(lambda x: 0.1 * jax.random.normal(next(keys), x.shape),
                                   state))
    return model


def test_causal_blocks_give_the_dense_loss_and_gradients():
    model = _noisy_adapters(tiny_model(), 1)
    _, packed = _batchers()
    batch = packed.batch_at(0)  # segments and padding: the mask still applies in blocks
    assert batch.tokens_ABT.shape[-1] > 24  # several blocks, the last one partial
    l0, g0 = _loss_and_grads(model, batch)
    assert set_causal_block(model, 24) == 0
    l1, g1 = _loss_and_grads(model, batch)
    assert set_causal_block(model, 0) == 24
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
    for k in g0:
        np.testing.assert_allclose(np.asarray(g1[k]), np.asarray(g0[k]), rtol=1e-4,
                                   atol=1e-6, err_msg=k)
    with pytest.raises(ValueError, match="causal block -1"):
        set_causal_block(model, -1)


def test_blocked_prefill_fills_the_dense_cache_and_decodes_alike():
    model = tiny_model()
    B, T = 2, 40
    r = np.random.default_rng(0)
    tokens = jnp.asarray(r.integers(1, model.cfg.vocab_size, (B, T)), jnp.int32)
    valid = jnp.asarray(np.arange(T)[None] >= np.array([[0], [7]]))  # left padding
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)

    def prefill_then_step():
        cache = init_cache(model.cfg, B, T + 1, jnp.float32)
        out = model(tokens, positions, valid_BT=valid, cache=cache, prefill=True)
        nxt = model(tokens[:, -1:], positions[:, -1:] + 1, cache=out.cache)
        return out.logits_BTV, out.cache.k_LBKSH, nxt.logits_BTV

    dense = prefill_then_step()
    set_causal_block(model, 16)
    try:
        blocked = prefill_then_step()
    finally:
        set_causal_block(model, 0)
    # Padding slots attend to nothing and hold other filler: compare the real ones.
    real = np.asarray(valid)[:, :, None]
    np.testing.assert_allclose(np.where(real, blocked[0], 0), np.where(real, dense[0], 0),
                               rtol=1e-5, atol=1e-5)
    slots = np.pad(np.asarray(valid), ((0, 0), (0, 1)))[None, :, None, :, None]
    np.testing.assert_allclose(np.where(slots, blocked[1], 0), np.where(slots, dense[1], 0),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(blocked[2], dense[2], rtol=1e-5, atol=1e-5)


def test_the_pipeline_loads_the_block_and_merging_keeps_it(tiny_ckpt_dir, tmp_path):
    from semievol_jax.model import load_hf, save_peft_adapter
    from semievol_jax.pipeline.config import BaseConfig
    from semievol_jax.pipeline.models import ModelRef, load_model

    tuned, _ = load_hf(tiny_ckpt_dir, lora=LoraConfig(rank=4, alpha=8.0, dropout=0.0))
    adapter = save_peft_adapter(tuned, tmp_path / "adapter", str(tiny_ckpt_dir))
    ref = ModelRef(str(tiny_ckpt_dir), str(adapter))
    cfg = BaseConfig(model=str(tiny_ckpt_dir), dtype="float32", causal_block=64)
    model, _ = load_model(ref, cfg)
    assert model.layers.attn.causal_block == 64
    assert merge_lora(model).layers.attn.causal_block == 64
    merged, _ = load_model(ref, cfg, merged=True)
    assert merged.layers.attn.causal_block == 64
    plain, _ = load_model(ref, BaseConfig(model=str(tiny_ckpt_dir), dtype="float32"))
    assert plain.layers.attn.causal_block == 0
