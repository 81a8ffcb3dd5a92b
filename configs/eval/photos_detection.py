"""Task transfer on real photos: the demo's processors (trained with the classifier MobileNetV2) evaluated
by two real COCO detectors, CenterNet-MobileNetV3 and NanoDet (the paper's Table 4, offline).

    python -m rajax.assets fetch                          # the detectors' TF.js graphs and the Debian photos
    python -m rajax.demo --workdir runs/demo --detection  # or, on the runs of a finished demo:
    python -m rajax.evaluate --config configs/eval/photos_detection.py:runs=runs/demo,task=sr \\
        --workdir runs/eval_detection_sr

Images: whole photos (not crops), each resized with its aspect ratio kept into a size x size canvas
and padded, then degraded by the task: the test photos of rajax.data.photos (14: five bundled ones,
four of the Debian package darknet, five of opencv-doc; split=validation: its 8 validation photos,
on which the demo chooses its detection run's weight). No photo has boxes: each detector's targets
are its own detections on the clean image scoring >= score (0.3 by default), so the clean row is 100%.

Args: runs, task (sr | denoise | jpeg), modes (comma-separated demo runs), size (the canvas side,
a multiple of 4), score (the pseudo-target threshold), figures (images drawn), quick (3 photos),
split (test | validation), detectors (comma-separated: centernet, nanodet).
"""

import ml_collections

from rajax import config as config_lib
from rajax import evaluate
from rajax.data import photos

DETECTORS = {"centernet": "centernet_mobilenetv3", "nanodet": "nanodet"}
QUICK_PHOTOS = {"test": ("coffee", "darknet/dog.jpg", "darknet/person.jpg"),
                "validation": ("darknet/giraffe.jpg", "opencv-doc/apple.jpg")}


def get_config(arg=None):
  a = config_lib.parse_arg(arg, runs="runs/demo", task="sr", modes="plain,ra,unsupervised,transformer", size=384,
                           score=0.3, figures=2, quick=False, split="test", detectors="centernet,nanodet")
  c = evaluate.base_config(task=a.task)
  c.labels = "recognizer"
  c.data.source = "photos"               # (the classification crops; the detection evaluator reads its own data)
  c.data.noise = "host"                  # as the demo's evaluation draws it
  c.batch_size = 1                       # one photo at a time: the detectors' programs are large
  c.mesh.data = 1
  modes = [m for m in a.modes.split(",") if m]
  for m in modes:
    c.processors[m] = f"{a.runs}/{a.task}/{m}"
  detectors = [d for d in a.detectors.split(",") if d]
  if not detectors or set(detectors) - set(DETECTORS):
    raise config_lib.ConfigError(f"configs/eval/photos_detection.py: detectors={a.detectors!r}; choose from "
                                 f"{', '.join(DETECTORS)}.")
  names = QUICK_PHOTOS[a.split] if a.quick else photos.split_names(a.split)
  for name in detectors:
    c.targets[name] = evaluate.detector(DETECTORS[name])
  E = ml_collections.ConfigDict
  c.evals.detection = E(dict(
      type="detection", processors=tuple(modes), targets=tuple(detectors), labels="recognizer",
      score_threshold=float(a.score), metrics=("voc07_map11", "coco_map"), figures=int(a.figures),
      figure_processors=tuple(m for m in ("plain", "ra", "ra_centernet") if m in modes),
      title=f"Transfer to detection ({a.task}): mAP (%) of real COCO detectors on P's outputs (Table 4)",
      data=E(dict(source="photos", photos=names, size=(int(a.size), int(a.size)),
                  max_boxes=100))))
  return c
