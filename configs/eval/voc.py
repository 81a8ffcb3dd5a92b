"""The paper's detection tables on PASCAL VOC 2007 test (Tables 4, 8, 9, 12, 13).

    python -m rajax.data.prepare voc --data_dir $TFDS_DIR
    python -m rajax.evaluate --config configs/eval/voc.py:task=sr,runs=runs,weights=weights \\
        --workdir runs/eval_voc_sr --config.compute_dtype=bfloat16

Processors (trainer workdirs `<runs>/voc_<task>_<name>`, trained with configs/voc.py except `ra`): plain; ra (RA trained with the classifier
ResNet-18 on ImageNet: Table 4's classification-to-detection transfer); ra_det_<arch> (RA trained
with the VOC Faster R-CNN of backbone <arch> as the loss, Table 8; the other columns are Table 9's
transfer between detection architectures); unsupervised_det (unsupervised RA with the R-50
detector, Table 13). Targets: Faster R-CNN detectors trained on VOC07+12 (21 classes, 0 =
background), `<weights>/fasterrcnn_<arch>_voc.pth`, and the ImageNet classifiers of Table 12
(`<weights>/<arch>.pth`), which the `accuracy` evaluator runs on the same processors over the
ImageNet validation images (config.data).

Args: task (sr | denoise | jpeg), runs, weights, detectors (comma-separated backbones).
"""

import ml_collections

from rajax import config as config_lib
from rajax import evaluate

CLASSIFIERS = ("resnet18", "resnet50", "resnet101", "densenet121", "vgg16_bn")


def get_config(arg=None):
  a = config_lib.parse_arg(arg, task="sr", runs="runs", weights="weights", detectors="resnet18,resnet50,resnet101,vgg16")
  c = evaluate.base_config(task=a.task)
  c.batch_size = 8
  backbones = [b for b in a.detectors.split(",") if b]
  names = ["plain", "ra"] + [f"ra_det_{b}" for b in backbones] + ["unsupervised_det"]
  for n in names:
    c.processors[n] = f"{a.runs}/voc_{a.task}_{n}"
  dets = []
  for b in backbones:
    c.targets[f"frcnn_{b}"] = evaluate.detector(f"fasterrcnn_{b}_fpn" if b != "vgg16" else "fasterrcnn_vgg16",
                                                f"{a.weights}/fasterrcnn_{b}_voc.pth", num_classes=21, min_size=None)
    dets.append(f"frcnn_{b}")
  for arch in CLASSIFIERS:
    c.targets[arch] = evaluate.zoo(arch, f"{a.weights}/{arch}.pth")

  E = ml_collections.ConfigDict
  # configs/voc.py's images: short side 600, long side at most 1000, padded to 1000 x 1000 (the detectors do not resize).
  voc = E(dict(source="tfds", split="voc/2007:test", data_dir="", size=(1000, 1000), min_size=600, max_size=1000,
               max_boxes=64, label_space="contiguous", batch_size=0))
  c.evals.detection = E(dict(type="detection", processors=tuple(names), targets=tuple(dets), labels="dataset",
                             metrics=("voc07_map11", "coco_map"), score_threshold=0.5, figures=4, data=voc,
                             title="Detection on VOC07 test: mAP (%) (Tables 4, 8, 9, 13)"))
  # Table 12: processors trained with a detector, evaluated by ImageNet classifiers.
  c.evals.accuracy = E(dict(type="accuracy", processors=("plain",) + tuple(n for n in names if "det" in n),
                            targets=CLASSIFIERS, title="Detection to classification: top-1 (%) (Table 12)"))
  return c
