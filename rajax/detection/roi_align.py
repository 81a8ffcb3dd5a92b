"""torchvision's RoIAlign and MultiScaleRoIAlign as gathers: static shapes, jittable, differentiable
with respect to the feature maps (not the boxes, as in torchvision).

RoIAlign (torchvision.ops.roi_align, its CPU/CUDA kernel), for a box (x1, y1, x2, y2) in image
pixels, a feature map of stride 1/scale, an output of P x Q bins and sampling_ratio g > 0:
    offset = 0.5 if aligned else 0;  start = x1 * scale - offset;  end = x2 * scale - offset
    size = end - start, forced >= 1 when not aligned;  bin = size / P
    sample (p, i) at start + p * bin + (i + 0.5) * bin / g,  i < g
    a sample with y < -1 or y > H or x < -1 or x > W contributes 0; otherwise y, x are clamped to
    >= 0, y_low = int(y) (y_low >= H - 1: y_low = y_high = H - 1 and y = y_low), bilinear weights
    out[p, q] = (sum over the g x g samples of the bilinear value) / (g * g)
MultiScaleRoIAlign (torchvision.ops.MultiScaleRoIAlign): level scales 2^round(log2(feature size /
image size)) (heights, as torchvision infers them), and each box pooled from level
    k = clamp(floor(4 + log2(sqrt(area) / 224) + 1e-6), k_min, k_max) - k_min,
k_min = -log2(scale of the first level), k_max = -log2(scale of the last); with one level every
box uses it.

All levels of a batch are flattened into one [B, sum(H_l W_l), C] array, so pooling every box
from its own level is one gather per bilinear corner ([B, R, P, g, Q, g] indices), whatever the
number of levels; its transpose (a scatter-add) gives the gradient with respect to the features.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def infer_scales(feature_shapes: Sequence[tuple[int, int]], image_shape: tuple[int, int]) -> list[float]:
  """torchvision's _infer_scale: 2 ** round(log2(feature height / image height)) per level."""
  out = []
  for h, _ in feature_shapes:
    out.append(float(2 ** round(math.log2(float(h) / float(image_shape[0])))))
  return out


def map_levels(boxes: jax.Array, k_min: int, k_max: int, *, canonical_scale: float = 224.0,
               canonical_level: float = 4.0, eps: float = 1e-6) -> jax.Array:
  """torchvision's LevelMapper: the level index (0 = k_min) of each box [..., 4] -> [...] int32."""
  b = boxes.astype(jnp.float32)
  s = jnp.sqrt((b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]))
  lvl = jnp.floor(jnp.float32(canonical_level) + jnp.log2(s / jnp.float32(canonical_scale)) + jnp.float32(eps))
  return (jnp.clip(lvl, k_min, k_max) - k_min).astype(jnp.int32)


def _axis_samples(start, size, n_bins, g, length):
  """Sample positions along one axis: (low index, high index, low weight, high weight, inside) [..., n_bins, g]."""
  bin_size = size / n_bins
  p = jnp.arange(n_bins, dtype=jnp.float32)
  i = jnp.arange(g, dtype=jnp.float32)
  pos = (start[..., None, None] + p[:, None] * bin_size[..., None, None]
         + (i[None, :] + 0.5) * (bin_size / g)[..., None, None])
  length = jnp.asarray(length, jnp.float32)[..., None, None]
  inside = (pos >= -1.0) & (pos <= length)
  pos = jnp.maximum(pos, 0.0)
  low = jnp.floor(pos)  # pos >= 0: int() truncation is floor
  at_edge = low >= length - 1
  low = jnp.where(at_edge, length - 1, low)
  high = jnp.where(at_edge, length - 1, low + 1)
  pos = jnp.where(at_edge, low, pos)
  frac = pos - low
  return low.astype(jnp.int32), high.astype(jnp.int32), 1.0 - frac, frac, inside


def _pool_flat(flat, boxes, scale, heights, widths, offsets, output_size, sampling_ratio, aligned):
  """RoIAlign of boxes [B, R, 4] from flattened levels flat [B, S, C]; scale/heights/widths/offsets are
  per-box [B, R] (the level each box reads). -> [B, R, P, Q, C]."""
  ph, pw = output_size
  g = int(sampling_ratio)
  boxes = jax.lax.stop_gradient(boxes.astype(jnp.float32))
  off = 0.5 if aligned else 0.0
  x1, y1 = boxes[..., 0] * scale - off, boxes[..., 1] * scale - off
  x2, y2 = boxes[..., 2] * scale - off, boxes[..., 3] * scale - off
  w, h = x2 - x1, y2 - y1
  if not aligned:
    w, h = jnp.maximum(w, 1.0), jnp.maximum(h, 1.0)
  yl, yh, wyl, wyh, yin = _axis_samples(y1, h, ph, g, heights)   # [B, R, P, g]
  xl, xh, wxl, wxh, xin = _axis_samples(x1, w, pw, g, widths)    # [B, R, Q, g]
  inside = (yin[..., :, :, None, None] & xin[..., None, None, :, :]).astype(flat.dtype)  # [B, R, P, g, Q, g]
  base = offsets[..., None, None, None, None]
  wid = widths[..., None, None, None, None]

  def corner(yi, wy, xi, wx):
    idx = base + yi[..., :, :, None, None] * wid + xi[..., None, None, :, :]
    wt = (wy[..., :, :, None, None] * wx[..., None, None, :, :]).astype(flat.dtype) * inside
    vals = jax.vmap(lambda f, i: f[i])(flat, idx)               # [B, R, P, g, Q, g, C]
    return jnp.einsum("brpiqj,brpiqjc->brpqc", wt, vals)

  out = corner(yl, wyl, xl, wxl) + corner(yl, wyl, xh, wxh) + corner(yh, wyh, xl, wxl) + corner(yh, wyh, xh, wxh)
  return out / jnp.asarray(max(g * g, 1), flat.dtype)


def roi_align(features: jax.Array, boxes: jax.Array, output_size: tuple[int, int] | int, *,
              spatial_scale: float, sampling_ratio: int = 2, aligned: bool = False) -> jax.Array:
  """torchvision.ops.roi_align of boxes [B, R, 4] (pixels) from features [B, H, W, C] -> [B, R, P, Q, C]."""
  output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
  _check_sampling(sampling_ratio)
  b, hh, ww, c = features.shape
  r = boxes.shape[1]
  full = lambda v, dt: jnp.full((b, r), v, dt)
  return _pool_flat(features.reshape(b, hh * ww, c), boxes, full(spatial_scale, jnp.float32),
                    full(hh, jnp.int32), full(ww, jnp.int32), full(0, jnp.int32), output_size, sampling_ratio, aligned)


def multi_scale_roi_align(features: Sequence[jax.Array], boxes: jax.Array, image_shape: tuple[int, int], *,
                          output_size: tuple[int, int] | int = 7, sampling_ratio: int = 2, aligned: bool = False,
                          canonical_scale: float = 224.0, canonical_level: float = 4.0) -> jax.Array:
  """torchvision.ops.MultiScaleRoIAlign over `features` ([B, H_l, W_l, C], finest first) for boxes
  [B, R, 4] in pixels of an image of `image_shape` (H, W: the size torchvision's image_sizes give,
  before padding) -> [B, R, P, Q, C]."""
  output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
  _check_sampling(sampling_ratio)
  shapes = [tuple(f.shape[1:3]) for f in features]
  scales = infer_scales(shapes, image_shape)
  b, r = boxes.shape[:2]
  c = features[0].shape[-1]
  if len(features) == 1:
    return roi_align(features[0], boxes, output_size, spatial_scale=scales[0], sampling_ratio=sampling_ratio,
                     aligned=aligned)
  k_min, k_max = int(-math.log2(scales[0])), int(-math.log2(scales[-1]))
  level = map_levels(jax.lax.stop_gradient(boxes), k_min, k_max, canonical_scale=canonical_scale,
                     canonical_level=canonical_level)
  sizes = [h * w for h, w in shapes]
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
  pick = lambda values, dt: jnp.asarray(np.asarray(values), dt)[level]
  flat = jnp.concatenate([f.reshape(b, -1, c) for f in features], axis=1)
  return _pool_flat(flat, boxes, pick(scales, jnp.float32), pick([h for h, _ in shapes], jnp.int32),
                    pick([w for _, w in shapes], jnp.int32), pick(offsets, jnp.int32), output_size,
                    sampling_ratio, aligned)


def _check_sampling(sampling_ratio: int) -> None:
  if int(sampling_ratio) <= 0:
    raise ValueError(f"RoIAlign needs a fixed sampling_ratio > 0 for static shapes (got {sampling_ratio}); "
                     "torchvision's detectors use 2.")
