"""Offline evaluation on the bundled photos with real ImageNet recognizers (MobileNetV2, EfficientNet-Lite0).

    python -m rajax.demo --workdir runs/demo --tasks sr --modes plain,ra --quick      # or without --quick
    python -m rajax.evaluate --config configs/eval/photos.py:runs=runs/demo,task=sr --workdir runs/eval_photos

The processors are the demo's runs (configs/demo.py, trained with R = MobileNetV2) in
`<runs>/<task>/<mode>` for each mode listed in `modes`. Extra runs enable more tables:
  lams=0.01,0.1  adds `<runs>/<task>/ra_lam<value>` (trained with --config.method.lam=VALUE) to the lambda sweep;
  category=True  adds `<runs>/<task>/ra_A` (trained with --config.classes.half=A) to the category table.
The crops are the demo's, of the test photos (split=validation: of the validation photos, on which
the demo chooses its settings). The photos have no labels: each recognizer's label is its own top-1
class on the clean crop.

Args: runs, task (sr | denoise | jpeg), modes (comma-separated methods, e.g. "plain,ra,unsupervised,transformer",
or Appendix A's "ra_joint,recognizer_on_input"), lams, category, corruptions (for denoise/jpeg: the
ImageNet-C table's corruptions, comma-separated), quick (the demo's --quick crops), split (validation |
test), targets (comma-separated recognizers: mobilenet_v2, the loss, and efficientnet_lite0, never
trained with), extra (comma-separated runs of other recognizers, such as the demo's ra_centernet, for the
accuracy and transfer tables only).
"""

import pathlib

import ml_collections

from rajax import config as config_lib
from rajax import evaluate


def get_config(arg=None):
  a = config_lib.parse_arg(arg, runs="runs/demo", task="sr", modes="plain,ra", lams="", category=False,
                           corruptions="gaussian_noise,defocus_blur,fog,jpeg_compression", quick=False, split="test",
                           targets="mobilenet_v2,efficientnet_lite0", extra="")
  c = evaluate.base_config(task=a.task)
  c.labels = "recognizer"
  c.data.source = "photos"
  # The demo's evaluation crops (configs/demo.py): a grid of crops of each photo of the split, at
  # three scales, and their mirrors.
  demo = config_lib.load(str(pathlib.Path(__file__).resolve().parent.parent / "demo.py")
                         + f":task={a.task},quick={a.quick},split={a.split}")
  c.data.split = demo.data.eval_split
  for field in ("short_side", "grid", "eval_scales", "names"):
    c.data.photos[field] = demo.data.photos[field]
  c.data.resize = 0
  c.data.crop = demo.data.crop
  c.data.noise = "host"                  # as the demo's evaluation draws it
  c.data.threads = 2
  c.batch_size = 30

  modes = [m for m in a.modes.split(",") if m]
  extra = [m for m in a.extra.split(",") if m and m not in modes]
  for m in modes + extra:
    c.processors[m] = f"{a.runs}/{a.task}/{m}"
  lam_runs = []
  for v in (v.strip() for v in a.lams.split(",") if v.strip()):
    name = f"ra_lam{v}".replace(".", "p")        # config keys cannot hold dots; the directory keeps them
    c.processors[name] = f"{a.runs}/{a.task}/ra_lam{v}"
    lam_runs.append(name)
  if a.category:
    c.processors.ra_A = f"{a.runs}/{a.task}/ra_A"

  targets = [t for t in a.targets.split(",") if t]
  unknown = sorted(set(targets) - {"mobilenet_v2", "efficientnet_lite0"})
  if unknown or not targets:
    raise config_lib.ConfigError(f"configs/eval/photos.py: targets={a.targets!r}; choose from mobilenet_v2 (the "
                                 "demo's loss recognizer), efficientnet_lite0 (never used in training).")
  for t in targets:
    c.targets[t] = evaluate.zoo(t)

  E = ml_collections.ConfigDict
  c.evals.accuracy = E(dict(type="accuracy", processors=tuple(modes + extra)))
  c.evals.transfer = E(dict(type="transfer", processors=tuple(modes + extra)))
  # Appendix A: each method with its own recognizer (the one it trained, or MobileNetV2 where it is fixed).
  c.evals.alternatives = E(dict(type="alternatives", processors=tuple(modes), source="mobilenet_v2",
                                transfer=tuple(t for t in targets if t != "mobilenet_v2")))
  if "plain" in modes and "ra" in modes:
    c.evals.lambda_sweep = E(dict(type="lambda_sweep", processors=("plain", "ra", *lam_runs)))
    c.evals.boundary = E(dict(type="boundary", plain="plain", ra="ra", source="mobilenet_v2", random_directions=4,
                              max_distance=40.0, grid=16, bisect=10, max_images=32, map=E(dict(size=41))))
  c.evals.category = E(dict(type="category", processors=tuple(modes) + (("ra_A",) if a.category else ())))
  if a.task != "sr":
    c.evals.imagenet_c = E(dict(type="imagenet_c", processors=tuple(modes),
                                corruptions=tuple(x for x in a.corruptions.split(",") if x), severities=(1, 3, 5)))
  return c
