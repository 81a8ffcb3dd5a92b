"""Segmentation input pipelines: prepared VOC 2012 / Cityscapes (or photos without labels) -> static-shape batches.

    spec = SegmentationSpec(size=(480, 480), resize=520, scale_range=(0.5, 2.0))
    train = segmentation_source("voc_seg:train_aug", data_dir=D)
    batches = segmentation_train_dataset(train, spec, Degradation("sr"), global_batch=8, seed=0)
    # or, from a run config: segmentation_pipeline(config, "train") / segmentation_pipeline(config, "eval")

A batch is a dict of numpy arrays with the same shapes for every batch:

  "target"      uint8 [b, H, W, 3], (H, W) = spec.size (evaluation: spec.eval_size if set): the clean
                image (resized, flipped and cropped in training; resized and padded in evaluation),
                zeros where it is padding;
  "label_map"   int32 [b, H, W]: class indices 0..K-1 of the dataset, IGNORE_LABEL (255) for pixels
                to ignore (VOC's object boundaries, Cityscapes' void ids, padding; everywhere for
                sources without labels, whose targets come from a segmenter on the clean image);
  "input"       the processor's input made from "target" as the classification pipelines make it
                (rajax.data.pipeline.Degradation); absent without a degradation, replaced by "index"
                with the noise on the device;
  "image_size"  int32 [b, 2], (height, width) of the real pixels at the top left of "target";
  "id"          int32 [b]: VOC's file name without its "_" ("2007_000032" -> 2007000032), else the
                example's position in its split; -1 for evaluation batch padding;
  "mask"        float32 [b], evaluation only: 1 for real examples, 0 for batch padding and unreadable images;
  "index"       int32 [b], only with the noise on the device (as in rajax.data.pipeline).

Geometry, per image (`_Transform.__call__`), as torchvision's segmentation reference
(references/segmentation/transforms.py) does it:
  1. the label map is checked: the size of its image, values in 0..K-1 or 255 (DataError naming
     the example otherwise);
  2. resized so its short side is `resize` (0: the stored size), times a factor drawn in
     `scale_range` in training: the short side is an integer drawn uniformly between the two ends,
     as torchvision's RandomResize draws it; the long side is truncated (torchvision's Resize).
     Images with Pillow's bilinear filter (antialiased, as everywhere in rajax.data), label maps
     with NEAREST, so a resized map holds only values of the original;
  3. training: a horizontal flip with probability spec.flip (image and labels together), then
     padding at the bottom and the right up to the crop (images with 0, labels with 255: torchvision's
     pad_if_smaller) and a uniformly placed crop of spec.size;
     evaluation: no flip or crop; the resized image (evaluation short side `eval_resize`) is padded
     to spec.eval_size (or size; 0 / 255), so every labelled pixel is scored once. An image larger than the
     canvas is an error (raise size, or lower eval_resize).

Randomness: training example k of the endless shuffled stream draws its scale, flip, crop offsets
and then its degradation from grain's per-element generator (fixed by the seed and k); evaluation
example i draws its degradation from default_rng([seed, i]), as rajax.data.pipeline's evaluation.
Training iterators are checkpointable (get_state / set_state). Unreadable images are skipped in
training and masked out in evaluation (counted, as the other pipelines do); wrong label maps are errors.

Sources are random access (`len`, `[i]`) and yield {"image": bytes | uint8 [H, W, 3], "label_map":
PNG bytes | integer [H, W] (absent without labels), "id": int}; they carry `dataset`, `classes`
(names) and `annotated`:

  TfdsSegmentation(name, split, data_dir)   voc_seg or cityscapes prepared by python -m rajax.data.prepare;
  segmentation_source("voc_seg:train+validation", data_dir=D)   several of them concatenated;
  SegmentationPhotos(split)                 the bundled photos of rajax.data.photos, without label maps;
  InMemorySegmentation(records, classes)    records given in memory (tests, custom data).
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any, ClassVar, Mapping, Sequence

import grain
import numpy as np
from PIL import Image

from rajax.data.detection import ConcatSource, _get, _voc_id, config_degradation, parse_splits
from rajax.data.pipeline import (Degradation, _note, _ok, _short_side_size, decode_image,
                                 host_eval_batches, host_train_batches, photos_eval_split)
from rajax.data import photos as photos_lib
from rajax.data.sources import DataError, InMemoryRecords, _prepared_dir

IGNORE_LABEL = 255

# VOC 2012 segmentation: background, then VOC's 20 classes in alphabetical order (the PNGs' palette indices).
VOC_SEG_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
                   "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
                   "train", "tvmonitor")

# cityscapesscripts/helpers/labels.py: (name, id, trainId) of the 34 ids a *_labelIds.png holds, plus the
# license plate (id -1, which no label image contains). trainId 255: ignored in training and evaluation.
CITYSCAPES_LABELS = (
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255), ("out of roi", 3, 255),
    ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255), ("road", 7, 0), ("sidewalk", 8, 1),
    ("parking", 9, 255), ("rail track", 10, 255), ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4),
    ("guard rail", 14, 255), ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9), ("sky", 23, 10),
    ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15),
    ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
    ("license plate", -1, -1),
)
# The 19 classes, in train-id order.
CITYSCAPES_CLASSES = tuple(name for name, _, _ in sorted((l for l in CITYSCAPES_LABELS if 0 <= l[2] < 255),
                                                         key=lambda l: l[2]))
DATASETS = {"voc_seg": VOC_SEG_CLASSES, "cityscapes": CITYSCAPES_CLASSES}


def dataset_classes(dataset: str) -> tuple[str, ...]:
  """The class names of a segmentation dataset, in the order of its label indices."""
  if dataset not in DATASETS:
    raise DataError(f"Unknown segmentation dataset {dataset!r}; one of {', '.join(DATASETS)} "
                    "(python -m rajax.data.prepare voc_seg|cityscapes).")
  return DATASETS[dataset]


def dataset_of(name: str) -> str:
  """"voc_seg" or "cityscapes" for a TFDS dataset name such as "voc_seg:1.0.0"."""
  base = name.split("/")[0].split(":")[0]
  dataset_classes(base)
  return base


# --------------------------------------------------------------------------- label maps


def decode_label_map(data: Any, where: str = "label map") -> np.ndarray:
  """Encoded PNG bytes or an integer array -> uint8 [H, W] class indices.

  A palette PNG (VOC's SegmentationClass) gives its palette indices, an 8-bit grayscale PNG its
  values; colour renderings (RGB: VOC's palette colours, Cityscapes' *_color.png) and 16-bit maps
  (*_instanceIds.png) are not class indices and are refused.
  """
  if isinstance(data, (bytes, bytearray, np.bytes_, memoryview)):
    try:
      with Image.open(io.BytesIO(bytes(data))) as im:
        mode = im.mode
        arr = np.asarray(im) if mode in ("P", "L") else None
    except (OSError, ValueError, SyntaxError) as e:
      raise DataError(f"{where}: cannot decode the label map ({len(data)} bytes): {e}") from e
    if arr is None:
      raise DataError(f"{where}: the label map is a {mode} image, not a map of class indices (a palette or "
                      "8-bit grayscale PNG); colour renderings (*_color.png) and instance maps do not work.")
    return arr
  arr = np.asarray(data)
  if arr.ndim == 3 and arr.shape[-1] == 1:
    arr = arr[..., 0]
  if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
    raise DataError(f"{where}: a label map must be an integer array [H, W], got {arr.dtype} {arr.shape}.")
  if arr.size and (arr.min() < 0 or arr.max() > 255):
    raise DataError(f"{where}: label values {arr.min()}..{arr.max()} are outside 0..255.")
  return arr.astype(np.uint8)


def check_label_values(label: np.ndarray, num_classes: int, where: str) -> None:
  """DataError if `label` holds a value other than 0..num_classes-1 and IGNORE_LABEL."""
  values = np.flatnonzero(np.bincount(np.asarray(label, np.uint8).ravel(), minlength=256))  # np.unique, 10x faster
  bad = values[(values >= num_classes) & (values != IGNORE_LABEL)]
  if len(bad):
    raise DataError(f"{where}: label id {int(bad[0])} is beyond the dataset's {num_classes} classes "
                    f"(0..{num_classes - 1}, {IGNORE_LABEL} to ignore); values found: "
                    f"{', '.join(str(int(v)) for v in values[:12])}. Is it a map of another dataset or label set?")


def cityscapes_train_ids(label_ids: np.ndarray, where: str = "label map") -> np.ndarray:
  """A *_gtFine_labelIds.png's ids (0..33) -> the 19 train ids, 255 for the ignored ids (labels.py's table)."""
  table = np.full(256, -1, np.int32)
  for _, label_id, train_id in CITYSCAPES_LABELS:
    if label_id >= 0:
      table[label_id] = train_id
  out = table[np.asarray(label_ids, np.uint8)]
  if (out < 0).any():
    bad = sorted({int(v) for v in np.asarray(label_ids)[out < 0]})
    raise DataError(f"{where}: label ids {bad[:8]} are not Cityscapes ids (0..33); use the *_gtFine_labelIds.png "
                    "files (not *_labelTrainIds, *_color or *_instanceIds).")
  return out.astype(np.uint8)


# --------------------------------------------------------------------------- geometry (one image)


def resize_pair(img: np.ndarray, label: np.ndarray, short_side: int) -> tuple[np.ndarray, np.ndarray]:
  """Image (bilinear) and label map (NEAREST) resized so the short side is `short_side` (torchvision's
  Resize(int): the long side truncated); unchanged when it already is."""
  h, w = img.shape[:2]
  if min(h, w) == short_side:
    return img, label
  nh, nw = _short_side_size(h, w, short_side)
  img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
  label = np.asarray(Image.fromarray(np.asarray(label, np.uint8), mode="L").resize((nw, nh), Image.NEAREST))
  return img, label


def pad_pair(img: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """Both padded at the bottom and the right to at least `size` = (H, W): images with 0, labels with 255."""
  h, w = img.shape[:2]
  ph, pw = max(h, size[0]), max(w, size[1])
  if (ph, pw) == (h, w):
    return img, label
  out_img = np.zeros((ph, pw, 3), np.uint8)
  out_img[:h, :w] = img
  out_label = np.full((ph, pw), IGNORE_LABEL, np.uint8)
  out_label[:h, :w] = label
  return out_img, out_label


# --------------------------------------------------------------------------- the per-image transform


@dataclasses.dataclass(frozen=True)
class SegmentationSpec:
  """What the segmentation pipelines make of each image (the fields of config.data.segmentation).

  size          (H, W) of every training batch (the crop), and of evaluation batches unless eval_size is set.
  eval_size     (H, W) of the evaluation canvas; () for `size` (Cityscapes: crops of 512 x 1024 for
                training, the whole 1024 x 2048 image in evaluation).
  resize        short side every image is resized to first (0: the stored size).
  eval_resize   the short side in evaluation (-1: `resize`; 0: the stored size).
  scale_range   (lo, hi): training multiplies the short side by a factor in [lo, hi] (torchvision's
                reference: base 520, (0.5, 2.0), crop 480); (1, 1): no random scaling.
  flip          probability of a horizontal flip in training.
  """

  size: tuple[int, int] = (512, 512)
  eval_size: tuple[int, ...] = ()
  resize: int = 0
  eval_resize: int = -1
  scale_range: tuple[float, float] = (1.0, 1.0)
  flip: float = 0.5

  def __post_init__(self):
    size = tuple(int(s) for s in self.size) if isinstance(self.size, (tuple, list)) else ()
    if len(size) != 2 or min(size) < 8:
      raise DataError(f"segmentation size={self.size!r} must be (height, width), each >= 8.")
    object.__setattr__(self, "size", size)
    eval_size = tuple(int(s) for s in self.eval_size) if isinstance(self.eval_size, (tuple, list)) else (0,)
    if eval_size and (len(eval_size) != 2 or min(eval_size) < 8):
      raise DataError(f"segmentation eval_size={self.eval_size!r} must be (height, width), each >= 8, or () for size.")
    object.__setattr__(self, "eval_size", eval_size)
    if self.resize < 0 or self.eval_resize < -1:
      raise DataError(f"segmentation resize={self.resize} must be >= 0 and eval_resize={self.eval_resize} >= -1 "
                      "(0: the stored size; eval_resize -1: the same as resize).")
    scales = tuple(float(s) for s in self.scale_range) if isinstance(self.scale_range, (tuple, list)) else ()
    if len(scales) != 2 or not 0 < scales[0] <= scales[1]:
      raise DataError(f"segmentation scale_range={self.scale_range!r} must be (lo, hi) with 0 < lo <= hi.")
    object.__setattr__(self, "scale_range", scales)
    if not 0.0 <= self.flip <= 1.0:
      raise DataError(f"segmentation flip={self.flip} is a probability; give a value in [0, 1].")

  @classmethod
  def from_config(cls, cfg: Any) -> "SegmentationSpec":
    """From a ConfigDict / mapping / object with (some of) the fields; unknown fields are an error."""
    values = dict(cfg.items()) if hasattr(cfg, "items") else dict(vars(cfg))
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise DataError(f"Unknown segmentation data field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    return cls(**values)

  @property
  def eval_short_side(self) -> int:
    return self.resize if self.eval_resize < 0 else self.eval_resize

  @property
  def canvas(self) -> tuple[int, int]:
    """(H, W) of the evaluation batches."""
    return self.eval_size or self.size

  def check_degradation(self, degradation: Degradation | None) -> None:
    if degradation is not None and degradation.task == "sr":
      s = degradation.scale
      for field, size in (("size", self.size), ("eval_size", self.canvas)):
        if size[0] % s or size[1] % s:
          raise DataError(f"segmentation {field}={size} is not divisible by the SR scale {s}; "
                          f"use a multiple of {s} (e.g. {tuple(-(-x // s) * s for x in size)}).")


def config_defaults() -> dict:
  """The SegmentationSpec fields with their defaults, for config.data.segmentation."""
  return {f.name: f.default for f in dataclasses.fields(SegmentationSpec)}


@dataclasses.dataclass(frozen=True)
class _Transform:
  """A record and its decoded image -> one example of spec.size (see the module docstring for the steps)."""

  spec: SegmentationSpec
  num_classes: int
  annotated: bool

  def label_map(self, record: Mapping[str, Any], img: np.ndarray, where: str) -> np.ndarray:
    h, w = img.shape[:2]
    if not self.annotated or record.get("label_map") is None:
      if self.annotated:
        raise DataError(f"{where} has no label map; a source without labels must set annotated = False.")
      return np.full((h, w), IGNORE_LABEL, np.uint8)
    label = decode_label_map(record["label_map"], where)
    if label.shape != (h, w):
      raise DataError(f"{where}: the label map is {label.shape[1]}x{label.shape[0]} (WxH) but the image is {w}x{h}; "
                      "a label map must have its image's size.")
    check_label_values(label, self.num_classes, where)
    return label

  def __call__(self, record: Mapping[str, Any], img: np.ndarray, rng: np.random.Generator | None, train: bool,
               where: str) -> dict:
    spec = self.spec
    label = self.label_map(record, img, where)
    h, w = img.shape[:2]
    base = spec.resize if train else spec.eval_short_side
    base = base if base > 0 else min(h, w)
    if train:
      lo, hi = spec.scale_range
      low, high = max(1, int(round(lo * base))), max(1, int(round(hi * base)))
      short = int(rng.integers(low, high + 1))  # always drawn, so later draws do not depend on the settings
      flip = rng.random() < spec.flip
    else:
      short, flip = base, False
    img, label = resize_pair(img, label, short)
    nh, nw = img.shape[:2]
    if flip:
      img, label = img[:, ::-1], label[:, ::-1]
    H, W = spec.size
    if train:
      img, label = pad_pair(img, label, spec.size)
      top = int(rng.integers(0, img.shape[0] - H + 1))
      left = int(rng.integers(0, img.shape[1] - W + 1))
      img, label = img[top:top + H, left:left + W], label[top:top + H, left:left + W]
    else:
      H, W = spec.canvas
      if nh > H or nw > W:
        raise DataError(f"{where}: resized to {nw}x{nh} (WxH), larger than the {W}x{H} evaluation canvas "
                        f"(segmentation.eval_size or size); raise it or lower eval_resize (evaluation pads, "
                        "it does not crop, so every labelled pixel is scored).")
      img, label = pad_pair(img, label, (H, W))
    return {"target": np.ascontiguousarray(img), "label_map": np.ascontiguousarray(label, dtype=np.int32),
            "image_size": np.array([min(nh, H), min(nw, W)], np.int32), "id": np.int32(record.get("id", -1))}


def _blank(spec: SegmentationSpec, record_id: int) -> dict:
  """An evaluation example with nothing to score."""
  return {"target": np.zeros((*spec.canvas, 3), np.uint8),
          "label_map": np.full(spec.canvas, IGNORE_LABEL, np.int32),
          "image_size": np.zeros((2,), np.int32), "id": np.int32(record_id)}


def _transform(source, spec: SegmentationSpec, degradation: Degradation | None) -> _Transform:
  spec.check_degradation(degradation)
  annotated = bool(getattr(source, "annotated", True))
  classes = tuple(getattr(source, "classes", ()))
  if annotated and not classes:
    raise DataError(f"The segmentation source {source!r} has labels but no class names (its `classes`).")
  return _Transform(spec, len(classes), annotated)


@dataclasses.dataclass(frozen=True)
class SegmentationTrainExample(grain.transforms.RandomMap):
  """Stream element -> training example (scale, flip, crop and degradation from the element's
  generator); an unreadable image gives None, which grain drops."""

  transform: _Transform
  degradation: Degradation | None

  def random_map(self, element: dict, rng: np.random.Generator) -> dict | None:
    where = f"training example id {element.get('id', '?')}"
    try:
      img = decode_image(element["image"])
    except DataError as e:  # skipped, as the classification pipelines skip it
      _note("skipped_unreadable", f"{where}: {e}")
      return None
    _ok()
    out = self.transform(element, img, rng, True, where)
    deg = self.degradation
    if deg is not None and deg.on_device:
      out["index"] = np.int32(element["_position"])
    elif deg is not None:
      out["input"] = deg(out["target"], rng)
    return out


@dataclasses.dataclass(frozen=True)
class SegmentationEvalExample:
  """Padded position j -> evaluation example of index(j): degradation from default_rng([seed, index]);
  batch padding and unreadable images give a blank example (black, labels all 255) with mask 0, so
  a metric that ignores 255 is exact even without the mask."""

  source: Any
  transform: _Transform
  degradation: Degradation | None
  seed: int
  indices: np.ndarray  # example index of each position; -1 marks padding

  def __call__(self, position: int) -> dict:
    index = int(self.indices[position])
    record = self.source[index] if index >= 0 else {"id": -1}
    where = f"evaluation example {index} (id {record.get('id', '?')})"
    img = None
    if index >= 0:
      try:
        img = decode_image(record["image"])
      except DataError as e:  # masked out, as the classification pipelines do
        _note("skipped_unreadable", f"{where}: {e}")
    mask = np.float32(img is not None)
    if img is None:  # batch padding or an unreadable image: nothing to score (labels all 255)
      out = _blank(self.transform.spec, int(record.get("id", -1)))
    else:
      _ok()
      out = self.transform(record, img, None, False, where)
    out["mask"] = mask
    deg = self.degradation
    if deg is not None and deg.on_device:
      out["index"] = np.int32(max(index, 0))
    elif deg is not None:
      out["input"] = deg(out["target"], np.random.default_rng([self.seed, max(index, 0)]))
    return out


# --------------------------------------------------------------------------- datasets


def segmentation_train_dataset(
    source: Sequence[dict],
    spec: SegmentationSpec,
    degradation: Degradation | None = None,
    *,
    global_batch: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    workers: int = 0,
    threads: int = 2,
) -> grain.IterDataset:
  """Endless per-host training batches (the format of the module docstring), reshuffled each epoch;
  the global order and the hosts' blocks are those of rajax.data.pipeline.train_dataset, and the
  iterator is checkpointable (a rebuilt iterator with the same arguments resumes exactly)."""
  transform = _transform(source, spec, degradation)
  return host_train_batches(source, SegmentationTrainExample(transform, degradation),
                            with_position=degradation is not None and degradation.on_device, global_batch=global_batch,
                            seed=seed, process_index=process_index, process_count=process_count, workers=workers,
                            threads=threads)


def segmentation_eval_dataset(
    source: Sequence[dict],
    spec: SegmentationSpec,
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
  return host_eval_batches(len(source),
                           lambda indices: SegmentationEvalExample(source, transform, degradation, seed, indices),
                           global_batch=global_batch, num_examples=num_examples, process_index=process_index,
                           process_count=process_count, workers=workers, threads=threads)


# --------------------------------------------------------------------------- sources


class TfdsSegmentation:
  """A prepared TFDS segmentation dataset (voc_seg or cityscapes), image and label map left encoded."""

  annotated: ClassVar[bool] = True

  def __init__(self, name: str, split: str, data_dir: str | None):
    import tensorflow_datasets as tfds  # heavy import, only when a TFDS source is used

    self.name, self.split = name, split
    self.dataset = dataset_of(name)
    self.classes = dataset_classes(self.dataset)
    decoders = {"image": tfds.decode.SkipDecoding(), "label_map": tfds.decode.SkipDecoding()}
    try:
      path = _prepared_dir(name, data_dir)
      if path is not None:
        self._source = tfds.builder_from_directory(str(path)).as_data_source(split=split, decoders=decoders)
      else:
        self._source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False,
                                        decoders=decoders)
    except Exception as e:  # tfds raises assorted types (DatasetNotFoundError, AssertionError, ValueError)
      where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets)"
      raise DataError(f"Cannot open segmentation dataset {name!r} split {split!r} in {where}: {type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}\nPrepare it there with python -m "
                      f"rajax.data.prepare {self.dataset}, then pass --config.data.data_dir=DIR.") from e

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    ex = self._source[index]
    if "label_map" not in ex:
      raise DataError(f"{self.name} {self.split} example {index} has no 'label_map' (keys: {sorted(ex)}): "
                      "not a segmentation dataset written by python -m rajax.data.prepare.")
    record_id = _voc_id(ex.get("image/filename", b""), index) if self.dataset == "voc_seg" else index
    return {"image": ex["image"], "label_map": ex["label_map"], "id": record_id}

  def __repr__(self) -> str:
    return f"TfdsSegmentation({self.name!r}, {self.split!r}, {len(self)} examples)"


def segmentation_source(spec: str, *, data_dir: str | None, default_name: str = ""):
  """The source of a split spec ("voc_seg:train_aug", "cityscapes:train+validation"; see
  rajax.data.detection.parse_splits): one TfdsSegmentation, or their ConcatSource."""
  sources = [TfdsSegmentation(n, s, data_dir) for n, s in parse_splits(spec, default_name)]
  return sources[0] if len(sources) == 1 else ConcatSource(sources)


class SegmentationPhotos(photos_lib.WholePhotos):
  """The photos of rajax.data.photos, whole and without label maps (targets: a segmenter's own
  predictions on the clean image): rajax.data.photos.WholePhotos."""


class InMemorySegmentation(InMemoryRecords):
  """Records {"image", "label_map", "id"} held in memory, with the dataset's class names."""


# --------------------------------------------------------------------------- from a run config


def config_source(config: Any, split: str):
  """The source of the training ("train") or evaluation ("eval") examples a run config names."""
  data, train = config.data, split == "train"
  kind = _get(data, "source", "tfds")
  if kind == "tfds":
    return segmentation_source(_get(data, "train_split" if train else "eval_split"), data_dir=_get(data, "data_dir"),
                               default_name=_get(data, "name", ""))
  if kind == "photos":
    return SegmentationPhotos("train" if train else photos_eval_split(_get(data, "eval_split", "validation")),
                              repeats=_get(_get(data, "photos"), "repeats", 1) if train else 1)
  raise DataError(f"Segmentation data.source={kind!r}: use 'tfds' (voc_seg, cityscapes) or 'photos'.")


def segmentation_pipeline(config: Any, split: str, *, process_index: int = 0, process_count: int = 1,
                          source: Any = None) -> grain.IterDataset:
  """The training ("train") or evaluation ("eval") batches a run config asks for.

  Reads config.seed, config.task ("sr" | "denoise" | "jpeg" | "corrupt" make an "input"; anything
  else, e.g. "segmentation", none), config.degrade.{scale, sigma, quality, corruption, severity} and
  config.data.{source ("tfds" | "photos"), name, data_dir, train_split, eval_split (split specs:
  "voc_seg:train_aug", "cityscapes:validation", ...), batch_size, eval_batch_size, num_eval_examples,
  workers, threads, noise, photos.repeats, segmentation (SegmentationSpec fields)}. `source`
  overrides the source.
  """
  if split not in ("train", "eval"):
    raise DataError(f"segmentation_pipeline split must be 'train' or 'eval', got {split!r}.")
  data, train = config.data, split == "train"
  spec = SegmentationSpec.from_config(_get(data, "segmentation", {}))
  degradation = config_degradation(config)
  if source is None:
    source = config_source(config, split)
  seed = int(_get(config, "seed", 0))
  common = dict(seed=seed, process_index=process_index, process_count=process_count,
                workers=int(_get(data, "workers", 0)), threads=int(_get(data, "threads", 8 if not train else 2)))
  if train:
    return segmentation_train_dataset(source, spec, degradation, global_batch=int(_get(data, "batch_size")), **common)
  return segmentation_eval_dataset(source, spec, degradation, global_batch=int(_get(data, "eval_batch_size")),
                                   num_examples=int(_get(data, "num_eval_examples", -1)), **common)
