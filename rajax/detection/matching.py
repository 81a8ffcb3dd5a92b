"""Assigning predictions (anchors, proposals) to ground truth, and sampling them for the loss.

`Matcher` is torchvision's `Matcher` (models/detection/_utils.py) with padding masks:

  matcher(quality [..., M, N], gt_valid [..., M], pred_valid [..., N]) -> matches [..., N] int32

with quality[m, n] the IoU of ground-truth box m and prediction n. Each prediction gets the index
of its best ground truth (the first of equal maxima), or BELOW_LOW_THRESHOLD (-1) when that best
IoU is < low_threshold, or BETWEEN_THRESHOLDS (-2) when it is in [low, high). With
`allow_low_quality_matches`, every prediction that attains some ground truth's highest IoU (ties
included, even when that highest IoU is 0, as torchvision does) gets its best ground truth back.
Thresholds compare in float32 as torch does (an IoU of float32(0.7) is >= 0.7).
Padding: invalid ground-truth rows never match; an image without valid ground truth gets -1
everywhere (all negatives: what torchvision's RPN and ROI heads do for empty targets); invalid
prediction columns get BETWEEN_THRESHOLDS (-2), which every torchvision label conversion ignores
(neither positive nor negative), and they are never low-quality matches.

`sample_balanced` is torchvision's BalancedPositiveNegativeSampler with static shapes: from labels
(>= 1 positive, 0 negative, anything else ignored) it draws min(#pos, int(S * positive_fraction))
positives and min(#neg, S - that) negatives uniformly without replacement (torch.randperm's
distribution; not its stream of random numbers), from a jax key. `sample_from_masks` builds the
same record from given masks (torch's own samples, for parity tests). Both give a `Sample`: the
masks over all N predictions and S = batch_size_per_image sampled slots with a validity mask.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


class Matcher(NamedTuple):
  """torchvision's Matcher(high_threshold, low_threshold, allow_low_quality_matches) over padded inputs.

  RPN: Matcher(0.7, 0.3, True); Faster R-CNN's ROI heads: Matcher(0.5, 0.5, False).
  """

  high_threshold: float
  low_threshold: float
  allow_low_quality_matches: bool = False

  BELOW_LOW_THRESHOLD = BELOW_LOW_THRESHOLD
  BETWEEN_THRESHOLDS = BETWEEN_THRESHOLDS

  def __call__(self, quality: jax.Array, gt_valid: jax.Array | None = None,
               pred_valid: jax.Array | None = None) -> jax.Array:
    if self.low_threshold > self.high_threshold:
      raise ValueError(f"Matcher: low_threshold {self.low_threshold} must be <= high_threshold {self.high_threshold}.")
    quality = jnp.asarray(quality)
    if quality.ndim < 2:
      raise ValueError(f"Matcher: quality must be [..., M ground truth, N predictions], got {quality.shape}.")
    m, n = quality.shape[-2:]
    gt_valid = jnp.ones(quality.shape[:-1], bool) if gt_valid is None else jnp.asarray(gt_valid, bool)
    pred_valid = (jnp.ones(quality.shape[:-2] + (n,), bool) if pred_valid is None
                  else jnp.asarray(pred_valid, bool))
    if gt_valid.shape[-1] != m or pred_valid.shape[-1] != n:
      raise ValueError(f"Matcher: masks must be gt_valid [..., {m}] and pred_valid [..., {n}]; "
                       f"got {gt_valid.shape} and {pred_valid.shape}.")
    return _match(quality, gt_valid, pred_valid, jnp.float32(self.high_threshold), jnp.float32(self.low_threshold),
                  low_quality=bool(self.allow_low_quality_matches))


@functools.partial(jax.jit, static_argnames=("low_quality",))
def _match(quality, gt_valid, pred_valid, high, low, *, low_quality):
  both = gt_valid[..., :, None] & pred_valid[..., None, :]
  q = jnp.where(both, quality, -1.0)  # IoU >= 0, so a padded pair never wins a maximum
  best = jnp.max(q, axis=-2)
  all_matches = jnp.argmax(q, axis=-2).astype(jnp.int32)
  below = best < low
  between = (best >= low) & (best < high)
  matches = jnp.where(below, BELOW_LOW_THRESHOLD, jnp.where(between, BETWEEN_THRESHOLDS, all_matches))
  if low_quality:
    highest_per_gt = jnp.max(q, axis=-1, keepdims=True)
    attains = jnp.any((q == highest_per_gt) & both, axis=-2)
    matches = jnp.where(attains, all_matches, matches)
  return jnp.where(pred_valid, matches, BETWEEN_THRESHOLDS).astype(jnp.int32)


class Sample(NamedTuple):
  """Sampled predictions of one image (leading batch axes allowed).

  positive, negative  [..., N] bool masks of the sampled positives and negatives (torchvision's output).
  indices             [..., S] int32 sampled positions: positives first, then negatives; padding 0.
  valid               [..., S] bool, True for sampled slots.
  is_positive         [..., S] bool, True for sampled positives.
  """

  positive: jax.Array
  negative: jax.Array
  indices: jax.Array
  valid: jax.Array
  is_positive: jax.Array


def _from_ranked(n, pos_idx, num_pos, neg_idx, num_neg, size) -> Sample:
  slot = jnp.arange(size)
  is_pos = slot < num_pos
  valid = slot < num_pos + num_neg
  pick_pos = pos_idx[jnp.clip(slot, 0, pos_idx.shape[0] - 1)]
  pick_neg = neg_idx[jnp.clip(slot - num_pos, 0, neg_idx.shape[0] - 1)]
  indices = jnp.where(is_pos, pick_pos, jnp.where(valid, pick_neg, 0)).astype(jnp.int32)
  target = jnp.where(valid, indices, n)  # out of range: dropped
  positive = jnp.zeros((n,), bool).at[jnp.where(is_pos, target, n)].set(True, mode="drop")
  negative = jnp.zeros((n,), bool).at[jnp.where(valid & ~is_pos, target, n)].set(True, mode="drop")
  return Sample(positive, negative, indices, valid, is_pos & valid)


def _check_sampler(labels, batch_size_per_image, positive_fraction=0.0):
  if labels.ndim < 1:
    raise ValueError(f"Sampler: labels must be [..., N], got shape {labels.shape}.")
  if batch_size_per_image < 1:
    raise ValueError(f"batch_size_per_image must be >= 1, got {batch_size_per_image}.")
  if not 0.0 <= positive_fraction <= 1.0:
    raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}.")


def _batched(fn, lead, *arrays):
  """Applies a one-image function over the leading axes `lead` of its arrays."""
  flat = [a.reshape((-1,) + a.shape[len(lead):]) for a in arrays]
  out = jax.vmap(fn)(*flat)
  return jax.tree.map(lambda x: x.reshape(lead + x.shape[1:]), out)


@functools.partial(jax.jit, static_argnames=("batch_size_per_image", "positive_fraction"))
def sample_balanced(key: jax.Array, labels: jax.Array, *, batch_size_per_image: int,
                    positive_fraction: float) -> Sample:
  """Uniformly random balanced sample of labels [..., N] (>= 1 positive, 0 negative, else ignored).

  One key for the whole batch; each image gets its own stream (jax.random.split).
  """
  labels = jnp.asarray(labels)
  _check_sampler(labels, batch_size_per_image, positive_fraction)
  size = batch_size_per_image
  max_pos = int(size * positive_fraction)
  n = labels.shape[-1]
  lead = labels.shape[:-1]
  count = 1
  for d in lead:
    count *= d
  keys = jax.random.split(key, count)
  keys = keys.reshape(lead + keys.shape[1:])

  def one(k, lab):
    positive, negative = lab >= 1, lab == 0
    k_pos, k_neg = jax.random.split(k)
    u_pos = jnp.where(positive, jax.random.uniform(k_pos, (n,)), -1.0)
    u_neg = jnp.where(negative, jax.random.uniform(k_neg, (n,)), -1.0)
    _, pos_idx = lax.top_k(u_pos, max(1, min(max_pos, n)))
    _, neg_idx = lax.top_k(u_neg, min(size, n))
    num_pos = jnp.minimum(jnp.sum(positive, dtype=jnp.int32), max_pos)
    num_neg = jnp.minimum(jnp.sum(negative, dtype=jnp.int32), size - num_pos)
    return _from_ranked(n, pos_idx, num_pos, neg_idx, num_neg, size)

  return _batched(one, lead, keys, labels)


def sample_from_masks(positive: jax.Array, negative: jax.Array, *, batch_size_per_image: int) -> Sample:
  """The `Sample` of given masks [..., N] (e.g. torch's sampled masks): positives then negatives, each
  in index order; at most batch_size_per_image in all (the excess, negatives first, is dropped)."""
  positive, negative = jnp.asarray(positive, bool), jnp.asarray(negative, bool)
  if positive.shape != negative.shape:
    raise ValueError(f"positive and negative masks differ in shape: {positive.shape} vs {negative.shape}.")
  _check_sampler(positive, batch_size_per_image)
  try:
    overlap = bool(np.any(np.asarray(positive) & np.asarray(negative)))
  except jax.errors.TracerArrayConversionError:
    overlap = False
  if overlap:
    raise ValueError("A prediction is marked both positive and negative in the given sample masks.")
  return _from_masks(positive, negative, size=int(batch_size_per_image))


@functools.partial(jax.jit, static_argnames=("size",))
def _from_masks(positive, negative, *, size):
  n = positive.shape[-1]

  def one(pos, neg):
    idx = jnp.arange(n, dtype=jnp.int32)
    order_pos = jnp.argsort(jnp.where(pos, idx, n + idx), stable=True)
    order_neg = jnp.argsort(jnp.where(neg, idx, n + idx), stable=True)
    k = min(size, n)
    num_pos = jnp.minimum(jnp.sum(pos, dtype=jnp.int32), size)
    num_neg = jnp.minimum(jnp.sum(neg, dtype=jnp.int32), size - num_pos)
    return _from_ranked(n, order_pos[:k], num_pos, order_neg[:k], num_neg, size)

  return _batched(one, positive.shape[:-1], positive, negative)


__all__ = ["BELOW_LOW_THRESHOLD", "BETWEEN_THRESHOLDS", "Matcher", "Sample", "sample_balanced", "sample_from_masks"]
