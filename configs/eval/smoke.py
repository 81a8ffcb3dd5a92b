"""Smoke evaluation: the runs of configs/smoke.py (tiny models, synthetic images), every evaluator.

    python -m rajax.train --config configs/smoke.py:mode=plain --workdir runs/smoke/plain
    python -m rajax.train --config configs/smoke.py:mode=ra --workdir runs/smoke/ra
    python -m rajax.evaluate --config configs/eval/smoke.py --workdir runs/smoke/eval

Args: runs (directory holding the plain/ and ra/ trainer workdirs), task (sr | denoise | jpeg; the
ImageNet-C table needs denoise or jpeg).
The recognizers are narrow ResNets with random weights (the one the smoke runs trained with, and
another seed as the "unseen" one): the numbers only exercise the machinery.
"""

import ml_collections

from rajax import config as config_lib
from rajax import evaluate


def get_config(arg=None):
  a = config_lib.parse_arg(arg, runs="runs/smoke", task="sr")
  c = evaluate.base_config(task=a.task)
  c.data.source = "synthetic"
  c.data.synthetic = ml_collections.ConfigDict(dict(train_size=96, eval_size=16, image_size=40, num_classes=10, seed=0))
  c.data.resize = 0
  c.data.crop = 32
  c.data.threads = 2
  c.batch_size = 8

  c.processors.plain = f"{a.runs}/plain"
  c.processors.ra = f"{a.runs}/ra"
  # The smoke trainer's recognizer (configs/smoke.py: resnet18, width 8, random weights, seed 0) and an unseen one.
  c.targets.resnet18 = evaluate.zoo("resnet18", "random", num_classes=10, width=8)
  c.targets.resnet18_seed1 = evaluate.zoo("resnet18", "random", num_classes=10, width=8)
  c.targets.resnet18_seed1.seed = 1

  E = ml_collections.ConfigDict
  c.evals.accuracy = E(dict(type="accuracy"))
  c.evals.transfer = E(dict(type="transfer"))
  c.evals.category = E(dict(type="category"))
  c.evals.lambda_sweep = E(dict(type="lambda_sweep"))
  c.evals.boundary = E(dict(type="boundary", plain="plain", ra="ra", source="resnet18", random_directions=2,
                            max_distance=20.0, grid=8, bisect=8, max_images=8, map=E(dict(size=9))))
  if a.task != "sr":
    c.evals.imagenet_c = E(dict(type="imagenet_c", corruptions=("gaussian_noise", "brightness"), severities=(1, 3)))
  return c
