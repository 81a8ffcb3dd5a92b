"""Task transfer to segmentation on real photos: the demo's processors (trained with the classifier
MobileNetV2) evaluated by two real person segmenters, MediaPipe's selfie and meet (the paper's Table 18
setting, offline).

    python -m rajax.assets fetch                          # the segmenters' TF.js graphs and the Debian photos
    python -m rajax.evaluate --config configs/eval/photos_segmentation.py:runs=runs/demo,task=sr \\
        --workdir runs/eval_segmentation_sr

Images: whole photos (not crops), each resized with its aspect ratio kept into a size x size canvas
and padded, then degraded by the task: the test photos of rajax.data.photos (14: five bundled ones,
four of the Debian package darknet, five of opencv-doc; split=validation: its 8 validation photos).
No photo has a mask: each segmenter's targets are its own person / background label maps on the
clean photo (its argmax), so the clean row is 100%; padding is not scored. Cells: mIoU of person and
background and pixel accuracy; sign tests per image of the per-image mIoU against plain; label maps
drawn for `figures` photos.

Args: runs, task (sr | denoise | jpeg), modes (comma-separated demo runs), size (the canvas side, a
multiple of 4), figures (photos drawn), quick (3 photos), split (test | validation), segmenters
(comma-separated: selfie, meet).
"""

import ml_collections

from rajax import config as config_lib
from rajax import evaluate
from rajax.data import photos

SEGMENTERS = ("selfie", "meet")
QUICK_PHOTOS = {"test": ("grace_hopper", "darknet/person.jpg", "opencv-doc/messi5.jpg"),
                "validation": ("darknet/giraffe.jpg", "opencv-doc/baboon.jpg")}


def get_config(arg=None):
  a = config_lib.parse_arg(arg, runs="runs/demo", task="sr", modes="plain,ra,unsupervised,transformer", size=256,
                           figures=2, quick=False, split="test", segmenters="selfie,meet")
  c = evaluate.base_config(task=a.task)
  c.labels = "recognizer"
  c.data.source = "photos"               # (the classification crops; the segmentation evaluator reads its own data)
  c.data.noise = "host"                  # as the demo's evaluation draws it
  c.batch_size = 1
  c.mesh.data = 1
  modes = [m for m in a.modes.split(",") if m]
  for m in modes:
    c.processors[m] = f"{a.runs}/{a.task}/{m}"
  segmenters = [s for s in a.segmenters.split(",") if s]
  if not segmenters or set(segmenters) - set(SEGMENTERS):
    raise config_lib.ConfigError(f"configs/eval/photos_segmentation.py: segmenters={a.segmenters!r}; choose from "
                                 f"{', '.join(SEGMENTERS)}.")
  if int(a.size) % 4:
    raise config_lib.ConfigError(f"configs/eval/photos_segmentation.py: size={a.size} must be a multiple of 4 "
                                 "(the SR scale).")
  names = QUICK_PHOTOS[a.split] if a.quick else photos.split_names(a.split)
  for name in segmenters:
    c.targets[name] = evaluate.segmenter(name)
  E = ml_collections.ConfigDict
  c.evals.segmentation = E(dict(
      type="segmentation", processors=tuple(modes), targets=tuple(segmenters), labels="recognizer",
      paired_metric="miou", figures=int(a.figures),
      figure_processors=tuple(m for m in ("plain", "ra") if m in modes),
      title=f"Transfer to segmentation ({a.task}): mIoU (%) of real person segmenters on P's outputs",
      data=E(dict(source="photos", photos=names, size=(int(a.size), int(a.size))))))
  return c
