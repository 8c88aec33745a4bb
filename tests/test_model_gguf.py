"""GGUF checkpoints: every GGML type against the gguf library's dequantization, the Q/K
permutation, tokenizer and chat template from metadata, `convert gguf`, and bad files."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFReader, quants
from gguf_helpers import (
    _TEXT,
    DEQUANT_ONLY,
    QUANTIZABLE,
    Q,
    gguf_name,
    hf_arrays,
    permute,
    write_tiny_gguf,
)

from semievol_jax.cli import main as cli_main
from semievol_jax.model import CheckpointError, load_hf, load_tokenizer, save_hf
from semievol_jax.model.hf_io import resolve_checkpoint
from semievol_jax.model.tiny import train_tokenizer


def _logits(model, tokens):
    import jax.numpy as jnp

    T = tokens.shape[1]
    return np.asarray(model(jnp.asarray(tokens), jnp.arange(T)[None].repeat(len(tokens), 0))
                      .logits_BTV)


TOKENS = np.array([[5, 17, 250, 3, 99, 42, 7, 300], [1, 2, 3, 4, 5, 6, 7, 8]], np.int32)


@pytest.mark.parametrize("qtype", QUANTIZABLE + DEQUANT_ONLY, ids=lambda q: q.name)
def test_every_tensor_equals_the_library_dequantization(tmp_path, qtype):
    path, _ = write_tiny_gguf(tmp_path / "m.gguf", qtype, tie=qtype != Q.Q8_0)
    model, cfg = load_hf(path)
    assert cfg.tie_word_embeddings == (qtype != Q.Q8_0)
    loaded = hf_arrays(model, cfg)
    reader = GGUFReader(path)
    by_name = {t.name: t for t in reader.tensors}
    assert len(by_name) == len(loaded)
    for hf, got in loaded.items():
        t = by_name[gguf_name(hf)]
        want = quants.dequantize(t.data, t.tensor_type).reshape(got.shape)
        if ".q_proj." in hf:  # the file holds llama.cpp's interleaved rows
            got = permute(got, cfg.num_heads)
        elif ".k_proj." in hf:
            got = permute(got, cfg.num_kv_heads)
        np.testing.assert_array_equal(got, want, err_msg=hf)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_f32_file_gives_the_source_model_logits(tmp_path, tie):
    """An F32 GGUF is the source model exactly: the Q/K rows are put back in HF order."""
    path, _ = write_tiny_gguf(tmp_path / "m.gguf", Q.F32, tie=tie)
    from gguf_helpers import tiny_gguf_model

    source, tokenizer, _ = tiny_gguf_model(tie=tie)
    hf_dir = save_hf(source, tmp_path / "hf", tokenizer)
    want = _logits(load_hf(hf_dir)[0], TOKENS)
    np.testing.assert_array_equal(_logits(load_hf(path)[0], TOKENS), want)


def test_parity_with_transformers_gguf_loader(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path, _ = write_tiny_gguf(tmp_path / "m.gguf", Q.Q8_0, tie=False)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(torch.tensor(TOKENS.astype(np.int64))).logits.numpy()
    got = _logits(load_hf(path)[0], TOKENS)
    assert np.abs(got - want).max() < 1e-4


def test_tokenizer_and_chat_template_from_metadata(tmp_path):
    path, _ = write_tiny_gguf(tmp_path / "m.gguf", Q.Q4_0)
    tok = load_tokenizer(path)
    source = train_tokenizer(_TEXT, 384)
    for text in ["Answer: B. the fox", "unicode \u00fc\u00ef \U0001f600\n\n  x", ""]:
        assert tok(text)["input_ids"] == source(text)["input_ids"]
    chat = [{"role": "user", "content": "Which option?"}]
    assert (tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            == source.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (
        source.bos_token, source.eos_token, source.pad_token)


def test_tokenizer_is_built_once_then_read_from_its_cache(tmp_path, monkeypatch):
    from semievol_jax.model import gguf_io

    monkeypatch.setenv("SEMIEVOL_CACHE", str(tmp_path / "cache"))
    path, _ = write_tiny_gguf(tmp_path / "m.gguf", Q.Q4_0)
    gguf_io._tokenizer.cache_clear()
    built = load_tokenizer(path)
    entry = gguf_io.tokenizer_cache_entry(path)
    assert (entry / "tokenizer.json").is_file()
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # no temp dir left

    def no_build(_path):
        raise AssertionError("built again")

    monkeypatch.setattr(gguf_io, "_build_tokenizer", no_build)
    gguf_io._tokenizer.cache_clear()
    cached = load_tokenizer(path)
    texts = ["Answer: B. the fox", "unicode \u00fc \U0001f600\n\n  x", ""]
    chat = [{"role": "user", "content": "Which option?"}]
    for tok in (built, cached):
        assert [tok(t)["input_ids"] for t in texts] == [
            train_tokenizer(_TEXT, 384)(t)["input_ids"] for t in texts]
        assert (tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
                == built.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
        assert (tok.bos_token, tok.eos_token, tok.pad_token) == (
            built.bos_token, built.eos_token, built.pad_token)

    # a damaged entry is rebuilt, with a warning, into the same tokenizer
    (entry / "tokenizer.json").write_text("{not json")
    monkeypatch.undo()
    monkeypatch.setenv("SEMIEVOL_CACHE", str(tmp_path / "cache"))
    gguf_io._tokenizer.cache_clear()
    with pytest.warns(UserWarning, match="unreadable cached tokenizer"):
        again = load_tokenizer(path)
    assert [again(t)["input_ids"] for t in texts] == [built(t)["input_ids"] for t in texts]
    gguf_io._tokenizer.cache_clear()


def test_convert_gguf_writes_a_checkpoint_transformers_loads(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path, _ = write_tiny_gguf(tmp_path / "m.gguf", Q.Q5_1, tie=True)
    out = tmp_path / "hf"
    assert cli_main(["convert", "gguf", str(path), str(out)]) == 0
    ref = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(torch.tensor(TOKENS.astype(np.int64))).logits.numpy()
    assert np.abs(_logits(load_hf(path)[0], TOKENS) - want).max() < 1e-4
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok("Answer: B.")["input_ids"] == load_tokenizer(path)("Answer: B.")["input_ids"]
    assert tok.chat_template == load_tokenizer(path).chat_template
    # a second conversion onto the written directory is refused, and leaves it intact
    assert cli_main(["convert", "gguf", str(path), str(out)]) == 2
    assert (out / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".hf.tmp-*"))


def test_gguf_path_resolves_where_a_checkpoint_is_accepted(tmp_path):
    path, _ = write_tiny_gguf(tmp_path / "m.gguf", Q.F16)
    assert resolve_checkpoint(path) == path
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="checkpoint directory or a .gguf file"):
        resolve_checkpoint(other)
    with pytest.raises(CheckpointError, match="no such GGUF file"):
        resolve_checkpoint(tmp_path / "absent.gguf")


# ------------------------------------------------------------------------- bad files


def _expect(path, *needles, capsys=None):
    with pytest.raises(CheckpointError) as e:
        load_hf(path)
    message = str(e.value)
    assert str(path.name) in message and "\n" not in message
    for needle in needles:
        assert needle in message, message
    if capsys is not None:  # the CLI says it in one line with exit code 2
        assert cli_main(["convert", "gguf", str(path), str(path.parent / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("semievol: error:") and path.name in err[0]
        assert not (path.parent / "out").exists()


def test_truncated_file(tmp_path, capsys):
    path, _ = write_tiny_gguf(tmp_path / "m.gguf", Q.Q8_0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4096])
    _expect(path, "is truncated", "tensor 'blk.1.", capsys=capsys)
    path.write_bytes(data[:100])  # cut inside the metadata
    _expect(path, "not a readable GGUF file")


def test_architecture_that_is_not_llama(tmp_path, capsys):
    path, _ = write_tiny_gguf(tmp_path / "g.gguf", Q.F16, arch="gemma3")
    _expect(path, "general.architecture 'gemma3' is not supported", capsys=capsys)


def test_missing_tensor(tmp_path, capsys):
    path, _ = write_tiny_gguf(tmp_path / "m.gguf", Q.Q4_1, drop="blk.1.ffn_up.weight")
    _expect(path, "'blk.1.ffn_up.weight' is missing", capsys=capsys)


def test_tensor_of_the_wrong_shape(tmp_path, capsys):
    path, _ = write_tiny_gguf(tmp_path / "m.gguf", Q.F32, wrong_shape="blk.0.attn_k.weight")
    _expect(path, "'blk.0.attn_k.weight' has shape (96, 256), expected (128, 256)",
            capsys=capsys)


def test_unknown_quantization_type(tmp_path, capsys):
    path, _ = write_tiny_gguf(tmp_path / "m.gguf", Q.Q8_0)
    reader = GGUFReader(path, "r+")
    target = next(t for t in reader.tensors if t.name == "blk.0.ffn_gate.weight")
    target.field.parts[4][0] = 250  # the type code of the tensor-info record
    reader.data.flush()
    del reader
    _expect(path, "'blk.0.ffn_gate.weight' has unknown GGML type 250", capsys=capsys)


def test_extra_tensor_is_refused(tmp_path):
    import gguf

    path, _ = write_tiny_gguf(tmp_path / "m.gguf", Q.F32)
    reader = GGUFReader(path)
    w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "llama")
    for key, field in reader.fields.items():
        if key.startswith(("GGUF.", "general.architecture")):
            continue
        w.add_key_value(key, field.contents(), field.types[0],
                        sub_type=field.types[-1] if len(field.types) > 1 else None)
    for t in reader.tensors:
        w.add_tensor(t.name, np.asarray(t.data))
    w.add_tensor("blk.0.attn_q.bias", np.zeros(256, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _expect(tmp_path / "x.gguf", "'blk.0.attn_q.bias' is not part of a Llama model")
