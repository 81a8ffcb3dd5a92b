"""torchvision's VGG (with and without BatchNorm) as a Flax linen module (NHWC), layer for layer.

Layer names carry torchvision's `nn.Sequential` indices: the convolution `features.0` is the Flax
module `features_0`, its BatchNorm (vgg*_bn) `features_1`, the linear layers `classifier_0`,
`classifier_3` and `classifier_6`; `torch_key` maps one to the other.

As in torchvision, the last feature map goes through an adaptive average pool to 7x7 (torch's bin
rule, exact for any input size, also one smaller than 7 after the five max pools) and is flattened
in torch's channel-major (C, H, W) order, so the first linear layer takes torch's weight as is.
Dropout (p=0.5 before `classifier_3` and `classifier_6`) is active only with `train=True`, which
then needs a 'dropout' rng.

With `features=True` the module also returns a dict of named activations:
  `stage1`..`stage5`  the last ReLU of each convolution stage (before its max pool),
                      [B, H/2^(k-1), W/2^(k-1), 64|128|256|512|512],
  `pool`              the adaptive average pool output [B, 7, 7, 512],
  `fc6`, `fc7`        the ReLU outputs of the first two linear layers [B, 4096],
  `logits`            [B, num_classes] float32.
"""

from __future__ import annotations

import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from rajax.models import layers

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), zero bias; linear N(0, 0.01), zero bias.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_linear_init = nn.initializers.normal(0.01)

_VGG16 = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
  """torch.nn.AdaptiveAvgPool2d on NHWC: output bin i averages rows floor(i*H/out) to ceil((i+1)*H/out)."""
  _, h, w, _ = x.shape
  oh, ow = output_size
  if (h, w) == (oh, ow):
    return x
  if h % oh == 0 and w % ow == 0:
    b, c = x.shape[0], x.shape[-1]
    return x.reshape(b, oh, h // oh, ow, w // ow, c).mean(axis=(2, 4))
  ph = jnp.asarray(_bins(h, oh), x.dtype)
  pw = jnp.asarray(_bins(w, ow), x.dtype)
  return jnp.einsum("ih,bhwc,jw->bijc", ph, x, pw)


def _bins(n: int, out: int) -> np.ndarray:
  """[out, n] averaging matrix of torch's adaptive pooling along one axis."""
  m = np.zeros((out, n), np.float32)
  for i in range(out):
    start, end = (i * n) // out, -((-(i + 1) * n) // out)
    m[i, start:end] = 1.0 / (end - start)
  return m


class VGG(nn.Module):
  """A torchvision VGG: `stages` lists each stage's convolution widths; a 2x2 max pool ends each."""

  stages: Sequence[Sequence[int]] = _VGG16
  batch_norm: bool = False
  num_classes: int = 1000
  dropout_rate: float = 0.5
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, features: bool = False):
    layers.check_images(x, who="VGG")
    dt = self.dtype
    feats = {}
    h = x.astype(dt)
    idx = 0  # index into torchvision's `features` nn.Sequential
    for s, widths in enumerate(self.stages):
      for width in widths:
        h = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), dtype=dt, param_dtype=jnp.float32,
                    kernel_init=_conv_init, bias_init=nn.initializers.zeros, name=f"features_{idx}")(h)
        idx += 1
        if self.batch_norm:
          h = layers.batch_norm(train=train, dtype=dt, name=f"features_{idx}")(h)
          idx += 1
        h = nn.relu(h)
        idx += 1
      feats[f"stage{s + 1}"] = h
      h = layers.max_pool(h, (2, 2), (2, 2))
      idx += 1
    h = adaptive_avg_pool(h, (7, 7))
    feats["pool"] = h
    # torch.flatten of an NCHW tensor: channel-major order.
    h = jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1)
    for i, name in ((0, "fc6"), (3, "fc7")):
      h = nn.relu(_dense(4096, dt, f"classifier_{i}")(h))
      feats[name] = h
      h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    logits = _dense(self.num_classes, dt, "classifier_6")(h).astype(jnp.float32)
    if features:
      feats["logits"] = logits
      return logits, feats
    return logits


def _dense(features: int, dtype, name: str) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=_linear_init,
                  bias_init=nn.initializers.zeros, name=name)


MODULE = VGG

ARCHS = {
    "vgg16": dict(stages=_VGG16, batch_norm=False),
    "vgg16_bn": dict(stages=_VGG16, batch_norm=True),
}


def torch_key(path: str) -> str:
  """Flax module path -> torchvision module prefix: 'features_0' -> 'features.0', 'classifier_6' -> 'classifier.6'."""
  m = re.fullmatch(r"(features|classifier)_(\d+)", path)
  if not m:
    raise ValueError(f"No torchvision VGG key for Flax module path {path!r}.")
  return f"{m[1]}.{m[2]}"


def rename_torch_keys(state_dict):
  """Renames legacy keys of a torch state dict to the current layout (none for VGG)."""
  return dict(state_dict)
