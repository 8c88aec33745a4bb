"""SFT data: chat rendering, response-only mask, cutoff, buckets, seeded step-addressed batches."""

import numpy as np
import pytest
from train_helpers import digit_examples, tokenizer

from semievol_jax.train import DataError, SFTExample
from semievol_jax.train.data import SFTBatcher, padded_length, tokenize_example, tokenize_examples


def test_mask_covers_exactly_the_response_and_end_of_turn():
    tok = tokenizer()
    ids, mask = tokenize_example(tok, SFTExample("what is two", "two"))
    text = tok.decode(ids)
    prompt_only = tok.apply_chat_template([{"role": "user", "content": "what is two"}],
                                          tokenize=False, add_generation_prompt=True)
    assert text.startswith(prompt_only)
    resp = tok.decode(ids[mask])
    assert resp.startswith("two") and tok.eos_token in resp
    assert not mask[: len(tok(prompt_only, add_special_tokens=False)["input_ids"])].any()


def test_empty_set_and_bad_rows_are_clear_errors():
    tok = tokenizer()
    with pytest.raises(DataError, match="empty training set"):
        tokenize_examples(tok, [], 32)
    with pytest.raises(DataError, match="example 1 has an empty response"):
        tokenize_examples(tok, [SFTExample("a", "b"), SFTExample("c", " ")], 32)
    with pytest.raises(DataError, match="example 0 is a dict"):
        tokenize_examples(tok, [{"prompt": "a", "response": "b"}], 32)


def test_over_long_examples_are_cut_counted_and_reported(caplog):
    tok = tokenizer()
    long = SFTExample("one two three " * 20, "four five")
    data = tokenize_examples(tok, [long, SFTExample("hi", "one")], cutoff_len=24)
    assert data.num_truncated == 1 and data.num_dropped == 1 and len(data) == 1
    assert "truncated" in caplog.text and "#0" in caplog.text
    with pytest.raises(DataError, match="lose their whole response at cutoff_len=24"):
        tokenize_examples(tok, [long], cutoff_len=24)
    kept = tokenize_examples(tok, [SFTExample("hi", "one two three " * 20)], cutoff_len=24)
    assert kept.num_truncated == 1 and len(kept.ids[0]) == 24 and kept.loss_mask[0].any()


def test_padded_length():
    assert padded_length(10, (16, 32), 64) == 16
    assert padded_length(17, (16, 32), 64) == 32
    assert padded_length(40, (16, 32), 64) == 64
    assert padded_length(40, (16, 128), 64) == 64


def _batcher(n=20, seed=3, **kw):
    data = tokenize_examples(tokenizer(), digit_examples(n), 32)
    args = dict(batch_size=8, micro_batch_size=4, cutoff_len=32, buckets=(16, 32), seed=seed,
                pad_id=tokenizer().pad_token_id)
    args.update(kw)
    return SFTBatcher(data, **args)


def test_batches_are_a_pure_function_of_seed_and_step():
    a, b = _batcher(), _batcher()
    assert a.steps_per_epoch == 3
    for step in (0, 4, 2):  # any order: the position is just the step
        x, y = a.batch_at(step), b.batch_at(step)
        np.testing.assert_array_equal(x.tokens_ABT, y.tokens_ABT)
    assert x.tokens_ABT.shape[:2] == (2, 4)
    # Each epoch is a permutation: every example once, epochs differ, seeds differ.
    assert sorted(a.permutation(0)) == list(range(20))
    assert not np.array_equal(a.permutation(0), a.permutation(1))
    assert not np.array_equal(a.permutation(0), _batcher(seed=4).permutation(0))
    assert a.position(4) == {"step": 4, "epoch": 1, "batch_in_epoch": 1}


def test_batch_layout_shift_mask_and_padding_rows():
    bt = _batcher(n=10)
    last = bt.batch_at(1)  # rows 8..9 real, 6 padding rows with no loss
    tok, tgt, m, v = last.tokens_ABT, last.targets_ABT, last.loss_mask_ABT, last.valid_ABT
    flat_v = v.reshape(8, -1)
    assert flat_v[:2].any(axis=1).all() and not flat_v[2:].any()
    assert not m.reshape(8, -1)[2:].any()
    assert not (m & ~v).any()  # loss only on real tokens
    # Targets are inputs shifted by one.
    row, n = tok.reshape(8, -1)[0], int(flat_v[0].sum())
    np.testing.assert_array_equal(tgt.reshape(8, -1)[0][: n - 1], row[1:n])
    # Process slices pick rows of every microbatch.
    part = bt.batch_at(1, process=(0, 2))
    assert part.tokens_ABT.shape[:2] == (2, 2)


def test_score_positions_list_each_rows_loss_targets_in_a_power_of_two():
    from semievol_jax.train.data import score_positions

    mask = np.zeros((3, 40), bool)
    mask[0, 30:39] = True  # 9 response targets -> R = 16
    mask[1, [5, 7, 20]] = True  # not contiguous (a multi-turn mask)
    at, keep = score_positions(mask)
    assert at.shape == keep.shape == (3, 16)
    np.testing.assert_array_equal(at[0, :9], np.arange(30, 39))
    np.testing.assert_array_equal(at[1, :3], [5, 7, 20])
    assert keep.sum(axis=1).tolist() == [9, 3, 0]  # a padding row scores nothing
    # Gathering the mask at the kept slots recovers exactly the loss positions.
    for b in range(3):
        assert sorted(at[b][keep[b]]) == list(np.flatnonzero(mask[b]))
    assert score_positions(np.ones((2, 4), bool))[0].shape == (2, 4)  # R <= T


def test_batches_score_every_loss_target_once():
    bt = _batcher(n=10)
    for step in range(bt.steps_per_epoch):
        x = bt.batch_at(step)
        m = x.loss_mask_ABT.reshape(-1, x.loss_mask_ABT.shape[-1])
        at = x.score_at_ABR.reshape(-1, x.score_at_ABR.shape[-1])
        keep = x.score_mask_ABR.reshape(at.shape)
        assert int(keep.sum()) == int(m.sum())
        for r in range(m.shape[0]):
            assert m[r, at[r][keep[r]]].all()
