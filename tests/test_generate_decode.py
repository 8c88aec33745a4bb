"""The compiled decode loop: cache == full forward, log-probs, keys, vmapped samples, stops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from semievol_jax.generate import decode as decode_lib
from semievol_jax.generate import stopping
from semievol_jax.generate.sampling import SampleConfig
from semievol_jax.model.config import LlamaConfig
from semievol_jax.model.kv_cache import KEY_LAYOUTS, init_cache
from semievol_jax.model.llama import Llama

V = 128


@pytest.fixture(scope="module")
def model():
    cfg = LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=16)
    return Llama(cfg, rngs=nnx.Rngs(0))


def _tables(eos=(), stop=()):
    eos_V = jnp.zeros(V, bool).at[jnp.asarray(eos, jnp.int32)].set(True)
    stop_V = jnp.zeros(V, bool).at[jnp.asarray(stop, jnp.int32)].set(True)
    return stopping.StopTables(eos_V, stop_V, jnp.zeros((0, V), bool), jnp.zeros((0, V), bool))


def _batch():
    """Three left-padded prompts of lengths 5, 3 and 8 in a T=8 batch."""
    rng = np.random.RandomState(0)
    lengths = [5, 3, 8]
    tokens = np.zeros((3, 8), np.int32)
    valid = np.zeros((3, 8), bool)
    for b, n in enumerate(lengths):
        tokens[b, 8 - n:] = rng.randint(2, V, n)
        valid[b, 8 - n:] = True
    return jnp.asarray(tokens), jnp.asarray(valid)


def _run(model, tokens, valid, keys, cfg, tables=None):
    graphdef, state = decode_lib.split_model(model)
    return decode_lib.decode(graphdef, state, tokens, valid, keys, tables or _tables(), cfg)


def teacher_forced(model, prompts, gens):
    """Per-token log-probs of each generation from ONE uncached forward pass over the
    left-padded batch of prompt + generation (full [n, V] log-probs and the chosen ones)."""
    seqs = [np.concatenate([p, g]) for p, g in zip(prompts, gens, strict=True)]
    T = max(len(s) for s in seqs)
    tokens = np.zeros((len(seqs), T), np.int32)
    valid = np.zeros((len(seqs), T), bool)
    for r, s in enumerate(seqs):
        tokens[r, T - len(s):], valid[r, T - len(s):] = s, True
    positions = np.maximum(np.cumsum(valid, 1) - 1, 0)
    logits = model(jnp.asarray(tokens), jnp.asarray(positions), valid_BT=jnp.asarray(valid))
    lp_all = np.asarray(jax.nn.log_softmax(logits.logits_BTV, -1))
    out = []
    for r, g in enumerate(gens):
        lp = lp_all[r, T - len(g) - 1:T - 1]
        out.append((lp, lp[np.arange(len(g)), g]))
    return out


@pytest.mark.parametrize("key_layout", KEY_LAYOUTS)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_decode_matches_full_forward(model, temperature, key_layout):
    tokens, valid = _batch()
    keys = decode_lib.sample_keys(jax.random.key(0), jnp.arange(3), 2)
    out = _run(model, tokens, valid, keys, SampleConfig(temperature=temperature,
                                                        max_new_tokens=8,
                                                        key_layout=key_layout))
    assert (np.asarray(out.length_BM) == 8).all()
    assert (np.asarray(out.finish_BM) == stopping.FINISH_LENGTH).all()
    rows = [(b, m) for b in range(3) for m in range(2)]
    prompts = [np.asarray(tokens[b][valid[b]]) for b, _ in rows]
    gens = [np.asarray(out.tokens_BMN[b, m]) for b, m in rows]
    for (b, m), gen, (full_lp, ref) in zip(rows, gens, teacher_forced(model, prompts, gens),
                                           strict=True):
        np.testing.assert_allclose(out.logprobs_BMN[b, m], ref, atol=1e-4)
        if temperature == 0.0:
            np.testing.assert_array_equal(gen, full_lp.argmax(-1))
            np.testing.assert_array_equal(out.sample_logprobs_BMN[b, m], 0.0)
        else:
            np.testing.assert_allclose(out.sample_logprobs_BMN[b, m], ref, atol=1e-4)


def test_key_layouts_store_keys_transposed_and_sample_the_same_tokens(model):
    cache = init_cache(model.cfg, batch=3, max_len=20, key_layout="HS")
    assert cache.k_LBKSH.shape == (2, 3, 2, 16, 20)  # [L, B, K, H, S]
    assert cache.v_LBKSH.shape == (2, 3, 2, 20, 16)
    with pytest.raises(ValueError, match="key_layout"):
        init_cache(model.cfg, batch=3, max_len=20, key_layout="SSH")
    with pytest.raises(ValueError, match="key_layout"):
        SampleConfig(key_layout="hs")
    tokens, valid = _batch()
    keys = decode_lib.sample_keys(jax.random.key(7), jnp.arange(3), 4)
    out = {layout: _run(model, tokens, valid, keys,
                        SampleConfig(temperature=1.0, max_new_tokens=12, key_layout=layout))
           for layout in KEY_LAYOUTS}
    # The scores differ at most in summation order: the same samples, log-probs within
    # float32 rounding.
    np.testing.assert_array_equal(out["HS"].tokens_BMN, out["SH"].tokens_BMN)
    np.testing.assert_allclose(out["HS"].logprobs_BMN, out["SH"].logprobs_BMN, atol=1e-5)
    np.testing.assert_allclose(out["HS"].sample_logprobs_BMN, out["SH"].sample_logprobs_BMN,
                               atol=1e-5)


def test_unrolled_layers_sample_the_same_tokens(model, monkeypatch):
    tokens, valid = _batch()
    keys = decode_lib.sample_keys(jax.random.key(3), jnp.arange(3), 2)
    sliced, split = [], []
    unstacked = Llama.unstacked_layers
    monkeypatch.setattr(Llama, "unstacked_layers",
                        lambda self: sliced.append(1) or unstacked(self))
    split_layers = decode_lib.split_layers
    monkeypatch.setattr(decode_lib, "split_layers",
                        lambda cache: split.append(1) or split_layers(cache))
    out = {}
    for u in (False, True):
        sliced.clear()
        split.clear()
        prefills = sum(decode_lib.TRACES.values())
        out[u] = _run(model, tokens, valid, keys, SampleConfig(temperature=1.0,
                                                               max_new_tokens=10,
                                                               unroll_layers=u))
        # The loop took the per-layer weights and cache only when asked.
        assert bool(sliced) == bool(split) == u
        if u:  # the prefill scans its layers either way: the program of the run before
            assert sum(decode_lib.TRACES.values()) == prefills
    # The same operations per layer, fused per layer instead of once in the scan body.
    np.testing.assert_array_equal(out[True].tokens_BMN, out[False].tokens_BMN)
    np.testing.assert_allclose(out[True].logprobs_BMN, out[False].logprobs_BMN, atol=1e-5)
    assert np.isfinite(np.asarray(out[True].logprobs_BMN)).all()


def test_same_key_same_output_different_keys_differ(model):
    tokens, valid = _batch()
    cfg = SampleConfig(temperature=1.0, max_new_tokens=8)
    k0 = decode_lib.sample_keys(jax.random.key(0), jnp.arange(3), 2)
    a = _run(model, tokens, valid, k0, cfg)
    b = _run(model, tokens, valid, k0, cfg)
    np.testing.assert_array_equal(a.tokens_BMN, b.tokens_BMN)
    c = _run(model, tokens, valid, decode_lib.sample_keys(jax.random.key(1), jnp.arange(3), 2),
             cfg)
    assert (np.asarray(a.tokens_BMN) != np.asarray(c.tokens_BMN)).any()
    # The M samples of one prompt differ from each other too.
    assert (np.asarray(a.tokens_BMN[:, 0]) != np.asarray(a.tokens_BMN[:, 1])).any()


def test_vmapped_samples_equal_single_sample_calls(model):
    tokens, valid = _batch()
    cfg = SampleConfig(temperature=1.0, max_new_tokens=8)
    keys = decode_lib.sample_keys(jax.random.key(3), jnp.arange(3), 2)
    full = _run(model, tokens, valid, keys, cfg)
    for m in range(2):
        one = _run(model, tokens, valid, keys[:, m:m + 1], cfg)
        np.testing.assert_array_equal(one.tokens_BMN[:, 0], full.tokens_BMN[:, m])
        np.testing.assert_allclose(one.logprobs_BMN[:, 0], full.logprobs_BMN[:, m], atol=1e-5)


def test_row_output_does_not_depend_on_batch_composition(model):
    tokens, valid = _batch()
    cfg = SampleConfig(temperature=1.0, max_new_tokens=8)
    keys = decode_lib.sample_keys(jax.random.key(5), jnp.arange(3), 2)
    full = _run(model, tokens, valid, keys, cfg)
    # The same prompts in another order, each with its own key stream: each row's
    # samples follow it (the generator's test also re-buckets to other lengths).
    perm = jnp.array([2, 0, 1])
    moved = _run(model, tokens[perm], valid[perm], keys[perm], cfg)
    np.testing.assert_array_equal(moved.tokens_BMN, full.tokens_BMN[perm])


def test_eos_and_stop_tokens_end_rows(model):
    tokens, valid = _batch()
    cfg = SampleConfig(temperature=0.0, max_new_tokens=8)
    keys = decode_lib.sample_keys(jax.random.key(0), jnp.arange(3), 2)
    free = _run(model, tokens, valid, keys, cfg)
    eos_tok, stop_tok = int(free.tokens_BMN[0, 0, 3]), int(free.tokens_BMN[2, 0, 5])
    out = _run(model, tokens, valid, keys, cfg, _tables(eos=[eos_tok], stop=[stop_tok]))
    for b in range(3):
        gen = np.asarray(free.tokens_BMN[b, 0])
        ends = [t for t in range(8) if gen[t] in (eos_tok, stop_tok)]
        n = ends[0] + 1 if ends else 8
        assert int(out.length_BM[b, 0]) == n
        np.testing.assert_array_equal(out.tokens_BMN[b, 0, :n], gen[:n])
        np.testing.assert_array_equal(out.tokens_BMN[b, 0, n:], 0)
        np.testing.assert_array_equal(out.logprobs_BMN[b, 0, n:], 0.0)
        want = (stopping.FINISH_LENGTH if not ends else
                stopping.FINISH_EOS if gen[ends[0]] == eos_tok else stopping.FINISH_STOP)
        assert int(out.finish_BM[b, 0]) == want


@pytest.mark.parametrize("key_layout", KEY_LAYOUTS)
def test_compaction_moves_live_slots_to_a_smaller_batch_without_changing_any_sample(
        model, monkeypatch, key_layout):
    """Rows that end early (an eighth of the vocabulary is EOS) leave a few live slots,
    which go on in a batch a quarter the size; every sample equals the uncompacted one."""
    rng = np.random.RandomState(1)
    tokens = jnp.asarray(rng.randint(2, V, (8, 6)), jnp.int32)
    valid = jnp.ones((8, 6), bool)
    keys = decode_lib.sample_keys(jax.random.key(7), jnp.arange(8), 2)
    tables = _tables(eos=list(range(2, V, 8)))
    cfg = SampleConfig(temperature=1.0, max_new_tokens=24, key_layout=key_layout)
    before = dict(decode_lib.LOOP_TRACES)
    small = _run(model, tokens, valid, keys, cfg, tables)
    slots = {k[0] for k in decode_lib.LOOP_TRACES if decode_lib.LOOP_TRACES[k] > before.get(k, 0)}
    assert slots >= {16, 4}  # the loop ran on 16 slots, then on a quarter of them
    lengths = np.asarray(small.length_BM)
    assert lengths.min() < 4 and lengths.max() > 8  # rows ended at very different steps
    monkeypatch.setattr(decode_lib, "SHRINK", 10**6)  # never compact
    full = _run(model, tokens, valid, keys, cfg, tables)
    for field in ("tokens_BMN", "length_BM", "finish_BM"):
        np.testing.assert_array_equal(getattr(small, field), getattr(full, field))
    for field in ("logprobs_BMN", "sample_logprobs_BMN"):
        np.testing.assert_allclose(getattr(small, field), getattr(full, field), atol=1e-6)
