"""Offline evaluation on the bundled photos with real ImageNet recognizers (MobileNetV2, EfficientNet-Lite0).

    python -m rajax.demo --workdir runs/demo --tasks sr --modes plain,ra --quick      # or without --quick
    python -m rajax.evaluate --config configs/eval/photos.py:runs=runs/demo,task=sr --workdir runs/eval_photos

The processors are the demo's runs (configs/demo.py, trained with R = MobileNetV2) in
`<runs>/<task>/<mode>` for each mode listed in `modes`. Extra runs enable more tables:
  lams=0.01,0.1  adds `<runs>/<task>/ra_lam<value>` (trained with --config.method.lam=VALUE) to the lambda sweep;
  category=True  adds `<runs>/<task>/ra_A` (trained with --config.classes.half=A) to the category table.
The held-out crops are the demo's. The photos have no labels: each recognizer's label is its own top-1
class on the clean crop.

Args: runs, task (sr | denoise | jpeg), modes (comma-separated methods, e.g. "plain,ra,unsupervised,transformer",
or Appendix A's "ra_joint,recognizer_on_input"), lams, category, corruptions (for denoise/jpeg: the
ImageNet-C table's corruptions, comma-separated), quick (the demo's --quick held-out crops).
"""

import pathlib

import ml_collections

from rajax import config as config_lib
from rajax import evaluate


def get_config(arg=None):
  a = config_lib.parse_arg(arg, runs="runs/demo", task="sr", modes="plain,ra", lams="", category=False,
                           corruptions="gaussian_noise,defocus_blur,fog,jpeg_compression", quick=False)
  c = evaluate.base_config(task=a.task)
  c.labels = "recognizer"
  c.data.source = "photos"
  # The demo's held-out crops (configs/demo.py): 5 photos x 3 scales x a 4x4 grid x 2 (mirrors) = 480.
  demo = config_lib.load(str(pathlib.Path(__file__).resolve().parent.parent / "demo.py")
                         + f":task={a.task},quick={a.quick}")
  for field in ("short_side", "grid", "eval_scales"):
    c.data.photos[field] = demo.data.photos[field]
  c.data.resize = 0
  c.data.crop = demo.data.crop
  c.data.noise = "host"                  # as the demo's evaluation draws it
  c.data.threads = 2
  c.batch_size = 30

  modes = [m for m in a.modes.split(",") if m]
  for m in modes:
    c.processors[m] = f"{a.runs}/{a.task}/{m}"
  lam_runs = []
  for v in (v.strip() for v in a.lams.split(",") if v.strip()):
    name = f"ra_lam{v}".replace(".", "p")        # config keys cannot hold dots; the directory keeps them
    c.processors[name] = f"{a.runs}/{a.task}/ra_lam{v}"
    lam_runs.append(name)
  if a.category:
    c.processors.ra_A = f"{a.runs}/{a.task}/ra_A"

  c.targets.mobilenet_v2 = evaluate.zoo("mobilenet_v2")             # the demo's loss recognizer
  c.targets.efficientnet_lite0 = evaluate.zoo("efficientnet_lite0")   # never used in training

  E = ml_collections.ConfigDict
  c.evals.accuracy = E(dict(type="accuracy", processors=tuple(modes)))
  c.evals.transfer = E(dict(type="transfer", processors=tuple(modes)))
  # Appendix A: each method with its own recognizer (the one it trained, or MobileNetV2 where it is fixed).
  c.evals.alternatives = E(dict(type="alternatives", processors=tuple(modes), source="mobilenet_v2",
                                transfer=("efficientnet_lite0",)))
  if "plain" in modes and "ra" in modes:
    c.evals.lambda_sweep = E(dict(type="lambda_sweep", processors=("plain", "ra", *lam_runs)))
    c.evals.boundary = E(dict(type="boundary", plain="plain", ra="ra", source="mobilenet_v2", random_directions=4,
                              max_distance=40.0, grid=16, bisect=10, max_images=32, map=E(dict(size=41))))
  c.evals.category = E(dict(type="category", processors=tuple(modes) + (("ra_A",) if a.category else ())))
  if a.task != "sr":
    c.evals.imagenet_c = E(dict(type="imagenet_c", processors=tuple(modes),
                                corruptions=tuple(x for x in a.corruptions.split(",") if x), severities=(1, 3, 5)))
  return c
