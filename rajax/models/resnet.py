"""torchvision's ResNet family as Flax linen modules (NHWC), layer for layer.

Parameter names follow torchvision's state-dict keys (`conv1`, `bn1`, `layer1_0/conv1`,
`layer1_0/downsample_conv`, `fc`, ...), so converting a torchvision checkpoint is a rename and a
transpose. Stride sits on the 3x3 convolution of a bottleneck (ResNet v1.5, as torchvision).

Calling a module returns logits [B, num_classes]; with `features=True` it returns a dict of named
activations as well: `stem` (after the first ReLU), `layer1`..`layer4`, `pool` (global average
pool) and `logits`.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from rajax.models import layers

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu") for every convolution.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features, kernel, *, in_features, stride=1, padding=0, dilation=1, dtype, name):
  return layers.conv(features, kernel, in_features=in_features, stride=stride, padding=padding,
                     use_bias=False, dtype=dtype, kernel_init=_conv_init, dilation=dilation, name=name)


class BasicBlock(nn.Module):
  planes: int
  in_planes: int
  stride: int = 1
  dtype: layers.Dtype = jnp.float32
  norm: Callable[..., nn.Module] | None = None  # norm(train=, dtype=, name=); None: layers.batch_norm
  expansion = 1

  @nn.compact
  def __call__(self, x, *, train: bool):
    dt, p = self.dtype, self.planes
    y = _conv(p, 3, in_features=self.in_planes, stride=self.stride, padding=1, dtype=dt, name="conv1")(x)
    y = nn.relu(_norm(self, train, "bn1")(y))
    y = _conv(p, 3, in_features=p, padding=1, dtype=dt, name="conv2")(y)
    y = _norm(self, train, "bn2")(y)
    return nn.relu(y + _shortcut(self, x, train))


class Bottleneck(nn.Module):
  planes: int
  in_planes: int
  stride: int = 1
  dtype: layers.Dtype = jnp.float32
  norm: Callable[..., nn.Module] | None = None  # norm(train=, dtype=, name=); None: layers.batch_norm
  dilation: int = 1  # of the 3x3 convolution (padding = dilation), as torchvision's dilated stages
  expansion = 4

  @nn.compact
  def __call__(self, x, *, train: bool):
    dt, p = self.dtype, self.planes
    y = _conv(p, 1, in_features=self.in_planes, dtype=dt, name="conv1")(x)
    y = nn.relu(_norm(self, train, "bn1")(y))
    y = _conv(p, 3, in_features=p, stride=self.stride, padding=self.dilation, dilation=self.dilation, dtype=dt,
              name="conv2")(y)
    y = nn.relu(_norm(self, train, "bn2")(y))
    y = _conv(p * 4, 1, in_features=p, dtype=dt, name="conv3")(y)
    y = _norm(self, train, "bn3")(y)
    return nn.relu(y + _shortcut(self, x, train))


def _norm(block, train, name):
  """The block's normalisation layer: its `norm` (e.g. a detector's frozen BatchNorm) or BatchNorm."""
  make = block.norm if block.norm is not None else layers.batch_norm
  return make(train=train, dtype=block.dtype, name=name)


def _shortcut(block, x, train):
  out = block.planes * block.expansion
  if block.stride == 1 and block.in_planes == out:
    return x
  s = _conv(out, 1, in_features=block.in_planes, stride=block.stride, dtype=block.dtype, name="downsample_conv")(x)
  return _norm(block, train, "downsample_bn")(s)


class ResNet(nn.Module):
  """A torchvision ResNet. `width` scales every stage (64 for the ImageNet models)."""

  stage_sizes: Sequence[int]
  block: str = "basic"
  num_classes: int = 1000
  width: int = 64
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, features: bool = False):
    layers.check_images(x, who=f"ResNet{_depth(self)}")
    block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[self.block]
    dt, w = self.dtype, self.width
    feats = {}
    h = _conv(w, 7, in_features=3, stride=2, padding=3, dtype=dt, name="conv1")(x.astype(dt))
    h = nn.relu(layers.batch_norm(train=train, dtype=dt, name="bn1")(h))
    feats["stem"] = h
    h = layers.max_pool(h, (3, 3), (2, 2), ((1, 1), (1, 1)))
    in_planes = w
    for stage, n in enumerate(self.stage_sizes):
      planes = w * 2**stage
      for j in range(n):
        stride = 2 if (stage > 0 and j == 0) else 1
        h = block_cls(planes, in_planes, stride, dtype=dt, name=f"layer{stage + 1}_{j}")(h, train=train)
        in_planes = planes * block_cls.expansion
      feats[f"layer{stage + 1}"] = h
    h = jnp.mean(h.astype(jnp.float32), axis=(1, 2))
    feats["pool"] = h
    logits = nn.Dense(
        self.num_classes, dtype=dt, param_dtype=jnp.float32, kernel_init=layers.torch_kernel_init,
        bias_init=layers.torch_bias_init(in_planes), name="fc")(h)
    logits = logits.astype(jnp.float32)
    if features:
      feats["logits"] = logits
      return logits, feats
    return logits


def _depth(m: ResNet) -> int:
  return sum(m.stage_sizes) * (2 if m.block == "basic" else 3) + 2


ARCHS = {
    "resnet18": dict(stage_sizes=(2, 2, 2, 2), block="basic"),
    "resnet34": dict(stage_sizes=(3, 4, 6, 3), block="basic"),
    "resnet50": dict(stage_sizes=(3, 4, 6, 3), block="bottleneck"),
    "resnet101": dict(stage_sizes=(3, 4, 23, 3), block="bottleneck"),
    "resnet152": dict(stage_sizes=(3, 8, 36, 3), block="bottleneck"),
}

MODULE = ResNet


def torch_key(path: str) -> str:
  """Flax module path -> torchvision module prefix: 'layer1_0/downsample_conv' -> 'layer1.0.downsample.0'."""
  parts = path.split("/")
  out = []
  for i, part in enumerate(parts):
    m = re.fullmatch(r"layer(\d+)_(\d+)", part)
    if i == 0 and m:
      out.append(f"layer{m[1]}.{m[2]}")
    elif i == 0 and part in ("conv1", "bn1", "fc") and len(parts) == 1:
      out.append(part)
    elif i == 1 and part in _BLOCK_KEYS:
      out.append(_BLOCK_KEYS[part])
    else:
      raise ValueError(f"No torchvision ResNet key for Flax module path {path!r}.")
  return ".".join(out)


_BLOCK_KEYS = {
    "conv1": "conv1", "bn1": "bn1", "conv2": "conv2", "bn2": "bn2", "conv3": "conv3", "bn3": "bn3",
    "downsample_conv": "downsample.0", "downsample_bn": "downsample.1",
}


def rename_torch_keys(state_dict):
  """Renames legacy keys of a torch state dict to the current layout (none for ResNets)."""
  return dict(state_dict)
