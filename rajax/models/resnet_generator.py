"""pix2pix's ResnetGenerator with BatchNorm: the transformer T of "RA with transformer".

T maps P's output to an image the recognizer classifies better, and is trained with the
recognition loss alone while P keeps only its pixel loss (a stop_gradient sits between them).
Layout (pix2pix `ResnetGenerator(3, 3, ngf, norm_layer=BatchNorm2d, n_blocks)`):

    reflect-pad 3, conv7x7(3->C, no bias), BN, ReLU                   stem
    2 x [conv3x3 stride 2 (no bias), BN, ReLU]: C -> 2C -> 4C          down_{i}
    n x [reflect-pad 1, conv3, BN, ReLU, reflect-pad 1, conv3, BN] + skip   blocks_{i}
    2 x [conv-transpose3x3 stride 2 (out pad 1, no bias), BN, ReLU]    up_{i}
    reflect-pad 3, conv7x7(C->3, bias), output (tanh + 1) / 2          head

Height and width must be multiples of 4 (two stride-2 stages).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from rajax.models import layers


class GeneratorBlock(nn.Module):
  """Reflect-padded conv3-BN-ReLU-conv3-BN with the identity added."""

  channels: int
  dtype: layers.Dtype = jnp.float32
  bn_stats: str = "global"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    c = self.channels
    r = layers.conv(c, 3, in_features=c, use_bias=False, dtype=self.dtype, name="conv1")(layers.reflect_pad(x, 1))
    r = nn.relu(layers.batch_norm(train=train, dtype=self.dtype, stats=self.bn_stats, name="bn1")(r))
    r = layers.conv(c, 3, in_features=c, use_bias=False, dtype=self.dtype, name="conv2")(layers.reflect_pad(r, 1))
    r = layers.batch_norm(train=train, dtype=self.dtype, stats=self.bn_stats, name="bn2")(r)
    return x + r


class ResnetGenerator(nn.Module):
  """pix2pix ResnetGenerator: [B, H, W, 3] in [0, 1] -> [B, H, W, 3] float32 in [0, 1].

  Attributes:
    blocks: residual blocks at the bottleneck (6 in the paper).
    channels: width of the first and last stage (ngf, 64); the bottleneck has 4x this.
    dtype: compute dtype (parameters are always float32).
    input_skip: learn a correction of the input in the pre-tanh domain, with the last conv starting
      at zero so an untrained T is the identity (not in the paper; as SRResNet's option).
    bn_stats: training-mode BatchNorm statistics over the "global" batch or "per_device" slices
      (`layers.PerDeviceBatchNorm`).
  """

  blocks: int = 6
  channels: int = 64
  dtype: layers.Dtype = jnp.float32
  input_skip: bool = False
  bn_stats: str = "global"

  def __post_init__(self):
    if self.bn_stats not in layers.BN_STATS:
      raise ValueError(f"ResnetGenerator bn_stats must be one of {layers.BN_STATS}, got {self.bn_stats!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    layers.check_images(x, who="ResnetGenerator")
    if x.shape[1] % 4 or x.shape[2] % 4:
      raise ValueError(
          f"ResnetGenerator needs height and width divisible by 4 (two stride-2 stages), got "
          f"{x.shape[1]}x{x.shape[2]}; crop the images to a multiple of 4."
      )
    c, dt = self.channels, self.dtype
    h = layers.conv(c, 7, in_features=3, use_bias=False, dtype=dt, name="stem")(layers.reflect_pad(x.astype(dt), 3))
    h = nn.relu(layers.batch_norm(train=train, dtype=dt, stats=self.bn_stats, name="stem_bn")(h))
    for i in range(2):
      cin = c * 2**i
      h = layers.conv(2 * cin, 3, in_features=cin, stride=2, padding=1, use_bias=False, dtype=dt, name=f"down_{i}")(h)
      h = nn.relu(layers.batch_norm(train=train, dtype=dt, stats=self.bn_stats, name=f"down_{i}_bn")(h))
    for i in range(self.blocks):
      h = GeneratorBlock(4 * c, dtype=dt, bn_stats=self.bn_stats, name=f"blocks_{i}")(h, train=train)
    for i in range(2):
      cin = c * 4 // 2**i
      # torch ConvTranspose2d(k=3, s=2, padding=1, output_padding=1) == a stride-1 conv over the
      # 2x-dilated input padded by (k-1-p, k-1-p+output_padding) = (1, 2), with the kernel flipped.
      h = nn.ConvTranspose(
          cin // 2, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)), transpose_kernel=True,
          use_bias=False, dtype=dt, param_dtype=jnp.float32, kernel_init=layers.torch_kernel_init,
          name=f"up_{i}")(h)
      h = nn.relu(layers.batch_norm(train=train, dtype=dt, stats=self.bn_stats, name=f"up_{i}_bn")(h))
    if not self.input_skip:
      y = layers.conv(3, 7, in_features=c, dtype=dt, name="head")(layers.reflect_pad(h, 3))
      return layers.to_unit_range(y)
    y = layers.conv(3, 7, in_features=c, dtype=dt, kernel_init=nn.initializers.zeros,
                    bias_init=nn.initializers.zeros, name="head")(layers.reflect_pad(h, 3))
    return layers.to_unit_range_around(y, x)
