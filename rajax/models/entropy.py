"""Entropy models and GDN of learned image codecs, as CompressAI 1.2.8 defines them, in Flax.

A learned codec (rajax/models/proxy_codec.py) quantises its latents and measures their rate with
a probability model. These are the pieces, each numerically equal to its CompressAI original for
the same weights (NHWC here, NCHW there):

    GDN / inverse GDN     y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)  (inverse: * sqrt)
                          beta and gamma are stored reparametrised (CompressAI's
                          NonNegativeParametrizer): value = max(raw, sqrt(min + p))^2 - p, p = 2^-36,
                          so the `beta`/`gamma` tensors of a CompressAI file load unchanged.
    EntropyBottleneck     the factorized prior of Balle et al. 2018: per channel, a small monotone
                          network gives the logits of a cumulative density c(v); the likelihood of
                          a quantised value is sigmoid(c(v + 1/2)) - sigmoid(c(v - 1/2)).
                          `quantiles` [C, 1, 3] hold each channel's tail and median estimates,
                          trained only by `aux_loss`.
    GaussianConditional   the likelihood of y_hat under N(mean, max(scale, 0.11)) integrated over
                          [y_hat - 1/2, y_hat + 1/2], through the standard normal CDF 0.5 erfc(-x/sqrt 2).
    MaskedConv            the 5x5 type-A masked convolution of Minnen et al.'s context model.
    EntropyParameters     Minnen's 1x1 network (4M -> 10M/3 -> 8M/3 -> 2M) that turns the
                          hyperprior and context features into Gaussian scales and means.

Every likelihood is bounded below by 1e-9 with CompressAI's `LowerBound`, whose gradient passes
where the input is above the bound or the gradient pushes it upwards (`lower_bound`).

Quantisation (`quantize`), as in CompressAI's `EntropyModel.quantize`:

    "noise"       x + U[-1/2, 1/2) (training; the noise comes from an explicit rng key; the modules
                  draw it from Flax's "noise" rng stream)
    "dequantize"  round(x - m) + m around the medians / means m (evaluation)
    "ste"         the same rounding in the forward pass with an identity gradient (straight through)

The entropy models and GDN compute in float32 whatever the convolutions' compute dtype: their
logits, CDF differences and divisive norms lose too much in bfloat16.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from rajax.models import layers

LIKELIHOOD_BOUND = 1e-9
SCALE_BOUND = 0.11
REPARAM_OFFSET = 2.0 ** -18
QUANTIZE_MODES = ("noise", "dequantize", "ste")
TRAIN_QUANTIZATIONS = ("noise", "ste")  # what a codec may use in training; evaluation always rounds
_HI = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------
# Bounds, reparametrisation, quantisation
# ----------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def lower_bound(x: jax.Array, bound: float) -> jax.Array:
  """max(x, bound) whose gradient passes where x >= bound or where it would raise x (CompressAI's LowerBound)."""
  return jnp.maximum(x, jnp.asarray(bound, x.dtype))


def _lower_bound_fwd(x, bound):
  return jnp.maximum(x, jnp.asarray(bound, x.dtype)), x


def _lower_bound_bwd(bound, x, g):
  return (jnp.where((x >= bound) | (g < 0), g, jnp.zeros_like(g)),)


lower_bound.defvjp(_lower_bound_fwd, _lower_bound_bwd)


def nonnegative(raw: jax.Array, *, minimum: float = 0.0, offset: float = REPARAM_OFFSET) -> jax.Array:
  """CompressAI's NonNegativeParametrizer: max(raw, sqrt(minimum + offset^2))^2 - offset^2 (>= minimum)."""
  pedestal = offset * offset
  return lower_bound(raw, math.sqrt(minimum + pedestal)) ** 2 - pedestal


def nonnegative_raw(value: jax.Array, *, offset: float = REPARAM_OFFSET) -> jax.Array:
  """The stored parameter whose `nonnegative` is `value` (the parametrizer's `init`)."""
  pedestal = offset * offset
  return jnp.sqrt(jnp.maximum(value + pedestal, pedestal))


def quantize(x: jax.Array, *, mode: str, rng: jax.Array | None = None, means: jax.Array | None = None) -> jax.Array:
  """Quantises latents `x`: "noise" adds U[-1/2, 1/2) drawn from `rng`; "dequantize" rounds around
  `means` (round(x - means) + means, or round(x)); "ste" rounds the same way with an identity gradient."""
  if mode == "noise":
    if rng is None:
      raise ValueError("quantize(mode='noise') needs an rng key: pass rng=jax.random.key(...).")
    return x + jax.random.uniform(rng, x.shape, x.dtype, -0.5, 0.5)
  if mode not in QUANTIZE_MODES:
    raise ValueError(f"Unknown quantization mode {mode!r}; use one of {QUANTIZE_MODES}.")
  m = jnp.zeros((), x.dtype) if means is None else means
  rounded = jnp.round(x - m) + m
  if mode == "ste":
    return x + jax.lax.stop_gradient(rounded - x)
  return rounded


def quantize_mode(train: bool, quantization: str) -> str:
  """The `quantize` mode of a layer: `quantization` ("noise" | "ste") in training, "dequantize" otherwise."""
  if quantization not in TRAIN_QUANTIZATIONS:
    raise ValueError(f"Unknown training quantization {quantization!r}; use one of {TRAIN_QUANTIZATIONS}.")
  return quantization if train else "dequantize"


def noise_rng(module: nn.Module, mode: str) -> jax.Array | None:
  """A fresh key from `module`'s "noise" rng stream when `mode` is "noise" (else None), or a clear error."""
  if mode != "noise":
    return None
  if not module.has_rng("noise"):
    raise ValueError(
        f"{type(module).__name__} in training mode adds uniform noise and needs the 'noise' rng stream: "
        "call model.apply(variables, x, train=True, rngs={'noise': key}) (or use quantization='ste').")
  return module.make_rng("noise")


def standard_normal_cdf(x: jax.Array) -> jax.Array:
  """Phi(x) = 0.5 erfc(-x / sqrt 2), accurate in the lower tail (as CompressAI computes it)."""
  return 0.5 * jax.scipy.special.erfc(x * -(2.0 ** -0.5))


def gaussian_likelihood(
    *,
    values: jax.Array,
    scales: jax.Array,
    means: jax.Array | None = None,
    scale_bound: float = SCALE_BOUND,
    likelihood_bound: float = LIKELIHOOD_BOUND,
) -> jax.Array:
  """P(v - 1/2 < Y < v + 1/2) for Y ~ N(means, max(scales, scale_bound)), bounded below by
  `likelihood_bound` (0 disables it). Computed on |v - mean| in float32, as CompressAI does."""
  v = values.astype(jnp.float32)
  if means is not None:
    v = v - means.astype(jnp.float32)
  s = lower_bound(scales.astype(jnp.float32), scale_bound)
  v = jnp.abs(v)
  lik = standard_normal_cdf((0.5 - v) / s) - standard_normal_cdf((-0.5 - v) / s)
  if likelihood_bound > 0:
    lik = lower_bound(lik, likelihood_bound)
  return lik


# ----------------------------------------------------------------------------------------------
# GDN
# ----------------------------------------------------------------------------------------------


class GDN(nn.Module):
  """Generalized divisive normalisation over the channels of NHWC `x` (inverse: multiply instead).

  Parameters, stored reparametrised as CompressAI stores them: `beta` [C] (bounded below by
  beta_min) and `gamma` [C, C], with gamma[i, j] the weight of x_j^2 in channel i's norm.
  """

  inverse: bool = False
  beta_min: float = 1e-6
  gamma_init: float = 0.1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    beta_raw = self.param("beta", lambda k, s: nonnegative_raw(jnp.ones(s, jnp.float32)), (c,))
    gamma_raw = self.param("gamma", lambda k, s: nonnegative_raw(self.gamma_init * jnp.eye(s[0], dtype=jnp.float32)),
                           (c, c))
    beta = nonnegative(beta_raw, minimum=self.beta_min)
    gamma = nonnegative(gamma_raw)
    xf = x.astype(jnp.float32)
    norm = jnp.einsum("...j,ij->...i", xf * xf, gamma, precision=_HI) + beta
    out = xf * (jnp.sqrt(norm) if self.inverse else jax.lax.rsqrt(norm))
    return out.astype(x.dtype)


# ----------------------------------------------------------------------------------------------
# Factorized prior
# ----------------------------------------------------------------------------------------------


def logits_cumulative(
    v: jax.Array, *, matrices: Sequence[jax.Array], biases: Sequence[jax.Array], factors: Sequence[jax.Array]
) -> jax.Array:
  """The factorized prior's cumulative logits of `v` [C, 1, n], per channel: for each layer,
  v <- softplus(matrix) @ v + bias, then (all but the last) v <- v + tanh(factor) * tanh(v)."""
  for i, matrix in enumerate(matrices):
    v = jnp.matmul(jax.nn.softplus(matrix), v, precision=_HI) + biases[i]
    if i < len(factors):
      v = v + jnp.tanh(factors[i]) * jnp.tanh(v)
  return v


class EntropyBottleneck(nn.Module):
  """CompressAI's EntropyBottleneck over the last axis of NHWC latents with `channels` channels.

  `__call__(z, train=..., quantization=...)` -> (z_hat, likelihoods), both shaped like z. In
  evaluation z_hat = round(z - median) + median; in training z + U[-1/2, 1/2) ("noise", from the
  "noise" rng stream) or that rounding with an identity gradient ("ste").

  Parameters (CompressAI's names with "." -> "_"): `matrices_i` [C, f_{i+1}, f_i], `biases_i`
  [C, f_{i+1}, 1], `factors_i` [C, f_{i+1}, 1] for f = (1, *filters, 1), and `quantiles` [C, 1, 3].
  The rate loss reaches `quantiles` only through the evaluation medians (zero gradient in training);
  they are fitted by `aux_loss`, whose gradient reaches nothing else.
  """

  channels: int
  filters: tuple[int, ...] = (3, 3, 3, 3)
  init_scale: float = 10.0
  tail_mass: float = 1e-9
  likelihood_bound: float = LIKELIHOOD_BOUND

  def setup(self):
    c, f = self.channels, (1, *self.filters, 1)
    scale = self.init_scale ** (1.0 / (len(self.filters) + 1))
    matrices, biases, factors = [], [], []
    for i in range(len(self.filters) + 1):
      fill = float(np.log(np.expm1(1.0 / scale / f[i + 1])))
      matrices.append(self.param(f"matrices_{i}", lambda k, s, v=fill: jnp.full(s, v, jnp.float32), (c, f[i + 1], f[i])))
      biases.append(self.param(f"biases_{i}", lambda k, s: jax.random.uniform(k, s, jnp.float32, -0.5, 0.5),
                               (c, f[i + 1], 1)))
      if i < len(self.filters):
        factors.append(self.param(f"factors_{i}", nn.initializers.zeros, (c, f[i + 1], 1), jnp.float32))
    self._matrices, self._biases, self._factors = matrices, biases, factors
    q = self.init_scale
    self.quantiles = self.param("quantiles", lambda k, s: jnp.tile(jnp.asarray([-q, 0.0, q], jnp.float32), (s[0], 1, 1)),
                                (c, 1, 3))

  def _logits(self, v: jax.Array, *, stop_gradient: bool = False) -> jax.Array:
    m, b, f = self._matrices, self._biases, self._factors
    if stop_gradient:
      m, b, f = jax.lax.stop_gradient((m, b, f))
    return logits_cumulative(v, matrices=m, biases=b, factors=f)

  def medians(self) -> jax.Array:
    """Each channel's median estimate, [C]."""
    return self.quantiles[:, 0, 1]

  def likelihood(self, values: jax.Array) -> jax.Array:
    """P(v - 1/2 < Z < v + 1/2) under each channel's density, for `values` [..., C] (not bounded)."""
    c = self.channels
    v = values.astype(jnp.float32).reshape(-1, c).T[:, None, :]
    lik = jax.nn.sigmoid(self._logits(v + 0.5)) - jax.nn.sigmoid(self._logits(v - 0.5))
    return lik[:, 0, :].T.reshape(values.shape)

  def aux_loss(self) -> jax.Array:
    """sum |c(quantiles) - (-t, 0, t)|, t = log(2 / tail_mass - 1): pulls the quantiles to the
    tail_mass/2, 1/2 and 1 - tail_mass/2 points of each channel's CDF (CompressAI's `loss`)."""
    t = float(np.log(2.0 / self.tail_mass - 1.0))
    target = jnp.asarray([-t, 0.0, t], jnp.float32)
    return jnp.sum(jnp.abs(self._logits(self.quantiles, stop_gradient=True) - target))

  def __call__(self, z: jax.Array, *, train: bool, quantization: str = "noise") -> tuple[jax.Array, jax.Array]:
    if z.shape[-1] != self.channels:
      raise ValueError(f"EntropyBottleneck has {self.channels} channels; got latents of shape {tuple(z.shape)} "
                       "(channels last).")
    mode = quantize_mode(train, quantization)
    z = z.astype(jnp.float32)
    z_hat = quantize(z, mode=mode, rng=noise_rng(self, mode), means=None if mode == "noise" else self.medians())
    lik = self.likelihood(z_hat)
    if self.likelihood_bound > 0:
      lik = lower_bound(lik, self.likelihood_bound)
    return z_hat, lik


# ----------------------------------------------------------------------------------------------
# Gaussian conditional, context model
# ----------------------------------------------------------------------------------------------


class GaussianConditional(nn.Module):
  """CompressAI's GaussianConditional (no parameters): `__call__(y, scales, means, train=...)` ->
  (y_hat, likelihoods). y_hat is y + U[-1/2, 1/2) ("noise") in training, round(y - means) + means
  in evaluation ("ste": that rounding with an identity gradient); the likelihood is
  `gaussian_likelihood` of y_hat."""

  scale_bound: float = SCALE_BOUND
  likelihood_bound: float = LIKELIHOOD_BOUND

  def __call__(self, y: jax.Array, scales: jax.Array, means: jax.Array | None = None, *, train: bool,
               quantization: str = "noise") -> tuple[jax.Array, jax.Array]:
    if scales.shape != y.shape or (means is not None and means.shape != y.shape):
      raise ValueError(f"GaussianConditional needs scales (and means) shaped like y {tuple(y.shape)}, got "
                       f"{tuple(scales.shape)}" + (f" and {tuple(means.shape)}" if means is not None else "") + ".")
    mode = quantize_mode(train, quantization)
    y = y.astype(jnp.float32)
    y_hat = quantize(y, mode=mode, rng=noise_rng(self, mode), means=means if mode != "noise" else None)
    lik = gaussian_likelihood(values=y_hat, scales=scales, means=means, scale_bound=self.scale_bound,
                              likelihood_bound=self.likelihood_bound)
    return y_hat, lik


def causal_mask(kernel_size: int, mask_type: str = "A") -> np.ndarray:
  """[k, k] mask of the taps a PixelCNN-style convolution may see: the rows above and, in the
  centre row, the columns to the left (type "A") or up to the centre (type "B")."""
  if mask_type not in ("A", "B"):
    raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}.")
  k = kernel_size
  mask = np.ones((k, k), np.float32)
  mask[k // 2, k // 2 + (mask_type == "B"):] = 0
  mask[k // 2 + 1:] = 0
  return mask


class MaskedConv(nn.Module):
  """A k x k convolution (stride 1, padding k//2) whose kernel is multiplied by `causal_mask`:
  output (i, j) sees only latents before (i, j) in raster order (CompressAI's MaskedConv2d).

  The stored `kernel` [k, k, C_in, C_out] may hold any value in the masked taps (CompressAI's
  files keep the unmasked weights); they never affect the output and get zero gradient.
  """

  features: int
  kernel_size: int = 5
  mask_type: str = "A"
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, cin = self.kernel_size, x.shape[-1]
    kernel = self.param("kernel", layers.torch_kernel_init, (k, k, cin, self.features), jnp.float32)
    bias = self.param("bias", layers.torch_bias_init(cin * k * k), (self.features,), jnp.float32)
    kernel = kernel * jnp.asarray(causal_mask(k, self.mask_type))[:, :, None, None]
    p = k // 2
    y = jax.lax.conv_general_dilated(x.astype(self.dtype), kernel.astype(self.dtype), (1, 1), ((p, p), (p, p)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(self.dtype)


class EntropyParameters(nn.Module):
  """Minnen et al.'s entropy-parameters network on [hyperprior features, context features] (4M
  channels): 1x1 convs 4M -> 10M/3 -> 8M/3 -> 2M with leaky ReLUs (slope 0.01) between; the output
  is [scales (M), means (M)] along the channels. Submodules layers_0, layers_2, layers_4 (nn.Sequential's
  names) are CompressAI's entropy_parameters.0/.2/.4."""

  M: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    m = self.M
    widths = (m * 12 // 3, m * 10 // 3, m * 8 // 3, m * 6 // 3)
    if x.shape[-1] != widths[0]:
      raise ValueError(f"EntropyParameters(M={m}) expects {widths[0]} input channels, got shape {tuple(x.shape)}.")
    for i in range(3):
      x = layers.conv(widths[i + 1], 1, in_features=widths[i], dtype=self.dtype, name=f"layers_{2 * i}")(x)
      if i < 2:
        x = nn.leaky_relu(x, 0.01)
    return x
