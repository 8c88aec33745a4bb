"""scripts/bench_common.py: the decode-matmul ceiling times one decode step's matmuls,
the matmul peaks pick their size, and records name the CPU so that machines are told
apart (no timing is asserted)."""

import math
import sys
from pathlib import Path

import pytest
from flax import nnx

from semievol_jax.model import Llama, LlamaConfig
from semievol_jax.model.lora import Dense

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_common  # noqa: E402

# num_heads x head_dim (72) differs from hidden_size (48), so swapping them shows.
SHAPE = dict(vocab_size=96, hidden_size=48, intermediate_size=80, num_layers=3, num_heads=6,
             num_kv_heads=2, head_dim=12)


def test_projections_are_every_matrix_of_a_layer():
    """The seven (out, in) pairs are the (out, in) of every projection of a layer, so
    the ceiling times all of a step's weight matmuls and no more."""
    model = nnx.eval_shape(lambda: Llama(LlamaConfig(**SHAPE, tie_word_embeddings=True),
                                         rngs=nnx.Rngs(0)))
    shapes = []
    for _, m in nnx.iter_modules(model.layers):
        if isinstance(m, Dense):  # w: [L, *out, *in]
            dims = m.w.shape[1:]
            n_out = len(m.out_axes)
            shapes.append((math.prod(dims[:n_out]), math.prod(dims[n_out:])))
    assert sorted(shapes) == sorted(bench_common.decode_projections(SHAPE))


def test_peak_size_shrinks_only_where_the_full_matmul_would_take_over_a_second():
    def timer(flops_per_s):
        sizes = []

        def time_at(m, repeats):
            sizes.append(m)
            return 2 * m**3 / flops_per_s

        return time_at, sizes

    fast, sizes = timer(100e9)  # 2048^3 in 0.17 s: timed at full size
    assert bench_common._peak_flops(fast, 2048) == (pytest.approx(100e9), 2048)
    assert sizes == [256, 2048]
    slow, sizes = timer(1e9)  # emulated: about 0.2 s a matmul, a multiple of 64
    flops, m = bench_common._peak_flops(slow, 2048)
    assert flops == pytest.approx(1e9) and m % 64 == 0 and 0.1 < 2 * m**3 / 1e9 < 0.3


@pytest.mark.slow  # torch's side runs in a child process of its own
def test_ceiling_is_rows_per_step_second_for_each_framework():
    c = bench_common.decode_matmul_ceiling(SHAPE, rows=4)
    assert c["rows"] == 4 and c["dtype"] == "float32"
    frameworks = ["jax", "torch"] if "torch" in c else ["jax"]
    for fw in frameworks:
        assert c[fw]["step_s"] > 0
        assert c[fw]["tokens_per_s"] == pytest.approx(4 / c[fw]["step_s"], rel=1e-3)


def test_cpu_model_names_family_model_and_isa(monkeypatch):
    """Two parts that share a model name ("AMD EPYC") get different records."""
    def info(model, flags):
        return {"model name": "AMD EPYC", "cpu family": "25", "model": model, "flags": flags}

    monkeypatch.setattr(bench_common, "_cpuinfo", lambda: info("17", "fpu avx2 avx512f sse"))
    zen4 = bench_common.cpu_model()
    assert zen4 == "AMD EPYC (family 25 model 17; avx2, avx512f)"
    monkeypatch.setattr(bench_common, "_cpuinfo", lambda: info("1", "fpu avx2 sse"))
    assert bench_common.cpu_model() == "AMD EPYC (family 25 model 1; avx2)"
    monkeypatch.setattr(bench_common, "_cpuinfo", lambda: {})
    assert bench_common.cpu_model()  # no /proc/cpuinfo: the platform's name
