"""torchvision's AnchorGenerator, computed once per static shape with NumPy (float32, as torch).

For a level with sizes S and aspect ratios R (ratio = height / width), the cell anchors are, in
torchvision's order (ratios outer, sizes inner),
    h_ratio = sqrt(r), w_ratio = 1 / h_ratio,  w = w_ratio * s,  h = h_ratio * s,
    round([-w, -h, w, h] / 2)                       (rounded: torch.round, half to even)
and the anchors of a feature map of size (gh, gw) are the cell anchors shifted by
(x * stride_w, y * stride_h) for every location in row-major (y, x) order, the cell anchors
innermost: anchor index = (y * gw + x) * A + a. The stride is the padded image size // the
feature size, per axis (integer division, as torchvision computes it).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Faster R-CNN's default: one size per FPN level, three ratios.
DEFAULT_SIZES = ((32,), (64,), (128,), (256,), (512,))
DEFAULT_RATIOS = ((0.5, 1.0, 2.0),) * 5


def cell_anchors(sizes: Sequence[float], ratios: Sequence[float], *, rounded: bool = True) -> np.ndarray:
  """[len(ratios) * len(sizes), 4] zero-centred anchors (x1, y1, x2, y2) in float32."""
  scales = np.asarray(sizes, np.float32)
  r = np.asarray(ratios, np.float32)
  h_ratios = np.sqrt(r)
  w_ratios = np.float32(1) / h_ratios
  ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
  hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
  base = np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)
  return np.round(base).astype(np.float32) if rounded else base.astype(np.float32)


def num_anchors(sizes: Sequence[Sequence[float]], ratios: Sequence[Sequence[float]]) -> list[int]:
  """Anchors per location for each level."""
  return [len(s) * len(r) for s, r in zip(sizes, ratios)]


def grid_anchors(feature_shapes: Sequence[tuple[int, int]], image_shape: tuple[int, int],
                 sizes: Sequence[Sequence[float]], ratios: Sequence[Sequence[float]], *,
                 rounded: bool = True) -> list[np.ndarray]:
  """The anchors of each level, [gh * gw * A, 4] float32, for a padded image of `image_shape` (H, W)."""
  if len(feature_shapes) != len(sizes) or len(sizes) != len(ratios):
    raise ValueError(f"Anchor generator has {len(sizes)} size and {len(ratios)} ratio groups for "
                     f"{len(feature_shapes)} feature maps; give one group of each per feature map.")
  out = []
  for (gh, gw), s, r in zip(feature_shapes, sizes, ratios):
    stride_h, stride_w = image_shape[0] // gh, image_shape[1] // gw
    base = cell_anchors(s, r, rounded=rounded)
    shift_y, shift_x = np.meshgrid(np.arange(gh, dtype=np.int64) * stride_h,
                                   np.arange(gw, dtype=np.int64) * stride_w, indexing="ij")
    shifts = np.stack([shift_x.ravel(), shift_y.ravel(), shift_x.ravel(), shift_y.ravel()], axis=1)
    out.append((shifts[:, None, :].astype(np.float32) + base[None, :, :]).reshape(-1, 4))
  return out
