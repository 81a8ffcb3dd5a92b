"""Detection backbones: torchvision's ResNet and VGG bodies with frozen BatchNorm, NHWC.

A backbone is a linen module `(images, *, train) -> {name: feature map}` on normalised NHWC
images, with `out_channels` (the channels of each returned map, in order), `torch_key` (its Flax
module path -> torch module prefix, relative to the detector's backbone body) and
`frozen_paths(trainable_layers)` (the module paths torchvision freezes). A detector plugs any
such backbone in; the MobileNetV3-Large body of `fasterrcnn_mobilenet_v3_large_fpn` is the next
one (see `BACKBONES`).

The ResNet body reuses `rajax.models.resnet`'s blocks and names (`conv1`, `bn1`,
`layer1_0/conv1`, ...), with `FrozenBatchNorm` in place of BatchNorm as torchvision's detectors
build it when weights are given (`norm_layer=FrozenBatchNorm2d`). It returns `layer1`..`layer4`
(torchvision's return_layers {"layer1": "0", ..., "layer4": "3"}: strides 4, 8, 16, 32).

FrozenBatchNorm keeps the four arrays of torchvision's FrozenBatchNorm2d (weight, bias,
running_mean, running_var are buffers there, never trained) in the `batch_stats` collection as
`scale`, `bias`, `mean`, `var`, and computes, as torchvision does,
    y = x * s + (bias - mean * s),   s = scale * rsqrt(var + eps).
`eps` is 1e-5 (FrozenBatchNorm2d's default), except that torchvision sets it to 0.0 after loading
the COCO_V1 weights of fasterrcnn_resnet50_fpn (`_utils.overwrite_eps(model, 0.0)`, kept for
backward compatibility with the checkpoints trained before pytorch/vision#2933); the detector
builder passes that eps for those weights.

Trainable layers (torchvision's `_resnet_fpn_extractor`): of ["layer4", "layer3", "layer2",
"layer1", "conv1"] the first `trainable_layers` train, and `bn1` too when all 5 do; the other
backbone parameters get no gradient (here: `jax.lax.stop_gradient` on them, see
`stop_frozen_gradients`). Frozen BatchNorm layers have no parameters either way.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import traverse_util

from rajax.models import layers, resnet


class FrozenBatchNorm(nn.Module):
  """torchvision's FrozenBatchNorm2d on NHWC: fixed statistics and affine terms (batch_stats)."""

  eps: float = 1e-5
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.variable("batch_stats", "scale", lambda: jnp.ones((c,), jnp.float32)).value
    bias = self.variable("batch_stats", "bias", lambda: jnp.zeros((c,), jnp.float32)).value
    mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32)).value
    var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32)).value
    s = scale * jax.lax.rsqrt(var + jnp.float32(self.eps))
    shift = bias - mean * s
    return (x * s.astype(x.dtype) + shift.astype(x.dtype)).astype(self.dtype)


def frozen_norm(eps: float) -> Callable[..., nn.Module]:
  """A `norm(train=, dtype=, name=)` factory for rajax's ResNet blocks: FrozenBatchNorm(eps)."""
  return functools.partial(_frozen_norm, eps=float(eps))


def _frozen_norm(*, train: bool, dtype, name: str, eps: float) -> nn.Module:
  del train  # frozen: the same in training and inference
  return FrozenBatchNorm(eps=eps, dtype=dtype, name=name)


def trainable_norm(*, train: bool, dtype, name: str) -> nn.Module:
  """torch.nn.BatchNorm2d (rajax's layers.batch_norm): what the v2 detector's backbone uses."""
  return layers.batch_norm(train=train, dtype=dtype, name=name)


class ResNetBody(nn.Module):
  """torchvision's ResNet without its pool and fc: {"layer1": C2, ..., "layer4": C5}.

  `dilate` is torchvision's replace_stride_with_dilation for layer2..layer4: a dilated stage keeps
  stride 1 and multiplies the running dilation by 2 instead; its first block's 3x3 convolution
  has the dilation before the stage, the others the new one (the segmentation models use
  (False, True, True): output stride 8, dilations 2 in layer3 and 4 in layer4).
  """

  stage_sizes: Sequence[int]
  block: str = "bottleneck"
  norm: Callable[..., nn.Module] = frozen_norm(1e-5)
  dtype: layers.Dtype = jnp.float32
  dilate: tuple[bool, bool, bool] = (False, False, False)

  @property
  def out_channels(self) -> tuple[int, ...]:
    e = 4 if self.block == "bottleneck" else 1
    return tuple(64 * 2**i * e for i in range(len(self.stage_sizes)))

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    block_cls = {"basic": resnet.BasicBlock, "bottleneck": resnet.Bottleneck}[self.block]
    dt = self.dtype
    h = resnet._conv(64, 7, in_features=3, stride=2, padding=3, dtype=dt, name="conv1")(x.astype(dt))
    h = nn.relu(self.norm(train=train, dtype=dt, name="bn1")(h))
    h = nn.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    if any(self.dilate) and self.block != "bottleneck":
      raise ValueError("Dilated ResNet stages need bottleneck blocks (torchvision's BasicBlock has no dilation).")
    out, in_planes, dilation = {}, 64, 1
    for stage, n in enumerate(self.stage_sizes):
      planes = 64 * 2**stage
      stage_stride, previous = (2 if stage > 0 else 1), dilation
      if stage > 0 and self.dilate[stage - 1]:
        dilation, stage_stride = dilation * stage_stride, 1
      for j in range(n):
        stride = stage_stride if j == 0 else 1
        d = {"dilation": previous if j == 0 else dilation} if dilation > 1 else {}
        h = block_cls(planes, in_planes, stride, dtype=dt, norm=self.norm, name=f"layer{stage + 1}_{j}",
                      **d)(h, train=train)
        in_planes = planes * block_cls.expansion
      out[f"layer{stage + 1}"] = h
    return out


def resnet_torch_key(path: str) -> str:
  """Body path -> torch prefix inside `backbone.body`: 'layer1_0/downsample_bn' -> 'layer1.0.downsample.1'."""
  if path in ("conv1", "bn1"):
    return path
  return resnet.torch_key(path)


def resnet_frozen_paths(trainable_layers: int) -> tuple[str, ...]:
  """Top-level body module names whose parameters torchvision freezes for `trainable_layers` (0..5)."""
  if not 0 <= trainable_layers <= 5:
    raise ValueError(f"trainable_backbone_layers must be in 0..5 (torchvision's range), got {trainable_layers}.")
  train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
  if trainable_layers == 5:
    train.append("bn1")
  return tuple(n for n in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4") if n not in train)


_VGG16 = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG16Body(nn.Module):
  """VGG-16's convolutions up to conv5_3 and its ReLU (torchvision `vgg16().features[:-1]`): stride 16.

  Returns {"conv5_3": [B, H/16, W/16, 512]}. Layer names are the indices of torchvision's
  `features` Sequential (`features_0` ... `features_28`), as rajax.models.vgg names them.
  """

  dtype: layers.Dtype = jnp.float32

  @property
  def out_channels(self) -> tuple[int, ...]:
    return (512,)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    del train
    h, idx = x.astype(self.dtype), 0
    for s, widths in enumerate(_VGG16):
      for width in widths:
        h = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                    bias_init=nn.initializers.zeros, name=f"features_{idx}")(h)
        h = nn.relu(h)
        idx += 2
      if s < len(_VGG16) - 1:
        h = nn.max_pool(h, (2, 2), strides=(2, 2))
        idx += 1
    return {"conv5_3": h}


def vgg_torch_key(path: str) -> str:
  m = re.fullmatch(r"features_(\d+)", path)
  if not m:
    raise ValueError(f"No torchvision VGG key for Flax module path {path!r}.")
  return m[1]


def vgg_frozen_paths(trainable_layers: int) -> tuple[str, ...]:
  """Frozen VGG-16 convolutions: `trainable_layers` counts stages from the top, 5 trains all (the
  fasterrcnn_vgg16 default), 3 freezes stages 1-2 (conv1_x, conv2_x: features 0..7), as
  py-faster-rcnn's VGG-16 models did (lr_mult 0 there)."""
  if not 0 <= trainable_layers <= 5:
    raise ValueError(f"trainable_backbone_layers must be in 0..5, got {trainable_layers}.")
  starts = (0, 5, 10, 17, 24)  # first `features` index of each stage
  frozen_stages = 5 - trainable_layers
  out = []
  for stage in range(frozen_stages):
    stop = starts[stage + 1] if stage + 1 < 5 else 29
    out += [f"features_{i}" for i in range(starts[stage], stop) if i in _VGG_CONVS]
  return tuple(out)


_VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


@dataclasses.dataclass(frozen=True)
class Backbone:
  """A pluggable detection backbone: how to build its body and map its weights."""

  make: Callable[..., nn.Module]                 # make(norm=..., dtype=...) -> body module (FPN-less features)
  torch_key: Callable[[str], str]                # body path -> torch prefix below the body
  frozen_paths: Callable[[int], tuple[str, ...]]  # trainable_layers -> top-level body modules to freeze
  out_channels: tuple[int, ...]
  returned: tuple[str, ...]                      # the body outputs the neck takes, in order
  classifier_key: Callable[[str], str] | None = None   # body path -> the ImageNet classifier's torch prefix
  drop_head: Callable[[dict], dict] | None = None      # the classifier state dict without its head


def _without(prefix: str) -> Callable[[dict], dict]:
  return lambda sd: {k: v for k, v in sd.items() if not k.startswith(prefix)}


def _resnet(stage_sizes, block):
  e = 4 if block == "bottleneck" else 1
  return Backbone(
      make=lambda norm, dtype: ResNetBody(stage_sizes=stage_sizes, block=block, norm=norm, dtype=dtype),
      torch_key=resnet_torch_key, frozen_paths=resnet_frozen_paths,
      out_channels=tuple(64 * 2**i * e for i in range(4)), returned=("layer1", "layer2", "layer3", "layer4"),
      classifier_key=resnet_torch_key, drop_head=_without("fc."))


def _mobilenet_v3_large() -> Backbone:
  from rajax.models import mobilenet_v3
  return Backbone(
      make=lambda norm, dtype: mobilenet_v3.MobileNetV3LargeBody(norm=norm, dtype=dtype),
      torch_key=mobilenet_v3.torch_key, frozen_paths=mobilenet_v3.frozen_paths, out_channels=(160, 960),
      returned=("13", "16"), classifier_key=lambda p: f"features.{mobilenet_v3.torch_key(p)}",
      drop_head=_without("classifier."))


# name -> Backbone. "mobilenet_v3_large" returns torchvision's two FPN inputs for
# fasterrcnn_mobilenet_v3_large_fpn: features 13 (160 channels) and 16 (960), both at stride 32.
BACKBONES: dict[str, Backbone] = {
    "resnet18": _resnet((2, 2, 2, 2), "basic"),
    "resnet34": _resnet((3, 4, 6, 3), "basic"),
    "resnet50": _resnet((3, 4, 6, 3), "bottleneck"),
    "resnet101": _resnet((3, 4, 23, 3), "bottleneck"),
    "vgg16": Backbone(make=lambda norm, dtype: VGG16Body(dtype=dtype), torch_key=vgg_torch_key,
                      frozen_paths=vgg_frozen_paths, out_channels=(512,), returned=("conv5_3",),
                      classifier_key=lambda p: f"features.{vgg_torch_key(p)}",
                      drop_head=_without("classifier.")),
    "mobilenet_v3_large": _mobilenet_v3_large(),
}


def stop_frozen_gradients(params: Mapping[str, Any], prefix: Sequence[str], frozen: Sequence[str]) -> dict:
  """`params` with jax.lax.stop_gradient on every leaf under prefix/<name> for name in `frozen`."""
  if not frozen:
    return params
  flat = traverse_util.flatten_dict(dict(params))
  n = len(prefix)
  frozen = set(frozen)
  out = {k: (jax.lax.stop_gradient(v) if tuple(k[:n]) == tuple(prefix) and len(k) > n and k[n] in frozen else v)
         for k, v in flat.items()}
  return traverse_util.unflatten_dict(out)
