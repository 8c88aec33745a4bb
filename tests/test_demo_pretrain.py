"""The demo's `base` stage: from-scratch pretraining of a tiny Llama on the corpus."""

from __future__ import annotations

import json

import numpy as np
import pytest

from semievol_jax.pipeline.data import synth
from semievol_jax.train.pretrain import PretrainConfig, PretrainError, pack_corpus, pretrain_base

# Small enough to compile and run in seconds: 1 layer, width 32, 8 steps.
TINY = PretrainConfig(vocab_size=300, hidden_size=32, num_layers=1, num_heads=2,
                      num_kv_heads=1, intermediate_size=64, seq_len=32, batch_size=2,
                      steps=8, warmup_steps=1, learning_rate=1e-2)


@pytest.fixture(scope="module")
def corpus():
    cfg = synth.SynthConfig(num_people=8, num_practice_people=4, bios_per_person=2,
                            quizzes_per_practice_person=2, num_labeled=8, num_unlabeled=24,
                            num_test=8)
    return synth.make_corpus(synth.make_world(cfg), cfg)


@pytest.fixture(scope="module")
def two_runs(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    a = pretrain_base(corpus, root / "a", cfg=TINY, seed=1, log=lambda _: None)
    b = pretrain_base(corpus, root / "b", cfg=TINY, seed=1, log=lambda _: None)
    return a, b


def test_same_seed_gives_bit_identical_weights(two_runs):
    from safetensors.numpy import load_file

    a, b = (load_file(p / "model.safetensors") for p in two_runs)
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    assert (two_runs[0] / "tokenizer.json").read_bytes() == \
        (two_runs[1] / "tokenizer.json").read_bytes()


def test_training_moves_the_weights_and_records_the_loss(two_runs):
    metrics = json.loads((two_runs[0] / "pretrain_metrics.json").read_text())
    assert len(metrics["loss"]) == TINY.steps and all(np.isfinite(metrics["loss"]))
    assert metrics["loss"][-1] < metrics["loss"][0]  # from ~log(300): the unigram statistics alone


def test_saved_base_loads_with_load_hf_and_transformers(two_runs):
    import jax.numpy as jnp

    from semievol_jax.model import load_hf, load_tokenizer

    path = two_runs[0]
    model, cfg = load_hf(path)
    tok = load_tokenizer(path)
    assert (cfg.hidden_size, cfg.num_layers, cfg.vocab_size) == (32, 1, len(tok))
    chat = tok.apply_chat_template([{"role": "user", "content": "Where does Bralo live?"}],
                                   tokenize=False, add_generation_prompt=True)
    ids = tok(chat, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == chat
    tokens = jnp.asarray([ids])
    logits = np.asarray(model(tokens, jnp.arange(len(ids))[None]).logits_BTV)

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    assert transformers.AutoTokenizer.from_pretrained(path)(chat, add_special_tokens=False)[
        "input_ids"] == ids
    hf = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(logits, ref, atol=1e-4)


def test_pack_corpus_is_seeded_and_marks_documents():
    docs = [[5, 6], [7], [8, 9, 10]]
    a = pack_corpus(docs, bos=1, eos=2, rows=3, row_len=5, seed=0)
    assert a.shape == (3, 5) and a.dtype == np.int32
    assert (a == pack_corpus(docs, bos=1, eos=2, rows=3, row_len=5, seed=0)).all()
    assert (a == 1).sum() >= 3 and a[0, 0] == 1  # every row stream starts at a document


@pytest.mark.parametrize("corpus_texts, cfg, match", [
    ([], TINY, "no non-empty document"),
    (["  ", ""], TINY, "no non-empty document"),
    (["a b c"], PretrainConfig(hidden_size=30, num_heads=4), "must divide"),
    (["a b c"], PretrainConfig(steps=0), "must be positive"),
])
def test_bad_input_raises_pretrain_error(tmp_path, corpus_texts, cfg, match):
    with pytest.raises(PretrainError, match=match):
        pretrain_base(corpus_texts, tmp_path / "x", cfg=cfg, log=lambda _: None)
