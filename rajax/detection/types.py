"""The two records every detection piece speaks: what a detector predicts, and what it is trained on.

Both are fixed-size, padded pytrees (static shapes for jit, sharding and TPUs): a batch of B images
carries at most N ground-truth boxes and K detections per image, and a validity mask says which
slots are real. Boxes are (x1, y1, x2, y2) in pixels of the image the detector was given
([B, H, W, 3], values in [0, 1]), x to the right, y down, x2 > x1 and y2 > y1 for valid boxes
(torchvision's convention: a box from pixel 0 to pixel 9 inclusive is (0, 0, 10, 10)).
Labels are class indices of the detector's own label space (the task says whether 0 is background).
"""

from __future__ import annotations

from typing import NamedTuple

import jax


class BoxTargets(NamedTuple):
  """Ground truth (or pseudo ground truth) for a batch: N padded slots per image.

  boxes      [B, N, 4] float32, (x1, y1, x2, y2) pixels; padding slots are zeros.
  labels     [B, N] int32 class indices; padding slots are 0.
  valid      [B, N] bool, True for real boxes.
  difficult  [B, N] bool, VOC's difficult flag (ignored by VOC07 mAP, kept in training as
             torchvision's VOC recipes do unless the data pipeline drops them).
  """

  boxes: jax.Array
  labels: jax.Array
  valid: jax.Array
  difficult: jax.Array


class Detections(NamedTuple):
  """A detector's final predictions for a batch: K slots per image, best first.

  boxes   [B, K, 4] float32, (x1, y1, x2, y2) pixels of the input image.
  scores  [B, K] float32 in [0, 1]; padding slots are 0.
  labels  [B, K] int32 class indices; padding slots are 0.
  valid   [B, K] bool, True for real detections.
  """

  boxes: jax.Array
  scores: jax.Array
  labels: jax.Array
  valid: jax.Array
