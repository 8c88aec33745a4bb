"""SmolLM2-135M-Instruct, the real GGUF file: logits and greedy generation against
transformers' own GGUF loader, its tokenizer and chat template, and `convert gguf`.

Marked `real_model`: the file is fetched (about 93 MB, once, into $SEMIEVOL_CACHE) by
`semievol fetch smollm2-135m-instruct`; CI fetches it before running these.
"""

from __future__ import annotations

import numpy as np
import pytest

from semievol_jax.model import registry

pytestmark = pytest.mark.real_model
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

NAME = "smollm2-135m-instruct"
PROMPTS = [
    "What is the capital of France?",
    "Which of these is a mammal?\nA. shark\nB. dolphin\nC. trout\nD. octopus\n"
    "Your response should end with a line of the form 'Answer: LETTER'.",
    "Please judge the sentiment of the following sentence:\nOperating profit rose 20% "
    "year on year.\nOptions:\nA. negative\nB. neutral\nC. positive",
    "Write one sentence about the sea.",
    "What is 12 + 30?",
    "Name a primary color.",
    "Explain photosynthesis in one sentence.",
    "  Leading spaces, ünïcødé and an emoji 😀: repeat them.",
]


@pytest.fixture(scope="module")
def gguf_path():
    if not registry.is_fetched(NAME):
        try:
            registry.fetch(NAME)
        except registry.FetchError as e:
            pytest.skip(f"SmolLM2 not fetched and not fetchable here: {e}")
    return registry.fetch(NAME)


@pytest.fixture(scope="module")
def reference(gguf_path):
    """transformers' own GGUF loader (dequantizing) and tokenizer: the parity reference."""
    folder, name = str(gguf_path.parent), gguf_path.name
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32).eval()
    return model, tok


@pytest.fixture(scope="module")
def ours(gguf_path):
    from semievol_jax.model import load_hf, load_tokenizer

    model, cfg = load_hf(NAME)
    return model, load_tokenizer(NAME), cfg


def test_config_from_metadata(ours):
    _, _, cfg = ours
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads,
            cfg.intermediate_size, cfg.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert cfg.tie_word_embeddings and cfg.rope_theta == 100000.0


def test_tokenizer_and_chat_template_equal_transformers(ours, reference):
    _, tok, _ = ours
    _, ref = reference
    for p in PROMPTS:
        assert tok(p)["input_ids"] == ref(p)["input_ids"]
        chat = [{"role": "user", "content": p}]
        assert (tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
                == ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))


def test_logits_match_transformers(ours, reference):
    import jax.numpy as jnp

    model, tok, _ = ours
    ref_model, _ = reference
    worst = 0.0
    for p in PROMPTS[:4]:
        ids = np.asarray([tok(p)["input_ids"]], np.int32)
        with torch.no_grad():
            want = ref_model(torch.tensor(ids.astype(np.int64))).logits[0].numpy()
        T = ids.shape[1]
        got = np.asarray(model(jnp.asarray(ids), jnp.arange(T)[None]).logits_BTV[0])
        worst = max(worst, float(np.abs(got - want).max()))
    assert worst <= 2e-4, worst


def test_greedy_generation_equals_hf_generate(ours, reference):
    import jax

    from semievol_jax.generate import SampleConfig, generate, render_prompt

    model, tok, _ = ours
    ref_model, ref_tok = reference
    rendered = [render_prompt(tok, p) for p in PROMPTS]
    cfg = SampleConfig(temperature=0.0, max_new_tokens=24, stop=(), batch_size=8)
    got = generate(model, tok, rendered, cfg, key=jax.random.key(0), progress=False)
    for text, samples in zip(rendered, got, strict=True):
        ids = ref_tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = ref_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=24, do_sample=False)
        want = out[0, ids.shape[1]:].tolist()
        assert samples[0].token_ids.tolist() == want, (text, samples[0].text)


def test_convert_gguf_output_loads_in_transformers(gguf_path, reference, tmp_path):
    from semievol_jax.cli import main as cli_main

    ref_model, ref_tok = reference
    out = tmp_path / "smollm2-hf"
    assert cli_main(["convert", "gguf", NAME, str(out)]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([ref_tok(PROMPTS[1])["input_ids"]])
    with torch.no_grad():
        a, b = hf(ids).logits, ref_model(ids).logits
    assert float((a - b).abs().max()) <= 2e-4
    chat = [{"role": "user", "content": PROMPTS[0]}]
    assert (tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            == ref_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
