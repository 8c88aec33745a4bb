"""Two processes with a model loaded without a mesh and no mesh passed: generate and embed
build the all-device data mesh, place the local params on it and split the rows."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from multihost_helpers import launch, wait

# argv: process id, process count, port, checkpoint dir, output dir.
WORKER = r"""
import pickle, sys
from pathlib import Path
from semievol_jax import sharding
pid, nproc, port, ckpt, out = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                               sys.argv[4], Path(sys.argv[5]))
sharding.initialize_runtime(sharding.MeshConfig(
    distributed=True, coordinator=f"localhost:{port}", num_processes=nproc, process_id=pid))
from semievol_jax import rng
from semievol_jax.generate import SampleConfig, embed, generate
from semievol_jax.model import load_hf, load_tokenizer
model, _ = load_hf(ckpt)  # no mesh anywhere: the calls build the 2-process data mesh
tok = load_tokenizer(ckpt)
texts = [f"row {i} " * (i + 1) for i in range(3)]  # 3 rows over 2 processes
gen = generate(model, tok, texts, SampleConfig(temperature=0.0, max_new_tokens=3, stop=()),
               key=rng.key_for(0, "q"), progress=False)
(out / f"{pid}.pkl").write_bytes(pickle.dumps(
    {"emb": embed(model, tok, texts), "tokens": [s[0].token_ids.tolist() for s in gen]}))
"""


@pytest.mark.slow  # ~50 s on 2 shared cores
def test_two_processes_embed_and_generate(tmp_path, tiny_model):
    from semievol_jax import rng
    from semievol_jax.generate import SampleConfig, embed, generate

    wait(launch(WORKER, 2, 1, [str(tiny_model.ckpt_dir), str(tmp_path)]), timeout=300)
    texts = [f"row {i} " * (i + 1) for i in range(3)]
    ref_emb = embed(tiny_model.model, tiny_model.tokenizer, texts)
    ref = generate(tiny_model.model, tiny_model.tokenizer, texts,
                   SampleConfig(temperature=0.0, max_new_tokens=3, stop=()),
                   key=rng.key_for(0, "q"), progress=False)
    for pid in range(2):
        got = pickle.loads((tmp_path / f"{pid}.pkl").read_bytes())
        # One device here, a 2-device mesh there: equal up to float rounding.
        np.testing.assert_allclose(got["emb"], ref_emb, atol=1e-5)
        assert got["tokens"] == [s[0].token_ids.tolist() for s in ref]
