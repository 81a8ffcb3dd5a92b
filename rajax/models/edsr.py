"""EDSR ("Enhanced Deep Residual Networks for Single Image Super-Resolution", Lim et al. 2017).

Layout (the official code, sanghyun-son/EDSR-PyTorch src/model/edsr.py; torch names on the right):

    x * rgb_range - mean * rgb_range                    sub_mean (a fixed 1x1 conv, MeanShift)
    conv3(3->C)                                         head.0
    blocks x [conv3 - ReLU - conv3, * res_scale, + x]   body.{i}.body.0 / body.{i}.body.2
    conv3(C->C), + head's output                        body.{blocks}
    scale 2^n: n x [conv3(C->4C), pixel shuffle 2]      tail.0.{0, 2, 4}
    scale 3:   conv3(C->9C), pixel shuffle 3            tail.0.0
    conv3(C->3)                                         tail.1
    (y + mean * rgb_range) / rgb_range                  add_mean

mean is DIV2K's RGB mean (0.4488, 0.4371, 0.4040). Every convolution pads k//2 with zeros, as
torch's `padding=1`. EDSR-baseline is blocks=16, channels=64, res_scale=1; the full EDSR is
blocks=32, channels=256, res_scale=0.1. The output is not clipped.

Checkpoints: the official `.pt` files (a bare state dict, MeanShift tensors included) and BasicSR's
(`archs/edsr_arch.py`: conv_first, body.{i}.conv1/conv2, conv_after_body, upsample.{0, 2, ...},
conv_last; under "params" or "params_ema"; its mean is not stored) both load through
`rajax.weights.load(path, template, torch_key=model.torch_key, rename_torch_keys=model.rename_torch_keys)`,
which `rajax.networks.load_variables` does for config.init_processor and frozen processors.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from rajax.models import layers
from rajax.weights.errors import WeightsError

SCALES = (1, 2, 3, 4, 8)
DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


class ResBlock(nn.Module):
  """x + res_scale * conv3(ReLU(conv3(x))), EDSR's residual block (no BatchNorm)."""

  channels: int
  res_scale: float = 1.0
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.channels
    r = layers.conv(c, 3, in_features=c, padding=1, dtype=self.dtype, name="conv1")(x)
    r = layers.conv(c, 3, in_features=c, padding=1, dtype=self.dtype, name="conv2")(nn.relu(r))
    return x + r * self.res_scale


class EDSR(nn.Module):
  """EDSR processor: [B, h, w, 3] in [0, 1] -> [B, h*scale, w*scale, 3] float32 (about [0, 1], unclipped).

  Attributes:
    scale: upscaling factor, one of 1, 2, 3, 4, 8.
    blocks: number of residual blocks (16 in EDSR-baseline, 32 in EDSR).
    channels: feature width C (64 in EDSR-baseline, 256 in EDSR).
    res_scale: factor on every residual branch (1 in EDSR-baseline, 0.1 in EDSR).
    rgb_range: the pixel range the network was trained on (255 for the official checkpoints, as
      BasicSR's img_range); inputs are multiplied by it and outputs divided by it.
    dtype: compute dtype (parameters are always float32; the mean shifts run in float32).
  """

  SR_SCALES = (2, 3, 4, 8)  # the factors config.degrade.scale may take with this processor (not a field)

  scale: int = 4
  blocks: int = 16
  channels: int = 64
  res_scale: float = 1.0
  rgb_range: float = 255.0
  dtype: layers.Dtype = jnp.float32

  def __post_init__(self):
    if self.scale not in SCALES:
      raise ValueError(f"EDSR scale must be one of {SCALES}, got {self.scale!r}.")
    if self.blocks < 0 or self.channels < 1:
      raise ValueError(f"EDSR needs blocks >= 0 and channels >= 1, got blocks={self.blocks}, channels={self.channels}.")
    if not self.rgb_range > 0:
      raise ValueError(f"EDSR rgb_range must be positive (255 for the official weights), got {self.rgb_range!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # no BatchNorm or dropout: training and evaluation compute the same function
    layers.check_images(x, who="EDSR")
    c, dt = self.channels, self.dtype
    mean = jnp.asarray(DIV2K_MEAN, jnp.float32) * self.rgb_range
    x = (x.astype(jnp.float32) * self.rgb_range - mean).astype(dt)
    head = layers.conv(c, 3, in_features=3, padding=1, dtype=dt, name="head")(x)
    h = head
    for i in range(self.blocks):
      h = ResBlock(c, self.res_scale, dtype=dt, name=f"body_{i}")(h)
    h = layers.conv(c, 3, in_features=c, padding=1, dtype=dt, name="body_conv")(h) + head
    for i, r in enumerate(_upsampling_steps(self.scale)):
      h = layers.conv(r * r * c, 3, in_features=c, padding=1, dtype=dt, name=f"up_{i}")(h)
      h = layers.pixel_shuffle(h, r)
    y = layers.conv(3, 3, in_features=c, padding=1, dtype=dt, name="tail")(h)
    return (y.astype(jnp.float32) + mean) / self.rgb_range

  def torch_key(self, path: str) -> str:
    """The official torch module name of Flax module `path` ("body_3/conv2" -> "body.3.body.2")."""
    if path == "head":
      return "head.0"
    if path == "body_conv":
      return f"body.{self.blocks}"
    if path == "tail":
      return "tail.1"
    m = re.fullmatch(r"body_(\d+)/conv([12])", path)
    if m:
      return f"body.{m[1]}.body.{0 if m[2] == '1' else 2}"
    m = re.fullmatch(r"up_(\d+)", path)
    if m:
      return f"tail.0.{2 * int(m[1])}"
    raise WeightsError(f"EDSR has no torch name for Flax module {path!r}.")

  def rename_torch_keys(self, state_dict: dict) -> dict:
    """A BasicSR-layout state dict renamed to the official layout; MeanShift tensors checked, dropped.

    The official sub_mean/add_mean are 1x1 convolutions fixed to x -+ rgb_range * mean; a file whose
    shifts differ from this model's (another rgb_range, mean or std) is refused rather than loaded
    into a model that would shift by other constants. Dicts in neither layout pass through unchanged,
    so the converter then names every key that does not fit.
    """
    sd = dict(state_dict)
    for name, sign in (("sub_mean", -1.0), ("add_mean", 1.0)):
      w, b = sd.pop(f"{name}.weight", None), sd.pop(f"{name}.bias", None)
      if w is None and b is None:
        continue
      self._check_mean_shift(name, w, b, sign)
    if any(k.startswith(("conv_first.", "conv_after_body.", "conv_last.")) for k in sd):
      sd = {_basicsr_to_official(k, self.blocks): v for k, v in sd.items()}
    return sd

  def _check_mean_shift(self, name: str, w, b, sign: float) -> None:
    want_b = sign * self.rgb_range * np.asarray(DIV2K_MEAN)
    ok_w = w is not None and np.shape(w) == (3, 3, 1, 1) and np.allclose(np.reshape(w, (3, 3)), np.eye(3), atol=1e-6)
    ok_b = b is not None and np.shape(b) == (3,) and np.allclose(b, want_b, rtol=1e-4, atol=1e-5)
    if ok_w and ok_b:
      return
    hint = ""
    if b is not None and np.shape(b) == (3,):
      implied = float(np.mean(np.asarray(b) / (sign * np.asarray(DIV2K_MEAN))))
      hint = f" Its {name}.bias is {np.round(np.asarray(b, float), 4).tolist()}, i.e. rgb_range about {implied:.4g}."
    raise WeightsError(
        f"The checkpoint's MeanShift {name} is not x {'+' if sign > 0 else '-'} rgb_range * DIV2K mean with this "
        f"model's rgb_range={self.rgb_range} and unit std.{hint} Build EDSR with the rgb_range the file was "
        "trained with.")


def _upsampling_steps(scale: int) -> list[int]:
  """Pixel-shuffle factors of the upsampler: [3] for x3, [2] * log2(scale) for powers of two."""
  if scale == 3:
    return [3]
  return [2] * (scale.bit_length() - 1)


def _basicsr_to_official(key: str, blocks: int) -> str:
  """One BasicSR EDSR key -> the official name ("body.1.conv2.weight" -> "body.1.body.2.weight")."""
  module, _, leaf = key.rpartition(".")
  if module == "conv_first":
    return f"head.0.{leaf}"
  if module == "conv_after_body":
    return f"body.{blocks}.{leaf}"
  if module == "conv_last":
    return f"tail.1.{leaf}"
  m = re.fullmatch(r"body\.(\d+)\.conv([12])", module)
  if m:
    return f"body.{m[1]}.body.{0 if m[2] == '1' else 2}.{leaf}"
  m = re.fullmatch(r"upsample\.(\d+)", module)
  if m:
    return f"tail.0.{m[1]}.{leaf}"
  return key
