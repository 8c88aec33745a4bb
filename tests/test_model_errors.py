"""Bad checkpoints fail with one CheckpointError naming the file, key or tensor."""

import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from semievol_jax.errors import UserError
from semievol_jax.model import CheckpointError, LoraConfig, hf_io, load_hf, load_peft_adapter


@pytest.fixture
def ckpt(tiny_ckpt_dir, tmp_path):
    """A private copy of the tiny checkpoint to break."""
    return shutil.copytree(tiny_ckpt_dir, tmp_path / "ckpt")


def _edit_weights(ckpt, fn):
    tensors = load_file(ckpt / "model.safetensors")
    fn(tensors)
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})


def _edit_config(ckpt, **changes):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(changes)
    (ckpt / "config.json").write_text(json.dumps(cfg))


def test_missing_tensor(ckpt):
    _edit_weights(ckpt, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError,
                       match=r"'model\.layers\.1\.mlp\.up_proj\.weight' is missing"):
        load_hf(ckpt)


def test_wrong_shape(ckpt):
    def shrink(t):
        name = "model.layers.0.self_attn.k_proj.weight"
        t[name] = t[name][:8]

    _edit_weights(ckpt, shrink)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor "
                       r"'model\.layers\.0\.self_attn\.k_proj\.weight' has shape \(8, 64\), "
                       r"expected \(32, 64\)"):
        load_hf(ckpt)


def test_unknown_model_type_and_remote_code_never_run(ckpt):
    marker = ckpt / "EXECUTED"
    (ckpt / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    _edit_config(ckpt, model_type="evil_llama",
                 auto_map={"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    with pytest.raises(CheckpointError, match=r"config\.json: model_type 'evil_llama' is not "
                       r"supported .*never executed"):
        load_hf(ckpt)
    assert not marker.exists()


def test_load_tokenizer_never_trusts_remote_code(tiny_ckpt_dir, monkeypatch):
    import transformers

    seen = {}

    def fake(path, **kw):
        seen.update(kw)
        return "tok"

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    assert hf_io.load_tokenizer(tiny_ckpt_dir) == "tok"
    assert seen["trust_remote_code"] is False


@pytest.mark.parametrize("rope", [{"rope_type": "yarn", "factor": 4.0},
                                  {"rope_type": "dynamic", "factor": 2.0}])
def test_unsupported_rope_type(ckpt, rope):
    _edit_config(ckpt, rope_parameters={**rope, "rope_theta": 10000.0}, rope_scaling=None)
    with pytest.raises(CheckpointError, match=f"rope type '{rope['rope_type']}' is not supported"):
        load_hf(ckpt)


def test_llama3_rope_missing_field(ckpt):
    _edit_config(ckpt, rope_parameters={"rope_type": "llama3", "factor": 8.0}, rope_scaling=None)
    with pytest.raises(CheckpointError, match="llama3 rope scaling lacks"):
        load_hf(ckpt)


def test_missing_config_key(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    del cfg["hidden_size"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="required key 'hidden_size' missing"):
        load_hf(ckpt)


def test_pickle_only_refused_unless_allowed(ckpt, tiny_model):
    torch = pytest.importorskip("torch")
    tensors = load_file(ckpt / "model.safetensors")
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, ckpt / "pytorch_model.bin")
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"only pickle weights \(pytorch_model\.bin\).*"
                       "allow_pickle=True"):
        load_hf(ckpt)
    model, _ = load_hf(ckpt, allow_pickle=True)
    for (p, a), (q, b) in zip(nnx.to_flat_state(nnx.state(model, nnx.Param)),
                              nnx.to_flat_state(nnx.state(tiny_model.model, nnx.Param)),
                              strict=True):
        assert p == q
        np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]))


def test_missing_shard(ckpt):
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00002.safetensors"}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="shard model-00002.safetensors is missing"):
        load_hf(ckpt)


def test_no_such_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        load_hf(tmp_path / "nope" / "deeper")
    with pytest.raises(UserError):  # the CLI shows these without a traceback
        load_hf(tmp_path / "nope" / "deeper")


def test_hub_id_downloads_only_safe_files(tiny_ckpt_dir, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, allow_patterns))
        return str(tiny_ckpt_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    assert hf_io.resolve_checkpoint("some-org/some-model") == tiny_ckpt_dir
    repo, patterns = calls[0]
    assert repo == "some-org/some-model"
    assert "*.safetensors" in patterns and "tokenizer*" in patterns
    assert not any(p.endswith((".bin", ".py", ".pt")) for p in patterns)


def test_adapter_mismatch(tiny_model, tmp_path):
    from semievol_jax.model import save_peft_adapter
    from semievol_jax.model.llama import Llama

    model = Llama(tiny_model.cfg, lora=LoraConfig(rank=4, alpha=8.0), rngs=nnx.Rngs(0))
    adapter = save_peft_adapter(model, tmp_path / "ad", "base")
    other = Llama(tiny_model.cfg, lora=LoraConfig(rank=2, alpha=8.0), rngs=nnx.Rngs(0))
    with pytest.raises(CheckpointError, match="adapter is r=4"):
        load_peft_adapter(other, adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(CheckpointError, match="use_dora=True is not supported"):
        load_peft_adapter(model, adapter)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    tensors = load_file(adapter / "adapter_model.safetensors")
    key = "base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight"
    tensors.pop(key)
    save_file(tensors, adapter / "adapter_model.safetensors")
    with pytest.raises(CheckpointError, match=f"'{key}' is missing"):
        load_peft_adapter(model, adapter)
    assert jax.tree.leaves(nnx.state(model))  # model untouched enough to keep using
