"""VRD-IR's networks (Visual Recognition-Driven Image Restoration for Multiple Degradation, CVPR 2023).

VRD-IR restores in the feature space of a frozen encoder phi (early layers of a pretrained
recognizer, `rajax.methods.vrdir`): the Intrinsic Semantics Enhancement (ISE) maps phi's features
of a degraded image towards those of the clean one, and the Semantic Aware Decoder (SAD) maps
features back to an image. This module holds the two trained networks and `VRDIR`, the processor
that chains them (SAD(ISE(f)) for phi's features f), as linen modules.

    SAD  f [B, H/s, W/s, C] --(ConvTranspose k4 s2 -> `channels`, ReLU) x log2(s)-->
         ConvTranspose k3 -> 3, sigmoid --> image [B, H, W, 3] in (0, 1)
         (the unofficial implementation's decoder for VGG-16 features[:8], s = 2, generalised to
         one k4 s2 up-step per halving of phi's stride s)

    ISE  f --FGM--> (f_m, w)        f_m = irfft2(rfft2(f) * (1 + tanh(Dense(log1p|rfft2(f)|))), s=(h, w))
                                    w   = softmax(MLP(mean log-amplitude per channel in the low and
                                          high frequency bands))            [B, K], one per branch
         out = f_m + sum_k w_k * body_k(DNC_k(f_m))
         DNC_k(x) = g * (gamma_k * (x - mu) / sigma + beta_k) + (1 - g) * x
                    mu, sigma: per-example, per-channel statistics over the spatial positions;
                    g = sigmoid(Dense(ReLU(Dense(GAP(x))))): a squeeze-excitation gate per channel
         body_k   = conv3x3 -> `ise_channels`, ReLU, conv3x3 -> C (zero-initialised)

The Fourier Guided Modulation (FGM) reads the amplitude spectrum of the degraded features (blur
removes high frequencies, noise adds them, fog and low light move the low ones) to weigh the K
Degradation Normalization and Compensation (DNC) branches, one per degradation family, and
modulates the spectrum per channel and frequency, keeping its phase. Both the spectral gain and
the branch bodies start at zero, so an untrained ISE is the identity (up to FFT round-off) and the
ISE phase starts from SAD(phi(d)). All statistics are per example: no BatchNorm, so the networks
compute the same on any batch split. FFTs run in float32 whatever the compute dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from rajax.models import layers

LOW_BAND = 0.25   # FGM: normalised spatial frequencies below this radius are the "low" band


def amplitude_spectrum(x: jax.Array) -> jax.Array:
  """|rfft2(x)| over the spatial axes of [B, h, w, C] features: [B, h, w // 2 + 1, C], float32."""
  return jnp.abs(jnp.fft.rfft2(x.astype(jnp.float32), axes=(1, 2)))


def modulate_spectrum(x: jax.Array, gain: jax.Array) -> jax.Array:
  """irfft2(rfft2(x) * gain) over the spatial axes, back at x's own size (s=(h, w): odd widths too).

  `gain` is real, broadcastable to [B, h, w // 2 + 1, C]; it scales the amplitude and keeps the phase.
  """
  h, w = x.shape[1], x.shape[2]
  spectrum = jnp.fft.rfft2(x.astype(jnp.float32), axes=(1, 2))
  return jnp.fft.irfft2(spectrum * gain, s=(h, w), axes=(1, 2))


def band_masks(h: int, w: int) -> tuple[jax.Array, jax.Array]:
  """(low, high) 0/1 masks [h, w // 2 + 1] of rfft2's frequencies by normalised radius (LOW_BAND)."""
  fy = jnp.fft.fftfreq(h)[:, None]
  fx = jnp.fft.rfftfreq(w)[None, :]
  low = (jnp.sqrt(fy ** 2 + fx ** 2) < LOW_BAND).astype(jnp.float32)
  return low, 1.0 - low


class FGM(nn.Module):
  """Fourier Guided Modulation: (modulated features, branch weights [B, K]) from the amplitude spectrum."""

  branches: int
  hidden: int = 32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    log_amp = jnp.log1p(amplitude_spectrum(x))                       # [B, h, w//2+1, C]
    gain = 1.0 + jnp.tanh(nn.Dense(c, kernel_init=nn.initializers.zeros, name="gain")(log_amp))
    modulated = modulate_spectrum(x, gain)
    low, high = band_masks(x.shape[1], x.shape[2])
    stats = [jnp.sum(log_amp * m[None, :, :, None], axis=(1, 2)) / jnp.maximum(jnp.sum(m), 1.0) for m in (low, high)]
    h = nn.relu(nn.Dense(self.hidden, name="weigh_0")(jnp.concatenate(stats, axis=-1)))
    weights = jax.nn.softmax(nn.Dense(self.branches, name="weigh_1")(h), axis=-1)
    return modulated.astype(x.dtype), weights


class DNC(nn.Module):
  """Degradation Normalization and Compensation: an SE gate mixes the instance-normalised features and x."""

  reduction: int = 4
  eps: float = 1e-5
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    xf = x.astype(jnp.float32)
    mu = jnp.mean(xf, axis=(1, 2), keepdims=True)
    sigma = jnp.sqrt(jnp.var(xf, axis=(1, 2), keepdims=True) + self.eps)
    gamma = self.param("gamma", nn.initializers.ones, (c,))
    beta = self.param("beta", nn.initializers.zeros, (c,))
    normalised = gamma * (xf - mu) / sigma + beta
    squeeze = jnp.mean(xf, axis=(1, 2))
    h = nn.relu(nn.Dense(max(c // self.reduction, 4), name="se_0")(squeeze))
    g = jax.nn.sigmoid(nn.Dense(c, name="se_1")(h))[:, None, None, :]
    return (g * normalised + (1.0 - g) * xf).astype(self.dtype)


class ISE(nn.Module):
  """Intrinsic Semantics Enhancement: FGM, then K DNC branches with their bodies, weighed by FGM (see the module docstring)."""

  branches: int = 6
  channels: int = 32
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, f):
    c = f.shape[-1]
    modulated, weights = FGM(self.branches, name="fgm")(f)
    out = modulated.astype(jnp.float32)
    for k in range(self.branches):
      y = DNC(dtype=self.dtype, name=f"dnc_{k}")(modulated)
      y = nn.relu(nn.Conv(self.channels, (3, 3), padding="SAME", dtype=self.dtype, name=f"body_{k}_0")(y))
      y = nn.Conv(c, (3, 3), padding="SAME", dtype=self.dtype, kernel_init=nn.initializers.zeros,
                  name=f"body_{k}_1")(y)
      out = out + weights[:, k, None, None, None] * y.astype(jnp.float32)
    return out


# Which taps of a 4-tap kernel each output phase of a stride-2 "SAME" transposed convolution reads, at
# input offsets -1, 0, +1 (lax.conv_transpose pads the 2x-dilated input by 2 on each side):
#   out[2i]     = w0 x[i-1] + w2 x[i]
#   out[2i + 1] = w1 x[i]   + w3 x[i+1]
# (numpy, not jax: importing rajax must not start a JAX backend before jax.distributed.initialize)
_PHASE_TAPS = np.zeros((2, 3, 4), np.float32)
for _phase, _offset, _tap in ((0, 0, 0), (0, 1, 2), (1, 1, 1), (1, 2, 3)):
  _PHASE_TAPS[_phase, _offset, _tap] = 1.0


class ConvTranspose2x(nn.Module):
  """nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME"), computed exactly as one 3x3
  convolution to the four output phases followed by their interleaving (the sub-pixel form).

  The parameters are those of the transposed convolution (kernel [4, 4, in, out], bias [out]); XLA's
  CPU backend runs the dilated convolution of `lax.conv_transpose` (and its gradients) about ten
  times more slowly than this form. tests/test_vrdir.py checks both give the same output.
  """

  features: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (4, 4, cin, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    # [3, 3, in, 2, 2, out]: the taps of phase (a, b) at offsets (r, c) of the 3x3 neighbourhood
    k3 = jnp.einsum("art,bcu,tuio->rciabo", _PHASE_TAPS, _PHASE_TAPS, kernel)
    k3 = k3.reshape(3, 3, cin, 4 * self.features).astype(self.dtype)
    y = jax.lax.conv_general_dilated(x.astype(self.dtype), k3, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    b, h, w, _ = y.shape
    y = y.reshape(b, h, w, 2, 2, self.features).transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, self.features)
    return y + bias.astype(self.dtype)


class SAD(nn.Module):
  """Semantic Aware Decoder: phi's features at `stride` -> an image in (0, 1) (see the module docstring)."""

  stride: int = 2
  channels: int = 64
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, f):
    h = f.astype(self.dtype)
    for i in range(up_steps(self.stride)):
      h = nn.relu(ConvTranspose2x(self.channels, dtype=self.dtype, name=f"up_{i}")(h))
    h = nn.ConvTranspose(3, (3, 3), padding="SAME", dtype=self.dtype, name="out")(h)   # stride 1: a plain convolution
    return jax.nn.sigmoid(h.astype(jnp.float32))


def up_steps(stride: int) -> int:
  """log2(stride): SAD's k4 s2 up-steps for phi's features at `stride` (a power of two, >= 2)."""
  if stride < 2 or 2 ** round(math.log2(stride)) != stride:
    raise ValueError(f"VRD-IR's decoder upsamples by 2 per step: phi's stride must be a power of two >= 2, got "
                     f"{stride}; choose an earlier or later layer of the recognizer (config.method.phi_layer).")
  return round(math.log2(stride))


class VRDIR(nn.Module):
  """VRD-IR's trained networks, as one processor that reads phi's features: SAD(ISE(f)).

  Its parameters are {"sad": ..., "ise": ...}; `decode` (SAD alone) and `enhance` (ISE alone) are
  its other methods (`module.apply(variables, f, method="decode")`). It reads features of
  `in_channels` channels at `stride` (those of config.method.phi_layer), not images:
  `feature_input` says what it is initialised with for an image shape.
  """

  stride: int = 2
  in_channels: int = 16
  channels: int = 64          # SAD's width
  branches: int = 6           # ISE: one DNC branch per degradation family
  ise_channels: int = 32      # ISE: the width of each branch's body
  dtype: layers.Dtype = jnp.float32

  def setup(self):
    self.sad = SAD(stride=self.stride, channels=self.channels, dtype=self.dtype)
    self.ise = ISE(branches=self.branches, channels=self.ise_channels, dtype=self.dtype)

  def __call__(self, f, train: bool = False):
    del train   # no BatchNorm, no dropout
    return self.sad(self.ise(f))

  def decode(self, f):
    return self.sad(f)

  def enhance(self, f):
    return self.ise(f)

  def feature_input(self, image_shape) -> tuple[int, int, int]:
    """The shape (h, w, C) of phi's features of one image shaped `image_shape` (H, W, 3)."""
    h, w = image_shape[0], image_shape[1]
    if h % self.stride or w % self.stride:
      raise ValueError(f"VRD-IR: image {h}x{w} is not divisible by phi's stride {self.stride}; choose a crop size "
                       "that is (config.data.crop).")
    return (h // self.stride, w // self.stride, self.in_channels)
