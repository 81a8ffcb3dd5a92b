"""Training methods as plug-ins: an explicit registry of `MethodSpec`s, one module per family.

    ra.py            plain, ra, unsupervised, transformer (the paper's four methods)
    alternatives.py  the paper's Appendix A: R fine-tuned jointly with P, R trained on a fixed P's
                     outputs or on the degraded inputs, RA without the pixel loss, a VGG perceptual loss
    sr4ir.py         SR4IR: S and T trained in turn (TDP loss, CQMix)
    npp.py           NPP: a pre-processor before a real codec, trained through a proxy codec; the proxy's training
    vrdir.py         VRD-IR: a decoder, then a feature enhancer, in a frozen recognizer's early feature space

A method declares the networks it trains and the ones it uses frozen, its `config.method` fields
and their validation, and builds a `Method` (init, train_step, forward) for a configuration; see
`rajax.methods.base`. Everything outside this package (the trainer, the evaluation suite, the demo,
the bench) goes through `get(name)` and `build(...)`, never through a method's name.

Adding a method: write a module with its `MethodSpec`s, add one line to `_FAMILIES`, and a config.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from rajax.methods import alternatives, npp, ra, sr4ir, vrdir
from rajax.methods.base import (FrozenNetwork, Method, MethodSpec, Setup, TrainState, apply_eval, apply_train,
                                evaluation_recognizer, make_eval_step, make_predict_step, to_float_images,
                                with_input)


def _registry(families: Iterable[Mapping[str, MethodSpec]]) -> dict[str, MethodSpec]:
  out: dict[str, MethodSpec] = {}
  for family in families:
    for name, spec in family.items():
      if name in out:
        raise ValueError(f"Method {name!r} is registered twice.")
      if spec.name != name:
        raise ValueError(f"Method registered as {name!r} calls itself {spec.name!r}.")
      out[name] = spec
  return out


_FAMILIES = (ra.METHODS, alternatives.METHODS, sr4ir.METHODS, npp.METHODS, vrdir.METHODS)
METHODS: dict[str, MethodSpec] = _registry(_FAMILIES)


def get(name: str) -> MethodSpec:
  """The registry entry of method `name`."""
  if name not in METHODS:
    raise ValueError(f"Unknown method {name!r}; one of {', '.join(METHODS)}.")
  return METHODS[name]


def names() -> list[str]:
  return list(METHODS)


def build(setup: Setup) -> Method:
  """The method `setup.config.method.name` for that configuration and those networks."""
  return get(setup.config.method.name).make(setup)


__all__ = [
    "FrozenNetwork", "METHODS", "Method", "MethodSpec", "Setup", "TrainState", "apply_eval", "apply_train", "build",
    "evaluation_recognizer", "get", "make_eval_step", "make_predict_step", "names", "to_float_images", "with_input",
]
