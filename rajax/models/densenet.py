"""torchvision's DenseNet-BC as a Flax linen module (NHWC), layer for layer.

Module names follow torchvision's keys without the `features.` prefix: `conv0`, `norm0`,
`denseblock1/denselayer1/norm1` (`conv1`, `norm2`, `conv2`), `transition1/norm` (`conv`), `norm5`
and `classifier`; `torch_key` adds the prefix back. Checkpoints written before torchvision renamed
`norm.1` to `norm1` are accepted through `rename_torch_keys`.

With `features=True` the module also returns a dict of named activations:
  `stem`             after conv0/norm0/ReLU, before the max pool [B, H/2, W/2, 64],
  `block1`..`block4` the output of each dense block (the concatenated features, before the
                     transition) at strides 4, 8, 16, 32 with 256, 512, 1024, 1024 channels (121),
  `head`             ReLU(norm5(block4)), the map that is pooled,
  `pool`             the global average pool [B, 1024],
  `logits`           [B, num_classes] float32.
"""

from __future__ import annotations

import re
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from rajax.models import layers

# torchvision: kaiming_normal_ (fan_in, ReLU gain) for convolutions, zero bias for the classifier.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _conv(features, kernel, *, in_features, padding=0, dtype, name):
  return layers.conv(features, kernel, in_features=in_features, padding=padding, use_bias=False,
                     dtype=dtype, kernel_init=_conv_init, name=name)


class DenseLayer(nn.Module):
  """BN-ReLU-conv1x1(bn_size*growth)-BN-ReLU-conv3x3(growth); returns only the new features."""

  growth_rate: int
  bn_size: int
  drop_rate: float = 0.0
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    dt, inner = self.dtype, self.bn_size * self.growth_rate
    y = nn.relu(layers.batch_norm(train=train, dtype=dt, name="norm1")(x))
    y = _conv(inner, 1, in_features=x.shape[-1], dtype=dt, name="conv1")(y)
    y = nn.relu(layers.batch_norm(train=train, dtype=dt, name="norm2")(y))
    y = _conv(self.growth_rate, 3, in_features=inner, padding=1, dtype=dt, name="conv2")(y)
    return nn.Dropout(self.drop_rate, deterministic=not train)(y)


class DenseBlock(nn.Module):
  num_layers: int
  growth_rate: int
  bn_size: int
  drop_rate: float = 0.0
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    for j in range(self.num_layers):
      y = DenseLayer(self.growth_rate, self.bn_size, self.drop_rate, dtype=self.dtype,
                     name=f"denselayer{j + 1}")(x, train=train)
      x = jnp.concatenate([x, y], axis=-1)
    return x


class Transition(nn.Module):
  """BN-ReLU-conv1x1 then a 2x2 average pool with stride 2 (odd sizes floor, as torch)."""

  features: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    y = nn.relu(layers.batch_norm(train=train, dtype=self.dtype, name="norm")(x))
    y = _conv(self.features, 1, in_features=x.shape[-1], dtype=self.dtype, name="conv")(y)
    return nn.avg_pool(y, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
  """A torchvision DenseNet-BC (compression 0.5): DenseNet-121 with the defaults."""

  growth_rate: int = 32
  block_config: Sequence[int] = (6, 12, 24, 16)
  num_init_features: int = 64
  bn_size: int = 4
  drop_rate: float = 0.0
  num_classes: int = 1000
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, features: bool = False):
    layers.check_images(x, who="DenseNet")
    dt = self.dtype
    feats = {}
    h = layers.conv(self.num_init_features, 7, in_features=3, stride=2, padding=3, use_bias=False,
                    dtype=dt, kernel_init=_conv_init, name="conv0")(x.astype(dt))
    h = nn.relu(layers.batch_norm(train=train, dtype=dt, name="norm0")(h))
    feats["stem"] = h
    h = layers.max_pool(h, (3, 3), (2, 2), ((1, 1), (1, 1)))
    for i, n in enumerate(self.block_config):
      h = DenseBlock(n, self.growth_rate, self.bn_size, self.drop_rate, dtype=dt,
                     name=f"denseblock{i + 1}")(h, train=train)
      feats[f"block{i + 1}"] = h
      if i != len(self.block_config) - 1:
        h = Transition(h.shape[-1] // 2, dtype=dt, name=f"transition{i + 1}")(h, train=train)
    h = nn.relu(layers.batch_norm(train=train, dtype=dt, name="norm5")(h))
    feats["head"] = h
    h = jnp.mean(h.astype(jnp.float32), axis=(1, 2))
    feats["pool"] = h
    logits = nn.Dense(
        self.num_classes, dtype=dt, param_dtype=jnp.float32, kernel_init=layers.torch_kernel_init,
        bias_init=nn.initializers.zeros, name="classifier")(h)
    logits = logits.astype(jnp.float32)
    if features:
      feats["logits"] = logits
      return logits, feats
    return logits


MODULE = DenseNet

ARCHS = {
    "densenet121": dict(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64),
}


def torch_key(path: str) -> str:
  """Flax module path -> torchvision module prefix.

  'classifier' -> 'classifier'; anything else gets torchvision's `features.` prefix with '/' -> '.',
  e.g. 'denseblock1/denselayer2/norm1' -> 'features.denseblock1.denselayer2.norm1'.
  """
  if path == "classifier":
    return path
  if not re.fullmatch(r"(conv0|norm0|norm5|denseblock\d+/denselayer\d+/(norm|conv)[12]|transition\d+/(norm|conv))",
                      path):
    raise ValueError(f"No torchvision DenseNet key for Flax module path {path!r}.")
  return "features." + path.replace("/", ".")


# Before torchvision forbade '.' in module names, a dense layer's modules were 'norm.1', 'conv.2', ...
_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def rename_torch_keys(state_dict):
  """Returns `state_dict` with old-style 'denselayerJ.norm.1.weight' keys renamed 'denselayerJ.norm1.weight'."""
  out = {}
  for key, value in state_dict.items():
    m = _OLD_KEY.match(key)
    out[m[1] + m[2] if m else key] = value
  return out
