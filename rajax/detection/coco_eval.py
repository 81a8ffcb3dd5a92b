"""COCO detection metrics (mAP@[.5:.95], AP50, AP75, AP and AR per size) through faster-coco-eval.

  evaluate(records) -> {"map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large",
                        "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large"}

The per-image records (`rajax.detection.records.Records`) become COCO-format dicts in memory (no
files): one image per record (ids 1, 2, ... in the order added), one category per scored class
(its label as the category id), ground-truth boxes as [x, y, w, h] with area w * h, and
detections with their scores. faster-coco-eval (a maintained, tested C++ implementation of
pycocotools' COCOeval) computes the figures with COCO's standard parameters: IoU thresholds
.5:.05:.95, 101 recall points, at most 100 detections per image (the highest scored), areas
small < 32^2 <= medium < 96^2 <= large in pixels of the evaluated images. A figure COCO cannot
define (no ground truth of that size) is NaN (COCOeval's -1).

VOC's difficult boxes become crowd regions (iscrowd 1), COCO's only way to mark ground truth that
is neither required nor penalised (faster-coco-eval, like pycocotools, replaces a dataset's own
"ignore" flag with iscrowd). As in VOC, a detection matched to one is neither TP nor FP and the
box is not counted in the recall; unlike VOC, COCO measures the overlap with a crowd region as the
intersection over the detection's own area, so a detection lying mostly inside a difficult box is
ignored even where its IoU with it is below the threshold.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from rajax.detection.records import Records

STATS = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large",
         "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large")


def _library():
  try:
    import faster_coco_eval
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("COCO metrics need faster-coco-eval: pip install faster-coco-eval "
                      "(it is in requirements.txt).") from e
  return faster_coco_eval


def _xywh(boxes: np.ndarray) -> np.ndarray:
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def coco_dicts(records: Records) -> tuple[dict, list[dict]]:
  """(ground-truth dataset dict, list of detection dicts) in COCO's format, from `records`."""
  images, annotations, detections = [], [], []
  for i, rec in enumerate(records.images):
    image_id = i + 1
    image = {"id": image_id}
    if records.image_size is not None:
      image["height"], image["width"] = int(records.image_size[0]), int(records.image_size[1])
    images.append(image)
    for box, label, difficult in zip(_xywh(rec.gt_boxes), rec.gt_labels, rec.gt_difficult):
      annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                          "bbox": [float(v) for v in box], "area": float(box[2] * box[3]),
                          "iscrowd": int(bool(difficult))})
    for box, score, label in zip(_xywh(rec.det_boxes), rec.det_scores, rec.det_labels):
      if int(label) not in records.classes:
        continue  # the background is not a category
      detections.append({"image_id": image_id, "category_id": int(label), "bbox": [float(v) for v in box],
                         "score": float(score)})
  categories = [{"id": c, "name": records.class_names[c]} for c in records.classes]
  return {"images": images, "annotations": annotations, "categories": categories}, detections


def to_coco(records: Records):
  """faster-coco-eval's (COCO ground truth, COCO detections) objects for `records`."""
  lib = _library()
  dataset, detections = coco_dicts(records)
  with contextlib.redirect_stdout(io.StringIO()):
    gt = lib.COCO(dataset)
    dt = gt.loadRes(detections) if detections else gt.loadRes([])
  return gt, dt


def evaluate(records: Records) -> dict[str, float]:
  """COCO's twelve summary figures of `records` (see `STATS`), NaN where undefined."""
  if not len(records):
    raise ValueError("COCO evaluation needs at least one image in the records.")
  lib = _library()
  gt, dt = to_coco(records)
  with contextlib.redirect_stdout(io.StringIO()):
    ev = lib.COCOeval_faster(gt, dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  stats = np.asarray(ev.stats, np.float64)[:len(STATS)]
  return {name: (float(v) if v >= 0 else float("nan")) for name, v in zip(STATS, stats)}


__all__ = ["STATS", "coco_dicts", "evaluate", "to_coco"]
