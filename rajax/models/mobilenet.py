"""torchvision's MobileNetV2 as a Flax linen module (NHWC), layer for layer.

Module names follow torchvision's `nn.Sequential` indices: the stem is `features_0` (`conv`, `bn`
= torch `features.0.0`, `features.0.1`), inverted residual block N is `features_N` with children
`conv_0` .. `conv_3` (= torch `features.N.conv.0` ..; a ConvBNReLU6 child has `conv`/`bn` = `.0`/`.1`),
the last 1x1 ConvBNReLU6 is `features_18` and the linear layer `classifier_1`; `torch_key` maps them.
BatchNorm uses torch's defaults (momentum 0.1, eps 1e-5); convolutions pad (k-1)//2 symmetrically.
Dropout (p=0.2, before the classifier) is active only with `train=True` (needs a 'dropout' rng).

With `features=True` the module also returns a dict of named activations:
  `stem`              after the first ConvBNReLU6 [B, H/2, W/2, 32],
  `stage1`..`stage5`  the last block output at strides 2, 4, 8, 16, 32 (features.1, .3, .6, .13, .17;
                      16, 24, 32, 96, 320 channels at width_mult=1),
  `head`              after the last 1x1 ConvBNReLU6 [B, H/32, W/32, 1280],
  `pool`              the global average pool [B, 1280],
  `logits`            [B, num_classes] float32.
"""

from __future__ import annotations

import re
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from rajax.models import layers

# torchvision: kaiming_normal_(mode="fan_out") for convolutions; linear N(0, 0.01), zero bias.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# t (expansion), c (output channels), n (blocks), s (stride of the first block)
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1))


def make_divisible(v: float, divisor: int = 8) -> int:
  """torchvision's channel rounding: nearest multiple of `divisor`, never more than 10% below `v`."""
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return new_v


def _conv(features, kernel, *, stride=1, groups=1, dtype, name):
  p = (kernel - 1) // 2
  if groups > 1 and groups == features:
    return layers.DepthwiseConv(features, kernel, stride=stride, padding=((p, p), (p, p)), dtype=dtype,
                                kernel_init=_conv_init, name=name)
  return layers.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((p, p), (p, p)),
                 feature_group_count=groups, use_bias=False, dtype=dtype,
                 kernel_init=_conv_init, name=name)


class ConvBNReLU6(nn.Module):
  """torchvision's Conv2dNormActivation(..., activation_layer=ReLU6): children `conv` and `bn`."""

  features: int
  kernel: int = 3
  stride: int = 1
  groups: int = 1
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = _conv(self.features, self.kernel, stride=self.stride, groups=self.groups, dtype=self.dtype,
              name="conv")(x)
    return nn.relu6(layers.batch_norm(train=train, dtype=self.dtype, name="bn")(x))


class InvertedResidual(nn.Module):
  """Expand 1x1 (unless t=1), depthwise 3x3 with the stride, project 1x1 + BN; skip if shapes agree."""

  in_features: int
  out_features: int
  stride: int
  expand_ratio: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    dt = self.dtype
    hidden = int(round(self.in_features * self.expand_ratio))
    i = 0  # index into torch's `conv` nn.Sequential
    y = x
    if self.expand_ratio != 1:
      y = ConvBNReLU6(hidden, 1, dtype=dt, name=f"conv_{i}")(y, train=train)
      i += 1
    y = ConvBNReLU6(hidden, 3, stride=self.stride, groups=hidden, dtype=dt, name=f"conv_{i}")(y, train=train)
    y = _conv(self.out_features, 1, dtype=dt, name=f"conv_{i + 1}")(y)
    y = layers.batch_norm(train=train, dtype=dt, name=f"conv_{i + 2}")(y)
    if self.stride == 1 and self.in_features == self.out_features:
      return x + y
    return y


class MobileNetV2(nn.Module):
  """torchvision's MobileNetV2; `width_mult` scales every width (the last one only upwards)."""

  num_classes: int = 1000
  width_mult: float = 1.0
  settings: Sequence[Sequence[int]] = _SETTINGS
  dropout_rate: float = 0.2
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, features: bool = False):
    layers.check_images(x, who="MobileNetV2")
    dt = self.dtype
    feats = {}
    in_ch = make_divisible(32 * self.width_mult)
    last_ch = make_divisible(1280 * max(1.0, self.width_mult))
    h = ConvBNReLU6(in_ch, 3, stride=2, dtype=dt, name="features_0")(x.astype(dt), train=train)
    feats["stem"] = h
    blocks = [(t, make_divisible(c * self.width_mult), s if j == 0 else 1)
              for t, c, n, s in self.settings for j in range(n)]
    stage = 0
    for k, (t, out_ch, stride) in enumerate(blocks):
      h = InvertedResidual(in_ch, out_ch, stride, t, dtype=dt, name=f"features_{k + 1}")(h, train=train)
      in_ch = out_ch
      if k == len(blocks) - 1 or blocks[k + 1][2] != 1:
        stage += 1
        feats[f"stage{stage}"] = h
    h = ConvBNReLU6(last_ch, 1, dtype=dt, name=f"features_{len(blocks) + 1}")(h, train=train)
    feats["head"] = h
    h = jnp.mean(h.astype(jnp.float32), axis=(1, 2))
    feats["pool"] = h
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    logits = nn.Dense(self.num_classes, dtype=dt, param_dtype=jnp.float32,
                      kernel_init=nn.initializers.normal(0.01), bias_init=nn.initializers.zeros,
                      name="classifier_1")(h)
    logits = logits.astype(jnp.float32)
    if features:
      feats["logits"] = logits
      return logits, feats
    return logits


MODULE = MobileNetV2

ARCHS = {
    "mobilenet_v2": dict(width_mult=1.0),
}


def torch_key(path: str) -> str:
  """Flax module path -> torchvision module prefix.

  'features_0/conv' -> 'features.0.0', 'features_2/conv_1/bn' -> 'features.2.conv.1.1',
  'features_2/conv_3' -> 'features.2.conv.3', 'classifier_1' -> 'classifier.1'.
  """
  m = re.fullmatch(r"(features|classifier)_(\d+)(?:/conv_(\d+))?(?:/(conv|bn))?", path)
  if not m or (m[1] == "classifier" and (m[3] or m[4])):
    raise ValueError(f"No torchvision MobileNetV2 key for Flax module path {path!r}.")
  key = f"{m[1]}.{m[2]}"
  if m[3] is not None:
    key += f".conv.{m[3]}"
  if m[4] is not None:
    key += ".0" if m[4] == "conv" else ".1"
  return key


def rename_torch_keys(state_dict):
  """Renames legacy keys of a torch state dict to the current layout (none for MobileNetV2)."""
  return dict(state_dict)
