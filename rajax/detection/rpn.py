"""torchvision's Region Proposal Network with static shapes: head, proposals and loss.

Head (torchvision RPNHead): `conv_depth` 3x3 convolutions with ReLU (1 for Faster R-CNN, 2 for
v2), then 1x1 convolutions to A objectness logits and 4A box deltas, the same weights at every
level; initialised N(0, 0.01), zero bias. Outputs are flattened in torchvision's order
(level, y, x, anchor): `flatten_levels`.

Proposals (torchvision RegionProposalNetwork.filter_proposals), per image:
  per level, the top min(pre_nms_top_n, anchors in the level) logits; their deltas decoded on their
  anchors (BoxCoder weights (1, 1, 1, 1), no gradient); sigmoid; boxes clipped to the image;
  boxes with a side < 1e-3 and scores < score_thresh dropped; NMS at nms_thresh within each level;
  the post_nms_top_n best of what survives over all levels, by score.
Here a dropped box is a masked slot: `propose` returns post_nms_top_n slots with a valid mask,
best first, and NMS runs per level with a capacity equal to the level's candidates (exact).

Loss (torchvision compute_loss): Matcher(0.7, 0.3, allow_low_quality_matches=True) over
IoU(ground truth, anchors); labels 1 for matches, 0 below 0.3, ignored between; 256 anchors per
image sampled at up to half positives; BCE-with-logits averaged over the sampled anchors of the
whole batch; smooth-L1 (beta 1/9) of the positives' deltas against BoxCoder((1, 1, 1, 1)).encode
of their ground truth, summed and divided by the batch's sampled count. Per image here: each
image's sums divided by the batch's count and multiplied by B, so the batch mean is torchvision's.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from rajax.detection import boxes as boxes_lib
from rajax.detection import matching, nms as nms_lib
from rajax.models import layers

RPN_CODER = boxes_lib.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))


class RPNHead(nn.Module):
  num_anchors: int
  conv_depth: int = 1
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, feats: Sequence[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
    init = nn.initializers.normal(0.01)
    c = feats[0].shape[-1]
    convs = [nn.Conv(c, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, param_dtype=jnp.float32,
                     kernel_init=init, bias_init=nn.initializers.zeros, name=f"conv_{i}")
             for i in range(self.conv_depth)]
    cls = nn.Conv(self.num_anchors, (1, 1), dtype=self.dtype, param_dtype=jnp.float32, kernel_init=init,
                  bias_init=nn.initializers.zeros, name="cls_logits")
    box = nn.Conv(4 * self.num_anchors, (1, 1), dtype=self.dtype, param_dtype=jnp.float32, kernel_init=init,
                  bias_init=nn.initializers.zeros, name="bbox_pred")
    logits, deltas = [], []
    for f in feats:
      t = f
      for conv in convs:
        t = nn.relu(conv(t))
      logits.append(cls(t).astype(jnp.float32))
      deltas.append(box(t).astype(jnp.float32))
    return logits, deltas


def flatten_levels(logits: Sequence[jax.Array], deltas: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
  """Per-level [B, H, W, A] and [B, H, W, 4A] -> [B, sum HWA] and [B, sum HWA, 4] in torchvision's order."""
  b = logits[0].shape[0]
  obj = jnp.concatenate([l.reshape(b, -1) for l in logits], axis=1)
  box = jnp.concatenate([d.reshape(b, -1, 4) for d in deltas], axis=1)
  return obj, box


def propose(objectness: jax.Array, deltas: jax.Array, anchors: Sequence[np.ndarray], image_size: tuple[int, int], *,
            pre_nms_top_n: int, post_nms_top_n: int, nms_thresh: float = 0.7, score_thresh: float = 0.0,
            min_size: float = 1e-3) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(boxes [B, post_nms_top_n, 4], scores (sigmoid) [B, post], valid [B, post]) from flattened
  objectness logits [B, A] and deltas [B, A, 4] over `anchors` (per level, [A_l, 4])."""
  objectness = jax.lax.stop_gradient(objectness)
  deltas = jax.lax.stop_gradient(deltas)
  all_boxes, all_scores, all_valid = [], [], []
  start = 0
  for level_anchors in anchors:
    n = level_anchors.shape[0]
    ob, de = objectness[:, start:start + n], deltas[:, start:start + n]
    start += n
    k = min(pre_nms_top_n, n)
    top, idx = jax.lax.top_k(ob, k)                                          # [B, k]
    d = jnp.take_along_axis(de, idx[..., None], axis=1)
    a = jnp.asarray(level_anchors)[idx]
    bx = boxes_lib.clip_to_image(RPN_CODER.decode(d, a), image_size)
    sc = jax.nn.sigmoid(top)
    ok = boxes_lib.size_at_least(bx, min_size) & (sc >= score_thresh)
    per_image = lambda b_, s_, v_: nms_lib.nms(b_, s_, v_, iou_threshold=nms_thresh, max_output=k)
    keep, kept = jax.vmap(per_image)(bx, sc, ok)
    all_boxes.append(jnp.take_along_axis(bx, keep[..., None], axis=1))
    all_scores.append(jnp.take_along_axis(sc, keep, axis=1))
    all_valid.append(kept)
  if start != objectness.shape[1]:
    raise ValueError(f"The anchors ({start}) do not match the RPN outputs ({objectness.shape[1]}).")
  bx, sc, ok = (jnp.concatenate(v, axis=1) for v in (all_boxes, all_scores, all_valid))
  idx, valid = nms_lib.top_k(sc, ok, post_nms_top_n)
  bx = jnp.take_along_axis(bx, idx[..., None], axis=1)
  sc = jnp.take_along_axis(sc, idx, axis=1)
  return jnp.where(valid[..., None], bx, 0.0), jnp.where(valid, sc, 0.0), valid


def smooth_l1(x: jax.Array, beta: float) -> jax.Array:
  """torch's smooth_l1_loss elementwise: 0.5 x^2 / beta where |x| < beta, else |x| - 0.5 beta."""
  ax = jnp.abs(x)
  return jnp.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)


def bce_with_logits(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """torch's binary_cross_entropy_with_logits elementwise, in its stable form."""
  return jnp.maximum(logits, 0.0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def anchor_labels(anchors: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array, *, fg_iou_thresh: float = 0.7,
                  bg_iou_thresh: float = 0.3) -> tuple[jax.Array, jax.Array]:
  """(labels [B, A] float: 1 positive, 0 negative, -1 ignored; matched ground truth [B, A, 4])."""
  matcher = matching.Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
  quality = boxes_lib.iou(gt_boxes, anchors[None])                             # [B, N, A]
  matches = matcher(quality, gt_valid)
  labels = jnp.where(matches >= 0, 1.0, jnp.where(matches == matching.BELOW_LOW_THRESHOLD, 0.0, -1.0))
  matched = jnp.take_along_axis(gt_boxes, jnp.maximum(matches, 0)[..., None], axis=1)
  return labels, matched


def loss(objectness: jax.Array, deltas: jax.Array, anchors: jax.Array, labels: jax.Array, matched: jax.Array,
         sample: matching.Sample) -> tuple[jax.Array, jax.Array]:
  """Per-image (objectness loss [B], box loss [B]) whose batch means are torchvision's two RPN losses."""
  b = objectness.shape[0]
  pos, neg = sample.positive, sample.negative
  sampled = (pos | neg).astype(jnp.float32)
  count = jnp.maximum(jnp.sum(sampled), 1.0)
  bce = bce_with_logits(objectness, jnp.maximum(labels, 0.0))
  targets = jax.lax.stop_gradient(RPN_CODER.encode(matched, anchors[None]))
  box = jnp.sum(smooth_l1(deltas - targets, 1.0 / 9.0), axis=-1)
  obj_loss = jnp.sum(bce * sampled, axis=1) / count * b
  box_loss = jnp.sum(jnp.where(pos, box, 0.0), axis=1) / count * b
  return obj_loss, box_loss
