"""Recognition tasks: what a recognizer's outputs mean, and how a method scores them.

A task is a module with the functions of `rajax.tasks.classification` (loss, distance,
pseudo_targets, top1, metrics): methods ask the recognizer's task for them, so they never need to
know which task the recognizer solves. A `Recognizer` names its task (`recognizer.task`).
"""

from __future__ import annotations

import types

from rajax.tasks import classification, detection

TASKS: dict[str, types.ModuleType] = {}


def register(module: types.ModuleType) -> None:
  """Adds a task module under its NAME; a second task of the same name is an error."""
  if module.NAME in TASKS:
    raise ValueError(f"Task {module.NAME!r} is registered twice.")
  TASKS[module.NAME] = module


register(classification)
register(detection)


def get(name: str) -> types.ModuleType:
  if name not in TASKS:
    raise ValueError(f"Unknown recognition task {name!r}; known: {', '.join(TASKS)}.")
  return TASKS[name]


__all__ = ["TASKS", "classification", "detection", "get", "register"]
