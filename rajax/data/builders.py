"""TFDS builders that write ArrayRecord datasets from the official archives, without TensorFlow.

Each builder yields encoded image bytes exactly as found in the archive (no re-encoding, so no
quality loss); the pipelines decode them on the host and convert grayscale, CMYK and PNG files to
RGB. Files that are not images at all (empty, garbage, HTML error pages) are skipped and counted.

  Imagenet2012  "imagenet2012" 5.1.0, the features, name and version of TFDS's own ImageNet builder
                (image, label, file_name), so datasets prepared by either are interchangeable.
                manual_dir: ILSVRC2012_img_train.tar (a tar of 1000 per-class tars) and/or
                ILSVRC2012_img_val.tar (50,000 JPEGs). Labels: the 1000 WordNet ids in sorted
                order (rajax.data.classes.imagenet_wnids()); validation labels from the list that ships
                with tensorflow-datasets, or from LOC_val_solution.csv in manual_dir.
  ImagenetC     "imagenet_c/<corruption>_<severity>" 1.0.0, one config per corruption and severity;
                manual_dir: the released tars (blur.tar, digital.tar, noise.tar, weather.tar,
                extra.tar) and/or extracted folders <corruption>/<severity>/<wnid>/*.JPEG.
                Splits: within each class the files sorted by name are cut in two halves, the
                first (n // 2) for "train", the rest for "test"; file_name keeps the validation
                image's name so a clean counterpart can be joined from imagenet2012.
  Voc           "voc/2007", "voc/2012" 5.0.0, TFDS's VOC features (boxes normalised by the image
                size as (ymin, xmin, ymax, xmax), labels, poses, truncated and difficult flags);
                manual_dir: VOCtrainval_06-Nov-2007.tar, VOCtest_06-Nov-2007.tar,
                VOCtrainval_11-May-2012.tar (and VOC2012test.tar, without annotations), or their
                extracted VOCdevkit folder. Splits train, validation (ImageSets/Main) and test.
  Coco          "coco/2017" 1.1.0, the name, version and features of TFDS's coco/2017 (boxes normalised
                by the image size as (ymin, xmin, ymax, xmax) from COCO's pixel (x, y, w, h), i.e. the
                corners x1 = x, x2 = x + w; labels 0..79 for the 80 categories in id order, the COCO
                category id being COCO_CATEGORY_IDS[label]; is_crowd; annotation id and area;
                image/id); manual_dir: annotations_trainval2017.zip and train2017.zip and/or
                val2017.zip, the official zips. Splits train and validation; images without
                annotations are kept (the pipelines decide).
  VocSeg        "voc_seg" 1.0.0, VOC 2012 semantic segmentation: image (the JPEG as found),
                image/filename, label_map (8-bit PNG of class indices: 0 background, 1..20 VOC's
                classes, 255 boundaries / ignored). manual_dir: VOCtrainval_11-May-2012.tar (or its
                VOCdevkit folder); splits train and validation (ImageSets/Segmentation). With SBD's
                benchmark.tgz (or benchmark_RELEASE/) also train_aug, DeepLab's 10,582 images: VOC
                train + SBD train + SBD val - VOC val, VOC's label maps where VOC has them (its train
                images), SBD's cls/*.mat (GTcls.Segmentation, read with scipy) for the others.
  Cityscapes    "cityscapes" 1.0.0, fine annotations: image (the leftImg8bit PNG as found),
                image/filename, label_map (the *_gtFine_labelIds.png mapped to the 19 train ids of
                cityscapesscripts' labels.py, every other id 255); manual_dir:
                leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip. Splits train and validation
                (test's label maps are placeholders and are not written).
  Cub200        "cub200" 1.0.0, CUB-200-2011 birds: image, label (classes.txt's id minus one), file_name;
                manual_dir: CUB_200_2011.tgz or its extracted folder; splits train and test as its
                train_test_split.txt says (5,994 / 5,794).
  StanfordCars  "stanford_cars" 1.0.0, 196 car models: image, label (the annotations' class minus one),
                file_name; manual_dir: car_devkit.tgz (cars_train_annos.mat), cars_train.tgz,
                cars_test.tgz and cars_test_annos_withlabels.mat (or the extracted folders); splits
                train and test (8,144 / 8,041).
  ImageFolder   any name, 1.0.0: manual_dir/<class>/<image> (one "train" split) or
                manual_dir/<split>/<class>/<image>; classes are the sorted folder names.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import io
import json
import logging
import os
import pathlib
import re
import tarfile
import threading
import xml.etree.ElementTree as ET
import zipfile
import zlib
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from rajax.data.classes import imagenet_wnids
from rajax.data.sources import DataError
from rajax.detection import coco as coco_names

log = logging.getLogger("rajax.data.prepare")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
VOC_LABELS = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
              "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
              "train", "tvmonitor")
VOC_POSES = ("frontal", "rear", "left", "right", "unspecified")


# --------------------------------------------------------------------------- image checks


class Tally:
  """Counts what happened to the files of one preparation (skipped, kept with a non-RGB mode, ...)."""

  def __init__(self):
    self.counts: collections.Counter = collections.Counter()
    self.examples: dict[str, list[str]] = collections.defaultdict(list)

  def add(self, kind: str, name: str) -> None:
    self.counts[kind] += 1
    if len(self.examples[kind]) < 5:
      self.examples[kind].append(name)
    if self.counts[kind] in (1, 10, 100, 1000, 10000):
      log.warning("%s: %d file(s) so far, e.g. %s", kind, self.counts[kind], ", ".join(self.examples[kind]))

  def report(self) -> str:
    if not self.counts:
      return "every file was a readable RGB JPEG"
    return "; ".join(f"{k}: {v} (e.g. {', '.join(self.examples[k])})" for k, v in sorted(self.counts.items()))


def check_image(data: bytes, name: str, tally: Tally) -> bool:
  """True if `data` parses as an image (header only); counts the kinds that are read converted."""
  try:
    with Image.open(io.BytesIO(data)) as im:
      fmt, mode = im.format, im.mode
  except (OSError, ValueError, SyntaxError) as e:
    tally.add("skipped_unreadable", f"{name} ({type(e).__name__})")
    return False
  if fmt != "JPEG":
    tally.add(f"kept_{str(fmt).lower()}_decoded_as_is", name)
  if mode != "RGB":
    tally.add(f"kept_{mode.lower()}_converted_to_rgb_when_read", name)
  return True


# --------------------------------------------------------------------------- archives


class TarIndex:
  """Random access to the members of an uncompressed tar: name -> bytes."""

  _cache: dict[str, "TarIndex"] = {}
  _lock = threading.Lock()

  def __init__(self, path: pathlib.Path):
    self.path = path
    log.warning("indexing %s ...", path)
    with tarfile.open(path, "r:*") as tar:
      self.members = {m.name: (m.offset_data, m.size) for m in tar if m.isfile()}
    log.warning("indexed %s: %d files", path, len(self.members))

  @classmethod
  def of(cls, path: pathlib.Path) -> "TarIndex":
    """One index per tar per process (builders for several configs share it)."""
    key = str(pathlib.Path(path).resolve())
    with cls._lock:
      if key not in cls._cache:
        cls._cache[key] = cls(pathlib.Path(key))
      return cls._cache[key]

  def read(self, name: str) -> bytes:
    offset, size = self.members[name]
    with open(self.path, "rb") as f:
      f.seek(offset)
      return f.read(size)


def _need(path: pathlib.Path, what: str) -> pathlib.Path:
  if not path.exists():
    raise DataError(f"{what}: {path} not found. Put it in --manual_dir (see python -m rajax.data.prepare --help).")
  return path


def _manual_dir(dl_manager) -> pathlib.Path:
  return pathlib.Path(os.fspath(dl_manager.manual_dir))


# --------------------------------------------------------------------------- ImageNet 2012


class Imagenet2012(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """ILSVRC 2012 classification from the official tars (same features as TFDS's imagenet2012)."""

  VERSION = tfds.core.Version("5.1.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "manual_dir must hold ILSVRC2012_img_train.tar and/or ILSVRC2012_img_val.tar as downloaded "
      "from image-net.org (registration required).")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description="ILSVRC 2012 classification, 1000 classes; images stored as found in the official tars.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=list(imagenet_wnids())),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://image-net.org/",
    )

  def _split_generators(self, dl_manager):
    m = _manual_dir(dl_manager)
    train, val = m / "ILSVRC2012_img_train.tar", m / "ILSVRC2012_img_val.tar"
    splits = {}
    if train.exists():
      splits["train"] = self._generate_examples(train, None)
    if val.exists():
      splits["validation"] = self._generate_examples(val, imagenet_validation_labels(m))
    if not splits:
      raise DataError(f"imagenet2012: neither {train} nor {val} exists. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return splits

  def _generate_examples(self, path: pathlib.Path, val_labels: dict[str, str] | None):
    tally = Tally()
    wnids = set(imagenet_wnids())
    with tarfile.open(path, "r|*") as outer:
      for member in outer:
        if not member.isfile():
          continue
        data = outer.extractfile(member).read()
        base = os.path.basename(member.name)
        if val_labels is not None:  # validation: flat JPEGs, labels by file name
          if base not in val_labels:
            raise DataError(f"{path}: no validation label for {member.name}; is this ILSVRC2012_img_val.tar?")
          if check_image(data, base, tally):
            yield base, {"image": data, "label": val_labels[base], "file_name": base}
          continue
        wnid = base[:-4] if base.endswith(".tar") else ""
        if wnid not in wnids:
          raise DataError(f"{path}: member {member.name} is not a <wnid>.tar of an ILSVRC2012 class; "
                          "is this ILSVRC2012_img_train.tar?")
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as inner:
          for im in inner:
            if not im.isfile():
              continue
            name = os.path.basename(im.name)
            img = inner.extractfile(im).read()
            if check_image(img, name, tally):
              yield name, {"image": img, "label": wnid, "file_name": name}
    log.warning("imagenet2012 %s: %s", path.name, tally.report())


def imagenet_validation_labels(manual_dir: pathlib.Path) -> dict[str, str]:
  """ILSVRC2012_val_XXXXXXXX.JPEG -> wnid.

  From manual_dir/LOC_val_solution.csv if present (ImageId,PredictionString with the wnid first),
  else from the validation ground truth that ships with tensorflow-datasets (one wnid per line,
  line k for ILSVRC2012_val_%08d.JPEG % k).
  """
  csv_path = manual_dir / "LOC_val_solution.csv"
  if csv_path.exists():
    with open(csv_path, newline="") as f:
      rows = list(csv.DictReader(f))
    try:
      return {f"{r['ImageId']}.JPEG": r["PredictionString"].split()[0] for r in rows}
    except (KeyError, IndexError) as e:
      raise DataError(f"{csv_path} is not in the ImageId,PredictionString format ({e}).") from e
  shipped = pathlib.Path(os.fspath(tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt")))
  if not shipped.exists():
    raise DataError(
        f"No ImageNet validation labels: neither {csv_path} nor {shipped} (installed with "
        "tensorflow-datasets) exists. Put LOC_val_solution.csv in --manual_dir or reinstall tensorflow-datasets.")
  wnids = shipped.read_text().split()
  return {f"ILSVRC2012_val_{k + 1:08d}.JPEG": w for k, w in enumerate(wnids)}


# --------------------------------------------------------------------------- ImageNet-C


CORRUPTION_GROUPS = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
    "extra": ("speckle_noise", "gaussian_blur", "spatter", "saturate"),
}
IMAGENET_C_CORRUPTIONS = tuple(c for group in CORRUPTION_GROUPS.values() for c in group)
_IMAGENET_C_MEMBER = re.compile(r"(?:^|/)([a-z_]+)/([1-5])/(n\d{8})/([^/]+)$")


class ImagenetC(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """ImageNet-C (Hendrycks & Dietterich 2019) from the released tars, split into train/test halves."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=f"{c}_{s}", description=f"{c}, severity {s}")
                     for c in IMAGENET_C_CORRUPTIONS for s in range(1, 6)]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "manual_dir must hold the ImageNet-C tars (noise.tar, blur.tar, weather.tar, digital.tar, "
      "extra.tar) or their extracted folders <corruption>/<severity>/<wnid>/*.JPEG.")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description="ImageNet-C, one corruption at one severity; per class the first half of the "
                    "files (sorted by name) is 'train', the second half 'test'.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=list(imagenet_wnids())),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/hendrycks/robustness",
    )

  def _split_generators(self, dl_manager):
    corruption, severity = self.builder_config.name.rsplit("_", 1)
    files = imagenet_c_files(_manual_dir(dl_manager).resolve()).get((corruption, int(severity)))
    if not files:
      raise DataError(f"imagenet_c: no files for {corruption} severity {severity} in {dl_manager.manual_dir}. "
                      f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    by_class = collections.defaultdict(list)
    for wnid, name, ref in files:
      by_class[wnid].append((name, ref))
    train, test = [], []
    for wnid in sorted(by_class):
      items = sorted(by_class[wnid], key=lambda item: item[0])
      half = len(items) // 2
      train += [(wnid, n, r) for n, r in items[:half]]
      test += [(wnid, n, r) for n, r in items[half:]]
    return {"train": self._generate_examples(train, "train"), "test": self._generate_examples(test, "test")}

  def _generate_examples(self, items, split: str):
    tally = Tally()
    for wnid, name, ref in items:
      data = ref.read()
      if check_image(data, name, tally):
        yield name, {"image": data, "label": wnid, "file_name": name}
    log.warning("imagenet_c/%s %s: %s", self.builder_config.name, split, tally.report())


@dataclasses.dataclass(frozen=True)
class _FileRef:
  """A file on disk or a member of an indexed tar."""

  path: pathlib.Path
  member: str = ""

  def read(self) -> bytes:
    if self.member:
      return TarIndex.of(self.path).read(self.member)
    return self.path.read_bytes()


@functools.lru_cache(maxsize=2)
def imagenet_c_files(manual_dir: pathlib.Path) -> dict[tuple[str, int], list[tuple[str, str, _FileRef]]]:
  """(corruption, severity) -> [(wnid, file name, where)] over the tars and folders in manual_dir.

  Cached per process: preparing the 95 configs scans the (millions of) tar members once.
  """
  wnids = set(imagenet_wnids())
  found = collections.defaultdict(list)

  def add(rel: str, ref: _FileRef):
    m = _IMAGENET_C_MEMBER.search(rel)
    if m and m.group(1) in IMAGENET_C_CORRUPTIONS and m.group(3) in wnids:
      found[(m.group(1), int(m.group(2)))].append((m.group(3), m.group(4), ref))

  for tar_path in sorted(manual_dir.glob("*.tar")):
    index = TarIndex.of(tar_path)
    for name in index.members:
      add(name, _FileRef(tar_path, name))
  for corruption in IMAGENET_C_CORRUPTIONS:
    for path in sorted((manual_dir / corruption).glob("[1-5]/n*/*")) if (manual_dir / corruption).is_dir() else []:
      if path.is_file():
        add(path.relative_to(manual_dir).as_posix(), _FileRef(path))
  return dict(found)


# --------------------------------------------------------------------------- PASCAL VOC


VOC_ARCHIVES = {
    "2007": {"trainval": "VOCtrainval_06-Nov-2007.tar", "test": "VOCtest_06-Nov-2007.tar"},
    "2012": {"trainval": "VOCtrainval_11-May-2012.tar", "test": "VOC2012test.tar"},
}


class _VocTree:
  """The VOCdevkit/VOC<year> files, from the tars in manual_dir or an extracted VOCdevkit folder."""

  def __init__(self, manual_dir: pathlib.Path, year: str):
    self.year = year
    self.files: dict[str, _FileRef] = {}  # path relative to VOC<year>/ -> where
    prefix = re.compile(rf"(?:^|.*/)VOC{year}/(.+)$")
    for key in ("trainval", "test"):
      tar_path = manual_dir / VOC_ARCHIVES[year][key]
      if tar_path.exists():
        for name in TarIndex.of(tar_path).members:
          m = prefix.match(name)
          if m:
            self.files.setdefault(m.group(1), _FileRef(tar_path, name))
    root = manual_dir / "VOCdevkit" / f"VOC{year}"
    if root.is_dir():
      for path in root.rglob("*"):
        if path.is_file():
          self.files.setdefault(path.relative_to(root).as_posix(), _FileRef(path))

  def image_set(self, name: str) -> list[str] | None:
    ref = self.files.get(f"ImageSets/Main/{name}.txt")
    return None if ref is None else ref.read().decode().split()

  def read(self, rel: str) -> bytes:
    if rel not in self.files:
      raise DataError(f"VOC{self.year}: {rel} is listed in ImageSets but missing from the archives.")
    return self.files[rel].read()


def voc_objects(xml_bytes: bytes, where: str) -> list[dict]:
  """The objects of one VOC annotation: label, pose, bbox (normalised ymin, xmin, ymax, xmax), flags."""
  try:
    root = ET.fromstring(xml_bytes)
    size = root.find("size")
    width, height = float(size.find("width").text), float(size.find("height").text)
    objects = []
    for obj in root.findall("object"):
      box = obj.find("bndbox")
      xmin, ymin, xmax, ymax = (float(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
      pose = obj.find("pose")
      objects.append({
          "label": obj.find("name").text.strip().lower(),
          "pose": (pose.text.strip().lower() if pose is not None and pose.text else "unspecified"),
          "bbox": tfds.features.BBox(ymin=min(ymin / height, 1.0), xmin=min(xmin / width, 1.0),
                                     ymax=min(ymax / height, 1.0), xmax=min(xmax / width, 1.0)),
          "is_truncated": _flag(obj, "truncated"),
          "is_difficult": _flag(obj, "difficult"),
      })
  except (ET.ParseError, AttributeError, TypeError, ValueError) as e:
    raise DataError(f"{where}: malformed VOC annotation ({type(e).__name__}: {e}).") from e
  for o in objects:
    if o["label"] not in VOC_LABELS:
      raise DataError(f"{where}: unknown VOC class {o['label']!r}.")
  return objects


def _flag(obj, tag: str) -> bool:
  node = obj.find(tag)
  return node is not None and (node.text or "").strip() == "1"


class Voc(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """PASCAL VOC 2007 / 2012 detection data (same features as TFDS's voc)."""

  VERSION = tfds.core.Version("5.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="2007"), tfds.core.BuilderConfig(name="2012")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "manual_dir must hold the official VOC tars (VOCtrainval_06-Nov-2007.tar, VOCtest_06-Nov-2007.tar, "
      "VOCtrainval_11-May-2012.tar, VOC2012test.tar) or their extracted VOCdevkit folder.")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"PASCAL VOC {self.builder_config.name}: boxes, labels, poses, truncated and difficult flags.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(),
            "image/filename": tfds.features.Text(),
            "objects": tfds.features.Sequence({
                "label": tfds.features.ClassLabel(names=VOC_LABELS),
                "bbox": tfds.features.BBoxFeature(),
                "pose": tfds.features.ClassLabel(names=VOC_POSES),
                "is_truncated": np.bool_,
                "is_difficult": np.bool_,
            }),
            "labels": tfds.features.Sequence(tfds.features.ClassLabel(names=VOC_LABELS)),
            "labels_no_difficult": tfds.features.Sequence(tfds.features.ClassLabel(names=VOC_LABELS)),
        }),
        homepage="http://host.robots.ox.ac.uk/pascal/VOC/",
    )

  def _split_generators(self, dl_manager):
    year = self.builder_config.name
    tree = _VocTree(_manual_dir(dl_manager), year)
    splits = {}
    for split, set_name in (("train", "train"), ("validation", "val"), ("test", "test")):
      ids = tree.image_set(set_name)
      if ids is not None:
        splits[split] = self._generate_examples(tree, ids, set_name)
    if not splits:
      raise DataError(f"voc/{year}: no VOC{year}/ImageSets/Main/*.txt in {dl_manager.manual_dir}. "
                      f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return splits

  def _generate_examples(self, tree: _VocTree, ids: list[str], set_name: str):
    tally = Tally()
    for image_id in ids:
      data = tree.read(f"JPEGImages/{image_id}.jpg")
      if not check_image(data, f"{image_id}.jpg", tally):
        continue
      ann = f"Annotations/{image_id}.xml"
      objects = voc_objects(tree.read(ann), ann) if ann in tree.files else []
      if not objects and set_name != "test":
        raise DataError(f"VOC{tree.year}: {ann} is missing or has no objects.")
      yield image_id, {
          "image": data,
          "image/filename": f"{image_id}.jpg",
          "objects": objects,
          "labels": sorted({o["label"] for o in objects}),
          "labels_no_difficult": sorted({o["label"] for o in objects if not o["is_difficult"]}),
      }
    log.warning("voc/%s %s: %s", tree.year, set_name, tally.report())


# --------------------------------------------------------------------------- COCO 2017


# The 80 category ids COCO's instance annotations use and their names (rajax.detection.coco): label k
# of the dataset is category COCO_CATEGORY_IDS[k].
COCO_CATEGORY_IDS = coco_names.CATEGORY_IDS
COCO_LABELS = coco_names.COCO80
COCO_ANNOTATIONS_ZIP = "annotations_trainval2017.zip"
COCO_IMAGE_ZIPS = {"train": "train2017", "validation": "val2017"}  # split -> <name>.zip holding <name>/*.jpg
# A box may overshoot its image by up to this many pixels (float rounding in the official files);
# it is clipped to the image. Beyond that the annotations do not belong to the images: an error.
COCO_BOX_TOLERANCE = 1.0


def coco_instances(data: bytes, where: str) -> tuple[list[dict], dict[int, list[dict]]]:
  """instances_<split>2017.json -> (its images, their annotations by image id); checks the categories."""
  try:
    doc = json.loads(data)
    images, annotations, categories = doc["images"], doc["annotations"], doc["categories"]
    found = [(int(c["id"]), str(c["name"])) for c in categories]
  except (ValueError, KeyError, TypeError) as e:
    raise DataError(f"{where} is not a COCO instances file ({type(e).__name__}: {e}); it needs 'images', "
                    "'annotations' and 'categories' (the official annotations_trainval2017.zip has them).") from e
  if sorted(found) != list(zip(COCO_CATEGORY_IDS, COCO_LABELS)):
    raise DataError(f"{where} does not have COCO's 80 detection categories (found {len(found)}, e.g. "
                    f"{sorted(found)[:3]}); use the instances_*.json files of annotations_trainval2017.zip.")
  by_image: dict[int, list[dict]] = collections.defaultdict(list)
  for a in annotations:
    by_image[int(a["image_id"])].append(a)
  return images, by_image


def coco_objects(annotations: list[dict], width: int, height: int, where: str, tally: Tally) -> list[dict]:
  """COCO instance annotations of one image -> TFDS objects: bbox (x, y, w, h) in pixels becomes
  the normalised (ymin, xmin, ymax, xmax) of its corners x1 = x, y1 = y, x2 = x + w, y2 = y + h."""
  ids = {c: k for k, c in enumerate(COCO_CATEGORY_IDS)}
  objects = []
  for a in annotations:
    try:
      x, y, w, h = (float(v) for v in a["bbox"])
      category, crowd, area, ann_id = int(a["category_id"]), bool(a["iscrowd"]), float(a["area"]), int(a["id"])
    except (KeyError, TypeError, ValueError) as e:
      raise DataError(f"{where}: malformed COCO annotation {a!r:.200} ({type(e).__name__}: {e}).") from e
    if category not in ids:
      raise DataError(f"{where}: annotation {ann_id} has category_id {category}, not one of COCO's 80.")
    x2, y2 = x + w, y + h
    if not np.all(np.isfinite([x, y, w, h])) or w < 0 or h < 0:
      raise DataError(f"{where}: annotation {ann_id} has bbox {a['bbox']} (x, y, w, h): w and h must be >= 0.")
    tol = COCO_BOX_TOLERANCE
    if x < -tol or y < -tol or x2 > width + tol or y2 > height + tol:
      raise DataError(f"{where}: annotation {ann_id} box x1,y1,x2,y2 = {x:g},{y:g},{x2:g},{y2:g} lies outside the "
                      f"{width}x{height} image; the annotations do not match the images.")
    if x < 0 or y < 0 or x2 > width or y2 > height:
      tally.add("kept_box_clipped_to_the_image", f"{where} annotation {ann_id}")
    objects.append({
        "id": ann_id,
        "area": int(round(area)),
        "bbox": tfds.features.BBox(ymin=min(max(y, 0.0), height) / height, xmin=min(max(x, 0.0), width) / width,
                                   ymax=min(max(y2, 0.0), height) / height, xmax=min(max(x2, 0.0), width) / width),
        "label": ids[category],
        "is_crowd": crowd,
    })
  return objects


class Coco(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """COCO 2017 detection from the official zips (the name, version and features of TFDS's coco/2017)."""

  VERSION = tfds.core.Version("1.1.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="2017", description="COCO 2017 boxes and labels.")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "manual_dir must hold annotations_trainval2017.zip and train2017.zip and/or val2017.zip, as "
      "downloaded from https://cocodataset.org/#download (images.cocodataset.org/zips/ and /annotations/).")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description="COCO 2017 instances: boxes (normalised ymin, xmin, ymax, xmax), the 80 categories as "
                    "labels 0..79 (category id COCO_CATEGORY_IDS[label]), crowd flags, annotation ids and "
                    "areas; images stored as found in the zips. Images without annotations are kept.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "image/filename": tfds.features.Text(),
            "image/id": np.int64,
            "objects": tfds.features.Sequence({
                "id": np.int64,
                "area": np.int64,
                "bbox": tfds.features.BBoxFeature(),
                "label": tfds.features.ClassLabel(names=COCO_LABELS),
                "is_crowd": np.bool_,
            }),
        }),
        homepage="https://cocodataset.org/",
    )

  def _split_generators(self, dl_manager):
    m = _manual_dir(dl_manager)
    zips = {split: m / f"{name}.zip" for split, name in COCO_IMAGE_ZIPS.items() if (m / f"{name}.zip").exists()}
    if not zips:
      raise DataError(f"coco/2017: neither {m / 'train2017.zip'} nor {m / 'val2017.zip'} exists. "
                      f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    annotations = _need(m / COCO_ANNOTATIONS_ZIP, "coco/2017 annotations")
    return {split: self._generate_examples(path, annotations, COCO_IMAGE_ZIPS[split]) for split, path in zips.items()}

  def _generate_examples(self, images_zip: pathlib.Path, annotations_zip: pathlib.Path, name: str):
    member = f"annotations/instances_{name}.json"
    try:
      with zipfile.ZipFile(annotations_zip) as z:
        data = z.read(member)
    except KeyError:
      raise DataError(f"{annotations_zip} has no {member}; is it the official {COCO_ANNOTATIONS_ZIP}?") from None
    except zipfile.BadZipFile as e:
      raise DataError(f"{annotations_zip} is not a zip file ({e}); download it again.") from e
    images, by_image = coco_instances(data, f"{annotations_zip.name}:{member}")
    tally = Tally()
    try:
      archive = zipfile.ZipFile(images_zip)
    except zipfile.BadZipFile as e:
      raise DataError(f"{images_zip} is not a zip file ({e}); download it again.") from e
    with archive:
      members = set(archive.namelist())
      for image in sorted(images, key=lambda im: int(im["id"])):
        file_name, image_id = str(image["file_name"]), int(image["id"])
        path = f"{name}/{file_name}"
        if path not in members:
          raise DataError(f"{images_zip.name} has no {path}, which {member} lists; "
                          f"is it the official {name}.zip?")
        data = archive.read(path)
        if not check_image(data, file_name, tally):
          continue
        with Image.open(io.BytesIO(data)) as im:
          width, height = im.size
        if (width, height) != (int(image["width"]), int(image["height"])):
          raise DataError(f"{images_zip.name}:{path} is {width}x{height} but {member} says "
                          f"{image['width']}x{image['height']}: the images and annotations do not belong together.")
        yield file_name, {
            "image": data,
            "image/filename": file_name,
            "image/id": image_id,
            "objects": coco_objects(by_image.get(image_id, []), width, height, f"{member} image {image_id}", tally),
        }
    empty = sum(1 for im in images if not by_image.get(int(im["id"])))
    log.warning("coco/2017 %s: %s; %d of %d images have no annotations (kept)", name, tally.report(), empty,
                len(images))


# --------------------------------------------------------------------------- image folders


class ImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A directory of class folders. Subclass it (see `image_folder_builder`) to name the dataset."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("manual_dir must hold <class>/<image> folders, or <split>/<class>/<image> "
                                  "with split names such as train, validation, test.")

  def _layout(self) -> tuple[dict[str, pathlib.Path], list[str]]:
    root = pathlib.Path(os.fspath(self._manual_dir_path))
    if not root.is_dir():
      raise DataError(f"folder dataset: {root} is not a directory. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    split_like = {"train", "validation", "val", "test", "eval"}
    if subdirs and all(p.name in split_like for p in subdirs):
      splits = {("validation" if p.name == "val" else p.name): p for p in subdirs}
    else:
      splits = {"train": root}
    classes = sorted({c.name for d in splits.values() for c in d.iterdir() if c.is_dir()})
    if not classes:
      raise DataError(f"folder dataset: no class folders in {root}. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return splits, classes

  def _info(self):
    _, classes = self._layout()
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"Images from the class folders of {self._manual_dir_path}.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(),
            "label": tfds.features.ClassLabel(names=classes),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    splits, _ = self._layout()
    return {name: self._generate_examples(path) for name, path in splits.items()}

  def _generate_examples(self, split_dir: pathlib.Path):
    tally = Tally()
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
      for path in sorted(class_dir.rglob("*")):
        if not path.is_file():
          continue
        rel = path.relative_to(split_dir).as_posix()
        if path.suffix.lower() not in IMAGE_SUFFIXES:
          tally.add("skipped_not_an_image_suffix", rel)
          continue
        data = path.read_bytes()
        if check_image(data, rel, tally):
          yield rel, {"image": data, "label": class_dir.name, "file_name": rel}
    log.warning("%s %s: %s", self.name, split_dir.name, tally.report())


def image_folder_builder(name: str, manual_dir: str | os.PathLike) -> type[ImageFolder]:
  """An ImageFolder builder class called `name` (a lower_snake_case dataset name) reading manual_dir."""
  if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
    raise DataError(f"Dataset name {name!r} must be lower_snake_case (letters, digits, underscores).")
  camel = "".join(part.capitalize() for part in name.split("_"))
  return type(camel, (ImageFolder,), {"name": name, "_manual_dir_path": pathlib.Path(manual_dir),
                                       "__module__": __name__}, skip_registration=True)


# --------------------------------------------------------------------------- segmentation: VOC 2012 (+ SBD), Cityscapes


SBD_ARCHIVE = "benchmark.tgz"
_SBD_MAT = re.compile(r"(?:^|.*/)dataset/cls/([^/]+)\.mat$")
_SBD_LIST = re.compile(r"(?:^|.*/)dataset/(train|val)\.txt$")


def label_png(label: np.ndarray) -> bytes:
  """A class-index map [H, W] with values 0..255 as an 8-bit grayscale PNG (what the segmentation
  datasets store: one format whatever the archive held, palette PNGs, .mat files or label ids)."""
  buf = io.BytesIO()
  Image.fromarray(np.asarray(label, np.uint8), mode="L").save(buf, format="PNG")
  return buf.getvalue()


def _image_size(data: bytes) -> tuple[int, int]:
  """(height, width) of an encoded image, from its header."""
  with Image.open(io.BytesIO(data)) as im:
    return im.height, im.width


def _check_label_map(label: np.ndarray, image: bytes, num_classes: int, where: str) -> None:
  """DataError if `label` is not the size of `image` or holds a class beyond 0..num_classes-1 (255 allowed)."""
  from rajax.data.segmentation import check_label_values
  h, w = _image_size(image)
  if label.shape != (h, w):
    raise DataError(f"{where}: the label map is {label.shape[1]}x{label.shape[0]} but its image is {w}x{h}; "
                    "the label maps do not belong to the images.")
  check_label_values(label, num_classes, where)


def sbd_label_map(data: bytes, where: str) -> np.ndarray:
  """SBD's cls/<id>.mat (a MATLAB struct GTcls with field Segmentation: uint8 [H, W], classes 0..20)."""
  import scipy.io
  try:
    mat = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False)
    seg = np.asarray(mat["GTcls"].Segmentation)
  except (scipy.io.matlab.MatReadError, KeyError, AttributeError, ValueError, TypeError, OSError, IndexError,
          EOFError, NotImplementedError) as e:  # scipy's readers raise all of these on files that are not .mat
    raise DataError(f"{where} is not an SBD class label file (a .mat with GTcls.Segmentation): "
                    f"{type(e).__name__}: {e}. Use the cls/ folder of SBD's benchmark.tgz.") from e
  if seg.ndim != 2 or not np.issubdtype(seg.dtype, np.integer):
    raise DataError(f"{where}: GTcls.Segmentation is {seg.dtype} of shape {seg.shape}, not an integer [H, W] map.")
  if seg.size and (seg.min() < 0 or seg.max() > 255):
    raise DataError(f"{where}: GTcls.Segmentation holds values {seg.min()}..{seg.max()}, outside 0..255.")
  return seg.astype(np.uint8)


class _SbdLabels:
  """SBD's train/val lists and class label maps, from benchmark.tgz or its extracted
  benchmark_RELEASE/dataset folder. The archive is gzip-compressed, so it is read once, in order,
  keeping each map as a small label PNG; an extracted folder is read file by file when needed."""

  def __init__(self, manual_dir: pathlib.Path):
    self.lists: dict[str, list[str]] = {}
    self._maps: dict[str, pathlib.Path | bytes] = {}   # id -> cls/<id>.mat on disk, or its label PNG
    archive, root = manual_dir / SBD_ARCHIVE, manual_dir / "benchmark_RELEASE" / "dataset"
    if root.is_dir():
      self.where = str(root)
      self._maps = {path.stem: path for path in sorted(root.glob("cls/*.mat"))}
      for name in ("train", "val"):
        if (root / f"{name}.txt").exists():
          self.lists[name] = (root / f"{name}.txt").read_text().split()
    elif archive.exists():
      self.where = str(archive)
      log.warning("reading %s ...", archive)
      try:
        with tarfile.open(archive, "r:*") as tar:
          for member in tar:
            m_mat, m_list = _SBD_MAT.match(member.name), _SBD_LIST.match(member.name)
            if member.isfile() and (m_mat or m_list):
              data = tar.extractfile(member).read()
              if m_mat:
                self._maps[m_mat.group(1)] = label_png(sbd_label_map(data, f"{archive.name}:{member.name}"))
              else:
                self.lists[m_list.group(1)] = data.decode().split()
      except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{archive} is not a readable tar.gz ({type(e).__name__}: {e}); download it again.") from e
      log.warning("read %s: %d label maps", archive, len(self._maps))
    else:
      self.where = ""
    if self.where and sorted(self.lists) != ["train", "val"]:
      raise DataError(f"{self.where} has no dataset/train.txt and dataset/val.txt; is it SBD's benchmark.tgz "
                      "(benchmark_RELEASE/dataset/...)?")

  def __bool__(self) -> bool:
    return bool(self.where)

  def label(self, image_id: str) -> np.ndarray:
    """The class map of `image_id` (uint8 [H, W], 0..20)."""
    from rajax.data.segmentation import decode_label_map
    ref = self._maps.get(image_id)
    if ref is None:
      raise DataError(f"{self.where}: {image_id} is in SBD's train/val lists but dataset/cls/{image_id}.mat is missing.")
    if isinstance(ref, pathlib.Path):
      return sbd_label_map(ref.read_bytes(), str(ref))
    return decode_label_map(ref, f"{self.where}: dataset/cls/{image_id}.mat")


def _voc_list(tree: _VocTree, kind: str, name: str) -> list[str] | None:
  ref = tree.files.get(f"ImageSets/{kind}/{name}.txt")
  return None if ref is None else ref.read().decode().split()


class VocSeg(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """PASCAL VOC 2012 semantic segmentation (SegmentationClass), plus SBD's augmented train set."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "manual_dir must hold VOCtrainval_11-May-2012.tar (or its extracted VOCdevkit/VOC2012 folder) and, for "
      "the augmented 'train_aug' split, SBD's benchmark.tgz (or its extracted benchmark_RELEASE folder).")

  def _info(self):
    from rajax.data.segmentation import VOC_SEG_CLASSES
    return tfds.core.DatasetInfo(
        builder=self,
        description="PASCAL VOC 2012 segmentation: the JPEG as found and an 8-bit PNG label map of class indices "
                    f"({', '.join(VOC_SEG_CLASSES[:3])}, ...: 0 background, 1..20 VOC's classes in alphabetical "
                    "order, 255 object boundaries and regions to ignore). train_aug: VOC 2012 train, SBD train and "
                    "SBD val, minus VOC 2012 val (10,582 images with the full archives); VOC train images keep "
                    "VOC's label maps, the others SBD's.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "image/filename": tfds.features.Text(),
            "label_map": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
        }),
        homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
    )

  def _split_generators(self, dl_manager):
    m = _manual_dir(dl_manager)
    tree = _VocTree(m, "2012")
    train, val = _voc_list(tree, "Segmentation", "train"), _voc_list(tree, "Segmentation", "val")
    if train is None or val is None:
      raise DataError(f"voc_seg: no VOC2012/ImageSets/Segmentation/train.txt and val.txt in {m}. "
                      f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    splits = {"train": self._generate_examples(tree, [(i, None) for i in train], "train"),
              "validation": self._generate_examples(tree, [(i, None) for i in val], "validation")}
    sbd = _SbdLabels(m)
    if sbd:
      ids = (set(train) | set(sbd.lists["train"]) | set(sbd.lists["val"])) - set(val)
      voc_train = set(train)
      splits["train_aug"] = self._generate_examples(
          tree, [(i, None if i in voc_train else sbd) for i in sorted(ids)], "train_aug")
    return splits

  def _generate_examples(self, tree: _VocTree, items: list[tuple[str, "_SbdLabels | None"]], split: str):
    from rajax.data.segmentation import VOC_SEG_CLASSES, decode_label_map
    tally = Tally()
    for image_id, sbd in items:
      image = f"JPEGImages/{image_id}.jpg"
      if image not in tree.files:
        raise DataError(f"voc_seg {split}: {image_id} is listed ({'SBD' if sbd else 'VOC2012 ImageSets/Segmentation'}) "
                        f"but VOC2012/{image} is missing; {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
      data = tree.read(image)
      if not check_image(data, f"{image_id}.jpg", tally):
        continue
      if sbd:
        where = f"{sbd.where}: dataset/cls/{image_id}.mat"
        label = sbd.label(image_id)
      else:
        where = f"VOC2012/SegmentationClass/{image_id}.png"
        label = decode_label_map(tree.read(f"SegmentationClass/{image_id}.png"), where)
      _check_label_map(label, data, len(VOC_SEG_CLASSES), where)
      yield image_id, {"image": data, "image/filename": f"{image_id}.jpg", "label_map": label_png(label)}
    log.warning("voc_seg %s: %s", split, tally.report())


CITYSCAPES_ZIPS = {"images": "leftImg8bit_trainvaltest.zip", "labels": "gtFine_trainvaltest.zip"}
CITYSCAPES_SPLITS = {"train": "train", "validation": "val"}  # test's gtFine maps are placeholders: not written
_CITYSCAPES_IMAGE = re.compile(r"^leftImg8bit/([a-z]+)/([^/]+)/([^/]+)_leftImg8bit\.png$")


class Cityscapes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Cityscapes fine annotations, as the 19 train ids of cityscapesscripts (255: ignored)."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "manual_dir must hold leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip as downloaded from "
      "https://www.cityscapes-dataset.com/downloads/ (registration required).")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description="Cityscapes leftImg8bit images (PNG, as found) with their gtFine *_labelIds.png mapped to the "
                    "19 train ids of cityscapesscripts' labels.py (rajax.data.segmentation.CITYSCAPES_LABELS); "
                    "every other id becomes 255 (ignored). Splits train (2,975) and validation (500).",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="png"),
            "image/filename": tfds.features.Text(),
            "label_map": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
        }),
        homepage="https://www.cityscapes-dataset.com/",
    )

  def _split_generators(self, dl_manager):
    m = _manual_dir(dl_manager)
    images = _need(m / CITYSCAPES_ZIPS["images"], "cityscapes images")
    labels = _need(m / CITYSCAPES_ZIPS["labels"], "cityscapes fine annotations")
    try:
      names = zipfile.ZipFile(images).namelist()
    except zipfile.BadZipFile as e:
      raise DataError(f"{images} is not a zip file ({e}); download it again.") from e
    found = collections.defaultdict(list)
    for name in names:
      match = _CITYSCAPES_IMAGE.match(name)
      if match:
        found[match.group(1)].append(name)
    splits = {split: self._generate_examples(images, labels, sorted(found[folder]), split)
              for split, folder in CITYSCAPES_SPLITS.items() if found[folder]}
    if not splits:
      raise DataError(f"{images} has no leftImg8bit/train/ or leftImg8bit/val/ images; is it the official "
                      f"{CITYSCAPES_ZIPS['images']}?")
    return splits

  def _generate_examples(self, images_zip: pathlib.Path, labels_zip: pathlib.Path, names: list[str], split: str):
    from rajax.data.segmentation import cityscapes_train_ids, decode_label_map
    tally = Tally()
    try:
      labels = zipfile.ZipFile(labels_zip)
    except zipfile.BadZipFile as e:
      raise DataError(f"{labels_zip} is not a zip file ({e}); download it again.") from e
    with zipfile.ZipFile(images_zip) as images, labels:
      members = set(labels.namelist())
      for name in names:
        folder, city, stem = _CITYSCAPES_IMAGE.match(name).groups()
        label_name = f"gtFine/{folder}/{city}/{stem}_gtFine_labelIds.png"
        if label_name not in members:
          raise DataError(f"{labels_zip.name} has no {label_name} for {name}; is it the official "
                          f"{CITYSCAPES_ZIPS['labels']}?")
        data = images.read(name)
        if not check_image(data, name, tally):
          continue
        where = f"{labels_zip.name}:{label_name}"
        train_ids = cityscapes_train_ids(decode_label_map(labels.read(label_name), where), where)
        _check_label_map(train_ids, data, 19, where)
        file_name = name.rsplit("/", 1)[-1]
        yield file_name, {"image": data, "image/filename": file_name, "label_map": label_png(train_ids)}
    log.warning("cityscapes %s: %s", split, tally.report())


# --------------------------------------------------------------------------- fine-grained classification: CUB-200, Stanford Cars


class _ArchiveFiles:
  """The files of a (gzipped) tar or an extracted folder, by their path below a root folder name.

  A member's path below the root is what follows the first "<root>/" in its name ("CUB_200_2011/",
  "./cars_train/", ...), or its whole name when it lies outside any such folder. A .tgz is read in
  archive order (gzip only seeks forward cheaply): `read_all(names)` yields the named members in one
  forward pass, with no listing pass before it."""

  def __init__(self, source: pathlib.Path, root: str):
    self.source, self.root = source, root.strip("/")

  def _below_root(self, name: str) -> str:
    marker = self.root + "/"
    if name.startswith(marker):
      return name[len(marker):]
    i = name.find("/" + marker)
    return name[i + len(marker) + 1:] if i >= 0 else name.removeprefix("./")

  def read(self, rel: str) -> bytes:
    for _, data in self.read_all([rel]):
      return data
    raise DataError(f"{self.source} has no {self.root}/{rel}: is it the official archive (or its extracted folder)?")

  def read_all(self, rels: Sequence[str]):
    """(rel, bytes) for each of `rels` that exists, in archive order."""
    want = set(rels)
    if self.source.is_dir():
      base = self.source / self.root if (self.source / self.root).is_dir() else self.source
      for rel in sorted(want):
        if (base / rel).is_file():
          yield rel, (base / rel).read_bytes()
      return
    with tarfile.open(self.source, "r:*") as tar:
      for m in tar:
        rel = self._below_root(m.name) if m.isfile() else None
        if rel in want:
          want.discard(rel)   # the first copy of a name only
          yield rel, tar.extractfile(m).read()
          if not want:
            return            # the lists of a 1 GB archive need not wait for its last image


def _find(manual: pathlib.Path, names: Sequence[str], what: str) -> pathlib.Path:
  for n in names:
    if (manual / n).exists():
      return manual / n
  raise DataError(f"{what}: none of {', '.join(names)} in {manual}. Put the official archive (or its extracted "
                  "folder) in --manual_dir.")


class Cub200(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Caltech-UCSD Birds-200-2011 from the official CUB_200_2011.tgz: the 200 classes, train / test as
  its train_test_split.txt says (5,994 / 5,794 images)."""

  VERSION = tfds.core.Version("1.0.0")
  name = "cub200"
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("manual_dir must hold CUB_200_2011.tgz (the official archive) or its extracted "
                                  "CUB_200_2011/ folder (images/, images.txt, classes.txt, image_class_labels.txt, "
                                  "train_test_split.txt).")

  @staticmethod
  def _files(manual: pathlib.Path) -> _ArchiveFiles:
    return _ArchiveFiles(_find(manual, ("CUB_200_2011.tgz", "CUB_200_2011.tar.gz", "CUB_200_2011"), "cub200"),
                         "CUB_200_2011")

  def _tables(self, files: _ArchiveFiles) -> tuple[list[str], list[tuple[str, int, bool]]]:
    """(class names in label order, [(image path, label, is_train)])."""
    lists = dict(files.read_all(["classes.txt", "images.txt", "image_class_labels.txt", "train_test_split.txt"]))
    missing = [k for k in ("classes.txt", "images.txt", "image_class_labels.txt", "train_test_split.txt")
               if k not in lists]
    if missing:
      raise DataError(f"cub200: {', '.join(missing)} missing from {files.source}. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    table = lambda k: dict(line.split(" ", 1) for line in lists[k].decode().splitlines() if line.strip())
    classes = table("classes.txt")
    names = [classes[k].strip() for k in sorted(classes, key=int)]
    images, labels, split = table("images.txt"), table("image_class_labels.txt"), table("train_test_split.txt")
    rows = [(images[i].strip(), int(labels[i]) - 1, split[i].strip() == "1") for i in sorted(images, key=int)]
    return names, rows

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description="CUB-200-2011 birds, the official train / test split (labels: classes.txt's "
                                  "ids minus one).",
        features=tfds.features.FeaturesDict({"image": tfds.features.Image(),
                                             "label": tfds.features.ClassLabel(num_classes=200),
                                             "file_name": tfds.features.Text()}),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    files = self._files(_manual_dir(dl_manager))
    names, rows = self._tables(files)
    if len(names) != 200:
      raise DataError(f"cub200: classes.txt lists {len(names)} classes, not CUB-200-2011's 200.")
    return {"train": self._generate_examples(files, [r for r in rows if r[2]]),
            "test": self._generate_examples(files, [r for r in rows if not r[2]])}

  def _generate_examples(self, files: _ArchiveFiles, rows):
    tally, label = Tally(), {f"images/{path}": lab for path, lab, _ in rows}
    found = 0
    for rel, data in files.read_all(list(label)):
      found += 1
      if check_image(data, rel, tally):
        yield rel, {"image": data, "label": label[rel], "file_name": rel[len("images/"):]}
    if found < len(label):
      tally.add("missing_from_the_archive", f"{len(label) - found} of {len(label)}")
    log.warning("cub200: %s", tally.report())


class StanfordCars(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Stanford Cars (196 classes) from the official files: car_devkit.tgz (devkit/cars_meta.mat and
  cars_train_annos.mat), cars_train.tgz, cars_test.tgz and cars_test_annos_withlabels.mat; splits
  train (8,144) and test (8,041). Labels: the annotations' class (1..196) minus one."""

  VERSION = tfds.core.Version("1.0.0")
  name = "stanford_cars"
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("manual_dir must hold car_devkit.tgz, cars_train.tgz, cars_test.tgz and "
                                  "cars_test_annos_withlabels.mat (or the extracted devkit/, cars_train/, cars_test/ "
                                  "folders). For the class-folder layout of other copies use `prepare folder "
                                  "--name stanford_cars`.")
  @staticmethod
  def _mat_annotations(data: bytes, where: str) -> list[tuple[str, int]]:
    """[(file name, class 1..196)] of a cars_*_annos*.mat."""
    from scipy import io as sio
    try:
      mat = sio.loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False)
    except (ValueError, TypeError, OSError) as e:
      raise DataError(f"stanford_cars: {where} is not a readable MATLAB file ({e}).") from None
    if "annotations" not in mat:
      raise DataError(f"stanford_cars: {where} has no 'annotations' struct.")
    ann = np.atleast_1d(mat["annotations"])
    if not len(ann) or not hasattr(ann[0], "fname") or not hasattr(ann[0], "class"):
      raise DataError(f"stanford_cars: {where}'s annotations have no fname and class fields (the test annotations "
                      "without labels? use cars_test_annos_withlabels.mat).")
    return [(str(a.fname), int(getattr(a, "class"))) for a in ann]

  @staticmethod
  def _devkit(manual: pathlib.Path) -> _ArchiveFiles:
    return _ArchiveFiles(_find(manual, ("car_devkit.tgz", "devkit"), "stanford_cars devkit"), "devkit")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description="Stanford Cars, the official train / test split.",
        features=tfds.features.FeaturesDict({"image": tfds.features.Image(),
                                             "label": tfds.features.ClassLabel(num_classes=196),
                                             "file_name": tfds.features.Text()}),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    manual = _manual_dir(dl_manager)
    train_ann = self._mat_annotations(self._devkit(manual).read("cars_train_annos.mat"), "devkit/cars_train_annos.mat")
    test_mat = _find(manual, ("cars_test_annos_withlabels.mat", "devkit/cars_test_annos_withlabels.mat"),
                     "stanford_cars test labels")
    test_ann = self._mat_annotations(test_mat.read_bytes(), test_mat.name)
    out = {}
    for split, ann in (("train", train_ann), ("test", test_ann)):
      images = _ArchiveFiles(_find(manual, (f"cars_{split}.tgz", f"cars_{split}"), f"stanford_cars {split} images"),
                             f"cars_{split}")
      out[split] = self._generate_examples(split, images, ann)
    return out

  def _generate_examples(self, split: str, images: _ArchiveFiles, ann):
    tally, label, found = Tally(), dict(ann), 0
    for rel, data in images.read_all(list(label)):
      found += 1
      if not 1 <= label[rel] <= 196:
        raise DataError(f"stanford_cars {split}: {rel} has class {label[rel]}, outside 1..196.")
      if check_image(data, rel, tally):
        yield rel, {"image": data, "label": label[rel] - 1, "file_name": rel}
    if found < len(label):
      tally.add("missing_from_the_archive", f"{len(label) - found} of {len(label)}")
    log.warning("stanford_cars %s: %s", split, tally.report())


BUILDERS = {"imagenet2012": Imagenet2012, "imagenet_c": ImagenetC, "voc": Voc, "coco": Coco, "folder": ImageFolder,
            "voc_seg": VocSeg, "cityscapes": Cityscapes, "cub200": Cub200, "stanford_cars": StanfordCars}
