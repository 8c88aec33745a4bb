"""The loss and the one jit-compiled, sharded, state-donating train step.

The model is split once (``nnx.split``) into a graph definition, the trainable
parameters (``nnx.LoRAParam`` for LoRA, every ``nnx.Param`` for full fine-tuning)
and everything else (frozen base weights, RNG streams). Only the trainable part is
in the optimizer state. Trainable params travel as a flat ``{"path/to/param": array}``
dict: optax, orbax and NamedSharding trees all handle it without custom pytree nodes.

One step = ``accum_steps`` microbatches (a ``lax.scan`` that sums gradients) and one
AdamW update. The loss is the mean cross-entropy over all response tokens of the
whole effective batch (sum over tokens / number of tokens), so it does not depend on
how the batch is split into microbatches, devices or processes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from semievol_jax import rng, sharding
from semievol_jax.train.config import TrainConfig
from semievol_jax.train.data import Batch

Params = dict[str, jax.Array]  # flat "a/b/c" path -> array


class ModelSetupError(ValueError):
    """The model does not fit the training mode (e.g. LoRA mode, no LoRA params)."""


def masked_cross_entropy(
    logits_BTV: jax.Array, targets_BT: jax.Array, mask_BT: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Summed next-token cross-entropy over masked positions, and the mask count.

    Args:
      logits_BTV: model logits (any float dtype; reduced in float32).
      targets_BT: int target ids.
      mask_BT: bool, True where the target is a response token.

    Returns:
      ``(loss_sum, count)`` float32 scalars; the masked mean is ``loss_sum / count``.
    """
    logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    nll_BT = -jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]
    m = mask_BT.astype(jnp.float32)
    return jnp.sum(nll_BT * m), jnp.sum(m)


def trainable_filter(mode: str) -> Any:
    """nnx filter of the trainable variables for ``mode`` ("lora" | "full")."""
    return nnx.LoRAParam if mode == "lora" else nnx.Param


def _path_str(path: tuple) -> str:
    return "/".join(str(p) for p in path)


@dataclasses.dataclass
class SplitModel:
    """A model taken apart for functional training.

    Attributes:
      graphdef: the static structure.
      params: flat trainable params ``{path: array}``.
      rest: everything else (frozen weights, RNG state) as an nnx State.
      paths: flat path -> original key tuple (to rebuild the nested state).
    """

    graphdef: Any
    params: Params
    rest: Any
    paths: dict[str, tuple]
    param_names: dict[str, tuple[str | None, ...] | None]

    def nested(self, flat: Params) -> dict:
        """Flat params -> the nested pure dict ``nnx.merge`` takes."""
        out: dict = {}
        for k, v in flat.items():
            d = out
            *head, last = self.paths[k]
            for p in head:
                d = d.setdefault(p, {})
            d[last] = v
        return out

    def merge(self, flat: Params, rest: Any | None = None) -> nnx.Module:
        """A model with these trainable params (and ``rest``, default the stored one)."""
        return nnx.merge(self.graphdef, self.nested(flat), self.rest if rest is None else rest)


def split_model(model: nnx.Module, mode: str) -> SplitModel:
    """Split ``model`` into trainable params (flat) and the rest.

    Raises:
      ModelSetupError: LoRA mode on a model without LoRA params, or no params at all.
    """
    graphdef, trainable, rest = nnx.split(model, trainable_filter(mode), ...)
    params, paths, names = {}, {}, {}
    for path, var in nnx.to_flat_state(trainable):
        key = _path_str(path)
        params[key] = var.get_value()
        paths[key] = tuple(path)
        names[key] = sharding._variable_names(var)
    if not params:
        what = "nnx.LoRAParam (build the model with lora=LoraConfig(...))" if mode == "lora" \
            else "nnx.Param"
        raise ModelSetupError(f"train.mode={mode!r} but the model has no {what} to train")
    return SplitModel(graphdef, params, rest, paths, names)


def param_shardings(split: SplitModel, mesh: Mesh) -> dict[str, NamedSharding]:
    """NamedSharding per trainable param from its logical axis names."""
    out = {}
    for k, v in split.params.items():
        names = split.param_names[k]
        if names is None or len(names) != v.ndim:
            out[k] = sharding.replicated(mesh)
        else:
            out[k] = sharding.logical_to_sharding(names, mesh, v.shape)
    return out


def opt_state_shardings(tx: optax.GradientTransformation, params: Params,
                        param_sh: dict[str, NamedSharding], mesh: Mesh) -> Any:
    """Shardings of the optimizer state: moments like their params, counters replicated."""
    abstract = jax.eval_shape(tx.init, params)
    return optax.tree_map_params(
        tx, lambda _, s: s, abstract, param_sh,
        transform_non_params=lambda _: sharding.replicated(mesh),
    )


def batch_shardings(mesh: Mesh) -> Batch:
    """``[A, B, T]`` batch arrays: microbatch axis unsharded, rows over data x fsdp."""
    spec = sharding.logical_to_spec((None, "batch", None), mesh)
    s = NamedSharding(mesh, spec)
    return Batch(s, s, s, s, s, s, s, s)


def _cast_floats(tree: Any, dtype: jnp.dtype) -> Any:
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def cast_rest(rest: Any, compute_dtype: str | None) -> Any:
    """Frozen weights stored in the compute dtype: never updated, so no master copy needed.

    Halves the frozen base's memory and its per-step cast under bf16 LoRA training.
    """
    if compute_dtype is None or jnp.dtype(compute_dtype) == jnp.float32:
        return rest
    return _cast_floats(rest, jnp.dtype(compute_dtype))


def set_compute_dtype(model: nnx.Module, compute_dtype: str | None) -> list[tuple[Any, Any]]:
    """Point every submodule's ``dtype`` (the Flax compute-dtype convention) at ``compute_dtype``.

    Params keep their storage dtype (float32 masters); modules cast them per matmul.

    Returns:
      ``[(module, old dtype)]`` for ``restore_compute_dtype``.
    """
    old: list[tuple[Any, Any]] = []
    if compute_dtype is None:
        return old
    for _, m in nnx.iter_modules(model):
        if hasattr(m, "dtype"):
            old.append((m, m.dtype))
            m.dtype = jnp.dtype(compute_dtype)
    return old


def restore_compute_dtype(old: list[tuple[Any, Any]]) -> None:
    """Undo ``set_compute_dtype``."""
    for m, dt in old:
        m.dtype = dt


def make_train_step(
    split: SplitModel,
    tx: optax.GradientTransformation,
    cfg: TrainConfig,
    mesh: Mesh,
    state_sh: dict[str, Any],
    rest_sh: Any,
    *,
    donate: bool = True,
) -> Callable[[dict, Any, Batch, jax.Array], tuple[dict, dict]]:
    """Build ``step(state, rest, batch, key) -> (state, metrics)`` as one jax.jit.

    Args:
      split: the split model (graphdef and param paths).
      tx: the optimizer.
      cfg: the train config (compute dtype, remat).
      mesh: the device mesh.
      state_sh: shardings of the train state ``{"params", "opt_state", "step"}``.
      rest_sh: shardings of the frozen state.
      donate: donate the input state (off only to measure what donation saves).

    Returns:
      The jitted step. ``state`` is donated (its buffers are reused for the output);
      metrics are replicated float32 scalars: loss, grad_norm, lr-free token counts.
    """
    streams = _rng_stream_names(split.rest)

    def micro_loss(params: Params, rest: Any, mb: Batch, key: jax.Array):
        # Fresh Variable objects at this trace level (rest may come from an outer
        # trace, e.g. the accumulation scan), so reseed below may write to them.
        rest = jax.tree.map(lambda x: x, rest)
        model = split.merge(params, rest)
        if streams:
            # Dropout masks are a pure function of (run key, step, microbatch), so a
            # resumed run draws the same masks; the model's own RNG state is not used.
            nnx.reseed(model, policy="match_shape",
                       **{n: rng.subkey(key, n) for n in streams})
        out = model(mb.tokens_ABT, mb.positions_ABT, valid_BT=mb.valid_ABT,
                    segment_BT=mb.segment_ABT, logits_at_BR=mb.score_at_ABR,
                    remat=cfg.remat_policy, lora_grad=cfg.lora_grad)
        targets_BR = jnp.take_along_axis(mb.targets_ABT, mb.score_at_ABR, axis=1)
        loss_sum, count = masked_cross_entropy(out.logits_BTV, targets_BR, mb.score_mask_ABR)
        return loss_sum, count

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def step(state: dict, rest: Any, batch: Batch, key: jax.Array):
        params = state["params"]
        step_key = jax.random.fold_in(rng.subkey(key, "dropout"), state["step"])
        a = batch.tokens_ABT.shape[0]

        def one(carry, xs):
            g_acc, l_acc, n_acc = carry
            i, mb = xs
            (loss, n), g = grad_fn(params, rest, mb, jax.random.fold_in(step_key, i))
            g_acc = jax.tree.map(jnp.add, g_acc, g)
            return (g_acc, l_acc + loss, n_acc + n), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        init = (zeros, jnp.float32(0), jnp.float32(0))
        if a == 1:
            (grads, loss_sum, count), _ = one(init, (0, jax.tree.map(lambda x: x[0], batch)))
        else:
            (grads, loss_sum, count), _ = jax.lax.scan(one, init, (jnp.arange(a), batch))
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        metrics = {
            "loss": loss_sum / denom,
            "grad_norm": optax.tree.norm(grads),
            # Non-finite params with a finite loss (an inf update) must not be checkpointed.
            "param_norm": optax.tree.norm(new_params),
            "loss_tokens": count,
            "input_tokens": jnp.sum(batch.valid_ABT).astype(jnp.float32),
        }
        new_state = {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, metrics

    repl = sharding.replicated(mesh)
    metrics_sh = {k: repl for k in ("loss", "grad_norm", "param_norm", "loss_tokens",
                                    "input_tokens")}
    return jax.jit(
        step,
        in_shardings=(state_sh, rest_sh, batch_shardings(mesh), repl),
        out_shardings=(state_sh, metrics_sh),
        donate_argnums=(0,) if donate else (),
    )


def _rng_stream_names(rest: Any) -> list[str]:
    names = {v.get_metadata().get("tag") for _, v in nnx.to_flat_state(rest)
             if isinstance(v, nnx.RngKey)}
    return sorted(n for n in names if n)


def init_train_state(
    split: SplitModel, tx: optax.GradientTransformation, state_sh: dict[str, Any]
) -> dict:
    """Fresh train state from the split model's params, placed by ``state_sh``."""
    # A copy, never an alias: the step donates the state, and these arrays still belong
    # to the caller's model.
    params = sharding.put(split.params, state_sh["params"], copy=True)
    opt_state = jax.jit(tx.init, out_shardings=state_sh["opt_state"])(params)
    step = sharding.put(jnp.int32(0), state_sh["step"])
    return {"params": params, "opt_state": opt_state, "step": step}


def state_shardings(split: SplitModel, tx: optax.GradientTransformation, mesh: Mesh) -> dict:
    """Shardings of ``{"params", "opt_state", "step"}`` on ``mesh``."""
    psh = param_shardings(split, mesh)
    return {
        "params": psh,
        "opt_state": opt_state_shardings(tx, split.params, psh, mesh),
        "step": NamedSharding(mesh, PartitionSpec()),
    }
