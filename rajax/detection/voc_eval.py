"""PASCAL VOC detection average precision, host-side NumPy, from accumulated per-image records.

  evaluate(records, iou_threshold=0.5) -> VOCResult(ap11, ap_area, num_gt, map11, map_area, ...)

The protocol is the VOC devkit's (as in py-faster-rcnn's and Detectron's voc_eval.py), per class:
- detections of the class over all images, by descending score (a stable sort: ties in the order
  the images were added, then in each image's slot order);
- a detection's best ground truth is the class's box of that image with the highest IoU (difficult
  ones included); IoU > iou_threshold (strictly) with a difficult box: ignored (neither TP nor
  FP); with a non-difficult box not yet taken: TP, the box is taken; taken already, or IoU not
  above the threshold: FP;
- recall = TP / (non-difficult ground truths), precision = TP / (TP + FP) along the ranking;
- `ap11` is VOC2007's 11-point interpolated AP (the paper's VOC07 figure): the mean over
  t = 0, 0.1, ..., 1 (np.arange(0, 1.1, 0.1), as py-faster-rcnn: its 0.30000000000000004 and
  0.7000000000000001 are used as they are) of the highest precision at recall >= t (0 if none);
  `ap_area` is VOC2010+'s all-point AP: the area under the precision envelope (precision made
  non-increasing from the right), summed over the recall steps.
mAP is the mean over classes with at least one non-difficult ground truth; other classes get NaN
(and are left out). IoU uses rajax's box convention (x2 - x1, no +1); the devkit's "+1" IoU on its
inclusive pixel boxes is the same number for boxes converted as (xmin - 1, ymin - 1, xmax, ymax).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from rajax.detection.records import Records

ELEVEN_POINTS = np.arange(0.0, 1.1, 0.1)


def ap_11_point(recall: np.ndarray, precision: np.ndarray) -> float:
  """VOC2007's 11-point interpolated average precision of a ranked list's recall/precision curve."""
  recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
  total = 0.0
  for t in ELEVEN_POINTS:
    above = recall >= t
    total += float(np.max(precision[above])) if above.any() else 0.0
  return total / 11.0


def ap_area(recall: np.ndarray, precision: np.ndarray) -> float:
  """All-point average precision (VOC2010+): the area under the precision envelope."""
  mrec = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
  mpre = np.concatenate([[0.0], np.asarray(precision, np.float64), [0.0]])
  mpre = np.maximum.accumulate(mpre[::-1])[::-1]
  steps = np.flatnonzero(mrec[1:] != mrec[:-1])
  return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU [len(a), len(b)] of (x1, y1, x2, y2) boxes, float64, 0 for empty unions."""
  a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
  w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
  h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
  inter = w * h
  area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
  area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  union = area_a[:, None] + area_b[None, :] - inter
  return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


class ClassCurve(NamedTuple):
  """One class's ranked detections: scores, TP and FP flags (both 0 for ignored ones), and its count
  of non-difficult ground truths."""

  scores: np.ndarray
  tp: np.ndarray
  fp: np.ndarray
  num_gt: int


def class_curve(records: Records, cls: int, iou_threshold: float = 0.5) -> ClassCurve:
  """TP/FP flags of class `cls`'s detections, in the protocol's global ranking."""
  scores, tps, fps, num_gt = [], [], [], 0
  for rec in records.images:
    gmask = rec.gt_labels == cls
    gt, difficult = rec.gt_boxes[gmask], rec.gt_difficult[gmask]
    num_gt += int(np.sum(~difficult))
    dmask = rec.det_labels == cls
    if not dmask.any():
      continue
    s = rec.det_scores[dmask]
    order = np.argsort(-s, kind="stable")
    s, boxes = s[order], rec.det_boxes[dmask][order]
    tp, fp = np.zeros(len(s)), np.zeros(len(s))
    if len(gt) == 0:
      fp[:] = 1.0
    else:
      overlaps = pairwise_iou(boxes, gt)
      best, which = overlaps.max(axis=1), overlaps.argmax(axis=1)
      taken = np.zeros(len(gt), bool)
      for k in range(len(s)):
        if best[k] > iou_threshold:
          j = which[k]
          if difficult[j]:
            continue
          if not taken[j]:
            tp[k], taken[j] = 1.0, True
          else:
            fp[k] = 1.0
        else:
          fp[k] = 1.0
    scores.append(s)
    tps.append(tp)
    fps.append(fp)
  if not scores:
    return ClassCurve(np.zeros(0, np.float32), np.zeros(0), np.zeros(0), num_gt)
  scores, tps, fps = np.concatenate(scores), np.concatenate(tps), np.concatenate(fps)
  order = np.argsort(-scores, kind="stable")
  return ClassCurve(scores[order], tps[order], fps[order], num_gt)


def precision_recall(curve: ClassCurve) -> tuple[np.ndarray, np.ndarray]:
  """(recall, precision) along the ranking (the devkit's cumulative sums)."""
  tp, fp = np.cumsum(curve.tp), np.cumsum(curve.fp)
  recall = tp / max(curve.num_gt, 1) if curve.num_gt else np.full_like(tp, np.nan)
  precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
  return recall, precision


class VOCResult(NamedTuple):
  """Per-class AP (indexed by class, NaN where a class has no non-difficult ground truth, and for the
  background) and their means over the evaluated classes."""

  ap11: np.ndarray       # [num_classes] float64
  ap_area: np.ndarray    # [num_classes] float64
  num_gt: np.ndarray     # [num_classes] int, non-difficult ground truths
  map11: float
  map_area: float
  class_names: tuple[str, ...]

  def per_class(self) -> dict[str, dict[str, float]]:
    """{class name: {"ap11", "ap_area", "num_gt"}} for the evaluated classes."""
    return {self.class_names[c]: {"ap11": float(self.ap11[c]), "ap_area": float(self.ap_area[c]),
                                  "num_gt": int(self.num_gt[c])}
            for c in range(len(self.class_names)) if np.isfinite(self.ap11[c])}


def evaluate(records: Records, iou_threshold: float = 0.5) -> VOCResult:
  """VOC AP of every class of `records` at `iou_threshold` (0.5 for VOC07 mAP@0.5)."""
  if not 0.0 <= iou_threshold < 1.0:
    raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}.")
  c = records.num_classes
  ap11, area, num_gt = np.full(c, np.nan), np.full(c, np.nan), np.zeros(c, np.int64)
  for cls in records.classes:
    curve = class_curve(records, cls, iou_threshold)
    num_gt[cls] = curve.num_gt
    if curve.num_gt == 0:
      continue
    if len(curve.scores) == 0:
      ap11[cls] = area[cls] = 0.0
      continue
    recall, precision = precision_recall(curve)
    ap11[cls], area[cls] = ap_11_point(recall, precision), ap_area(recall, precision)
  scored = np.isfinite(ap11)
  map11 = float(np.mean(ap11[scored])) if scored.any() else float("nan")
  map_area = float(np.mean(area[scored])) if scored.any() else float("nan")
  return VOCResult(ap11, area, num_gt, map11, map_area, records.class_names)


__all__ = ["ClassCurve", "VOCResult", "ap_11_point", "ap_area", "class_curve", "evaluate", "pairwise_iou",
           "precision_recall"]
