"""Registries of model families (the detector and segmenter zoos).

A family is a module with `ARCHS: dict[str, dict]` (name -> options) and
`build(name, weights, **kwargs)`; a zoo lists its families' module paths and imports them on first
use, so their model code is not loaded to build a classifier.
"""

from __future__ import annotations

import importlib
from typing import Any, Sequence


def archs(families: Sequence[str], kind: str) -> dict[str, Any]:
  """{name: family module} over `families`; a name in two families is an error."""
  found: dict[str, Any] = {}
  for path in families:
    module = importlib.import_module(path)
    for name in module.ARCHS:
      if name in found:
        raise ValueError(f"{kind} {name!r} is registered by both {found[name].__name__} and {path}.")
      found[name] = module
  return found


def build(families: Sequence[str], kind: str, name: str, weights: str | None = None, **kwargs: Any):
  """The model `name` of one of `families`, built by its family's `build`."""
  found = archs(families, kind)
  if name not in found:
    raise ValueError(f"Unknown {kind.lower()} {name!r}; available: {', '.join(sorted(found)) or 'none'}.")
  return found[name].build(name, weights, **kwargs)
