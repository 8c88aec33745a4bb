"""The jitted forward compiles once per (batch, length) bucket, not per call or per step."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from semievol_jax.model import init_cache


class _CompileCounter:
    """Counts XLA backend compilations reported through jax.monitoring."""

    def __init__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1


_COUNTER = _CompileCounter()  # listeners cannot be unregistered: one per session


def _inputs(vocab, B, T, seed, pad=0):
    rng = np.random.RandomState(seed)
    tokens = jnp.asarray(rng.randint(4, vocab, (B, T)), jnp.int32)
    valid = np.ones((B, T), bool)
    valid[0, :pad] = False
    positions = np.maximum(np.cumsum(valid, 1) - 1, 0)
    return tokens, jnp.asarray(positions, jnp.int32), jnp.asarray(valid)


def test_forward_compiles_once_per_bucket(tiny_model):
    graphdef, state = nnx.split(tiny_model.model)
    vocab = tiny_model.cfg.vocab_size

    @jax.jit
    def forward(state, tokens_BT, positions_BT, valid_BT):
        return nnx.merge(graphdef, state)(tokens_BT, positions_BT, valid_BT=valid_BT).logits_BTV

    # Different values (tokens, padding, weights) within one bucket: no recompilation.
    state2 = jax.tree.map(lambda x: x * 1.01, state)
    for bucket in [(2, 16), (2, 32), (4, 16)]:
        before = _COUNTER.count
        for seed, (pad, st) in enumerate([(0, state), (5, state), (3, state2)]):
            forward(st, *_inputs(vocab, *bucket, seed, pad)).block_until_ready()
        assert forward._cache_size() == [(2, 16), (2, 32), (4, 16)].index(bucket) + 1
        assert _COUNTER.count - before >= 1  # the bucket did compile...
    n = forward._cache_size()
    forward(state, *_inputs(vocab, 2, 16, 9)).block_until_ready()  # ...and an old one is reused
    assert forward._cache_size() == n == 3


def test_decode_step_compiles_once(tiny_model):
    graphdef, state = nnx.split(tiny_model.model)
    cfg = tiny_model.cfg

    @jax.jit
    def step(state, tokens_BT, positions_BT, cache):
        out = nnx.merge(graphdef, state)(tokens_BT, positions_BT, cache=cache)
        return out.logits_BTV, out.cache

    cache = init_cache(cfg, batch=2, max_len=16)
    tokens, positions, _ = _inputs(cfg.vocab_size, 2, 8, 0)
    before = _COUNTER.count
    for t in range(8):  # `end` is traced: every step reuses one executable
        _, cache = step(state, tokens[:, t:t + 1], positions[:, t:t + 1], cache)
    assert step._cache_size() == 1
    assert int(cache.end) == 8
    assert _COUNTER.count - before <= 2  # the step itself (+ at most one helper op)
