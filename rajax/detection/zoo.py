"""The detector zoo: `rajax.recognizer(name, weights=...)` builds these names as `Detector`s.

Each family module exposes `ARCHS: dict[str, dict]` (name -> options) and
`build(name, weights, *, num_classes, dtype, seed, **options) -> Detector`; the list below is the
explicit registry (a name in two families is an error).
"""

from __future__ import annotations

from typing import Any

from rajax import families

# Family modules, imported on first use (their model code is not needed to build a classifier).
_FAMILIES: tuple[str, ...] = ("rajax.detection.faster_rcnn", "rajax.detection.fcos", "rajax.detection.centernet",
                             "rajax.detection.nanodet")


def _archs() -> dict[str, Any]:
  return families.archs(_FAMILIES, "Detector")


def available() -> list[str]:
  return sorted(_archs())


def build(name: str, weights: str | None = None, **kwargs: Any):
  return families.build(_FAMILIES, "Detector", name, weights, **kwargs)
