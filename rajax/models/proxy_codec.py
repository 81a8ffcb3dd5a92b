"""Learned image codecs that stand in for a real codec in the backward pass (NPP's proxy network).

NPP pre-processes images before a standard, non-differentiable codec (BPG, JPEG, ...); to train
the pre-processor end to end, a differentiable learned codec (the proxy) approximates the real
one. These are CompressAI 1.2.8's two scale-hyperprior codecs, numerically equal to it for the
same weights (NHWC here, NCHW there); CompressAI's checkpoints load with `load_compressai`.

bmshj2018-hyperprior (`ScaleHyperprior`; Balle et al. 2018, "Variational image compression with
a scale hyperprior"); torch module names on the right:

    y = g_a(x)       conv5/2(3->N) GDN conv5/2(N->N) GDN conv5/2(N->N) GDN conv5/2(N->M)   g_a.0 ... g_a.6
    z = h_a(|y|)     conv3/1(M->N) ReLU conv5/2(N->N) ReLU conv5/2(N->N)                 h_a.0/.2/.4
    z_hat            EntropyBottleneck(N)                                                entropy_bottleneck
    scales = h_s(z_hat)  deconv5/2(N->N) ReLU deconv5/2(N->N) ReLU conv3/1(N->M) ReLU    h_s.0/.2/.4
    y_hat            GaussianConditional(y; scales)                                      gaussian_conditional
    x_hat = g_s(y_hat)  deconv5/2(M->N) iGDN deconv5/2(N->N) iGDN deconv5/2(N->N) iGDN deconv5/2(N->3)

mbt2018 (`JointAutoregressiveHierarchicalPriors`; Minnen et al. 2018, "Joint autoregressive and
hierarchical priors for learned image compression"): g_a, g_s as above; then

    z = h_a(y)       conv3/1(M->N) LReLU conv5/2(N->N) LReLU conv5/2(N->N)
    params = h_s(z_hat)  deconv5/2(N->M) LReLU deconv5/2(M->3M/2) LReLU conv3/1(3M/2->2M)
    y_hat = Q(y)     ctx = MaskedConv5x5 type A (M->2M)(y_hat)                          context_prediction
    scales, means = EntropyParameters(M)([params, ctx])                                 entropy_parameters.0/.2/.4
    likelihood of y under N(means, scales), y quantised around the means                gaussian_conditional

The context model runs in parallel on the whole quantised y, as CompressAI's `forward` (training
and rate estimation) does; the serial decoding loop of real entropy coding is not needed here.
conv k/s pads k//2; deconv k/s is torch's ConvTranspose2d(padding=k//2, output_padding=s-1), so
every stage halves or doubles H and W, and inputs must be multiples of 64 (pad them first).
LReLU has slope 0.01. x_hat is not clipped (CompressAI clips only in `decompress`).

Calling: `codec.apply(variables, x, train=...)` with x [B, H, W, 3] in [0, 1] returns
{"x_hat": [B, H, W, 3], "likelihoods": {"y": [B, H/16, W/16, M], "z": [B, H/64, W/64, N]}}
(float32). train=False rounds every latent (around the medians / means); train=True quantises by
`quantization`: "noise" (CompressAI's uniform noise; the noise comes from Flax's "noise" rng
stream: `rngs={"noise": key}`) or "ste" (rounding with an identity gradient; no rng). As in
CompressAI, mbt2018 quantises y twice in training, independently: once for the context model and
the synthesis, once inside the Gaussian conditional for the likelihood.

Training as CompressAI does: loss = `rajax.losses.rate_distortion_loss(...)["loss"]` and the
entropy bottleneck's auxiliary loss `codec.apply(variables, method="aux_loss")`; the first gives
the `quantiles` zero gradient in training mode and the second reaches only them, so both can go
to one optimizer (or two with optax.multi_transform, CompressAI's 1e-3 for the quantiles).

Sizes (CompressAI's zoo, `QUALITIES`): bmshj2018-hyperprior q1-5 N=128 M=192, q6-8 N=192 M=320;
mbt2018 q1-4 N=192 M=192, q5-8 N=192 M=320. `proxy_codec(arch, quality=...)` builds them.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from rajax.models import entropy, layers
from rajax.weights.errors import WeightsError, mismatch_error

DOWNSAMPLING = 64  # 2^(4 + 2): four stride-2 stages in g_a, two more in h_a

QUALITIES: dict[str, dict[int, tuple[int, int]]] = {
    "bmshj2018-hyperprior": {q: (128, 192) if q <= 5 else (192, 320) for q in range(1, 9)},
    "mbt2018": {q: (192, 192) if q <= 4 else (192, 320) for q in range(1, 9)},
}


def _leaky_relu(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, 0.01)


class ConvTranspose(nn.Module):
  """torch's ConvTranspose2d(k, stride, padding=k//2, output_padding=stride-1) in NHWC: H -> stride * H.

  `kernel` is [k, k, C_in, C_out], torch's weight [C_in, C_out, k, k] with its axes moved (not
  flipped); the computation is the gradient of a convolution, i.e. a convolution of the
  stride-dilated input with the spatially flipped kernel. PyTorch's default initialisation
  (U(+-1/sqrt(C_out k^2)) for kernel and bias, torch's fan-in of a transposed weight).
  """

  features: int
  kernel_size: int = 5
  stride: int = 2
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, s, cin = self.kernel_size, self.stride, x.shape[-1]
    init = layers.torch_bias_init(self.features * k * k)
    kernel = self.param("kernel", init, (k, k, cin, self.features), jnp.float32)
    bias = self.param("bias", init, (self.features,), jnp.float32)
    p = k // 2
    lo, hi = k - 1 - p, k - 1 - p + (s - 1)
    y = jax.lax.conv_general_dilated(x.astype(self.dtype), jnp.flip(kernel, (0, 1)).astype(self.dtype), (1, 1),
                                     ((lo, hi), (lo, hi)), lhs_dilation=(s, s),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(self.dtype)


def _conv(cout: int, cin: int, k: int = 5, s: int = 2, dtype: Any = jnp.float32) -> nn.Module:
  return layers.conv(cout, k, in_features=cin, stride=s, padding=k // 2, dtype=dtype)


class ProxyCodec(nn.Module):
  """A proxy codec: x [B, H, W, 3] -> {"x_hat", "likelihoods": {"y", "z"}} (see the module docstring).

  Attributes:
    N: channels of the hyperprior and of the analysis/synthesis hidden layers.
    M: channels of the latent y.
    quantization: training-mode quantisation, "noise" (from the "noise" rng stream) or "ste".
    dtype: compute dtype of the convolutions (GDN and entropy models always run in float32).
  """

  ARCH = ""
  N: int = 128
  M: int = 192
  quantization: str = "noise"
  dtype: layers.Dtype = jnp.float32

  def __post_init__(self):
    if self.N < 1 or self.M < 1:
      raise ValueError(f"{self.ARCH} needs N >= 1 and M >= 1, got N={self.N}, M={self.M}.")
    if self.quantization not in entropy.TRAIN_QUANTIZATIONS:
      raise ValueError(f"{self.ARCH} quantization must be one of {entropy.TRAIN_QUANTIZATIONS}, "
                       f"got {self.quantization!r}.")
    super().__post_init__()

  def _analysis_synthesis(self):
    n, m, dt = self.N, self.M, self.dtype
    self.g_a = [_conv(n, 3, dtype=dt), entropy.GDN(), _conv(n, n, dtype=dt), entropy.GDN(),
                _conv(n, n, dtype=dt), entropy.GDN(), _conv(m, n, dtype=dt)]
    self.g_s = [ConvTranspose(n, dtype=dt), entropy.GDN(inverse=True), ConvTranspose(n, dtype=dt),
                entropy.GDN(inverse=True), ConvTranspose(n, dtype=dt), entropy.GDN(inverse=True),
                ConvTranspose(3, dtype=dt)]
    self.entropy_bottleneck = entropy.EntropyBottleneck(n)
    self.gaussian_conditional = entropy.GaussianConditional()

  def _check(self, x: jax.Array) -> None:
    layers.check_images(x, who=self.ARCH)
    h, w = x.shape[1:3]
    if h % DOWNSAMPLING or w % DOWNSAMPLING:
      raise ValueError(
          f"{self.ARCH} needs height and width that are multiples of {DOWNSAMPLING}, got {h}x{w}. Pad the "
          f"images first (e.g. jnp.pad(x, ((0, 0), (0, -{h} % {DOWNSAMPLING}), (0, -{w} % {DOWNSAMPLING}), (0, 0)), "
          "mode='edge')) and crop x_hat back.")

  def aux_loss(self) -> jax.Array:
    """The entropy bottleneck's auxiliary loss on its quantiles (CompressAI's `aux_loss()`)."""
    return self.entropy_bottleneck.aux_loss()

  def medians(self) -> jax.Array:
    """The entropy bottleneck's per-channel medians [N]."""
    return self.entropy_bottleneck.medians()


def _run(seq, x):
  for layer in seq:
    x = layer(x)
  return x


class ScaleHyperprior(ProxyCodec):
  """CompressAI's `bmshj2018-hyperprior` (ScaleHyperprior); see the module docstring."""

  ARCH = "bmshj2018-hyperprior"

  def setup(self):
    n, m, dt = self.N, self.M, self.dtype
    self._analysis_synthesis()
    self.h_a = [_conv(n, m, 3, 1, dt), nn.relu, _conv(n, n, dtype=dt), nn.relu, _conv(n, n, dtype=dt)]
    self.h_s = [ConvTranspose(n, dtype=dt), nn.relu, ConvTranspose(n, dtype=dt), nn.relu, _conv(m, n, 3, 1, dt),
                nn.relu]

  def __call__(self, x: jax.Array, *, train: bool) -> dict:
    self._check(x)
    q = self.quantization
    y = _run(self.g_a, x)
    z = _run(self.h_a, jnp.abs(y))
    z_hat, z_lik = self.entropy_bottleneck(z, train=train, quantization=q)
    scales = _run(self.h_s, z_hat).astype(jnp.float32)
    y_hat, y_lik = self.gaussian_conditional(y, scales, train=train, quantization=q)
    x_hat = _run(self.g_s, y_hat).astype(jnp.float32)
    return {"x_hat": x_hat, "likelihoods": {"y": y_lik, "z": z_lik}}


class JointAutoregressiveHierarchicalPriors(ProxyCodec):
  """CompressAI's `mbt2018` (JointAutoregressiveHierarchicalPriors); see the module docstring."""

  ARCH = "mbt2018"
  N: int = 192
  M: int = 192

  def setup(self):
    n, m, dt = self.N, self.M, self.dtype
    self._analysis_synthesis()
    self.h_a = [_conv(n, m, 3, 1, dt), _leaky_relu, _conv(n, n, dtype=dt), _leaky_relu, _conv(n, n, dtype=dt)]
    self.h_s = [ConvTranspose(m, dtype=dt), _leaky_relu, ConvTranspose(m * 3 // 2, dtype=dt), _leaky_relu,
                _conv(m * 2, m * 3 // 2, 3, 1, dt)]
    self.entropy_parameters = entropy.EntropyParameters(m, dtype=dt)
    self.context_prediction = entropy.MaskedConv(2 * m, 5, "A", dtype=dt)

  def __call__(self, x: jax.Array, *, train: bool) -> dict:
    self._check(x)
    q = self.quantization
    y = _run(self.g_a, x).astype(jnp.float32)
    z = _run(self.h_a, y)
    z_hat, z_lik = self.entropy_bottleneck(z, train=train, quantization=q)
    params = _run(self.h_s, z_hat)
    mode = entropy.quantize_mode(train, q)
    y_hat = entropy.quantize(y, mode=mode, rng=entropy.noise_rng(self, mode))
    ctx = self.context_prediction(y_hat)
    gaussian = self.entropy_parameters(jnp.concatenate([params.astype(ctx.dtype), ctx], axis=-1))
    scales, means = jnp.split(gaussian.astype(jnp.float32), 2, axis=-1)
    _, y_lik = self.gaussian_conditional(y, scales, means, train=train, quantization=q)
    x_hat = _run(self.g_s, y_hat).astype(jnp.float32)
    return {"x_hat": x_hat, "likelihoods": {"y": y_lik, "z": z_lik}}


ARCHITECTURES: dict[str, type[ProxyCodec]] = {
    ScaleHyperprior.ARCH: ScaleHyperprior,
    JointAutoregressiveHierarchicalPriors.ARCH: JointAutoregressiveHierarchicalPriors,
}


def proxy_codec(arch: str, *, quality: int | None = None, N: int | None = None, M: int | None = None,
                quantization: str = "noise", dtype: Any = jnp.float32) -> ProxyCodec:
  """The codec `arch` ("bmshj2018-hyperprior" | "mbt2018") at CompressAI's `quality` 1-8, or with
  explicit N and M (which override the quality's)."""
  if arch not in ARCHITECTURES:
    raise ValueError(f"Unknown proxy codec {arch!r}; available: {sorted(ARCHITECTURES)}.")
  if quality is not None:
    if quality not in QUALITIES[arch]:
      raise ValueError(f"{arch} has qualities {sorted(QUALITIES[arch])}, got {quality!r}.")
    qn, qm = QUALITIES[arch][quality]
    N, M = N or qn, M or qm
  if N is None or M is None:
    raise ValueError(f"Give {arch} a quality (1-8) or both N and M, got quality={quality}, N={N}, M={M}.")
  return ARCHITECTURES[arch](N=N, M=M, quantization=quantization, dtype=layers.as_dtype(dtype))


# ----------------------------------------------------------------------------------------------
# CompressAI checkpoints
# ----------------------------------------------------------------------------------------------

_DECONVS = ("g_s.0", "g_s.2", "g_s.4", "g_s.6", "h_s.0", "h_s.2")
_LEAVES = {"kernel": "weight", "bias": "bias", "beta": "beta", "gamma": "gamma", "quantiles": "quantiles"}
# The older names of the entropy bottleneck's tensors: CompressAI < 1.2 ("_matrix0") and its zoo's
# released files ("_matrices.0"); 1.2.8 writes "matrices.0".
_EB_OLD = re.compile(r"entropy_bottleneck\.(?:_(matrix|bias|factor)(\d+)|_(matrices|biases|factors)\.(\d+))")
_EB_PLURAL = {"matrix": "matrices", "bias": "biases", "factor": "factors"}


def torch_name(path: str) -> str:
  """The CompressAI state-dict key of a Flax param path ("g_a_1/gamma" -> "g_a.1.gamma")."""
  *modules, leaf = path.split("/")
  module = ".".join(re.sub(r"^layers_(\d+)$|_(\d+)$", lambda g: g[1] if g[1] else f".{g[2]}", m) for m in modules)
  m = re.fullmatch(r"(matrices|biases|factors)_(\d+)", leaf)
  if m:
    return f"{module}.{m[1]}.{m[2]}"
  if leaf not in _LEAVES:
    raise WeightsError(f"No CompressAI name for Flax parameter {path!r}.")
  return f"{module}.{_LEAVES[leaf]}"


def _renamed(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {}
  for k, v in state_dict.items():
    m = _EB_OLD.fullmatch(k)
    if m:
      k = f"entropy_bottleneck.{_EB_PLURAL[m[1]]}.{m[2]}" if m[1] else f"entropy_bottleneck.{m[3]}.{m[4]}"
    out[k] = v
  return out


def _buffers(model: ProxyCodec) -> dict[str, Any]:
  """CompressAI's buffers (constants or CDF tables): name pattern -> the value this model assumes
  (None: any value; tables rebuilt by CompressAI's `update()`, unused by the forward pass)."""
  pedestal = entropy.REPARAM_OFFSET ** 2
  eb = "entropy_bottleneck"
  t = float(np.log(2.0 / 1e-9 - 1.0))
  out = {
      r"g_[as]\.[135]\.(beta|gamma)_reparam\.pedestal": pedestal,
      r"g_[as]\.[135]\.beta_reparam\.lower_bound\.bound": np.sqrt(1e-6 + pedestal),
      r"g_[as]\.[135]\.gamma_reparam\.lower_bound\.bound": np.sqrt(pedestal),
      rf"{eb}\.(_offset|_quantized_cdf|_cdf_length)": None,
      rf"{eb}\.target": np.array([-t, 0.0, t]),
      rf"{eb}\.likelihood_lower_bound\.bound": entropy.LIKELIHOOD_BOUND,
      r"gaussian_conditional\.(_offset|_quantized_cdf|_cdf_length|scale_table)": None,
      r"gaussian_conditional\.(scale_bound|lower_bound_scale\.bound)": entropy.SCALE_BOUND,
      r"gaussian_conditional\.likelihood_lower_bound\.bound": entropy.LIKELIHOOD_BOUND,
  }
  if isinstance(model, JointAutoregressiveHierarchicalPriors):
    out[r"context_prediction\.mask"] = entropy.causal_mask(5, "A")[None, None]
  return out


def _same_constant(value: np.ndarray, want: Any) -> bool:
  try:
    want = np.broadcast_to(np.asarray(want, np.float64), np.shape(value))
  except ValueError:
    return False
  return bool(np.allclose(np.asarray(value, np.float64), want, rtol=1e-5, atol=0))


def describe_state_dict(state_dict: Mapping[str, np.ndarray]) -> str:
  """What a CompressAI state dict holds, as far as its keys and shapes tell ("mbt2018, N=192, M=320,
  quality 5-8"), for error messages."""
  sd = _renamed(state_dict)
  try:
    n, m = int(np.shape(sd["g_a.0.weight"])[0]), int(np.shape(sd["g_a.6.weight"])[0])
  except (KeyError, IndexError):
    return "not a CompressAI hyperprior codec (no g_a.0.weight / g_a.6.weight)"
  if "context_prediction.weight" in sd:
    arch = "mbt2018"
  elif "h_s.4.weight" in sd and np.shape(sd["h_s.4.weight"])[0] == 2 * m:
    arch = "mbt2018-mean (not supported)"
  elif "h_s.4.weight" in sd:
    arch = "bmshj2018-hyperprior"
  else:
    arch = "a codec without this hyperprior (e.g. bmshj2018-factorized; not supported)"
  qs = [q for q, nm in QUALITIES.get(arch, {}).items() if nm == (n, m)]
  quality = f", quality {qs[0]}-{qs[-1]}" if qs else ""
  return f"{arch}, N={n}, M={m}{quality}"


def compressai_variables(state_dict: Mapping[str, np.ndarray], model: ProxyCodec, *, source: str = "state dict") -> dict:
  """A CompressAI state dict (numpy arrays) -> Flax variables {"params": ...} for `model`.

  Accepts CompressAI 1.2.8's keys and the entropy bottleneck's older names. Buffers are checked
  against the constants this model computes with (GDN bounds, likelihood and scale bounds, the
  context mask) or ignored (CDF tables). Every missing, unexpected or ill-shaped key is named in one
  WeightsError together with what the file and the model are.
  """
  sd = _renamed(state_dict)
  x = jnp.zeros((1, DOWNSAMPLING, DOWNSAMPLING, 3), jnp.float32)
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  want = traverse_util.flatten_dict(dict(template["params"]), sep="/")
  buffers = _buffers(model)
  out, used, missing, bad_shape, bad_value = {}, set(), [], [], []
  for path, spec in want.items():
    name = torch_name(path)
    if name not in sd:
      missing.append(name)
      continue
    used.add(name)
    value = np.asarray(sd[name], np.float32)
    if path.endswith("/kernel") and value.ndim == 4:
      value = value.transpose((2, 3, 0, 1) if name.rsplit(".", 1)[0] in _DECONVS else (2, 3, 1, 0))
    if value.shape != tuple(spec.shape):
      bad_shape.append(f"{name}: file {tuple(np.shape(sd[name]))}, model {tuple(spec.shape)} (Flax {path})")
      continue
    out[path] = value
  unexpected = []
  for k in sorted(set(sd) - used):
    rule = next((v for pat, v in buffers.items() if re.fullmatch(pat, k)), KeyError)
    if rule is KeyError:
      unexpected.append(k)
    elif rule is not None and not _same_constant(sd[k], rule):
      bad_value.append(f"{k}: file {np.round(np.ravel(sd[k])[:4], 8).tolist()}, model {np.ravel(rule)[:4].tolist()}")
  what = f"the model is {model.ARCH}, N={model.N}, M={model.M}; the file holds {describe_state_dict(sd)}"
  if missing or unexpected or bad_shape:
    raise mismatch_error(source, missing=missing, unexpected=unexpected, bad_shape=bad_shape,
                         hint=f"Check the architecture and size: {what}. Build the codec with "
                              "proxy_codec(arch, quality=...) or N=/M= to match the file.")
  if bad_value:
    raise WeightsError(f"Weights from {source} were saved by a codec with other constants than this model's "
                       f"({what}): " + "; ".join(bad_value) + ". rajax's codecs use CompressAI's defaults "
                       "(GDN beta_min 1e-6, scale bound 0.11, likelihood bound 1e-9).")
  return {"params": traverse_util.unflatten_dict(out, sep="/")}


def load_compressai(path: str | os.PathLike, model: ProxyCodec) -> dict:
  """Flax variables for `model` from a CompressAI checkpoint (.pth / .pth.tar / .pt: a state dict,
  or a dict holding one under "state_dict" as CompressAI's training script saves), read with
  rajax's restricted torch reader (no code from the file runs)."""
  from rajax.weights import read_state_dict

  return compressai_variables(read_state_dict(path), model, source=str(path))


def codec_for_state_dict(state_dict: Mapping[str, np.ndarray], *, quantization: str = "noise",
                         dtype: Any = jnp.float32) -> ProxyCodec:
  """The codec (architecture, N, M) that a CompressAI state dict was saved from."""
  desc = describe_state_dict(state_dict)
  arch = desc.split(",")[0]
  if arch not in ARCHITECTURES:
    raise WeightsError(f"The state dict holds {desc}; rajax's proxy codecs are {sorted(ARCHITECTURES)}.")
  sd = _renamed(state_dict)
  n, m = int(np.shape(sd["g_a.0.weight"])[0]), int(np.shape(sd["g_a.6.weight"])[0])
  return proxy_codec(arch, N=n, M=m, quantization=quantization, dtype=dtype)
