"""The evaluation suite: every table and analysis of the paper, from one config.

    python -m rajax.evaluate --config configs/eval/photos.py --workdir runs/eval
    python -m rajax.evaluate --config configs/eval/imagenet.py:task=sr --workdir runs/eval_sr \\
        --config.data.data_dir=$TFDS_DIR --config.processors.ra=runs/sr_ra

An evaluation config (configs/eval/*.py) names the trained processors (trainer workdirs), the
target recognizers (zoo recognizers, ONNX files, Python callables), the data, and the evaluators
to run, each selected by its `type` (big_vision style):

  accuracy      Table 1   top-1/top-5 per target, PSNR, SSIM; input and clean-image rows
  transfer      Table 2   rows = recognizer used as the loss, columns = recognizer evaluated
  category      Table 3   subset accuracy on two halves of the classes
  lambda_sweep  Table 5   PSNR, SSIM, top-1 against lambda, with a plot
  alternatives  App. A    each method's accuracy on its outputs by its own recognizer (trained or fixed),
                          that recognizer on clean images, transfer to other recognizers, PSNR, SSIM
  boundary      Table 6   decision-boundary distances (BD) and inter-boundary distances (IBD) along the
                          RA direction and random directions; 2-D decision maps (Figure 4)
  imagenet_c              top-1 per corruption and severity
  degradations            restorers of a mixture of degradations (VRD-IR): PSNR, SSIM, top-1 per seen and
                          unseen degradation, paired tests against a reference processor
  detection     Tables 4, 8, 9, 12, 13  rows = processing (input, each run, clean), columns = evaluation
                          detectors, cells VOC07 mAP@0.5 (11-point) / COCO mAP; per-class AP; detections drawn
                          (rajax.evaluate.detection; Table 12 is `accuracy` on runs trained with a detector)
  segmentation  App. G, Table 18  rows = processing, columns = evaluation segmenters, cells mIoU and pixel
                          accuracy; per-class IoU; predicted label maps drawn (rajax.evaluate.segmentation)
  rate_accuracy  NPP     each codec's quality sweep, codec alone vs processing + codec: real bits per pixel,
                          top-1 (and detectors' mAP on whole images), PSNR; BD-rates per target and codec; curves
                          (rajax.evaluate.rate)

Everything runs batched and jitted over a mesh of all devices (batch sharded along "data",
variables replicated, the last batch padded and masked). Each evaluator writes
`<workdir>/<name>.md|.csv|.json` (and .png figures); `report.md` and `results.json` hold them all.
Predictions are cached under `<workdir>/cache`, so rerunning regenerates the tables without
recomputing anything that has not changed.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import time
from typing import Any, Mapping

import jax
import ml_collections
from ml_collections import config_dict

from rajax import distributed
from rajax.evaluate import boundary, rate, tables
from rajax.evaluate import degradations as degradations_eval
from rajax.evaluate import detection as detection_eval
from rajax.evaluate import segmentation as segmentation_eval
from rajax.evaluate.boundary import boundary_distance, inter_boundary_distance
from rajax.evaluate.context import Context, EvalError, load_processor, log
from rajax.evaluate.report import Table, write_report, write_table
from rajax.evaluate.targets import CallableTarget, OnnxTarget, TargetError, ZooTarget
from rajax.tasks.classification import class_halves

EVALUATORS = {
    "accuracy": tables.accuracy,
    "transfer": tables.transfer,
    "category": tables.category,
    "lambda_sweep": tables.lambda_sweep,
    "alternatives": tables.alternatives,
    "boundary": boundary.boundary,
    "imagenet_c": tables.imagenet_c,
    "degradations": degradations_eval.degradations,
    "detection": detection_eval.detection,
    "segmentation": segmentation_eval.segmentation,
    "rate_accuracy": rate.rate_accuracy,
}
OWN_DATA = ("detection", "segmentation")   # evaluators that read their own images, not config.data's crops


def base_config(*, task: str = "sr") -> ml_collections.ConfigDict:
  """Defaults of an evaluation config: ImageNet validation, the paper's degradations, no evaluators yet.

  configs/eval/*.py start from this and fill in `processors` (name -> trainer workdir), `targets`
  (name -> {kind: zoo|onnx|callable, ...}) and `evals` (name -> {type: ..., options}).
  """
  c = ml_collections.ConfigDict()
  c.seed = 0                          # the degradations' per-image randomness and the random directions
  c.task = task                       # sr | denoise | jpeg: how the processors' inputs are made
  c.degrade = ml_collections.ConfigDict(dict(scale=4, sigma=0.1, quality=10))
  c.labels = "dataset"                # dataset | recognizer (each target's own top-1 on the clean image)
  c.compute_dtype = "float32"         # bfloat16 on GPU/TPU
  c.batch_size = 64                   # global, over all devices and hosts
  c.mesh = ml_collections.ConfigDict(dict(data=-1))
  c.distributed = False
  c.cache = True                      # reuse predictions under <workdir>/cache
  # LPIPS (Zhang et al. 2018, rajax.models.lpips) of every view against the clean image, as a column of the
  # tables that show PSNR: computed when `backbone` names the torchvision ImageNet weights file of `net`
  # (alex: alexnet-owt-7be5be79.pth, vgg: vgg16-397923af.pth, squeeze: squeezenet1_1-b8a52dc0.pth; no offline
  # copy exists, so it is off by default); the linear layers come from the `lpips` package.
  c.lpips = ml_collections.ConfigDict(dict(net="alex", backbone=""))
  c.classes = ml_collections.ConfigDict(dict(seed=0))   # the category split: rajax.tasks.classification.class_halves(K, seed)
  c.data = ml_collections.ConfigDict(dict(
      source="tfds", name="imagenet2012", data_dir="", split="validation", train_split="train",
      resize=256, crop=224, num_examples=-1, threads=8, workers=0,
      noise="device"))                  # denoising: Gaussian noise drawn on the device (jitted) or on the "host"
  # source "photos": crops on a grid x grid grid of each photo of data.eval_split ("validation" or "test"),
  # or of `names`, at short sides short_side * eval_scales
  c.data.photos = ml_collections.ConfigDict(dict(short_side=192, repeats=1, grid=3, eval_scales=(1.0,), names=()))
  c.data.synthetic = ml_collections.ConfigDict(dict(train_size=1, eval_size=64, image_size=64, num_classes=10, seed=0))
  c.processors = ml_collections.ConfigDict()
  c.targets = ml_collections.ConfigDict()
  c.evals = ml_collections.ConfigDict()
  return c


def zoo(name: str, weights: str | None = None, **options) -> ml_collections.ConfigDict:
  """A zoo-recognizer target section (`weights`: None bundled, a file, or "random")."""
  num_classes = options.pop("num_classes", 1000)
  t = ml_collections.ConfigDict(dict(kind="zoo", name=name, num_classes=num_classes, options=options))
  t.weights = config_dict.placeholder(str)
  t.weights = weights
  return t


def detector(name: str, weights: str | None = None, **options) -> ml_collections.ConfigDict:
  """A zoo-detector target section (`weights`: None for the detector's own, e.g. the fetched TF.js
  graph of centernet_mobilenetv3 / nanodet, or a file); its class count is the detector's."""
  num_classes = options.pop("num_classes", None)
  t = ml_collections.ConfigDict(dict(kind="zoo", name=name, num_classes=num_classes, task="detection", options=options))
  t.weights = config_dict.placeholder(str)
  t.weights = weights
  return t


def segmenter(name: str, weights: str | None = None, **options) -> ml_collections.ConfigDict:
  """A zoo-segmenter target section (`weights`: None for the segmenter's own, e.g. the fetched TF.js
  graphs of selfie / meet, or a file such as the official HRNet-W48 Cityscapes checkpoint; "random");
  its class count is the segmenter's unless `num_classes` is given."""
  num_classes = options.pop("num_classes", None)
  t = ml_collections.ConfigDict(dict(kind="zoo", name=name, num_classes=num_classes, task="segmentation",
                                     options=options))
  t.num_classes = config_dict.placeholder(int)
  t.num_classes = num_classes
  t.weights = config_dict.placeholder(str)
  t.weights = weights
  return t


def run_target(workdir: str) -> ml_collections.ConfigDict:
  """A target section for the recognizer that the training run in `workdir` trained (e.g. ra_joint): a
  classifier, a detector or a segmenter, whichever the run's config names."""
  return ml_collections.ConfigDict(dict(kind="run", run=str(workdir)))


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises EvalError listing every problem in an evaluation config, each with the fix."""
  from rajax import degrade
  problems = []
  for field in ("processors", "targets", "evals", "data", "task", "degrade", "batch_size", "labels"):
    if field not in config:
      problems.append(f"config.{field} is missing (see configs/eval/*.py for a complete config)")
  if problems:
    raise EvalError("Invalid evaluation config:\n  " + "\n  ".join(problems))
  if config.task not in degrade.TASKS:
    problems.append(f"config.task={config.task!r} is not one of {', '.join(degrade.TASKS)}")
  if config.labels not in ("dataset", "recognizer"):
    problems.append(f"config.labels={config.labels!r} must be 'dataset' or 'recognizer'")
  if config.batch_size < 1:
    problems.append(f"config.batch_size={config.batch_size} must be >= 1")
  if config.data.get("noise", "device") not in ("device", "host"):
    problems.append(f"config.data.noise={config.data.noise!r} must be 'device' or 'host'")
  if config.data.source == "photos" and config.labels != "recognizer":
    problems.append("config.data.source='photos' has no labels: set config.labels='recognizer'")
  if not config.evals:
    problems.append("config.evals is empty: add at least one evaluator, e.g. "
                    "c.evals.accuracy = ConfigDict(dict(type='accuracy'))")
  for name, ev in config.evals.items():
    kind = ev.get("type", name)
    if kind not in EVALUATORS:
      problems.append(f"config.evals.{name}.type={kind!r} is not one of {', '.join(EVALUATORS)}")
    if kind == "detection":   # its own data section and options, checked before any evaluator runs
      problems += detection_eval.problems(ev, name)
    if kind == "segmentation":
      problems += segmentation_eval.problems(ev, name)
    if kind == "rate_accuracy":
      problems += rate.problems(ev, name)
    if kind == "degradations":
      problems += degradations_eval.problems(ev, name)
    for item in ev.get("processors") or ():
      if item not in config.processors:
        problems.append(f"config.evals.{name}.processors names {item!r}, which is not in config.processors "
                        f"({', '.join(config.processors.keys()) or 'empty'})")
  for name, path in config.processors.items():
    if not (pathlib.Path(path).expanduser() / "config.json").is_file():
      problems.append(f"config.processors.{name}={path!r} is not a finished rajax.train workdir (no config.json); "
                      f"train it or set --config.processors.{name}=DIR")
  if problems:
    raise EvalError("Invalid evaluation config:\n  " + "\n  ".join(problems))


class Results(dict):
  """{evaluator name: Table}, with `stats`: how many prediction records were computed or read from the cache."""

  stats: dict


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
        targets: Mapping[str, Any] | None = None, only: list[str] | None = None) -> Results:
  """Runs the evaluators of `config` (or those named in `only`), writes their files; returns the tables.

  `targets` adds Python-object targets (a `Recognizer`, or a callable from float images
  [B, H, W, 3] in [0, 1] to labels [B] or logits [B, K]) next to those in the config.
  """
  validate(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  distributed.initialize(config.distributed)   # config.distributed or RAJAX_DISTRIBUTED=1, as the trainer
  ctx = Context(config, workdir, extra_targets=targets)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  # The detection and segmentation evaluators read their own images (whole photos or a dataset), not config.data's.
  crops = any(ev.get("type", n) not in OWN_DATA for n, ev in config.evals.items())
  log(f"{len(config.evals)} evaluator(s) on {ctx.mesh.size} {jax.devices()[0].platform} device(s), "
      f"{jax.process_count()} process(es); {f'{ctx.num_examples} images; ' if crops else ''}workdir {workdir}")
  results = Results()
  t0 = time.perf_counter()
  names = only or list(config.evals.keys())
  for i, name in enumerate(names):
    if name not in config.evals:
      raise EvalError(f"No evaluator {name!r} in config.evals ({', '.join(config.evals.keys())}).")
    ev = config.evals[name]
    log(f"evaluator {i + 1}/{len(names)}: {name} ({ev.get('type', name)})")
    table = EVALUATORS[ev.get("type", name)](ctx, ev, name)
    if jax.process_index() == 0:
      write_table(workdir, table)
    results[name] = table
  if jax.process_index() == 0:
    header = [f"Generated {datetime.datetime.now().isoformat(timespec='seconds')} on {ctx.mesh.size} "
              f"{jax.devices()[0].platform} device(s) in {time.perf_counter() - t0:.0f} s; predictions computed "
              f"{ctx.stats['computed']}, read from the cache {ctx.stats['cached']}.",
              "", "Processors: " + ", ".join(f"`{n}` = {p}" for n, p in config.processors.items())]
    report = write_report(workdir, list(results.values()), header)
    log(f"done: {report} ({ctx.stats['computed']} record(s) computed, {ctx.stats['cached']} from the cache)")
  results.stats = dict(ctx.stats)
  return results


__all__ = [
    "EVALUATORS", "CallableTarget", "Context", "EvalError", "OnnxTarget", "Results", "Table", "TargetError", "ZooTarget",
    "base_config", "boundary_distance", "class_halves", "detector", "inter_boundary_distance", "load_processor", "run", "run_target",
    "segmenter", "validate", "zoo",
]
