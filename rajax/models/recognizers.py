"""The recognition model R: a linen module, its variables, its input preprocessing and its task.

A `Recognizer` is a pytree whose only leaves are its variables (the module, name and
normalisation constants are static), so it can be passed straight into a jitted function as an
argument: its weights become sharded inputs of the compiled program rather than constants baked
into it, and no gradient is ever taken with respect to them unless a caller asks for one.

Called, it runs in inference mode (BatchNorm running statistics) on float images in [0, 1] shaped
[B, H, W, 3]; `preprocess` applies the normalisation its weights expect. A method that trains R
keeps R's variables in its train state and runs it with `apply_train` (batch statistics, dropout).
`task` names what its outputs mean (`rajax.tasks`: "classification" for these families).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from rajax import weights as weights_lib
from rajax.models import layers
from rajax.models import densenet, efficientnet, mobilenet, resnet, vgg
from rajax.weights import bundled

_FAMILIES = (resnet, vgg, densenet, mobilenet, efficientnet)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained in TensorFlow on (x - 127) / 128 for x in [0, 255]; its weights give
# clearly more confident (and more often correct) predictions with that input than with mean/std.
LITE_MEAN, LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3
_NORMALISATION = {"efficientnet_lite0": (LITE_MEAN, LITE_STD)}


@dataclasses.dataclass(frozen=True)
class Arch:
  """A recognizer architecture: its module class and options, and how its torch weights map to it."""

  module: Callable[..., nn.Module]        # module(num_classes=..., dtype=..., **options)
  options: Mapping[str, Any]
  torch_key: Callable[[str], str] | None   # Flax module path -> torch module prefix (None: no torch layout)
  rename_torch_keys: Callable[[dict], dict] | None = None   # old torch key layouts -> the current one
  mean: tuple[float, float, float] = IMAGENET_MEAN   # input normalisation the weights expect
  std: tuple[float, float, float] = IMAGENET_STD
  task: str = "classification"             # what its outputs are (rajax.tasks)


_ARCHS: dict[str, Arch] = {}


def register(name: str, module: Callable[..., nn.Module], options: Mapping[str, Any] | None = None, *,
             torch_key: Callable[[str], str] | None = None, rename_torch_keys: Callable[[dict], dict] | None = None,
             mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD,
             task: str = "classification") -> None:
  """Adds a recognizer architecture.

  `module(num_classes=..., dtype=..., **options, **user_kwargs)` must return a linen module
  accepting `(images, *, train=False, features=False)` on normalised NHWC images. `torch_key`
  maps a Flax module path to the torch module prefix, so torch checkpoints can be read, after
  `rename_torch_keys` has brought older key layouts up to date; `mean` and
  `std` are the input normalisation the architecture's weights expect; `task` what its outputs are.
  """
  if name in _ARCHS:
    raise ValueError(f"Recognizer {name!r} is registered twice.")
  _ARCHS[name] = Arch(module, dict(options or {}), torch_key, rename_torch_keys, mean, std, task)


for _family in _FAMILIES:
  for _name, _options in _family.ARCHS.items():
    _mean, _std = _NORMALISATION.get(_name, (IMAGENET_MEAN, IMAGENET_STD))
    register(_name, _family.MODULE, _options, torch_key=_family.torch_key,
             rename_torch_keys=_family.rename_torch_keys, mean=_mean, std=_std)


def available(task: str | None = None) -> list[str]:
  """Names accepted by `recognizer()`: the classifiers, the detectors (`rajax.detection.zoo`) and the
  segmenters (`rajax.segmentation.zoo`); with `task` ("classification", "detection", "segmentation")
  those of that task only."""
  from rajax.detection import zoo
  from rajax.segmentation import zoo as seg_zoo
  names = {**{n: a.task for n, a in _ARCHS.items()}, **{n: "detection" for n in zoo.available()},
           **{n: "segmentation" for n in seg_zoo.available()}}
  return sorted(n for n, t in names.items() if task is None or t == task)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["variables"],
    meta_fields=["name", "module", "mean", "std", "task"],
)
@dataclasses.dataclass(frozen=True)
class Recognizer:
  """An image recognizer: call it on [B, H, W, 3] images in [0, 1] to get its float32 outputs (logits)."""

  name: str
  module: nn.Module
  variables: Mapping[str, Any]
  mean: tuple[float, float, float] = IMAGENET_MEAN
  std: tuple[float, float, float] = IMAGENET_STD
  task: str = "classification"

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

  def apply_train(self, variables: Mapping[str, Any], images: jax.Array, *, rng: jax.Array | None = None):
    """(logits, updated batch_stats) in training mode: BatchNorm on batch statistics, dropout from `rng`."""
    rngs = {"dropout": rng} if rng is not None else {}
    logits, updates = self.module.apply(variables, self.preprocess(images), train=True, mutable=["batch_stats"],
                                        rngs=rngs)
    return logits, updates.get("batch_stats", {})

  def replace(self, **changes) -> "Recognizer":
    """A copy with `changes` (e.g. `variables=` trained ones)."""
    return dataclasses.replace(self, **changes)


# Built recognizers, by what built them (name, the weights file's path, size and modification time, options):
# the evaluation suite asks for the same few recognizers for every table, and each build traces the
# network and reads its weights (a second or more). A Recognizer is immutable and its variables are
# jax arrays, so the cached one is shared; a rewritten weights file is a new key.
_BUILT: collections.OrderedDict = collections.OrderedDict()
BUILD_CACHE_SIZE = 6


def _build_key(name, weights, num_classes, dtype, seed, kwargs):
  """The cache key of a build, or None when one of its arguments cannot be a key (then it is built anew)."""
  if weights == "random":
    where = weights
  else:
    try:
      path = bundled.bundled_path(name) if weights is None and name in bundled.BUNDLED else weights
      st = os.stat(path)
    except Exception:   # no such file, no bundled weights, ...: the builder names the problem
      return None
    where = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
  key = (name, where, num_classes, str(dtype), seed, tuple(sorted(kwargs.items())))
  try:
    hash(key)
  except TypeError:
    return None
  return key


def clear_cache() -> None:
  """Forgets the recognizers built so far (`recognizer` builds the next ones anew)."""
  _BUILT.clear()


def recognizer(
    name: str,
    weights: str | None = None,
    *,
    num_classes: int | None = None,
    dtype: Any = jnp.float32,
    seed: int = 0,
    **kwargs: Any,
) -> Recognizer:
  """Builds recognizer `name` with its weights (see `build`), or returns the same one built before with
  the same arguments and an unchanged weights file (the last BUILD_CACHE_SIZE builds are kept)."""
  key = _build_key(name, weights, num_classes, dtype, seed, kwargs)
  if key is not None and key in _BUILT:
    _BUILT.move_to_end(key)
    return _BUILT[key]
  out = build(name, weights, num_classes=num_classes, dtype=dtype, seed=seed, **kwargs)
  if key is not None:
    _BUILT[key] = out
    while len(_BUILT) > BUILD_CACHE_SIZE:
      _BUILT.popitem(last=False)
  return out


def build(
    name: str,
    weights: str | None = None,
    *,
    num_classes: int | None = None,
    dtype: Any = jnp.float32,
    seed: int = 0,
    **kwargs: Any,
) -> Recognizer:
  """Builds recognizer `name` with its weights, ready to call on [B, H, W, 3] images in [0, 1].

  Args:
    name: architecture, one of `available()` (e.g. "resnet50", "mobilenet_v2", "efficientnet_lite0").
    weights: None for the pretrained weights that ship with rajax (mobilenet_v2, efficientnet_lite0;
      an error names what to pass for the others); a file path: a torchvision-layout PyTorch
      checkpoint (.pth/.pt, zip or legacy format), a .safetensors file, or Flax variables (.msgpack,
      e.g. from `python -m rajax.weights convert`); or "random" for a random initialisation, which
      only makes sense for tests and benchmarks.
    num_classes: size of the classifier head (None: 1000; for a detector, its own default, e.g.
      torchvision's 91 COCO ids).
    dtype: compute dtype ("float32", "bfloat16", ...); parameters stay float32.
    seed: PRNG seed for a random initialisation.
    **kwargs: architecture options (e.g. `width` for ResNets).
  """
  if name not in _ARCHS:
    from rajax.detection import zoo  # detectors: rajax.detection.zoo builds them as Detectors
    from rajax.segmentation import zoo as seg_zoo  # segmenters: rajax.segmentation.zoo, as Segmenters
    extra = {} if num_classes is None else {"num_classes": num_classes}
    if name in zoo.available():
      return zoo.build(name, weights, dtype=dtype, seed=seed, **extra, **kwargs)
    if name in seg_zoo.available():
      return seg_zoo.build(name, weights, dtype=dtype, seed=seed, **extra, **kwargs)
    raise ValueError(f"Unknown recognizer {name!r}; available: {', '.join(available())}.")
  num_classes = 1000 if num_classes is None else num_classes
  arch = _ARCHS[name]
  try:
    module = arch.module(num_classes=num_classes, dtype=layers.as_dtype(dtype), **{**arch.options, **kwargs})
  except TypeError as e:
    raise TypeError(f"Bad options for recognizer {name!r}: {e}") from None
  dummy = jnp.zeros((1, 32, 32, 3), jnp.float32)
  init = functools.partial(module.init, train=False)
  if weights == "random":
    logging.warning("recognizer %r has random weights (weights='random'): its predictions mean nothing.", name)
    # The RBG generator compiles ~3x faster on CPU than threefry, which matters for tests and benchmarks.
    variables = jax.jit(init)(jax.random.key(seed, impl="rbg"), dummy)
    return Recognizer(name=name, module=module, variables=variables, mean=arch.mean, std=arch.std, task=arch.task)
  if weights is None:
    weights = bundled.bundled_path(name)
    if num_classes != 1000 or kwargs:
      raise ValueError(f"The bundled weights of {name!r} are for the standard 1000-class architecture; "
                       f"drop num_classes/options {sorted(kwargs)} or pass weights=PATH.")
  template = jax.eval_shape(init, jax.random.key(0), dummy)
  variables = weights_lib.load(weights, template, what=f"recognizer {name!r}", torch_key=arch.torch_key,
                               rename_torch_keys=arch.rename_torch_keys)
  return Recognizer(name=name, module=module, variables=jax.tree.map(jnp.asarray, variables), mean=arch.mean,
                    std=arch.std, task=arch.task)
