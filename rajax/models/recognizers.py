"""The frozen recognition model R: a linen module, its variables and its input preprocessing.

A `Recognizer` is a pytree whose only leaves are its variables (the module, name and
normalisation constants are static), so it can be passed straight into a jitted function as an
argument: its weights become sharded inputs of the compiled program rather than constants baked
into it, and no gradient is ever taken with respect to them unless a caller asks for one.

It is always run in inference mode (BatchNorm running statistics) and takes float images in
[0, 1] shaped [B, H, W, 3]; `preprocess` applies the ImageNet mean/std normalisation.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from rajax import weights as weights_lib
from rajax.models import layers
from rajax.models import resnet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> builder(num_classes=..., dtype=..., **kwargs) -> linen module
_ARCHS: dict[str, Callable[..., nn.Module]] = {
    name: functools.partial(resnet.ResNet, **spec) for name, spec in resnet.ARCHS.items()
}


def register(name: str, builder: Callable[..., nn.Module]) -> None:
  """Adds a recognizer architecture: `builder(num_classes=..., dtype=..., **kwargs)` -> module.

  The module must accept `(images, *, train=False, features=False)` on normalised NHWC images.
  """
  _ARCHS[name] = builder


def available() -> list[str]:
  """Names accepted by `recognizer()`."""
  return sorted(_ARCHS)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["variables"],
    meta_fields=["name", "module", "mean", "std"],
)
@dataclasses.dataclass(frozen=True)
class Recognizer:
  """A frozen image classifier: call it on [B, H, W, 3] images in [0, 1] to get float32 logits."""

  name: str
  module: nn.Module
  variables: Mapping[str, Any]
  mean: tuple[float, float, float] = IMAGENET_MEAN
  std: tuple[float, float, float] = IMAGENET_STD

  @property
  def num_classes(self) -> int:
    return self.module.num_classes

  def preprocess(self, images: jax.Array) -> jax.Array:
    """[0, 1] RGB images -> the normalised input the network was trained on (float32)."""
    layers.check_images(images, who=f"recognizer {self.name!r}")
    images = images.astype(jnp.float32)
    return (images - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)

  def apply(self, variables: Mapping[str, Any], images: jax.Array, *, features: bool = False):
    """Logits [B, num_classes] (and a dict of named features if `features`) in inference mode."""
    return self.module.apply(variables, self.preprocess(images), train=False, features=features)

  def __call__(self, images: jax.Array, *, features: bool = False):
    return self.apply(self.variables, images, features=features)


def recognizer(
    name: str,
    weights: str | None = None,
    *,
    num_classes: int = 1000,
    dtype: Any = jnp.float32,
    seed: int = 0,
    **kwargs: Any,
) -> Recognizer:
  """Builds recognizer `name` with its weights.

  Args:
    name: architecture, one of `available()` (e.g. "resnet18", "resnet50").
    weights: path of a weights file (Flax msgpack); None initialises randomly, which only makes
      sense for tests and benchmarks.
    num_classes: size of the classifier head.
    dtype: compute dtype ("float32", "bfloat16", ...); parameters stay float32.
    seed: PRNG seed for a random initialisation.
    **kwargs: architecture options (e.g. `width` for ResNets).
  """
  if name not in _ARCHS:
    raise ValueError(f"Unknown recognizer {name!r}; available: {', '.join(available())}.")
  try:
    module = _ARCHS[name](num_classes=num_classes, dtype=layers.as_dtype(dtype), **kwargs)
  except TypeError as e:
    raise TypeError(f"Bad options for recognizer {name!r}: {e}") from None
  dummy = jnp.zeros((1, 32, 32, 3), jnp.float32)
  init = functools.partial(module.init, train=False)
  if weights is None:
    logging.warning("recognizer %r has random weights (weights=None): its predictions mean nothing.", name)
    # The RBG generator compiles ~3x faster on CPU than threefry, which matters for tests and benchmarks.
    variables = jax.jit(init)(jax.random.key(seed, impl="rbg"), dummy)
  else:
    template = jax.eval_shape(init, jax.random.key(0), dummy)
    variables = jax.tree.map(jnp.asarray, weights_lib.load(weights, template, what=f"recognizer {name!r}"))
  return Recognizer(name=name, module=module, variables=variables)
