"""Object detection as a recognition task: a `Detector` against padded `BoxTargets`.

What a method needs from a task, for a detector (`rajax.detection.Detector`):

  loss              the detector's own training loss, one value per image (Faster R-CNN's RPN and
                    box-head terms, FCOS's focal/GIoU/centreness, ...), with its terms and the
                    updated batch statistics;
  distance          how far the detector's features of two images are (unsupervised RA):
                    "feature_mse", per image;
  pseudo_targets    targets made from the detector's own detections on the clean image (boxes
                    scoring at least a threshold) and a confidence per image (its top score), for
                    data without annotations;
  metrics           per-image counts that sum over an evaluation (ground truths found at IoU 0.5,
                    ground truths, detections), jittable;
  Evaluator         the host-side accumulator for the real figures: VOC07 mAP@0.5 (11-point, as
                    the paper reports, and area) and COCO mAP@[.5:.95] / AP50 / AP75 / per size,
                    from the same per-image records.

Unlike a classifier's logits, a detector's outputs are `Detections` (fixed K slots per image) and
its targets `BoxTargets` (fixed N slots); every function here keeps those static shapes.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rajax import losses
from rajax.detection import boxes as boxes_lib
from rajax.detection import coco_eval, nms, voc_eval
from rajax.detection.records import Records
from rajax.detection.types import BoxTargets, Detections

NAME = "detection"
DISTANCES = ("feature_mse",)


def _check_images_and_targets(images, targets: BoxTargets) -> None:
  if not isinstance(targets, BoxTargets):
    raise ValueError(f"Detection targets must be a rajax.detection.BoxTargets, got {type(targets).__name__}.")
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"Detection images must be [B, H, W, 3] in [0, 1], got shape {images.shape}.")
  b, h, w = images.shape[:3]
  shapes = [x.shape for x in targets]
  if (targets.boxes.ndim != 3 or targets.boxes.shape[0] != b or targets.boxes.shape[-1] != 4
      or any(s != targets.boxes.shape[:2] for s in shapes[1:])):
    raise ValueError(f"Targets must be boxes [B, N, 4] and labels/valid/difficult [B, N] for B={b} images; "
                     f"got {', '.join(str(s) for s in shapes)}.")
  boxes_lib.check_targets(targets.boxes, targets.valid, image_size=(h, w), name="detection targets")


def loss(detector, images: jax.Array, targets: BoxTargets, *, rng: jax.Array | None = None,
         variables: Mapping[str, Any] | None = None, train: bool = False):
  """(per-image loss [B], {term: [B]}, batch_stats): the detector's own training loss on `targets`.

  Its mean over the batch is the original implementation's batch loss. `variables` (default: the
  detector's own) are what gradients are taken against when the detector is trained; `rng` drives
  its samplers; `train` runs BatchNorm in training mode. Boxes are checked (outside jit) to lie in
  the image with x2 > x1 and y2 > y1.
  """
  images = jnp.asarray(images)
  _check_images_and_targets(images, targets)
  labels = targets.labels
  try:
    concrete = np.asarray(labels)[np.asarray(targets.valid, bool)]
  except jax.errors.TracerArrayConversionError:
    concrete = None
  if concrete is not None and concrete.size:
    lo = 1 if detector.model.background else 0
    if concrete.min() < lo or concrete.max() >= detector.num_classes:
      raise ValueError(f"Target labels {int(concrete.min())}..{int(concrete.max())} do not fit detector "
                       f"{detector.name!r}: {detector.num_classes} classes"
                       f"{' with 0 = background' if detector.model.background else ''}.")
  return detector.loss(images, targets, rng=rng, variables=variables, train=train)


def distance(kind: str, *, outputs: Mapping[str, jax.Array], target_outputs: Mapping[str, jax.Array]) -> jax.Array:
  """Per-image distance `kind` between the detector's feature dicts of two images ([B]).

  "feature_mse": the sum over the named feature maps of each map's mean squared difference (the
  maps of `outputs`; the clean image's `target_outputs` must have the same names and shapes).
  """
  if kind not in DISTANCES:
    raise ValueError(f"Unknown distance {kind!r} between detector outputs; one of {', '.join(DISTANCES)}.")
  if not isinstance(outputs, Mapping) or not isinstance(target_outputs, Mapping):
    raise ValueError("Detector distances compare feature dicts {name: [B, h, w, c]} (detector.features(images)); "
                     f"got {type(outputs).__name__} and {type(target_outputs).__name__}.")
  if set(outputs) != set(target_outputs):
    raise ValueError(f"Feature dicts differ: {sorted(outputs)} vs {sorted(target_outputs)}.")
  return losses.feature_loss(features=outputs, target_features=target_outputs, layers=sorted(outputs),
                             distance="mse", reduction="none")


def pseudo_targets(detections: Detections, *, score_threshold: float = 0.5,
                   max_boxes: int | None = None) -> tuple[BoxTargets, jax.Array]:
  """(BoxTargets, confidence [B]) from the detector's detections on the clean image.

  The targets are the valid detections scoring >= `score_threshold` with a positive width and
  height, best first, at most `max_boxes` per image (default: the detections' K slots), none
  difficult; `confidence` is each image's top valid score (0 for an image without detections),
  so `confidence >= t` is the "confidently recognised" filter of classification's top-1.
  Gradients are stopped: pseudo-targets are labels, not a path into the detector.
  """
  if not isinstance(detections, Detections):
    raise ValueError(f"pseudo_targets takes the detector's Detections, got {type(detections).__name__}.")
  d = jax.tree.map(jax.lax.stop_gradient, detections)
  k = d.scores.shape[-1]
  n = k if max_boxes is None else int(max_boxes)
  if n < 1:
    raise ValueError(f"max_boxes must be >= 1, got {max_boxes}.")
  positive_size = (d.boxes[..., 2] > d.boxes[..., 0]) & (d.boxes[..., 3] > d.boxes[..., 1])
  usable = d.valid & (d.scores >= score_threshold) & positive_size
  idx, ok = nms.top_k(d.scores, usable, n)
  boxes = jnp.take_along_axis(d.boxes, idx[..., None], axis=1) * ok[..., None]
  labels = jnp.where(ok, jnp.take_along_axis(d.labels, idx, axis=1), 0).astype(jnp.int32)
  targets = BoxTargets(boxes.astype(jnp.float32), labels, ok, jnp.zeros_like(ok))
  confidence = jnp.max(jnp.where(d.valid, d.scores, 0.0), axis=-1, initial=0.0).astype(jnp.float32)
  return targets, confidence


def metrics(outputs: Detections, targets: BoxTargets, *, iou_threshold: float = 0.5) -> dict[str, jax.Array]:
  """Per-image counts that add up over an evaluation (jittable; mAP needs `Evaluator`):

  found50     non-difficult ground truths with a same-class detection at IoU > iou_threshold
              (any detection: an upper bound of the TP count, without one-to-one matching);
  num_gt      non-difficult ground truths;
  num_detections  valid detections.
  Their sums give the recall sum(found50) / sum(num_gt).
  """
  overlap = boxes_lib.iou(targets.boxes, outputs.boxes)  # [B, N, K]
  same = targets.labels[:, :, None] == outputs.labels[:, None, :]
  hit = (overlap > iou_threshold) & same & outputs.valid[:, None, :]
  counted = targets.valid & ~targets.difficult
  found = jnp.any(hit, axis=-1) & counted
  return {"found50": jnp.sum(found, axis=-1).astype(jnp.float32),
          "num_gt": jnp.sum(counted, axis=-1).astype(jnp.float32),
          "num_detections": jnp.sum(outputs.valid, axis=-1).astype(jnp.float32)}


class Evaluator:
  """Accumulates detections and targets batch by batch (host-side); `result()` gives the figures.

    ev = Evaluator(num_classes=21, background=True, class_names=VOC_NAMES)   # or Evaluator.for_detector(det)
    for batch: ev.add(detections, targets, mask=batch["mask"])
    ev.result() -> {"voc07_map11", "voc_map_area", "coco_map", "coco_ap50", "coco_ap75",
                    "coco_ap_small", "coco_ap_medium", "coco_ap_large", "num_images"}
    ev.per_class() -> {class name: {"ap11", "ap_area", "num_gt"}}

  Padding slots and padding images (mask 0) are ignored; difficult boxes are neither TP nor FP in
  VOC and are "ignore" regions in COCO. `coco=False` skips the COCO figures.
  """

  def __init__(self, num_classes: int, *, background: bool = False, class_names: Sequence[str] | None = None,
               image_size: tuple[int, int] | None = None, coco: bool = True):
    self.records = Records(num_classes, background=background, class_names=class_names, image_size=image_size)
    self.coco = coco

  @classmethod
  def for_detector(cls, detector, **kwargs) -> "Evaluator":
    return cls(detector.num_classes, background=detector.model.background, class_names=detector.class_names, **kwargs)

  def add(self, detections: Detections, targets: BoxTargets, mask=None) -> None:
    mask = None if mask is None else jax.device_get(mask)
    self.records.add(jax.device_get(detections), jax.device_get(targets), mask)

  def voc(self, iou_threshold: float = 0.5) -> voc_eval.VOCResult:
    return voc_eval.evaluate(self.records, iou_threshold)

  def per_class(self) -> dict[str, dict[str, float]]:
    return self.voc().per_class()

  def result(self) -> dict[str, float]:
    if not len(self.records):
      raise ValueError("The detection evaluator has no images; add() batches before result().")
    voc = self.voc()
    out = {"voc07_map11": voc.map11, "voc_map_area": voc.map_area, "num_images": float(len(self.records))}
    if self.coco:
      out.update({f"coco_{k}": v for k, v in coco_eval.evaluate(self.records).items()})
    return out


__all__ = ["DISTANCES", "Evaluator", "NAME", "distance", "loss", "metrics", "pseudo_targets"]
