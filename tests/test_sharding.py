"""Mesh building, logical->mesh rules, batch sharding, named RNG streams."""

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from semievol_jax import rng, sharding


def _mesh(d, f, t):
    return AbstractMesh((d, f, t), sharding.MESH_AXES)


def test_rules_follow_the_interface_table():
    m = _mesh(2, 2, 2)
    assert sharding.logical_to_spec(("embed", "heads", "head_dim"), m, (64, 4, 16)) == \
        PartitionSpec("fsdp", "tensor", None)
    assert sharding.logical_to_spec(("vocab", "embed"), m, (320, 64)) == \
        PartitionSpec("tensor", "fsdp")
    assert sharding.logical_to_spec(("batch", "seq"), m) == PartitionSpec(("data", "fsdp"), None)
    assert sharding.logical_to_spec(("lora_rank", "embed"), m, (4, 64)) == \
        PartitionSpec(None, "fsdp")


def test_indivisible_or_reused_axes_are_replicated():
    m = _mesh(1, 2, 4)
    # 2 kv heads cannot split 4 ways: replicated, not an XLA error.
    assert sharding.logical_to_spec(("embed", "kv_heads", "head_dim"), m, (64, 2, 16)) == \
        PartitionSpec("fsdp", None, None)
    # heads and mlp both map to tensor: only the first dimension gets it.
    assert sharding.logical_to_spec(("heads", "mlp"), m, (4, 8)) == PartitionSpec("tensor", None)
    # size-1 mesh axes are dropped.
    assert sharding.logical_to_spec(("batch",), _mesh(4, 1, 1)) == PartitionSpec("data")


def test_unknown_logical_name_is_a_clear_error():
    with pytest.raises(sharding.ShardingError, match="'widgets' has no mesh rule"):
        sharding.logical_to_spec(("widgets",), _mesh(1, 1, 1))


def test_make_mesh_sizes_and_errors():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == sharding.MESH_AXES
    assert mesh.devices.size == len(jax.devices())
    with pytest.raises(sharding.ShardingError, match="devices"):
        sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=len(jax.devices()) + 1))
    with pytest.raises(sharding.ShardingError, match="bad mesh sizes"):
        sharding.make_mesh(sharding.MeshConfig(data=-1, fsdp=-1))


def test_shard_model_places_params_and_batch_helpers():
    from train_helpers import tiny_model

    mesh = sharding.make_mesh()
    model = sharding.shard_model(tiny_model("lora"), mesh)
    w = model.layers.attn.q.w[...]
    assert w.sharding.mesh.axis_names == sharding.MESH_AXES
    x = np.arange(8, dtype=np.int32).reshape(2, 4)
    g = sharding.make_global_batch(x, sharding.batch_sharding(mesh))
    np.testing.assert_array_equal(np.asarray(g), x)
    assert sharding.process_slice(8) == slice(0, 8)
    assert sharding.is_main_process()


def test_named_streams_are_stable_and_independent():
    a = jax.random.key_data(rng.key_for(0, "data"))
    assert np.array_equal(a, jax.random.key_data(rng.key_for(0, "data")))
    assert not np.array_equal(a, jax.random.key_data(rng.key_for(0, "model")))
    assert not np.array_equal(a, jax.random.key_data(rng.key_for(1, "data")))
    # The stream does not depend on which other streams were asked for first.
    ks = rng.keys_for(0, "sample", "data")
    assert np.array_equal(a, jax.random.key_data(ks["data"]))
    # Pinned value: a change of the hashing scheme would silently reshuffle every run.
    assert rng.name_hash("data") == rng.name_hash("data") and rng.name_hash("data") == 2041605690
    assert rng.numpy_rng(0, "data", 1).integers(1000) == rng.numpy_rng(0, "data", 1).integers(1000)
    with pytest.raises(ValueError):
        rng.key_for(0, "")
