"""torchvision-compatible Faster R-CNN in JAX/Flax with static shapes: a `Detector` of rajax.detection.

    det = build("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth")
    det(images)                          # Detections, K = 100 slots, boxes in input pixels
    det.loss(images, targets, rng=key)   # (per-image loss [B], terms, batch_stats)
    det.features(images)                 # {"0", "1", "2", "3", "pool"} FPN maps + "body/layer1".. "body/layer4"

The pieces, each matching torchvision (models/detection) decision for decision:
  transform   normalise with ImageNet mean/std; resize (option `min_size`, see below); zero-pad
              bottom/right to a multiple of 32 (GeneralizedRCNNTransform);
  backbone    rajax.detection.backbones (ResNet with FrozenBatchNorm, VGG-16) + rajax.detection.fpn;
  rpn         rajax.detection.anchors + rajax.detection.rpn;
  box branch  rajax.detection.roi_align (MultiScaleRoIAlign over "0".."3", 7x7, sampling 2) +
              rajax.detection.roi_heads.

Input size. torchvision resizes every image so that its short side is min_size (800) unless its
long side would pass max_size (1333), with bilinear interpolation (align_corners=False, no
antialias), and maps the detections back. A rajax batch has one static size (H, W), so here the
resize is a function of that size, computed at trace time exactly as torchvision computes it for
an image of that size: scale = min(min_size / min(H, W), max_size / max(H, W)), output
floor(H * scale) x floor(W * scale), sampled with torch's bilinear rule (one [out, in] matrix per
axis, differentiable), targets scaled by (out / in) on the way in and detections by (in / out) on
the way out. `min_size=None` skips the resize: the detector runs at the batch's own size (padded to
a multiple of 32), the cheaper choice for training at a fixed size. Boxes are clipped to the
resized image (torchvision's image_sizes): with data-pipeline padding inside the batch, that is
the padded batch, not each photo (the contract gives no per-image size).

Frozen BatchNorm (v1 and the paper's backbones) lives in `batch_stats` (see backbones); eps is
0.0 for fasterrcnn_resnet50_fpn loaded from a checkpoint (torchvision's overwrite_eps for its
COCO_V1 weights; option `frozen_bn_eps`), 1e-5 otherwise. v2 (fasterrcnn_resnet50_fpn_v2) has
trainable BatchNorm in the backbone, the FPN and the box head, a 2-conv RPN head and a 4conv+1fc
box head; in training mode its BatchNorm layers use batch statistics and `loss` returns their
updated running averages.

Variables: {"params": ..., "batch_stats": ...} of one Flax module with submodules `backbone`
(`body`, `fpn`), `rpn_head`, `box_head`, `box_predictor`; `torch_key` maps each to torchvision's
state-dict names, so torchvision checkpoints load through rajax's safe reader.

Adding a backbone (e.g. MobileNetV3-Large for fasterrcnn_mobilenet_v3_large_fpn): an entry in
rajax.detection.backbones.BACKBONES and an ARCHS entry here with its anchors, FPN inputs and
rpn_score_thresh (0.05 there).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from rajax.detection import anchors as anchors_lib
from rajax.detection import coco as coco_names
from rajax.detection import backbones as backbones_lib
from rajax.detection import fpn as fpn_lib
from rajax.detection import matching
from rajax.detection import roi_align as roi_align_lib
from rajax.detection import roi_heads as heads
from rajax.detection import rpn as rpn_lib
from rajax.detection.detector import Detector
from rajax.detection.types import BoxTargets, Detections
from rajax.models import layers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's COCO category names (91 slots, "N/A" for unused ids, index 0 background).
COCO_CATEGORIES = coco_names.CATEGORIES91


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that defines a Faster R-CNN (hashable: it is static under jit)."""

  backbone: str = "resnet50"
  num_classes: int = 91
  fpn: bool = True
  fpn_channels: int = 256
  v2: bool = False
  trainable_layers: int = 3
  frozen_bn_eps: float = 1e-5
  anchor_sizes: tuple[tuple[float, ...], ...] = anchors_lib.DEFAULT_SIZES
  aspect_ratios: tuple[tuple[float, ...], ...] = anchors_lib.DEFAULT_RATIOS
  min_size: int | None = 800
  max_size: int = 1333
  size_divisible: int = 32
  mean: tuple[float, float, float] = IMAGENET_MEAN
  std: tuple[float, float, float] = IMAGENET_STD
  rpn_pre_nms_top_n_train: int = 2000
  rpn_pre_nms_top_n_test: int = 1000
  rpn_post_nms_top_n_train: int = 2000
  rpn_post_nms_top_n_test: int = 1000
  rpn_nms_thresh: float = 0.7
  rpn_fg_iou_thresh: float = 0.7
  rpn_bg_iou_thresh: float = 0.3
  rpn_batch_size_per_image: int = 256
  rpn_positive_fraction: float = 0.5
  rpn_score_thresh: float = 0.0
  representation_size: int = 1024
  box_score_thresh: float = 0.05
  box_nms_thresh: float = 0.5
  box_detections_per_img: int = 100
  box_fg_iou_thresh: float = 0.5
  box_bg_iou_thresh: float = 0.5
  box_batch_size_per_image: int = 512
  box_positive_fraction: float = 0.25
  box_candidates: int = 4000
  dtype: str = "float32"


class Backbone(nn.Module):
  cfg: Config

  def setup(self):
    cfg, bb = self.cfg, backbones_lib.BACKBONES[self.cfg.backbone]
    dt = layers.as_dtype(cfg.dtype)
    norm = backbones_lib.trainable_norm if cfg.v2 else backbones_lib.frozen_norm(cfg.frozen_bn_eps)
    self.body = bb.make(norm, dt)
    if cfg.fpn:
      self.fpn = fpn_lib.FPN(in_channels=bb.out_channels, out_channels=cfg.fpn_channels, extra="pool",
                             norm=backbones_lib.trainable_norm if cfg.v2 else None, dtype=dt)

  def __call__(self, x, *, train: bool = False):
    body = self.body(x, train=train)
    bb = backbones_lib.BACKBONES[self.cfg.backbone]
    inputs = [body[k] for k in bb.returned]
    feats = self.fpn(inputs, train=train) if self.cfg.fpn else {"0": inputs[-1]}
    return body, feats


class Net(nn.Module):
  """The Flax module: backbone, RPN head, box head and predictor (called piecewise by the model)."""

  cfg: Config

  def setup(self):
    cfg = self.cfg
    dt = layers.as_dtype(cfg.dtype)
    self.backbone = Backbone(cfg)
    a = anchors_lib.num_anchors(cfg.anchor_sizes, cfg.aspect_ratios)
    if len(set(a)) != 1:
      raise ValueError(f"The RPN head needs the same number of anchors at every level; got {a}.")
    self.rpn_head = rpn_lib.RPNHead(num_anchors=a[0], conv_depth=2 if cfg.v2 else 1, dtype=dt)
    if cfg.v2:
      self.box_head = heads.ConvFCHead(conv_layers=(cfg.fpn_channels,) * 4, representation_size=cfg.representation_size,
                                       norm=backbones_lib.trainable_norm, dtype=dt)
    else:
      self.box_head = heads.TwoMLPHead(representation_size=cfg.representation_size, dtype=dt)
    self.box_predictor = heads.FastRCNNPredictor(num_classes=cfg.num_classes, dtype=dt)

  def __call__(self, x, *, train: bool = False):
    """Everything at once (for init): FPN features, RPN outputs and the box branch on dummy RoIs."""
    _, feats = self.backbone(x, train=train)
    levels = list(feats.values())
    logits, deltas = self.rpn_head(levels)
    pooled = jnp.zeros((x.shape[0], 1, 7, 7, levels[0].shape[-1]), levels[0].dtype)
    return self.box_predictor(self.box_head(pooled, train=train)), logits, deltas

  def features(self, x, *, train: bool = False):
    return self.backbone(x, train=train)

  def rpn(self, levels):
    return self.rpn_head(levels)

  def box(self, pooled, *, train: bool = False, mask=None):
    return self.box_predictor(self.box_head(pooled, train=train, mask=mask))


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of torch's bilinear resize (align_corners=False, no antialias) along one axis."""
  m = np.zeros((n_out, n_in), np.float32)
  scale = np.float32(n_in / n_out)
  for i in range(n_out):
    src = max((np.float32(i) + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
    lo = min(int(np.floor(src)), n_in - 1)
    hi = min(lo + 1, n_in - 1)
    frac = np.float32(src - lo)
    m[i, lo] += np.float32(1) - frac
    m[i, hi] += frac
  return m


def resize_bilinear(images: jax.Array, size: tuple[int, int]) -> jax.Array:
  """torch.nn.functional.interpolate(mode="bilinear", align_corners=False) of NHWC images, no antialias."""
  h, w = images.shape[1:3]
  if (h, w) == tuple(size):
    return images
  ry = jnp.asarray(_resize_matrix(h, size[0]))
  rx = jnp.asarray(_resize_matrix(w, size[1]))
  return jnp.einsum("oh,bhwc,pw->bopc", ry, images, rx, precision=jax.lax.Precision.HIGHEST)


class TorchvisionTransform:
  """GeneralizedRCNNTransform for a static batch size, shared by torchvision's detectors here
  (Faster R-CNN, FCOS): `self.cfg` holds min_size, max_size, size_divisible, mean and std."""

  display_name = "detector"

  def resized_size(self, h: int, w: int) -> tuple[int, int]:
    """The image size torchvision's transform gives an image of size (h, w) (before padding)."""
    if self.cfg.min_size is None:
      return h, w
    scale = min(float(self.cfg.min_size) / min(h, w), float(self.cfg.max_size) / max(h, w))
    return int(math.floor(h * scale)), int(math.floor(w * scale))

  def padded_size(self, h: int, w: int) -> tuple[int, int]:
    d = self.cfg.size_divisible
    rh, rw = self.resized_size(h, w)
    return int(math.ceil(rh / d) * d), int(math.ceil(rw / d) * d)

  def transform(self, images: jax.Array) -> jax.Array:
    """[B, H, W, 3] in [0, 1] -> normalised, resized, zero-padded [B, H', W', 3] (GeneralizedRCNNTransform)."""
    layers.check_images(images, who=self.display_name)
    x = images.astype(jnp.float32)
    x = (x - jnp.asarray(self.cfg.mean, jnp.float32)) / jnp.asarray(self.cfg.std, jnp.float32)
    h, w = x.shape[1:3]
    rh, rw = self.resized_size(h, w)
    x = resize_bilinear(x, (rh, rw))
    ph, pw = self.padded_size(h, w)
    return jnp.pad(x, ((0, 0), (0, ph - rh), (0, pw - rw), (0, 0)))

  def _ratios(self, h: int, w: int, inverse: bool) -> jax.Array:
    """(x, y, x, y) factors from input pixels to resized pixels (torchvision's resize_boxes ratios), or
    back with `inverse` (its postprocess ratios)."""
    rh, rw = self.resized_size(h, w)
    if inverse:
      ry, rx = np.float32(h) / np.float32(rh), np.float32(w) / np.float32(rw)
    else:
      ry, rx = np.float32(rh) / np.float32(h), np.float32(rw) / np.float32(w)
    return jnp.asarray([rx, ry, rx, ry], jnp.float32)


@dataclasses.dataclass(frozen=True)
class FasterRCNN(TorchvisionTransform):
  """The DetectorModel of a Faster R-CNN configuration (hashable; pure functions of variables)."""

  cfg: Config
  class_names: tuple[str, ...] = ()

  background = True
  display_name = "Faster R-CNN"

  @property
  def num_classes(self) -> int:
    return self.cfg.num_classes

  @property
  def net(self) -> Net:
    return Net(self.cfg)

  def anchors(self, feature_shapes: Sequence[tuple[int, int]], padded: tuple[int, int]) -> list[np.ndarray]:
    return anchors_lib.grid_anchors(feature_shapes, padded, self.cfg.anchor_sizes, self.cfg.aspect_ratios)

  # ---- pieces -------------------------------------------------------------------------------
  def _variables(self, variables: Mapping[str, Any]) -> dict:
    """The variables with the frozen backbone layers' parameters behind stop_gradient."""
    bb = backbones_lib.BACKBONES[self.cfg.backbone]
    frozen = bb.frozen_paths(self.cfg.trainable_layers)
    out = dict(variables)
    out["params"] = backbones_lib.stop_frozen_gradients(variables["params"], ("backbone", "body"), frozen)
    return out

  def _mutable(self, train: bool):
    return ["batch_stats"] if (train and self.cfg.v2) else False

  def _apply(self, variables, *args, method, train: bool, owner: str, **kwargs):
    """net.apply of `method`; with trainable BatchNorm in training mode also the updated statistics
    of submodule `owner` (apply returns the whole collection, the other submodules' unchanged)."""
    if not self._mutable(train):
      return self.net.apply(variables, *args, method=method, train=train, **kwargs), {}
    out, upd = self.net.apply(variables, *args, method=method, mutable=["batch_stats"], train=train, **kwargs)
    return out, {"batch_stats": {owner: upd["batch_stats"][owner]}} if owner in upd.get("batch_stats", {}) else {}

  def run(self, variables: Mapping[str, Any], images: jax.Array, *, train: bool = False,
          targets: BoxTargets | None = None, samples: Mapping[str, Any] | None = None,
          rng: jax.Array | None = None, bn_train: bool | None = None) -> dict[str, Any]:
    """The whole forward pass with every intermediate (for tests and for `detect` / `loss`).

    `train` is torchvision's model.training for the RPN's top-n counts; `bn_train` (default: `train`)
    the BatchNorm mode (only the v2 model has BatchNorm that depends on it)."""
    cfg = self.cfg
    bn = train if bn_train is None else bn_train
    variables = self._variables(variables)
    b, h, w = images.shape[:3]
    rh, rw = self.resized_size(h, w)
    x = self.transform(images)
    padded = x.shape[1:3]
    (body, feats), upd = self._apply(variables, x, method=Net.features, train=bn, owner="backbone")
    levels = list(feats.values())
    logits, deltas = self.net.apply(variables, levels, method=Net.rpn)
    objectness, rpn_deltas = rpn_lib.flatten_levels(logits, deltas)
    level_anchors = self.anchors([tuple(f.shape[1:3]) for f in levels], padded)
    pre = cfg.rpn_pre_nms_top_n_train if train else cfg.rpn_pre_nms_top_n_test
    post = cfg.rpn_post_nms_top_n_train if train else cfg.rpn_post_nms_top_n_test
    proposals, proposal_scores, proposal_valid = rpn_lib.propose(
        objectness, rpn_deltas, level_anchors, (rh, rw), pre_nms_top_n=pre, post_nms_top_n=post,
        nms_thresh=cfg.rpn_nms_thresh, score_thresh=cfg.rpn_score_thresh)
    out = dict(image=x, body=body, features=feats, objectness=objectness, rpn_deltas=rpn_deltas,
               anchors=np.concatenate(level_anchors), proposals=proposals, proposal_scores=proposal_scores,
               proposal_valid=proposal_valid, batch_stats_update=upd)
    # MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"]) pools the maps of those names that exist
    # (all four with a ResNet FPN, "0" and "1" with MobileNetV3's, "0" alone with VGG-16).
    pool_levels = [feats[k] for k in ("0", "1", "2", "3") if k in feats]
    pool = lambda boxes: roi_align_lib.multi_scale_roi_align(pool_levels, boxes, (rh, rw), output_size=7,
                                                             sampling_ratio=2)
    if targets is None:
      pooled = pool(proposals)
      (cls, box), _ = self._apply(variables, pooled, method=Net.box, train=False, owner="box_head")
      out.update(pooled=pooled, class_logits=cls, box_deltas=box)
      return out
    # ---- training targets and losses (boxes in resized pixels) ----
    scale = self._ratios(h, w, inverse=False)
    gt = targets.boxes.astype(jnp.float32) * scale
    gt_valid = targets.valid.astype(bool)
    anchors_all = jnp.asarray(out["anchors"])
    labels, matched = rpn_lib.anchor_labels(anchors_all, gt, gt_valid, fg_iou_thresh=cfg.rpn_fg_iou_thresh,
                                            bg_iou_thresh=cfg.rpn_bg_iou_thresh)
    samples = dict(samples or {})
    keys = jax.random.split(rng, 2) if rng is not None else (None, None)
    if "rpn" in samples:
      rpn_sample = matching.sample_from_masks(*samples["rpn"], batch_size_per_image=cfg.rpn_batch_size_per_image)
    else:
      _need_rng(rng)
      rpn_sample = matching.sample_balanced(keys[0], labels, batch_size_per_image=cfg.rpn_batch_size_per_image,
                                            positive_fraction=cfg.rpn_positive_fraction)
    loss_objectness, loss_rpn_box = rpn_lib.loss(objectness, rpn_deltas, anchors_all, labels, matched, rpn_sample)
    rois, roi_valid, roi_labels, roi_matched = heads.training_targets(
        proposals, proposal_valid, gt, targets.labels, gt_valid, fg_iou_thresh=cfg.box_fg_iou_thresh,
        bg_iou_thresh=cfg.box_bg_iou_thresh)
    if "roi" in samples:
      roi_sample = matching.sample_from_masks(*samples["roi"], batch_size_per_image=cfg.box_batch_size_per_image)
    else:
      _need_rng(rng)
      roi_sample = matching.sample_balanced(keys[1], roi_labels, batch_size_per_image=cfg.box_batch_size_per_image,
                                            positive_fraction=cfg.box_positive_fraction)
    idx = roi_sample.indices
    sampled_boxes = jnp.take_along_axis(rois, idx[..., None], axis=1)
    sampled_labels = jnp.where(roi_sample.valid, jnp.take_along_axis(roi_labels, idx, axis=1), 0)
    sampled_matched = jnp.take_along_axis(roi_matched, idx[..., None], axis=1)
    reg_targets = heads.BOX_CODER.encode(sampled_matched, sampled_boxes)
    pooled = pool(sampled_boxes)
    (cls, box), upd2 = self._apply(variables, pooled, method=Net.box, train=bn, owner="box_head",
                                   mask=roi_sample.valid)
    loss_classifier, loss_box_reg = heads.loss(cls, box, sampled_labels, reg_targets, roi_sample.valid)
    terms = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box,
             "loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
    out.update(rpn_labels=labels, rpn_sample=rpn_sample, rois=rois, roi_labels=roi_labels, roi_sample=roi_sample,
               sampled_boxes=sampled_boxes, sampled_labels=sampled_labels, pooled=pooled, class_logits=cls,
               box_deltas=box, terms=terms, batch_stats_update=_merge(upd, upd2))
    return out

  # ---- the DetectorModel interface ------------------------------------------------------------
  def detect(self, variables: Mapping[str, Any], images: jax.Array) -> Detections:
    return self.postprocess(self.run(variables, images, train=False), images.shape[1:3])

  def postprocess(self, out: Mapping[str, Any], image_shape: tuple[int, int]) -> Detections:
    """Detections (in pixels of the input images of `image_shape`) from `run`'s inference outputs."""
    cfg = self.cfg
    h, w = image_shape
    boxes, scores, labels, valid = heads.detections(
        out["class_logits"], out["box_deltas"], out["proposals"], out["proposal_valid"], self.resized_size(h, w),
        score_thresh=cfg.box_score_thresh, nms_thresh=cfg.box_nms_thresh,
        detections_per_img=cfg.box_detections_per_img, candidates=cfg.box_candidates)
    boxes = jnp.where(valid[..., None], boxes * self._ratios(h, w, inverse=True), 0.0)
    return Detections(boxes=boxes, scores=scores, labels=labels, valid=valid)

  def loss(self, variables: Mapping[str, Any], images: jax.Array, targets: BoxTargets, *, rng: jax.Array | None,
           train: bool = True, samples: Mapping[str, Any] | None = None):
    """(per-image loss [B], {torchvision's four loss names: [B]}, batch_stats).

    torchvision computes its losses in training mode (RPN with the training top-n); `train`
    additionally selects BatchNorm's batch statistics for the v2 model (frozen BatchNorm ignores it).
    `samples` injects given samples instead of drawing them: {"rpn": (positive, negative) masks
    [B, anchors], "roi": (positive, negative) masks [B, post_nms_top_n_train + N]} (the proposals
    then the ground truth, as torchvision appends them).
    """
    out = self.run(variables, images, train=True, bn_train=train, targets=targets, samples=samples, rng=rng)
    terms = out["terms"]
    total = sum(terms.values())
    stats = dict(variables.get("batch_stats", {}))
    if out["batch_stats_update"]:
      stats = _merge_stats(stats, out["batch_stats_update"]["batch_stats"])
    return total, terms, stats

  def features(self, variables: Mapping[str, Any], images: jax.Array) -> dict[str, jax.Array]:
    x = self.transform(images)
    (body, feats), _ = self._apply(self._variables(variables), x, method=Net.features, train=False, owner="backbone")
    return {**feats, **{f"body/{k}": v for k, v in body.items()}}

  def init(self, rng: jax.Array) -> dict:
    """Random variables (torchvision's initialisers); their shapes do not depend on the image size."""
    return self.net.init(rng, jnp.zeros((1, 64, 64, 3), jnp.float32))


def _need_rng(rng):
  if rng is None:
    raise ValueError("Faster R-CNN's loss samples anchors and proposals at random: pass rng=jax.random.key(...) "
                     "(or inject samples).")


def _merge(a, b):
  if not a:
    return b
  if not b:
    return a
  return {"batch_stats": _merge_stats(a["batch_stats"], b["batch_stats"])}


def _merge_stats(base, update):
  flat = traverse_util.flatten_dict(dict(base))
  flat.update(traverse_util.flatten_dict(dict(update)))
  return traverse_util.unflatten_dict(flat)


# ---- torch key names ------------------------------------------------------------------------------
def torch_key_fn(cfg: Config):
  bb = backbones_lib.BACKBONES[cfg.backbone]
  body_prefix = "backbone.body" if cfg.fpn else "backbone"
  n_convs = 4

  def torch_key(path: str) -> str:
    parts = path.split("/")
    head, rest = parts[0], "/".join(parts[1:])
    if head == "backbone" and parts[1] == "body":
      return f"{body_prefix}.{bb.torch_key('/'.join(parts[2:]))}"
    if head == "backbone" and parts[1] == "fpn":
      return f"backbone.fpn.{fpn_lib.torch_key('/'.join(parts[2:]))}"
    if head == "rpn_head":
      if rest.startswith("conv_"):
        return f"rpn.head.conv.{rest[5:]}.0"
      return f"rpn.head.{rest}"
    if head == "box_head":
      if rest.startswith("conv_"):
        return f"roi_heads.box_head.{rest[5:]}.0"
      if rest.startswith("norm_"):
        return f"roi_heads.box_head.{rest[5:]}.1"
      if rest == "fc":
        return f"roi_heads.box_head.{n_convs + 1}"
      return f"roi_heads.box_head.{rest}"
    if head == "box_predictor":
      return f"roi_heads.box_predictor.{rest}"
    raise ValueError(f"No torchvision Faster R-CNN key for Flax module path {path!r}.")

  return torch_key


def rename_torch_keys(state_dict: Mapping[str, np.ndarray]) -> dict:
  """torchvision's legacy layouts (its _load_from_state_dict): FPN blocks `inner_blocks.i.weight` ->
  `inner_blocks.i.0.weight` and the RPN head's `conv.weight` -> `conv.0.0.weight`."""
  import re
  out = {}
  for k, v in state_dict.items():
    k = re.sub(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$", r"\1.0.\2", k)
    k = re.sub(r"^rpn\.head\.conv\.(weight|bias)$", r"rpn.head.conv.0.0.\1", k)
    out[k] = v
  return out


# ---- the zoo ----------------------------------------------------------------------------------------
ARCHS: dict[str, dict] = {
    "fasterrcnn_resnet50_fpn": dict(backbone="resnet50"),
    "fasterrcnn_resnet50_fpn_v2": dict(backbone="resnet50", v2=True),
    "fasterrcnn_resnet18_fpn": dict(backbone="resnet18"),
    "fasterrcnn_resnet101_fpn": dict(backbone="resnet101"),
    # VGG-16 conv5_3 (stride 16), one level, no FPN; the anchors of torchvision's one-level example
    # (5 sizes x 3 ratios per location) and the same RoIAlign + TwoMLPHead box branch. What the
    # paper's own detection code did for VGG-16 cannot be read from the paper (the classic
    # py-faster-rcnn VGG-16 used 9 anchors of sizes 128/256/512, RoI pooling, VGG's fc6/fc7 as the
    # 4096-wide head and froze conv1-conv2: trainable_layers=3 reproduces the last point).
    "fasterrcnn_vgg16": dict(backbone="vgg16", fpn=False, anchor_sizes=((32, 64, 128, 256, 512),),
                             aspect_ratios=((0.5, 1.0, 2.0),), trainable_layers=5),
    # torchvision's MobileNetV3-Large FPN detectors: FPN over features 13 and 16 (both stride 32) plus
    # the max-pool level, five sizes x three ratios at each of the three levels, RPN score threshold 0.05.
    "fasterrcnn_mobilenet_v3_large_fpn": dict(
        backbone="mobilenet_v3_large", anchor_sizes=((32, 64, 128, 256, 512),) * 3,
        aspect_ratios=((0.5, 1.0, 2.0),) * 3, rpn_score_thresh=0.05),
    "fasterrcnn_mobilenet_v3_large_320_fpn": dict(
        backbone="mobilenet_v3_large", anchor_sizes=((32, 64, 128, 256, 512),) * 3,
        aspect_ratios=((0.5, 1.0, 2.0),) * 3, rpn_score_thresh=0.05, min_size=320, max_size=640,
        rpn_pre_nms_top_n_test=150, rpn_post_nms_top_n_test=150),
}


def build(name: str, weights: str | None = None, *, num_classes: int = 91, dtype: Any = "float32", seed: int = 0,
          backbone_weights: str | None = None, **options: Any) -> Detector:
  """A Faster R-CNN Detector.

  `weights`: a torchvision Faster R-CNN state dict (.pth / .safetensors, read by rajax's safe
  reader) or rajax .msgpack variables of this architecture; None / "random" for seeded random
  weights (torchvision's initialisers; frozen BatchNorm at identity statistics, as torchvision
  builds a detector whose backbone is to be loaded). For fasterrcnn_resnet50_fpn a loaded
  checkpoint sets frozen_bn_eps = 0.0 (torchvision's COCO_V1 weights); pass frozen_bn_eps=1e-5
  for one trained from ImageNet weights in torchvision's recipe.
  `backbone_weights`: a torchvision ImageNet classifier checkpoint of the backbone (resnet18/50/101,
  vgg16) loaded into the backbone body (its classifier head dropped), the rest random: the start
  of training a detector from an ImageNet backbone, as torchvision's weights_backbone.
  `options` override Config fields (min_size=None, trainable_layers, representation_size, ...).
  """
  from rajax import weights as weights_lib

  if name not in ARCHS:
    raise ValueError(f"Unknown Faster R-CNN {name!r}; available: {', '.join(sorted(ARCHS))}.")
  if not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f"num_classes counts the background class too and must be an int >= 2, got {num_classes!r}.")
  fields = {f.name for f in dataclasses.fields(Config)}
  unknown = sorted(set(options) - fields)
  if unknown:
    raise ValueError(f"Unknown Faster R-CNN options {unknown}; known: {', '.join(sorted(fields))}.")
  opts = {**ARCHS[name], **options}
  loaded = weights not in (None, "random")
  if name == "fasterrcnn_resnet50_fpn" and loaded and "frozen_bn_eps" not in options:
    opts["frozen_bn_eps"] = 0.0  # torchvision's overwrite_eps(model, 0.0) for these checkpoints
  dt = layers.as_dtype(dtype)
  cfg = Config(num_classes=num_classes, dtype=jnp.dtype(dt).name, **_tuples(opts))
  names = COCO_CATEGORIES if num_classes == len(COCO_CATEGORIES) else tuple(f"class_{i}" for i in range(num_classes))
  model = FasterRCNN(cfg, class_names=names)
  template = jax.eval_shape(lambda: model.init(jax.random.key(seed)))
  if loaded and backbone_weights is not None:
    raise ValueError("Pass either weights= (a whole detector) or backbone_weights= (a classifier for its backbone).")
  if loaded:
    try:
      variables = weights_lib.load(weights, template, what=name, torch_key=torch_key_fn(cfg),
                                   rename_torch_keys=rename_torch_keys)
    except weights_lib.WeightsError as e:
      raise weights_lib.WeightsError(
          f"{e}\n{name} reads torchvision Faster R-CNN state dicts of this architecture (keys backbone.*, "
          "rpn.head.*, roi_heads.*) with the same num_classes and options; an ImageNet classifier checkpoint "
          "goes to backbone_weights=.") from None
    variables = jax.tree.map(jnp.asarray, variables)
  else:
    variables = jax.jit(model.init)(jax.random.key(seed))
    if backbone_weights is not None:
      variables = _load_backbone(variables, backbone_weights, cfg, name)
  return Detector(name=name, model=model, variables=variables)


def _load_backbone(variables: Mapping[str, Any], path: str, cfg: Config, name: str) -> dict:
  """`variables` with backbone/body replaced by a torchvision classifier checkpoint's features."""
  from rajax import weights as weights_lib

  bb = backbones_lib.BACKBONES[cfg.backbone]
  body = {c: variables[c]["backbone"]["body"] for c in variables if "body" in variables[c].get("backbone", {})}
  template = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), body)
  loaded = weights_lib.load(path, template, what=f"{name}'s {cfg.backbone} backbone",
                            torch_key=bb.classifier_key, rename_torch_keys=bb.drop_head)
  out = {c: dict(v) for c, v in variables.items()}
  for c, tree in loaded.items():
    out[c]["backbone"] = {**out[c]["backbone"], "body": jax.tree.map(jnp.asarray, tree)}
  return out


def _tuples(opts: Mapping[str, Any]) -> dict:
  out = dict(opts)
  for k in ("anchor_sizes", "aspect_ratios"):
    if k in out:
      out[k] = tuple(tuple(float(v) for v in g) for g in out[k])
  for k in ("mean", "std"):
    if k in out:
      out[k] = tuple(float(v) for v in out[k])
  return out
