"""Task transfer on real photos: the demo's processors (trained with the classifier MobileNetV2) evaluated
by two real COCO detectors, CenterNet-MobileNetV3 and NanoDet (the paper's Table 4, offline).

    python -m rajax.assets fetch                          # the detectors' TF.js graphs and the Debian photos
    python -m rajax.demo --workdir runs/demo --detection  # or, on the runs of a finished demo:
    python -m rajax.evaluate --config configs/eval/photos_detection.py:runs=runs/demo,task=sr \\
        --workdir runs/eval_detection_sr

Images: whole photos (not crops), each resized with its aspect ratio kept into a size x size canvas
and padded, then degraded by the task: the demo's held-out bundled photos, the YOLO demo photos of
the Debian package darknet and five photos of objects from opencv-doc (rajax.assets): 16 photos. No photo has boxes: each detector's targets are its
own detections on the clean image scoring >= score (0.3 by default), so the clean row is 100%.

Args: runs, task (sr | denoise | jpeg), modes (comma-separated demo runs), size (the canvas side,
a multiple of 4), score (the pseudo-target threshold), figures (images drawn), quick (3 photos).
"""

import ml_collections

from rajax import config as config_lib
from rajax import evaluate
from rajax.data import photos

DETECTORS = {"centernet": "centernet_mobilenetv3", "nanodet": "nanodet"}
DEBIAN_PHOTOS = ("darknet/dog.jpg", "darknet/eagle.jpg", "darknet/giraffe.jpg", "darknet/horses.jpg",
                 "darknet/kite.jpg", "darknet/person.jpg")
# opencv-doc's photos of COCO objects (people, fruit, an aeroplane, a squirrel); its charts and patterns are left out.
OPENCV_PHOTOS = ("opencv-doc/messi5.jpg", "opencv-doc/basketball1.png", "opencv-doc/fruits.jpg", "opencv-doc/aero3.jpg",
                 "opencv-doc/squirrel_cls.jpg")
PHOTOS = tuple(photos.HELDOUT) + DEBIAN_PHOTOS + OPENCV_PHOTOS
QUICK_PHOTOS = ("coffee", "darknet/dog.jpg", "darknet/person.jpg")


def get_config(arg=None):
  a = config_lib.parse_arg(arg, runs="runs/demo", task="sr", modes="plain,ra,unsupervised,transformer", size=384,
                           score=0.3, figures=2, quick=False)
  c = evaluate.base_config(task=a.task)
  c.labels = "recognizer"
  c.data.source = "photos"               # (the classification crops; the detection evaluator reads its own data)
  c.data.noise = "host"                  # as the demo's evaluation draws it
  c.batch_size = 1                       # one photo at a time: the detectors' programs are large
  c.mesh.data = 1
  modes = [m for m in a.modes.split(",") if m]
  for m in modes:
    c.processors[m] = f"{a.runs}/{a.task}/{m}"
  for name, arch in DETECTORS.items():
    c.targets[name] = evaluate.detector(arch)
  E = ml_collections.ConfigDict
  c.evals.detection = E(dict(
      type="detection", processors=tuple(modes), targets=tuple(DETECTORS), labels="recognizer",
      score_threshold=float(a.score), metrics=("voc07_map11", "coco_map"), figures=int(a.figures),
      figure_processors=tuple(m for m in ("plain", "ra") if m in modes),
      title=f"Transfer to detection ({a.task}): mAP (%) of real COCO detectors on P's outputs (Table 4)",
      data=E(dict(source="photos", photos=QUICK_PHOTOS if a.quick else PHOTOS, size=(int(a.size), int(a.size)),
                  max_boxes=100))))
  return c
