"""Real photographs that ship inside installed packages, split by photo into train / validation / test.

Fifteen photos come with the Python packages themselves (scikit-image's data module, scikit-learn's
sample images, matplotlib's sample data); thirty more with two Debian packages, fetched and checked
by `python -m rajax.assets fetch` (rajax.assets: `opencv-doc`'s sample photos and `darknet`'s YOLO
demo photos, named "opencv-doc/messi5.jpg", "darknet/dog.jpg"). They are split *by photo*, so no
crop of a validation or test photo is ever trained on, and settings chosen on validation photos are
measured on others:

  test (14):        chelsea (a cat), coffee (espresso), rocket (a launch pad), grace_hopper (a
                    portrait in uniform), flower (a blossom); darknet's dog, horses, person, kite;
                    opencv-doc's messi5 (a footballer), fruits, squirrel_cls, butterfly, chicky_512 (a dog);
  validation (8):   darknet's eagle, giraffe; opencv-doc's apple, baboon, orange, stuff (desk objects),
                    home (a building), ela_original (a notebook);
  train (23):       astronaut, hubble_deep_field, immunohistochemistry, retina, motorcycle, china,
                    camera, coins, clock, moon (the last four grayscale, converted to RGB); opencv-doc's
                    aero1, aero3 (aerial views), aloeL (a plant), basketball1, basketball2 (two frames
                    of one scene), blox, board (a circuit board), box_in_scene, building, graf1
                    (graffiti), leuvenA (a street), licenseplate_motion (a car), rubberwhale1 (toys).

`PhotoSource(split, short_side, crop)` is a random-access source like the others
(`len`, `[i] -> {"image", "label"}`): training elements are whole photos resized so the short
side is `short_side` times each of `scales` (repeated `repeats` times so an epoch holds many
random crops: at small scales a crop shows most of its photo, at large ones a detail); validation
and test elements are fixed crops on a regular grid of each resized photo (at each scale), and
their mirror images.
There are no ground-truth labels (label -1): use `labels="recognizer"` (R's own top-1 class on the
clean crop) for the recognition terms and metrics.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import ClassVar

import numpy as np
from PIL import Image

from rajax.data.sources import DataError

BUNDLED_TEST = ("chelsea", "coffee", "rocket", "grace_hopper", "flower")
TEST = BUNDLED_TEST + ("darknet/dog.jpg", "darknet/horses.jpg", "darknet/person.jpg", "darknet/kite.jpg",
                       "opencv-doc/messi5.jpg", "opencv-doc/fruits.jpg", "opencv-doc/squirrel_cls.jpg",
                       "opencv-doc/butterfly.jpg", "opencv-doc/chicky_512.png")
VALIDATION = ("darknet/eagle.jpg", "darknet/giraffe.jpg", "opencv-doc/apple.jpg", "opencv-doc/baboon.jpg",
              "opencv-doc/orange.jpg", "opencv-doc/stuff.jpg", "opencv-doc/home.jpg", "opencv-doc/ela_original.jpg")
TRAIN = ("astronaut", "hubble_deep_field", "immunohistochemistry", "retina", "motorcycle", "china",
         "camera", "coins", "clock", "moon",
         "opencv-doc/aero1.jpg", "opencv-doc/aero3.jpg", "opencv-doc/aloeL.jpg", "opencv-doc/basketball1.png",
         "opencv-doc/basketball2.png", "opencv-doc/blox.jpg", "opencv-doc/board.jpg", "opencv-doc/box_in_scene.png",
         "opencv-doc/building.jpg", "opencv-doc/graf1.png", "opencv-doc/leuvenA.jpg",
         "opencv-doc/licenseplate_motion.jpg", "opencv-doc/rubberwhale1.png")
SPLITS = {"train": TRAIN, "validation": VALIDATION, "test": TEST}
NO_LABEL = -1


def _skimage(name: str) -> np.ndarray:
  from skimage import data
  if name == "motorcycle":
    return data.stereo_motorcycle()[0]
  return getattr(data, name)()


def _sklearn(name: str) -> np.ndarray:
  # The JPEG files sklearn.datasets.load_sample_image reads, found without importing scikit-learn
  # (its import takes about 1.5 s, which every demo run would pay).
  import importlib.util
  spec = importlib.util.find_spec("sklearn")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("scikit-learn is not installed", name="sklearn")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "datasets" / "images" / f"{name}.jpg"
  if not path.is_file():
    raise DataError(f"Bundled photo {name!r}: scikit-learn has no {path}; reinstall scikit-learn.")
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"))


def _matplotlib(name: str) -> np.ndarray:
  from matplotlib import cbook
  with cbook.get_sample_data(f"{name}.jpg") as f, Image.open(f) as im:
    return np.asarray(im.convert("RGB"))


_LOADERS = {**{n: _skimage for n in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                                     "immunohistochemistry", "retina", "motorcycle", "camera", "coins",
                                     "clock", "moon")},
            "china": _sklearn, "flower": _sklearn, "grace_hopper": _matplotlib}


def _asset(name: str) -> np.ndarray:
  from rajax import assets
  with Image.open(assets.path(name)) as im:
    return np.asarray(im.convert("RGB"))


def split_names(split: str) -> tuple[str, ...]:
  """The photos of `split` ("train", "validation" or "test")."""
  if split not in SPLITS:
    raise DataError(f"Unknown photo split {split!r}; use one of {', '.join(SPLITS)}.")
  return SPLITS[split]


@functools.cache
def photo(name: str) -> np.ndarray:
  """Photo `name` as uint8 RGB [H, W, 3] (grayscale photos replicated to three channels): a bundled
  one ("chelsea") or a fetched asset ("darknet/dog.jpg"; a missing one raises rajax.assets.AssetError,
  which names `python -m rajax.assets fetch`)."""
  if "/" in name:
    img = _asset(name)
  elif name not in _LOADERS:
    raise DataError(f"Unknown bundled photo {name!r}; available: {', '.join(sorted(_LOADERS))}, or a fetched "
                    "asset such as 'darknet/dog.jpg' (python -m rajax.assets status lists them).")
  else:
    try:
      img = np.asarray(_LOADERS[name](name))
    except ImportError as e:
      raise DataError(f"Bundled photo {name!r} needs {e.name!r}; install rajax's requirements "
                      "(scikit-image, scikit-learn, matplotlib).") from e
  if img.ndim == 2:
    img = np.repeat(img[..., None], 3, axis=-1)
  img = img[..., :3]
  img.setflags(write=False)
  return img


def resized(name: str, short_side: int) -> np.ndarray:
  """`photo(name)` resized (Pillow bicubic, antialiased) so its short side is `short_side`."""
  img = photo(name)
  h, w = img.shape[:2]
  s = short_side / min(h, w)
  size = (max(short_side, round(w * s)), max(short_side, round(h * s)))
  return np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC))


def grid_crops(img: np.ndarray, crop: int, per_side: int) -> list[np.ndarray]:
  """per_side x per_side crops of crop x crop pixels on a regular grid spanning `img`."""
  h, w = img.shape[:2]
  if h < crop or w < crop:
    raise DataError(f"Photo of {h}x{w} is smaller than the {crop}x{crop} crop; raise the short side.")
  tops = np.linspace(0, h - crop, per_side).round().astype(int)
  lefts = np.linspace(0, w - crop, per_side).round().astype(int)
  return [img[t:t + crop, l:l + crop] for t in tops for l in lefts]


@dataclasses.dataclass(frozen=True)
class PhotoSource:
  """The photos of `split` ("train", "validation" or "test") as a random-access source."""

  split: str
  short_side: int = 192
  crop: int = 96
  repeats: int = 64          # train: each photo appears this many times per epoch
  grid: int = 3              # validation, test: grid x grid crops per photo, plus their mirror images
  names: tuple[str, ...] | None = None
  scales: tuple[float, ...] = (1.0,)   # each photo at short side round(short_side * s), for s in scales

  def __post_init__(self):
    if self.split not in SPLITS:
      raise DataError(f"PhotoSource split must be one of {', '.join(SPLITS)}, got {self.split!r}.")
    if not self.scales:
      raise DataError("PhotoSource scales is empty; give at least one scale (1.0: short_side itself).")
    small = [s for s in self.short_sides if s < self.crop]
    if small:
      raise DataError(f"short_side={self.short_side} x scales {tuple(self.scales)} gives short sides {small} "
                      f"below crop={self.crop}; raise short_side or the scales.")

  @property
  def short_sides(self) -> tuple[int, ...]:
    return tuple(round(self.short_side * s) for s in self.scales)

  @property
  def photo_names(self) -> tuple[str, ...]:
    return self.names if self.names is not None else SPLITS[self.split]

  @functools.cached_property
  def _elements(self) -> list[tuple[str, np.ndarray]]:
    if self.split == "train":
      return [(n, resized(n, side)) for n in self.photo_names for side in self.short_sides]
    out = []
    for n in self.photo_names:
      for side in self.short_sides:
        crops = grid_crops(resized(n, side), self.crop, self.grid)
        out += [(n, np.ascontiguousarray(c)) for c in crops] + [(n, np.ascontiguousarray(c[:, ::-1])) for c in crops]
    return out

  def __len__(self) -> int:
    n = len(self._elements)
    return n * self.repeats if self.split == "train" else n

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} {self.split} photo elements")
    name, img = self._elements[index % len(self._elements)]
    return {"image": img, "label": NO_LABEL, "photo": name}


@dataclasses.dataclass(frozen=True)
class WholePhotos:
  """The photos of `split` ("train", "validation" or "test"), whole and without annotations (a dense
  task's targets are then a recognizer's own predictions on the clean image); `names` instead of the
  split's photos; each photo appears `repeats` times (training: new crops and flips). The detection
  and segmentation sources (rajax.data.detection.DetectionPhotos, rajax.data.segmentation.
  SegmentationPhotos) add their empty annotations to each record (`record`)."""

  split: str = "train"
  names: tuple[str, ...] | None = None
  repeats: int = 1

  annotated: ClassVar[bool] = False
  dataset: ClassVar[str] = "photos"
  classes: ClassVar[tuple[str, ...]] = ()

  def __post_init__(self):
    kind = type(self).__name__
    if self.split not in SPLITS:
      raise DataError(f"{kind} split must be one of {', '.join(SPLITS)}, got {self.split!r}.")
    if self.repeats < 1:
      raise DataError(f"{kind} repeats={self.repeats} must be >= 1.")

  @property
  def photo_names(self) -> tuple[str, ...]:
    return self.names if self.names is not None else split_names(self.split)

  def __len__(self) -> int:
    return len(self.photo_names) * self.repeats

  def record(self, image: np.ndarray, k: int) -> dict:
    return {"image": image, "id": k}

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} photos")
    k = index % len(self.photo_names)
    return self.record(photo(self.photo_names[k]), k)
