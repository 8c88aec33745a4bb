"""Sampling rules, entropy and stop handling (pure functions; no model needed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semievol_jax.generate import stopping
from semievol_jax.generate.sampling import (
    SampleConfig,
    filter_logits,
    greedy,
    response_entropy,
    sample,
)


def _keys(n, seed=0):
    return jax.random.split(jax.random.key(seed), n)


def test_greedy_returns_argmax_and_model_logprob():
    logits = jnp.array([[0.0, 2.0, 1.0], [3.0, -1.0, 0.5]])
    tok, lp, slp = greedy(logits)
    np.testing.assert_array_equal(tok, [1, 0])
    np.testing.assert_allclose(lp, jax.nn.log_softmax(logits)[jnp.arange(2), tok], atol=1e-6)
    np.testing.assert_array_equal(slp, 0.0)


def test_temperature_zero_config_is_greedy():
    logits = jax.random.normal(jax.random.key(1), (4, 50))
    tok, _, _ = sample(logits, _keys(4), SampleConfig(temperature=0.0))
    np.testing.assert_array_equal(tok, jnp.argmax(logits, -1))


def test_top_k_keeps_exactly_k():
    logits = jax.random.normal(jax.random.key(2), (3, 40))
    f = filter_logits(logits, temperature=1.0, top_k=5)
    probs = jax.nn.softmax(f)
    assert ((probs > 0).sum(-1) == 5).all()
    top5 = jnp.argsort(-logits, -1)[:, :5]
    assert (jnp.take_along_axis(probs, top5, -1).sum(-1) > 0.999).all()


def test_top_p_keeps_smallest_nucleus():
    probs = jnp.array([[0.5, 0.3, 0.15, 0.05]])
    logits = jnp.log(probs)
    kept = jax.nn.softmax(filter_logits(logits, temperature=1.0, top_p=0.8)) > 0
    np.testing.assert_array_equal(kept, [[True, True, False, False]])
    kept = jax.nn.softmax(filter_logits(logits, temperature=1.0, top_p=0.81)) > 0
    np.testing.assert_array_equal(kept, [[True, True, True, False]])
    # The most likely token survives any top_p.
    kept = jax.nn.softmax(filter_logits(logits, temperature=1.0, top_p=0.01)) > 0
    np.testing.assert_array_equal(kept, [[True, False, False, False]])


def test_sampling_frequencies_match_distribution_and_logprobs():
    probs = np.array([0.6, 0.25, 0.1, 0.05])
    n = 4000
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs)), (n, 4))
    cfg = SampleConfig(temperature=1.0)
    tok, lp, slp = sample(logits, _keys(n), cfg)
    freq = np.bincount(np.asarray(tok), minlength=4) / n
    np.testing.assert_allclose(freq, probs, atol=0.03)
    np.testing.assert_allclose(lp, np.log(probs)[np.asarray(tok)], atol=1e-5)
    np.testing.assert_allclose(slp, lp, atol=1e-5)  # nothing filtered at T=1


def test_sample_logprob_differs_from_model_logprob_under_filtering():
    logits = jnp.broadcast_to(jnp.log(jnp.array([0.5, 0.3, 0.2])), (64, 3))
    tok, lp, slp = sample(logits, _keys(64), SampleConfig(temperature=0.5, top_k=2))
    assert set(np.asarray(tok).tolist()) <= {0, 1}
    scaled = np.array([0.5, 0.3]) ** 2
    q = scaled / scaled.sum()
    np.testing.assert_allclose(slp, np.log(q)[np.asarray(tok)], atol=1e-5)
    np.testing.assert_allclose(lp, np.log([0.5, 0.3, 0.2])[np.asarray(tok)], atol=1e-5)


def test_per_row_keys_make_rows_independent_of_batch():
    logits = jax.random.normal(jax.random.key(3), (8, 100))
    keys = _keys(8, seed=7)
    cfg = SampleConfig(temperature=1.0, top_p=0.9)
    full, _, _ = sample(logits, keys, cfg)
    part, _, _ = sample(logits[3:5], keys[3:5], cfg)
    np.testing.assert_array_equal(full[3:5], part)


def test_response_entropy_counts_only_masked_tokens():
    lp = jnp.array([[-1.0, -2.0, -3.0, -100.0], [-0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
    h = response_entropy(lp, mask)
    np.testing.assert_allclose(h[:2], [2.0, 0.5], atol=1e-6)
    assert np.isnan(h[2])


@pytest.mark.parametrize("bad", [dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-1),
                                 dict(max_new_tokens=-2), dict(truncate="right")])
def test_bad_config_is_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SampleConfig(**bad)


class CharTokenizer:
    """Byte-ish tokenizer: id = ord(c) for single chars, plus a few multi-char tokens."""

    eos_token_id = 0
    name_or_path = ""
    multi = {200: "\n\n", 201: "ab\n", 202: "\nx"}

    def __len__(self):
        return 256

    def get_vocab(self):
        return {"</s>": 0}

    def _text(self, i):
        return "" if i == 0 else self.multi.get(i, chr(i) if 32 <= i < 127 or i == 10 else "")

    def decode(self, ids, **kw):
        return "".join(self._text(int(i)) for i in ids)

    def batch_decode(self, seqs, **kw):
        return [self.decode(s) for s in seqs]


def test_stop_tables_and_check_stop():
    tok = CharTokenizer()
    tables = stopping.stop_tables(tok, ("\n\n",), 260)
    assert tables.eos_V[0] and tables.eos_V.sum() == 1
    assert tables.stop_V[200] and not tables.stop_V[10]
    nl, a = 10, ord("a")
    prev = jnp.array([nl, 201, a, nl, a])
    cur = jnp.array([nl, 202, nl, a, 0])
    eos, stop = stopping.check_stop(prev, cur, jnp.bool_(True), tables)
    np.testing.assert_array_equal(stop, [True, True, False, False, False])
    np.testing.assert_array_equal(eos, [False, False, False, False, True])
    # The first generated token's predecessor is the prompt: no cross-boundary stop.
    _, stop = stopping.check_stop(prev, cur, jnp.bool_(False), tables)
    np.testing.assert_array_equal(stop, [False, False, False, False, False])


def test_cut_at_stop_cuts_text_and_tokens():
    tok = CharTokenizer()
    ids = [ord(c) for c in "hi"] + [201, 202] + [ord("z")]
    text, n = stopping.cut_at_stop(tok, ids, ("\n\n",))
    assert text == "hiab" and n == 4  # token 202 completes "\n\n"
    text, n = stopping.cut_at_stop(tok, ids, ("zz",))
    assert text == "hiab\n\nxz" and n is None
    text, n = stopping.cut_at_stop(tok, ids, ("x", "i"))
    assert text == "h" and n == 2
