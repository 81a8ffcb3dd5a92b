"""The segmenter zoo: `rajax.recognizer(name, weights=...)` builds these names as `Segmenter`s.

Each family module exposes `ARCHS: dict[str, dict]` (name -> options) and
`build(name, weights, *, num_classes, dtype, seed, **options) -> Segmenter`; the list below is the
explicit registry (a name in two families is an error).
"""

from __future__ import annotations

from typing import Any

from rajax import families

# Family modules, imported on first use (their model code is not needed to build a classifier).
_FAMILIES: tuple[str, ...] = ("rajax.segmentation.hrnet", "rajax.segmentation.person",
                             "rajax.segmentation.torchvision_seg")


def _archs() -> dict[str, Any]:
  return families.archs(_FAMILIES, "Segmenter")


def available() -> list[str]:
  return sorted(_archs())


def build(name: str, weights: str | None = None, **kwargs: Any):
  return families.build(_FAMILIES, "Segmenter", name, weights, **kwargs)
