"""Analytic FLOP counts of the convolutions and matrix products a JAX function executes.

XLA's own cost analysis leaves out convolutions it hands to libraries (cuDNN), so achieved
TFLOP/s are computed from a count made here, by walking the function's jaxpr: every
`conv_general_dilated` and `dot_general` is counted as 2 FLOPs per multiply-accumulate, inside
nested jaxprs too (jit, custom_jvp/vjp, remat; a scan's body times its length, the costliest
branch of a cond). Applied to a training step it counts exactly what the step runs: the forward
pass, and of the backward pass only the gradients actually taken (no weight gradients for a
frozen recognizer, no input gradient for the first layer of the trained network).

Conventions, those of the usual published counts (e.g. 1.82 GMACs for ResNet-18 at 224x224):
  - a convolution costs out_elements x kernel_taps x input_channels_per_group MACs, padding
    included;
  - a convolution with a dilated input (a transposed convolution, or the input gradient of a
    strided one) is counted by the kernel taps that land on real input elements only: libraries
    run these as backward-data convolutions and never multiply the inserted zeros (nor the
    padding around them). The input gradient of a strided convolution thus costs what its
    forward pass costs on the non-padding taps;
  - elementwise work (activations, BatchNorm, the optimizer update) is not counted.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

import jax
import numpy as np


def count(fn: Callable, *args: Any, **kwargs: Any) -> dict[str, float]:
  """FLOPs of fn(*args, **kwargs) (arrays or jax.ShapeDtypeStructs): {"conv", "dot", "total"}."""
  return count_jaxpr(jax.make_jaxpr(fn)(*args, **kwargs))


def count_jaxpr(jaxpr: Any) -> dict[str, float]:
  """FLOPs of a (closed) jaxpr: {"conv": ..., "dot": ..., "total": ...}."""
  out = collections.Counter(_walk(getattr(jaxpr, "jaxpr", jaxpr)))
  return {"conv": float(out["conv"]), "dot": float(out["dot"]), "total": float(out["conv"] + out["dot"])}


def _walk(jaxpr) -> collections.Counter:
  total = collections.Counter()
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      total["conv"] += conv_flops(eqn.invars[0].aval.shape, eqn.invars[1].aval.shape, eqn.outvars[0].aval.shape,
                                  **{k: eqn.params[k] for k in _CONV_PARAMS})
    elif name == "dot_general":
      total["dot"] += dot_flops(eqn.invars[0].aval.shape, eqn.invars[1].aval.shape, eqn.params["dimension_numbers"])
    if name == "cond":
      branches = [_walk(_inner(b)) for b in eqn.params["branches"]]
      total += max(branches, key=lambda c: c["conv"] + c["dot"])
      continue
    repeat = int(eqn.params.get("length", 1)) if name == "scan" else 1
    for value in eqn.params.values():
      for sub in _sub_jaxprs(value):
        for k, v in _walk(sub).items():
          total[k] += repeat * v
  return total


_CONV_PARAMS = ("window_strides", "padding", "lhs_dilation", "rhs_dilation", "dimension_numbers",
                "feature_group_count", "batch_group_count")


def _inner(j):
  return getattr(j, "jaxpr", j)


def _sub_jaxprs(value):
  """The jaxprs held in an equation parameter (a jaxpr, a closed jaxpr, or a tuple of them)."""
  if hasattr(value, "eqns"):
    yield value
  elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
    yield value.jaxpr
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def conv_flops(lhs_shape, rhs_shape, out_shape, *, window_strides, padding, lhs_dilation, rhs_dilation,
               dimension_numbers, feature_group_count=1, batch_group_count=1) -> float:
  """2 x MACs of one lax.conv_general_dilated (see the module docstring for the convention)."""
  lhs_spec, rhs_spec, out_spec = dimension_numbers
  nd = len(lhs_spec) - 2
  lhs_dilation = tuple(lhs_dilation or (1,) * nd)
  rhs_dilation = tuple(rhs_dilation or (1,) * nd)
  kernel_in = rhs_shape[rhs_spec[1]]           # input channels per group
  out_batch, out_features = out_shape[out_spec[0]], out_shape[out_spec[1]]
  taps = 1
  for d in range(nd):
    taps *= _taps(lhs_shape[lhs_spec[2 + d]], rhs_shape[rhs_spec[2 + d]], out_shape[out_spec[2 + d]],
                  window_strides[d], padding[d], lhs_dilation[d], rhs_dilation[d])
  return 2.0 * out_batch * out_features * kernel_in * taps


def _taps(size: int, kernel: int, out: int, stride: int, pad: tuple[int, int], lhs_dil: int, rhs_dil: int) -> int:
  """Number of (output position, kernel tap) pairs along one spatial axis that are computed."""
  if lhs_dil == 1:
    return out * kernel
  lo = pad[0]
  pos = np.arange(out)[:, None] * stride + np.arange(kernel)[None, :] * rhs_dil - lo  # in the dilated input
  real = (pos >= 0) & (pos <= (size - 1) * lhs_dil) & (pos % lhs_dil == 0)
  return int(real.sum())


def dot_flops(lhs_shape, rhs_shape, dimension_numbers) -> float:
  """2 x MACs of one lax.dot_general."""
  (_, rhs_contract), (_, rhs_batch) = dimension_numbers
  rhs_free = [s for i, s in enumerate(rhs_shape) if i not in tuple(rhs_contract) + tuple(rhs_batch)]
  return 2.0 * float(np.prod(lhs_shape, dtype=np.float64)) * float(np.prod(rhs_free, dtype=np.float64))
