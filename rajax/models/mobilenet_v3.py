"""torchvision's MobileNetV3-Large feature extractor (`mobilenet_v3_large().features`) in Flax, NHWC.

The body of fasterrcnn_mobilenet_v3_large_fpn: `features` is a Sequential of 17 modules,
  0       Conv2dNormActivation(3 -> 16, 3x3, stride 2, Hardswish)
  1..15   InvertedResidual blocks of the Large table (expand 1x1 unless expanded == input, depthwise
          k x k with the stride, SqueezeExcitation where listed, project 1x1 without activation,
          residual when stride 1 and input == output)
  16      Conv2dNormActivation(160 -> 960, 1x1, Hardswish)
with the norm layer a factory `norm(train=, dtype=, name=)` (FrozenBatchNorm for the detector,
rajax.detection.backbones). SqueezeExcitation: mean over space, fc1 1x1 (bias) + ReLU, fc2 1x1
(bias) + Hardsigmoid, times the input; squeeze channels make_divisible(expanded // 4, 8).

`__call__` returns every module's output by its index ("0" .. "16"). Module paths -> torch:
`features_i/conv`, `features_i/norm` -> `i.0`, `i.1` (first and last); inside block i,
`features_i/block_j/conv|norm` -> `i.block.j.0|1` and `features_i/block_j/fc1|fc2` -> `i.block.j.fc1|fc2`
(`torch_key`, relative to `features`).

Detector stages (torchvision's _mobilenet_extractor): the strided blocks (_is_cn) with the first
and last modules, stage_indices = [0, 2, 4, 7, 13, 16]; the FPN takes stages 4 and 5, modules 13
(160 channels) and 16 (960 channels), both at stride 32; `trainable_layers` in 0..6 freezes the
modules before stage_indices[6 - trainable_layers] (all 17 for 0).
"""

from __future__ import annotations

import re
from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from rajax.models import layers
from rajax.models.mobilenet import make_divisible

# (input, kernel, expanded, output, squeeze-excite, hardswish, stride): torchvision's Large table.
LARGE = (
    (16, 3, 16, 16, False, False, 1), (16, 3, 64, 24, False, False, 2), (24, 3, 72, 24, False, False, 1),
    (24, 5, 72, 40, True, False, 2), (40, 5, 120, 40, True, False, 1), (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, 2), (80, 3, 200, 80, False, True, 1), (80, 3, 184, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1), (80, 3, 480, 112, True, True, 1), (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, 2), (160, 5, 960, 160, True, True, 1), (160, 5, 960, 160, True, True, 1),
)
STAGE_INDICES = (0,) + tuple(i + 1 for i, c in enumerate(LARGE) if c[6] > 1) + (len(LARGE) + 1,)

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # kaiming_normal_(mode="fan_out")


def hardswish(x):
  return x * jax.nn.relu6(x + 3.0) / 6.0


def hardsigmoid(x):
  return jax.nn.relu6(x + 3.0) / 6.0


class ConvNormAct(nn.Module):
  """Conv2dNormActivation: conv (no bias) + norm + activation ("relu", "hardswish" or None)."""

  features: int
  kernel: int = 1
  stride: int = 1
  depthwise: bool = False
  act: str | None = "relu"
  norm: Callable[..., nn.Module] | None = None
  dtype: layers.Dtype = jnp.float32
  dilation: int = 1

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    p = (self.kernel - 1) // 2 * self.dilation
    if self.depthwise:
      x = layers.DepthwiseConv(self.features, self.kernel, stride=self.stride, padding=((p, p), (p, p)),
                               dtype=self.dtype, kernel_init=_conv_init, dilation=self.dilation, name="conv")(x)
    else:
      x = layers.Conv(self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
                      padding=((p, p), (p, p)), use_bias=False, dtype=self.dtype, kernel_init=_conv_init,
                      dilation=self.dilation, name="conv")(x)
    x = self.norm(train=train, dtype=self.dtype, name="norm")(x)
    if self.act == "relu":
      return nn.relu(x)
    if self.act == "hardswish":
      return hardswish(x)
    return x


class SqueezeExcitation(nn.Module):
  channels: int
  squeeze: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(self.dtype)
    s = nn.relu(layers.Conv(self.squeeze, (1, 1), dtype=self.dtype, name="fc1",
                            bias_init=nn.initializers.zeros, kernel_init=_conv_init)(s))
    s = layers.Conv(self.channels, (1, 1), dtype=self.dtype, name="fc2", bias_init=nn.initializers.zeros,
                    kernel_init=_conv_init)(s)
    return x * hardsigmoid(s)


class InvertedResidual(nn.Module):
  cin: int
  kernel: int
  expanded: int
  cout: int
  se: bool
  hs: bool
  stride: int
  norm: Callable[..., nn.Module] | None = None
  dtype: layers.Dtype = jnp.float32
  dilation: int = 1  # of the depthwise convolution; > 1 replaces its stride by 1 (torchvision's rule)

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    act = "hardswish" if self.hs else "relu"
    j, y = 0, x
    if self.expanded != self.cin:
      y = ConvNormAct(self.expanded, 1, act=act, norm=self.norm, dtype=self.dtype, name=f"block_{j}")(y, train=train)
      j += 1
    stride = 1 if self.dilation > 1 else self.stride
    y = ConvNormAct(self.expanded, self.kernel, stride, depthwise=True, act=act, norm=self.norm,
                    dtype=self.dtype, dilation=self.dilation, name=f"block_{j}")(y, train=train)
    j += 1
    if self.se:
      y = SqueezeExcitation(self.expanded, make_divisible(self.expanded // 4, 8), self.dtype, name=f"block_{j}")(y)
      j += 1
    y = ConvNormAct(self.cout, 1, act=None, norm=self.norm, dtype=self.dtype, name=f"block_{j}")(y, train=train)
    if self.stride == 1 and self.cin == self.cout:
      y = y + x
    return y


class MobileNetV3LargeBody(nn.Module):
  """`mobilenet_v3_large().features`: {"0": ..., ..., "16": ...}, each module's output.

  `dilated` is torchvision's `mobilenet_v3_large(dilated=True)` (the segmentation backbones): the
  last three blocks (features 13..15, the C4 stage) get dilation 2 in their depthwise convolution
  and stride 1, so features 13..16 are at stride 16 instead of 32. Block 13 still counts as a
  strided stage (torchvision's _is_cn looks at the table's stride) and has no residual.
  """

  norm: Callable[..., nn.Module]
  dtype: layers.Dtype = jnp.float32
  dilated: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool = False) -> dict[str, jax.Array]:
    dt = self.dtype
    out = {}
    h = ConvNormAct(16, 3, 2, act="hardswish", norm=self.norm, dtype=dt, name="features_0")(x.astype(dt), train=train)
    out["0"] = h
    for i, (cin, k, e, cout, se, hs, s) in enumerate(LARGE, start=1):
      d = 2 if self.dilated and i > len(LARGE) - 3 else 1
      h = InvertedResidual(cin, k, e, cout, se, hs, s, norm=self.norm, dtype=dt, dilation=d,
                           name=f"features_{i}")(h, train=train)
      out[str(i)] = h
    n = len(LARGE) + 1
    out[str(n)] = ConvNormAct(6 * LARGE[-1][3], 1, act="hardswish", norm=self.norm, dtype=dt,
                              name=f"features_{n}")(h, train=train)
    return out


def torch_key(path: str) -> str:
  """Body path -> torch prefix inside `features`: 'features_4/block_2/fc1' -> '4.block.2.fc1'."""
  m = re.fullmatch(r"features_(\d+)/(conv|norm)", path)
  if m:
    return f"{m[1]}.{0 if m[2] == 'conv' else 1}"
  m = re.fullmatch(r"features_(\d+)/block_(\d+)/(conv|norm|fc1|fc2)", path)
  if m:
    leaf = {"conv": "0", "norm": "1"}.get(m[3], m[3])
    return f"{m[1]}.block.{m[2]}.{leaf}"
  raise ValueError(f"No torchvision MobileNetV3 key for Flax module path {path!r}.")


def frozen_paths(trainable_layers: int) -> tuple[str, ...]:
  """The `features_i` torchvision's _mobilenet_extractor freezes for `trainable_layers` (0..6)."""
  n = len(STAGE_INDICES)
  if not 0 <= trainable_layers <= n:
    raise ValueError(f"trainable_backbone_layers must be in 0..{n} for MobileNetV3, got {trainable_layers}.")
  before = len(LARGE) + 2 if trainable_layers == 0 else STAGE_INDICES[n - trainable_layers]
  return tuple(f"features_{i}" for i in range(before))
