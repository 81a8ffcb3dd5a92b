"""SRResNet, the processing model P of "Transferable Recognition-Aware Image Processing".

Layout (the paper's official code, after SRGAN):

    conv9x9(3->C) + PReLU                                   head
    N x [conv3 - BN - PReLU - conv3 - BN] + skip            blocks_{i}
    conv3(C->C) + PReLU                                     mid
    global skip: head + mid
    log2(scale) x [conv3(C->4C), pixel shuffle 2, PReLU]    up_{i}
    conv9x9(C->3), output (tanh + 1) / 2                    tail

With `input_skip=True` (not in the paper) the network learns a correction of the bicubic
upscaling of its input (the input itself at scale 1) in the pre-tanh domain,
out = (tanh(tail + atanh(2 bicubic(x) - 1)) + 1) / 2, and the tail starts at zero, so an
untrained P already reproduces bicubic upscaling. This residual learning (as in VDSR) makes short
trainings, e.g. on a CPU, converge far faster; the parameters are the same as without it.

Scale 1 (denoising, JPEG deblocking) has no upsampling stage. Pixel shuffle is dm-pix's
`depth_to_space`, which orders the 4C channels as (row offset, column offset, channel); PyTorch's
PixelShuffle orders them (channel, row offset, column offset). The two differ by a fixed
permutation of the preceding conv's output channels, which a weight converter applies.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from dm_pix import depth_to_space
from flax import linen as nn

from rajax.models import layers

SCALES = (1, 2, 4, 8)


class ResidualBlock(nn.Module):
  """conv3 - BN - PReLU - conv3 - BN, plus the identity."""

  channels: int
  dtype: layers.Dtype = jnp.float32
  bn_stats: str = "global"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    c = self.channels
    r = layers.conv(c, 3, in_features=c, padding=1, dtype=self.dtype, name="conv1")(x)
    r = layers.batch_norm(train=train, dtype=self.dtype, stats=self.bn_stats, name="bn1")(r)
    r = layers.prelu(name="prelu")(r)
    r = layers.conv(c, 3, in_features=c, padding=1, dtype=self.dtype, name="conv2")(r)
    r = layers.batch_norm(train=train, dtype=self.dtype, stats=self.bn_stats, name="bn2")(r)
    return x + r


class SRResNet(nn.Module):
  """SRResNet processor: [B, h, w, 3] in [0, 1] -> [B, h*scale, w*scale, 3] float32 in [0, 1].

  Attributes:
    scale: upscaling factor, one of 1, 2, 4, 8.
    blocks: number of residual blocks (5 in the paper's code, 16 in SRGAN).
    channels: feature width C.
    dtype: compute dtype (parameters are always float32).
    input_skip: learn a correction of the bicubic-upscaled input (see the module docstring).
    outer_kernel: size of the head and tail convolutions (9 in the paper; odd). The tail runs at
      the output resolution, so on small budgets (a CPU) a smaller one makes P several times cheaper.
    bn_stats: training-mode BatchNorm statistics over the "global" batch or "per_device" slices
      (`layers.PerDeviceBatchNorm`).
  """

  scale: int = 4
  blocks: int = 5
  channels: int = 64
  dtype: layers.Dtype = jnp.float32
  input_skip: bool = False
  bn_stats: str = "global"
  outer_kernel: int = 9

  def __post_init__(self):
    if self.bn_stats not in layers.BN_STATS:
      raise ValueError(f"SRResNet bn_stats must be one of {layers.BN_STATS}, got {self.bn_stats!r}.")
    if self.scale not in SCALES:
      raise ValueError(f"SRResNet scale must be one of {SCALES}, got {self.scale!r}.")
    if self.blocks < 0 or self.channels < 1:
      raise ValueError(
          f"SRResNet needs blocks >= 0 and channels >= 1, got blocks={self.blocks}, channels={self.channels}."
      )
    if self.outer_kernel < 1 or self.outer_kernel % 2 == 0:
      raise ValueError(f"SRResNet outer_kernel must be a positive odd size, got {self.outer_kernel!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    layers.check_images(x, who="SRResNet")
    c, dt, k = self.channels, self.dtype, self.outer_kernel
    inp = x
    x = x.astype(dt)
    head = layers.prelu(name="head_prelu")(
        layers.conv(c, k, in_features=3, padding=k // 2, dtype=dt, name="head")(x))
    h = head
    for i in range(self.blocks):
      h = ResidualBlock(c, dtype=dt, bn_stats=self.bn_stats, name=f"blocks_{i}")(h, train=train)
    h = layers.prelu(name="mid_prelu")(
        layers.conv(c, 3, in_features=c, padding=1, dtype=dt, name="mid")(h))
    h = head + h
    for i in range(self.scale.bit_length() - 1):
      h = layers.conv(4 * c, 3, in_features=c, padding=1, dtype=dt, name=f"up_{i}")(h)
      h = layers.prelu(name=f"up_{i}_prelu")(depth_to_space(h, 2))
    if not self.input_skip:
      y = layers.conv(3, k, in_features=c, padding=k // 2, dtype=dt, name="tail")(h)
      return layers.to_unit_range(y)
    y = layers.conv(3, k, in_features=c, padding=k // 2, dtype=dt, kernel_init=nn.initializers.zeros,
                    bias_init=nn.initializers.zeros, name="tail")(h)
    base = inp.astype(jnp.float32)
    if self.scale > 1:
      b, hh, ww, ch = base.shape
      base = jax.image.resize(base, (b, hh * self.scale, ww * self.scale, ch), "bicubic")
    return layers.to_unit_range_around(y, base)
