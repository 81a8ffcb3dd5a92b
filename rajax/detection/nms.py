"""Fixed-size non-maximum suppression in JAX with torchvision's semantics, and a top-k cut before it.

  nms(boxes [N, 4], scores [N], valid [N], *, iou_threshold, max_output)
      -> (indices [max_output] int32, valid [max_output] bool)
  batched_nms(boxes, scores, labels [N], valid, *, iou_threshold, max_output)   per-class NMS
  top_k(scores [..., N], valid [..., N], k) -> (indices [..., k], valid [..., k])

What "torchvision's semantics" means here, decision for decision (torchvision.ops.nms on CPU):
- candidates are visited in descending score order, ties in index order (a stable sort);
- a visited box that no kept box suppressed is kept, and it suppresses every later box whose IoU
  with it is > iou_threshold (strictly greater; IoU == threshold survives). torchvision compares
  the float32 IoU with the threshold as a double; here it is compared with the largest float32
  not above the threshold, which gives the same decision for every float32 IoU (at 0.6, an IoU of
  exactly float32(3/5) = 0.6000000238 is suppressed, as in torchvision);
- IoU is computed with torchvision's operations in its order (`rajax.detection.boxes.iou`), so
  the float32 values are the same (bit for bit on XLA's CPU backend, with and without its
  optimisations; a GPU or TPU backend may fuse a multiply-add and round differently, so there,
  as between torchvision's own CPU and CUDA kernels, an IoU within one rounding of the
  threshold can flip a decision); boxes of zero area have IoU 0 with everything (torchvision
  computes 0/0 = NaN, which also never suppresses);
- batched_nms: boxes of different labels never suppress each other; the output is sorted by score
  over all classes, like torchvision.ops.batched_nms. (For small inputs torchvision shifts each
  class's boxes by an offset and runs one NMS; that shift rounds coordinates, so at IoUs within a
  float32 rounding of the threshold its decisions can differ from per-class NMS on the original
  boxes, which is what this computes and what torchvision's large-input path computes.)
- indices point into the input arrays, best first; `valid` marks the kept ones; padding slots hold
  index 0 (always gather with the mask). Invalid input slots are never kept and never suppress.

Greedy NMS is sequential by nature (box j's fate depends on every kept box before it); this
version works in tiles of `tile` sorted candidates (a `lax.while_loop` over tiles that stops once
`max_output` boxes are kept): a tile's candidates are first suppressed by the boxes kept in earlier
tiles (an [N, tile] IoU block), then resolved among themselves by iterating
keep[j] = candidate[j] and no kept i < j overlaps j (a [tile, tile] block) to its fixed point. The
fixed point is unique and is the greedy answer (entry j depends only on entries before it, so
after t rounds the first t are final); the number of rounds is the longest chain of suppressions
inside the tile, a handful on real detections, at most `tile`.
Cost: O(N log N) for the sort, O(N^2) IoU evaluations in total (N * tile per tile, all parallel),
O(N * tile) memory, and (tiles visited) x (1 + rounds) sequential steps instead of N. Measured on
the 2-core CPU here (per-class NMS at 0.7 of random boxes, every box kept or decided): about 9 ms
per image for 1000 candidates and 24 ms for 2000, after a ~3 s compilation. Top-k the
candidates first (`top_k`, as torchvision's RPN does with pre_nms_top_n): greedy decisions depend
only on higher-scored boxes, so NMS over the top k equals NMS over all boxes for the first outputs
as long as k covers them.

Everything is jittable with static shapes and vmappable over a batch
(`jax.vmap(functools.partial(nms, iou_threshold=0.5, max_output=100))(boxes, scores, valid)`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rajax.detection import boxes as boxes_lib

DEFAULT_TILE = 512


def float32_strict_threshold(threshold: float) -> np.float32:
  """The largest float32 t32 <= threshold: for every float32 x, x > t32 exactly when x > threshold
  (the double comparison torchvision's NMS kernel makes)."""
  threshold = float(threshold)
  t32 = np.float32(threshold)
  if float(t32) > threshold:
    t32 = np.nextafter(t32, np.float32(-np.inf))
  return t32


def _check(boxes, scores, valid, labels=None) -> None:
  if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.ndim != 1 or valid.shape != scores.shape \
     or boxes.shape[0] != scores.shape[0] or (labels is not None and labels.shape != scores.shape):
    got = f"boxes {boxes.shape}, scores {scores.shape}, valid {valid.shape}"
    if labels is not None:
      got += f", labels {labels.shape}"
    wanted = "boxes [N, 4], scores [N], valid [N]" + (", labels [N]" if labels is not None else "")
    raise ValueError(f"NMS takes one image: {wanted}; got {got}. For a batch of images, jax.vmap it.")


def _descending_order(scores: jax.Array, valid: jax.Array) -> jax.Array:
  """Stable order: valid boxes first, by descending score, ties by index."""
  n = scores.shape[0]
  key = jnp.where(scores == 0, 0.0, -scores.astype(jnp.float32))  # no -0.0: 0.0 and -0.0 tie, as in torch
  invalid = (~valid).astype(jnp.int32)
  _, _, order = lax.sort((invalid, key, jnp.arange(n, dtype=jnp.int32)), num_keys=2, is_stable=True)
  return order


def _greedy_keep(boxes, valid, labels, threshold, max_output: int, tile: int) -> jax.Array:
  """keep [N] bool over boxes already in visiting order (see the module docstring)."""
  n = boxes.shape[0]
  t = max(1, min(tile, n))
  n_pad = math.ceil(n / t) * t
  if n_pad != n:
    boxes = jnp.concatenate([boxes, jnp.zeros((n_pad - n, 4), boxes.dtype)])
    valid = jnp.concatenate([valid, jnp.zeros((n_pad - n,), bool)])
    if labels is not None:
      labels = jnp.concatenate([labels, jnp.zeros((n_pad - n,), labels.dtype)])
  num_tiles = n_pad // t
  later = jnp.arange(t)[:, None] < jnp.arange(t)[None, :]

  def overlaps(a, la, b, lb):
    m = boxes_lib.iou(a, b) > threshold
    if labels is not None:
      m = m & (la[:, None] == lb[None, :])
    return m

  def tile_step(state):
    b, keep, count = state
    start = b * t
    tb = lax.dynamic_slice_in_dim(boxes, start, t)
    tv = lax.dynamic_slice_in_dim(valid, start, t)
    tl = None if labels is None else lax.dynamic_slice_in_dim(labels, start, t)
    # keep holds decisions for earlier tiles only (later entries are still False).
    suppressed = jnp.any(overlaps(boxes, labels, tb, tl) & keep[:, None], axis=0)
    candidate = tv & ~suppressed
    inner = overlaps(tb, tl, tb, tl) & later

    def resolve(s):
      k, _ = s
      new = candidate & ~jnp.any(inner & k[:, None], axis=0)
      return new, jnp.any(new != k)

    k, _ = lax.while_loop(lambda s: s[1], resolve, (candidate, jnp.asarray(True)))
    keep = lax.dynamic_update_slice_in_dim(keep, k, start, 0)
    return b + 1, keep, count + jnp.sum(k, dtype=jnp.int32)

  def more(state):
    b, _, count = state
    return (b < num_tiles) & (count < max_output)

  init = (jnp.asarray(0, jnp.int32), jnp.zeros((n_pad,), bool), jnp.asarray(0, jnp.int32))
  _, keep, _ = lax.while_loop(more, tile_step, init)
  return keep[:n]


def _compact(keep: jax.Array, order: jax.Array, max_output: int) -> tuple[jax.Array, jax.Array]:
  """The first max_output kept entries (in visiting order) as input indices, and their mask."""
  rank = jnp.cumsum(keep.astype(jnp.int32)) - 1
  slot = jnp.where(keep & (rank < max_output), rank, max_output)
  indices = jnp.zeros((max_output,), jnp.int32).at[slot].set(order.astype(jnp.int32), mode="drop")
  count = jnp.minimum(jnp.sum(keep, dtype=jnp.int32), max_output)
  return indices, jnp.arange(max_output) < count


@functools.partial(jax.jit, static_argnames=("max_output", "tile"))
def _nms_jit(boxes, scores, valid, labels, threshold, *, max_output, tile):
  order = _descending_order(scores, valid)
  keep = _greedy_keep(boxes[order], valid[order], None if labels is None else labels[order],
                      threshold, max_output, tile)
  return _compact(keep, order, max_output)


def _nms(boxes, scores, valid, labels, iou_threshold, max_output, tile):
  boxes, scores, valid = jnp.asarray(boxes, jnp.float32), jnp.asarray(scores), jnp.asarray(valid, bool)
  labels = None if labels is None else jnp.asarray(labels)
  _check(boxes, scores, valid, labels)
  if max_output < 1:
    raise ValueError(f"max_output must be >= 1, got {max_output}.")
  if not 0.0 <= iou_threshold <= 1.0:
    raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}.")
  # The threshold is an argument, not a constant: one compiled program serves every threshold.
  threshold = jnp.asarray(float32_strict_threshold(iou_threshold), jnp.float32)
  return _nms_jit(boxes, scores, valid, labels, threshold, max_output=int(max_output), tile=int(tile))


def nms(boxes: jax.Array, scores: jax.Array, valid: jax.Array, *, iou_threshold: float, max_output: int,
        tile: int = DEFAULT_TILE) -> tuple[jax.Array, jax.Array]:
  """Greedy NMS of one image's boxes: (indices [max_output] int32, valid [max_output] bool), best first."""
  return _nms(boxes, scores, valid, None, iou_threshold, max_output, tile)


def batched_nms(boxes: jax.Array, scores: jax.Array, labels: jax.Array, valid: jax.Array, *,
                iou_threshold: float, max_output: int, tile: int = DEFAULT_TILE) -> tuple[jax.Array, jax.Array]:
  """Per-class greedy NMS (boxes with different `labels` never suppress each other), sorted by score."""
  return _nms(boxes, scores, valid, labels, iou_threshold, max_output, tile)


def top_k(scores: jax.Array, valid: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """The k best valid entries of the last axis: (indices [..., k] int32, valid [..., k] bool).

  Descending score, ties in index order (lax.top_k). With fewer than k valid entries the rest are
  padding (valid False; k may exceed N). A valid entry scored -inf may lose its slot to padding.
  """
  scores, valid = jnp.asarray(scores), jnp.asarray(valid, bool)
  if scores.shape != valid.shape or scores.ndim < 1:
    raise ValueError(f"top_k needs scores and valid of one shape [..., N]; got {scores.shape} and {valid.shape}.")
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}.")
  n = scores.shape[-1]
  masked = jnp.where(valid, scores, -jnp.inf)
  _, idx = lax.top_k(masked, min(k, n))
  ok = jnp.take_along_axis(valid, idx, axis=-1)
  if k > n:
    pad = scores.shape[:-1] + (k - n,)
    idx = jnp.concatenate([idx, jnp.zeros(pad, idx.dtype)], axis=-1)
    ok = jnp.concatenate([ok, jnp.zeros(pad, bool)], axis=-1)
  return idx.astype(jnp.int32), ok


__all__ = ["DEFAULT_TILE", "batched_nms", "float32_strict_threshold", "nms", "top_k"]
