"""VRD-IR against plain and RA restorers of the same mixture, per seen and unseen degradation, on the photos.

    python -m rajax.demo.vrdir --workdir runs/vrdir_demo      # trains the runs, then evaluates with this config
    python -m rajax.evaluate --config configs/eval/vrdir.py:runs=runs/vrdir_demo --workdir runs/vrdir_demo/eval

The processors are `<runs>/<mode>` for each of `modes`, trained with configs/vrdir.py; the degradations
are its SEEN (the training mixture) and UNSEEN (held out) families; the targets MobileNetV2 (whose
early layers are VRD-IR's phi and whose outputs label RA's loss) and EfficientNet-Lite0 (used by no
run). Each recognizer's label for a crop is its own top-1 on the clean crop (the photos have none).
Paired tests compare each row with `reference` (the RA restorer). With `detection` (default), the
COCO detector CenterNet (used by no run) on the whole test photos, each resized into a canvas and
then degraded, against its own detections (score >= 0.3) on the clean photo: the side table
`degradations_detection` (VOC07 mAP, boxes recovered, the sign test per photo against `reference`).

Args: runs, modes (comma-separated), reference, quick (configs/vrdir.py's quick crops), crop (the runs' crop
size; 0: configs/vrdir.py's), split, targets, detection.
"""

import importlib.util
import pathlib

import ml_collections

from rajax import config as config_lib
from rajax import evaluate
from rajax.data import photos

DETECTION_CANVAS = 256   # whole photos resized into this square (as configs/eval/npp_photos.py)
TRAIN_CONFIG = pathlib.Path(__file__).resolve().parent.parent / "vrdir.py"


def training_module():
  """configs/vrdir.py as a module (its SEEN and UNSEEN families)."""
  spec = importlib.util.spec_from_file_location("rajax_config_vrdir", TRAIN_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  a = config_lib.parse_arg(arg, runs="runs/vrdir_demo", modes="plain,ra,vrdir", reference="ra", quick=False,
                           crop=0, split="test", targets="mobilenet_v2,efficientnet_lite0", detection=True)
  train = training_module()
  trained = config_lib.load(f"{TRAIN_CONFIG}:mode=plain,quick={a.quick},split={a.split}"
                            + (f",crop={a.crop}" if a.crop else ""))
  c = evaluate.base_config(task="mixture")
  c.degrade.families = train.SEEN
  c.labels = "recognizer"
  c.data.source = "photos"
  c.data.split = trained.data.eval_split
  for field in ("short_side", "grid", "eval_scales", "names"):
    c.data.photos[field] = trained.data.photos[field]
  c.data.resize = 0
  c.data.crop = trained.data.crop
  c.data.threads = 2
  c.batch_size = trained.data.eval_batch_size
  for m in (m for m in a.modes.split(",") if m):
    c.processors[m] = f"{a.runs}/{m}"
  for t in (t for t in a.targets.split(",") if t):
    c.targets[t] = evaluate.zoo(t)
  c.evals.degradations = ml_collections.ConfigDict(dict(
      type="degradations", seen=train.SEEN, unseen=train.UNSEEN, reference=a.reference if a.reference in c.processors else ""))
  if a.detection:
    c.targets.centernet = evaluate.detector("centernet_mobilenetv3")
    names = tuple(trained.data.photos.names) or tuple(photos.split_names(a.split))
    size = 128 if a.quick else DETECTION_CANVAS
    c.evals.degradations.targets = tuple(t for t in c.targets if t != "centernet")
    c.evals.degradations.detection = ml_collections.ConfigDict(dict(
        targets=("centernet",), labels="recognizer", score_threshold=0.3,
        data=ml_collections.ConfigDict(dict(source="photos", photos=names, size=(size, size), max_boxes=32))))   # batch: c.batch_size
  return c
