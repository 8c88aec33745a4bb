"""Text-level generate(): HF parity, log-probs, stops, keys across bucketings, edge cases."""

import dataclasses

import jax
import numpy as np
import pytest
from test_generate_decode import teacher_forced

from semievol_jax.generate import PromptError, SampleConfig, generate, render_prompt
from semievol_jax.generate import decode as decode_lib
from semievol_jax.generate.generator import bucket_length, plan_batches, tokenize_prompts

PROMPTS = [
    "The quick brown fox",
    "Question: Which option is correct? Options: A. red B. green C. blue D. yellow",
    "Rain",
]
GREEDY = SampleConfig(temperature=0.0, max_new_tokens=10, stop=(), batch_size=4)
SAMPLED = SampleConfig(temperature=1.0, max_new_tokens=10, stop=(), batch_size=4)


@pytest.fixture(scope="module")
def greedy_out(tiny_model):
    return generate(tiny_model.model, tiny_model.tokenizer, PROMPTS, GREEDY,
                    key=jax.random.key(0), progress=False)


def test_greedy_matches_hf_generate(tiny_model, greedy_out):
    torch = pytest.importorskip("torch")
    from transformers import LlamaForCausalLM

    tok = tiny_model.tokenizer
    hf = LlamaForCausalLM.from_pretrained(tiny_model.ckpt_dir, dtype=torch.float32).eval()
    batch = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    eos = list(tiny_model.cfg.eos_token_id)
    with torch.no_grad():
        out = hf.generate(**batch, do_sample=False, max_new_tokens=10, eos_token_id=eos,
                          pad_token_id=tok.pad_token_id)
    new = out[:, batch["input_ids"].shape[1]:].numpy()
    for i, samples in enumerate(greedy_out):
        ids = samples[0].token_ids
        np.testing.assert_array_equal(ids, new[i, :len(ids)])
        if samples[0].finish_reason == "eos":
            assert ids[-1] in eos
        else:
            assert len(ids) == 10


@pytest.fixture(scope="module")
def sampled_out(tiny_model):
    return generate(tiny_model.model, tiny_model.tokenizer, PROMPTS, SAMPLED,
                    key=jax.random.key(1), num_samples=2, progress=False)


def test_logprobs_match_teacher_forcing_and_entropy_uses_response_only(tiny_model,
                                                                       sampled_out):
    ids = tokenize_prompts(tiny_model.tokenizer, PROMPTS)
    flat = [(i, s) for i, samples in enumerate(sampled_out) for s in samples]
    ref = teacher_forced(tiny_model.model, [np.asarray(ids[i]) for i, _ in flat],
                         [s.token_ids for _, s in flat])
    for (_, s), (_, lp) in zip(flat, ref, strict=True):
        assert len(s.token_ids) == len(s.logprobs) == len(s.sample_logprobs) >= 1
        np.testing.assert_allclose(s.logprobs, lp, atol=1e-4)
        np.testing.assert_allclose(s.sample_logprobs, lp, atol=1e-4)  # T=1, no filter
        assert s.entropy == pytest.approx(-np.mean(lp), abs=1e-4)


def test_stop_string_cuts_text_tokens_and_entropy(tiny_model, greedy_out):
    full = greedy_out[1][0]
    assert len(full.text) >= 4
    stop = full.text[2:4]
    cfg = dataclasses.replace(GREEDY, stop=(stop,))
    cut = generate(tiny_model.model, tiny_model.tokenizer, PROMPTS, cfg,
                   key=jax.random.key(0), progress=False)[1][0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[:full.text.index(stop)]
    n = len(cut.token_ids)
    np.testing.assert_array_equal(cut.token_ids, full.token_ids[:n])
    # The kept tokens end with the one that completed the stop string.
    assert stop in tiny_model.tokenizer.decode(cut.token_ids)
    assert stop not in tiny_model.tokenizer.decode(cut.token_ids[:-1])
    assert cut.entropy == pytest.approx(-np.mean(full.logprobs[:n]), abs=1e-6)


def test_keys_give_same_samples_under_any_bucketing(tiny_model, sampled_out):
    kw = dict(key=jax.random.key(1), num_samples=2, progress=False)
    # A sub-list batches differently (B=2 instead of 4) but keeps each prompt's index.
    part = generate(tiny_model.model, tiny_model.tokenizer, PROMPTS[:2], SAMPLED, **kw)
    texts = [[s.text for s in x] for x in sampled_out]
    assert [[s.text for s in x] for x in part] == texts[:2]
    again = generate(tiny_model.model, tiny_model.tokenizer, PROMPTS[:2], SAMPLED, **kw)
    assert [[s.text for s in x] for x in again] == texts[:2]
    other = generate(tiny_model.model, tiny_model.tokenizer, PROMPTS[:2], SAMPLED,
                     **{**kw, "key": jax.random.key(2)})
    assert [[s.text for s in x] for x in other] != texts[:2]
    assert any(x[0].text != x[1].text for x in sampled_out)


def test_compilations_stay_within_bucket_count(tiny_model):
    rng = np.random.RandomState(0)
    words = "the cat sat on the mat and a dog ran in the park".split()
    prompts = [" ".join(rng.choice(words, rng.randint(1, 40))) for _ in range(40)]
    cfg = SampleConfig(temperature=1.0, max_new_tokens=2, stop=(), batch_size=8)
    lengths = [len(x) for x in tokenize_prompts(tiny_model.tokenizer, prompts)]
    buckets = {bucket_length(n) for n in lengths}
    assert len(buckets) >= 3
    before = sum(decode_lib.TRACES.values())
    out = generate(tiny_model.model, tiny_model.tokenizer, prompts, cfg,
                   key=jax.random.key(0), progress=False)
    assert len(out) == 40 and all(len(x) == 1 for x in out)
    assert sum(decode_lib.TRACES.values()) - before <= len(buckets)
    # A second pass compiles nothing.
    mid = sum(decode_lib.TRACES.values())
    generate(tiny_model.model, tiny_model.tokenizer, prompts[::-1], cfg,
             key=jax.random.key(1), progress=False)
    assert sum(decode_lib.TRACES.values()) == mid


def test_plan_batches_sorts_and_buckets():
    lengths = [40, 3, 17, 16, 200, 5]
    plan = plan_batches(lengths, 2)
    assert [idx for idx, _ in plan] == [[1, 5], [3, 2], [0, 4]]
    assert [t for _, t in plan] == [16, 24, 256]  # lengths 1.5x apart: 17 -> 24, 200 -> 256


def test_plan_batches_puts_long_prompts_in_smaller_batches():
    """Under a per-length cap (a cache budget) one long prompt does not pad a full batch
    of short ones to its length: it waits for a batch of its own."""
    lengths = [10] * 7 + [300]
    plan = plan_batches(lengths, 4, rows_for=lambda t: 4 if t <= 16 else 1)
    assert [(len(idx), t) for idx, t in plan] == [(4, 16), (3, 16), (1, 384)]
    assert plan_batches(lengths, 4) == [([0, 1, 2, 3], 16), ([4, 5, 6, 7], 384)]


def test_long_and_empty_prompts_and_zero_new_tokens(tiny_model):
    tok = tiny_model.tokenizer
    long = "The cat sat on the mat. " * 200
    with pytest.raises(PromptError, match=r"prompt\(s\) exceed.*0 \("):
        generate(tiny_model.model, tok, [long], GREEDY, key=jax.random.key(0), progress=False)
    cfg = dataclasses.replace(GREEDY, truncate="left")
    out = generate(tiny_model.model, tok, [long, "", "Rain"], cfg, key=jax.random.key(0),
                   progress=False)
    n = len(tokenize_prompts(tok, [long])[0])
    room = tiny_model.cfg.max_position_embeddings - GREEDY.max_new_tokens
    assert out[0][0].prompt_tokens_dropped == n - room > 0
    assert out[1][0].prompt_tokens_dropped == out[2][0].prompt_tokens_dropped == 0
    assert len(out[0][0].token_ids) >= 1
    assert len(out[1][0].token_ids) >= 1  # "" is conditioned on BOS alone
    zero = dataclasses.replace(GREEDY, max_new_tokens=0)
    out = generate(tiny_model.model, tok, PROMPTS, zero, key=jax.random.key(0),
                   num_samples=2, progress=False)
    assert all(s.text == "" and len(s.token_ids) == 0 and s.finish_reason == "length"
               and np.isnan(s.entropy) for x in out for s in x)
    with pytest.raises(PromptError, match="prompt 1 is int"):
        generate(tiny_model.model, tok, ["a", 3], GREEDY, key=jax.random.key(0),
                 progress=False)


def test_render_prompt_uses_chat_template(tiny_model):
    text = render_prompt(tiny_model.tokenizer, "What is 2+2?")
    assert "What is 2+2?" in text and text.endswith("<|assistant|>\n")
    ids = tokenize_prompts(tiny_model.tokenizer, [text])[0]
    bos = tiny_model.tokenizer.bos_token_id
    assert ids[0] == bos and ids[1] != bos  # one BOS, not two


def test_bucket_lengths_are_powers_of_two_and_their_three_quarters():
    from semievol_jax.generate.generator import bucket_length

    assert [bucket_length(n) for n in (1, 16, 17, 25, 33, 49, 65, 97, 129, 193, 1000)] == [
        16, 16, 24, 32, 48, 64, 96, 128, 192, 256, 1024]
    for n in range(1, 2000):
        b = bucket_length(n)
        assert b >= n and b <= max(16, 1.5 * n) and b in {2**k for k in range(4, 12)} | {
            3 * 2**k for k in range(3, 11)}
