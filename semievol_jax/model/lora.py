"""Dense projections with optional LoRA adapters, and folding adapters into the weights.

Weights are stored in the Hugging Face [out, in] orientation (split into named axes, e.g.
q: `w_NHD`), so converting a checkpoint is a reshape, never a transpose copy. LoRA follows
PEFT: y = x W^T + (alpha / R) * B(A(dropout(x))), with A [R, in] and B [out, R].
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from semievol_jax.model import matmul

LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
# Names a remat policy can keep (model/llama.py REMAT_POLICIES): the frozen weight's
# product (the MLP's gate and up under their own name, so a policy can drop just them)
# and the adapter's rank-R activation. The adapter's output B(A x) is not named:
# as wide as the projection, it costs as much memory and R multiply-adds to recompute.
PROJECTION, MLP_PROJECTION, LORA_HIDDEN = "projection", "mlp_projection", "lora_hidden"
# How the backward pass forms B's gradient, sum over tokens of g_O h_R ([out, R]):
# "autodiff" is JAX's transpose of the product, which XLA:CPU's matmul library takes only
# after writing the output gradient [tokens, out] out again transposed (the largest copies
# of a LoRA step); "direct" states that matmul in the backward pass itself, and XLA:CPU
# runs it over the gradient as it lies. The same sum in another kernel: the adapters
# differ in the last bits.
LORA_GRADS = ("autodiff", "direct")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Which projections get a low-rank adapter, and its size."""

    rank: int = 16  # R
    alpha: float = 32.0  # the update is scaled by alpha / rank (PEFT, no rsLoRA)
    dropout: float = 0.05  # dropout on the adapter's input, active only in model.train() mode
    targets: tuple[str, ...] = LORA_TARGETS  # subset of q, k, v, o, gate, up, down

    def __post_init__(self) -> None:
        unknown = set(self.targets) - set(LORA_TARGETS)
        if unknown:
            raise ValueError(f"unknown LoRA targets {sorted(unknown)}; known: {LORA_TARGETS}")
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def param(value: jax.Array, names: Sequence[str | None], kind: type = nnx.Param) -> nnx.Param:
    """A parameter carrying its logical axis names in the `out_sharding` metadata.

    Eager sharding is off: the names are logical, and only `semievol_jax.sharding` maps
    them onto a mesh (e.g. `nnx.get_partition_spec` under `nnx.logical_axis_rules`).
    """
    if len(names) != value.ndim:
        raise ValueError(f"{len(names)} axis names {names} for a {value.ndim}-d param")
    return kind(value, out_sharding=tuple(names), eager_sharding=False)


class Dense(nnx.Module):
    """y = x · W over named axes, plus an optional LoRA update.

    Axis letters come from the model alphabet: `in_axes="D", out_axes="NH"` is the query
    projection `'...D,NHD->...NH'` with `w_NHD`.
    """

    def __init__(
        self,
        in_axes: str,
        out_axes: str,
        dims: dict[str, int],
        names: dict[str, str | None],
        *,
        lora: LoraConfig | None,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
        save_name: str = PROJECTION,
    ):
        self.in_axes = in_axes
        self.save_name = save_name
        self.matmul_dtype = None  # operands' dtype (matmul.set_matmul_dtype); None: dtype
        self.out_axes = out_axes
        self.dtype = dtype
        in_shape = tuple(dims[a] for a in in_axes)
        out_shape = tuple(dims[a] for a in out_axes)
        fan_in = math.prod(in_shape)
        # LeCun-normal keeps activations O(1), so a random model is a sensitive parity probe.
        w = jax.random.normal(rngs.params(), out_shape + in_shape, param_dtype) / math.sqrt(fan_in)
        self.w = param(w, [names[a] for a in out_axes + in_axes])
        self.lora = lora
        if lora is None:
            return
        # Adapters stay float32 even over bf16 base weights: their updates are tiny.
        lora_dtype = jnp.promote_types(param_dtype, jnp.float32)
        bound = 1.0 / math.sqrt(fan_in)  # PEFT's kaiming_uniform(a=sqrt(5)) on A
        a = jax.random.uniform(rngs.params(), (lora.rank,) + in_shape, lora_dtype, -bound, bound)
        self.lora_a = param(a, ["lora_rank"] + [names[x] for x in in_axes], nnx.LoRAParam)
        b = jnp.zeros(out_shape + (lora.rank,), lora_dtype)  # B = 0: training starts at W
        self.lora_b = param(b, [names[x] for x in out_axes] + ["lora_rank"], nnx.LoRAParam)
        self.dropout = nnx.Dropout(lora.dropout, deterministic=True, rngs=rngs)

    def __call__(self, x: jax.Array, lora_grad: str = "autodiff") -> jax.Array:
        # One 2-D matmul over the flattened axes (reshapes of contiguous arrays are free):
        # a dot over a 3-D weight such as w_NHD makes XLA:CPU copy the weight into
        # another layout on every call, a 2-D [out, in] one it reads as it lies.
        n_in, n_out = len(self.in_axes), len(self.out_axes)
        out_shape = self.w.shape[:n_out]
        lead = x.shape[:x.ndim - n_in]
        x_XI = x.astype(self.dtype).reshape(*lead, -1)
        w = self.w[...] if self.matmul_dtype is not None else self.w[...].astype(self.dtype)
        w_OI = w.reshape(math.prod(out_shape), -1)
        y_XO = checkpoint_name(
            matmul.einsum("...I,OI->...O", x_XI, w_OI, operand_dtype=self.matmul_dtype),
            self.save_name)
        if self.lora is not None:
            h_XI = self.dropout(x_XI)
            a_RI = self.lora_a[...].astype(self.dtype).reshape(self.lora.rank, -1)
            b_OR = self.lora_b[...].astype(self.dtype).reshape(-1, self.lora.rank)
            mm = self.matmul_dtype
            h_XR = checkpoint_name(matmul.einsum("...I,RI->...R", h_XI, a_RI, operand_dtype=mm),
                                   LORA_HIDDEN)
            product = _b_product if lora_grad == "direct" else _b_product_autodiff
            y_XO = y_XO + self.lora.scale * product(h_XR, b_OR, mm)
        return y_XO.reshape(*lead, *out_shape)

    def merged_weight(self) -> jax.Array:
        """W + (alpha/R) B A in W's shape and dtype (W itself when there is no adapter)."""
        w = self.w[...]
        if self.lora is None:
            return w
        i, o = self.in_axes, self.out_axes
        # "...": a stacked module (leading L axis) merges every layer at once.
        delta = jnp.einsum(f"...{o}R,...R{i}->...{o}{i}", self.lora_b[...].astype(jnp.float32),
                           self.lora_a[...].astype(jnp.float32))
        return (w.astype(jnp.float32) + self.lora.scale * delta).astype(w.dtype)


def _b_product_autodiff(h_XR: jax.Array, b_OR: jax.Array, operand_dtype=None) -> jax.Array:
    return matmul.einsum("...R,OR->...O", h_XR, b_OR, operand_dtype=operand_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _b_product(h_XR: jax.Array, b_OR: jax.Array, operand_dtype=None) -> jax.Array:
    """The adapter's up-projection with LORA_GRADS "direct" gradients."""
    return _b_product_autodiff(h_XR, b_OR, operand_dtype)


def _b_product_fwd(h_XR, b_OR, operand_dtype):
    return _b_product_autodiff(h_XR, b_OR, operand_dtype), (h_XR, b_OR)


def _b_product_bwd(operand_dtype, res, g_XO):
    h_XR, b_OR = res
    g_h_XR = matmul.einsum("...O,OR->...R", g_XO, b_OR, operand_dtype=operand_dtype)
    g_b_OR = matmul.einsum("NO,NR->OR", g_XO.reshape(-1, g_XO.shape[-1]),
                           h_XR.reshape(-1, h_XR.shape[-1]), operand_dtype=operand_dtype)
    return g_h_XR, g_b_OR


_b_product.defvjp(_b_product_fwd, _b_product_bwd)


def merge_lora(model: nnx.Module) -> nnx.Module:
    """A copy of `model` built with `lora=None` whose weights are W + (alpha/R) B A.

    Works on any model class taking `(cfg, *, lora, dtype, param_dtype, rngs)` and keeping
    its projections in `Dense` modules. Unchanged arrays are shared, not copied.
    """
    ctor = type(model)
    merged = nnx.eval_shape(
        lambda: ctor(model.cfg, lora=None, dtype=model.dtype, param_dtype=model.param_dtype,
                     rngs=nnx.Rngs(0))
    )
    matmul.set_matmul_dtype(merged, getattr(model, "matmul_dtype", None))
    nnx.update(merged, nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))))
    targets = dict(nnx.iter_modules(merged))
    for path, module in nnx.iter_modules(model):
        if isinstance(module, Dense) and module.lora is not None:
            targets[path].w.set_value(module.merged_weight())
        if hasattr(module, "causal_block"):  # how attention is blocked (llama.py)
            targets[path].causal_block = module.causal_block
    return merged
