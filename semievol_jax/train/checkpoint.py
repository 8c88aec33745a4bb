"""Preemption-safe training checkpoints (orbax): what is saved, and resume precedence.

A checkpoint holds the train state (trainable params -- the LoRA adapter only in
LoRA mode, since the base is frozen and re-given -- the optimizer state and the
step), the run's RNG key, and as JSON the data iterator position plus the digest of
the tokenized data and of the config. Orbax writes each step to a temporary
directory and renames it when complete, so a run killed mid-write leaves the
previous checkpoint intact. Restoring takes the target shardings, so a run can
resume on a different mesh.

Precedence, written once (``restore_or_init``): resume this run's latest checkpoint
if there is one, else start from the params the caller passed in.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointMismatchError(RuntimeError):
    """A checkpoint from a different run (other data, config or param set) in work_dir."""


def make_manager(directory: Path, *, keep: int, async_save: bool) -> ocp.CheckpointManager:
    """An orbax CheckpointManager keeping the last ``keep`` steps under ``directory``."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
    )
    return ocp.CheckpointManager(Path(directory).absolute(), options=options,
                                 item_names=("state", "meta"))


def save(manager: ocp.CheckpointManager, step: int, state: dict, key: jax.Array,
         meta: dict[str, Any]) -> None:
    """Save (possibly in the background) the state, RNG key and JSON ``meta`` at ``step``."""
    item = {"train": state, "rng": jax.random.key_data(key)}
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(item), meta=ocp.args.JsonSave(meta)), force=True)


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def restore_or_init(
    manager: ocp.CheckpointManager,
    init_fn: Any,
    abstract_state: Any,
    state_sh: Any,
    key: jax.Array,
    expect: dict[str, Any],
) -> tuple[dict, jax.Array, dict[str, Any] | None]:
    """Resume the latest checkpoint if one exists, else ``init_fn()``.

    Args:
      manager: this run's checkpoint manager.
      init_fn: ``() -> state``, the fresh state from the caller's params.
      abstract_state: a tree of arrays/ShapeDtypeStructs shaped like the state.
      state_sh: target shardings of the state (may be a different mesh than at save).
      key: the caller's RNG key (used when starting fresh).
      expect: meta entries that must match a resumed checkpoint's (data digest, ...).

    Returns:
      ``(state, key, meta)``; meta is None when starting fresh.

    Raises:
      CheckpointMismatchError: the checkpoint's meta disagrees with ``expect``.
    """
    step = manager.latest_step()
    if step is None:
        return init_fn(), key, None
    key_data = jax.random.key_data(key)
    target = {
        "train": _abstract(abstract_state, state_sh),
        "rng": jax.ShapeDtypeStruct(key_data.shape, key_data.dtype,
                                    sharding=state_sh["step"]),  # replicated
    }
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    meta = dict(restored["meta"])
    bad = {k: (meta.get(k), v) for k, v in expect.items() if meta.get(k) != v}
    if bad:
        detail = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in bad.items())
        raise CheckpointMismatchError(
            f"checkpoint step {step} in {manager.directory} is from a different run ({detail}); "
            "use a fresh work_dir or delete the checkpoints"
        )
    log.info("resuming from checkpoint step %d in %s", step, manager.directory)
    rkey = jax.random.wrap_key_data(restored["state"]["rng"])
    return restored["state"]["train"], rkey, meta
