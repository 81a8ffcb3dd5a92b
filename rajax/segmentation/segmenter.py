"""A segmenter as a recognizer: the object methods, the segmentation task and the evaluation suite call.

A `Segmenter` is to segmentation what `rajax.detection.detector.Detector` is to detection: a pytree
whose only data is its variables (passed to jitted functions as an argument, so its parameters can
be trained or differentiated), with the architecture held by a hashable `model` of pure functions.
Every segmenter family (torchvision's DeepLabV3 / LR-ASPP / FCN, HRNet, the TF.js person
segmenters, ...) provides such a model:

  model.logits(variables, images, *, train, rng) -> ({"out": [B, H, W, K], "aux": ... (where the
                                                    model has an auxiliary head)}, batch_stats)
  model.features(variables, images)              -> {name: [B, h, w, c]} named feature maps
  model.num_classes, model.class_names, model.ignore_label (255)

`images` are [B, H, W, 3] in [0, 1]; the logits come back at the images' own H x W (the model
upsamples its output as the original does) and are float32. The model does its own normalisation.
`train=True` runs BatchNorm in training mode and returns its updated statistics (`{}` otherwise or
where the model has none); `rng` drives dropout.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Protocol

import jax

IGNORE_LABEL = 255   # pixels with this label are left out of the loss and of the confusion matrix


class SegmenterModel(Protocol):
  num_classes: int
  class_names: tuple[str, ...]

  def logits(self, variables: Mapping[str, Any], images: jax.Array, *, train: bool = False,
             rng: jax.Array | None = None) -> tuple[dict[str, jax.Array], Mapping[str, Any]]: ...

  def features(self, variables: Mapping[str, Any], images: jax.Array) -> dict[str, jax.Array]: ...


@functools.partial(jax.tree_util.register_dataclass, data_fields=["variables"], meta_fields=["name", "model", "task"])
@dataclasses.dataclass(frozen=True)
class Segmenter:
  """A segmenter with its variables: `segmenter(images)` gives its main head's logits [B, H, W, K]
  in inference mode."""

  name: str
  model: Any  # a SegmenterModel; hashable (it is static under jit)
  variables: Mapping[str, Any]
  task: str = "segmentation"

  @property
  def num_classes(self) -> int:
    return self.model.num_classes

  @property
  def class_names(self) -> tuple[str, ...]:
    return self.model.class_names

  def apply(self, variables: Mapping[str, Any], images: jax.Array) -> jax.Array:
    return self.model.logits(variables, images, train=False)[0]["out"]

  def __call__(self, images: jax.Array) -> jax.Array:
    return self.apply(self.variables, images)

  def heads(self, images: jax.Array, *, variables: Mapping[str, Any] | None = None, train: bool = False,
            rng: jax.Array | None = None) -> tuple[dict[str, jax.Array], Mapping[str, Any]]:
    """({"out": logits, and "aux" where the model has one}, updated batch_stats)."""
    return self.model.logits(self.variables if variables is None else variables, images, train=train, rng=rng)

  def features(self, images: jax.Array, variables: Mapping[str, Any] | None = None) -> dict[str, jax.Array]:
    return self.model.features(self.variables if variables is None else variables, images)

  def replace(self, **changes) -> "Segmenter":
    return dataclasses.replace(self, **changes)


__all__ = ["IGNORE_LABEL", "Segmenter", "SegmenterModel"]
