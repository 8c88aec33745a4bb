"""scripts/bench_common.py's decode-matmul ceiling: the work it times is one decode
step's matmuls (no timing is asserted)."""

import sys
from pathlib import Path

import jax
import pytest
from flax import nnx

from semievol_jax.model import Llama, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_common  # noqa: E402

SHAPE = dict(vocab_size=96, hidden_size=48, intermediate_size=80, num_layers=3, num_heads=6,
             num_kv_heads=2, head_dim=8)


def test_projections_are_every_matrix_of_a_layer():
    """The seven (out, in) pairs times the layers, plus the tied head, are every weight
    matrix of the model: the ceiling times all of a step's weight matmuls and no more."""
    model = nnx.eval_shape(lambda: Llama(LlamaConfig(**SHAPE, tie_word_embeddings=True),
                                         rngs=nnx.Rngs(0)))
    matrices = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)) if x.ndim >= 3
                   or x.shape == (SHAPE["vocab_size"], SHAPE["hidden_size"]))
    per_layer = sum(o * n for o, n in bench_common.decode_projections(SHAPE))
    assert matrices == SHAPE["num_layers"] * per_layer + SHAPE["vocab_size"] * SHAPE[
        "hidden_size"]


@pytest.mark.slow  # torch's side runs in a child process of its own
def test_ceiling_is_rows_per_step_second_for_each_framework():
    c = bench_common.decode_matmul_ceiling(SHAPE, rows=4)
    assert c["rows"] == 4 and c["dtype"] == "float32"
    frameworks = ["jax", "torch"] if "torch" in c else ["jax"]
    for fw in frameworks:
        assert c[fw]["step_s"] > 0
        assert c[fw]["tokens_per_s"] == pytest.approx(4 / c[fw]["step_s"], rel=1e-3)

