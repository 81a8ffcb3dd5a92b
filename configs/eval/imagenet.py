"""The paper's evaluation on ImageNet validation (Tables 1, 2, 3, 5, 6 and ImageNet-C).

    python -m rajax.evaluate --config configs/eval/imagenet.py:task=sr,runs=runs,weights=weights \\
        --workdir runs/eval_sr --config.data.data_dir=$TFDS_DIR --config.compute_dtype=bfloat16

Processors: trainer workdirs `<runs>/<task>_<name>` for plain, ra, unsupervised, transformer (trained with
R = ResNet-18), ra_r50/ra_d121/ra_vgg (RA trained with ResNet-50, DenseNet-121, VGG16-BN: the
transfer matrix), ra_lam1e-4 ... ra_lam1e-2 (the lambda sweep) and ra_A (RA on half A of the
classes, --config.classes.half=A). Targets: torchvision checkpoints `<weights>/<arch>.pth`
(ResNet ImageNet weights do not ship with rajax; convert or point at your own files).
Edit the lists here or override single paths: --config.processors.ra=DIR.

Args: task (sr | denoise | jpeg), runs, weights.
"""

import ml_collections

from rajax import config as config_lib
from rajax import evaluate

ARCHS = ("resnet18", "resnet50", "resnet101", "densenet121", "vgg16_bn")


def get_config(arg=None):
  a = config_lib.parse_arg(arg, task="sr", runs="runs", weights="weights")
  c = evaluate.base_config(task=a.task)
  c.compute_dtype = "float32"
  c.batch_size = 250

  main = ("plain", "ra", "unsupervised", "transformer")
  for m in main:
    c.processors[m] = f"{a.runs}/{a.task}_{m}"
  loss = {"ra_r50": "resnet50", "ra_d121": "densenet121", "ra_vgg": "vgg16_bn"}
  for name in loss:
    c.processors[name] = f"{a.runs}/{a.task}_{name}"
  lams = ("ra_lam1e-4", "ra_lam1e-2")
  for name in lams:
    c.processors[name] = f"{a.runs}/{a.task}_{name}"
  c.processors.ra_A = f"{a.runs}/{a.task}_ra_A"
  for arch in ARCHS:
    c.targets[arch] = evaluate.zoo(arch, f"{a.weights}/{arch}.pth")

  E = ml_collections.ConfigDict
  c.evals.accuracy = E(dict(type="accuracy", processors=main))
  c.evals.transfer = E(dict(type="transfer", processors=("plain", "ra") + tuple(loss)))
  c.evals.category = E(dict(type="category", processors=("plain", "ra", "ra_A")))
  c.evals.lambda_sweep = E(dict(type="lambda_sweep", processors=("plain",) + lams[:1] + ("ra",) + lams[1:],
                                targets=("resnet18", "resnet50")))
  c.evals.boundary = E(dict(type="boundary", plain="plain", ra="ra", source="resnet18", targets=ARCHS[1:],
                            random_directions=4, max_distance=100.0, grid=20, bisect=12, max_images=256,
                            map=E(dict(size=61, targets=ARCHS))))
  if a.task != "sr":
    c.evals.imagenet_c = E(dict(type="imagenet_c", processors=("plain", "ra"), targets=("resnet18", "resnet50"),
                                corruptions=(), severities=(1, 2, 3, 4, 5)))
  return c
