"""The segmenter zoo: `rajax.recognizer(name, weights=...)` builds these names as `Segmenter`s.

Each family module exposes `ARCHS: dict[str, dict]` (name -> options) and
`build(name, weights, *, num_classes, dtype, seed, **options) -> Segmenter`; the list below is the
explicit registry (a name in two families is an error).
"""

from __future__ import annotations

import importlib
from typing import Any

# Family modules, imported on first use (their model code is not needed to build a classifier).
_FAMILIES: tuple[str, ...] = ("rajax.segmentation.hrnet", "rajax.segmentation.person")


def _archs() -> dict[str, Any]:
  found: dict[str, Any] = {}
  for path in _FAMILIES:
    module = importlib.import_module(path)
    for name in module.ARCHS:
      if name in found:
        raise ValueError(f"Segmenter {name!r} is registered by both {found[name].__name__} and {path}.")
      found[name] = module
  return found


def available() -> list[str]:
  return sorted(_archs())


def build(name: str, weights: str | None = None, **kwargs: Any):
  archs = _archs()
  if name not in archs:
    raise ValueError(f"Unknown segmenter {name!r}; available: {', '.join(sorted(archs)) or 'none'}.")
  return archs[name].build(name, weights, **kwargs)
