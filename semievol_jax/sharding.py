"""The device mesh, the logical->mesh axis rules, NamedShardings, and multi-host start-up.

This is the only module that names mesh axes. Model code annotates every parameter
with logical axis names (``embed``, ``heads``, ``mlp``, ...; see docs/interfaces.md);
``LOGICAL_RULES`` maps each logical name to mesh axes of the one mesh
``("data", "fsdp", "tensor")``. A dimension that the mapped mesh axes do not divide,
or a mesh axis already used by an earlier dimension of the same tensor, is left
replicated rather than failing, so the tiny test model and an 8B model run through
the same code on any mesh.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axes (in order). The table of docs/interfaces.md.
LOGICAL_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),
    "seq": (),
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    "vocab": ("tensor",),
    "lora_rank": (),
    "layers": (),
}


class ShardingError(ValueError):
    """A mesh that cannot be built or a logical axis name with no rule."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape and multi-host start-up."""

    data: int = -1  # data-parallel ways; -1 = all devices left after fsdp*tensor
    fsdp: int = 1  # ways to shard params/opt state over (ZeRO-3 style), also a batch axis
    tensor: int = 1  # tensor-parallel ways (heads, mlp, vocab)
    distributed: bool = False  # call jax.distributed.initialize() before building the mesh
    coordinator: str | None = None  # "host:port" of process 0; None = auto-detect (TPU/SLURM)
    num_processes: int | None = None  # total processes; None = auto-detect
    process_id: int | None = None  # this process's index; None = auto-detect


def initialize_runtime(cfg: MeshConfig) -> None:
    """Set the project's XLA flags and, if asked, join the multi-host job.

    Must run before anything touches a JAX backend (``jax.devices()``, array
    creation): XLA reads ``XLA_FLAGS`` and the distributed client only then.
    On Cloud TPU / SLURM ``jax.distributed.initialize()`` finds the coordinator
    itself, so the three address fields may stay ``None``.

    Args:
      cfg: the mesh config; only ``distributed`` and the address fields are read.
    """
    from jax._src import xla_bridge

    from semievol_jax import environment

    environment.set_determinism_flags()
    if xla_bridge.backends_are_initialized():
        log.warning("JAX backends already initialised: XLA_FLAGS changes will not apply")
    if cfg.distributed and not jax.distributed.is_initialized():
        kwargs: dict[str, Any] = {}
        if cfg.coordinator is not None:
            kwargs["coordinator_address"] = cfg.coordinator
        if cfg.num_processes is not None:
            kwargs["num_processes"] = cfg.num_processes
        if cfg.process_id is not None:
            kwargs["process_id"] = cfg.process_id
        jax.distributed.initialize(**kwargs)


def is_main_process() -> bool:
    """True on process 0 only: the one process that writes files shared by all."""
    return jax.process_index() == 0


def make_mesh(cfg: MeshConfig = MeshConfig(), devices: Sequence[Any] | None = None) -> Mesh:
    """Build the ``("data", "fsdp", "tensor")`` mesh over all (or the given) devices.

    Args:
      cfg: axis sizes; ``data=-1`` takes every device ``fsdp * tensor`` leaves.
      devices: devices to use; default ``jax.devices()`` (all processes).

    Returns:
      A mesh with Auto axis types (shardings are set by jit in/out shardings).

    Raises:
      ShardingError: sizes that do not multiply to the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ShardingError(f"bad mesh sizes data={cfg.data} fsdp={cfg.fsdp} tensor={cfg.tensor}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n % known:
            raise ShardingError(f"{n} devices not divisible by fixed mesh axes product {known}")
        sizes[sizes.index(-1)] = n // known
    if math.prod(sizes) != n:
        raise ShardingError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} != {n} devices"
        )
    auto = (jax.sharding.AxisType.Auto,) * 3
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=auto, devices=devices)


def logical_to_spec(
    names: Sequence[str | None], mesh: Mesh, shape: Sequence[int] | None = None
) -> PartitionSpec:
    """PartitionSpec for a tensor whose dimensions carry these logical names.

    Args:
      names: one logical name (or None = replicated) per dimension.
      mesh: the mesh whose axis sizes decide divisibility.
      shape: the tensor shape; when given, a dimension the mesh axes do not divide
        is replicated instead of raising inside XLA.

    Raises:
      ShardingError: a logical name with no rule.
    """
    used: set[str] = set()
    spec: list[Any] = []
    for i, name in enumerate(names):
        if name is None:
            spec.append(None)
            continue
        if name not in LOGICAL_RULES:
            raise ShardingError(
                f"logical axis {name!r} has no mesh rule (known: {list(LOGICAL_RULES)})"
            )
        axes = tuple(a for a in LOGICAL_RULES[name] if a not in used and mesh.shape[a] > 1)
        ways = math.prod(mesh.shape[a] for a in axes)
        if shape is not None and ways > 1 and shape[i] % ways:
            # e.g. 2 kv heads on a 4-way tensor axis: replicate that dimension.
            axes = ()
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def logical_to_sharding(
    names: Sequence[str | None], mesh: Mesh, shape: Sequence[int] | None = None
) -> NamedSharding:
    """NamedSharding for a tensor with these logical dimension names (see logical_to_spec)."""
    return NamedSharding(mesh, logical_to_spec(names, mesh, shape))


def _variable_names(var: nnx.Variable) -> tuple[str | None, ...] | None:
    meta = var.get_metadata()
    for key in ("out_sharding", "sharding_names", "sharding"):
        names = meta.get(key)
        if names:
            return tuple(names)
    return None


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """NamedSharding per leaf of an nnx State (or a model), from its logical names.

    Leaves without logical names (scalars, RNG counters) are replicated.
    """

    def one(x: Any) -> Any:
        if isinstance(x, nnx.Variable):
            names = _variable_names(x)
            shape = getattr(x.get_value(), "shape", ())
            if names is None or len(names) != len(shape):
                return x.replace(NamedSharding(mesh, PartitionSpec()))
            return x.replace(logical_to_sharding(names, mesh, shape))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def put(tree: Any, shardings: Any, *, copy: bool = False) -> Any:
    """``jax.device_put`` that also works across processes.

    Multi-process, every process holds the same host value (same seed, same file), and
    each device takes its slice of it (``make_array_from_callback``); single-process this
    is ``device_put``.

    Args:
      tree: arrays (host or single-device), including typed PRNG keys.
      shardings: a matching tree (or prefix) of target shardings.
      copy: never alias the input buffers (the result will be donated).
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings, may_alias=False if copy else None)

    def one(x: Any, s: NamedSharding) -> jax.Array:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            # Already a global array (e.g. a model loaded onto the mesh): reshard on
            # device; there is no full host copy to slice.
            return jax.device_put(x, s, may_alias=False if copy else None)
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            return jax.random.wrap_key_data(one(jax.random.key_data(x), s),
                                            impl=jax.random.key_impl(x))
        host = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(host.shape, s, lambda idx: host[idx])

    return jax.tree.map(one, tree, shardings)


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
    """Place every variable of ``model`` on ``mesh`` by its logical axis names (in place).

    Returns:
      The same model object, its arrays now sharded.
    """
    state = nnx.state(model)
    shardings = state_shardings(state, mesh)
    nnx.update(model, put(state, shardings))
    return model


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding (scalars, step counters, RNG keys)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_ways(mesh: Mesh | None) -> int:
    """How many ways the mesh splits a batch's rows (its ``batch`` axes)."""
    if mesh is None:
        return 1
    return math.prod(mesh.shape[a] for a in LOGICAL_RULES["batch"])


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a ``[B, T, ...]`` input: batch over ``data x fsdp``, the rest replicated."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), mesh))


def make_global_batch(local: np.ndarray, sharding: NamedSharding, batch_axis: int = 0) -> jax.Array:
    """Assemble a global array from each process's local rows.

    Every process passes its own contiguous slice of the global batch (process p
    holds rows ``[p*b, (p+1)*b)``); single-process this is a plain device_put.

    Args:
      local: ``[b_local, ...]`` rows this process read.
      sharding: the global array's sharding (usually ``batch_sharding``).
      batch_axis: the axis that is split across processes.
    """
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    global_shape = list(local.shape)
    global_shape[batch_axis] *= jax.process_count()
    return jax.make_array_from_process_local_data(sharding, local, tuple(global_shape))


def process_slice(global_batch: int) -> slice:
    """The rows of a global batch that this process reads (see make_global_batch)."""
    n = jax.process_count()
    if global_batch % n:
        raise ShardingError(f"global batch {global_batch} not divisible by {n} processes")
    b = global_batch // n
    return slice(jax.process_index() * b, (jax.process_index() + 1) * b)


def cpu_devices_env(n: int) -> dict[str, str]:
    """Environment for a subprocess that simulates ``n`` CPU devices (tests, benches)."""
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    return env


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name``; no-op in a single process.

    Stage directories are written by process 0 only; the others wait here so that
    nobody reads a stage's outputs (or decides to skip the next stage) before process 0
    has put them in place.
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def replicate_rows(tree: Any, mesh: Mesh | None) -> Any:
    """Batch-sharded arrays -> the same arrays replicated on every device of ``mesh``.

    Multi-process, each process holds only its devices' rows of a batch-sharded array and
    cannot read the others'; after this all-gather (a collective: every process calls it,
    in the same order) ``jax.device_get`` reads every row on every process. It is
    dispatched asynchronously like any jitted call, so the host keeps detokenising the
    previous batch meanwhile. Single-process it returns ``tree`` (``device_get`` already
    reads every device).

    Args:
      tree: a pytree of ``[B, ...]`` jax Arrays.
      mesh: the mesh they live on.
    """
    if jax.process_count() == 1 or mesh is None:
        return tree
    return jax.jit(_identity, out_shardings=replicated(mesh))(tree)


def _identity(tree: Any) -> Any:
    # Module-level, so repeated replicate_rows calls hit jit's cache.
    return tree


def rows_mesh(mesh: Mesh | None) -> Mesh | None:
    """The mesh to split inference rows over: ``mesh``, or multi-process the
    data-parallel mesh over all devices (without one, every process would compute
    every row)."""
    if mesh is None and jax.process_count() > 1:
        return make_mesh(MeshConfig())
    return mesh


def put_rows(x: np.ndarray, mesh: Mesh | None) -> jax.Array:
    """A whole ``[B, ...]`` host batch (the same on every process) -> a batch-sharded array.

    Each process places only its own devices' rows (see :func:`put`), so the rows of
    an inference batch are split over processes; without a mesh, the default device.
    """
    if mesh is None:
        return jax.numpy.asarray(x)
    return put(x, batch_sharding(mesh, np.ndim(x)))
