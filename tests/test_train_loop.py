"""train(): errors with clear messages, NaN stop keeping the last good checkpoint, learning."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from train_helpers import digit_examples, small_cfg, tiny_model, tokenizer

from semievol_jax import rng, sharding
from semievol_jax.train import (
    CheckpointMismatchError,
    DataError,
    ModelSetupError,
    NonFiniteLossError,
    SFTExample,
    TrainConfigError,
    train,
)
from semievol_jax.train import loop as loop_lib
from semievol_jax.train.data import tokenize_example


def _train(model, examples, cfg, tmp_path):
    return train(model, tokenizer(), examples, cfg, tmp_path, mesh=sharding.make_mesh(),
                 key=rng.key_for(0, "train"))


@pytest.fixture(scope="module")
def lora_model():
    return tiny_model("lora")


def test_empty_set_bad_lr_and_mode_fail_before_any_compute(tmp_path, lora_model):
    with pytest.raises(DataError, match="empty training set"):
        _train(lora_model, [], small_cfg(), tmp_path)
    for lr in (0.0, -1e-3):
        with pytest.raises(TrainConfigError, match="learning_rate"):
            _train(lora_model, digit_examples(8), small_cfg(learning_rate=lr), tmp_path)
    with pytest.raises(ModelSetupError, match="no nnx.LoRAParam"):
        _train(tiny_model("full"), digit_examples(8), small_cfg(mode="lora"), tmp_path)
    with pytest.raises(DataError, match="lose their whole response"):
        _train(lora_model, [SFTExample("seven " * 40, "one")], small_cfg(), tmp_path)


def test_nan_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real = loop_lib.make_optimizer

    def poisoned(cfg, total):
        """The real optimizer, except that its third and later updates are NaN."""
        inner = real(cfg, total)

        def init(params):
            return (inner.init(params), jnp.int32(0))

        def update(g, state, params=None):
            u, s = inner.update(g, state[0], params)
            poison = jnp.where(state[1] >= 2, jnp.nan, 0.0)
            return jax.tree.map(lambda x: x + poison, u), (s, state[1] + 1)

        return optax.GradientTransformation(init, update)

    monkeypatch.setattr(loop_lib, "make_optimizer", poisoned)
    model = tiny_model("lora")
    before = loop_lib.param_checksum(model)
    with pytest.raises(NonFiniteLossError, match=r"optimizer step 3 of 5.*checkpoint: step 2"):
        _train(model, digit_examples(40), small_cfg(checkpoint_every=2), tmp_path)
    ckpts = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts == [2]
    # Other data in the same work_dir: refused, not silently resumed.
    with pytest.raises(CheckpointMismatchError, match="data_digest"):
        _train(tiny_model("lora"), digit_examples(40, seed=5), small_cfg(checkpoint_every=2),
               tmp_path)
    # The caller's model is untouched by the failed run.
    np.testing.assert_array_equal(loop_lib.param_checksum(model), before)


def _first_token_accuracy(model, examples):
    tok = tokenizer()
    hits = 0
    for ex in examples:
        ids, mask = tokenize_example(tok, ex)
        first = int(np.argmax(mask))
        out = model(jnp.asarray(ids[None, :first]), jnp.arange(first)[None])
        hits += int(jnp.argmax(out.logits_BTV[0, -1]) == ids[first])
    return hits / len(examples)


def test_training_learns_the_copy_task(tmp_path):
    """Full FT on 'copy the last digit': loss < 0.5, held-out accuracy well above 10%."""
    model = tiny_model("full")
    held_out = digit_examples(50, seed=99)
    before = _first_token_accuracy(model, held_out)
    cfg = small_cfg(mode="full", learning_rate=3e-3, epochs=3, batch_size=16,
                    checkpoint_every=1000, warmup_ratio=0.05)
    res = _train(model, digit_examples(16 * 40), cfg, tmp_path)
    after = _first_token_accuracy(model, held_out)
    assert res.steps == 120 and np.mean(res.losses[-10:]) < 0.5, res.losses[-10:]
    assert after >= 0.5 > before + 0.2, (before, after)
    lines = res.metrics_path.read_text().splitlines()
    assert len(lines) == 120 and '"tokens_per_sec"' in lines[-1]


def test_direct_lora_grad_trains_as_autodiff_does(tmp_path):
    """train.lora_grad "direct" reaches the same losses up to rounding, is refused when
    unknown, and is left out of records at its default (digests made without it hold)."""
    from semievol_jax.files import to_jsonable

    with pytest.raises(TrainConfigError, match="train.lora_grad must be one of autodiff"):
        _train(tiny_model("lora"), digit_examples(8), small_cfg(lora_grad="fast"), tmp_path)
    runs = {g: _train(tiny_model("lora"), digit_examples(32), small_cfg(epochs=2, lora_grad=g),
                      tmp_path / g) for g in ("autodiff", "direct")}
    ref, got = runs["autodiff"].losses, runs["direct"].losses
    assert len(ref) == len(got) == 8 and ref[-1] < ref[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4)
    assert "lora_grad" not in to_jsonable(small_cfg())
    assert to_jsonable(small_cfg(lora_grad="direct"))["lora_grad"] == "direct"
