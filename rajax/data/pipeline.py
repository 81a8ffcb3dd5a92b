"""grain input pipelines: source -> shuffle -> this host's block of each global batch -> decode -> crop -> degrade.

Everything here runs on the host (grain threads or worker processes) and yields per-host numpy
batches; `rajax.sharding.global_batch` turns them into global arrays on the mesh, and the
jitted step does the rest (uint8 -> float, normalisation) on device.

A batch is a dict:
  "input":  the degraded image, uint8 [b, h, w, 3] (SR, JPEG, corruptions) or float32 in [0, 1] (denoising
            with the noise drawn on the host);
  "target": the clean crop, uint8 [b, H, W, 3];
  "label":  int32 [b];
  "mask":   float32 [b], 1 for real examples, 0 for padding or unreadable images (evaluation only);
  "index":  int32 [b], only when the noise is drawn on the device (`Degradation("denoise",
            noise="device")`): the batch then has no "input", and the jitted step makes it from
            "target" and "index" with `Degradation.device_stage(seed)` (`rajax.degrade.DeviceNoise`).
            In evaluation it is the example's index; in training the example's position in the endless
            shuffled stream (epoch * len(source) + position, modulo 2**31), so every epoch gets fresh noise.

Training follows the paper's reference: Resize(short side) + RandomCrop + horizontal flip;
evaluation: Resize(short side) + CenterCrop, with the randomness of example i (noise, corruption)
fixed by (seed, i), so it depends neither on the number of worker processes or hosts nor on the
order in which examples are read.

Bad data never stops a run: an image that cannot be decoded (corrupt or truncated file) is skipped
in training and masked out (mask 0) in evaluation; grayscale, CMYK, palette and PNG-in-JPEG files
are converted to RGB; images smaller than the crop are upscaled to it. Each case is counted per
process (`bad_data_counts()`) and logged with its running count.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import logging
import os
import threading
from typing import Any, Sequence

import grain
import numpy as np
from PIL import Image

from rajax import degrade as degrade_lib
from rajax.data.sources import DataError, SyntheticImages, tfds_source

log = logging.getLogger("rajax.data")

DEGRADATION_TASKS = degrade_lib.TASKS + ("corrupt",)
NOISE_PLACES = ("host", "device")   # where denoising draws its noise: the pipeline (NumPy) or the jitted step
# Training indices for the device noise are stream positions modulo this (they travel as int32).
_INDEX_MODULUS = 2**31


@dataclasses.dataclass(frozen=True)
class Degradation:
  """Which degradation makes the processor input, with its parameters.

  task: "sr" (bicubic down by `scale`), "denoise" (Gaussian noise of `sigma`), "jpeg" (Pillow
  JPEG at `quality`), "corrupt" (ImageNet-C corruption `corruption` at `severity`) or "mixture"
  (one of `families`, (name, severity) pairs of `rajax.degrade.DEGRADATION_FAMILIES`, drawn per
  example from its seeded rng: `rajax.degrade.mixture`).
  noise (denoising only): "host" draws the noise in the pipeline with NumPy (`degrade.gaussian_noise`,
  the batch holds the float32 "input"); "device" leaves it to the jitted step: the batch holds the
  uint8 "target" and the example "index", and `device_stage(seed)` makes the input there.
  """

  task: str
  scale: int = 4
  sigma: float = 0.1
  quality: int = 10
  corruption: str = ""
  severity: int = 3
  noise: str = "host"
  kernel: str = "pil"   # SR: "pil" (Pillow's antialiased bicubic) or "torch" (PyTorch's, no antialiasing; SR4IR's)
  families: tuple = ()   # task "mixture": ((name, severity), ...)

  def __post_init__(self):
    object.__setattr__(self, "families", tuple((str(n), int(s)) for n, s in self.families))
    if self.task == "mixture":
      problems = degrade_lib.family_problems(self.families, "Degradation('mixture') families")
      if problems:
        raise DataError("; ".join(problems) + ".")
    if self.task not in DEGRADATION_TASKS:
      raise DataError(f"Unknown degradation task {self.task!r}; one of {', '.join(DEGRADATION_TASKS)}.")
    if self.task == "corrupt" and self.corruption not in degrade_lib.CORRUPTIONS:
      raise DataError(f"Degradation('corrupt') needs corruption= one of {', '.join(degrade_lib.CORRUPTIONS)}; "
                      f"got {self.corruption!r}.")
    if self.task == "corrupt" and not 1 <= self.severity <= 5:
      raise DataError(f"Degradation severity must be in 1..5, got {self.severity}.")
    if self.kernel not in degrade_lib.KERNELS:
      raise DataError(f"Degradation kernel={self.kernel!r} must be one of {', '.join(degrade_lib.KERNELS)} "
                      "(config.degrade.kernel).")
    if self.noise not in NOISE_PLACES:
      raise DataError(f"Degradation noise={self.noise!r} must be one of {', '.join(NOISE_PLACES)}.")

  @property
  def on_device(self) -> bool:
    """True if the pipeline yields clean targets and indices and the step makes the input."""
    return self.task == "denoise" and self.noise == "device"

  def device_stage(self, seed: int) -> degrade_lib.DeviceNoise | None:
    """The stage the jitted step applies to this pipeline's batches (None: they are complete).

    `seed` must be the one the pipeline was built with: with it, evaluation example i gets the same
    noise every time, whatever the worker, host or device count.
    """
    return degrade_lib.DeviceNoise(sigma=self.sigma, seed=seed) if self.on_device else None

  def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return degrade_lib.degrade(self.task, img, rng=rng, scale=self.scale if self.task == "sr" else 1,
                               sigma=self.sigma, quality=self.quality, corruption=self.corruption,
                               severity=self.severity, kernel=self.kernel, families=self.families)


# --------------------------------------------------------------------------- bad-data accounting

_COUNTS: collections.Counter = collections.Counter()
_COUNTS_LOCK = threading.Lock()
# Past this many unreadable images, more of them than readable ones means the data is wrong
# (wrong directory, wrong feature), not a few bad files: stop instead of spinning.
_MIN_SKIPS_BEFORE_GIVING_UP = 200


def bad_data_counts() -> dict[str, int]:
  """This process's counts by kind since start (or reset): skipped_unreadable, converted_*, decoded_<format>
  (non-JPEG files), upscaled_smaller_than_crop, and "decoded" (every image read successfully)."""
  with _COUNTS_LOCK:
    return dict(_COUNTS)


def reset_bad_data_counts() -> None:
  with _COUNTS_LOCK:
    _COUNTS.clear()


def _note(kind: str, detail: str) -> None:
  """Counts one bad-data event and logs it at counts 1, 2, 5, 10, 20, 50, 100, ..."""
  with _COUNTS_LOCK:
    _COUNTS[kind] += 1
    n = _COUNTS[kind]
    skipped, ok = _COUNTS["skipped_unreadable"], _COUNTS["decoded"]
  if str(n).rstrip("0") in ("1", "2", "5"):
    log.warning("rajax.data (pid %d): %s: %d image(s) so far; latest: %s", os.getpid(), kind, n, detail)
  if kind == "skipped_unreadable" and skipped >= _MIN_SKIPS_BEFORE_GIVING_UP and skipped > ok:
    raise DataError(f"{skipped} images could not be decoded and only {ok} could (latest: {detail}). "
                    "The dataset is not a set of encoded images: check data.name, data.data_dir and "
                    "that the dataset was written by python -m rajax.data.prepare.")


def _ok() -> None:
  with _COUNTS_LOCK:
    _COUNTS["decoded"] += 1


# --------------------------------------------------------------------------- decoding


_CONVERSIONS = {"L": "converted_grayscale", "LA": "converted_grayscale", "I;16": "converted_grayscale",
                "I": "converted_grayscale", "CMYK": "converted_cmyk"}


def _open_rgb(data: bytes, draft_short_side: int = 0) -> Image.Image:
  """Encoded bytes -> a loaded RGB PIL image (conversions counted); DataError if unreadable."""
  try:
    with Image.open(io.BytesIO(data)) as im:
      if draft_short_side > 0 and im.format == "JPEG":
        w, h = im.size
        f = draft_short_side / min(w, h)
        im.draft(im.mode if im.mode in ("L", "CMYK") else "RGB", (int(np.ceil(w * f)), int(np.ceil(h * f))))
      mode, fmt = im.mode, im.format
      im.load()
      rgb = im if mode == "RGB" else im.convert("RGB")
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise DataError(f"Cannot decode image ({len(data)} bytes, starting {data[:4]!r}): {e}") from e
  if mode != "RGB":
    _note(_CONVERSIONS.get(mode, f"converted_{mode.lower()}"), f"{fmt} {mode} {rgb.width}x{rgb.height}")
  if fmt != "JPEG":  # e.g. the PNG files stored as .JPEG in ImageNet: decoded all the same
    _note(f"decoded_{str(fmt).lower()}", f"{fmt} {mode} {rgb.width}x{rgb.height}")
  return rgb


def _is_encoded(image: Any) -> bool:
  return isinstance(image, (bytes, bytearray, np.bytes_, memoryview))


def decode_image(image: Any, *, draft_short_side: int = 0) -> np.ndarray:
  """Encoded bytes or an array -> uint8 RGB [H, W, 3] (grayscale, CMYK, RGBA, palette converted).

  Bytes that are not a readable image (corrupt, truncated, empty) raise DataError.

  `draft_short_side` > 0 turns on JPEG draft mode: libjpeg decodes at 1/2, 1/4 or 1/8 scale
  straight from the DCT coefficients while the short side stays >= `draft_short_side`. Its pixels
  differ from a full decode followed by a resize, so the pipelines use it only when asked
  (`fast_decode=True`); where no reduction is possible the output is identical to a full decode.
  """
  if _is_encoded(image):
    return np.asarray(_open_rgb(bytes(image), draft_short_side))
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


# --------------------------------------------------------------------------- resizing and cropping


def _short_side_size(h: int, w: int, size: int) -> tuple[int, int]:
  """(new h, new w) of torchvision Resize(size): short side -> size, long side truncated."""
  if h <= w:
    return size, int(size * w / h)
  return int(size * h / w), size


def resize_short_side(img: np.ndarray, size: int) -> np.ndarray:
  """torchvision Resize(size) on a PIL image: bilinear, short side -> size, aspect kept; 0 = no-op."""
  if size <= 0:
    return img
  h, w = img.shape[:2]
  if min(h, w) == size:
    return img
  nh, nw = _short_side_size(h, w, size)
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


def _prepare(image: Any, resize: int, crop: int, fast_decode: bool) -> np.ndarray:
  """Decode + Resize(short side); an image still smaller than the crop is upscaled to it (counted).

  Encoded images stay PIL images from decoding to resizing (one conversion to numpy, at the end);
  the pixels are those of decode_image followed by resize_short_side.
  """
  if _is_encoded(image):
    im = _open_rgb(bytes(image), resize if fast_decode and resize > 0 else 0)
    if resize > 0 and min(im.size) != resize:
      nh, nw = _short_side_size(im.height, im.width, resize)
      im = im.resize((nw, nh), Image.BILINEAR)
    img = np.asarray(im)
  else:
    img = resize_short_side(decode_image(image), resize)
  if min(img.shape[:2]) < crop:
    _note("upscaled_smaller_than_crop", f"{img.shape[1]}x{img.shape[0]} < crop {crop}")
    img = resize_short_side(img, crop)
  return img


@dataclasses.dataclass(frozen=True)
class TrainExample(grain.transforms.RandomMap):
  """Raw element -> training pair (random crop and flip, degradation drawn from the element's rng).

  An unreadable image gives None, which grain drops (the batch is filled from the next examples).
  With the noise on the device the element carries its stream position ("_position", added by
  train_dataset) and the example holds the clean target and that "index" instead of an "input".
  """

  degradation: Degradation
  resize: int
  crop: int
  fast_decode: bool = False

  def random_map(self, element: dict, rng: np.random.Generator) -> dict | None:
    try:
      img = _prepare(element["image"], self.resize, self.crop, self.fast_decode)
    except DataError as e:
      _note("skipped_unreadable", str(e))
      return None
    _ok()
    img = random_crop_flip(img, self.crop, rng)
    if self.degradation.on_device:
      return {"target": img, "label": np.int32(element["label"]), "index": np.int32(element["_position"])}
    return {"input": self.degradation(img, rng), "target": img, "label": np.int32(element["label"])}


def _with_position(position: int, element: Any) -> dict:
  """The element (a mapping) with its position in the endless stream, for the device noise's index."""
  return {**element, "_position": position % _INDEX_MODULUS}


@dataclasses.dataclass(frozen=True)
class EvalExample:
  """Padded position j -> evaluation pair for example index(j) (center crop, per-index randomness).

  An unreadable image gives a black example with mask 0, so the batch shapes and the positions of
  the other examples do not change.
  """

  source: Any
  degradation: Degradation
  resize: int
  crop: int
  seed: int
  indices: np.ndarray  # example index of each position; -1 marks padding
  fast_decode: bool = False

  def __call__(self, position: int) -> dict:
    index = int(self.indices[position])
    element = self.source[max(index, 0)]
    mask = np.float32(index >= 0)
    try:
      img = center_crop(_prepare(element["image"], self.resize, self.crop, self.fast_decode), self.crop)
      _ok()
    except DataError as e:
      _note("skipped_unreadable", f"example {index}: {e}")
      img, mask = np.zeros((self.crop, self.crop, 3), np.uint8), np.float32(0)
    if self.degradation.on_device:
      return {"target": img, "label": np.int32(element["label"]), "mask": mask, "index": np.int32(max(index, 0))}
    rng = np.random.default_rng([self.seed, max(index, 0)])
    return {"input": self.degradation(img, rng), "target": img, "label": np.int32(element["label"]),
            "mask": mask}


# --------------------------------------------------------------------------- sources


def photos_eval_split(split: str) -> str:
  """`split`, checked to be a photo split that can be evaluated on ("validation" or "test")."""
  if split not in ("validation", "test"):
    raise DataError(f"data.source='photos' evaluates on the 'validation' or 'test' photos, not {split!r}; set the "
                    "evaluation split (data.eval_split for rajax.train, data.split for rajax.evaluate) to one of them.")
  return split


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
  if data_cfg.source == "photos":  # the photos bundled with installed packages, split by photo
    from rajax.data.photos import PhotoSource
    ph = data_cfg.photos
    train = split == data_cfg.train_split
    scales = ph.get("scales", (1.0,)) if train else ph.get("eval_scales", (1.0,))
    names = tuple(ph.get("names") or ()) or None    # data.photos.names: these photos instead of the split's
    return PhotoSource("train" if train else photos_eval_split(split), short_side=ph.short_side, crop=data_cfg.crop,
                       repeats=ph.repeats, grid=ph.grid, scales=tuple(scales), names=names if not train else None)
  raise DataError(f"Unknown data.source {data_cfg.source!r}; use 'synthetic', 'tfds' or 'photos'.")


def _mp_prefetch(it: grain.IterDataset, workers: int) -> grain.IterDataset:
  """`workers` grain worker processes. grain reads absl flags there; programs that do not parse
  absl flags themselves (pytest, our argparse CLIs) get the defaults."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))


class HostBlocks(grain.MapDataset):
  """Host `process_index`'s block of every global batch: its element i is element
  (i // b) * global_batch + process_index * b + i % b of `parent`, with b = global_batch / process_count.

  Only these elements are read from `parent` (so nothing upstream, decoding included, runs for
  another host's examples); concatenating the hosts' blocks in process order gives `parent` again.
  """

  def __init__(self, parent: grain.MapDataset, *, global_batch: int, process_index: int, process_count: int):
    super().__init__(parent)
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index} is not in [0, {process_count}).")
    self._b = local_batch_size(global_batch, process_count)
    self._global_batch, self._offset = global_batch, process_index * self._b
    self._length = len(parent) // global_batch * self._b

  def __len__(self) -> int:
    return self._length

  def parent_index(self, index: int) -> int:
    step, j = divmod(index, self._b)
    return step * self._global_batch + self._offset + j

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self.parent_index(index)]

  def __str__(self) -> str:
    return f"HostBlocks(block {self._offset // self._b} of {self._b} in every {self._global_batch})"


def local_batch_size(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f"Batch size {global_batch} is not divisible by the {process_count} processes.")
  return global_batch // process_count


# --------------------------------------------------------------------------- datasets


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
    fast_decode: bool = False,
) -> grain.IterDataset:
  """Endless per-host training batches, reshuffled every epoch; its iterator is checkpointable.

  One global order, fixed by `seed`, is shared by all hosts: the whole source is shuffled each
  epoch and cut into global batches of `global_batch` consecutive examples; host p reads only its
  block of each (`HostBlocks`), so the global batch `rajax.sharding.global_batch` assembles is the
  same for any number of hosts, and an epoch over all hosts reads every example exactly once.
  Random crops, flips and degradations are drawn from each example's position in the global order;
  with `degradation.on_device` that position is the batch's "index" (modulo 2**31), from which the
  step draws the noise.

  `workers` > 0 runs the pipeline in that many processes (each with `threads` reading threads);
  the data order is fixed by (seed, workers): a resumed iterator continues the same order when
  it is rebuilt with the same arguments.
  """
  return host_train_batches(source, TrainExample(degradation, resize, crop, fast_decode),
                            with_position=degradation.on_device, global_batch=global_batch, seed=seed,
                            process_index=process_index, process_count=process_count, workers=workers,
                            threads=threads)


def host_train_batches(source: Sequence[dict], example: grain.transforms.RandomMap, *, with_position: bool,
                       global_batch: int, seed: int, process_index: int, process_count: int, workers: int,
                       threads: int) -> grain.IterDataset:
  """The endless, per-epoch reshuffled, per-host batches of `example` over `source` that every
  training pipeline shares (train_dataset's docstring says how hosts split the global order);
  `with_position`: each element carries its global position ("index") for noise drawn on the device."""
  b = local_batch_size(global_batch, process_count)
  ds = grain.MapDataset.source(source)
  if len(ds) < global_batch:
    raise DataError(f"The training data has {len(ds)} examples, fewer than one global batch of {global_batch}.")
  ds = ds.shuffle(seed=seed).repeat(None)
  if with_position:
    ds = ds.map_with_index(_with_position)  # changes no random draw: random_map's rngs follow the positions
  ds = ds.random_map(example, seed=seed)
  ds = HostBlocks(ds, global_batch=global_batch, process_index=process_index, process_count=process_count)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * b))
  it = it.batch(b, drop_remainder=True)
  if workers > 0:
    it = _mp_prefetch(it, workers)
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
    workers: int = 0,
    threads: int = 8,
    fast_decode: bool = False,
) -> grain.IterDataset:
  """Per-host evaluation batches over the first `num_examples` examples (all if < 0); re-iterable.

  Every host gets the same number of batches; positions past the end are padding with mask 0, so
  metrics weighted by the mask are exact whatever the number of hosts. The batches are the same
  for any number of `workers` and `threads`. With `degradation.on_device` each batch carries the
  examples' indices ("index"; 0 for padding) instead of the noisy input.
  """
  return host_eval_batches(len(source), lambda indices: EvalExample(source, degradation, resize, crop, seed, indices,
                                                                    fast_decode),
                           global_batch=global_batch, num_examples=num_examples, process_index=process_index,
                           process_count=process_count, workers=workers, threads=threads)


def host_eval_batches(size: int, make_example, *, global_batch: int, num_examples: int, process_index: int,
                      process_count: int, workers: int, threads: int) -> grain.IterDataset:
  """The per-host evaluation batches every evaluation pipeline shares: host p reads examples p,
  p + P, ... of the first `num_examples` of `size` (all if < 0), padded to whole batches with
  index -1 (mask 0), so every host gets the same number of batches. `make_example(indices)` maps
  a position to its example, given the positions' source indices."""
  b = local_batch_size(global_batch, process_count)
  n = size if num_examples < 0 else min(num_examples, size)
  if n == 0:
    raise DataError("The evaluation split is empty.")
  per_host = -(-n // process_count)
  positions = -(-per_host // b) * b
  indices = process_index + process_count * np.arange(positions)
  indices = np.where(indices < n, indices, -1)
  ds = grain.MapDataset.range(positions).map(make_example(indices))
  ds = ds.batch(b, drop_remainder=True)
  # A buffer below the thread count would leave threads idle (and grain warns about it).
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2, threads, 32 // b)))
  if workers > 0:
    it = _mp_prefetch(it, workers)
  return it
