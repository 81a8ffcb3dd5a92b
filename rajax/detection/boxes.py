"""Box arithmetic for detectors: areas, overlaps, clipping, formats and torchvision's box coder.

Boxes are (x1, y1, x2, y2) in pixels (`rajax.detection.types`), float32, in the last axis of any
batch shape; pairwise functions take [..., N, 4] and [..., M, 4] and give [..., N, M] (leading axes
broadcast, so a batch of images needs no vmap). Everything is pure jnp: jittable, differentiable,
static-shaped.

Widths are x2 - x1 with no "+1" (torchvision's convention today; the VOC devkit's inclusive pixel
boxes convert as (xmin - 1, ymin - 1, xmax, ymax)). The operations are written in torchvision's
order of floating-point operations, so their float32 results equal torchvision's bit for bit on the
same inputs (what NMS and the matcher need to take the same decisions at a threshold).

Padding slots are zero boxes: their area is 0, and every ratio with a zero denominator is defined
here as 0 (IoU, GIoU) or left finite (the coder), with gradients that stay finite (the "double
where"), so a padded batch never produces NaN.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

# torchvision's limit on the predicted log-scale change of a box (dw, dh) before exp().
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def _check_boxes(boxes: jax.Array, name: str = "boxes") -> jax.Array:
  boxes = jnp.asarray(boxes)
  if boxes.ndim < 1 or boxes.shape[-1] != 4:
    raise ValueError(f"{name} must have shape [..., 4] (x1, y1, x2, y2), got {boxes.shape}.")
  return boxes.astype(jnp.float32) if not jnp.issubdtype(boxes.dtype, jnp.floating) else boxes


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
  """num / den where den != 0, else 0; finite gradients everywhere."""
  ok = den != 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


@jax.jit
def area(boxes: jax.Array) -> jax.Array:
  """[..., 4] -> [...]: (x2 - x1) * (y2 - y1); 0 for padding (zero) boxes."""
  boxes = _check_boxes(boxes)
  return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


@jax.jit
def intersection_union(boxes1: jax.Array, boxes2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Pairwise (intersection, union) areas, each [..., N, M], of [..., N, 4] and [..., M, 4]."""
  boxes1, boxes2 = _check_boxes(boxes1, "boxes1"), _check_boxes(boxes2, "boxes2")
  a1, a2 = area(boxes1), area(boxes2)
  lt = jnp.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
  rb = jnp.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  return inter, a1[..., :, None] + a2[..., None, :] - inter


@jax.jit
def iou(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
  """Pairwise intersection over union [..., N, M]; 0 where the union is empty (two padding boxes)."""
  inter, union = intersection_union(boxes1, boxes2)
  return _safe_div(inter, union)


@jax.jit
def giou(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
  """Pairwise generalized IoU [..., N, M] in [-1, 1]: IoU - (enclosing - union) / enclosing.

  Where the enclosing box has no area (two degenerate boxes on one line or point) the penalty is 0.
  """
  boxes1, boxes2 = _check_boxes(boxes1, "boxes1"), _check_boxes(boxes2, "boxes2")
  inter, union = intersection_union(boxes1, boxes2)
  lt = jnp.minimum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
  rb = jnp.maximum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  enclosing = wh[..., 0] * wh[..., 1]
  return _safe_div(inter, union) - _safe_div(enclosing - union, enclosing)


@jax.jit
def elementwise_giou(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
  """GIoU of matching pairs: [..., 4] and [..., 4] -> [...] (a loss's predicted and target boxes)."""
  boxes1, boxes2 = _check_boxes(boxes1, "boxes1"), _check_boxes(boxes2, "boxes2")
  return giou(boxes1[..., None, :], boxes2[..., None, :])[..., 0, 0]


def clip_to_image(boxes: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Clamps x to [0, width] and y to [0, height]; `size` is (height, width) as in torchvision."""
  height, width = size
  return _clip(boxes, size=(float(height), float(width)))


@functools.partial(jax.jit, static_argnames=("size",))
def _clip(boxes, *, size):
  boxes = _check_boxes(boxes)
  height, width = size
  x = jnp.clip(boxes[..., 0::2], 0.0, width)
  y = jnp.clip(boxes[..., 1::2], 0.0, height)
  return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


@jax.jit
def size_at_least(boxes: jax.Array, min_size: float) -> jax.Array:
  """[..., 4] -> [...] bool: True where both sides are >= min_size (torchvision's remove_small_boxes
  keeps exactly these; use it as a validity mask instead of removing)."""
  boxes = _check_boxes(boxes)
  w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
  return (w >= min_size) & (h >= min_size)


@jax.jit
def xyxy_to_cxcywh(boxes: jax.Array) -> jax.Array:
  """(x1, y1, x2, y2) -> (centre x, centre y, width, height)."""
  boxes = _check_boxes(boxes)
  w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
  return jnp.stack([boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h], axis=-1)


@jax.jit
def cxcywh_to_xyxy(boxes: jax.Array) -> jax.Array:
  """(centre x, centre y, width, height) -> (x1, y1, x2, y2)."""
  boxes = _check_boxes(boxes)
  half_w, half_h = 0.5 * boxes[..., 2], 0.5 * boxes[..., 3]
  return jnp.stack([boxes[..., 0] - half_w, boxes[..., 1] - half_h,
                    boxes[..., 0] + half_w, boxes[..., 1] + half_h], axis=-1)


class BoxCoder(NamedTuple):
  """torchvision's BoxCoder: boxes as offsets (dx, dy, dw, dh) from reference boxes (anchors, proposals).

    dx = wx * (gx - px) / pw     dy = wy * (gy - py) / ph
    dw = ww * log(gw / pw)       dh = wh * log(gh / ph)

  with (px, py, pw, ph) the reference box's centre and size and (gx, gy, gw, gh) the encoded box's.
  `weights` = (wx, wy, ww, wh): (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for Faster R-CNN's box
  head. `decode` clamps dw/dh at `clip` (log(1000/16)) from above before exp, as torchvision does.
  Shapes broadcast: deltas [..., 4] against reference boxes [..., 4]; for class-specific deltas
  [N, C * 4] reshape to [N, C, 4] and pass boxes [N, 1, 4].

  Degenerate reference or target boxes (zero width or height, as padding is) give finite deltas
  (the zero size is replaced by 1 in the ratios) where torchvision would give inf/NaN; mask them.
  """

  weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
  clip: float = BBOX_XFORM_CLIP

  def encode(self, boxes: jax.Array, reference: jax.Array) -> jax.Array:
    """Deltas [..., 4] that turn `reference` into `boxes` (torchvision's encode_single(boxes, reference))."""
    return _encode(boxes, reference, weights=tuple(float(w) for w in self.weights))

  def decode(self, deltas: jax.Array, reference: jax.Array) -> jax.Array:
    """Boxes [..., 4] from deltas [..., 4] applied to `reference` (torchvision's decode_single)."""
    return _decode(deltas, reference, weights=tuple(float(w) for w in self.weights), clip=float(self.clip))


@functools.partial(jax.jit, static_argnames=("weights",))
def _encode(boxes, reference, *, weights):
  boxes, reference = _check_boxes(boxes), _check_boxes(reference, "reference")
  wx, wy, ww, wh = (jnp.asarray(w, jnp.float32) for w in weights)
  pw = reference[..., 2] - reference[..., 0]
  ph = reference[..., 3] - reference[..., 1]
  px = reference[..., 0] + 0.5 * pw
  py = reference[..., 1] + 0.5 * ph
  gw = boxes[..., 2] - boxes[..., 0]
  gh = boxes[..., 3] - boxes[..., 1]
  gx = boxes[..., 0] + 0.5 * gw
  gy = boxes[..., 1] + 0.5 * gh
  pw_safe, ph_safe = jnp.where(pw > 0, pw, 1.0), jnp.where(ph > 0, ph, 1.0)
  gw_safe, gh_safe = jnp.where(gw > 0, gw, 1.0), jnp.where(gh > 0, gh, 1.0)
  dx = wx * (gx - px) / pw_safe
  dy = wy * (gy - py) / ph_safe
  dw = ww * jnp.log(gw_safe / pw_safe)
  dh = wh * jnp.log(gh_safe / ph_safe)
  return jnp.stack([dx, dy, dw, dh], axis=-1)


@functools.partial(jax.jit, static_argnames=("weights", "clip"))
def _decode(deltas, reference, *, weights, clip):
  deltas, reference = _check_boxes(deltas, "deltas"), _check_boxes(reference, "reference")
  reference = reference.astype(deltas.dtype)
  wx, wy, ww, wh = weights
  pw = reference[..., 2] - reference[..., 0]
  ph = reference[..., 3] - reference[..., 1]
  px = reference[..., 0] + 0.5 * pw
  py = reference[..., 1] + 0.5 * ph
  dx = deltas[..., 0] / wx
  dy = deltas[..., 1] / wy
  dw = jnp.minimum(deltas[..., 2] / ww, clip)
  dh = jnp.minimum(deltas[..., 3] / wh, clip)
  cx = dx * pw + px
  cy = dy * ph + py
  half_w = 0.5 * (jnp.exp(dw) * pw)
  half_h = 0.5 * (jnp.exp(dh) * ph)
  return jnp.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)


def check_targets(boxes, valid, *, image_size: tuple[int, int] | None = None, name: str = "targets") -> None:
  """Host-side check of ground-truth boxes (NumPy or concrete arrays): valid boxes need x2 > x1,
  y2 > y1, finite coordinates and, with `image_size` = (height, width), to lie inside the image.
  Raises ValueError naming the first bad box; does nothing on traced values (inside jit)."""
  import numpy as np

  try:
    boxes, valid = np.asarray(boxes), np.asarray(valid, bool)
  except jax.errors.TracerArrayConversionError:
    return
  if boxes.shape[-1:] != (4,) or boxes.shape[:-1] != valid.shape:
    raise ValueError(f"{name}: boxes must be [..., N, 4] with a valid mask [..., N]; "
                     f"got {boxes.shape} and {valid.shape}.")
  b = boxes[valid]
  problems = [
      (~np.isfinite(b).all(axis=-1), "non-finite coordinates"),
      (~(b[:, 2] > b[:, 0]), "x2 <= x1"),
      (~(b[:, 3] > b[:, 1]), "y2 <= y1"),
  ]
  if image_size is not None:
    h, w = image_size
    outside = (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > w) | (b[:, 3] > h)
    problems.append((outside, f"outside the {h}x{w} image (clip boxes to the image in the data pipeline)"))
  where = np.argwhere(valid)
  for bad, what in problems:
    if bad.any():
      first = int(np.argmax(bad))
      raise ValueError(f"{name}: box {b[first].tolist()} at index {tuple(where[first].tolist())} has {what}; "
                       "valid boxes are (x1, y1, x2, y2) pixels with x2 > x1 and y2 > y1.")


__all__ = ["BBOX_XFORM_CLIP", "BoxCoder", "area", "check_targets", "clip_to_image", "cxcywh_to_xyxy",
           "elementwise_giou", "giou", "intersection_union", "iou", "size_at_least", "xyxy_to_cxcywh"]
