"""load_hf onto an 8-device CPU mesh: params land in their logical shardings, same logits,
and save_hf from the sharded model reproduces the checkpoint bit for bit."""

import json
import subprocess
import sys
import textwrap

import pytest

from semievol_jax.sharding import cpu_devices_env

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import jax, numpy as np
    from safetensors.numpy import load_file
    from semievol_jax.model import LoraConfig, load_hf, save_hf
    from semievol_jax.sharding import MeshConfig, make_mesh

    ckpt, out = Path(sys.argv[1]), Path(sys.argv[2])
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    sharded, cfg = load_hf(ckpt, mesh=mesh, lora=LoraConfig(rank=4))
    plain, _ = load_hf(ckpt, lora=LoraConfig(rank=4))
    tokens = np.arange(16, dtype=np.int32).reshape(2, 8) % cfg.vocab_size
    positions = np.tile(np.arange(8, dtype=np.int32), (2, 1))
    fwd = lambda m: np.asarray(jax.jit(lambda t, p: m(t, p).logits_BTV)(tokens, positions))
    attn = sharded.layers.attn  # stacked: leading layer axis, replicated
    save_hf(sharded, out)
    a, b = load_file(ckpt / "model.safetensors"), load_file(out / "model.safetensors")
    print(json.dumps({
        "q_spec": [str(x) for x in attn.q.w[...].sharding.spec],
        "lora_b_spec": [str(x) for x in attn.q.lora_b[...].sharding.spec],
        "embed_spec": [str(x) for x in sharded.embedding_VD[...].sharding.spec],
        "n_devices": len(attn.q.w[...].sharding.device_set),
        "max_diff": float(np.abs(fwd(sharded) - fwd(plain)).max()),
        "same_files": sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a),
    }))
""")


@pytest.mark.slow
def test_load_onto_mesh(tiny_ckpt_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_ckpt_dir), str(tmp_path / "out")],
        env=cpu_devices_env(8), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["n_devices"] == 8
    assert r["q_spec"] == ["None", "tensor", "None", "fsdp"]  # w_LNHD: layers, heads, ., embed
    assert r["lora_b_spec"] == ["None", "tensor", "None", "None"]
    assert r["embed_spec"] == ["tensor", "fsdp"]  # vocab, embed
    assert r["max_diff"] <= 1e-5
    assert r["same_files"]
