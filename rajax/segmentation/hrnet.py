"""HRNet-W48 for semantic segmentation (HRNetV2, the paper's Cityscapes model), reading the official checkpoints.

    seg = rajax.recognizer("hrnet_w48", weights="hrnet_w48_cityscapes_cls19_1024x2048_trainset.pth")
    logits = seg(images)                      # images [B, H, W, 3] in [0, 1] -> [B, H, W, 19]

The architecture of HRNet-Semantic-Segmentation's `seg_hrnet.py` with the w48 config
(experiments/cityscapes/seg_hrnet_w48_*.yaml), in Flax with NHWC tensors:

  stem      conv1 3x3/2 (3 -> 64), bn1, relu, conv2 3x3/2 (64 -> 64), bn2, relu
  layer1    4 Bottlenecks (planes 64, out 256; the first with a 1x1 downsample)
  stage 2-4 1, 4 and 3 HighResolutionModules over 2, 3 and 4 branches of widths 48, 96, 192, 384
            (strides 4, 8, 16, 32), 4 BasicBlocks per branch; each module then fuses every branch
            into every other: higher resolutions by 3x3/2 conv chains (BN, ReLU between), lower ones
            by a 1x1 conv, BN and bilinear upsampling; the sum through a ReLU
  transitions before each stage: a 3x3 conv to the first width (256 -> 48), and a new branch from
            the lowest resolution by a 3x3/2 conv, BN, ReLU
  head      the four branches upsampled to stride 4 and concatenated (720 channels),
            last_layer: 1x1 conv 720 -> 720 (bias), BN, ReLU, 1x1 conv 720 -> 19 (bias)

Bilinear resizes follow torch's F.interpolate(mode="bilinear", align_corners=False), the w48
config's ALIGN_CORNERS; the logits are upsampled the same way from stride 4 to the image size (as
the official evaluation does). Input: RGB normalised by the ImageNet mean and std (the official
data pipeline's BGR -> RGB, / 255, - mean, / std). BatchNorm eps 1e-5, momentum 0.1.

Every Flax submodule is named by its torch module path ("stage3.2.fuse_layers.2.0.1", ...), so
`torch_key` is the identity and a checkpoint reads by name. The official checkpoints are saved from
the training wrapper (`FullModel`): keys carry a "model." prefix and the loss's class weights come
as "loss.criterion.weight"; `rename_torch_keys` strips the one and drops the other (a bare
`model.state_dict()` reads as it is).

`build` takes smaller variants for tests and experiments: `stem_width` (64), `stage1_blocks` (4),
`widths` ((48, 96, 192, 384)), `modules` ((1, 4, 3) for stages 2-4), `blocks` (4 per branch).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rajax.models import layers
from rajax.models.tfjs_graph import resize_bilinear
from rajax.segmentation.segmenter import IGNORE_LABEL, Segmenter

CITYSCAPES19 = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                "bicycle")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHS: dict[str, dict[str, Any]] = {"hrnet_w48": {}}
_BN_MOMENTUM = 0.1


def resize(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """torch's F.interpolate(x, size, mode="bilinear", align_corners=False) on NHWC `x` (no antialias)."""
  if tuple(x.shape[1:3]) == tuple(size):
    return x
  return resize_bilinear(x, tuple(size), half_pixel_centers=True)


class HRNet(nn.Module):
  """HighResolutionNet (seg_hrnet.py): logits at stride 4 and the named feature maps (see the module docstring)."""

  num_classes: int = 19
  stem_width: int = 64
  stage1_blocks: int = 4
  widths: tuple[int, ...] = (48, 96, 192, 384)
  modules: tuple[int, ...] = (1, 4, 3)
  blocks: int = 4
  final_kernel: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    def conv(name, y, out, k=3, stride=1, bias=False):
      pad = k // 2
      return nn.Conv(out, (k, k), (stride, stride), padding=((pad, pad), (pad, pad)), use_bias=bias,
                     dtype=self.dtype, name=name)(y)

    def bn(name, y):
      return nn.BatchNorm(use_running_average=not train, momentum=1 - _BN_MOMENTUM, epsilon=1e-5,
                          dtype=self.dtype, name=name)(y)

    relu = nn.relu

    def bottleneck(name, y, planes, downsample):
      r = y
      out = relu(bn(f"{name}.bn1", conv(f"{name}.conv1", y, planes, k=1)))
      out = relu(bn(f"{name}.bn2", conv(f"{name}.conv2", out, planes)))
      out = bn(f"{name}.bn3", conv(f"{name}.conv3", out, planes * 4, k=1))
      if downsample:
        r = bn(f"{name}.downsample.1", conv(f"{name}.downsample.0", y, planes * 4, k=1))
      return relu(out + r)

    def basic(name, y, planes):
      out = relu(bn(f"{name}.bn1", conv(f"{name}.conv1", y, planes)))
      out = bn(f"{name}.bn2", conv(f"{name}.conv2", out, planes))
      return relu(out + y)

    def module(name, xs):
      n = len(xs)
      xs = [functools.reduce(lambda y, b: basic(f"{name}.branches.{i}.{b}", y, self.widths[i]), range(self.blocks), x)
            for i, x in enumerate(xs)]
      fused = []
      for i in range(n):
        total = None
        for j in range(n):
          if j == i:
            y = xs[j]
          elif j > i:
            y = bn(f"{name}.fuse_layers.{i}.{j}.1", conv(f"{name}.fuse_layers.{i}.{j}.0", xs[j], self.widths[i], k=1))
            y = resize(y, xs[i].shape[1:3])
          else:
            y = xs[j]
            for k in range(i - j):
              last = k == i - j - 1
              p = f"{name}.fuse_layers.{i}.{j}.{k}"
              y = bn(f"{p}.1", conv(f"{p}.0", y, self.widths[i] if last else self.widths[j], stride=2))
              if not last:
                y = relu(y)
          total = y if total is None else total + y
        fused.append(relu(total))
      return fused

    def new_branch(name, y, out):
      return relu(bn(f"{name}.0.1", conv(f"{name}.0.0", y, out, stride=2)))

    x = relu(bn("bn1", conv("conv1", x, 64, stride=2)))
    x = relu(bn("bn2", conv("conv2", x, 64, stride=2)))
    for b in range(self.stage1_blocks):   # _make_layer: a downsample where the channels change (64 -> 4 * stem_width)
      x = bottleneck(f"layer1.{b}", x, self.stem_width, downsample=x.shape[-1] != 4 * self.stem_width)
    # transition1: the 4 * stem_width channels to the first width, and the second branch from them.
    xs = [relu(bn("transition1.0.1", conv("transition1.0.0", x, self.widths[0]))) if x.shape[-1] != self.widths[0] else x,
          new_branch("transition1.1", x, self.widths[1])]
    for stage, (n_modules, n_branches) in enumerate(zip(self.modules, (2, 3, 4)), start=2):
      if stage > 2:   # transition{stage-1}: a new branch from the lowest resolution
        xs = xs + [new_branch(f"transition{stage - 1}.{n_branches - 1}", xs[-1], self.widths[n_branches - 1])]
      for m in range(n_modules):
        xs = module(f"stage{stage}.{m}", xs)
    size = xs[0].shape[1:3]
    head = jnp.concatenate([xs[0]] + [resize(y, size) for y in xs[1:]], axis=-1)
    y = relu(bn("last_layer.1", conv("last_layer.0", head, head.shape[-1], k=1, bias=True)))
    logits = conv("last_layer.3", y, self.num_classes, k=self.final_kernel, bias=True)
    features = {f"branch{i}": v for i, v in enumerate(xs)} | {"head": head}
    return logits, features


def rename_torch_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """The official checkpoints' layout (FullModel: "model." + the network's keys, "loss.*") to the network's."""
  keys = [k for k in state_dict if not k.startswith("loss.")]
  if keys and all(k.startswith("model.") for k in keys):
    return {k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")}
  return dict(state_dict)


def torch_key(flax_path: str) -> str:
  """Flax module path -> torch module prefix: the submodules are named by their torch paths."""
  return flax_path


def random_variables(template: Mapping[str, Any], seed: int) -> dict[str, Any]:
  """The official init_weights: conv kernels N(0, 0.001^2), BatchNorm scale 1 and bias 0 (statistics 0
  and 1), conv biases torch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)); drawn in NumPy from `seed`
  (an XLA-compiled initialiser of the ~1500 variables would compile for seconds)."""
  rng = np.random.default_rng(seed)
  kernels = template["params"]

  def draw(path, spec):
    collection, module, leaf = (p.key for p in path)
    shape = spec.shape
    if collection == "batch_stats":
      value = np.zeros(shape) if leaf == "mean" else np.ones(shape)
    elif leaf == "kernel":
      value = rng.normal(0.0, 0.001, shape)
    elif leaf == "scale":
      value = np.ones(shape)
    elif "kernel" in kernels[module]:   # a conv's bias
      bound = 1 / np.sqrt(np.prod(kernels[module]["kernel"].shape[:-1]))
      value = rng.uniform(-bound, bound, shape)
    else:                               # a BatchNorm's bias
      value = np.zeros(shape)
    return jnp.asarray(value, spec.dtype)

  return jax.tree_util.tree_map_with_path(draw, dict(template))


@dataclasses.dataclass(frozen=True, eq=False)
class HRNetModel:
  """The SegmenterModel of HRNet (hashable by identity: static under jit)."""

  module: HRNet
  class_names: tuple[str, ...] = CITYSCAPES19
  ignore_label: int = IGNORE_LABEL

  @property
  def num_classes(self) -> int:
    return self.module.num_classes

  def _inputs(self, images: jax.Array) -> jax.Array:
    layers.check_images(images, who="HRNet")
    x = images.astype(jnp.float32)
    return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)

  def logits(self, variables: Mapping[str, Any], images: jax.Array, *, train: bool = False,
             rng: jax.Array | None = None) -> tuple[dict[str, jax.Array], Mapping[str, Any]]:
    """({"out": logits [B, H, W, K] at the images' size, float32}, updated batch_stats or {})."""
    del rng   # no dropout
    x = self._inputs(images)
    if train:
      (z, _), updates = self.module.apply(variables, x, train=True, mutable=["batch_stats"])
      stats = updates["batch_stats"]
    else:
      z, _ = self.module.apply(variables, x)
      stats = {}
    return {"out": resize(z.astype(jnp.float32), images.shape[1:3])}, stats

  def features(self, variables: Mapping[str, Any], images: jax.Array) -> dict[str, jax.Array]:
    """{"branch0".."branch3": the last module's outputs at strides 4-32, "head": their stride-4 concatenation}."""
    return self.module.apply(variables, self._inputs(images))[1]


def build(name: str, weights: str | pathlib.Path | None = None, *, num_classes: int | None = None, dtype: Any = None,
          seed: int | None = 0, **options: Any) -> Segmenter:
  """The `Segmenter` `name` ("hrnet_w48"): weights a torch checkpoint (the official layout or a bare
  state dict), a .msgpack of Flax variables, or "random"."""
  if name not in ARCHS:
    raise ValueError(f"Unknown HRNet {name!r}; available: {', '.join(ARCHS)}.")
  allowed = {"stem_width", "stage1_blocks", "widths", "modules", "blocks", "final_kernel"}
  if set(options) - allowed:
    raise ValueError(f"Unknown options for {name}: {', '.join(sorted(set(options) - allowed))} "
                     f"(it takes {', '.join(sorted(allowed))}).")
  options = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in options.items()}
  if len(options.get("widths", (0,) * 4)) != 4 or len(options.get("modules", (0,) * 3)) != 3:
    raise ValueError(f"{name}: widths take 4 values (one per branch) and modules 3 (stages 2-4); got {options}.")
  module = HRNet(num_classes=19 if num_classes is None else num_classes, dtype=layers.as_dtype(dtype or jnp.float32),
                 **options)
  init = functools.partial(module.init, train=False)
  dummy = jnp.zeros((1, 64, 64, 3), jnp.float32)
  if weights is None:
    raise ValueError(f"{name} has no weights that ship with rajax: pass weights= the official HRNet-Semantic-Segmentation "
                     "checkpoint (e.g. hrnet_w48_cityscapes_cls19_1024x2048_trainset.pth), a .msgpack of its "
                     "variables, or 'random'.")
  template = jax.eval_shape(init, jax.random.key(0), dummy)
  if weights == "random":
    logging.warning("segmenter %r has random weights (weights='random'): its predictions mean nothing.", name)
    variables = random_variables(template, seed or 0)
  else:
    from rajax import weights as weights_lib
    variables = jax.tree.map(jnp.asarray, weights_lib.load(weights, template, what=f"segmenter {name!r}",
                                                           torch_key=torch_key, rename_torch_keys=rename_torch_keys))
  names = CITYSCAPES19 if module.num_classes == 19 else tuple(f"class{i}" for i in range(module.num_classes))
  return Segmenter(name=name, model=HRNetModel(module, class_names=names), variables=variables)


__all__ = ["ARCHS", "CITYSCAPES19", "HRNet", "HRNetModel", "build", "random_variables", "rename_torch_keys", "resize",
           "torch_key"]
