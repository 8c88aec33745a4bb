"""Packing: several examples per row as segments give the unpacked loss and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import digit_examples, tiny_model, tokenizer

from semievol_jax.train import SFTExample
from semievol_jax.train import step as step_lib
from semievol_jax.train.data import SFTBatcher, tokenize_examples
from semievol_jax.train.packing import (
    first_fit_decreasing,
    plan_rows,
    plan_shapes,
    row_lengths,
)


def test_first_fit_decreasing_fills_rows_longest_first_and_refuses_what_cannot_fit():
    assert first_fit_decreasing([5, 3, 4, 2], 7) == [[0, 3], [2, 1]]
    assert first_fit_decreasing([3, 3, 3], 9) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="example 1 has 8 tokens"):
        first_fit_decreasing([2, 8], 7)


def test_row_length_balances_padding_against_attention():
    # 8 examples of 143 tokens: unpacked [8, 192] = 1536 slots; rows of 640 hold four.
    rows, length, bins = plan_rows([[143] * 8], bucket=192, cap=1024)
    assert (rows, length) == (2, 640) and sorted(len(b) for b in bins[0]) == [4, 4]
    # Attention cost grows with the row: a heavy enough weight keeps the bucket.
    assert plan_rows([[143] * 8], bucket=192, cap=1024, attention_cost=1.0)[:2] == (8, 192)
    # Rows divide over the mesh's batch ways.
    assert plan_rows([[143] * 8], bucket=192, cap=1024, row_multiple=4)[0] % 4 == 0
    assert row_lengths(143, 192, 512) == [192, 256, 384, 512]


def _varied_examples(n=12):
    """Prompts of very different lengths, so unpacked rows are mostly padding."""
    r = np.random.default_rng(1)
    return [SFTExample("copy the last digit: " + " ".join(map(str, r.integers(0, 10, k))),
                       str(k % 10)) for k in r.integers(2, 40, n)]


def _batchers(**kw):
    data = tokenize_examples(tokenizer(), _varied_examples(), 128)
    args = dict(batch_size=8, micro_batch_size=4, cutoff_len=128, buckets=(32, 64, 128),
                seed=0, pad_id=tokenizer().pad_token_id)
    args.update(kw)
    return SFTBatcher(data, **args), SFTBatcher(data, pack=True, pack_length=128, **args)


def test_a_packed_step_holds_every_token_of_its_examples_once():
    plain, packed = _batchers()
    for step in range(plain.steps_per_epoch):
        x, y = plain.batch_at(step), packed.batch_at(step)
        assert y.tokens_ABT.size < x.tokens_ABT.size  # less padding
        assert int(y.valid_ABT.sum()) == int(x.valid_ABT.sum())
        assert int(y.loss_mask_ABT.sum()) == int(x.loss_mask_ABT.sum())
        assert int(y.score_mask_ABR.sum()) == int(y.loss_mask_ABT.sum())
        # Each microbatch packs its own examples: the same token multiset per microbatch.
        for a in range(x.tokens_ABT.shape[0]):
            np.testing.assert_array_equal(np.sort(x.tokens_ABT[a][x.valid_ABT[a]]),
                                          np.sort(y.tokens_ABT[a][y.valid_ABT[a]]))
        # Positions restart in each segment; padding is segment 0.
        seg, pos = y.segment_ABT, y.positions_ABT
        assert ((seg > 0) == y.valid_ABT).all()
        starts = (seg > 0) & np.concatenate(
            [np.ones_like(seg[..., :1], bool), seg[..., 1:] != seg[..., :-1]], axis=-1)
        assert (pos[starts] == 0).all()


def _loss_and_grads(model, batch):
    split = step_lib.split_model(model, "lora")

    def loss(params):
        total, count = 0.0, 0.0
        for a in range(batch.tokens_ABT.shape[0]):
            mb = jax.tree.map(lambda x, a=a: jnp.asarray(x[a]), batch)
            out = split.merge(params, split.rest)(
                mb.tokens_ABT, mb.positions_ABT, valid_BT=mb.valid_ABT,
                segment_BT=mb.segment_ABT, logits_at_BR=mb.score_at_ABR)
            targets = jnp.take_along_axis(mb.targets_ABT, mb.score_at_ABR, axis=1)
            s, n = step_lib.masked_cross_entropy(out.logits_BTV, targets, mb.score_mask_ABR)
            total, count = total + s, count + n
        return total / count

    return jax.jit(jax.value_and_grad(loss))(split.params)


def test_packed_loss_and_gradients_equal_the_unpacked_ones():
    from flax import nnx

    model = tiny_model()
    # Nonzero adapters, so every LoRA gradient is exercised.
    state = nnx.state(model, nnx.LoRAParam)
    keys = iter(jax.random.split(jax.random.key(0), 100))
    nnx.update(model, jax.tree.map(lambda x: 0.1 * jax.random.normal(next(keys), x.shape),
                                   state))
    plain, packed = _batchers()
    for step in range(2):
        l0, g0 = _loss_and_grads(model, plain.batch_at(step))
        l1, g1 = _loss_and_grads(model, packed.batch_at(step))
        np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
        for k in g0:
            np.testing.assert_allclose(np.asarray(g1[k]), np.asarray(g0[k]), rtol=1e-4,
                                       atol=1e-6, err_msg=k)


def test_packed_training_runs_and_learns(tmp_path):
    from train_helpers import small_cfg

    from semievol_jax import rng, sharding
    from semievol_jax.train import train

    mesh = sharding.make_mesh(sharding.MeshConfig())
    cfg = small_cfg(pack=True, pack_length=64, length_buckets=(32,), epochs=2)
    res = train(tiny_model(), tokenizer(), digit_examples(32), cfg, tmp_path, mesh=mesh,
                key=rng.key_for(0, "train"))
    assert np.isfinite(res.losses).all() and res.losses[-1] < res.losses[0]


def test_a_run_plan_shares_few_shapes_and_every_step_still_fits():
    # Steps whose own best shapes all differ; a price per program folds them together.
    steps = [([[143] * 4, [143] * 4], 192, 512), ([[300, 120, 90, 60]] * 2, 384, 512),
             ([[500, 40, 30, 20]] * 2, 512, 512), ([[60] * 4] * 2, 64, 512)]
    alone = plan_shapes(steps, program_cost=0.0)
    shared = plan_shapes(steps, program_cost=1e6)
    assert len(set(alone)) > len(set(shared)) == 1
    assert plan_shapes(steps, program_cost=1e6) == shared  # a pure function
    for (groups, _, _), (rows, length) in zip(steps, shared, strict=True):
        assert all(len(first_fit_decreasing(g, length)) <= rows for g in groups)
    # A moderate price keeps a second shape: one shape costs 768 more tokens of work.
    assert alone == [(2, 384), (2, 384), (2, 512), (1, 256)]
    assert len(set(plan_shapes(steps, program_cost=600.0))) == 2
    assert len(set(plan_shapes(steps, program_cost=900.0))) == 1


def test_planned_batches_hold_every_token_once_in_few_shapes():
    data = tokenize_examples(tokenizer(), _varied_examples(24), 128)
    args = dict(batch_size=4, micro_batch_size=2, cutoff_len=128, buckets=(32, 64, 128),
                seed=0, pad_id=tokenizer().pad_token_id, pack=True, pack_length=128)
    own, planned = SFTBatcher(data, **args), SFTBatcher(data, program_cost=1e6, **args)
    steps = 2 * own.steps_per_epoch
    own.plan(steps)
    planned.plan(steps)
    shapes = {own.batch_at(s).score_at_ABR.shape[1:] + own.batch_at(s).tokens_ABT.shape[1:]
              for s in range(steps)}
    planned_shapes = set()
    for s in range(steps):
        x, y = own.batch_at(s), planned.batch_at(s)
        planned_shapes.add(y.score_at_ABR.shape[1:] + y.tokens_ABT.shape[1:])
        assert int(y.valid_ABT.sum()) == int(x.valid_ABT.sum())
        assert int(y.score_mask_ABR.sum()) == int(x.loss_mask_ABT.sum())
        for a in range(x.tokens_ABT.shape[0]):
            np.testing.assert_array_equal(np.sort(x.tokens_ABT[a][x.valid_ABT[a]]),
                                          np.sort(y.tokens_ABT[a][y.valid_ABT[a]]))
    assert len(planned_shapes) == 1 < len(shapes)
    with pytest.raises(ValueError, match="past the"):
        planned.batch_at(steps)
    # A resumed run's saved seed replans: the same shapes as a batcher built with it.
    planned.reseed(7)
    fresh = SFTBatcher(data, program_cost=1e6, **{**args, "seed": 7})
    fresh.plan(steps)
    for s in range(steps):
        np.testing.assert_array_equal(planned.batch_at(s).tokens_ABT, fresh.batch_at(s).tokens_ABT)


def test_program_cost_must_be_a_finite_non_negative_number():
    from semievol_jax.train.config import TrainConfig, TrainConfigError

    for bad in (-1.0, float("nan"), "many"):
        with pytest.raises(TrainConfigError, match="train.program_cost"):
            TrainConfig(program_cost=bad).validate()

