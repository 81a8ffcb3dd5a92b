"""Per-image detection records gathered on the host, batch by batch, for the VOC and COCO metrics.

`Records(num_classes, background=...)` takes a batch of `Detections` and `BoxTargets` (jax or NumPy
arrays, padded) with an optional per-image mask (the evaluation loader's padding images), drops
every padding slot and keeps one `ImageRecord` per real image. `rajax.detection.voc_eval` and
`rajax.detection.coco_eval` read the same records, so both metrics see the same images.

Bad input is refused with the reason: shapes that do not fit together, ground-truth boxes with
x2 <= x1 or y2 <= y1 (or outside the image when `image_size` is given), labels outside the label
space (the class count of the detector), background labels on ground truth.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from rajax.detection import boxes as boxes_lib
from rajax.detection.types import BoxTargets, Detections


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  """One image's real boxes: ground truth [G] and detections [D] (padding removed)."""

  gt_boxes: np.ndarray       # [G, 4] float32
  gt_labels: np.ndarray      # [G] int64
  gt_difficult: np.ndarray   # [G] bool
  det_boxes: np.ndarray      # [D, 4] float32
  det_scores: np.ndarray     # [D] float32
  det_labels: np.ndarray     # [D] int64


class Records:
  """Accumulates ImageRecords; `len(records)` images so far, `records.images` the list."""

  def __init__(self, num_classes: int, *, background: bool = False, class_names: Sequence[str] | None = None,
               image_size: tuple[int, int] | None = None):
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1 + int(background):
      raise ValueError(f"num_classes must be an int >= {1 + int(background)} (background={background}), "
                       f"got {num_classes!r}.")
    if class_names is not None and len(class_names) != num_classes:
      raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes.")
    self.num_classes = int(num_classes)
    self.background = bool(background)
    self.class_names = tuple(class_names) if class_names is not None else tuple(str(c) for c in range(num_classes))
    self.image_size = image_size
    self.images: list[ImageRecord] = []

  def __len__(self) -> int:
    return len(self.images)

  @property
  def classes(self) -> tuple[int, ...]:
    """The class indices that are scored (every class but the background)."""
    return tuple(range(int(self.background), self.num_classes))

  def _check_labels(self, labels: np.ndarray, what: str) -> None:
    if labels.size == 0:
      return
    lo = int(self.background) if what == "ground-truth" else 0
    bad = (labels < lo) | (labels >= self.num_classes)
    if bad.any():
      value = int(labels[bad][0])
      space = f"{self.num_classes} classes" + (" with 0 = background" if self.background else "")
      raise ValueError(f"A {what} label {value} is outside the detector's label space: {space} "
                       f"(valid labels {lo}..{self.num_classes - 1}). Map the dataset's classes to the detector's, or build the metric with the right num_classes.")

  def add(self, detections: Detections, targets: BoxTargets, mask=None) -> None:
    """Adds a batch: detections [B, K, ...] and targets [B, N, ...]; mask [B] (1 = a real image)."""
    det = [np.asarray(x) for x in detections]
    tgt = [np.asarray(x) for x in targets]
    d_boxes, d_scores, d_labels, d_valid = det
    t_boxes, t_labels, t_valid, t_difficult = tgt
    b = t_boxes.shape[0] if t_boxes.ndim == 3 else None
    problems = []
    if (d_boxes.ndim != 3 or d_boxes.shape[-1] != 4
        or any(x.shape != d_boxes.shape[:2] for x in (d_scores, d_labels, d_valid))):
      problems.append(f"detections must be boxes [B, K, 4] with scores, labels, valid [B, K]; got "
                      f"{d_boxes.shape}, {d_scores.shape}, {d_labels.shape}, {d_valid.shape}")
    if (t_boxes.ndim != 3 or t_boxes.shape[-1] != 4
        or any(x.shape != t_boxes.shape[:2] for x in (t_labels, t_valid, t_difficult))):
      problems.append(f"targets must be boxes [B, N, 4] with labels, valid, difficult [B, N]; got "
                      f"{t_boxes.shape}, {t_labels.shape}, {t_valid.shape}, {t_difficult.shape}")
    if not problems and d_boxes.shape[0] != b:
      problems.append(f"detections are for {d_boxes.shape[0]} images and targets for {b}")
    mask = np.ones(b or 0, bool) if mask is None else np.asarray(mask).astype(bool).reshape(-1)
    if not problems and mask.shape != (b,):
      problems.append(f"the image mask has shape {mask.shape} for {b} images")
    if problems:
      raise ValueError("Detection metrics: " + "; ".join(problems) + ".")
    t_valid, d_valid = t_valid.astype(bool) & mask[:, None], d_valid.astype(bool) & mask[:, None]
    boxes_lib.check_targets(t_boxes, t_valid, image_size=self.image_size, name="ground truth")
    self._check_labels(t_labels[t_valid], "ground-truth")
    self._check_labels(d_labels[d_valid], "detection")
    for i in np.flatnonzero(mask):
      g, d = t_valid[i], d_valid[i]
      self.images.append(ImageRecord(
          gt_boxes=t_boxes[i][g].astype(np.float32), gt_labels=t_labels[i][g].astype(np.int64),
          gt_difficult=t_difficult[i][g].astype(bool), det_boxes=d_boxes[i][d].astype(np.float32),
          det_scores=d_scores[i][d].astype(np.float32), det_labels=d_labels[i][d].astype(np.int64)))


__all__ = ["ImageRecord", "Records"]
