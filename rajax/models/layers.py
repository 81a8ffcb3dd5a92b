"""Building blocks shared by rajax's Flax modules.

All layers are NHWC. Convolutions use PyTorch's default initialisation (kaiming-uniform with
a=sqrt(5) for kernels, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for biases) and explicit symmetric
padding, so that a module built here trains like, and can load the weights of, its PyTorch
original. BatchNorm uses PyTorch's momentum (0.1, i.e. Flax 0.9) and epsilon (1e-5).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

Dtype = Any

# PyTorch's default Conv/Linear kernel init: kaiming_uniform_(a=sqrt(5)) == U(+-sqrt(1/fan_in)).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
  """PyTorch's default bias init for a layer with `fan_in` inputs: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def conv(
    features: int,
    kernel: int,
    *,
    in_features: int,
    stride: int = 1,
    padding: int = 0,
    use_bias: bool = True,
    dtype: Dtype = jnp.float32,
    kernel_init=torch_kernel_init,
    name: str | None = None,
) -> nn.Conv:
  """A square NHWC convolution with PyTorch's padding semantics and default initialisation."""
  return nn.Conv(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      padding=((padding, padding), (padding, padding)),
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=jnp.float32,
      kernel_init=kernel_init,
      bias_init=torch_bias_init(in_features * kernel * kernel),
      name=name,
  )


def batch_norm(*, train: bool, dtype: Dtype, name: str | None = None) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults; statistics are always computed in float32."""
  return nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
  )


def prelu(name: str | None = None) -> nn.PReLU:
  """PReLU with one shared slope initialised to 0.25, as torch.nn.PReLU()."""
  return nn.PReLU(negative_slope_init=0.25, param_dtype=jnp.float32, name=name)


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
  """Reflection padding of the two spatial axes of an NHWC array (torch.nn.ReflectionPad2d)."""
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def check_images(x: jax.Array, *, who: str, channels: int = 3) -> None:
  """Raises a ValueError naming `who` unless `x` is a batch of NHWC images with `channels` channels."""
  if x.ndim != 4 or x.shape[-1] != channels:
    raise ValueError(
        f"{who} expects a batch of images shaped [batch, height, width, {channels}] (NHWC), "
        f"got shape {tuple(x.shape)}. Add a batch axis with x[None] or move channels last with "
        "jnp.moveaxis(x, 1, -1)."
    )


def to_unit_range(y: jax.Array) -> jax.Array:
  """Maps pre-activation outputs to [0, 1] as (tanh(y) + 1) / 2, computed in float32."""
  return (jnp.tanh(y.astype(jnp.float32)) + 1.0) / 2.0


def as_dtype(dtype: Any) -> jnp.dtype:
  """'bfloat16' / jnp.bfloat16 / np.dtype -> a jnp dtype, with a clear error for anything else."""
  try:
    out = jnp.dtype(dtype)
  except TypeError:
    raise ValueError(f"Unknown dtype {dtype!r}; use 'float32', 'bfloat16' or 'float16'.") from None
  if not jnp.issubdtype(out, jnp.floating):
    raise ValueError(f"Compute dtype must be a float type ('float32', 'bfloat16', 'float16'), got {dtype!r}.")
  return out
