"""Rate-accuracy of the NPP demo (configs/npp_demo.py) on the held-out photos: each codec alone
against NPP's pre-processor + codec, read by MobileNetV2 (the training loss) and EfficientNet-Lite0
(never used in training), and by the COCO detector CenterNet on whole photos.

    python -m rajax.demo.npp --workdir runs/npp_demo        # trains the stages, then runs this
    python -m rajax.evaluate --config configs/eval/npp_photos.py:runs=runs/npp_demo --workdir runs/npp_demo/eval

The processor is `<runs>/adaptive` (P with its quality layers; trained with JPEG only, so WebP, AVIF
and HEVC are codecs it never saw). Labels: each recognizer's own top-1 on the clean crop, each
detector's own detections (score >= 0.3) on the clean photo.

Args: runs, split (validation | test), codecs (comma-separated `rajax.codecs` names, each at its
default five-quality sweep), targets (comma-separated classifiers), detection (bool: CenterNet on
whole photos, JPEG only), quick (fewer crops and photos: checks the machinery).
"""

import ml_collections

from rajax import config as config_lib
from rajax import evaluate
from rajax.data import photos

CROP = 128   # configs/npp_demo.py's crops (mbt2018 codes multiples of 64)
DETECTION_CANVAS = 256


def get_config(arg=None):
  a = config_lib.parse_arg(arg, runs="runs/npp_demo", split="test", codecs="jpeg,webp,avif,hevc",
                           targets="mobilenet_v2,efficientnet_lite0", detection=True, quick=False)
  c = evaluate.base_config(task="codec")
  c.labels = "recognizer"
  c.data.source = "photos"
  c.data.split = a.split
  c.data.resize = 0
  c.data.crop = CROP
  # 2 x 2 crops at two scales and their mirrors: 16 crops per photo, 224 on the 14 test photos
  c.data.photos.short_side = CROP
  c.data.photos.grid = 2
  c.data.photos.eval_scales = (1.25, 1.75)
  names = photos.split_names(a.split)
  if a.quick:
    c.data.photos.grid = 1
    c.data.photos.eval_scales = (1.25,)
    names = names[:3]
  c.data.photos.names = tuple(names)
  c.data.threads = 2
  c.batch_size = 32
  c.processors.npp = f"{a.runs}/adaptive"
  targets = [t for t in a.targets.split(",") if t]
  for t in targets:
    c.targets[t] = evaluate.zoo(t)
  chosen = [x for x in a.codecs.split(",") if x]
  E = ml_collections.ConfigDict
  c.evals.rate = E(dict(type="rate_accuracy", processors=("npp",), codecs=tuple(chosen), targets=tuple(targets)))
  if a.detection:
    c.targets.centernet = evaluate.detector("centernet_mobilenetv3")
    size = 128 if a.quick else DETECTION_CANVAS
    c.evals.rate_detection = E(dict(
        type="rate_accuracy", processors=("npp",), codecs=("jpeg",), targets=(),
        detection=E(dict(targets=("centernet",), labels="recognizer", score_threshold=0.3,
                         data=E(dict(source="photos", photos=tuple(names), size=(size, size), max_boxes=32,
                                     batch_size=8))))))   # 14 photos: 2 batches; divisible by 1, 2, 4 and 8 devices
  return c
