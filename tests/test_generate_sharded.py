"""generate() and embed() on an 8-device CPU mesh (data 2 x fsdp 2 x tensor 2) give the
same samples and embeddings as the unsharded model, with either key layout."""

import json
import subprocess
import sys
import textwrap

import pytest

from semievol_jax.sharding import cpu_devices_env

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from semievol_jax.generate import SampleConfig, embed, generate
    from semievol_jax.model import load_hf, load_tokenizer
    from semievol_jax.sharding import MeshConfig, make_mesh

    ckpt = sys.argv[1]
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    sharded, _ = load_hf(ckpt, mesh=mesh)
    plain, _ = load_hf(ckpt)
    tok = load_tokenizer(ckpt)
    prompts = ["The quick brown fox", "Rain", "Question: Which option is correct?"]
    cfg = SampleConfig(temperature=1.0, max_new_tokens=8, stop=(), batch_size=4)
    run = lambda m, mesh: generate(m, tok, prompts, cfg, key=jax.random.key(3),
                                   num_samples=2, mesh=mesh, progress=False)
    a, b = run(sharded, mesh), run(plain, None)
    cfg = SampleConfig(temperature=1.0, max_new_tokens=8, stop=(), batch_size=4,
                       key_layout="HS")
    c = run(sharded, mesh)  # keys stored [H, S] per head, on the mesh
    ea, eb = embed(sharded, tok, prompts, mesh=mesh), embed(plain, tok, prompts)
    print(json.dumps({
        "same_tokens": all(np.array_equal(x.token_ids, y.token_ids)
                           for p, q in zip(a, b) for x, y in zip(p, q)),
        "logprob_diff": max(float(np.abs(x.logprobs - y.logprobs).max())
                            for p, q in zip(a, b) for x, y in zip(p, q)),
        "embed_diff": float(np.abs(ea - eb).max()),
        "hs_same_tokens": all(np.array_equal(x.token_ids, y.token_ids)
                              for p, q in zip(c, b) for x, y in zip(p, q)),
        "hs_logprob_diff": max(float(np.abs(x.logprobs - y.logprobs).max())
                               for p, q in zip(c, b) for x, y in zip(p, q)),
    }))
""")


@pytest.mark.slow
def test_sharded_generate_and_embed_match_unsharded(tiny_ckpt_dir):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_ckpt_dir)],
                          env=cpu_devices_env(8), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["same_tokens"]
    assert r["logprob_diff"] <= 1e-4
    assert r["embed_diff"] <= 1e-4
    assert r["hs_same_tokens"]
    assert r["hs_logprob_diff"] <= 1e-4
