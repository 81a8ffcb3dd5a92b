"""Random-access data sources: `len(source)` and `source[i]` -> {"image": ..., "label": int}.

`image` is either a uint8 RGB array [H, W, 3] or the encoded bytes of an image file; the
pipeline decodes bytes on the host workers. Sources:

  SyntheticImages   deterministic procedural photos-like images, for smoke runs and tests;
  tfds_source       a prepared TFDS dataset read through `tfds.data_source` (ArrayRecord files,
                    no TensorFlow at run time).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


class DataError(ValueError):
  """A dataset is missing, empty or malformed."""


@dataclasses.dataclass(frozen=True)
class SyntheticImages:
  """`size` deterministic RGB images of `image_size`^2 pixels with labels in [0, num_classes).

  Each image is a smooth colour field with a few random ellipses, rectangles and lines on it
  (so it has edges and texture for a processor to restore); image i depends only on (seed, i).
  """

  size: int
  image_size: int = 64
  num_classes: int = 10
  seed: int = 0

  def __post_init__(self):
    if self.size < 1 or self.image_size < 8 or self.num_classes < 1:
      raise DataError(f"SyntheticImages needs size >= 1, image_size >= 8, num_classes >= 1; got {self}.")

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not 0 <= index < self.size:
      raise IndexError(f"index {index} out of range for {self.size} synthetic images")
    rng = np.random.default_rng([self.seed, int(index)])
    s = self.image_size
    field = rng.integers(0, 256, size=(3, 3, 3), dtype=np.uint8)
    im = Image.fromarray(field).resize((s, s), Image.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 8))):
      x0, y0 = rng.integers(-s // 4, s, size=2)
      w, h = rng.integers(s // 8, s // 2, size=2)
      colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
      kind = int(rng.integers(0, 3))
      box = (int(x0), int(y0), int(x0 + w), int(y0 + h))
      if kind == 0:
        draw.ellipse(box, fill=colour)
      elif kind == 1:
        draw.rectangle(box, fill=colour)
      else:
        draw.line(box, fill=colour, width=int(rng.integers(1, 4)))
    im = im.filter(ImageFilter.GaussianBlur(radius=0.6))
    img = np.asarray(im, dtype=np.float32) + rng.normal(0.0, 4.0, size=(s, s, 3))
    return {"image": np.clip(img, 0, 255).astype(np.uint8), "label": int(rng.integers(0, self.num_classes))}


def _prepared_dir(name: str, data_dir: str | None):
  """data_dir/<name>[/<config>]/<newest version> if it holds a prepared dataset, else None."""
  import pathlib
  if not data_dir or ":" in name:
    return None
  root = pathlib.Path(data_dir).expanduser() / name
  if not root.is_dir():
    return None
  versions = []
  for d in root.iterdir():
    parts = d.name.split(".")
    if d.is_dir() and len(parts) == 3 and all(p.isdigit() for p in parts) and (d / "dataset_info.json").exists():
      versions.append((tuple(int(p) for p in parts), d))
  return max(versions)[1] if versions else None


def tfds_source(name: str, *, split: str, data_dir: str | None):
  """The prepared TFDS dataset `name`/`split` in `data_dir`, images left encoded.

  `name` may carry a config and a version ("voc/2007", "imagenet2012:5.1.0"). Without a version,
  the newest version found in data_dir is read from its files (no builder code is involved, so
  datasets written by `python -m rajax.data.prepare` and by TFDS itself both open).
  """
  import tensorflow_datasets as tfds  # heavy import, only when a TFDS source is used

  decoders = {"image": tfds.decode.SkipDecoding()}
  try:
    path = _prepared_dir(name, data_dir)
    if path is not None:
      return tfds.builder_from_directory(str(path)).as_data_source(split=split, decoders=decoders)
    return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False, decoders=decoders)
  except Exception as e:  # tfds raises assorted types (DatasetNotFoundError, AssertionError, ValueError)
    where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets)"
    raise DataError(
        f"Cannot open TFDS dataset {name!r} split {split!r} in {where}: "
        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}\n"
        f"Prepare it there with python -m rajax.data.prepare, then pass --config.data.data_dir=DIR."
    ) from e


class InMemoryRecords:
  """Records (dicts) held in memory as a random-access source, with the dataset's class names; the
  detection and segmentation pipelines' in-memory sources."""

  annotated = True

  def __init__(self, records, classes, dataset: str = "custom"):
    self.records, self.classes, self.dataset = list(records), tuple(classes), dataset

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict:
    return dict(self.records[index])
