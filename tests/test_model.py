"""Model invariants: cached decoding == full forward, hidden layers, LoRA params and merge."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from semievol_jax.model import LlamaConfig, LoraConfig, RopeScaling, init_cache, merge_lora
from semievol_jax.model.kv_cache import KEY_LAYOUTS, is_split, join_layers, split_layers
from semievol_jax.model.llama import Llama


def _left_padded(vocab, lengths, width, extra, seed=0):
    """Left-padded prompts of `lengths` in `width` columns, then `extra` valid tokens each."""
    rng = np.random.RandomState(seed)
    B, T = len(lengths), width + extra
    tokens = rng.randint(4, vocab, (B, T)).astype(np.int32)
    valid = np.ones((B, T), bool)
    for b, n in enumerate(lengths):
        valid[b, : width - n] = False
        tokens[b, : width - n] = 2  # pad id; masked anyway
    positions = np.maximum(np.cumsum(valid, 1) - 1, 0).astype(np.int32)
    return jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(valid)


@pytest.mark.parametrize("key_layout", KEY_LAYOUTS)
def test_cached_decode_equals_full_forward(tiny_model, key_layout):
    model, cfg = tiny_model.model, tiny_model.cfg
    tokens, positions, valid = _left_padded(cfg.vocab_size, [4, 6, 1], width=6, extra=2)
    full = model(tokens, positions, valid_BT=valid).logits_BTV

    step = nnx.jit(lambda m, t, p, v, c: m(t, p, valid_BT=v, cache=c))
    cache = init_cache(cfg, batch=3, max_len=12, key_layout=key_layout)
    chunks = []
    # Prefill in two chunks (the second starts at a non-zero end), then one token at a time.
    for lo, hi in [(0, 3), (3, 6), (6, 7), (7, 8)]:
        out = step(model, tokens[:, lo:hi], positions[:, lo:hi], valid[:, lo:hi], cache)
        cache = out.cache
        chunks.append(out.logits_BTV)
    cached = jnp.concatenate(chunks, axis=1)

    assert int(cache.end) == 8 and cache.key_layout == key_layout
    S_axis = 3 if key_layout == "SH" else 4  # the keys' slot axis
    assert cache.k_LBKSH.shape[S_axis] == 12 and cache.v_LBKSH.shape[3] == 12
    np.testing.assert_array_equal(np.asarray(cache.valid_BS[:, :8]), np.asarray(valid))
    assert not np.asarray(cache.valid_BS[:, 8:]).any()
    mask = np.asarray(valid)
    diff = np.abs(np.asarray(cached) - np.asarray(full))[mask]
    assert diff.max() <= 1e-4, diff.max()
    # Not vacuous: logits are O(1) and differ between positions.
    assert np.abs(np.asarray(full)).max() > 0.5


def test_prefill_attends_to_the_prompt_only_and_fills_the_cache_the_same(tiny_model):
    """A first pass with prefill=True (attention over the T new tokens, not the S slots)
    gives the logits and the cache of the pass over the whole cache, and decoding goes
    on from it as from the other."""
    model, cfg = tiny_model.model, tiny_model.cfg
    tokens, positions, valid = _left_padded(cfg.vocab_size, [4, 6, 1], width=6, extra=1)
    step = nnx.jit(lambda m, t, p, v, c, pre: m(t, p, valid_BT=v, cache=c, prefill=pre),
                   static_argnums=5)
    outs = [step(model, tokens[:, :6], positions[:, :6], valid[:, :6],
                 init_cache(cfg, batch=3, max_len=16), pre) for pre in (True, False)]
    mask = np.asarray(valid[:, :6])
    np.testing.assert_allclose(np.asarray(outs[0].logits_BTV)[mask],
                               np.asarray(outs[1].logits_BTV)[mask], atol=1e-5)
    caches = [o.cache for o in outs]
    np.testing.assert_array_equal(caches[0].valid_BS, caches[1].valid_BS)
    slots = np.asarray(caches[0].valid_BS)  # padding slots hold what no query reads
    for name in ("k_LBKSH", "v_LBKSH"):
        a, b = (np.asarray(getattr(c, name)).transpose(1, 3, 0, 2, 4)[slots] for c in caches)
        np.testing.assert_allclose(a, b, atol=1e-5)
    nxt = [step(model, tokens[:, 6:], positions[:, 6:], valid[:, 6:], o.cache, False)
           for o in outs]
    np.testing.assert_allclose(np.asarray(nxt[0].logits_BTV), np.asarray(nxt[1].logits_BTV),
                               atol=1e-5)


def test_prefill_in_query_blocks_equals_prefill_at_once(tiny_model, monkeypatch):
    """A long prompt's first pass attends a block of queries at a time (the last block
    padded); each query row is computed as in one pass, so logits and cache agree."""
    from semievol_jax.model import llama

    model, cfg = tiny_model.model, tiny_model.cfg
    tokens, positions, valid = _left_padded(cfg.vocab_size, [11, 3, 7], width=11, extra=0)

    def prefill():
        out = nnx.jit(lambda m, t, p, v, c: m(t, p, valid_BT=v, cache=c, prefill=True))(
            model, tokens, positions, valid, init_cache(cfg, batch=3, max_len=12))
        return out.logits_BTV, out.cache.k_LBKSH, out.cache.v_LBKSH

    at_once = prefill()
    monkeypatch.setattr(llama, "PREFILL_QUERY_BLOCK", 4)  # 3 blocks, the last padded by 1
    calls, blocks = [], llama._attend_in_blocks
    monkeypatch.setattr(llama, "_attend_in_blocks", lambda *a: calls.append(1) or blocks(*a))
    blocked = prefill()
    assert calls, "the blocked path did not run"
    mask = np.asarray(valid)
    np.testing.assert_allclose(np.asarray(blocked[0])[mask], np.asarray(at_once[0])[mask],
                               rtol=1e-6, atol=1e-6)
    for a, b in zip(blocked[1:], at_once[1:], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_padding_does_not_change_valid_logits(tiny_model):
    """A left-padded row gives the same logits as the same row unpadded."""
    model = tiny_model.model
    tokens, positions, valid = _left_padded(tiny_model.cfg.vocab_size, [5, 8, 1], 8, extra=0)
    padded = model(tokens, positions, valid_BT=valid).logits_BTV[0, 3:]
    alone = model(tokens[:1, 3:], positions[:1, 3:]).logits_BTV[0]
    np.testing.assert_allclose(np.asarray(padded), np.asarray(alone), atol=1e-5)


def test_logits_at_positions_equal_the_full_logits_there(tiny_model):
    model, cfg = tiny_model.model, tiny_model.cfg
    tokens, positions, valid = _left_padded(cfg.vocab_size, [5, 8, 3], 8, extra=2)
    at = jnp.asarray([[9, 3, 0], [1, 2, 8], [7, 7, 9]], jnp.int32)
    full = model(tokens, positions, valid_BT=valid).logits_BTV
    some = model(tokens, positions, valid_BT=valid, logits_at_BR=at).logits_BTV
    assert some.shape == (3, 3, cfg.vocab_size)
    np.testing.assert_allclose(np.asarray(some),
                               np.asarray(jnp.take_along_axis(full, at[..., None], axis=1)),
                               atol=1e-5)


def test_hidden_layers(tiny_model):
    model, cfg = tiny_model.model, tiny_model.cfg
    tokens, positions, valid = _left_padded(cfg.vocab_size, [8, 8, 8], width=8, extra=0)
    last = model(tokens, positions, hidden_layer=cfg.num_layers - 1).hidden_BTD
    final = model(tokens, positions, hidden_layer=-1).hidden_BTD
    first = model(tokens, positions, hidden_layer=0).hidden_BTD
    assert model(tokens, positions).hidden_BTD is None
    assert final.shape == (3, 8, cfg.hidden_size)
    np.testing.assert_allclose(np.asarray(model.norm(last)), np.asarray(final), atol=1e-5)
    assert not np.allclose(np.asarray(first), np.asarray(last))
    with pytest.raises(ValueError, match="hidden_layer"):
        model(tokens, positions, hidden_layer=cfg.num_layers)


def test_layer_slices_run_the_stack_as_the_scan_does(tiny_model):
    model, cfg = tiny_model.model, tiny_model.cfg
    tokens, positions, valid = _left_padded(cfg.vocab_size, [5, 8, 2], width=8, extra=0)
    layers = model.unstacked_layers()
    assert len(layers) == cfg.num_layers
    scanned = model(tokens, positions, valid_BT=valid, hidden_layer=0)
    sliced = model(tokens, positions, valid_BT=valid, hidden_layer=0, layer_slices=layers)
    np.testing.assert_allclose(np.asarray(sliced.logits_BTV), np.asarray(scanned.logits_BTV),
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(sliced.hidden_BTD), np.asarray(scanned.hidden_BTD),
                               atol=1e-5)
    # Each slice is its own layer's: the layers' order matters.
    swapped = model(tokens, positions, valid_BT=valid, layer_slices=layers[::-1])
    assert not np.allclose(np.asarray(swapped.logits_BTV), np.asarray(scanned.logits_BTV),
                           atol=1e-3)
    with pytest.raises(ValueError, match="layer_slices holds 1 layers"):
        model(tokens, positions, layer_slices=layers[:1])
    with pytest.raises(ValueError, match="unroll is for the scan"):
        model(tokens, positions, layer_slices=layers, unroll=2)
    with pytest.raises(ValueError, match="unroll is for the scan"):
        model(tokens, positions, layer_slices=layers, unroll=True)


@pytest.mark.parametrize("key_layout", KEY_LAYOUTS)
def test_cache_split_by_layer_decodes_as_the_stacked_one(tiny_model, key_layout):
    model, cfg = tiny_model.model, tiny_model.cfg
    tokens, positions, valid = _left_padded(cfg.vocab_size, [4, 6, 1], width=6, extra=2)
    layers = model.unstacked_layers()
    cache = init_cache(cfg, batch=3, max_len=10, key_layout=key_layout)
    cache = model(tokens[:, :6], positions[:, :6], valid_BT=valid[:, :6], cache=cache,
                  prefill=True).cache
    split = split_layers(cache)
    assert is_split(split) and not is_split(cache) and len(split.k_LBKSH) == cfg.num_layers
    np.testing.assert_array_equal(np.asarray(join_layers(split).k_LBKSH),
                                  np.asarray(cache.k_LBKSH))
    stacked, per_layer = cache, split
    for t in (6, 7):  # two decode steps: each reads the slots the steps before wrote
        args = (tokens[:, t:t + 1], positions[:, t:t + 1])
        a = model(*args, valid_BT=valid[:, t:t + 1], cache=stacked, layer_slices=layers)
        b = model(*args, valid_BT=valid[:, t:t + 1], cache=per_layer, layer_slices=layers)
        stacked, per_layer = a.cache, b.cache
        assert is_split(per_layer)
        np.testing.assert_array_equal(np.asarray(b.logits_BTV), np.asarray(a.logits_BTV))
    joined = join_layers(per_layer)
    for got, want in [(joined.k_LBKSH, stacked.k_LBKSH), (joined.v_LBKSH, stacked.v_LBKSH),
                      (joined.valid_BS, stacked.valid_BS), (joined.end, stacked.end)]:
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    with pytest.raises(ValueError, match="split by layer"):
        model(tokens[:, 6:7], positions[:, 6:7], cache=per_layer)
    short = dataclasses.replace(per_layer, k_LBKSH=per_layer.k_LBKSH[:1],
                                v_LBKSH=per_layer.v_LBKSH[:1])
    with pytest.raises(ValueError, match="split cache holds 1 layers"):
        model(tokens[:, 6:7], positions[:, 6:7], cache=short, layer_slices=layers)


def test_params_carry_logical_axis_names(tiny_model):
    # Abstract (no arrays): the metadata is what is under test.
    lora_model = nnx.eval_shape(
        lambda: Llama(tiny_model.cfg, lora=LoraConfig(rank=4), rngs=nnx.Rngs(0)))
    known = {"layers", "embed", "heads", "kv_heads", "head_dim", "mlp", "vocab", "lora_rank"}
    n_lora = 0
    for path, var in nnx.iter_graph(lora_model):
        if not isinstance(var, nnx.Param):
            continue
        names = var.get_metadata("out_sharding")
        assert len(names) == len(var.shape) and set(names) <= known, (path, names)
        # every block variable is stacked: its leading axis is the layer axis
        assert (path[0] == "layers") == (names[0] == "layers"), (path, names)
        if isinstance(var, nnx.LoRAParam):
            n_lora += 1
            assert var.shape[0] == tiny_model.cfg.num_layers
    assert n_lora == 2 * 7
    # Training filters on the type: only adapters are trainable.
    trainable = nnx.state(lora_model, nnx.LoRAParam)
    assert all("lora_" in str(p[-1]) for p, _ in nnx.to_flat_state(trainable))


def test_lora_merge_matches_adapter_forward(tiny_model):
    cfg = tiny_model.cfg
    model = Llama(cfg, lora=LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "o", "down")),
                  rngs=nnx.Rngs(1))
    nnx.update(model, nnx.state(tiny_model.model, nnx.Param))
    # B starts at zero (LoRA == base); randomise it so the merge has something to fold.
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.LoRAParam) and var.get_metadata("out_sharding")[-1] == "lora_rank":
            var.set_value(0.1 * jax.random.normal(jax.random.key(3), var.shape))
    tokens, positions, valid = _left_padded(cfg.vocab_size, [8, 5, 1], width=8, extra=0)
    with_lora = model(tokens, positions, valid_BT=valid).logits_BTV
    base = tiny_model.model(tokens, positions, valid_BT=valid).logits_BTV
    merged = merge_lora(model)
    assert merged.lora is None and not nnx.state(merged, nnx.LoRAParam)
    out = merged(tokens, positions, valid_BT=valid).logits_BTV
    np.testing.assert_allclose(np.asarray(out), np.asarray(with_lora), atol=1e-4)
    assert np.abs(np.asarray(with_lora) - np.asarray(base)).max() > 1e-2


def test_lora_dropout_only_in_train_mode(tiny_model):
    cfg = tiny_model.cfg
    model = Llama(cfg, lora=LoraConfig(rank=4, dropout=0.5), rngs=nnx.Rngs(0))
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.LoRAParam):
            var.set_value(jnp.ones(var.shape, var.dtype) * 0.05)
    tokens, positions, _ = _left_padded(cfg.vocab_size, [8, 8, 8], width=8, extra=0)
    a = model(tokens, positions).logits_BTV
    b = model(tokens, positions).logits_BTV
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # eval mode by default
    model.train()
    c = model(tokens, positions).logits_BTV
    assert np.abs(np.asarray(c) - np.asarray(a)).max() > 1e-4


def test_cache_overflow_is_refused_outside_jit(tiny_model):
    cache = init_cache(tiny_model.cfg, batch=1, max_len=4)
    tokens = jnp.ones((1, 5), jnp.int32)
    with pytest.raises(ValueError, match="KV cache overflow: 0 slots used \\+ 5 new > max_len 4"):
        tiny_model.model(tokens, jnp.arange(5)[None], cache=cache)


@pytest.mark.parametrize("scaling", [None, RopeScaling("linear", 2.0),
                                     RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)])
def test_config_hf_round_trip(tiny_model, scaling):
    import dataclasses

    cfg = dataclasses.replace(tiny_model.cfg, rope_scaling=scaling, rope_theta=500000.0)
    assert LlamaConfig.from_hf(cfg.to_hf()) == cfg


def test_config_reads_legacy_rope_layout(tiny_model):
    hf = tiny_model.cfg.to_hf()
    del hf["rope_parameters"]
    hf["rope_theta"] = 500000.0
    hf["rope_scaling"] = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cfg = LlamaConfig.from_hf(hf)
    assert cfg.rope_theta == 500000.0
    assert cfg.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)


def test_remat_policies_give_the_same_loss_and_gradients(tiny_model):
    from semievol_jax.model.llama import REMAT_POLICIES
    from semievol_jax.train.config import REMAT_NAMES

    assert tuple(REMAT_POLICIES) == REMAT_NAMES  # the settings check reads the names there

    graphdef, state = nnx.split(tiny_model.model)
    tokens, positions, valid = _left_padded(tiny_model.cfg.vocab_size, [12, 9], 12, 0)

    def loss(state, remat):
        out = nnx.merge(graphdef, state)(tokens, positions, valid_BT=valid, remat=remat)
        return jnp.mean(jax.nn.logsumexp(out.logits_BTV, -1))

    ref_loss, ref_grads = jax.value_and_grad(loss)(state, "none")
    for policy in REMAT_POLICIES:
        value, grads = jax.jit(jax.value_and_grad(loss), static_argnums=1)(state, policy)
        np.testing.assert_allclose(value, ref_loss, rtol=1e-6)
        for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(ref_grads))


def _lora_gradients(tiny_ckpt_dir):
    """The tiny checkpoint with LoRA adapters moved off B = 0 (at init every adapter
    gradient but B's would be trivially equal), and on a fixed batch: its adapters,
    ``forward(lora_state, **call)`` and the jitted ``grads(lora_state, remat=, lora_grad=)``
    -> (loss, adapter gradients)."""
    from semievol_jax.model import load_hf

    model, cfg = load_hf(tiny_ckpt_dir, lora=LoraConfig(rank=4, alpha=8.0, dropout=0.0))
    graphdef, lora_state, rest = nnx.split(model, nnx.LoRAParam, ...)
    lora_state = jax.tree.map(lambda x: x + 0.01 * jnp.cos(jnp.arange(x.size).reshape(x.shape)),
                              lora_state)
    tokens, positions, valid = _left_padded(cfg.vocab_size, [12, 9], 12, 0)

    def forward(lora_state, **call):
        return nnx.merge(graphdef, lora_state, rest)(tokens, positions, valid_BT=valid, **call)

    @functools.partial(jax.jit, static_argnames=("remat", "lora_grad"))
    def grads(lora_state, remat="none", lora_grad="autodiff"):
        def loss(lora_state):
            out = forward(lora_state, remat=remat, lora_grad=lora_grad)
            return jnp.mean(jax.nn.logsumexp(out.logits_BTV, -1))
        return jax.value_and_grad(loss)(lora_state)

    return lora_state, forward, grads


def test_attention_remat_trains_lora_exactly_as_projections(tiny_ckpt_dir):
    """Recomputing the MLP's gate and up projections in the backward pass (remat
    "attention") gives the LoRA gradients of saving them ("projections") bit for bit, so
    a preset may trade one for the other (memory for time) without moving its results."""
    lora_state, _, grads = _lora_gradients(tiny_ckpt_dir)
    ref_loss, ref = grads(lora_state, remat="projections")
    loss, got = grads(lora_state, remat="attention")
    assert float(loss) == float(ref_loss)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(r))
    assert all(float(jnp.abs(r).max()) > 0 for r in jax.tree.leaves(ref))


@pytest.mark.parametrize("remat", ["none", "attention", "full"])
def test_direct_lora_grad_equals_autodiff(tiny_ckpt_dir, remat):
    """train.lora_grad "direct" (the B gradient as one matmul over the tokens, stated in
    the backward pass) gives JAX's own gradients up to rounding, under remat too."""
    from semievol_jax.model.lora import LORA_GRADS
    from semievol_jax.train.config import LORA_GRAD_NAMES

    assert LORA_GRADS == LORA_GRAD_NAMES  # the settings check reads the names there
    lora_state, forward, grads = _lora_gradients(tiny_ckpt_dir)

    def program(lora_grad):
        return str(jax.make_jaxpr(lambda s: forward(s, remat=remat, lora_grad=lora_grad))(
            lora_state))

    assert "custom_vjp" in program("direct") and "custom_vjp" not in program("autodiff")
    ref_loss, ref = grads(lora_state, remat=remat, lora_grad="autodiff")
    loss, got = grads(lora_state, remat=remat, lora_grad="direct")
    assert float(loss) == float(ref_loss)  # the forward pass is the same program
    flat_ref, flat_got = nnx.to_flat_state(ref), nnx.to_flat_state(got)
    assert [p for p, _ in flat_ref] == [p for p, _ in flat_got]
    assert any(p[-1] == "lora_b" for p, _ in flat_ref)
    for (path, r), (_, g) in zip(flat_ref, flat_got, strict=True):
        r, g = np.asarray(r.get_value()), np.asarray(g.get_value())
        assert np.abs(r).max() > 0, path
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6 * np.abs(r).max(),
                                   err_msg=str(path))


def test_unknown_lora_grad_is_refused(tiny_model):
    tokens, positions, _ = _left_padded(tiny_model.cfg.vocab_size, [4], 4, 0)
    with pytest.raises(ValueError, match="lora_grad='fast'; expected one of"):
        tiny_model.model(tokens, positions, lora_grad="fast")
