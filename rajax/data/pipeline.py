"""grain input pipelines: source -> per-host slice -> shuffle -> crop -> degrade -> batch.

Everything here runs on the host (grain threads or worker processes) and yields per-host numpy
batches; `rajax.sharding.global_batch` turns them into global arrays on the mesh, and the
jitted step does the rest (uint8 -> float, normalisation) on device.

A batch is a dict:
  "input":  the degraded image, uint8 [b, h, w, 3] (SR, JPEG) or float32 in [0, 1] (denoising);
  "target": the clean crop, uint8 [b, H, W, 3];
  "label":  int32 [b];
  "mask":   float32 [b], 1 for real examples, 0 for padding (evaluation only).

Training follows the paper's reference: Resize(short side) + RandomCrop + horizontal flip;
evaluation: Resize(short side) + CenterCrop, with the noise of example i fixed by (seed, i), so
it does not depend on the worker count or the order in which examples are read.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any, Sequence

import grain
import numpy as np
from PIL import Image

from rajax import degrade as degrade_lib
from rajax.data.sources import DataError, SyntheticImages, tfds_source


@dataclasses.dataclass(frozen=True)
class Degradation:
  """Which degradation makes the processor input, with its parameters."""

  task: str
  scale: int = 4
  sigma: float = 0.1
  quality: int = 10

  def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return degrade_lib.degrade(self.task, img, rng=rng, scale=self.scale if self.task == "sr" else 1,
                               sigma=self.sigma, quality=self.quality)


def decode_image(image: Any) -> np.ndarray:
  """Encoded bytes or an array -> uint8 RGB [H, W, 3] (grayscale and RGBA are converted)."""
  if isinstance(image, (bytes, bytearray, np.bytes_)):
    with Image.open(io.BytesIO(bytes(image))) as im:
      return np.asarray(im.convert("RGB"))
  arr = np.asarray(image)
  if arr.dtype != np.uint8:
    raise DataError(f"Images must be uint8, got {arr.dtype}.")
  if arr.ndim == 2:
    arr = np.repeat(arr[..., None], 3, axis=-1)
  if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
    raise DataError(f"Images must be [H, W, 3], got shape {arr.shape}.")
  if arr.shape[-1] == 1:
    arr = np.repeat(arr, 3, axis=-1)
  return arr[..., :3]


def resize_short_side(img: np.ndarray, size: int) -> np.ndarray:
  """torchvision Resize(size) on a PIL image: bilinear, short side -> size, aspect kept; 0 = no-op."""
  if size <= 0:
    return img
  h, w = img.shape[:2]
  if min(h, w) == size:
    return img
  if h <= w:
    nh, nw = size, int(size * w / h)
  else:
    nh, nw = int(size * h / w), size
  return np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))


def _check_crop(img: np.ndarray, crop: int) -> None:
  if img.shape[0] < crop or img.shape[1] < crop:
    raise DataError(f"Image of {img.shape[0]}x{img.shape[1]} is smaller than the {crop}x{crop} crop; "
                    "raise data.resize or lower data.crop.")


def random_crop_flip(img: np.ndarray, crop: int, rng: np.random.Generator) -> np.ndarray:
  """A uniformly placed crop x crop window, mirrored left-right with probability 1/2."""
  _check_crop(img, crop)
  top = int(rng.integers(0, img.shape[0] - crop + 1))
  left = int(rng.integers(0, img.shape[1] - crop + 1))
  out = img[top:top + crop, left:left + crop]
  if rng.random() < 0.5:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)


def center_crop(img: np.ndarray, crop: int) -> np.ndarray:
  """torchvision CenterCrop(crop)."""
  _check_crop(img, crop)
  top = int(round((img.shape[0] - crop) / 2.0))
  left = int(round((img.shape[1] - crop) / 2.0))
  return np.ascontiguousarray(img[top:top + crop, left:left + crop])


@dataclasses.dataclass(frozen=True)
class TrainExample(grain.transforms.RandomMap):
  """Raw element -> training pair (random crop and flip, degradation drawn from the element's rng)."""

  degradation: Degradation
  resize: int
  crop: int

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    img = random_crop_flip(resize_short_side(decode_image(element["image"]), self.resize), self.crop, rng)
    return {"input": self.degradation(img, rng), "target": img, "label": np.int32(element["label"])}


@dataclasses.dataclass(frozen=True)
class EvalExample:
  """Padded position j -> evaluation pair for example index(j) (center crop, per-index noise)."""

  source: Any
  degradation: Degradation
  resize: int
  crop: int
  seed: int
  indices: np.ndarray  # example index of each position; -1 marks padding

  def __call__(self, position: int) -> dict:
    index = int(self.indices[position])
    element = self.source[max(index, 0)]
    img = center_crop(resize_short_side(decode_image(element["image"]), self.resize), self.crop)
    rng = np.random.default_rng([self.seed, max(index, 0)])
    return {"input": self.degradation(img, rng), "target": img, "label": np.int32(element["label"]),
            "mask": np.float32(index >= 0)}


def make_source(data_cfg, split: str):
  """The random-access source named by `data_cfg.source` for `split`."""
  if data_cfg.source == "synthetic":
    syn = data_cfg.synthetic
    size = syn.train_size if split == data_cfg.train_split else syn.eval_size
    # Distinct seeds keep the evaluation images disjoint from the training images.
    seed = syn.seed if split == data_cfg.train_split else syn.seed + 1_000_003
    return SyntheticImages(size=size, image_size=syn.image_size, num_classes=syn.num_classes, seed=seed)
  if data_cfg.source == "tfds":
    return tfds_source(data_cfg.name, split=split, data_dir=data_cfg.data_dir)
  raise DataError(f"Unknown data.source {data_cfg.source!r}; use 'synthetic' or 'tfds'.")


def local_batch_size(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f"Batch size {global_batch} is not divisible by the {process_count} processes.")
  return global_batch // process_count


def train_dataset(
    source: Sequence[dict],
    degradation: Degradation,
    *,
    resize: int,
    crop: int,
    global_batch: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    workers: int = 0,
    threads: int = 2,
) -> grain.IterDataset:
  """Endless per-host training batches, reshuffled every epoch; its iterator is checkpointable."""
  b = local_batch_size(global_batch, process_count)
  ds = grain.MapDataset.source(source)[process_index::process_count]
  if len(ds) < b:
    raise DataError(f"This host's share of the data has {len(ds)} examples, fewer than one batch of {b}.")
  ds = ds.shuffle(seed=seed).repeat(None)
  ds = ds.random_map(TrainExample(degradation, resize, crop), seed=seed)
  ds = ds.batch(b, drop_remainder=True)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * b))
  if workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return it


def eval_dataset(
    source: Sequence[dict],
    degradation: Degradation,
    *,
    resize: int,
    crop: int,
    global_batch: int,
    seed: int,
    num_examples: int = -1,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.MapDataset:
  """Per-host evaluation batches over the first `num_examples` examples (all if < 0).

  Every host gets the same number of batches; positions past the end are padding with mask 0, so
  metrics weighted by the mask are exact whatever the number of hosts.
  """
  b = local_batch_size(global_batch, process_count)
  n = len(source) if num_examples < 0 else min(num_examples, len(source))
  if n == 0:
    raise DataError("The evaluation split is empty.")
  per_host = -(-n // process_count)
  positions = -(-per_host // b) * b
  indices = process_index + process_count * np.arange(positions)
  indices = np.where(indices < n, indices, -1)
  ds = grain.MapDataset.range(positions).map(EvalExample(source, degradation, resize, crop, seed, indices))
  return ds.batch(b, drop_remainder=True)
