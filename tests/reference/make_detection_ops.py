"""Makes tests/reference/detection_ops.npz: what torchvision's detection primitives give. Run once:

    /tmp/torchvenv/bin/python tests/reference/make_detection_ops.py

with torch 2.14.1 and torchvision 0.29.1 (CPU kernels). Inputs are drawn with NumPy from fixed
seeds; every case stores its inputs and torchvision's outputs (int64 indices stored as int32):

  boxes/*      box_iou and generalized_box_iou of random boxes (zero-area ones included), BoxCoder
               encode (weights (1,1,1,1) and (10,10,5,5)) and decode (with deltas large enough to
               hit the log(1000/16) clamp), clip_boxes_to_image, remove_small_boxes;
  nms/<case>/  torchvision.ops.nms: random boxes with tied scores at thresholds 0.3/0.5/0.7, and
               hand-made boxes whose IoU is exactly 0.5 at threshold 0.5 (kept) and exactly
               float32(3/5) at threshold 0.6 (suppressed: torchvision compares with the double 0.6);
  bnms/<case>/ torchvision.ops.batched_nms and its per-class path _batched_nms_vanilla, on boxes
               with coordinates on a 1/8 grid (so the coordinate trick's offsets are exact and both
               paths agree) and on a case large enough for the per-class path;
  match/*      models.detection._utils.Matcher (RPN's, the ROI heads' and two more settings) on the
               IoU matrix of random anchors against ground truth with duplicated boxes (ties
               between ground truths) and an IoU of exactly 7/10 at 0.7, and (zero_*) with one more
               ground truth that overlaps no anchor (its low-quality "match" at IoU 0); also torch's
               BalancedPositiveNegativeSampler masks on the RPN labels made from the first.
"""

import pathlib

import numpy as np
import torch
import torchvision
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import boxes as box_ops

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "detection_ops.npz"


def random_boxes(rng, n, size=64.0, grid=None, zero_area=0):
  xy = rng.uniform(0, size * 0.8, (n, 2))
  wh = rng.uniform(1.0, size * 0.4, (n, 2))
  b = np.concatenate([xy, xy + wh], axis=1)
  if grid:
    b = np.round(b * grid) / grid
  if zero_area:
    b[:zero_area, 2] = b[:zero_area, 0]  # zero width
  return b.astype(np.float32)


def t(a):
  return torch.from_numpy(np.ascontiguousarray(a))


def main():
  out = {}
  rng = np.random.default_rng(19)

  # ------------------------------------------------------------------ box ops
  b1, b2 = random_boxes(rng, 7, zero_area=1), random_boxes(rng, 9)
  out["boxes/b1"], out["boxes/b2"] = b1, b2
  out["boxes/iou"] = box_ops.box_iou(t(b1), t(b2)).numpy()
  out["boxes/giou"] = box_ops.generalized_box_iou(t(b1[1:]), t(b2)).numpy()  # torch's GIoU is NaN-free only for real boxes
  ref, gt = random_boxes(rng, 50), random_boxes(rng, 50)
  out["boxes/coder_ref"], out["boxes/coder_gt"] = ref, gt
  for name, weights in (("rpn", (1.0, 1.0, 1.0, 1.0)), ("roi", (10.0, 10.0, 5.0, 5.0))):
    coder = det_utils.BoxCoder(weights)
    out[f"boxes/encode_{name}"] = coder.encode_single(t(gt), t(ref)).numpy()
    deltas = rng.normal(0, 1.5, (50, 3 * 4)).astype(np.float32)
    deltas[:5, 2::4] = 30.0  # beyond the clamp
    deltas[5:10, 3::4] = 30.0
    out[f"boxes/deltas_{name}"] = deltas
    out[f"boxes/decode_{name}"] = coder.decode_single(t(deltas), t(ref)).numpy()  # [50, 12]
  wild = rng.uniform(-20, 90, (30, 4)).astype(np.float32)
  wild[:, 2:] = wild[:, :2] + np.abs(wild[:, 2:] - wild[:, :2])
  out["boxes/wild"] = wild
  out["boxes/clipped"] = box_ops.clip_boxes_to_image(t(wild), (50, 70)).numpy()  # (height, width)
  out["boxes/small_keep"] = box_ops.remove_small_boxes(t(wild), 12.0).numpy().astype(np.int32)

  # ------------------------------------------------------------------ nms
  cases = {}
  for seed, n in ((0, 60), (1, 150)):
    r = np.random.default_rng(100 + seed)
    b = random_boxes(r, n, zero_area=2)
    s = (np.round(r.uniform(0, 1, n) * 10) / 10).astype(np.float32)  # many ties
    for thr in (0.3, 0.5, 0.7):
      cases[f"random{seed}_{thr}"] = (b, s, thr)
  half = np.array([[0, 0, 3, 1], [1, 0, 4, 1]], np.float32)  # IoU 2/4 = 0.5 exactly
  cases["equal_0.5"] = (half, np.array([0.9, 0.8], np.float32), 0.5)
  three_fifths = np.array([[0, 0, 4, 1], [1, 0, 5, 1]], np.float32)  # IoU 3/5 in float32 > 0.6 in double
  cases["threefifths_0.6"] = (three_fifths, np.array([0.9, 0.8], np.float32), 0.6)
  ties = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [30, 30, 40, 40]], np.float32)
  cases["tied_scores_0.5"] = (ties, np.array([0.5, 0.5, 0.5, 0.5], np.float32), 0.5)
  for name, (b, s, thr) in cases.items():
    out[f"nms/{name}/boxes"], out[f"nms/{name}/scores"] = b, s
    out[f"nms/{name}/threshold"] = np.float64(thr)
    out[f"nms/{name}/keep"] = torchvision.ops.nms(t(b), t(s), thr).numpy().astype(np.int32)

  # ------------------------------------------------------------------ batched nms
  for name, n, classes, grid in (("grid", 120, 4, 8), ("large", 1200, 5, None)):
    r = np.random.default_rng(7 if grid else 8)
    b = random_boxes(r, n, grid=grid)
    s = (np.round(r.uniform(0, 1, n) * 50) / 50).astype(np.float32)
    labels = r.integers(0, classes, n).astype(np.int64)
    out[f"bnms/{name}/boxes"], out[f"bnms/{name}/scores"] = b, s
    out[f"bnms/{name}/labels"] = labels.astype(np.int32)
    out[f"bnms/{name}/keep"] = torchvision.ops.batched_nms(t(b), t(s), t(labels), 0.5).numpy().astype(np.int32)
    out[f"bnms/{name}/keep_vanilla"] = box_ops._batched_nms_vanilla(t(b), t(s), t(labels), 0.5).numpy().astype(np.int32)

  # ------------------------------------------------------------------ matcher and sampler
  r = np.random.default_rng(23)
  anchors = random_boxes(r, 300, grid=1)
  gt = random_boxes(r, 5, grid=1)
  gt[1] = gt[0]                               # identical ground truths: ties across rows
  anchors[0] = [0, 0, 10, 1]
  gt[4] = [0, 0, 7, 1]                        # IoU 7/10 with anchor 0 (float32(0.7) >= 0.7)
  anchors[1] = gt[2] + [2, 0, 2, 0]           # two anchors tie for ground truth 2's best IoU
  anchors[2] = gt[2] - [2, 0, 2, 0]
  iou = box_ops.box_iou(t(gt), t(anchors))
  # The same with a sixth ground truth that overlaps no anchor: its highest IoU is 0, and every
  # anchor "attains" it, so low-quality matching hands every anchor its best ground truth.
  gt_zero = np.concatenate([gt, np.array([[200, 200, 210, 210]], np.float32)])
  iou_zero = box_ops.box_iou(t(gt_zero), t(anchors))
  out["match/gt"], out["match/anchors"] = gt, anchors
  out["match/iou"], out["match/iou_zero"] = iou.numpy(), iou_zero.numpy()
  for name, (hi, lo, low_quality) in {"rpn": (0.7, 0.3, True), "roi": (0.5, 0.5, False),
                                      "mid": (0.6, 0.2, False), "mid_lq": (0.6, 0.2, True)}.items():
    out[f"match/{name}"] = det_utils.Matcher(hi, lo, low_quality)(iou.clone()).numpy().astype(np.int32)
    out[f"match/zero_{name}"] = det_utils.Matcher(hi, lo, low_quality)(iou_zero.clone()).numpy().astype(np.int32)
  matches = torch.from_numpy(out["match/rpn"]).long()
  labels = (matches >= 0).float()
  labels[matches == det_utils.Matcher.BELOW_LOW_THRESHOLD] = 0.0
  labels[matches == det_utils.Matcher.BETWEEN_THRESHOLDS] = -1.0
  torch.manual_seed(0)
  pos, neg = det_utils.BalancedPositiveNegativeSampler(64, 0.25)([labels])
  out["match/rpn_labels"] = labels.numpy()
  out["match/sampled_pos"], out["match/sampled_neg"] = pos[0].numpy().astype(bool), neg[0].numpy().astype(bool)

  out["versions"] = np.array(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
  np.savez_compressed(OUT, **out)
  print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(out)} arrays)")


if __name__ == "__main__":
  main()
