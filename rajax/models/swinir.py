"""SwinIR for classical super-resolution ("SwinIR: Image Restoration Using Swin Transformer", Liang et al. 2021).

The official code's (JingyunLiang/SwinIR models/network_swinir.py) upsampler="pixelshuffle",
resi_connection="1conv" configuration; torch names on the right:

    reflect-pad bottom/right to a multiple of window_size
    (x - mean) * img_range                                   (mean: DIV2K's RGB mean)
    conv3(3->E)                                              conv_first
    LayerNorm over the E features of every pixel             patch_embed.norm
    len(depths) x RSTB:                                      layers.{i}
        depths[i] x Swin block                               layers.{i}.residual_group.blocks.{j}
        conv3(E->E), + the RSTB's input                      layers.{i}.conv
    LayerNorm                                                norm
    conv3(E->E), + conv_first's output                       conv_after_body
    conv3(E->64), LeakyReLU(0.01)                            conv_before_upsample.0
    scale 2^n: n x [conv3(64->256), pixel shuffle 2]         upsample.{0, 2, 4}
    scale 3:   conv3(64->576), pixel shuffle 3               upsample.0
    conv3(64->3)                                             conv_last
    y / img_range + mean, cropped to (h*scale, w*scale)

A Swin block j of a layer works on non-overlapping window_size x window_size windows, shifted by
window_size // 2 (cyclically, with pairs of pixels from different regions masked by -100) when j is
odd:

    x + proj(window_attention(LayerNorm(x)))                 norm1, attn.qkv, attn.proj
    x + fc2(GELU(fc1(LayerNorm(x))))                         norm2, mlp.fc1, mlp.fc2

with heads num_heads[i], softmax(q k^T / sqrt(E / heads) + B) v and B the learned relative
position bias (attn.relative_position_bias_table, indexed by the pixels' offset within the window).
As in the official code, windows cover the whole image and are not shifted when the training
patch size img_size is at most window_size. Dropout and stochastic depth are not implemented
(the official SR models use none at test time). SwinIR-M (classical SR) is embed_dim=180,
depths=num_heads=(6,) * 6, window_size=8, mlp_ratio=2, img_size 48 (DIV2K) or 64 (DF2K).

Checkpoints: the official files (and BasicSR's, which use the same names) hold the state dict
under "params" (or "params_ema"); the relative_position_index and attn_mask buffers are
recomputed here, the index checked against the file's.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from rajax.models import layers
from rajax.weights.errors import WeightsError

SCALES = (2, 3, 4, 8)
DIV2K_MEAN = (0.4488, 0.4371, 0.4040)
UPSAMPLE_FEATURES = 64  # fixed in the official code (num_feat)


def relative_position_index(ws: int) -> np.ndarray:
  """[ws*ws, ws*ws] index into the bias table: (dh + ws - 1) * (2ws - 1) + (dw + ws - 1) for pixels p, q
  of a window (row-major), dh, dw the offsets of p from q."""
  h, w = np.meshgrid(np.arange(ws), np.arange(ws), indexing="ij")
  coords = np.stack([h.ravel(), w.ravel()])                 # 2, N
  rel = coords[:, :, None] - coords[:, None, :]             # 2, N, N
  return (rel[0] + ws - 1) * (2 * ws - 1) + (rel[1] + ws - 1)


@functools.lru_cache(maxsize=None)
def shift_mask(height: int, width: int, ws: int, shift: int) -> np.ndarray:
  """[num_windows, ws*ws, ws*ws] attention mask of the shifted windows: 0 within a region, -100 across.

  After the cyclic shift by -shift, the image falls into 3 x 3 regions (split at -ws and -shift
  along each axis); pixels of different regions sharing a window must not attend to each other.
  """
  labels = np.zeros((height, width), np.float32)
  cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
  for i, hs in enumerate(cuts):
    for j, wsl in enumerate(cuts):
      labels[hs, wsl] = 3 * i + j
  win = _windows(labels[None, :, :, None], ws).reshape(-1, ws * ws)
  diff = win[:, None, :] - win[:, :, None]
  return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


def _windows(x, ws: int):
  """[B, H, W, C] -> [B * (H/ws) * (W/ws), ws, ws, C], windows row-major within each image."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // ws, ws, w // ws, ws, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, c)


def _unwindows(x, ws: int, b: int, h: int, w: int):
  """The inverse of `_windows`."""
  c = x.shape[-1]
  x = x.reshape(b, h // ws, w // ws, ws, ws, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def _dense(features: int, in_features: int, dtype, name: str) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=layers.torch_kernel_init,
                  bias_init=layers.torch_bias_init(in_features), name=name)


def _layer_norm(dtype, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32, name=name)


class WindowAttention(nn.Module):
  """Multi-head self-attention within each window, plus the learned relative position bias.

  Input [num_windows * B, N, C] (N = ws * ws pixels, row-major) and an optional [num_windows, N, N]
  additive mask; output the same shape.
  """

  dim: int
  window_size: int
  num_heads: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: np.ndarray | None) -> jax.Array:
    ws, heads, c = self.window_size, self.num_heads, self.dim
    n = ws * ws
    table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                       ((2 * ws - 1) ** 2, heads), jnp.float32)
    bias = table[relative_position_index(ws).reshape(-1)].reshape(n, n, heads).transpose(2, 0, 1)
    bw = x.shape[0]
    qkv = _dense(3 * c, c, self.dtype, "qkv")(x).reshape(bw, n, 3, heads, c // heads).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (c // heads) ** -0.5, qkv[1], qkv[2]
    attn = (q @ jnp.swapaxes(k, -1, -2)).astype(jnp.float32) + bias[None]
    if mask is not None:
      nw = mask.shape[0]
      attn = attn.reshape(bw // nw, nw, heads, n, n) + jnp.asarray(mask)[None, :, None]
      attn = attn.reshape(bw, heads, n, n)
    attn = jax.nn.softmax(attn, axis=-1).astype(self.dtype)
    out = (attn @ v).transpose(0, 2, 1, 3).reshape(bw, n, c)
    return _dense(c, c, self.dtype, "proj")(out)


class SwinBlock(nn.Module):
  """x + W-MSA(LN(x)) (shifted by `shift`), then x + MLP(LN(x)); x is [B, H, W, C], H and W multiples of ws."""

  dim: int
  num_heads: int
  window_size: int
  shift: int
  mlp_ratio: float
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    ws, s = self.window_size, self.shift
    y = _layer_norm(self.dtype, "norm1")(x)
    if s:
      y = jnp.roll(y, (-s, -s), axis=(1, 2))
    win = _windows(y, ws).reshape(-1, ws * ws, c)
    win = WindowAttention(c, ws, self.num_heads, dtype=self.dtype, name="attn")(
        win, shift_mask(h, w, ws, s) if s else None)
    y = _unwindows(win.reshape(-1, ws, ws, c), ws, b, h, w)
    if s:
      y = jnp.roll(y, (s, s), axis=(1, 2))
    x = x + y
    hidden = int(c * self.mlp_ratio)
    y = _layer_norm(self.dtype, "norm2")(x)
    y = _dense(hidden, c, self.dtype, "mlp_fc1")(y)
    y = _dense(c, hidden, self.dtype, "mlp_fc2")(nn.gelu(y, approximate=False))
    return x + y


class RSTB(nn.Module):
  """Residual Swin Transformer block: `depth` Swin blocks (odd ones shifted), a conv3, plus the input."""

  dim: int
  depth: int
  num_heads: int
  window_size: int
  shift: int
  mlp_ratio: float
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = x
    for j in range(self.depth):
      y = SwinBlock(self.dim, self.num_heads, self.window_size, self.shift if j % 2 else 0, self.mlp_ratio,
                    dtype=self.dtype, name=f"blocks_{j}")(y)
    return layers.conv(self.dim, 3, in_features=self.dim, padding=1, dtype=self.dtype, name="conv")(y) + x


class SwinIR(nn.Module):
  """SwinIR processor (classical SR): [B, h, w, 3] in [0, 1] -> [B, h*scale, w*scale, 3] float32, unclipped.

  Attributes:
    scale: upscaling factor, one of 2, 3, 4, 8.
    embed_dim: feature width E (180 in SwinIR-M).
    depths: Swin blocks per RSTB (SwinIR-M: six RSTBs of 6).
    num_heads: attention heads per RSTB (same length as depths).
    window_size: attention window side (8 in SwinIR-M); inputs are reflect-padded to its multiples.
    mlp_ratio: hidden width of the blocks' MLPs over E.
    img_size: the training patch size; only whether it exceeds window_size matters (see the module docstring).
    img_range: pixel range the network works in (1.0 for the official classical SR models).
    dtype: compute dtype (parameters float32; softmax and the mean shifts in float32).
  """

  SR_SCALES = (2, 3, 4, 8)  # the factors config.degrade.scale may take with this processor (not a field)

  scale: int = 2
  embed_dim: int = 180
  depths: tuple[int, ...] = (6, 6, 6, 6, 6, 6)
  num_heads: tuple[int, ...] = (6, 6, 6, 6, 6, 6)
  window_size: int = 8
  mlp_ratio: float = 2.0
  img_size: int = 64
  img_range: float = 1.0
  dtype: layers.Dtype = jnp.float32

  def __post_init__(self):
    if self.scale not in SCALES:
      raise ValueError(f"SwinIR scale must be one of {SCALES}, got {self.scale!r} (rajax has the classical SR "
                       "SwinIR only; its denoising and JPEG variants, scale 1, are not implemented).")
    if len(self.depths) != len(self.num_heads) or not self.depths:
      raise ValueError(f"SwinIR needs one num_heads entry per RSTB depth, got depths={tuple(self.depths)}, "
                       f"num_heads={tuple(self.num_heads)}.")
    bad = [h for h in self.num_heads if h < 1 or self.embed_dim % h]
    if bad:
      raise ValueError(f"SwinIR embed_dim={self.embed_dim} must be divisible by every num_heads entry; "
                       f"{bad} do not divide it.")
    if self.window_size < 1:
      raise ValueError(f"SwinIR window_size must be positive, got {self.window_size!r}.")
    super().__post_init__()

  @property
  def _window(self) -> tuple[int, int]:
    """(window side, shift) of the blocks: the official clamp to img_size when that is not larger."""
    if self.img_size <= self.window_size:
      return self.img_size, 0
    return self.window_size, self.window_size // 2

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # no BatchNorm; dropout and stochastic depth are not implemented
    layers.check_images(x, who="SwinIR")
    b, h, w, _ = x.shape
    pad_h, pad_w = -h % self.window_size, -w % self.window_size
    if pad_h >= h or pad_w >= w:
      raise ValueError(f"SwinIR reflect-pads {h}x{w} inputs to multiples of window_size={self.window_size}, "
                       f"which needs the image to be larger than the padding; give it at least "
                       f"{self.window_size // 2 + 1} pixels a side.")
    x = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
    mean = jnp.asarray(DIV2K_MEAN, jnp.float32)
    x = ((x - mean) * self.img_range).astype(self.dtype)
    e, dt = self.embed_dim, self.dtype
    ws, shift = self._window
    first = layers.conv(e, 3, in_features=3, padding=1, dtype=dt, name="conv_first")(x)
    t = _layer_norm(dt, "patch_norm")(first)
    for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
      t = RSTB(e, depth, heads, ws, shift, self.mlp_ratio, dtype=dt, name=f"layers_{i}")(t)
    t = _layer_norm(dt, "norm")(t)
    y = layers.conv(e, 3, in_features=e, padding=1, dtype=dt, name="conv_after_body")(t) + first
    f = UPSAMPLE_FEATURES
    y = nn.leaky_relu(layers.conv(f, 3, in_features=e, padding=1, dtype=dt, name="conv_before_upsample")(y), 0.01)
    steps = [3] if self.scale == 3 else [2] * (self.scale.bit_length() - 1)
    for k, r in enumerate(steps):
      y = layers.pixel_shuffle(layers.conv(r * r * f, 3, in_features=f, padding=1, dtype=dt, name=f"up_{k}")(y), r)
    y = layers.conv(3, 3, in_features=f, padding=1, dtype=dt, name="conv_last")(y)
    y = y.astype(jnp.float32) / self.img_range + mean
    return y[:, :h * self.scale, :w * self.scale]

  def torch_key(self, path: str) -> str:
    """The official torch module name of Flax module `path`
    ("layers_1/blocks_0/mlp_fc2" -> "layers.1.residual_group.blocks.0.mlp.fc2")."""
    fixed = {"conv_first": "conv_first", "patch_norm": "patch_embed.norm", "norm": "norm",
             "conv_after_body": "conv_after_body", "conv_before_upsample": "conv_before_upsample.0",
             "conv_last": "conv_last"}
    if path in fixed:
      return fixed[path]
    m = re.fullmatch(r"up_(\d+)", path)
    if m:
      return f"upsample.{2 * int(m[1])}"
    m = re.fullmatch(r"layers_(\d+)/conv", path)
    if m:
      return f"layers.{m[1]}.conv"
    m = re.fullmatch(r"layers_(\d+)/blocks_(\d+)/(norm1|norm2|attn|attn/qkv|attn/proj|mlp_fc1|mlp_fc2)", path)
    if m:
      return f"layers.{m[1]}.residual_group.blocks.{m[2]}.{m[3].replace('/', '.').replace('mlp_', 'mlp.')}"
    raise WeightsError(f"SwinIR has no torch name for Flax module {path!r}.")

  def rename_torch_keys(self, state_dict: dict) -> dict:
    """The state dict without the buffers SwinIR recomputes (attn_mask, relative_position_index),
    after checking every relative_position_index against this model's window."""
    sd = {}
    ws, _ = self._window
    want = relative_position_index(ws)
    for k, v in state_dict.items():
      if k.endswith(".attn_mask"):
        continue
      if k.endswith(".relative_position_index"):
        if np.shape(v) != want.shape or not np.array_equal(np.asarray(v), want):
          raise WeightsError(
              f"The checkpoint's {k} (shape {tuple(np.shape(v))}) is not the relative position index of "
              f"{ws}x{ws} windows {want.shape}; build SwinIR with the file's window_size (and img_size).")
        continue
      sd[k] = v
    return sd
