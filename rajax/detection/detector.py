"""A detector as a recognizer: the object methods, the detection task and the evaluation suite call.

A `Detector` is to detection what `rajax.models.recognizers.Recognizer` is to classification: a
pytree whose only data is its variables (so it is passed to jitted functions as an argument and
its parameters can be trained or differentiated), with the architecture held by a hashable
`model` of pure functions. Every detector family (torchvision's Faster R-CNN and FCOS, the TF.js
CenterNet and NanoDet, ...) provides such a model:

  model.detect(variables, images)                      -> Detections (inference mode)
  model.loss(variables, images, targets, *, rng, train) -> (per_image [B], terms {name: [B]}, batch_stats)
  model.features(variables, images)                    -> {name: [B, h, w, c]} named feature maps
  model.num_classes, model.class_names, model.background

`images` are [B, H, W, 3] in [0, 1] at the batch's static size; boxes in and out are pixels of
those images. The model does its own normalisation (and its own resize, where the original
resizes). `loss` is the detector's own training loss, split per image so that its mean over the
batch equals the original implementation's batch loss (a term the original normalises by a
count over the batch, such as sampled anchors, is divided by that same count here and multiplied
by B); `train=True` runs BatchNorm in training mode and returns its updated statistics (frozen
BatchNorm layers, as in torchvision's detectors, return none). `rng` drives the samplers.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Protocol

import jax

from rajax.detection.types import BoxTargets, Detections


class DetectorModel(Protocol):
  num_classes: int            # size of the label space, background included where there is one
  class_names: tuple[str, ...]
  background: bool            # True when label 0 is "background" (torchvision), False for COCO-80 heads

  def detect(self, variables: Mapping[str, Any], images: jax.Array) -> Detections: ...

  def loss(self, variables: Mapping[str, Any], images: jax.Array, targets: BoxTargets, *,
           rng: jax.Array | None, train: bool) -> tuple[jax.Array, dict[str, jax.Array], Mapping[str, Any]]: ...

  def features(self, variables: Mapping[str, Any], images: jax.Array) -> dict[str, jax.Array]: ...


@functools.partial(jax.tree_util.register_dataclass, data_fields=["variables"], meta_fields=["name", "model", "task"])
@dataclasses.dataclass(frozen=True)
class Detector:
  """A detector with its variables: `detector(images)` gives its Detections in inference mode."""

  name: str
  model: Any  # a DetectorModel; hashable (it is static under jit)
  variables: Mapping[str, Any]
  task: str = "detection"

  @property
  def num_classes(self) -> int:
    return self.model.num_classes

  @property
  def class_names(self) -> tuple[str, ...]:
    return self.model.class_names

  def apply(self, variables: Mapping[str, Any], images: jax.Array) -> Detections:
    return self.model.detect(variables, images)

  def __call__(self, images: jax.Array) -> Detections:
    return self.apply(self.variables, images)

  def loss(self, images: jax.Array, targets: BoxTargets, *, rng: jax.Array | None = None,
           variables: Mapping[str, Any] | None = None, train: bool = False):
    """(per-image loss [B], {term: [B]}, updated batch_stats): the detector's own training loss."""
    return self.model.loss(self.variables if variables is None else variables, images, targets, rng=rng, train=train)

  def features(self, images: jax.Array, variables: Mapping[str, Any] | None = None) -> dict[str, jax.Array]:
    return self.model.features(self.variables if variables is None else variables, images)

  def replace(self, **changes) -> "Detector":
    return dataclasses.replace(self, **changes)
