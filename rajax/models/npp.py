"""NPP's neural pre-processor: a quality-adaptive filter that runs before a standard codec.

"Preprocessing Enhanced Image Compression for Machine Vision" (Lu et al.; official code
XingtongGe/PreprocessingICM, `NPP_Codec_Variable/models/`). The pre-processed image is

    P(x, q) = ReLU(s2(q) * 1x1(ReLU(s1(q) * 1x1(x)))) + UNet(x, q)

clipped to [0, 1] (the codec reads 8-bit pixels). The UNet has four encoder levels of 32/64/128/256
channels, each two 3x3 conv+BN+ReLU and a stride-2 3x3 conv+BN+ReLU, a 512-channel bottleneck,
four decoder levels (two 3x3 conv+BN+ReLU, then a 3x3 stride-2 transposed conv+BN+ReLU, its output
concatenated with the encoder level's), and a head 64 -> 32 -> 32 -> 3 (two 3x3 conv+BN+ReLU, a
1x1 conv, ReLU): 9.42 M parameters without the quality layers.

Quality adaptivity (`adaptive=True`): small MLPs (Linear(1, m), ReLU, Linear(m, C), ReLU) map the
codec's quality, normalised to [0, 1] (`rajax.codecs` gives each codec's normalisation), to
channel scales at the two 1x1 layers and at six UNet points (the inputs of encoder levels 2-4 and
the outputs of decoder levels 2-4), as the official code places them. One difference, on purpose:
the MLPs' last layer starts at weight 0 and bias 1, so every scale is exactly 1 at initialisation
and an adaptive pre-processor started from a fixed-quality one (the paper's third stage, from its
second) computes the same function at its first step; the official code starts them at PyTorch's
default init, which perturbs the stage-2 network. The official scales are one vector per batch;
here each image has its own quality, so one batch can mix qualities.

Transposed convolutions use `padding=((1, 2), (1, 2))`: PyTorch's (kernel 3, stride 2, padding 1,
output_padding 1), the output exactly twice the input's size. Inputs' height and width must be
multiples of 16 (four halvings).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from rajax.models import layers

# The MLPs' hidden widths (official Scaling_Net middle_units) at each point that is scaled.
_SCALE_HIDDEN = {"branch1": 16, "branch2": 16, "enc2": 32, "enc3": 32, "enc4": 64, "dec2": 64, "dec3": 64, "dec4": 32}


def _identity_kernel(key, shape, dtype=jnp.float32):
  """A 1x1 convolution kernel [1, 1, C, C] that is the identity map."""
  del key
  if shape[:2] != (1, 1) or shape[2] != shape[3]:
    raise ValueError(f"An identity kernel is 1x1 with as many outputs as inputs, got shape {shape}.")
  return jnp.eye(shape[2], dtype=dtype).reshape(shape)


def _scaled(init, factor: float):
  return lambda key, shape, dtype=jnp.float32: factor * init(key, shape, dtype)


class QualityScale(nn.Module):
  """Linear(1, hidden), ReLU, Linear(hidden, features), ReLU: per-image channel scales from a quality in [0, 1]."""

  hidden: int
  features: int

  @nn.compact
  def __call__(self, q: jax.Array) -> jax.Array:
    h = nn.relu(nn.Dense(self.hidden, kernel_init=layers.torch_kernel_init, bias_init=layers.torch_bias_init(1),
                         name="fc1")(q[:, None]))
    s = nn.Dense(self.features, kernel_init=nn.initializers.zeros, bias_init=nn.initializers.ones, name="fc2")(h)
    return nn.relu(s)[:, None, None, :]   # [n, 1, 1, C]


class _ConvBnRelu(nn.Module):
  features: int
  kernel: int = 3
  stride: int = 1
  dtype: layers.Dtype = jnp.float32
  bn_stats: str = "global"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = layers.conv(self.features, self.kernel, in_features=x.shape[-1], stride=self.stride, padding=self.kernel // 2,
                    dtype=self.dtype, name="conv")(x)
    return nn.relu(layers.batch_norm(train=train, dtype=self.dtype, stats=self.bn_stats, name="bn")(x))


class NPPProcessor(nn.Module):
  """NPP's pre-processor (see the module docstring).

  Attributes:
    adaptive: add the quality-scaling MLPs; then `__call__` needs `quality`.
    channels: the encoder widths and the bottleneck's (the paper's 32/64/128/256/512).
    dtype: compute dtype (parameters are float32).
    bn_stats: training-mode BatchNorm statistics over the "global" batch or "per_device" slices.
    identity_init: start at (nearly) the identity: both 1x1 layers of the branch at the identity
      matrix with zero bias (so the branch passes images in [0, 1] through unchanged) and the UNet's
      last 1x1 layer at 1/100 of its default initialisation with zero bias (its ReLU output near 0,
      small enough not to change the image, large enough that every UNet weight gets gradient).
      The official code starts from PyTorch's default initialisation and trains P for 400k steps;
      a short schedule (the offline demo) starts here instead, where P + codec is the codec alone.
  """

  adaptive: bool = False
  channels: Sequence[int] = (32, 64, 128, 256, 512)
  dtype: layers.Dtype = jnp.float32
  bn_stats: str = "global"
  identity_init: bool = False

  @property
  def fresh_on_load(self) -> tuple[str, ...]:
    """The parameter groups a weights file may lack, started fresh (the quality layers of a P that
    starts from a fixed-quality one: the paper's third stage from its second)."""
    return ("scale_",) if self.adaptive else ()

  def init_kwargs(self, n: int) -> dict:
    """The call's extra arguments for initialisation on `n` images."""
    return {"quality": jnp.zeros((n,), jnp.float32)} if self.adaptive else {}

  def __post_init__(self):
    if len(self.channels) != 5:
      raise ValueError(f"NPPProcessor channels must be five widths (four levels and the bottleneck), got "
                       f"{tuple(self.channels)}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, quality: jax.Array | None = None) -> jax.Array:
    layers.check_images(x, who="NPPProcessor")
    if x.shape[1] % 16 or x.shape[2] % 16:
      raise ValueError(f"NPPProcessor needs height and width divisible by 16 (four halvings), got {x.shape[1:3]}; "
                       "crop or pad the images (config.data.crop).")
    n, dt = x.shape[0], self.dtype
    if self.adaptive:
      if quality is None:
        raise ValueError("An adaptive NPPProcessor needs quality= (the codec's quality normalised to [0, 1], "
                         "one per image); rajax.codecs.get(name).normalise(q) gives it.")
      q = jnp.broadcast_to(jnp.asarray(quality, jnp.float32), (n,))
    elif quality is not None:
      raise ValueError("quality= was given to an NPPProcessor built with adaptive=False: build it with adaptive=True "
                       "(config.processor.adaptive) or leave quality out.")

    def scale(h: jax.Array, point: str) -> jax.Array:
      if not self.adaptive:
        return h
      s = QualityScale(_SCALE_HIDDEN[point], h.shape[-1], name=f"scale_{point}")(q)
      return h * s.astype(h.dtype)

    x = x.astype(dt)
    block = dict(dtype=dt, bn_stats=self.bn_stats)
    # the 1x1 branch
    branch = dict(kernel_init=_identity_kernel, bias_init=nn.initializers.zeros) if self.identity_init else {}
    b = layers.conv(3, 1, in_features=3, dtype=dt, name="branch_conv1", **branch)(x)
    b = nn.relu(scale(b, "branch1"))
    b = layers.conv(3, 1, in_features=3, dtype=dt, name="branch_conv2", **branch)(b)
    b = nn.relu(scale(b, "branch2"))
    # the UNet
    c = list(self.channels)
    skips, h = [], x
    for i in range(4):
      if i:
        h = scale(h, f"enc{i + 1}")
      h = _ConvBnRelu(c[i], **block, name=f"enc{i}_a")(h, train=train)
      h = _ConvBnRelu(c[i], **block, name=f"enc{i}_b")(h, train=train)
      skips.append(h)
      h = _ConvBnRelu(c[i], stride=2, **block, name=f"enc{i}_down")(h, train=train)
    # decoder level i: two convs to `mid`, a transposed conv to `out`, concatenated with the skip
    for i, (mid, out) in enumerate(zip((c[4], c[3], c[2], c[1]), (c[3], c[2], c[1], c[0]))):
      h = _ConvBnRelu(mid, **block, name=f"dec{i}_a")(h, train=train)
      h = _ConvBnRelu(mid, **block, name=f"dec{i}_b")(h, train=train)
      h = nn.ConvTranspose(out, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)), dtype=dt, param_dtype=jnp.float32,
                           kernel_init=layers.torch_kernel_init, bias_init=layers.torch_bias_init(mid * 9),
                           name=f"dec{i}_up")(h)
      h = nn.relu(layers.batch_norm(train=train, dtype=dt, stats=self.bn_stats, name=f"dec{i}_up_bn")(h))
      h = jnp.concatenate([h, skips[3 - i]], axis=-1)
      if i:
        h = scale(h, f"dec{i + 1}")
    h = _ConvBnRelu(c[0], **block, name="head_a")(h, train=train)
    h = _ConvBnRelu(c[0], **block, name="head_b")(h, train=train)
    head = dict(kernel_init=_scaled(layers.torch_kernel_init, 0.01), bias_init=nn.initializers.zeros) \
        if self.identity_init else {}
    u = nn.relu(layers.conv(3, 1, in_features=c[0], dtype=dt, name="head_out", **head)(h))
    return jnp.clip((b + u).astype(jnp.float32), 0.0, 1.0)
