"""torchvision's Faster R-CNN box branch (RoIHeads) with static shapes: heads, targets, loss, detections.

Heads:
  TwoMLPHead         flatten (torch's channel-major C, 7, 7 order) -> fc6 -> ReLU -> fc7 -> ReLU;
  ConvFCHead         (v2, FastRCNNConvFCHead) 4 x [3x3 conv (no bias) + BatchNorm + ReLU], flatten,
                     one Linear + ReLU; in training mode the BatchNorm statistics are those
                     of the sampled RoIs only (the padding slots are masked out);
  FastRCNNPredictor  cls_score (K logits) and bbox_pred (4K class-specific deltas).
Training (select_training_samples + fastrcnn_loss): the ground-truth boxes are appended to the
proposals; Matcher(0.5, 0.5) over IoU(ground truth, proposals); labels = the matched box's class,
0 below 0.5; 512 proposals per image sampled at up to a quarter positives; cross-entropy averaged
over the sampled proposals of the batch; smooth-L1 (beta 1/9) of the positives' deltas of their
own class against BoxCoder((10, 10, 5, 5)).encode, summed and divided by the batch's sampled count
(labels.numel()). Per image here: each image's sums / the batch's count * B.
Inference (postprocess_detections): softmax; class-specific boxes decoded and clipped; background
dropped; scores > 0.05; sides >= 1e-2; per-class NMS at 0.5; the best 100.
The per-class NMS here sees the `candidates` best-scored (proposal, class) pairs that pass the
thresholds (torchvision: all of them): greedy NMS decisions depend only on higher-scored boxes of
the same class, so the output is torchvision's whenever the 100 kept boxes are among them (always,
when the valid pairs are fewer than `candidates`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from rajax.detection import boxes as boxes_lib
from rajax.detection import matching, nms as nms_lib
from rajax.detection.rpn import smooth_l1
from rajax.models import layers

BOX_CODER = boxes_lib.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))


def _linear(features: int, fan_in: int, dtype, name: str) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=layers.torch_kernel_init,
                  bias_init=layers.torch_bias_init(fan_in), name=name)


def flatten_channel_major(pooled: jax.Array) -> jax.Array:
  """[..., P, Q, C] -> [..., C * P * Q] in torch's (C, P, Q) order."""
  *lead, p, q, c = pooled.shape
  return jnp.moveaxis(pooled, -1, -3).reshape(*lead, c * p * q)


class TwoMLPHead(nn.Module):
  representation_size: int = 1024
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, pooled: jax.Array, *, train: bool = False, mask: jax.Array | None = None) -> jax.Array:
    del mask  # no BatchNorm
    x = flatten_channel_major(pooled.astype(self.dtype))
    x = nn.relu(_linear(self.representation_size, x.shape[-1], self.dtype, "fc6")(x))
    return nn.relu(_linear(self.representation_size, self.representation_size, self.dtype, "fc7")(x))


class ConvFCHead(nn.Module):
  """FastRCNNConvFCHead((C, 7, 7), [256] * 4, [1024], norm_layer=BatchNorm2d): the v2 box head."""

  conv_layers: tuple[int, ...] = (256, 256, 256, 256)
  representation_size: int = 1024
  norm: Callable[..., nn.Module] | None = None
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, pooled: jax.Array, *, train: bool = False, mask: jax.Array | None = None) -> jax.Array:
    """`mask` [...] marks the real RoIs: in training mode BatchNorm's batch statistics are taken
    over them only (torchvision's batch holds just the sampled RoIs; here padding slots fill it up)."""
    lead = pooled.shape[:-3]
    x = pooled.reshape((-1,) + pooled.shape[-3:]).astype(self.dtype)
    m = None if (mask is None or not train) else mask.reshape(-1, 1, 1, 1)
    for i, c in enumerate(self.conv_layers):
      x = nn.Conv(c, (3, 3), padding=((1, 1), (1, 1)), use_bias=self.norm is None, dtype=self.dtype,
                  param_dtype=jnp.float32, kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                  bias_init=nn.initializers.zeros, name=f"conv_{i}")(x)
      if self.norm is not None:
        norm = self.norm(train=train, dtype=self.dtype, name=f"norm_{i}")
        x = norm(x) if m is None else norm(x, mask=m)
      x = nn.relu(x)
    x = flatten_channel_major(x)
    x = nn.relu(_linear(self.representation_size, x.shape[-1], self.dtype, "fc")(x))
    return x.reshape(lead + (self.representation_size,))


class FastRCNNPredictor(nn.Module):
  num_classes: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    fan_in = x.shape[-1]
    scores = _linear(self.num_classes, fan_in, self.dtype, "cls_score")(x).astype(jnp.float32)
    deltas = _linear(4 * self.num_classes, fan_in, self.dtype, "bbox_pred")(x).astype(jnp.float32)
    return scores, deltas


def training_targets(proposals: jax.Array, proposal_valid: jax.Array, gt_boxes: jax.Array, gt_labels: jax.Array,
                     gt_valid: jax.Array, *, fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.5):
  """Ground truth appended to the proposals, matched: (boxes [B, R + N, 4], valid [B, R + N],
  labels [B, R + N] int32 (class, 0 background, -1 ignored), matched ground truth [B, R + N, 4])."""
  boxes = jnp.concatenate([proposals, gt_boxes.astype(proposals.dtype)], axis=1)
  valid = jnp.concatenate([proposal_valid, gt_valid], axis=1)
  matcher = matching.Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
  matches = matcher(boxes_lib.iou(gt_boxes, boxes), gt_valid, valid)
  safe = jnp.maximum(matches, 0)
  cls = jnp.take_along_axis(gt_labels.astype(jnp.int32), safe, axis=1)
  labels = jnp.where(matches >= 0, cls, jnp.where(matches == matching.BELOW_LOW_THRESHOLD, 0, -1))
  matched = jnp.take_along_axis(gt_boxes, safe[..., None], axis=1)
  return boxes, valid, labels.astype(jnp.int32), matched


def loss(class_logits: jax.Array, box_deltas: jax.Array, labels: jax.Array, targets: jax.Array,
         valid: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-image (classifier loss [B], box loss [B]) over S sampled slots: logits [B, S, K], deltas
  [B, S, 4K], labels [B, S], regression targets [B, S, 4], valid [B, S]."""
  b, s, k = class_logits.shape
  count = jnp.maximum(jnp.sum(valid.astype(jnp.float32)), 1.0)
  logp = jax.nn.log_softmax(class_logits, axis=-1)
  lab = jnp.clip(labels, 0, k - 1)
  ce = -jnp.take_along_axis(logp, lab[..., None], axis=-1)[..., 0]
  cls_loss = jnp.sum(jnp.where(valid, ce, 0.0), axis=1) / count * b
  deltas = box_deltas.reshape(b, s, k, 4)
  own = jnp.take_along_axis(deltas, lab[..., None, None], axis=2)[..., 0, :]
  box = jnp.sum(smooth_l1(own - jax.lax.stop_gradient(targets), 1.0 / 9.0), axis=-1)
  box_loss = jnp.sum(jnp.where(valid & (labels > 0), box, 0.0), axis=1) / count * b
  return cls_loss, box_loss


def detections(class_logits: jax.Array, box_deltas: jax.Array, proposals: jax.Array, proposal_valid: jax.Array,
               image_size: tuple[int, int], *, score_thresh: float = 0.05, nms_thresh: float = 0.5,
               detections_per_img: int = 100, candidates: int = 4000, min_size: float = 1e-2):
  """(boxes [B, D, 4], scores [B, D], labels [B, D], valid [B, D]) of the box branch's outputs for
  proposals [B, R, 4] (logits [B, R, K], deltas [B, R, 4K]); boxes in pixels of the (resized) image."""
  b, r, k = class_logits.shape
  boxes = BOX_CODER.decode(box_deltas.reshape(b, r, k, 4), proposals[:, :, None, :])
  boxes = boxes_lib.clip_to_image(boxes, image_size)[:, :, 1:]                 # [B, R, K-1, 4]
  scores = jax.nn.softmax(class_logits, axis=-1)[:, :, 1:]
  labels = jnp.broadcast_to(jnp.arange(1, k, dtype=jnp.int32), scores.shape)
  ok = proposal_valid[..., None] & (scores > score_thresh) & boxes_lib.size_at_least(boxes, min_size)
  boxes, scores, labels, ok = (x.reshape(b, r * (k - 1), *x.shape[3:]) for x in (boxes, scores, labels, ok))
  idx, ok = nms_lib.top_k(scores, ok, min(candidates, r * (k - 1)))
  take = lambda x: jnp.take_along_axis(x, idx if x.ndim == 2 else idx[..., None], axis=1)
  boxes, scores, labels = take(boxes), take(scores), take(labels)
  keep, kept = jax.vmap(lambda b_, s_, l_, v_: nms_lib.batched_nms(
      b_, s_, l_, v_, iou_threshold=nms_thresh, max_output=detections_per_img))(boxes, scores, labels, ok)
  take = lambda x: jnp.take_along_axis(x, keep if x.ndim == 2 else keep[..., None], axis=1)
  boxes, scores, labels = take(boxes), take(scores), take(labels)
  return (jnp.where(kept[..., None], boxes, 0.0), jnp.where(kept, scores, 0.0), jnp.where(kept, labels, 0), kept)
