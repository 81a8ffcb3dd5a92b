"""torchvision-compatible FCOS in JAX/Flax with static shapes: a `Detector` of rajax.detection.

    det = build("fcos_resnet50_fpn", "fcos_resnet50_fpn_coco-99b0c9b7.pth")
    det(images)                          # Detections, K = 100 slots, boxes in input pixels
    det.loss(images, targets)            # (per-image loss [B], terms, batch_stats); no sampling, no rng
    det.features(images)                 # {"0", "1", "2", "p6", "p7"} FPN maps + "body/layer1".. "body/layer4"

The pieces, each matching torchvision 0.29's models/detection/fcos.py:
  transform   GeneralizedRCNNTransform, as rajax.detection.faster_rcnn computes it for a static
              batch size (normalise, resize with min_size 800 / max_size 1333, zero-pad to 32);
  backbone    ResNet-50 with FrozenBatchNorm (rajax.detection.backbones), its layer2..layer4
              (strides 8, 16, 32) into an FPN of 256 channels named "0", "1", "2", plus
              LastLevelP6P7(256, 256): P6 = conv3x3/2(P5), P7 = conv3x3/2(relu(P6)). torchvision
              builds that block with in_channels == out_channels, so P6 comes from the FPN's P5,
              not from C5 (rajax.detection.fpn with p6_from="p5");
  anchors     one per location, sizes 8, 16, 32, 64, 128 (the strides), ratio 1 (AnchorGenerator:
              the box (x - s/2, y - s/2, x + s/2, y + s/2) around each grid point (x, y) = stride *
              index, rajax.detection.anchors);
  head        FCOSHead: a classification and a regression tower, each 4 x (conv3x3 + GroupNorm(32)
              + ReLU), shared across levels; cls_logits conv3x3 (bias -log(99), the 0.01 prior),
              bbox_reg conv3x3 + ReLU, bbox_ctrness conv3x3, both on the regression tower;
  box coder   BoxLinearCoder(normalize_by_size=True): the regression (l, t, r, b) times the anchor's
              size are the distances from the anchor's centre to the box's four sides.

Training targets (FCOS.compute_loss), per anchor and ground-truth box: the anchor's centre lies
inside the box, within `center_sampling_radius` (1.5) anchor sizes of the box's centre (Chebyshev
distance), and its largest distance to a side lies in the level's range (size * 4, size * 8),
open at both ends, with 0 below the first level and infinity above the last; of the boxes an
anchor matches, the one of smallest area wins (torchvision scores matches by 1e8 - area in
float32 and takes the first maximum; so does this). Losses (FCOSHead.compute_loss), each summed
over the batch and divided by max(1, number of positive anchors in the batch):
  classification   sigmoid focal loss (alpha 0.25, gamma 2) over every anchor and class, one-hot
                   at the matched box's label for positives, all zeros otherwise;
  bbox_regression  GIoU loss (eps 1e-7) between decoded predictions and matched boxes, positives;
  bbox_ctrness     BCE with logits against sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of
                   the matched box's encoded distances, positives.
`loss` returns each per image, multiplied by B, so that their mean over the batch is torchvision's.

Inference (postprocess_detections): per level, score = sqrt(sigmoid(cls) * sigmoid(ctr)) for every
(anchor, class) pair, kept above score_thresh 0.2, the best topk_candidates (1000) of the level,
decoded and clipped to the resized image; then per-class NMS at 0.6 over all levels and the best
100 (every class index may be detected, 0 included, as in torchvision).

Variables: {"params": ..., "batch_stats": ...} of one Flax module with submodules `backbone`
(`body`, `fpn` with its `p6`, `p7`) and `head` (`classification_head`, `regression_head`); `torch_key_fn`
maps them to torchvision's state-dict names (backbone.body.*, backbone.fpn.*,
backbone.fpn.extra_blocks.p6/p7, head.classification_head.conv.{0,1,3,4,...}, ...).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from rajax.detection import anchors as anchors_lib
from rajax.detection import backbones as backbones_lib
from rajax.detection import boxes as boxes_lib
from rajax.detection import faster_rcnn as frcnn
from rajax.detection import fpn as fpn_lib
from rajax.detection import nms as nms_lib
from rajax.detection.detector import Detector
from rajax.detection.types import BoxTargets, Detections
from rajax.models import layers

# torchvision's FCOS: one anchor per location, its side the level's stride.
ANCHOR_SIZES = ((8.0,), (16.0,), (32.0,), (64.0,), (128.0,))


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that defines an FCOS (hashable: it is static under jit)."""

  backbone: str = "resnet50"
  num_classes: int = 91
  fpn_channels: int = 256
  returned: tuple[str, ...] = ("layer2", "layer3", "layer4")   # torchvision's returned_layers=[2, 3, 4]
  trainable_layers: int = 3
  frozen_bn_eps: float = 1e-5          # FCOS's COCO_V1 weights keep FrozenBatchNorm2d's default
  anchor_sizes: tuple[tuple[float, ...], ...] = ANCHOR_SIZES
  num_convs: int = 4
  norm_groups: int = 32
  prior_probability: float = 0.01
  min_size: int | None = 800
  max_size: int = 1333
  size_divisible: int = 32
  mean: tuple[float, float, float] = frcnn.IMAGENET_MEAN
  std: tuple[float, float, float] = frcnn.IMAGENET_STD
  center_sampling_radius: float = 1.5
  focal_alpha: float = 0.25
  focal_gamma: float = 2.0
  score_thresh: float = 0.2
  nms_thresh: float = 0.6
  detections_per_img: int = 100
  topk_candidates: int = 1000
  dtype: str = "float32"


_head_init = nn.initializers.normal(stddev=0.01)   # torch.nn.init.normal_(std=0.01), zero bias


def _conv(features: int, dtype, name: str, bias_init=nn.initializers.zeros) -> nn.Conv:
  return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=_head_init, bias_init=bias_init, name=name)


class Tower(nn.Module):
  """num_convs x (conv3x3 + GroupNorm + ReLU); `conv_i` / `norm_i` are torch's conv.{3i} / conv.{3i+1}."""

  channels: int
  num_convs: int = 4
  groups: int = 32
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.channels % self.groups:
      raise ValueError(f"FCOS head: GroupNorm({self.groups}) needs channels divisible by {self.groups}; "
                       f"got {self.channels}.")
    for i in range(self.num_convs):
      x = _conv(self.channels, self.dtype, f"conv_{i}")(x)
      x = nn.GroupNorm(num_groups=self.groups, epsilon=1e-5, use_fast_variance=False, dtype=self.dtype,
                       param_dtype=jnp.float32, name=f"norm_{i}")(x)
      x = nn.relu(x)
    return x


class ClassificationHead(nn.Module):
  num_classes: int
  channels: int
  num_convs: int = 4
  groups: int = 32
  prior_probability: float = 0.01
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = Tower(self.channels, self.num_convs, self.groups, self.dtype, name="tower")(x)
    prior = -math.log((1 - self.prior_probability) / self.prior_probability)
    return _conv(self.num_classes, self.dtype, "cls_logits", nn.initializers.constant(prior))(x)


class RegressionHead(nn.Module):
  channels: int
  num_convs: int = 4
  groups: int = 32
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = Tower(self.channels, self.num_convs, self.groups, self.dtype, name="tower")(x)
    return nn.relu(_conv(4, self.dtype, "bbox_reg")(x)), _conv(1, self.dtype, "bbox_ctrness")(x)[..., 0]


class Head(nn.Module):
  """FCOSHead: (cls [B, A, C], reg [B, A, 4], ctr [B, A]) over the levels, rows in (level, y, x) order."""

  cfg: Config

  def setup(self):
    cfg, dt = self.cfg, layers.as_dtype(self.cfg.dtype)
    self.classification_head = ClassificationHead(cfg.num_classes, cfg.fpn_channels, cfg.num_convs,
                                                  cfg.norm_groups, cfg.prior_probability, dt)
    self.regression_head = RegressionHead(cfg.fpn_channels, cfg.num_convs, cfg.norm_groups, dt)

  def __call__(self, levels: Sequence[jax.Array]):
    cls, reg, ctr = [], [], []
    for f in levels:
      b = f.shape[0]
      c = self.classification_head(f)
      r, t = self.regression_head(f)
      cls.append(c.reshape(b, -1, c.shape[-1]))
      reg.append(r.reshape(b, -1, 4))
      ctr.append(t.reshape(b, -1))
    return (jnp.concatenate(cls, 1).astype(jnp.float32), jnp.concatenate(reg, 1).astype(jnp.float32),
            jnp.concatenate(ctr, 1).astype(jnp.float32))


class Backbone(nn.Module):
  """ResNet body and FPN over `returned` with LastLevelP6P7(C, C) on P5: {"0", "1", "2", "p6", "p7"}."""

  cfg: Config

  def setup(self):
    cfg, bb = self.cfg, backbones_lib.BACKBONES[self.cfg.backbone]
    dt = layers.as_dtype(cfg.dtype)
    self.body = bb.make(backbones_lib.frozen_norm(cfg.frozen_bn_eps), dt)
    channels = dict(zip(bb.returned, bb.out_channels))
    missing = [r for r in cfg.returned if r not in channels]
    if missing:
      raise ValueError(f"FCOS: backbone {cfg.backbone!r} returns {bb.returned}, not {missing}.")
    self.fpn = fpn_lib.FPN(in_channels=tuple(channels[r] for r in cfg.returned), out_channels=cfg.fpn_channels,
                           extra="p6p7", p6_from="p5", dtype=dt)

  def __call__(self, x, *, train: bool = False):
    body = self.body(x, train=train)
    return body, self.fpn([body[k] for k in self.cfg.returned], train=train)


class Net(nn.Module):
  cfg: Config

  def setup(self):
    self.backbone = Backbone(self.cfg)
    self.head = Head(self.cfg)

  def __call__(self, x, *, train: bool = False):
    body, feats = self.backbone(x, train=train)
    return body, feats, self.head(list(feats.values()))


# ---- the box coder, losses and matching (pure functions) ------------------------------------------
def decode(rel: jax.Array, anchors: jax.Array) -> jax.Array:
  """BoxLinearCoder(normalize_by_size=True).decode: (l, t, r, b) * anchor size from the anchor's centre."""
  anchors = anchors.astype(rel.dtype)
  cx = 0.5 * (anchors[..., 0] + anchors[..., 2])
  cy = 0.5 * (anchors[..., 1] + anchors[..., 3])
  w = anchors[..., 2] - anchors[..., 0]
  h = anchors[..., 3] - anchors[..., 1]
  rel = rel * jnp.stack([w, h, w, h], axis=-1)
  return jnp.stack([cx - rel[..., 0], cy - rel[..., 1], cx + rel[..., 2], cy + rel[..., 3]], axis=-1)


def encode(anchors: jax.Array, boxes: jax.Array) -> jax.Array:
  """BoxLinearCoder(normalize_by_size=True).encode(anchors, boxes): the inverse of `decode`."""
  cx = 0.5 * (anchors[..., 0] + anchors[..., 2])
  cy = 0.5 * (anchors[..., 1] + anchors[..., 3])
  w = anchors[..., 2] - anchors[..., 0]
  h = anchors[..., 3] - anchors[..., 1]
  t = jnp.stack([cx - boxes[..., 0], cy - boxes[..., 1], boxes[..., 2] - cx, boxes[..., 3] - cy], axis=-1)
  return t / jnp.stack([w, h, w, h], axis=-1)


def bce_with_logits(x: jax.Array, t: jax.Array) -> jax.Array:
  """Elementwise binary cross-entropy of logits `x` against targets `t` in [0, 1] (stable form)."""
  return jnp.maximum(x, 0.0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))


def sigmoid_focal_loss(x: jax.Array, t: jax.Array, *, alpha: float = 0.25, gamma: float = 2.0) -> jax.Array:
  """torchvision.ops.sigmoid_focal_loss(reduction="none"): alpha_t * (1 - p_t)^gamma * BCE."""
  p = jax.nn.sigmoid(x)
  p_t = p * t + (1 - p) * (1 - t)
  loss = bce_with_logits(x, t) * (1 - p_t) ** gamma
  if alpha >= 0:
    loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
  return loss


def giou_loss(a: jax.Array, b: jax.Array, eps: float = 1e-7) -> jax.Array:
  """torchvision.ops.generalized_box_iou_loss(reduction="none") of paired boxes [..., 4]."""
  x1, y1, x2, y2 = (a[..., i] for i in range(4))
  x1g, y1g, x2g, y2g = (b[..., i] for i in range(4))
  xk1, yk1 = jnp.maximum(x1, x1g), jnp.maximum(y1, y1g)
  xk2, yk2 = jnp.minimum(x2, x2g), jnp.minimum(y2, y2g)
  inter = jnp.where((yk2 > yk1) & (xk2 > xk1), (xk2 - xk1) * (yk2 - yk1), 0.0)
  union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
  iou = inter / (union + eps)
  area_c = (jnp.maximum(x2, x2g) - jnp.minimum(x1, x1g)) * (jnp.maximum(y2, y2g) - jnp.minimum(y1, y1g))
  return 1 - (iou - (area_c - union) / (area_c + eps))


def match(anchors: np.ndarray, level_counts: Sequence[int], gt: jax.Array, gt_valid: jax.Array, *,
          radius: float = 1.5) -> jax.Array:
  """FCOS.compute_loss's assignment: matched box index [B, A] per anchor, -1 for background.

  anchors [A, 4] (all levels, `level_counts` anchors each), gt [B, N, 4], gt_valid [B, N]."""
  a = jnp.asarray(anchors, jnp.float32)
  centres = (a[:, :2] + a[:, 2:]) / 2                                   # [A, 2]
  sizes = a[:, 2] - a[:, 0]                                             # [A]
  gt_centres = (gt[..., :2] + gt[..., 2:]) / 2                          # [B, N, 2]
  near = jnp.max(jnp.abs(centres[None, :, None, :] - gt_centres[:, None, :, :]), axis=-1)
  ok = near < jnp.float32(radius) * sizes[None, :, None]               # [B, A, N]
  x, y = centres[None, :, None, 0], centres[None, :, None, 1]
  x0, y0, x1, y1 = (gt[:, None, :, i] for i in range(4))
  dist = jnp.stack([x - x0, y - y0, x1 - x, y1 - y], axis=-1)           # [B, A, N, 4]
  ok &= jnp.min(dist, axis=-1) > 0
  sizes_np = np.asarray(anchors[:, 2] - anchors[:, 0], np.float32)
  lower, upper = sizes_np * np.float32(4), sizes_np * np.float32(8)
  lower[:level_counts[0]] = 0
  upper[-level_counts[-1]:] = np.inf
  far = jnp.max(dist, axis=-1)
  ok &= (far > jnp.asarray(lower)[None, :, None]) & (far < jnp.asarray(upper)[None, :, None])
  ok &= gt_valid[:, None, :]
  areas = (gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])         # [B, N]
  score = ok.astype(jnp.float32) * (jnp.float32(1e8) - areas)[:, None, :]
  best = jnp.max(score, axis=-1)
  idx = jnp.argmax(score, axis=-1).astype(jnp.int32)                    # the first maximum, as torch
  return jnp.where(best < 1e-5, -1, idx)


def losses(cls: jax.Array, reg: jax.Array, ctr: jax.Array, anchors: jax.Array, matched: jax.Array,
           gt: jax.Array, gt_labels: jax.Array, *, alpha: float = 0.25, gamma: float = 2.0) -> dict[str, jax.Array]:
  """FCOSHead.compute_loss per image: {"classification", "bbox_regression", "bbox_ctrness": [B]},
  each image's sum over the batch's max(1, positives), times B (batch mean = torchvision's)."""
  b, _, c = cls.shape
  fg = matched >= 0
  norm = jnp.maximum(jnp.sum(fg, dtype=jnp.float32), 1.0) / b
  safe = jnp.maximum(matched, 0)
  labels = jnp.take_along_axis(gt_labels, safe, axis=1)
  boxes = jnp.take_along_axis(gt, safe[..., None], axis=1)              # [B, A, 4]
  onehot = (jax.nn.one_hot(labels, c, dtype=jnp.float32) * fg[..., None]).astype(jnp.float32)
  loss_cls = jnp.sum(sigmoid_focal_loss(cls, onehot, alpha=alpha, gamma=gamma), axis=(1, 2))
  a = jnp.broadcast_to(anchors, boxes.shape)
  # Background rows get a harmless box so that no NaN enters a gradient through `where`.
  unit = jnp.asarray([0.0, 0.0, 1.0, 1.0], jnp.float32)
  giou = giou_loss(decode(reg, a), jnp.where(fg[..., None], boxes, unit))
  loss_box = jnp.sum(jnp.where(fg, giou, 0.0), axis=1)
  t = jax.lax.stop_gradient(encode(a, boxes))
  t = jnp.where(fg[..., None], t, 1.0)
  lr, tb = t[..., (0, 2)], t[..., (1, 3)]
  target = jnp.sqrt((jnp.min(lr, -1) / jnp.max(lr, -1)) * (jnp.min(tb, -1) / jnp.max(tb, -1)))
  loss_ctr = jnp.sum(jnp.where(fg, bce_with_logits(ctr, target), 0.0), axis=1)
  return {"classification": loss_cls / norm, "bbox_regression": loss_box / norm, "bbox_ctrness": loss_ctr / norm}


def postprocess_levels(cls: jax.Array, reg: jax.Array, ctr: jax.Array, level_anchors: Sequence[np.ndarray],
                       image_size: tuple[int, int], *, score_thresh: float = 0.2, topk_candidates: int = 1000,
                       nms_thresh: float = 0.6, detections_per_img: int = 100):
  """FCOS.postprocess_detections for a batch: (boxes [B, D, 4], scores, labels, valid), D = detections_per_img,
  boxes in pixels of the resized image `image_size`."""
  b, _, c = cls.shape
  cand_boxes, cand_scores, cand_labels, cand_ok = [], [], [], []
  start = 0
  for anchors_l in level_anchors:
    n = anchors_l.shape[0]
    sl = slice(start, start + n)
    start += n
    scores = jnp.sqrt(jax.nn.sigmoid(cls[:, sl]) * jax.nn.sigmoid(ctr[:, sl])[..., None]).reshape(b, n * c)
    idx, ok = nms_lib.top_k(scores, scores > score_thresh, min(topk_candidates, n * c))
    anchor_idx, labels = idx // c, idx % c
    rel = jnp.take_along_axis(reg[:, sl], anchor_idx[..., None], axis=1)
    boxes = decode(rel, jnp.asarray(anchors_l)[anchor_idx])
    cand_boxes.append(boxes_lib.clip_to_image(boxes, image_size))
    cand_scores.append(jnp.take_along_axis(scores, idx, axis=1))
    cand_labels.append(labels.astype(jnp.int32))
    cand_ok.append(ok)
  boxes, scores, labels, ok = (jnp.concatenate(x, axis=1) for x in (cand_boxes, cand_scores, cand_labels, cand_ok))
  keep, kept = jax.vmap(lambda b_, s_, l_, v_: nms_lib.batched_nms(
      b_, s_, l_, v_, iou_threshold=nms_thresh, max_output=detections_per_img))(boxes, scores, labels, ok)
  take = lambda x: jnp.take_along_axis(x, keep if x.ndim == 2 else keep[..., None], axis=1)
  boxes, scores, labels = take(boxes), take(scores), take(labels)
  return (jnp.where(kept[..., None], boxes, 0.0), jnp.where(kept, scores, 0.0), jnp.where(kept, labels, 0), kept)


@dataclasses.dataclass(frozen=True)
class FCOS(frcnn.TorchvisionTransform):
  """The DetectorModel of an FCOS configuration (hashable; pure functions of variables)."""

  cfg: Config
  class_names: tuple[str, ...] = ()

  display_name = "FCOS"
  background = True   # torchvision's label space: index 0 is "__background__" (never a training target)

  @property
  def num_classes(self) -> int:
    return self.cfg.num_classes

  @property
  def net(self) -> Net:
    return Net(self.cfg)

  def anchors(self, feature_shapes: Sequence[tuple[int, int]], padded: tuple[int, int]) -> list[np.ndarray]:
    ratios = ((1.0,),) * len(self.cfg.anchor_sizes)
    return anchors_lib.grid_anchors(feature_shapes, padded, self.cfg.anchor_sizes, ratios)

  def _variables(self, variables: Mapping[str, Any]) -> dict:
    frozen = backbones_lib.BACKBONES[self.cfg.backbone].frozen_paths(self.cfg.trainable_layers)
    out = dict(variables)
    out["params"] = backbones_lib.stop_frozen_gradients(variables["params"], ("backbone", "body"), frozen)
    return out

  def run(self, variables: Mapping[str, Any], images: jax.Array, *, targets: BoxTargets | None = None,
          radius: float | None = None) -> dict[str, Any]:
    """The forward pass with its intermediates: head outputs, anchors and, with `targets`, the
    matches and the three loss terms [B] (`radius` overrides the centre-sampling radius)."""
    cfg = self.cfg
    h, w = images.shape[1:3]
    x = self.transform(images)
    body, feats, (cls, reg, ctr) = self.net.apply(self._variables(variables), x, train=False)
    shapes = [tuple(f.shape[1:3]) for f in feats.values()]
    level_anchors = self.anchors(shapes, x.shape[1:3])
    out = dict(image=x, body=body, features=feats, cls_logits=cls, bbox_regression=reg, bbox_ctrness=ctr,
               level_anchors=level_anchors, anchors=np.concatenate(level_anchors))
    if targets is not None:
      gt = targets.boxes.astype(jnp.float32) * self._ratios(h, w, inverse=False)
      counts = [a.shape[0] for a in level_anchors]
      matched = match(out["anchors"], counts, gt, targets.valid.astype(bool),
                      radius=cfg.center_sampling_radius if radius is None else radius)
      out["matched"] = matched
      out["terms"] = losses(cls, reg, ctr, jnp.asarray(out["anchors"]), matched, gt, targets.labels.astype(jnp.int32),
                            alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)
    return out

  def postprocess(self, out: Mapping[str, Any], image_shape: tuple[int, int]) -> Detections:
    cfg = self.cfg
    h, w = image_shape
    boxes, scores, labels, valid = postprocess_levels(
        out["cls_logits"], out["bbox_regression"], out["bbox_ctrness"], out["level_anchors"],
        self.resized_size(h, w), score_thresh=cfg.score_thresh, topk_candidates=cfg.topk_candidates,
        nms_thresh=cfg.nms_thresh, detections_per_img=cfg.detections_per_img)
    boxes = jnp.where(valid[..., None], boxes * self._ratios(h, w, inverse=True), 0.0)
    return Detections(boxes=boxes, scores=scores, labels=labels, valid=valid)

  # ---- the DetectorModel interface ------------------------------------------------------------
  def detect(self, variables: Mapping[str, Any], images: jax.Array) -> Detections:
    return self.postprocess(self.run(variables, images), images.shape[1:3])

  def loss(self, variables: Mapping[str, Any], images: jax.Array, targets: BoxTargets, *,
           rng: jax.Array | None = None, train: bool = True):
    """(per-image loss [B], {"classification", "bbox_regression", "bbox_ctrness": [B]}, batch_stats).

    FCOS samples nothing (`rng` is unused) and its BatchNorm is frozen (`train` changes nothing;
    the statistics come back unchanged)."""
    del rng, train
    boxes_lib.check_targets(targets.boxes, targets.valid, image_size=tuple(images.shape[1:3]), name="FCOS targets")
    terms = self.run(variables, images, targets=targets)["terms"]
    return sum(terms.values()), terms, dict(variables.get("batch_stats", {}))

  def features(self, variables: Mapping[str, Any], images: jax.Array) -> dict[str, jax.Array]:
    x = self.transform(images)
    body, feats = self.net.apply(self._variables(variables), x, method=lambda m, x: m.backbone(x))
    return {**feats, **{f"body/{k}": v for k, v in body.items()}}

  def init(self, rng: jax.Array) -> dict:
    """Random variables (torchvision's initialisers); their shapes do not depend on the image size."""
    return self.net.init(rng, jnp.zeros((1, 64, 64, 3), jnp.float32))


# ---- torch key names ------------------------------------------------------------------------------
def torch_key_fn(cfg: Config):
  bb = backbones_lib.BACKBONES[cfg.backbone]

  def torch_key(path: str) -> str:
    parts = path.split("/")
    if parts[:2] == ["backbone", "body"]:
      return f"backbone.body.{bb.torch_key('/'.join(parts[2:]))}"
    if parts[:2] == ["backbone", "fpn"]:
      return f"backbone.fpn.{fpn_lib.torch_key('/'.join(parts[2:]))}"
    if parts[0] == "head" and len(parts) >= 3:
      branch = parts[1]
      if parts[2] == "tower" and len(parts) == 4:
        kind, i = parts[3].split("_")
        return f"head.{branch}.conv.{3 * int(i) + (0 if kind == 'conv' else 1)}"
      if len(parts) == 3:
        return f"head.{branch}.{parts[2]}"
    raise ValueError(f"No torchvision FCOS key for Flax module path {path!r}.")

  return torch_key


# ---- the zoo ----------------------------------------------------------------------------------------
ARCHS: dict[str, dict] = {
    "fcos_resnet50_fpn": dict(backbone="resnet50"),
}


def build(name: str, weights: str | None = None, *, num_classes: int = 91, dtype: Any = "float32", seed: int = 0,
          backbone_weights: str | None = None, **options: Any) -> Detector:
  """An FCOS Detector.

  `weights`: a torchvision FCOS state dict (.pth / .safetensors, through rajax's safe reader) or
  rajax .msgpack variables of this architecture; None / "random" for seeded random weights
  (torchvision's initialisers, frozen BatchNorm at identity statistics). `backbone_weights`: a
  torchvision ImageNet ResNet checkpoint for the backbone body, the rest random. `options`
  override Config fields (min_size=None, trainable_layers, center_sampling_radius, ...).
  """
  from rajax import weights as weights_lib

  if name not in ARCHS:
    raise ValueError(f"Unknown FCOS {name!r}; available: {', '.join(sorted(ARCHS))}.")
  if not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f"num_classes counts the background class too and must be an int >= 2, got {num_classes!r}.")
  fields = {f.name for f in dataclasses.fields(Config)} - {"num_classes", "dtype"}
  unknown = sorted(set(options) - fields)
  if unknown:
    raise ValueError(f"Unknown FCOS options {unknown}; known: {', '.join(sorted(fields))}.")
  opts = {**ARCHS[name], **options}
  if "anchor_sizes" in opts:
    opts["anchor_sizes"] = tuple(tuple(float(v) for v in g) for g in opts["anchor_sizes"])
  for k in ("mean", "std", "returned"):
    if k in opts:
      opts[k] = tuple(opts[k])
  cfg = Config(num_classes=num_classes, dtype=jnp.dtype(layers.as_dtype(dtype)).name, **opts)
  names = (frcnn.COCO_CATEGORIES if num_classes == len(frcnn.COCO_CATEGORIES)
           else tuple(f"class_{i}" for i in range(num_classes)))
  model = FCOS(cfg, class_names=names)
  loaded = weights not in (None, "random")
  if loaded and backbone_weights is not None:
    raise ValueError("Pass either weights= (a whole detector) or backbone_weights= (a classifier for its backbone).")
  if loaded:
    template = jax.eval_shape(lambda: model.init(jax.random.key(seed)))
    try:
      variables = weights_lib.load(weights, template, what=name, torch_key=torch_key_fn(cfg),
                                   rename_torch_keys=frcnn.rename_torch_keys)
    except weights_lib.WeightsError as e:
      raise weights_lib.WeightsError(
          f"{e}\n{name} reads torchvision FCOS state dicts of this architecture (keys backbone.*, head.*) with "
          "the same num_classes and options; an ImageNet classifier checkpoint goes to backbone_weights=.") from None
    variables = jax.tree.map(jnp.asarray, variables)
  else:
    variables = jax.jit(model.init)(jax.random.key(seed))
    if backbone_weights is not None:
      variables = frcnn._load_backbone(variables, backbone_weights, cfg, name)
  return Detector(name=name, model=model, variables=variables)
