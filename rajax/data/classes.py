"""ImageNet-1k class names and WordNet ids, offline, in the standard (sorted wnid) order.

    rajax.data.imagenet_classes()[967]  -> "espresso"
    rajax.data.imagenet_wnids()[967]    -> "n07920052"

The list ships with rajax (`imagenet_classes.txt`: "<wnid>\t<name>" per line), made by
tests/reference/make_reference.py from tensorflow-datasets' imagenet2012 labels and torchvision's
category names.
"""

from __future__ import annotations

import functools
import importlib.resources


@functools.cache
def _table() -> tuple[tuple[str, ...], tuple[str, ...]]:
  text = importlib.resources.files("rajax.data").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
  rows = [line.split("\t") for line in text.splitlines() if line.strip()]
  if len(rows) != 1000 or any(len(r) != 2 for r in rows):
    raise RuntimeError("rajax/data/imagenet_classes.txt is damaged: expected 1000 '<wnid>\\t<name>' lines. "
                       "Reinstall rajax.")
  return tuple(r[0] for r in rows), tuple(r[1] for r in rows)


def imagenet_classes() -> tuple[str, ...]:
  """The 1000 human-readable ImageNet class names; index i is the name of label i."""
  return _table()[1]


def imagenet_wnids() -> tuple[str, ...]:
  """The 1000 ImageNet WordNet ids (n01440764, ...); index i is the wnid of label i."""
  return _table()[0]


def class_name(label: int) -> str:
  """The name of ImageNet label `label` (0..999)."""
  names = imagenet_classes()
  if not 0 <= int(label) < len(names):
    raise ValueError(f"ImageNet label {label} is out of range [0, {len(names)}).")
  return names[int(label)]
