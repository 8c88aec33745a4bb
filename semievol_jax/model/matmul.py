"""Matmuls in a low-precision operand dtype: bf16 operands, float32 sums.

XLA:CPU multiplies bf16 on the CPU's AMX tiles only in a dot whose result is float32
(bf16 x bf16 -> bf16 takes a generic kernel, about 6x slower; docs/results.md), and
only where the ISA is not capped (the "native" CPU mode). JAX's autodiff of such a dot
multiplies the float32 cotangent by an upcast operand, float32 x float32, so the
backward pass, two thirds of a step's matmuls, would not get there. `einsum` states
both passes as low-precision dots summed in float32, each result rounded to the dtype
it returns: what GPUs, TPUs and torch's autocast do for bf16 too.

A model's `matmul_dtype` (`set_matmul_dtype`) casts the operands of its matmuls only:
activations, residuals kept for the backward pass and KV caches stay in the compute
dtype. On a CPU that matters: XLA:CPU has no bf16 dynamic-update-slice, and writes a
scanned layer's bf16 residual (or a bf16 KV cache) into its [L, ...] stack by converting
the whole stack to float32 and back, every layer.

Without an operand dtype `einsum` is `jnp.einsum` itself: programs that do not ask
for one, and their bits, are what they would be without it.
"""

from __future__ import annotations

import functools
import string

import jax
import jax.numpy as jnp
from flax import nnx


def einsum(spec: str, a: jax.Array, b: jax.Array, out_dtype=None,
           operand_dtype=None) -> jax.Array:
    """`jnp.einsum(spec, a, b)`, a two-operand contraction; with a low-precision
    `operand_dtype`, its operands cast to it and summed in float32 in both passes.

    Args:
      spec: "lhs,rhs->out", every lhs and rhs letter in the other operand or in out
        (a contraction, as in a projection or attention); "..." allowed.
      a, b: the operands.
      out_dtype: the result's dtype; default `a`'s.
      operand_dtype: None or float32: `jnp.einsum(spec, a, b,
        preferred_element_type=out_dtype)`, the plain call (so a model computing in
        bf16 throughout keeps its bf16 x bf16 -> bf16 dots and their bits).
    """
    if operand_dtype is None or jnp.dtype(operand_dtype) == jnp.float32:
        return jnp.einsum(spec, a, b, preferred_element_type=out_dtype)
    return _low_precision(_explicit(spec, a.ndim, b.ndim), jnp.dtype(operand_dtype),
                          jnp.dtype(out_dtype or a.dtype), a, b)


def set_matmul_dtype(model: nnx.Module, dtype) -> None:
    """Multiply in `dtype` (None: each module's compute dtype) in every submodule of
    `model` that has matmuls (those with a `matmul_dtype` attribute)."""
    for _, module in nnx.iter_modules(model):
        if hasattr(module, "matmul_dtype"):
            module.matmul_dtype = None if dtype is None else jnp.dtype(dtype)


def _explicit(spec: str, a_ndim: int, b_ndim: int) -> str:
    """`spec` with "..." spelled out in lowercase letters (the alphabet is uppercase),
    so that the backward pass can sum over the leading axes by name."""
    spec = spec.replace(" ", "")
    if "..." not in spec:
        return spec
    ins, out = spec.split("->")
    sa, sb = ins.split(",")

    def lead(s: str, ndim: int) -> int:
        return ndim - len(s.replace("...", "")) if "..." in s else 0

    n = max(lead(sa, a_ndim), lead(sb, b_ndim))
    letters = string.ascii_lowercase[:n]

    def fill(s: str, k: int) -> str:
        return s.replace("...", letters[n - k:])

    return f"{fill(sa, lead(sa, a_ndim))},{fill(sb, lead(sb, b_ndim))}->{fill(out, n)}"


def _dot(spec: str, a: jax.Array, b: jax.Array, low, out_dtype) -> jax.Array:
    return jnp.einsum(spec, a.astype(low), b.astype(low),
                      preferred_element_type=jnp.float32).astype(out_dtype)


# The residuals are the operands as given, not their low-precision casts: a cast made
# inside a scanned layer would be stacked over the layers as a residual of its own.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _low_precision(spec: str, low, out_dtype, a: jax.Array, b: jax.Array) -> jax.Array:
    return _dot(spec, a, b, low, out_dtype)


def _low_precision_fwd(spec, low, out_dtype, a, b):
    return _dot(spec, a, b, low, out_dtype), (a, b)


def _low_precision_bwd(spec, low, out_dtype, res, g):
    a, b = res
    ins, out = spec.split("->")
    sa, sb = ins.split(",")
    return (_dot(f"{out},{sb}->{sa}", g, b, low, a.dtype),
            _dot(f"{sa},{out}->{sb}", a, g, low, b.dtype))


_low_precision.defvjp(_low_precision_fwd, _low_precision_bwd)
