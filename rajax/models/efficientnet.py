"""EfficientNet-Lite as a Flax linen module (NHWC), equivalent to the `efficientnet_lite_pytorch` port.

Lite differs from EfficientNet-B*: no squeeze-excitation, ReLU6 instead of swish, and the stem (32
channels), the first and last stage and the head (1280 channels) are not scaled. BatchNorm has
momentum 0.01 (torch convention) and eps 1e-3.

Padding is TensorFlow's "SAME": per spatial axis, total = max((ceil(n/s)-1)*s + k - n, 0), split
(total//2 before, the rest after), so a stride-2 layer on an even size pads one more pixel at the
bottom/right than at the top/left. The PyTorch port fixes these pads when the model is built, from
`image_size` (224 for Lite0) and the sizes it implies (112, 56, 28, 14, 7), and applies the same
pads to any input; `image_size` does the same here (pads computed for that size, used for every
input), which equals TF's SAME whenever every stride-2 layer sees an even size (e.g. any multiple of
32). With `image_size=None` the pads are computed from each input's actual size (TF's SAME proper).

Module names mirror the port's keys without their leading underscores: `conv_stem`, `bn0`,
`blocks_N/expand_conv` (`bn0`, `depthwise_conv`, `bn1`, `project_conv`, `bn2`), `conv_head`,
`bn1`, `fc`; `torch_key` maps them back (`blocks_3/bn1` -> `_blocks.3._bn1`).
Dropout before `fc` (0.2) and drop-connect on the residual branches (rate 0.2 * block/num_blocks)
are active only with `train=True`, which then needs a 'dropout' rng.

With `features=True` the module also returns a dict of named activations:
  `stem`              after the stem ConvBNReLU6 [B, H/2, W/2, 32],
  `stage1`..`stage5`  the last block output at strides 2, 4, 8, 16, 32 (blocks 0, 2, 4, 10, 15;
                      16, 24, 40, 112, 320 channels for Lite0),
  `head`              after conv_head/bn1/ReLU6 [B, H/32, W/32, 1280],
  `pool`              the global average pool [B, 1280],
  `logits`            [B, num_classes] float32.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from rajax.models import layers

# repeats, kernel, stride, expand ratio, input filters, output filters (efficientnet_lite_builder).
_BLOCKS = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
           (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))


def round_filters(filters: int, width_coefficient: float, divisor: int = 8) -> int:
  """Scales a channel count and rounds it to a multiple of `divisor`, never more than 10% down."""
  if not width_coefficient:
    return filters
  filters *= width_coefficient
  new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
  if new < 0.9 * filters:
    new += divisor
  return int(new)


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow 'SAME' padding of one spatial axis of length `size`: (before, after)."""
  total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _conv(features, kernel, *, stride=1, groups=1, size, dtype, name):
  """A bias-free conv with TF 'SAME' pads for the static (h, w) `size`; called with the input to pad."""
  def apply(x):
    h, w = size if size is not None else x.shape[1:3]
    pads = (same_pads(h, kernel, stride), same_pads(w, kernel, stride))
    if groups > 1 and groups == features:
      return layers.DepthwiseConv(features, kernel, stride=stride, padding=pads, dtype=dtype,
                                  kernel_init=layers.torch_kernel_init, name=name)(x)
    return layers.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pads,
                   feature_group_count=groups, use_bias=False, dtype=dtype,
                   kernel_init=layers.torch_kernel_init, name=name)(x)
  return apply


def _bn(*, train, dtype, name):
  return nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3, dtype=dtype,
                      param_dtype=jnp.float32, name=name)


def _next_size(size, stride):
  return None if size is None else (math.ceil(size[0] / stride), math.ceil(size[1] / stride))


class MBConvBlock(nn.Module):
  """Mobile inverted bottleneck without squeeze-excitation: expand 1x1, depthwise kxk, project 1x1."""

  in_features: int
  out_features: int
  kernel: int
  stride: int
  expand_ratio: int
  drop_connect_rate: float = 0.0
  size: tuple[int, int] | None = None  # static input size the pads are computed for; None: dynamic
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    dt, size = self.dtype, self.size
    hidden = self.in_features * self.expand_ratio
    y = x
    if self.expand_ratio != 1:
      y = _conv(hidden, 1, size=size, dtype=dt, name="expand_conv")(y)
      y = nn.relu6(_bn(train=train, dtype=dt, name="bn0")(y))
    y = _conv(hidden, self.kernel, stride=self.stride, groups=hidden, size=size, dtype=dt,
              name="depthwise_conv")(y)
    y = nn.relu6(_bn(train=train, dtype=dt, name="bn1")(y))
    y = _conv(self.out_features, 1, size=_next_size(size, self.stride), dtype=dt, name="project_conv")(y)
    y = _bn(train=train, dtype=dt, name="bn2")(y)
    if self.stride == 1 and self.in_features == self.out_features:
      if train and self.drop_connect_rate > 0:
        keep = 1.0 - self.drop_connect_rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (y.shape[0], 1, 1, 1))
        y = y / keep * mask.astype(y.dtype)
      y = y + x
    return y


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite{0..4} by width/depth coefficient; Lite0 (1.0, 1.0, 224) by default."""

  num_classes: int = 1000
  width_coefficient: float = 1.0
  depth_coefficient: float = 1.0
  image_size: int | Sequence[int] | None = 224
  dropout_rate: float = 0.2
  drop_connect_rate: float = 0.2
  dtype: layers.Dtype = jnp.float32

  def block_specs(self) -> list[tuple[int, int, int, int, int]]:
    """(in_features, out_features, kernel, stride, expand_ratio) of every block, in order."""
    specs = []
    for i, (r, k, s, e, fin, fout) in enumerate(_BLOCKS):
      fin, fout = round_filters(fin, self.width_coefficient), round_filters(fout, self.width_coefficient)
      if i == 0 or i == len(_BLOCKS) - 1:
        if i == 0:
          fin = 32  # the unscaled stem
      else:
        r = int(math.ceil(self.depth_coefficient * r))
      specs.append((fin, fout, k, s, e))
      specs.extend((fout, fout, k, 1, e) for _ in range(r - 1))
    return specs

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, features: bool = False):
    layers.check_images(x, who="EfficientNet-Lite")
    dt = self.dtype
    size = self.image_size
    if isinstance(size, int):
      size = (size, size)
    elif size is not None:
      size = (int(size[0]), int(size[1]))
    feats = {}
    h = _conv(32, 3, stride=2, size=size, dtype=dt, name="conv_stem")(x.astype(dt))
    h = nn.relu6(_bn(train=train, dtype=dt, name="bn0")(h))
    feats["stem"] = h
    size = _next_size(size, 2)
    specs = self.block_specs()
    stage = 0
    for n, (fin, fout, k, s, e) in enumerate(specs):
      h = MBConvBlock(fin, fout, k, s, e, drop_connect_rate=self.drop_connect_rate * n / len(specs),
                      size=size, dtype=dt, name=f"blocks_{n}")(h, train=train)
      size = _next_size(size, s)
      if n == len(specs) - 1 or specs[n + 1][3] != 1:
        stage += 1
        feats[f"stage{stage}"] = h
    h = _conv(1280, 1, size=size, dtype=dt, name="conv_head")(h)
    h = nn.relu6(_bn(train=train, dtype=dt, name="bn1")(h))
    feats["head"] = h
    h = jnp.mean(h.astype(jnp.float32), axis=(1, 2))
    feats["pool"] = h
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    logits = nn.Dense(self.num_classes, dtype=dt, param_dtype=jnp.float32,
                      kernel_init=layers.torch_kernel_init, bias_init=layers.torch_bias_init(1280),
                      name="fc")(h)
    logits = logits.astype(jnp.float32)
    if features:
      feats["logits"] = logits
      return logits, feats
    return logits


MODULE = EfficientNetLite

ARCHS = {
    "efficientnet_lite0": dict(width_coefficient=1.0, depth_coefficient=1.0, image_size=224, dropout_rate=0.2),
}


def torch_key(path: str) -> str:
  """Flax module path -> the port's module prefix: 'conv_stem' -> '_conv_stem', 'blocks_3/bn1' -> '_blocks.3._bn1'."""
  m = re.fullmatch(r"blocks_(\d+)/(expand_conv|bn0|depthwise_conv|bn1|project_conv|bn2)", path)
  if m:
    return f"_blocks.{m[1]}._{m[2]}"
  if path in ("conv_stem", "bn0", "conv_head", "bn1", "fc"):
    return "_" + path
  raise ValueError(f"No EfficientNet-Lite key for Flax module path {path!r}.")


def rename_torch_keys(state_dict):
  """Renames legacy keys of a torch state dict to the current layout (none for EfficientNet-Lite)."""
  return dict(state_dict)
