"""Building blocks shared by rajax's Flax modules.

All layers are NHWC. Convolutions use PyTorch's default initialisation (kaiming-uniform with
a=sqrt(5) for kernels, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for biases) and explicit symmetric
padding, so that a module built here trains like, and can load the weights of, its PyTorch
original. BatchNorm uses PyTorch's momentum (0.1, i.e. Flax 0.9) and epsilon (1e-5).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

Dtype = Any

# PyTorch's default Conv/Linear kernel init: kaiming_uniform_(a=sqrt(5)) == U(+-sqrt(1/fan_in)).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
  """PyTorch's default bias init for a layer with `fan_in` inputs: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def conv(
    features: int,
    kernel: int,
    *,
    in_features: int,
    stride: int = 1,
    padding: int = 0,
    use_bias: bool = True,
    dtype: Dtype = jnp.float32,
    kernel_init=torch_kernel_init,
    bias_init=None,
    dilation: int = 1,
    name: str | None = None,
) -> Conv:
  """A square NHWC convolution with PyTorch's padding semantics and default initialisation."""
  return Conv(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      padding=((padding, padding), (padding, padding)),
      dilation=dilation,
      use_bias=use_bias,
      dtype=dtype,
      kernel_init=kernel_init,
      bias_init=bias_init if bias_init is not None else torch_bias_init(in_features * kernel * kernel),
      name=name,
  )


# Where training-mode BatchNorm takes its statistics from: "global" the whole (sharded) batch, as
# one device would; "per_device" each device's slice of it (see PerDeviceBatchNorm).
BN_STATS = ("global", "per_device")


def batch_norm(*, train: bool, dtype: Dtype, name: str | None = None, stats: str = "global") -> nn.Module:
  """BatchNorm with PyTorch's defaults; statistics are always computed in float32.

  `stats` is one of BN_STATS; both give the same variables (params scale/bias, batch_stats
  mean/var), so checkpoints move freely between them.
  """
  if stats == "per_device":
    return PerDeviceBatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)
  if stats != "global":
    raise ValueError(f"Unknown BatchNorm statistics {stats!r}; use one of {', '.join(BN_STATS)}.")
  return nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
  )


def data_shards(axis: str = "data") -> int:
  """How many ways the batch is split: the size of mesh axis `axis` in the current mesh context
  (`jax.set_mesh`), 1 outside one or when the mesh has no such axis."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or axis not in mesh.axis_names:
    return 1
  return int(mesh.shape[axis])


class PerDeviceBatchNorm(nn.Module):
  """BatchNorm whose training statistics are those of each device's slice of the batch.

  In training mode the batch [B, ..., C] is viewed as [G, B/G, ..., C], G = `data_shards()` (the
  size of the "data" axis of the mesh the step is traced under, 1 without one), with the group
  axis sharded along "data", and each group is normalised with its own mean and variance. Each
  device thus reduces only over its local examples and the forward pass needs no collective,
  where global statistics cost one all-reduce per layer forward and one backward (what PyTorch's
  DistributedDataParallel does without SyncBatchNorm). The running averages are updated with the
  mean over the groups of their statistics (one small reduction off the critical path, which the
  compiler can combine with the gradient all-reduce). With G = 1 it computes what nn.BatchNorm does.
  In inference mode it uses the running averages, as nn.BatchNorm.
  """

  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  axis: str = "data"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    if self.use_running_average:
      return _bn_normalize(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon, self.dtype)
    g = 1 if self.is_initializing() else data_shards(self.axis)
    b = x.shape[0]
    if b % g:
      raise ValueError(f"Per-device BatchNorm: a batch of {b} cannot be split over the {g} devices of mesh "
                       f"axis {self.axis!r}; use a batch size divisible by {g}.")
    xg = x.reshape(g, b // g, *x.shape[1:])
    if g > 1:
      xg = jax.lax.with_sharding_constraint(xg, jax.sharding.PartitionSpec(self.axis))
    axes = tuple(range(1, xg.ndim - 1))
    xf = xg.astype(jnp.float32)
    mean = jnp.mean(xf, axes, keepdims=True)
    var = jnp.maximum(jnp.mean(jnp.square(xf), axes, keepdims=True) - jnp.square(mean), 0.0)
    y = _bn_normalize(xg, mean, var, scale, bias, self.epsilon, self.dtype).reshape(x.shape)
    if not self.is_initializing():
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * jnp.mean(mean.reshape(g, c), axis=0)
      ra_var.value = m * ra_var.value + (1 - m) * jnp.mean(var.reshape(g, c), axis=0)
    return y


def _bn_normalize(x, mean, var, scale, bias, epsilon, dtype):
  """(x - mean) * rsqrt(var + eps) * scale + bias in float32, cast to `dtype` (as nn.BatchNorm)."""
  y = (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale)
  return jnp.asarray(y + bias, dtype)


def prelu(name: str | None = None) -> nn.PReLU:
  """PReLU with one shared slope initialised to 0.25, as torch.nn.PReLU()."""
  return nn.PReLU(negative_slope_init=0.25, param_dtype=jnp.float32, name=name)


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
  """Reflection padding of the two spatial axes of an NHWC array (torch.nn.ReflectionPad2d)."""
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def pixel_shuffle(x: jax.Array, r: int) -> jax.Array:
  """torch.nn.PixelShuffle(r) on NHWC: [B, h, w, C*r*r] -> [B, h*r, w*r, C].

  Channels keep PyTorch's order: out[b, h*r + i, w*r + j, c] = x[b, h, w, c*r*r + i*r + j], so a
  convolution loaded from a torch checkpoint feeds it unchanged (dm-pix's `depth_to_space` instead
  reads channel (i*r + j)*C + c).
  """
  b, h, w, crr = x.shape
  if r < 1 or crr % (r * r):
    raise ValueError(f"pixel_shuffle({r}) needs a channel count divisible by {r * r}, got shape {tuple(x.shape)}.")
  c = crr // (r * r)
  y = x.reshape(b, h, w, c, r, r)
  y = jnp.transpose(y, (0, 1, 4, 2, 5, 3))  # b, h, i, w, j, c
  return y.reshape(b, h * r, w * r, c)


def check_images(x: jax.Array, *, who: str, channels: int = 3) -> None:
  """Raises a ValueError naming `who` unless `x` is a batch of NHWC images with `channels` channels."""
  if x.ndim != 4 or x.shape[-1] != channels:
    raise ValueError(
        f"{who} expects a batch of images shaped [batch, height, width, {channels}] (NHWC), "
        f"got shape {tuple(x.shape)}. Add a batch axis with x[None] or move channels last with "
        "jnp.moveaxis(x, 1, -1)."
    )


def to_unit_range(y: jax.Array) -> jax.Array:
  """Maps pre-activation outputs to [0, 1] as (tanh(y) + 1) / 2, computed in float32."""
  return (jnp.tanh(y.astype(jnp.float32)) + 1.0) / 2.0


def to_unit_range_around(y: jax.Array, base: jax.Array) -> jax.Array:
  """(tanh(y + atanh(2 base - 1)) + 1) / 2: like `to_unit_range`, but equal to `base` where y = 0.

  Lets a network learn a correction of `base` (e.g. a bicubic upscaling of its input) in the
  pre-tanh domain while its output stays smooth and inside [0, 1]. `base` is clipped to
  [1e-3, 1 - 1e-3] so the inverse tanh stays finite.
  """
  b = jnp.clip(base.astype(jnp.float32), 1e-3, 1.0 - 1e-3)
  return (jnp.tanh(y.astype(jnp.float32) + jnp.arctanh(2.0 * b - 1.0)) + 1.0) / 2.0


def as_dtype(dtype: Any) -> jnp.dtype:
  """'bfloat16' / jnp.bfloat16 / np.dtype -> a jnp dtype, with a clear error for anything else."""
  try:
    out = jnp.dtype(dtype)
  except TypeError:
    raise ValueError(f"Unknown dtype {dtype!r}; use 'float32', 'bfloat16' or 'float16'.") from None
  if not jnp.issubdtype(out, jnp.floating):
    raise ValueError(f"Compute dtype must be a float type ('float32', 'bfloat16', 'float16'), got {dtype!r}.")
  return out


def _phases(x: jax.Array, s: int, padding, k: int) -> tuple[jax.Array, int, int]:
  """x zero-padded by `padding` (and up to multiples of s) and split into its s x s phases:
  [N, Hp/s, s, Wp/s, s, C], with the output size (ho, wo) of a k x k, stride-s window."""
  (pt, pb), (pl, pr) = padding
  n, h, w, c = x.shape
  ho, wo = (h + pt + pb - k) // s + 1, (w + pl + pr - k) // s + 1
  hp, wp = -(-(h + pt + pb) // s) * s, -(-(w + pl + pr) // s) * s
  xp = jnp.pad(x, ((0, 0), (pt, hp - h - pt), (pl, wp - w - pl), (0, 0)))
  return xp.reshape(n, hp // s, s, wp // s, s, c), ho, wo


def _tap(xp: jax.Array, i: int, j: int, s: int, ho: int, wo: int) -> jax.Array:
  """What kernel tap (i, j) of a stride-s window multiplies: a unit-stride slice of one phase."""
  return xp[:, i // s:i // s + ho, i % s, j // s:j // s + wo, j % s, :]


def depthwise_shifts(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
  """A k x k depthwise NHWC convolution (kernel [k, k, 1, C]) with `stride` and explicit
  `padding` ((top, bottom), (left, right)), as a sum of k*k shifted, scaled copies of x.

  Every tap reads a unit-stride slice of one of x's stride x stride phases, and the gradient is
  an explicit rule of the same form: per phase of x, a full correlation of the output gradient
  with that phase's sub-kernel. Left to autodiff (strided slices, whose transposes are
  interior-padded pads), XLA's CPU backend fused the transposed taps with the BatchNorm and ReLU6
  around the layer into loops that made MobileNetV2's input gradient about 10x its forward.
  """
  k, c = kernel.shape[0], x.shape[-1]
  if kernel.shape != (k, k, 1, c):
    raise ValueError(f"depthwise_shifts needs a kernel of shape (k, k, 1, {c}) for {c} input channels; "
                     f"got {kernel.shape}.")
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  return _depthwise_shifts(x, kernel, int(stride), padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_shifts(x, kernel, s, padding):
  k = kernel.shape[0]
  xp, ho, wo = _phases(x, s, padding, k)
  out = None
  for i in range(k):
    for j in range(k):
      term = _tap(xp, i, j, s, ho, wo) * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


def _depthwise_fwd(x, kernel, s, padding):
  return _depthwise_shifts(x, kernel, s, padding), (x, kernel)


def _depthwise_bwd(s, padding, res, g):
  x, kernel = res
  k = kernel.shape[0]
  (pt, _), (pl, _) = padding
  n, h, w, c = x.shape
  xp, ho, wo = _phases(x, s, padding, k)
  qh, qw = xp.shape[1], xp.shape[3]
  dkernel = jnp.stack([jnp.stack([jnp.sum(_tap(xp, i, j, s, ho, wo) * g, axis=(0, 1, 2)) for j in range(k)])
                       for i in range(k)])[:, :, None, :]
  # Phase (a, b) of the padded input gradient: sum over u, v of g[q - u, r - v] * kernel[s u + a, s v + b],
  # u, v < taps = ceil(k / s); g is padded by taps - 1 in front so that every read is in range.
  taps = -(-k // s)
  gp = jnp.pad(g, ((0, 0), (taps - 1, max(0, qh - ho)), (taps - 1, max(0, qw - wo)), (0, 0)))
  rows = []
  for a in range(s):
    cols = []
    for b in range(s):
      acc = jnp.zeros((n, qh, qw, c), g.dtype)
      for u in range(len(range(a, k, s))):
        for v in range(len(range(b, k, s))):
          du, dv = taps - 1 - u, taps - 1 - v
          acc = acc + gp[:, du:du + qh, dv:dv + qw, :] * kernel[s * u + a, s * v + b, 0]
      cols.append(acc)
    rows.append(jnp.stack(cols, axis=3))
  dxp = jnp.stack(rows, axis=2).reshape(n, qh * s, qw * s, c)
  return dxp[:, pt:pt + h, pl:pl + w, :].astype(x.dtype), dkernel.astype(kernel.dtype)


_depthwise_shifts.defvjp(_depthwise_fwd, _depthwise_bwd)


def _dilated_shifts(x: jax.Array, kernel: jax.Array, d: int, padding) -> jax.Array:
  """A stride-1 depthwise convolution with taps `d` pixels apart, as k*k shifted, scaled slices."""
  k = kernel.shape[0]
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  ho, wo = xp.shape[1] - d * (k - 1), xp.shape[2] - d * (k - 1)
  out = None
  for i in range(k):
    for j in range(k):
      term = xp[:, i * d:i * d + ho, j * d:j * d + wo, :] * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


class DepthwiseConv(nn.Module):
  """A depthwise (one filter per channel) NHWC convolution; parameters as nn.Conv with
  feature_group_count == features: `kernel` [k, k, 1, C].

  `impl` picks the computation: "conv" is XLA's grouped convolution (what GPUs and TPUs run
  fastest); "shifts" sums k*k shifted, scaled copies of the input, which XLA's CPU backend runs
  about 20x faster forward and 8x faster backward than its grouped convolution; "auto" (default)
  uses "shifts" on CPU and "conv" elsewhere. Both compute the same function. A dilated kernel
  (`dilation` > 1, torch's dilation: taps `dilation` pixels apart) with stride 1 runs its "shifts"
  as k*k unit-stride slices of the padded input left to autodiff (their transposes are pads, cheap
  on CPU); with a stride as well it runs as "conv".
  """

  features: int
  kernel_size: int
  stride: int = 1
  padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
  dtype: Dtype = jnp.float32
  kernel_init: Any = torch_kernel_init
  impl: str = "auto"
  dilation: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, s, c = self.kernel_size, self.stride, self.features
    if x.shape[-1] != c:
      raise ValueError(f"DepthwiseConv of {c} channels got an input with {x.shape[-1]} channels.")
    kernel = self.param("kernel", self.kernel_init, (k, k, 1, c), jnp.float32)
    impl = self.impl if self.impl != "auto" else ("shifts" if jax.default_backend() == "cpu" else "conv")
    if impl not in ("conv", "shifts"):
      raise ValueError(f"Unknown depthwise convolution impl {self.impl!r}; use 'auto', 'conv' or 'shifts'.")
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    d = self.dilation
    if impl == "shifts" and d != 1 and s == 1:
      return _dilated_shifts(x, kernel, d, self.padding)
    if impl == "conv" or d != 1:
      return jax.lax.conv_general_dilated(
          x, kernel, (s, s), self.padding, rhs_dilation=(d, d), dimension_numbers=("NHWC", "HWIO", "NHWC"),
          feature_group_count=c)
    return depthwise_shifts(x, kernel, s, self.padding)


# XLA's CPU backend computes a convolution's kernel gradient as a convolution whose window is the
# whole image, which it runs several times slower than the forward pass once the image is large
# (measured: `python -m rajax.bench_ops`, docs/performance.md). `conv_cpu` keeps XLA's forward pass
# and input gradient and computes the kernel gradient in one of two equal forms XLA runs faster:
#   "rows":    per kernel row i, one matrix product of the input's rows i.. i+H (its kw shifted copies
#              side by side on the channel axis) with the output gradient: dW[i] = X_i^T G;
#   "swapped": one convolution with the roles of batch and channels exchanged (the input as
#              [C, H, W, B], the output gradient as the kernel), for few output channels, where the
#              products of "rows" are too thin.
# Only for ungrouped, undilated, unit-stride convolutions, and only on CPU (Conv's impl "auto").
_CPU_KERNEL_GRAD_MIN_PIXELS = 1024   # below this XLA's own kernel gradient is as fast or faster
_CPU_THIN_OUTPUT = 16                # "swapped" for at most this many output channels, else "rows"
_CPU_KERNEL_GRAD_MIN_WEIGHTS = 10000  # nor for small kernels (narrow networks), which would only compile longer


def _out_pixels(size, kernel, strides, padding) -> int:
  """Output pixels per image of a convolution of `size` (h, w)."""
  (h, w), (kh, kw), (sh, sw) = size, kernel, strides
  (pt, pb), (pl, pr) = padding
  return max(0, (h + pt + pb - kh) // sh + 1) * max(0, (w + pl + pr - kw) // sw + 1)


def cpu_kernel_grad_form(height: int, width: int, out_features: int,
                         weights: int = _CPU_KERNEL_GRAD_MIN_WEIGHTS) -> str | None:
  """The kernel-gradient form conv_cpu uses for an image of height x width and a kernel of `weights`
  entries (None: XLA's own)."""
  if height * width < _CPU_KERNEL_GRAD_MIN_PIXELS or weights < _CPU_KERNEL_GRAD_MIN_WEIGHTS:
    return None
  return "swapped" if out_features <= _CPU_THIN_OUTPUT else "rows"


def _conv(x, kernel, padding):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def kernel_grad(x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...], padding, form: str) -> jax.Array:
  """d(sum(conv(x, W) * g)) / dW for a unit-stride ungrouped NHWC/HWIO convolution, in `form`."""
  kh, kw, c, o = kernel_shape
  _, h, w, _ = g.shape
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  if form == "swapped":
    out = _conv(xp.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), ((0, 0), (0, 0)))   # [C, kh, kw, O]
    return out.transpose(1, 2, 0, 3)
  if form != "rows":
    raise ValueError(f"Unknown kernel-gradient form {form!r}; use 'rows' or 'swapped'.")
  cols = jnp.concatenate([xp[:, :, j:j + w, :] for j in range(kw)], axis=-1)          # [B, H+kh-1, W, kw*C]
  rows = [jnp.einsum("bhwk,bhwo->ko", cols[:, i:i + h], g) for i in range(kh)]
  return jnp.stack(rows).reshape(kh, kw, c, o).astype(x.dtype)


# At the other end, XLA's CPU convolution is pathologically slow on tiny feature maps with many
# channels (ResNet-18's last stage on a 64x64 image: 2x2 maps of 512 channels, 40 ms for a 3x3
# convolution that is 0.8 ms as a matrix product). There Conv ("auto", CPU) computes the
# convolution as the matrix product of the kh * kw shifted (strided) copies of the input, side by
# side on the channel axis, with the kernel: `conv_patches`.
_CPU_PATCHES_MAX_PIXELS = 16   # output pixels per image up to which the matrix product is faster
_CPU_PATCHES_MIN_FEATURES = 128  # input channels from which XLA's convolution is slow there (narrower: no gain)


def conv_patches(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding) -> jax.Array:
  """An ungrouped, undilated NHWC/HWIO convolution as one matrix product over (taps, channels)."""
  kh, kw, c, o = kernel.shape
  sh, sw = strides
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
  cols = jnp.concatenate([xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
                          for i in range(kh) for j in range(kw)], axis=-1)
  return jax.lax.dot_general(cols, kernel.reshape(kh * kw * c, o), (((3,), (0,)), ((), ())))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _kernel_grad_tap(x, kernel, y, padding, form):
  """y unchanged; its cotangent g gives `kernel` the gradient kernel_grad(x, g) (x is not differentiated)."""
  del x, kernel
  return y


def _tap_fwd(x, kernel, y, padding, form):
  return y, (x, kernel)


def _tap_bwd(padding, form, res, g):
  x, kernel = res
  return jnp.zeros_like(x), kernel_grad(x, g, kernel.shape, padding, form).astype(kernel.dtype), g


_kernel_grad_tap.defvjp(_tap_fwd, _tap_bwd)


def conv_cpu(x: jax.Array, kernel: jax.Array, padding, form: str) -> jax.Array:
  """XLA's unit-stride convolution with the kernel gradient of `kernel_grad(form)` (see above). The
  input gradient stays XLA's own, so it is computed only where needed (not for a network's first layer)."""
  y = _conv(x, jax.lax.stop_gradient(kernel), padding)
  return _kernel_grad_tap(jax.lax.stop_gradient(x), kernel, y, padding, form)


# XLA's CPU gradient of a max pool (select-and-scatter, rewritten as a reduce-window that carries
# one index array per window dimension) costs more than the rest of the pool's work: on
# ResNet-18's stem at 64x64 about 5 ms of the RA step (python -m rajax.bench_ops --trace). On CPU
# `max_pool` takes the maximum over the kh * kw strided slices instead, and its custom gradient
# sends each output's cotangent to the first maximum of its window, as XLA's does.
def max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
             padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0)), *, impl: str = "auto") -> jax.Array:
  """nn.max_pool over the two spatial axes of NHWC `x` (padding with -inf). `impl`: "reduce_window"
  (nn.max_pool, what GPUs and TPUs run), "slices" (the maximum of the strided slices, first-maximum
  gradient) or "auto" (default: "slices" on CPU). Both give the same values and gradients."""
  window, strides = tuple(window), tuple(strides)
  padding = tuple(tuple(p) for p in padding)
  if impl == "auto":
    impl = "slices" if jax.default_backend() == "cpu" else "reduce_window"
  if impl == "reduce_window":
    return nn.max_pool(x, window, strides=strides, padding=padding)
  if impl != "slices":
    raise ValueError(f"Unknown max_pool impl {impl!r}; use 'auto', 'reduce_window' or 'slices'.")
  return _max_pool_slices(x, window, strides, padding)


def _pool_taps(x, window, strides, padding) -> list[jax.Array]:
  """The window's kh * kw strided slices of -inf-padded `x`, in row-major order."""
  (kh, kw), (sh, sw) = window, strides
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
  ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
  return [xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :] for i in range(kh) for j in range(kw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_slices(x, window, strides, padding):
  return functools.reduce(jnp.maximum, _pool_taps(x, window, strides, padding))


def _max_pool_fwd(x, window, strides, padding):
  taps = _pool_taps(x, window, strides, padding)
  best, first = taps[0], jnp.zeros(taps[0].shape, jnp.int32)
  for t, tap in enumerate(taps[1:], 1):   # strictly greater: the first maximum keeps its place
    first = jnp.where(tap > best, t, first)
    best = jnp.maximum(best, tap)
  return best, (first, x.shape)


def _max_pool_bwd(window, strides, padding, res, g):
  first, shape = res
  (kh, kw), (sh, sw), ((pt, pb), (pl, pr)) = window, strides, padding
  hp, wp = shape[1] + pt + pb, shape[2] + pl + pr
  ho, wo = g.shape[1:3]
  zero = jnp.zeros((), g.dtype)
  gxp = None
  for t in range(kh * kw):
    i, j = divmod(t, kw)
    placed = jax.lax.pad(jnp.where(first == t, g, zero), zero,
                         ((0, 0, 0), (i, hp - i - sh * (ho - 1) - 1, sh - 1), (j, wp - j - sw * (wo - 1) - 1, sw - 1),
                          (0, 0, 0)))
    gxp = placed if gxp is None else gxp + placed
  return (gxp[:, pt:pt + shape[1], pl:pl + shape[2], :],)


_max_pool_slices.defvjp(_max_pool_fwd, _max_pool_bwd)


class Conv(nn.Module):
  """An NHWC convolution with nn.Conv's variables (`kernel` [kh, kw, C_in / groups, C_out], `bias`).

  `impl` picks the computation: "conv" is XLA's convolution; "dot" computes a 1x1 ungrouped
  convolution as a matrix product over channels (strides by slicing), which XLA's CPU backend
  runs several times faster than its convolution, forward and backward; "auto" (default) uses
  "dot" for 1x1 ungrouped kernels on CPU and "conv" everywhere else, and on CPU computes the kernel
  gradient of unit-stride ungrouped convolutions over large images in a faster equal form
  (`conv_cpu`) and convolutions with tiny outputs as one matrix product (`conv_patches`). All compute
  the same function and gradients.
  `dilation` spaces the kernel's taps (torch's dilation; a 1x1 kernel ignores it).
  """

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
  feature_group_count: int = 1
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  kernel_init: Any = torch_kernel_init
  bias_init: Any = nn.initializers.zeros
  impl: str = "auto"
  dilation: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    (kh, kw), g = tuple(self.kernel_size), self.feature_group_count
    cin = x.shape[-1]
    if cin % g or self.features % g:
      raise ValueError(f"Conv with {g} groups needs channel counts divisible by it; got {cin} -> {self.features}.")
    kernel = self.param("kernel", self.kernel_init, (kh, kw, cin // g, self.features), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    pointwise = (kh, kw) == (1, 1) and g == 1
    impl = self.impl
    if impl == "auto":
      impl = "dot" if pointwise and jax.default_backend() == "cpu" else "conv"
    if impl == "dot" and pointwise:
      if any(p for pair in self.padding for p in pair):
        x = jnp.pad(x, ((0, 0), *self.padding, (0, 0)))
      sh, sw = self.strides
      y = jax.lax.dot_general(x[:, ::sh, ::sw, :], kernel[0, 0], (((3,), (0,)), ((), ())))
    elif impl == "conv" and self.impl == "auto" and jax.default_backend() == "cpu" and g == 1 \
        and self.dilation == 1 and cin >= _CPU_PATCHES_MIN_FEATURES \
        and _out_pixels(x.shape[1:3], (kh, kw), self.strides, self.padding) <= _CPU_PATCHES_MAX_PIXELS:
      y = conv_patches(x, kernel, tuple(self.strides), tuple(tuple(p) for p in self.padding))
    elif impl in ("conv", "dot") and self.impl == "auto" and jax.default_backend() == "cpu" and g == 1 \
        and self.dilation == 1 and tuple(self.strides) == (1, 1) \
        and (form := cpu_kernel_grad_form(x.shape[1], x.shape[2], self.features, kernel.size)) is not None:
      y = conv_cpu(x, kernel, tuple(tuple(p) for p in self.padding), form)
    elif impl in ("conv", "dot"):
      d = self.dilation
      y = jax.lax.conv_general_dilated(x, kernel, tuple(self.strides), self.padding, rhs_dilation=(d, d),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=g)
    else:
      raise ValueError(f"Unknown convolution impl {self.impl!r}; use 'auto', 'conv' or 'dot'.")
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32).astype(self.dtype)
    return y
