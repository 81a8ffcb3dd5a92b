"""Flax linen models: processors P (and the transformer T) and recognizers R."""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import linen as nn

from rajax.models.edsr import EDSR
from rajax.models.layers import as_dtype
from rajax.models.npp import NPPProcessor
from rajax.models.recognizers import IMAGENET_MEAN, IMAGENET_STD, Recognizer, recognizer
from rajax.models.srresnet import SRResNet
from rajax.models.resnet_generator import ResnetGenerator
from rajax.models.swinir import SwinIR
from rajax.models.vrdir import VRDIR

PROCESSORS: dict[str, type[nn.Module]] = {
    "srresnet": SRResNet,
    "resnet_generator": ResnetGenerator,
    "edsr": EDSR,
    "swinir": SwinIR,
    "npp": NPPProcessor,
    "vrdir": VRDIR,      # reads a recognizer's early features, not images (rajax.methods.vrdir)
}


def processor(name: str, **kwargs: Any) -> nn.Module:
  """Returns processing model `name` (a linen module) configured by `kwargs`.

  Every processor maps [B, h, w, 3] images in [0, 1] to float32 images in [0, 1]. `dtype` (a string
  or dtype) sets the compute dtype; parameters are float32. Example:
  `rajax.processor("srresnet", scale=4, blocks=5, dtype="bfloat16")`.
  """
  if name not in PROCESSORS:
    raise ValueError(f"Unknown processor {name!r}; available: {', '.join(sorted(PROCESSORS))}.")
  cls = PROCESSORS[name]
  fields = [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]
  unknown = sorted(set(kwargs) - set(fields))
  if unknown:
    raise TypeError(f"Processor {name!r} has no option(s) {unknown}; its options are {fields}.")
  if "dtype" in kwargs:
    kwargs["dtype"] = as_dtype(kwargs["dtype"])
  return cls(**kwargs)


__all__ = [
    "EDSR", "IMAGENET_MEAN", "NPPProcessor", "IMAGENET_STD", "PROCESSORS", "Recognizer", "ResnetGenerator", "SRResNet", "SwinIR",
    "processor", "recognizer",
]
