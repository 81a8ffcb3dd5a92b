"""A tiny segmenter of the `rajax.segmentation.SegmenterModel` contract, for specifying how the
segmentation task, methods and evaluation treat segmenters without compiling a real one.

    images [B, H, W, 3] in [0, 1] -> x * 2 - 1
    conv1   3x3, 8 channels, BatchNorm, ReLU                 ("conv1", full resolution)
    conv2   3x3 stride 2, 8 channels, ReLU                   ("conv2", half resolution)
    head    1x1 -> K, bilinear upsampling to H x W           ("out")
    aux     1x1 on conv1 -> K (the "toy_segmenter" only)     ("aux")

Random weights; registered in the zoo only by the tests that monkeypatch `_FAMILIES`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from rajax.segmentation.segmenter import IGNORE_LABEL, Segmenter


class _Net(nn.Module):
  num_classes: int
  aux: bool

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    b, h, w, _ = images.shape
    f1 = nn.Conv(8, (3, 3), padding=1, name="conv1")(images * 2.0 - 1.0)
    f1 = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(f1))
    f2 = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2), padding=1, name="conv2")(f1))
    out = nn.Conv(self.num_classes, (1, 1), name="head")(f2)
    heads = {"out": jax.image.resize(out, (b, h, w, self.num_classes), "bilinear")}
    if self.aux:
      heads["aux"] = nn.Conv(self.num_classes, (1, 1), name="aux_head")(f1)
    return heads, {"conv1": f1, "conv2": f2}


@dataclasses.dataclass(frozen=True)
class ToyModel:
  num_classes: int = 3
  aux: bool = True
  ignore_label: int = IGNORE_LABEL

  @property
  def class_names(self):
    return ("background",) + tuple(f"class{i}" for i in range(1, self.num_classes))

  @property
  def net(self):
    return _Net(self.num_classes, self.aux)

  def logits(self, variables, images, *, train=False, rng=None):
    del rng
    if train:
      (heads, _), updates = self.net.apply(variables, images, train=True, mutable=["batch_stats"])
      return heads, updates["batch_stats"]
    return self.net.apply(variables, images)[0], {}

  def features(self, variables, images):
    return self.net.apply(variables, images)[1]


ARCHS = {"toy_segmenter": {"aux": True}, "toy_segmenter_noaux": {"aux": False}}


def build(name, weights=None, *, num_classes=3, dtype=None, seed=0, **options):
  """Random weights (None or "random"), or a .msgpack of Flax variables (a run that trained it)."""
  del dtype, options
  model = ToyModel(num_classes=num_classes, aux=ARCHS[name]["aux"])
  variables = jax.jit(model.net.init)(jax.random.PRNGKey(seed), jnp.zeros((1, 16, 16, 3)))
  if weights not in (None, "random"):
    from rajax import weights as weights_lib
    if not str(weights).endswith(".msgpack"):
      raise ValueError(f"{name} has random weights or a .msgpack of its variables, not {weights}")
    variables = jax.tree.map(jnp.asarray, weights_lib.load(weights, variables, what=name))
  return Segmenter(name=name, model=model, variables=variables)
