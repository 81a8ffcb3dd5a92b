"""Semantic segmentation as a recognition task: a `Segmenter` against label maps [B, H, W].

What a method needs from a task, for a segmenter (`rajax.segmentation.Segmenter`):

  dataset_targets   the batch's label maps, batch["label_map"]: [B, H, W] integer class ids at the
                    clean target's H x W, IGNORE_LABEL (255) where a pixel has no label;
  recognition_loss  per-pixel cross-entropy with the ignore label (`pixel_ce`), each image's mean
                    over its labelled pixels, plus `aux_weight` (config.recognizer.loss.aux_weight,
                    0.5 as torchvision's segmentation reference) times the same on the auxiliary
                    head where the model has one;
  embed             what unsupervised RA compares: {"logits": main head [B, H, W, K], "features":
                    the named feature maps} (a jitted step computes only what its distance reads);
  features          (logits, named feature maps), for feature (perceptual) losses;
  step_metrics      what a train step logs: the batch's pixel accuracy and mIoU;
  distance          how far two outputs on the same image are (unsupervised RA): "prob_mse" (the
                    MSE of softmax probabilities over every pixel and class), "kl" (KL of the clean
                    image's per-pixel distribution to P's, averaged over pixels), "feature_mse";
  pseudo_targets    label maps from the segmenter's own output on the clean image (its per-pixel
                    argmax; pixels below a confidence threshold set to IGNORE_LABEL) and a
                    confidence per image (the mean top probability over its pixels);
  metrics           per-image figures that add up over an evaluation (jittable);
  confusion_matrix  the [K, K] int32 counts (rows: true class, columns: predicted class) of a
                    batch, jittable; sums of per-batch or per-shard matrices are exact;
  counts            {"confusion": that matrix} of an evaluation batch, as evaluation steps return it;
  Evaluator         the host-side accumulator (int64) of those matrices: mIoU, per-class IoU,
                    pixel accuracy, exact under a mask of padding images and under sharding.

The loss per image and torchvision's: torchvision's reference (`criterion` in references/
segmentation/train.py) averages the cross-entropy over all labelled pixels of the batch. Here each
image gets the mean over its own labelled pixels, and methods average images; the two agree when
every image has the same number of labelled pixels. When the counts differ, every image counts the
same here (an image of few labelled pixels weighs as much as a full one), and an image without a
labelled pixel has loss 0; `valid_pixels(targets)` are the weights that give torchvision's batch
loss back: sum(loss * valid) / sum(valid).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rajax import losses
from rajax.segmentation.segmenter import IGNORE_LABEL

NAME = "segmentation"
DISTANCES = ("prob_mse", "kl", "feature_mse")
AUX_WEIGHT = 0.5   # torchvision's references/segmentation: loss = CE(out) + 0.5 * CE(aux)
LOSS_OPTIONS = ("aux_weight",)   # what recognition_loss takes from config.recognizer.loss


# ==================================================================== targets

def _concrete(x) -> np.ndarray | None:
  """`x` as a NumPy array, or None while it is traced (inside jit)."""
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def check_label_map(label_map, *, num_classes: int | None = None, image_shape: Sequence[int] | None = None,
                    name: str = "label_map") -> None:
  """Raises ValueError unless `label_map` is [B, H, W] integer ids in [0, num_classes) or IGNORE_LABEL.

  `image_shape` ([B, H, W, ...] of the images or logits it labels) fixes B, H and W. Shapes are
  checked always (also under jit); ids only where the array is concrete (on the host, or eagerly):
  inside a jitted step an out-of-range id makes its image's loss NaN instead (`pixel_ce`).
  """
  shape = tuple(label_map.shape)
  if len(shape) != 3:
    raise ValueError(f"{name} must be [B, H, W] class ids, got shape {shape}; one id per pixel of the clean target "
                     f"(use {IGNORE_LABEL} for pixels without a label).")
  if image_shape is not None and tuple(image_shape[:3]) != shape:
    raise ValueError(f"{name} has shape {shape} but the images it labels are {tuple(image_shape[:3])} (B, H, W): "
                     "resize or crop the label maps with the images (nearest-neighbour for labels).")
  if not jnp.issubdtype(label_map.dtype, jnp.integer):
    raise ValueError(f"{name} must hold integer class ids, got dtype {label_map.dtype}.")
  ids = _concrete(label_map) if num_classes is not None else None
  if ids is not None and ids.size:
    bad = (ids != IGNORE_LABEL) & ((ids < 0) | (ids >= num_classes))
    if bad.any():
      found = np.unique(ids[bad])
      raise ValueError(f"{name} holds class ids {found[:8].tolist()}{' ...' if found.size > 8 else ''} outside "
                       f"0..{num_classes - 1} for a segmenter of {num_classes} classes; only {IGNORE_LABEL} may "
                       "lie outside (ignored pixels). Map the dataset's ids to the segmenter's classes.")


def dataset_targets(batch) -> jax.Array:
  """The label maps a segmentation batch carries: batch["label_map"], [B, H, W] int32 at the clean
  target's size (batch["target"], [B, H, W, 3]), IGNORE_LABEL where a pixel has no label."""
  if "label_map" not in batch:
    raise ValueError("This batch has no 'label_map': segmentation needs label maps [B, H, W] (255 = ignore), or "
                     "config.labels='recognizer' for the segmenter's own label maps of the clean image.")
  label_map = batch["label_map"]
  check_label_map(label_map, image_shape=batch["target"].shape if "target" in batch else None)
  return jnp.asarray(label_map, jnp.int32)


def valid_pixels(targets: jax.Array) -> jax.Array:
  """The number of labelled (not IGNORE_LABEL) pixels per image, [B] float32."""
  return jnp.sum(targets != IGNORE_LABEL, axis=(1, 2)).astype(jnp.float32)


# ==================================================================== loss

def pixel_ce(*, logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0,
             ignore_label: int = IGNORE_LABEL) -> jax.Array:
  """Per-image softmax cross-entropy [B] of logits [B, H, W, K] against label maps [B, H, W].

  Each image's value is the mean over its pixels whose label is not `ignore_label`, as
  torch.nn.functional.cross_entropy(ignore_index=255, label_smoothing=eps) over that image alone
  (smoothing mixes eps / K into every labelled pixel's target; ignored pixels count in neither
  part); 0 for an image without labelled pixels. An id outside [0, K) other than the ignore label
  gives its image NaN, so a wrong label map cannot pass unnoticed inside a jitted step.
  """
  if logits.ndim != 4:
    raise ValueError(f"Segmentation logits must be [B, H, W, K], got shape {tuple(logits.shape)}.")
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
  check_label_map(labels, image_shape=logits.shape, name="labels")
  k = logits.shape[-1]
  labelled = labels != ignore_label
  in_range = (labels >= 0) & (labels < k)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, jnp.where(in_range, labels, 0)[..., None], axis=-1)[..., 0]
  if label_smoothing:
    nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
  per_pixel = jnp.where(labelled, nll, 0.0)
  count = jnp.sum(labelled, axis=(1, 2)).astype(jnp.float32)
  per_image = jnp.sum(per_pixel, axis=(1, 2)) / jnp.maximum(count, 1.0)
  broken = jnp.any(labelled & ~in_range, axis=(1, 2))
  return jnp.where(broken, jnp.nan, per_image)


def loss(segmenter, images: jax.Array, targets: jax.Array, *, aux_weight: float = AUX_WEIGHT,
         label_smoothing: float = 0.0, variables: Mapping[str, Any] | None = None, train: bool = False,
         rng: jax.Array | None = None):
  """(per-image loss [B], {"out": [B], "aux": [B] where the model has one}, heads, batch_stats).

  The loss is pixel_ce(out) + aux_weight * pixel_ce(aux). `variables` (default: the segmenter's
  own) are what gradients are taken against when the segmenter is trained; `train` runs BatchNorm
  in training mode (its updated statistics returned; {} otherwise); `rng` drives dropout.
  """
  if aux_weight < 0:
    raise ValueError(f"aux_weight={aux_weight} must be >= 0 (torchvision's reference uses {AUX_WEIGHT}).")
  images = jnp.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"Segmentation images must be [B, H, W, 3] in [0, 1], got shape {images.shape}.")
  check_label_map(targets, num_classes=segmenter.num_classes, image_shape=images.shape, name="targets")
  heads, stats = segmenter.heads(images, variables=variables, train=train, rng=rng)
  terms = {name: pixel_ce(logits=heads[name], labels=targets, label_smoothing=label_smoothing)
           for name in ("out", "aux") if name in heads}
  total = terms["out"] + (aux_weight * terms["aux"] if "aux" in terms and aux_weight else 0.0)
  return total, terms, heads, stats


def recognition_loss(segmenter, images: jax.Array, targets: jax.Array, *, label_smoothing: float = 0.0,
                     classes: Sequence[int] = (), variables: Mapping[str, Any] | None = None, train: bool = False,
                     rng: jax.Array | None = None, aux_weight: float = AUX_WEIGHT):
  """(per-image loss [B], main-head logits [B, H, W, K], batch_stats): `loss` as methods call every task's.

  batch_stats is the segmenter's updated BatchNorm statistics with `train`, else None. Training on
  a subset of the classes is classification's and is refused here.
  """
  if classes:
    raise ValueError("Training on a subset of the classes (config.classes.half) is defined for classifiers only.")
  per_image, _, heads, stats = loss(segmenter, images, targets, aux_weight=aux_weight,
                                    label_smoothing=label_smoothing, variables=variables, train=train, rng=rng)
  return per_image, heads["out"], (stats if train else None)


# ==================================================================== unsupervised RA, features

def embed(segmenter, images: jax.Array) -> dict[str, Any]:
  """{"logits": main head [B, H, W, K], "features": named feature maps}: what `distance` compares."""
  return {"logits": segmenter(images), "features": segmenter.features(images)}


def features(segmenter, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(main-head logits, named feature maps): what a perceptual loss compares."""
  return segmenter(images), segmenter.features(images)


def _logits_of(outputs) -> jax.Array:
  return outputs["logits"] if isinstance(outputs, Mapping) else outputs


def distance(kind: str, *, outputs, target_outputs) -> jax.Array:
  """Per-image distance `kind` [B] between `embed` outputs of P's image and of the clean image.

  "prob_mse": the mean over pixels and classes of the squared difference of softmax
  probabilities (torch's MSELoss of the two softmax maps, per image); "kl": KL(q || p) of the
  clean image's per-pixel distribution q to P's p, averaged over pixels; "feature_mse": the sum
  over the named feature maps of each map's mean squared difference. "prob_mse" and "kl" also
  take bare logits [B, H, W, K].
  """
  if kind not in DISTANCES:
    raise ValueError(f"Unknown distance {kind!r} between segmenter outputs; one of {', '.join(DISTANCES)}.")
  if kind == "feature_mse":
    if not isinstance(outputs, Mapping) or not isinstance(target_outputs, Mapping):
      raise ValueError("feature_mse compares the feature maps of embed(segmenter, images); got "
                       f"{type(outputs).__name__} and {type(target_outputs).__name__}.")
    f, g = outputs["features"], target_outputs["features"]
    if set(f) != set(g):
      raise ValueError(f"Feature dicts differ: {sorted(f)} vs {sorted(g)}.")
    return losses.feature_loss(features=f, target_features=g, layers=sorted(f), distance="mse", reduction="none")
  p, q = _logits_of(outputs), _logits_of(target_outputs)
  if p.shape != q.shape or p.ndim != 4:
    raise ValueError(f"Segmenter logits must both be [B, H, W, K] of one shape; got {p.shape} and {q.shape}.")
  b, k = p.shape[0], p.shape[-1]
  per_pixel = losses.DISTANCES[kind](logits=p.reshape(-1, k), target_logits=q.reshape(-1, k), reduction="none")
  return jnp.mean(per_pixel.reshape(b, -1), axis=1)


# ==================================================================== pseudo-targets

def pseudo_targets(outputs: jax.Array, *, confidence_threshold: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """(label maps [B, H, W] int32, confidence [B]) from the segmenter's logits on the clean image.

  Each pixel's label is its argmax class; a pixel whose top softmax probability is below
  `confidence_threshold` gets IGNORE_LABEL (left out of the loss). `confidence` is the mean top
  probability over each image's pixels, so `confidence >= t` is the per-image "confidently
  recognised" filter of classification's top-1. Gradients are stopped: these are labels.
  """
  outputs = jax.lax.stop_gradient(_logits_of(outputs)).astype(jnp.float32)
  if outputs.ndim != 4:
    raise ValueError(f"pseudo_targets takes segmenter logits [B, H, W, K], got shape {outputs.shape}.")
  if not 0.0 <= confidence_threshold <= 1.0:
    raise ValueError(f"confidence_threshold={confidence_threshold} must be in [0, 1].")
  top = jnp.max(jax.nn.softmax(outputs, axis=-1), axis=-1)
  labels = jnp.argmax(outputs, axis=-1).astype(jnp.int32)
  if confidence_threshold:
    labels = jnp.where(top >= confidence_threshold, labels, IGNORE_LABEL)
  return labels, jnp.mean(top, axis=(1, 2))


# ==================================================================== metrics

def confusion_matrix(predictions: jax.Array, targets: jax.Array, num_classes: int, *,
                     mask: jax.Array | None = None) -> jax.Array:
  """[K, K] int32 pixel counts: entry [t, p] counts pixels of true class t predicted as p (jittable).

  `predictions`: label maps [B, H, W] or logits [B, H, W, K]; `targets`: [B, H, W]. Pixels whose
  target is not in [0, K) (IGNORE_LABEL) are left out, as torchvision's ConfusionMatrix does;
  `mask` [B] (0/1) leaves out whole images (the padding of a last batch). Counts are integers, so
  the matrices of batches, or of the shards of one batch, add up exactly.
  """
  if predictions.ndim == 4:
    predictions = jnp.argmax(predictions, axis=-1)
  if predictions.shape != targets.shape or predictions.ndim != 3:
    raise ValueError(f"Predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} must be label maps "
                     "[B, H, W] of one shape (or logits [B, H, W, K] for the predictions).")
  t = targets.astype(jnp.int32)
  p = predictions.astype(jnp.int32)
  counted = (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
  if mask is not None:
    counted = counted & (jnp.asarray(mask).reshape(-1, 1, 1) > 0)
  index = jnp.where(counted, t * num_classes + p, 0).reshape(-1)
  counts = jnp.zeros(num_classes * num_classes, jnp.int32).at[index].add(counted.reshape(-1).astype(jnp.int32))
  return counts.reshape(num_classes, num_classes)


def scores(matrix) -> dict[str, Any]:
  """{"miou", "iou" [K], "pixel_accuracy", "class_accuracy" [K]} of a confusion matrix (jnp or NumPy).

  IoU of class c = matrix[c, c] / (row c + column c - matrix[c, c]); classes with an empty union
  (neither present nor predicted) get NaN IoU and are left out of the mean ("miou"; torchvision's
  ConfusionMatrix would give NaN for the mean). Pixel accuracy is the trace over the total.
  """
  xp = np if isinstance(matrix, np.ndarray) else jnp
  m = matrix.astype(xp.float64 if xp is np else jnp.float32)
  tp = xp.diagonal(m)
  rows, cols = m.sum(axis=1), m.sum(axis=0)
  union = rows + cols - tp
  iou = xp.where(union > 0, tp / xp.maximum(union, 1), xp.nan)
  present = union > 0
  miou = xp.where(present.any(), xp.sum(xp.where(present, iou, 0.0)) / xp.maximum(present.sum(), 1), xp.nan)
  total = m.sum()
  return {"miou": miou, "iou": iou, "pixel_accuracy": xp.where(total > 0, tp.sum() / xp.maximum(total, 1), xp.nan),
          "class_accuracy": xp.where(rows > 0, tp / xp.maximum(rows, 1), xp.nan)}


def step_metrics(outputs, targets: jax.Array) -> dict[str, jax.Array]:
  """{"pixel_accuracy", "miou"} of a train step's logits (or `embed` outputs) against its label maps."""
  logits = _logits_of(outputs)
  s = scores(confusion_matrix(logits, targets, logits.shape[-1]))
  return {"pixel_accuracy": s["pixel_accuracy"], "miou": s["miou"]}


def metrics(outputs: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
  """Per-image figures [B] that add up over an evaluation (jittable; mIoU needs `Evaluator`):

  pixel_accuracy   the fraction of the image's labelled pixels predicted right (0 without any);
  correct_pixels, valid_pixels   its counts, whose sums give the evaluation's pixel accuracy;
  recognition_ce   pixel_ce of the logits (main head only).
  """
  logits = _logits_of(outputs)
  check_label_map(targets, image_shape=logits.shape, name="targets")
  labelled = (targets >= 0) & (targets < logits.shape[-1])
  correct = jnp.sum((jnp.argmax(logits, axis=-1) == targets) & labelled, axis=(1, 2)).astype(jnp.float32)
  valid = jnp.sum(labelled, axis=(1, 2)).astype(jnp.float32)
  return {"pixel_accuracy": correct / jnp.maximum(valid, 1.0), "correct_pixels": correct, "valid_pixels": valid,
          "recognition_ce": pixel_ce(logits=logits, labels=targets)}


def counts(outputs, targets: jax.Array, *, mask: jax.Array | None = None) -> dict[str, jax.Array]:
  """{"confusion": [K, K] int32} of a batch's logits against its label maps, images with mask 0 left
  out: what an evaluation step returns for `Evaluator.add_matrix` (jittable; under a sharded batch
  XLA sums the shards' integer counts, so the matrix is exact however the batch is split)."""
  logits = _logits_of(outputs)
  return {"confusion": confusion_matrix(logits, targets, logits.shape[-1], mask=mask)}


class Evaluator:
  """Accumulates the confusion matrix of an evaluation on the host (int64); `result()` gives the figures.

    ev = Evaluator(num_classes=21, class_names=VOC_NAMES)   # or Evaluator.for_segmenter(seg)
    for batch: ev.add(logits, targets, mask=batch["mask"])  # or ev.add_matrix(confusion matrices)
    ev.result() -> {"miou", "pixel_accuracy", "mean_class_accuracy", "num_images"}
    ev.per_class() -> {class name: {"iou", "accuracy", "pixels"}}

  Images with mask 0 (the padding of a last batch) and IGNORE_LABEL pixels count nowhere.
  `add_matrix` takes matrices made on device by `confusion_matrix` (one [K, K], or a stack [..., K,
  K] such as one per shard, which it sums): integer counts, so the result does not depend on how a
  batch was split.
  """

  def __init__(self, num_classes: int, *, class_names: Sequence[str] | None = None):
    if num_classes < 1:
      raise ValueError(f"num_classes={num_classes} must be >= 1.")
    if class_names is not None and len(class_names) != num_classes:
      raise ValueError(f"{len(class_names)} class names for {num_classes} classes.")
    self.num_classes = num_classes
    self.class_names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(num_classes))
    self.matrix = np.zeros((num_classes, num_classes), np.int64)
    self.num_images = 0
    self._matrix_fn = jax.jit(confusion_matrix, static_argnums=2)

  @classmethod
  def for_segmenter(cls, segmenter, **kwargs) -> "Evaluator":
    return cls(segmenter.num_classes, class_names=segmenter.class_names, **kwargs)

  def add(self, outputs, targets, mask=None) -> None:
    """Adds a batch: `outputs` logits [B, H, W, K] or label maps [B, H, W], `targets` [B, H, W]."""
    outputs = _logits_of(outputs)
    check_label_map(targets, num_classes=self.num_classes, name="targets")
    if outputs.ndim == 4 and outputs.shape[-1] != self.num_classes:
      raise ValueError(f"Logits of {outputs.shape[-1]} classes for an evaluator of {self.num_classes}.")
    b = targets.shape[0]
    mask = np.ones(b, np.int32) if mask is None else np.asarray(jax.device_get(mask)).reshape(-1)
    if mask.shape != (b,):
      raise ValueError(f"mask must be [B]={b} (one 0/1 per image), got shape {mask.shape}.")
    matrix = self._matrix_fn(outputs, jnp.asarray(targets), self.num_classes, mask=jnp.asarray(mask))
    self.matrix += np.asarray(jax.device_get(matrix), np.int64)
    self.num_images += int(np.sum(mask > 0))

  def add_matrix(self, matrix, num_images: int = 0) -> None:
    """Adds confusion matrices [..., K, K] (summed over leading axes) and the images they count."""
    m = np.asarray(jax.device_get(matrix))
    if m.shape[-2:] != (self.num_classes, self.num_classes):
      raise ValueError(f"Confusion matrices must be [..., {self.num_classes}, {self.num_classes}], got {m.shape}.")
    if not np.issubdtype(m.dtype, np.integer):
      raise ValueError(f"Confusion matrices must hold integer counts, got dtype {m.dtype}.")
    self.matrix += m.reshape(-1, self.num_classes, self.num_classes).astype(np.int64).sum(axis=0)
    self.num_images += int(num_images)

  def per_class(self) -> dict[str, dict[str, float]]:
    s = scores(self.matrix)
    return {name: {"iou": float(s["iou"][c]), "accuracy": float(s["class_accuracy"][c]),
                   "pixels": float(self.matrix[c].sum())} for c, name in enumerate(self.class_names)}

  def result(self) -> dict[str, float]:
    if not self.matrix.sum():
      raise ValueError("The segmentation evaluator has no labelled pixels; add() batches before result().")
    s = scores(self.matrix)
    return {"miou": float(s["miou"]), "pixel_accuracy": float(s["pixel_accuracy"]),
            "mean_class_accuracy": float(np.nanmean(s["class_accuracy"])), "num_images": float(self.num_images)}


__all__ = ["AUX_WEIGHT", "DISTANCES", "Evaluator", "IGNORE_LABEL", "LOSS_OPTIONS", "NAME", "check_label_map", "confusion_matrix", "counts",
           "dataset_targets", "distance", "embed", "features", "loss", "metrics", "pixel_ce", "pseudo_targets",
           "recognition_loss", "scores", "step_metrics", "valid_pixels"]
