"""Detection input pipelines: prepared VOC / COCO (or photos without boxes) -> static-shape padded batches.

    spec = DetectionSpec(size=(512, 512), max_boxes=100, label_space="contiguous")
    train = detection_source("voc/2007:train+validation,voc/2012:train+validation", data_dir=D)
    batches = detection_train_dataset(train, spec, Degradation("sr"), global_batch=8, seed=0)
    # or, from a run config: detection_pipeline(config, "train") / detection_pipeline(config, "eval")

A batch is a dict of numpy arrays with the same shapes for every batch (jit, sharding, TPUs):

  "target"      uint8 [b, H, W, 3]: the clean image, resized with its aspect ratio kept and padded
                with zeros at the bottom and the right to the static (H, W) = spec.size;
  "input"       the processor's input made from "target" exactly as the classification pipelines
                make it (rajax.data.pipeline.Degradation: SR bicubic down to [b, H/s, W/s, 3], JPEG,
                corruptions uint8; host noise float32); absent without a degradation, and replaced by
                "index" with the noise drawn on the device (Degradation("denoise", noise="device"));
  "boxes"       float32 [b, N, 4], (x1, y1, x2, y2) pixels of "target" (rajax.detection.BoxTargets's
                convention: x right, y down, x2 > x1, y2 > y1), N = spec.max_boxes; padding slots 0;
  "labels"      int32 [b, N] in spec.label_space (see LABEL_SPACES); padding slots 0;
  "valid"       bool [b, N], True for real boxes (always False for sources without boxes: the
                targets then come from a detector's pseudo-targets on the clean image);
  "difficult"   bool [b, N]: VOC's difficult flag, or COCO's iscrowd (both are regions an
                evaluation ignores);
  "image_size"  int32 [b, 2], (height, width) of the resized content in "target" (the rest is padding);
  "id"          int32 [b], the example's image id: COCO's image/id; VOC's file name without its "_"
                ("000005" -> 5, "2008_000002" -> 2008000002); a photo's position in its list;
  "mask"        float32 [b], evaluation only: 1 for real examples, 0 for batch padding and unreadable images;
  "index"       int32 [b], only with the noise on the device (as in rajax.data.pipeline).

`box_targets(batch)` gives the BoxTargets record of a batch (inside a jitted step as well).

Geometry, per image (in `_Transform.__call__`; each step is a small public function, tested by hand):
  1. boxes in pixels of the stored image: VOC's 1-based inclusive pixel indices become 0-based
     corners (x1 - 1, y1 - 1, x2, y2) as Detectron2 converts them (`voc_one_based`); COCO's
     (x, y, w, h) were turned into corners by `prepare coco`;
  2. checked: a box with x2 < x1 or y2 < y1, a box more than BOX_TOLERANCE pixels outside its
     image, a non-finite coordinate or an unknown class is an error (DataError naming the example);
     boxes are then clipped to the image and those of zero area dropped (counted);
  3. scale = min(H / h, W / w [, min_size / min(h, w)] [, max_size / max(h, w)]): with min_size and
     max_size set and a canvas of at least max_size x max_size it is torchvision's
     GeneralizedRCNNTransform scale (800 / 1333 for its detectors); with neither, the image is scaled
     to fit the canvas. The content is floor(h * scale) x floor(w * scale) (torch's interpolate sizes),
     resized with Pillow's bilinear filter (antialiased, as the classification pipelines resize), and
     boxes are scaled by new / old size per axis in float32 (torchvision's resize_boxes);
  4. training: a horizontal flip with probability spec.flip (x -> content width - x for the boxes);
     difficult (VOC) / crowd (COCO) boxes dropped if spec says so; images left without boxes
     skipped (spec.empty = "skip", as torchvision's COCO reference drops them), kept, or an error;
  5. padded to the canvas and to N boxes. More than N boxes: an error in evaluation (the metric
     would be wrong), the first N kept and counted in training.

Sources are random access (`len`, `[i]`) and yield canonical records {"image": bytes | uint8 array,
"boxes": float [n, 4] pixels x1y1x2y2 (or "boxes_normalized": TFDS's (ymin, xmin, ymax, xmax) in
[0, 1] with "one_based"), "classes": int [n] (the dataset's 0-based class), "difficult": bool [n],
"crowd": bool [n], "id": int}; they carry `dataset`, `classes` (names) and `annotated`:

  TfdsDetection(name, split, data_dir)   voc/<year> or coco/2017 prepared by python -m rajax.data.prepare
                                         (or by TFDS itself: the features are TFDS's);
  detection_source("voc/2007:train+validation,voc/2012:train+validation", data_dir=D)
                                         several of them concatenated (VOC07+12 trainval);
  DetectionPhotos(split)                 the bundled photos of rajax.data.photos, whole, without boxes;
  InMemoryDetection(records, classes)    records given in memory (tests, custom data).

Randomness: training example k of the endless shuffled stream draws its flip, then its degradation,
from grain's per-element generator (fixed by the seed and k); evaluation example i has no flip and
draws its degradation from default_rng([seed, i]), exactly as rajax.data.pipeline's evaluation,
so the same image gets the same degraded input in both pipelines. Training iterators are
checkpointable (get_state / set_state, as the trainer saves them).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import math
import re
import threading
from typing import Any, ClassVar, Mapping, Sequence

import grain
import numpy as np
from PIL import Image

from rajax.data.pipeline import (DEGRADATION_TASKS, Degradation, _note, _ok, decode_image, host_eval_batches,
                                 host_train_batches, photos_eval_split)


from rajax.data import photos as photos_lib
from rajax.data.sources import DataError, InMemoryRecords, tfds_source

# A box may overshoot its image by this many pixels (rounding in annotations, VOC's 1-based
# indices at the border) and is clipped; beyond that the boxes do not belong to the image.
BOX_TOLERANCE = 1.0
EMPTY_POLICIES = ("skip", "keep", "error")
LABEL_SPACES = {
    "contiguous": "the dataset's K classes at labels 1..K, 0 is background (torchvision's detectors on VOC: "
                  "21 classes; a COCO head with 81)",
    "category_id": "COCO's own category ids 1..90 as labels, 0 is background: torchvision's 91-class COCO "
                   "layout (its COCO_V1 weights); COCO only",
    "zero_based": "the K classes at labels 0..K-1, no background class (heads without one, such as "
                  "CenterNet and NanoDet on COCO-80)",
}
DATASETS = ("voc", "coco")  # the TFDS detection datasets the sources read
# VOC 2007+2012 trainval for training, VOC 2007 test for evaluation (the paper's and torchvision's setting).
VOC0712_TRAIN = "voc/2007:train+validation,voc/2012:train+validation"
VOC07_TEST = "voc/2007:test"


# --------------------------------------------------------------------------- label spaces


def dataset_classes(dataset: str) -> tuple[str, ...]:
  """The class names of a detection dataset, in the order of its 0-based labels."""
  from rajax.data import builders  # tensorflow_datasets: only when a dataset's names are asked for
  if dataset == "voc":
    return builders.VOC_LABELS
  if dataset == "coco":
    return builders.COCO_LABELS
  raise DataError(f"Unknown detection dataset {dataset!r}; one of {', '.join(DATASETS)}.")


@dataclasses.dataclass(frozen=True)
class LabelSpace:
  """How a dataset's classes 0..K-1 become a detector's labels.

  table[k] is the label of dataset class k; class_names[label] its name ("__background__" at 0
  where there is a background class, "N/A" at COCO's unused category ids); num_classes the size of
  the label space, background included (what a detector head is built with).
  """

  dataset: str
  name: str
  table: tuple[int, ...]
  class_names: tuple[str, ...]
  background: bool

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def map(self, classes: np.ndarray) -> np.ndarray:
    return np.asarray(self.table, np.int32)[np.asarray(classes, np.int64)] if len(classes) else np.zeros(0, np.int32)


def label_space(dataset: str, name: str, classes: Sequence[str] | None = None) -> LabelSpace:
  """The label space `name` (one of LABEL_SPACES) for `dataset` ("voc", "coco", or any name with `classes`)."""
  if name not in LABEL_SPACES:
    raise DataError(f"Unknown label space {name!r}; one of: "
                    + "; ".join(f"{k} ({v})" for k, v in LABEL_SPACES.items()))
  names = tuple(classes) if classes is not None else dataset_classes(dataset)
  k = len(names)
  if name == "contiguous":
    return LabelSpace(dataset, name, tuple(range(1, k + 1)), ("__background__",) + names, True)
  if name == "zero_based":
    return LabelSpace(dataset, name, tuple(range(k)), names, False)
  if dataset != "coco":
    raise DataError(f"Label space 'category_id' is COCO's 91-id layout; {dataset} has no category ids. "
                    "Use 'contiguous' (1..K, 0 background) or 'zero_based'.")
  from rajax.data import builders
  ids = builders.COCO_CATEGORY_IDS
  full = ["N/A"] * (max(ids) + 1)
  full[0] = "__background__"
  for i, n in zip(ids, names):
    full[i] = n
  return LabelSpace(dataset, name, tuple(ids), tuple(full), True)


# --------------------------------------------------------------------------- geometry (one image)


def resize_scale(height: int, width: int, *, size: tuple[int, int], min_size: int = 0, max_size: int = 0) -> float:
  """The scale of an image of height x width: it fits the canvas `size` = (H, W), and with
  min_size / max_size (> 0) also min(min_size / short side, max_size / long side), torchvision's rule."""
  candidates = [size[0] / height, size[1] / width]
  if min_size > 0:
    candidates.append(min_size / min(height, width))
  if max_size > 0:
    candidates.append(max_size / max(height, width))
  return min(candidates)


def resized_size(height: int, width: int, scale: float, size: tuple[int, int]) -> tuple[int, int]:
  """(floor(height * scale), floor(width * scale)) as torch's interpolate sizes it, within 1..size."""
  return (min(max(1, math.floor(height * scale)), size[0]), min(max(1, math.floor(width * scale)), size[1]))


def resize_boxes(boxes: np.ndarray, old: tuple[int, int], new: tuple[int, int]) -> np.ndarray:
  """Boxes [n, 4] x1y1x2y2 scaled by new / old (height, width), in float32 as torchvision's resize_boxes."""
  ratio_h = np.float32(new[0]) / np.float32(old[0])
  ratio_w = np.float32(new[1]) / np.float32(old[1])
  return np.asarray(boxes, np.float32) * np.array([ratio_w, ratio_h, ratio_w, ratio_h], np.float32)


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
  """Boxes of an image of `width` pixels mirrored left-right: (x1, x2) -> (width - x2, width - x1)."""
  boxes = np.asarray(boxes, np.float32)
  w = np.float32(width)
  return np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1).reshape(-1, 4)


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
  """Boxes clipped to [0, width] x [0, height]."""
  limit = np.array([width, height, width, height], np.float32)
  return np.clip(np.asarray(boxes, np.float32), 0, limit)


def check_boxes(boxes: np.ndarray, classes: np.ndarray, height: int, width: int, num_classes: int,
                where: str) -> None:
  """DataError for boxes that cannot be right: non-finite, x2 < x1 or y2 < y1, more than
  BOX_TOLERANCE pixels outside the height x width image, or a class outside 0..num_classes-1."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  if len(boxes) != len(classes):
    raise DataError(f"{where}: {len(boxes)} boxes but {len(classes)} class labels.")
  for i, (x1, y1, x2, y2) in enumerate(boxes):
    box = f"box {i} (x1, y1, x2, y2) = ({x1:g}, {y1:g}, {x2:g}, {y2:g})"
    if not np.all(np.isfinite([x1, y1, x2, y2])):
      raise DataError(f"{where}: {box} is not finite.")
    if x2 < x1 or y2 < y1:
      raise DataError(f"{where}: {box} has x2 < x1 or y2 < y1; boxes are corners (x1, y1, x2, y2), "
                      "not (x, y, w, h) or (y1, x1, y2, x2).")
    t = BOX_TOLERANCE
    if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
      raise DataError(f"{where}: {box} lies outside the {width}x{height} image (by more than {t:g} px); "
                      "boxes must be pixels of the stored image.")
  bad = [int(c) for c in classes if not 0 <= int(c) < num_classes]
  if bad:
    raise DataError(f"{where}: class {bad[0]} is not one of the dataset's {num_classes} classes (0..{num_classes - 1}).")


def pad_to_canvas(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """`img` at the top left of a zero uint8 canvas of `size` = (H, W)."""
  out = np.zeros((size[0], size[1], 3), np.uint8)
  out[:img.shape[0], :img.shape[1]] = img
  return out


# --------------------------------------------------------------------------- the per-image transform


@dataclasses.dataclass(frozen=True)
class DetectionSpec:
  """What the detection pipelines make of each image (the fields of config.data.detection).

  size            (H, W), the static canvas every image is resized into and padded to.
  min_size, max_size  torchvision's short/long-side limits (0: none); the canvas must then hold the
                  result, i.e. be at least max_size x max_size to never bind (torchvision: 800, 1333).
  max_boxes       N, the box slots per image.
  flip            probability of a horizontal flip in training.
  label_space     one of LABEL_SPACES.
  drop_difficult  training: drop VOC's difficult boxes (evaluation keeps them, flagged).
  drop_crowd      training: drop COCO's crowd boxes, as torchvision's COCO reference does (evaluation keeps them, flagged).
  empty           training images left without boxes: "skip" them, "keep" them (negatives) or raise an "error".
  voc_one_based   convert VOC's 1-based pixel indices to 0-based corners (x1 - 1, y1 - 1, x2, y2).
  """

  size: tuple[int, int] = (512, 512)
  min_size: int = 0
  max_size: int = 0
  max_boxes: int = 100
  flip: float = 0.5
  label_space: str = "contiguous"
  drop_difficult: bool = False
  drop_crowd: bool = True
  empty: str = "skip"
  voc_one_based: bool = True

  def __post_init__(self):
    size = tuple(int(s) for s in self.size) if isinstance(self.size, (tuple, list)) else ()
    if len(size) != 2 or min(size) < 8:
      raise DataError(f"detection size={self.size!r} must be (height, width), each >= 8.")
    object.__setattr__(self, "size", size)
    if self.min_size < 0 or self.max_size < 0:
      raise DataError(f"detection min_size={self.min_size} and max_size={self.max_size} must be >= 0 (0: no limit).")
    if self.max_boxes < 1:
      raise DataError(f"detection max_boxes={self.max_boxes} must be >= 1.")
    if not 0.0 <= self.flip <= 1.0:
      raise DataError(f"detection flip={self.flip} is a probability; give a value in [0, 1].")
    if self.label_space not in LABEL_SPACES:
      raise DataError(f"detection label_space={self.label_space!r}: one of {', '.join(LABEL_SPACES)}.")
    if self.empty not in EMPTY_POLICIES:
      raise DataError(f"detection empty={self.empty!r}: one of {', '.join(EMPTY_POLICIES)}.")

  @classmethod
  def from_config(cls, cfg: Any) -> "DetectionSpec":
    """From a ConfigDict / mapping / object with (some of) the fields; unknown fields are an error."""
    values = dict(cfg.items()) if hasattr(cfg, "items") else dict(vars(cfg))
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise DataError(f"Unknown detection data field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    return cls(**values)

  def check_degradation(self, degradation: Degradation | None) -> None:
    if degradation is not None and degradation.task == "sr":
      s = degradation.scale
      if self.size[0] % s or self.size[1] % s:
        raise DataError(f"detection size={self.size} is not divisible by the SR scale {s}; "
                        f"use a multiple of {s} (e.g. {tuple(-(-x // s) * s for x in self.size)}).")


def config_defaults() -> dict:
  """The DetectionSpec fields with their defaults, for config.data.detection."""
  return {f.name: f.default for f in dataclasses.fields(DetectionSpec)}


_EMPTY_LOCK = threading.Lock()
_EMPTY: collections.Counter = collections.Counter()
# Past this many training images skipped for having no boxes, more of them than images kept means
# the data has no annotations (or the filters remove all of them): stop instead of spinning.
_MIN_EMPTY_BEFORE_GIVING_UP = 200


def _count_empty(skipped: bool, where: str) -> None:
  with _EMPTY_LOCK:
    _EMPTY["skipped" if skipped else "kept"] += 1
    n, kept = _EMPTY["skipped"], _EMPTY["kept"]
  if skipped:
    _note("skipped_no_boxes", where)
    if n >= _MIN_EMPTY_BEFORE_GIVING_UP and n > kept:
      raise DataError(f"{n} training images had no boxes left and only {kept} had some (latest: {where}). "
                      "The source has no annotations, or drop_difficult / drop_crowd remove them all; "
                      "use a source with boxes or detection.empty='keep'.")


def _voc_id(file_name: Any, fallback: int) -> int:
  stem = (file_name.decode() if isinstance(file_name, bytes) else str(file_name)).rsplit("/", 1)[-1].split(".")[0]
  digits = stem.replace("_", "")
  return int(digits) if digits.isdigit() and int(digits) < 2**31 else fallback


@dataclasses.dataclass(frozen=True)
class _Transform:
  """A canonical record -> one padded example (see the module docstring for the steps)."""

  spec: DetectionSpec
  labels: LabelSpace | None      # None: a source without boxes
  num_classes: int               # the dataset's class count (for the checks)
  annotated: bool
  degradation: Degradation | None

  def __call__(self, record: Mapping[str, Any], img: np.ndarray, rng: np.random.Generator | None, train: bool,
               where: str) -> dict | None:
    """`img` is record["image"] decoded (the callers skip or mask what cannot be decoded)."""
    spec = self.spec
    h, w = img.shape[:2]
    boxes = _pixel_boxes(record, h, w)
    classes = np.asarray(record.get("classes", np.zeros(0)), np.int64).reshape(-1)
    difficult = np.asarray(record.get("difficult", np.zeros(len(boxes), bool)), bool).reshape(-1)
    crowd = np.asarray(record.get("crowd", np.zeros(len(boxes), bool)), bool).reshape(-1)
    if not len(difficult) == len(crowd) == len(boxes):
      raise DataError(f"{where}: {len(boxes)} boxes but {len(difficult)} difficult and {len(crowd)} crowd flags.")
    check_boxes(boxes, classes, h, w, self.num_classes, where)
    boxes = clip_boxes(boxes, h, w)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if not keep.all():
      _note("dropped_zero_area_boxes", f"{where}: {int((~keep).sum())} box(es)")
    if train:
      keep &= ~(difficult & spec.drop_difficult) & ~(crowd & spec.drop_crowd)
    boxes, classes, flags = boxes[keep], classes[keep], (difficult | crowd)[keep]
    labels = self.labels.map(classes) if self.labels is not None else np.zeros(0, np.int32)

    scale = resize_scale(h, w, size=spec.size, min_size=spec.min_size, max_size=spec.max_size)
    nh, nw = resized_size(h, w, scale, spec.size)
    if (nh, nw) != (h, w):
      img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    boxes = resize_boxes(boxes, (h, w), (nh, nw))
    if train:
      flip = rng.random() < spec.flip  # always drawn: the degradation's draws do not depend on spec.flip
      if flip:
        img = img[:, ::-1]
        boxes = flip_boxes(boxes, nw)
    boxes = clip_boxes(boxes, nh, nw)

    n = len(boxes)
    if train and self.annotated and n == 0:
      if spec.empty == "error":
        raise DataError(f"{where}: no boxes left for training (detection.empty='error'); use 'skip' or 'keep'.")
      _count_empty(spec.empty == "skip", where)
      if spec.empty == "skip":
        return None
    elif train and self.annotated:
      _count_empty(False, where)
    if n > spec.max_boxes:
      if not train:
        raise DataError(f"{where} has {n} boxes, more than detection.max_boxes={spec.max_boxes}; raise max_boxes "
                        "(evaluation cannot drop ground truth).")
      _note("truncated_to_max_boxes", f"{where}: {n} boxes > {spec.max_boxes}")
      boxes, labels, flags, n = boxes[:spec.max_boxes], labels[:spec.max_boxes], flags[:spec.max_boxes], spec.max_boxes
    m = spec.max_boxes
    out = {
        "target": pad_to_canvas(np.ascontiguousarray(img), spec.size),
        "boxes": np.zeros((m, 4), np.float32),
        "labels": np.zeros((m,), np.int32),
        "valid": np.arange(m) < n,
        "difficult": np.zeros((m,), bool),
        "image_size": np.array([nh, nw], np.int32),
        "id": np.int32(record.get("id", -1)),
    }
    out["boxes"][:n], out["labels"][:n], out["difficult"][:n] = boxes, labels, flags
    return out


def _pixel_boxes(record: Mapping[str, Any], h: int, w: int) -> np.ndarray:
  if "boxes" in record:
    return np.asarray(record["boxes"], np.float32).reshape(-1, 4)
  yxyx = np.asarray(record.get("boxes_normalized", np.zeros((0, 4))), np.float64).reshape(-1, 4)
  boxes = yxyx[:, [1, 0, 3, 2]] * np.array([w, h, w, h], np.float64)
  if record.get("one_based", False):
    boxes[:, :2] -= 1.0
  return boxes.astype(np.float32)


def _blank(spec: DetectionSpec, record_id: int) -> dict:
  m = spec.max_boxes
  return {"target": np.zeros((*spec.size, 3), np.uint8), "boxes": np.zeros((m, 4), np.float32),
          "labels": np.zeros((m,), np.int32), "valid": np.zeros((m,), bool), "difficult": np.zeros((m,), bool),
          "image_size": np.zeros((2,), np.int32), "id": np.int32(record_id)}


def _transform(source, spec: DetectionSpec, degradation: Degradation | None) -> _Transform:
  spec.check_degradation(degradation)
  annotated = bool(getattr(source, "annotated", True))
  classes = tuple(getattr(source, "classes", ()))
  labels = label_space(getattr(source, "dataset", "custom"), spec.label_space, classes) if annotated else None
  return _Transform(spec, labels, len(classes), annotated, degradation)


@dataclasses.dataclass(frozen=True)
class DetectionTrainExample(grain.transforms.RandomMap):
  """Stream element -> training example (flip and degradation from the element's generator); an
  unreadable image or (with empty='skip') an image without boxes gives None, which grain drops."""

  transform: _Transform

  def random_map(self, element: dict, rng: np.random.Generator) -> dict | None:
    where = f"training example id {element.get('id', '?')}"
    try:
      img = decode_image(element["image"])
    except DataError as e:  # skipped, as the classification pipelines skip it
      _note("skipped_unreadable", f"{where}: {e}")
      return None
    _ok()
    out = self.transform(element, img, rng, True, where)
    if out is None:
      return None
    deg = self.transform.degradation
    if deg is not None and deg.on_device:
      out["index"] = np.int32(element["_position"])
    elif deg is not None:
      out["input"] = deg(out["target"], rng)
    return out


@dataclasses.dataclass(frozen=True)
class DetectionEvalExample:
  """Padded position j -> evaluation example of index(j): no flip, degradation from default_rng([seed, index]);
  an unreadable image gives a blank example with mask 0."""

  source: Any
  transform: _Transform
  seed: int
  indices: np.ndarray  # example index of each position; -1 marks padding

  def __call__(self, position: int) -> dict:
    index = int(self.indices[position])
    record = self.source[max(index, 0)]
    where = f"evaluation example {index} (id {record.get('id', '?')})"
    mask = np.float32(index >= 0)
    try:
      img = decode_image(record["image"])
    except DataError as e:  # masked out, as the classification pipelines do
      _note("skipped_unreadable", f"{where}: {e}")
      img = None
    if img is None:
      out, mask = _blank(self.transform.spec, int(record.get("id", -1))), np.float32(0)
    else:
      _ok()
      out = self.transform(record, img, None, False, where)
    out["mask"] = mask
    deg = self.transform.degradation
    if deg is not None and deg.on_device:
      out["index"] = np.int32(max(index, 0))
    elif deg is not None:
      out["input"] = deg(out["target"], np.random.default_rng([self.seed, max(index, 0)]))
    return out


# --------------------------------------------------------------------------- datasets


def detection_train_dataset(
    source: Sequence[dict],
    spec: DetectionSpec,
    degradation: Degradation | None = None,
    *,
    global_batch: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    workers: int = 0,
    threads: int = 2,
) -> grain.IterDataset:
  """Endless per-host training batches (the batch format of the module docstring), reshuffled each
  epoch; the global order and the hosts' blocks are those of rajax.data.pipeline.train_dataset, and
  the iterator is checkpointable (a rebuilt iterator with the same arguments resumes exactly)."""
  transform = _transform(source, spec, degradation)
  return host_train_batches(source, DetectionTrainExample(transform),
                            with_position=degradation is not None and degradation.on_device, global_batch=global_batch,
                            seed=seed, process_index=process_index, process_count=process_count, workers=workers,
                            threads=threads)


def detection_eval_dataset(
    source: Sequence[dict],
    spec: DetectionSpec,
    degradation: Degradation | None = None,
    *,
    global_batch: int,
    seed: int,
    num_examples: int = -1,
    process_index: int = 0,
    process_count: int = 1,
    workers: int = 0,
    threads: int = 8,
) -> grain.IterDataset:
  """Per-host evaluation batches over the first `num_examples` examples (all if < 0), re-iterable;
  every host gets the same number of batches, padding positions have mask 0 (as eval_dataset)."""
  transform = _transform(source, spec, degradation)
  return host_eval_batches(len(source), lambda indices: DetectionEvalExample(source, transform, seed, indices),
                           global_batch=global_batch, num_examples=num_examples, process_index=process_index,
                           process_count=process_count, workers=workers, threads=threads)


def box_targets(batch: Mapping[str, Any]):
  """The batch's boxes as a rajax.detection.BoxTargets (numpy or jax arrays alike)."""
  from rajax.detection.types import BoxTargets  # jax: not needed by the host pipelines
  return BoxTargets(boxes=batch["boxes"], labels=batch["labels"], valid=batch["valid"], difficult=batch["difficult"])


# --------------------------------------------------------------------------- sources


def dataset_of(name: str) -> str:
  """"voc" or "coco" for a TFDS dataset name such as "voc/2007" or "coco/2017:1.1.0"."""
  base = name.split("/")[0].split(":")[0]
  if base not in DATASETS:
    raise DataError(f"Detection data must be a prepared {' or '.join(DATASETS)} dataset (voc/2007, voc/2012, "
                    f"coco/2017: python -m rajax.data.prepare voc|coco); got {name!r}.")
  return base


class TfdsDetection:
  """A prepared TFDS detection dataset (voc/<year> or coco/2017) as canonical records, images encoded."""

  annotated: ClassVar[bool] = True

  def __init__(self, name: str, split: str, data_dir: str | None, *, voc_one_based: bool = True):
    self.name, self.split, self.voc_one_based = name, split, voc_one_based
    self.dataset = dataset_of(name)
    self.classes = dataset_classes(self.dataset)
    self._source = tfds_source(name, split=split, data_dir=data_dir)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    ex = self._source[index]
    if "objects" not in ex:
      raise DataError(f"{self.name} {self.split} example {index} has no 'objects' (keys: {sorted(ex)}): "
                      "not a TFDS detection dataset.")
    obj = ex["objects"]
    n = len(np.asarray(obj["label"]).reshape(-1))
    record = {"image": ex["image"], "boxes_normalized": np.asarray(obj["bbox"], np.float32).reshape(-1, 4),
              "classes": np.asarray(obj["label"], np.int64).reshape(-1),
              "difficult": np.zeros(n, bool), "crowd": np.zeros(n, bool)}
    if self.dataset == "voc":
      record["difficult"] = np.asarray(obj["is_difficult"], bool).reshape(-1)
      record["one_based"] = self.voc_one_based
      record["id"] = _voc_id(ex.get("image/filename", b""), index)
    else:
      record["crowd"] = np.asarray(obj["is_crowd"], bool).reshape(-1)
      record["id"] = int(ex["image/id"])
    return record

  def __repr__(self) -> str:
    return f"TfdsDetection({self.name!r}, {self.split!r}, {len(self)} examples)"


class ConcatSource:
  """Sources of one dataset one after the other (VOC 2007 and 2012 trainval for training)."""

  def __init__(self, sources: Sequence[Any]):
    if not sources:
      raise DataError("ConcatSource needs at least one source.")
    kinds = {(getattr(s, "dataset", None), tuple(getattr(s, "classes", ())), getattr(s, "annotated", True))
             for s in sources}
    if len(kinds) > 1:
      raise DataError(f"Cannot concatenate sources of different datasets or classes: {list(sources)}.")
    self.sources = list(sources)
    self.dataset, self.classes, self.annotated = kinds.pop()
    self._ends = np.cumsum([len(s) for s in self.sources]).tolist()

  def __len__(self) -> int:
    return self._ends[-1]

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} examples")
    k = bisect.bisect_right(self._ends, index)
    return self.sources[k][index - (self._ends[k - 1] if k else 0)]

  def __repr__(self) -> str:
    return f"ConcatSource({self.sources})"


_SPLIT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_splits(spec: str, default_name: str = "") -> list[tuple[str, str]]:
  """"voc/2007:train+validation,voc/2012:train" -> [(voc/2007, train), (voc/2007, validation), (voc/2012, train)].

  Items are separated by ",", splits of one dataset by "+"; an item without "NAME:" reads `default_name`.
  A name may carry a version ("voc/2007:5.0.0:test").
  """
  out = []
  for item in (s.strip() for s in spec.split(",")):
    if not item:
      continue
    name, _, splits = item.rpartition(":")
    name = name or default_name
    if not name:
      raise DataError(f"Detection split {item!r} names no dataset; write NAME:SPLIT (e.g. {VOC07_TEST}).")
    for split in splits.split("+"):
      if not _SPLIT_NAME.fullmatch(split):
        raise DataError(f"Detection split spec {spec!r}: {split!r} is not a split name; write "
                        "NAME[:VERSION]:SPLIT[+SPLIT] items separated by commas.")
      out.append((name, split))
  if not out:
    raise DataError(f"Detection split spec {spec!r} is empty.")
  return out


def detection_source(spec: str, *, data_dir: str | None, default_name: str = "", voc_one_based: bool = True):
  """The source of a split spec (see parse_splits): one TfdsDetection, or their ConcatSource."""
  sources = [TfdsDetection(n, s, data_dir, voc_one_based=voc_one_based) for n, s in parse_splits(spec, default_name)]
  return sources[0] if len(sources) == 1 else ConcatSource(sources)


class DetectionPhotos(photos_lib.WholePhotos):
  """The photos of rajax.data.photos, whole and without boxes (targets: a detector's pseudo-targets
  on the clean image): rajax.data.photos.WholePhotos with empty boxes."""

  def record(self, image: np.ndarray, k: int) -> dict:
    return {"image": image, "boxes": np.zeros((0, 4), np.float32), "classes": np.zeros(0, np.int64), "id": k}


class InMemoryDetection(InMemoryRecords):
  """Canonical records held in memory (see the module docstring), with the dataset's class names."""


# --------------------------------------------------------------------------- from a run config


def config_degradation(config) -> Degradation | None:
  """The degradation `config` trains and evaluates with (config.task, config.degrade, config.data.noise),
  or None when its task degrades nothing."""
  task, deg = _get(config, "task", ""), _get(config, "degrade", None)
  if task not in DEGRADATION_TASKS:
    return None
  return Degradation(task=task, scale=_get(deg, "scale", 4), sigma=_get(deg, "sigma", 0.1),
                     quality=_get(deg, "quality", 10), corruption=_get(deg, "corruption", ""),
                     severity=_get(deg, "severity", 3), noise=_get(config.data, "noise", "host"),
                     kernel=_get(deg, "kernel", "pil"))


def _get(cfg: Any, key: str, default: Any = None) -> Any:
  if cfg is None:
    return default
  if hasattr(cfg, "get"):
    value = cfg.get(key, default)
  else:
    value = getattr(cfg, key, default)
  return default if value is None else value


def config_source(config: Any, split: str):
  """The source of the training ("train") or evaluation ("eval") examples a run config names."""
  data, train = config.data, split == "train"
  spec = DetectionSpec.from_config(_get(data, "detection", {}))
  kind = _get(data, "source", "tfds")
  if kind == "tfds":
    return detection_source(_get(data, "train_split" if train else "eval_split"), data_dir=_get(data, "data_dir"),
                            default_name=_get(data, "name", ""), voc_one_based=spec.voc_one_based)
  if kind == "photos":
    return DetectionPhotos("train" if train else photos_eval_split(_get(data, "eval_split", "validation")),
                           repeats=_get(_get(data, "photos"), "repeats", 1) if train else 1)
  raise DataError(f"Detection data.source={kind!r}: use 'tfds' (voc, coco) or 'photos'.")


def detection_pipeline(config: Any, split: str, *, process_index: int = 0, process_count: int = 1,
                       source: Any = None) -> grain.IterDataset:
  """The training ("train") or evaluation ("eval") batches a run config asks for.

  Reads config.seed, config.task ("sr" | "denoise" | "jpeg" | "corrupt" make an "input"; anything
  else, e.g. "detection", none), config.degrade.{scale, sigma, quality, corruption, severity} and
  config.data.{source ("tfds" | "photos"), name, data_dir, train_split, eval_split (split specs:
  VOC0712_TRAIN, VOC07_TEST, "train", ...), batch_size, eval_batch_size, num_eval_examples, workers,
  threads, noise, photos.repeats, detection (DetectionSpec fields)}. `source` overrides the source.
  """
  if split not in ("train", "eval"):
    raise DataError(f"detection_pipeline split must be 'train' or 'eval', got {split!r}.")
  data, train = config.data, split == "train"
  spec = DetectionSpec.from_config(_get(data, "detection", {}))
  degradation = config_degradation(config)
  if source is None:
    source = config_source(config, split)
  seed = int(_get(config, "seed", 0))
  common = dict(seed=seed, process_index=process_index, process_count=process_count,
                workers=int(_get(data, "workers", 0)), threads=int(_get(data, "threads", 8 if not train else 2)))
  if train:
    return detection_train_dataset(source, spec, degradation, global_batch=int(_get(data, "batch_size")), **common)
  return detection_eval_dataset(source, spec, degradation, global_batch=int(_get(data, "eval_batch_size")),
                                num_examples=int(_get(data, "num_eval_examples", -1)), **common)
