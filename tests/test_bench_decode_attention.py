"""scripts/bench_decode_attention.py at a toy shape: the three cache layouts compute the
model's attention, and the record holds what docs/results.md reads (no timing is
asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import bench_decode_attention as bda  # noqa: E402

from semievol_jax.model.llama import _attend  # noqa: E402


def test_in_place_attention_is_the_models():
    """The reduction form gives the model's `_attend` for one query per row and head."""
    key = jax.random.key(0)
    B, K, G, H, S = 2, 3, 2, 8, 11
    q = jax.random.normal(key, (B, K, G, H))
    k = jax.random.normal(jax.random.fold_in(key, 1), (B, K, H, S))
    v = jax.random.normal(jax.random.fold_in(key, 2), (B, K, S, H))
    mask = jnp.arange(S)[None] < jnp.array([[5], [11]])
    want = _attend(q[:, :, :, None], k, v, mask[:, None], jnp.float32, key_layout="HS")
    got = bda._in_place_attend(q, k, v, mask)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want[:, :, :, 0]), atol=1e-5)
    # Masked slots count for nothing: changing them changes no output.
    v2 = v.at[0, :, 5:].set(100.0)
    np.testing.assert_allclose(np.asarray(bda._in_place_attend(q, k, v2, mask)),
                               np.asarray(got), atol=1e-5)


def test_script_writes_every_variant(tmp_path):
    out = tmp_path / "a.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_decode_attention.py"),
                           "--tiny", "--rounds", "2", "--slots", "8", "--cache-len", "32",
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads(out.read_text())["runs"]["tiny/cpu"]
    assert set(run["variants"]) == set(bda.VARIANTS)
    for r in run["variants"].values():
        assert r["best_s"] > 0 and r["best_s"] <= r["median_s"]
        assert r["max_abs_diff_vs_stacked"] < 1e-5  # every variant computes the same step
    assert run["cache_bytes"] == 2 * 2 * 8 * 2 * 16 * 32 * 4  # K and V, L B K H S, fp32
    assert run["matmuls_step_s"] > 0 and run["command"].startswith("python scripts/")
