"""Recognition tasks: what a recognizer's outputs mean, and how a method scores them.

A task is a module with the functions of `rajax.tasks.classification`: `dataset_targets(batch)`,
`pseudo_targets(outputs)` (targets from R's output on the clean image, with a confidence),
`recognition_loss(recognizer, images, targets, ...)` (R's own training loss, per example, in
inference or training mode), `embed` and `distance` (what unsupervised RA compares),
`step_metrics` (what a train step logs) and `metrics` (per-example evaluation figures). Methods ask
the recognizer's task for them, so they never need to know which task the recognizer solves. A
recognizer names its task (`recognizer.task`).
"""

from __future__ import annotations

import types

from rajax.tasks import classification, detection, segmentation

TASKS: dict[str, types.ModuleType] = {}


def register(module: types.ModuleType) -> None:
  """Adds a task module under its NAME; a second task of the same name is an error."""
  if module.NAME in TASKS:
    raise ValueError(f"Task {module.NAME!r} is registered twice.")
  TASKS[module.NAME] = module


register(classification)
register(detection)
register(segmentation)


def of_recognizer(name: str) -> types.ModuleType:
  """The task of the zoo recognizer called `name` (detectors: rajax.detection.zoo; segmenters:
  rajax.segmentation.zoo; else classification)."""
  from rajax.detection import zoo
  from rajax.segmentation import zoo as seg_zoo
  if name in zoo.available():
    return detection
  return segmentation if name in seg_zoo.available() else classification


def get(name: str) -> types.ModuleType:
  if name not in TASKS:
    raise ValueError(f"Unknown recognition task {name!r}; known: {', '.join(TASKS)}.")
  return TASKS[name]


__all__ = ["TASKS", "classification", "detection", "get", "of_recognizer", "register", "segmentation"]
