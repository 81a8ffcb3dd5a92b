"""Experiment configs: loading `configs/*.py:arg` files, command-line overrides, validation.

A config file defines `get_config(arg: str | None) -> ml_collections.ConfigDict`; `arg` is the text
after the colon in `configs/sr_imagenet.py:mode=ra,recognizer=resnet18`, parsed with `parse_arg`.
Any field can then be overridden as `--config.optim.lr=3e-4`; an unknown field or a value of the
wrong type fails with a message naming it, and the config is locked afterwards.

`base()` holds the paper's ImageNet settings; the files in configs/ adjust it.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import pathlib
from typing import Any, Sequence

import ml_collections
from ml_collections import config_dict

from rajax import degrade, losses
from rajax.models import PROCESSORS
from rajax.models import recognizers as recognizer_lib
from rajax.models.layers import BN_STATS, as_dtype
from rajax.step import DEFAULT_LAMBDA, LABEL_SOURCES, MODES, Method, class_halves


class ConfigError(ValueError):
  """A config file, argument, override or value is wrong."""


# --------------------------------------------------------------------------- config files + args

def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses "k1=v1,k2=v2" into a ConfigDict over `defaults`, typed like the defaults.

  A text value may be a comma-separated list: "modes=plain,ra,task=sr" sets modes to "plain,ra" (a
  piece without "=" continues the text value before it). Keys not in `defaults` are an error naming
  the accepted keys.
  """
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  items: list[list[str]] = []   # [key, value]; a text value may itself hold commas: "modes=plain,ra,task=sr"
  for item in arg.split(","):
    if not item.strip():
      continue
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep:
      if items and isinstance(defaults.get(items[-1][0]), str):
        items[-1][1] += "," + item   # continues the previous text value
        continue
      raise ConfigError(f"Config argument {item!r} is not of the form key=value.")
    if key not in defaults:
      raise ConfigError(f"Unknown config argument {key!r}; accepted: {', '.join(sorted(defaults))}.")
    items.append([key, value])
  for key, value in items:
    out[key] = _convert(value.strip(), type(defaults[key]), f"config argument {key!r}")
  return out


def load(spec: str) -> ml_collections.ConfigDict:
  """Loads "path/to/file.py[:arg]" by calling the file's get_config(arg)."""
  path, _, arg = spec.partition(":")
  file = pathlib.Path(path)
  if not file.is_file():
    raise ConfigError(f"Config file {path!r} not found (resolved to {file.resolve()}); "
                      "pass e.g. --config configs/smoke.py.")
  module_spec = importlib.util.spec_from_file_location(f"rajax_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"Config file {path} defines no get_config(arg) function.")
  config = module.get_config(arg or None)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config must return an ml_collections.ConfigDict, got {type(config).__name__}.")
  return config


def override(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """Applies "a.b.c=value" overrides (the text after "--config."), typed like the existing fields."""
  for item in overrides:
    path, sep, value = item.partition("=")
    if not sep:
      raise ConfigError(f"Override --config.{item} needs a value: --config.{path}=VALUE.")
    *parents, leaf = path.split(".")
    node = config
    for depth, name in enumerate(parents + [leaf]):
      where = ".".join(parents[:depth]) or "config"
      if not isinstance(node, ml_collections.ConfigDict) or name not in node:
        fields = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        hint = difflib.get_close_matches(name, fields, n=1)
        raise ConfigError(
            f"Unknown config field {path!r}: {where} has no field {name!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "") + f". Its fields: {', '.join(fields)}.")
      if depth < len(parents):
        node = node[name]
    if isinstance(node[leaf], ml_collections.ConfigDict):
      raise ConfigError(f"config.{path} is a section, not a value; set one of its fields: "
                        f"{', '.join(sorted(node[leaf].keys()))}.")
    node[leaf] = _convert(value, node.get_type(leaf), f"config.{path}")
  return config


def overrides_from_args(parser, rest: Sequence[str], example: str) -> list[str]:
  """The "a.b=v" texts of `--config.a.b=v` arguments; anything else is an argparse error via `parser`."""
  overrides = []
  for item in rest:
    if not item.startswith("--config."):
      parser.error(f"unrecognized argument {item!r}; config overrides look like --config.{example}")
    overrides.append(item[len("--config."):])
  return overrides


def from_command_line(spec: str, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """load() + override() + validate(), then lock the config."""
  config = override(load(spec), overrides)
  validate(config)
  config.lock()
  return config


def _convert(text: str, kind: type, what: str) -> Any:
  if text.lower() in ("none", "null"):
    return None
  try:
    if kind is bool:
      if text.lower() in ("1", "true", "yes", "on"):
        return True
      if text.lower() in ("0", "false", "no", "off"):
        return False
      raise ValueError(text)
    if kind is int:
      return int(text)
    if kind is float:
      return float(text)
    if kind in (tuple, list):
      value = ast.literal_eval(text)
      value = value if isinstance(value, (tuple, list)) else (value,)
      return kind(value)
    if kind in (str, type(None)):
      return text
  except (ValueError, SyntaxError):
    raise ConfigError(f"Bad value {text!r} for {what}: expected {kind.__name__}.") from None
  raise ConfigError(f"Cannot set {what} from the command line (type {kind.__name__}).")


# --------------------------------------------------------------------------- the paper's settings

def base(*, task: str = "sr", mode: str = "ra", recognizer: str = "resnet18") -> ml_collections.ConfigDict:
  """The paper's ImageNet setting for `task` and `mode` (SRResNet P, recognizer R, Adam 1e-4, batch 20)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = task                       # sr | denoise | jpeg
  c.mode = mode                       # plain | ra | unsupervised | transformer
  c.lam = config_dict.placeholder(float)   # recognition loss weight; None: the paper's for the mode
  c.unsupervised_distance = "prob_mse"     # prob_mse (reference code) | kl
  c.label_smoothing = 0.0
  c.labels = "dataset"                # dataset | recognizer (R's top-1 on the clean image, for unlabelled data)
  c.min_confidence = 0.0              # labels=recognizer: RA/transformer loss only where R's clean top-1 prob >= this
  c.compute_dtype = "float32"         # bfloat16 on GPU/TPU
  # Training BatchNorm statistics of P and T: "global" (over the whole batch, one all-reduce per layer
  # forward and backward when it is sharded) or "per_device" (each device's slice; no such all-reduces).
  c.bn_stats = "global"
  # Category transfer: train on half "A" or "B" of step.class_halves(recognizer.num_classes, seed); "" = all.
  c.classes = ml_collections.ConfigDict(dict(half="", seed=0))

  c.processor = ml_collections.ConfigDict(dict(name="srresnet", blocks=5, channels=64))
  # Flax variables (.msgpack, e.g. another run's processor.msgpack) to start P from; None: random init.
  c.init_processor = config_dict.placeholder(str)
  c.transformer = ml_collections.ConfigDict(dict(name="resnet_generator", blocks=6, channels=64))
  c.recognizer = ml_collections.ConfigDict(dict(name=recognizer, num_classes=1000))
  c.recognizer.weights = config_dict.placeholder(str)   # file; None: bundled pretrained; "random": tests only

  c.degrade = ml_collections.ConfigDict(dict(scale=4, sigma=0.1, quality=10))

  c.data = ml_collections.ConfigDict()
  c.data.source = "tfds"              # tfds | synthetic
  c.data.name = "imagenet2012"
  c.data.data_dir = ""
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.resize = 256                 # short side before cropping; 0 keeps the size
  c.data.crop = 224
  c.data.batch_size = 20              # global, over all devices and hosts
  c.data.eval_batch_size = 20
  c.data.num_eval_examples = -1       # -1: the whole eval split
  c.data.workers = 0                  # grain worker processes (0: threads in the main process)
  c.data.threads = 8
  # Denoising: where the Gaussian noise is drawn. "device": in the jitted step from the example index
  # (the host ships uint8 crops); "host": NumPy in the pipeline (rajax.degrade.gaussian_noise).
  c.data.noise = "device"
  c.data.synthetic = ml_collections.ConfigDict(
      dict(train_size=1024, eval_size=64, image_size=64, num_classes=10, seed=0))
  # source "photos": photos shipped in installed packages (rajax.data.photos), resized to short_side;
  # an epoch is `repeats` random crops of each training photo; eval is a grid x grid of crops (+ mirrors).
  c.data.photos = ml_collections.ConfigDict(dict(short_side=192, repeats=64, grid=3, scales=(1.0,),
                                                 eval_scales=(1.0,)))

  c.optim = ml_collections.ConfigDict(dict(
      name="adam", lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
      decay_epochs=(4, 5), decay_factor=0.1, grad_clip=0.0))
  c.optim.transformer_lr = config_dict.placeholder(float)   # T's base rate; None: optim.lr
  c.num_epochs = 6.0
  c.total_steps = -1                  # > 0 overrides num_epochs

  c.log_every = 100
  c.eval_every = -1                   # steps between evaluations; -1: once per epoch; 0: only at the end
  c.final_eval = True                 # evaluate when training ends (off: callers that evaluate themselves)
  c.ckpt_every = 2000
  c.keep_ckpts = 3
  c.mesh = ml_collections.ConfigDict(dict(data=-1))
  c.distributed = False               # call jax.distributed.initialize() (multi-host)
  return c


def method(config: ml_collections.ConfigDict) -> Method:
  """The training objective a config describes (lam defaults to the paper's for the mode)."""
  lam = DEFAULT_LAMBDA[config.mode] if config.lam is None else config.lam
  classes = ()
  if config.get("classes") and config.classes.half:
    halves = class_halves(config.recognizer.num_classes, config.classes.seed)
    classes = halves["AB".index(config.classes.half)]
  return Method(mode=config.mode, lam=lam, distance=config.unsupervised_distance,
                label_smoothing=config.label_smoothing, labels=config.labels,
                min_confidence=config.min_confidence, classes=classes)


def kwargs(section: ml_collections.ConfigDict, *exclude: str) -> dict[str, Any]:
  """A model section's fields as constructor keyword arguments (without name and `exclude`)."""
  return {k: v for k, v in section.items() if k not in ("name",) + exclude}


# --------------------------------------------------------------------------- validation

def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError listing every invalid value, each with the field name and what is allowed."""
  problems = []

  def check(ok: bool, msg: str):
    if not ok:
      problems.append(msg)

  check(c.task in degrade.TASKS, f"config.task={c.task!r} is not one of {', '.join(degrade.TASKS)}")
  check(c.mode in MODES, f"config.mode={c.mode!r} is not one of {', '.join(MODES)}")
  check(c.lam is None or c.lam >= 0, f"config.lam={c.lam} must be >= 0 (or None for the mode's default)")
  check(c.unsupervised_distance in losses.DISTANCES,
        f"config.unsupervised_distance={c.unsupervised_distance!r} is not one of {', '.join(losses.DISTANCES)}")
  check(0.0 <= c.label_smoothing < 1.0, f"config.label_smoothing={c.label_smoothing} must be in [0, 1)")
  check(c.classes.half in ("", "A", "B"), f"config.classes.half={c.classes.half!r} must be '', 'A' or 'B'")
  check(c.labels in LABEL_SOURCES, f"config.labels={c.labels!r} is not one of {', '.join(LABEL_SOURCES)}")
  check(0.0 <= c.min_confidence < 1.0, f"config.min_confidence={c.min_confidence} must be in [0, 1)")
  check(not c.min_confidence or c.labels == "recognizer",
        "config.min_confidence applies to recognizer-made labels: set config.labels='recognizer' or min_confidence=0")
  try:
    as_dtype(c.compute_dtype)
  except ValueError as e:
    problems.append(f"config.compute_dtype: {e}")
  check(c.get("bn_stats", "global") in BN_STATS,
        f"config.bn_stats={c.get('bn_stats')!r} is not one of {', '.join(BN_STATS)}")
  check(c.processor.name in PROCESSORS,
        f"config.processor.name={c.processor.name!r} is not one of {', '.join(sorted(PROCESSORS))}")
  check(c.transformer.name in PROCESSORS,
        f"config.transformer.name={c.transformer.name!r} is not one of {', '.join(sorted(PROCESSORS))}")
  check(c.recognizer.name in recognizer_lib.available(),
        f"config.recognizer.name={c.recognizer.name!r} is not one of {', '.join(recognizer_lib.available())}")
  check(c.recognizer.num_classes >= 1, f"config.recognizer.num_classes={c.recognizer.num_classes} must be >= 1")
  d = c.data
  check(d.source in ("tfds", "synthetic", "photos"),
        f"config.data.source={d.source!r} is not 'tfds', 'synthetic' or 'photos'")
  if d.source == "photos":
    check(c.labels == "recognizer", "config.data.source='photos' has no labels: set config.labels='recognizer'")
  check(d.crop >= 8, f"config.data.crop={d.crop} must be >= 8")
  check(d.resize == 0 or d.resize >= d.crop, f"config.data.resize={d.resize} must be 0 or >= data.crop ({d.crop})")
  if c.task == "sr":
    check(c.degrade.scale in (2, 4, 8), f"config.degrade.scale={c.degrade.scale} must be 2, 4 or 8 for SR")
    check(d.crop % max(c.degrade.scale, 1) == 0,
          f"config.data.crop={d.crop} must be divisible by config.degrade.scale={c.degrade.scale}")
  check(c.degrade.sigma >= 0, f"config.degrade.sigma={c.degrade.sigma} must be >= 0")
  check(1 <= c.degrade.quality <= 95, f"config.degrade.quality={c.degrade.quality} must be in [1, 95]")
  if c.mode == "transformer":
    check(d.crop % 4 == 0, f"config.data.crop={d.crop} must be divisible by 4 for the transformer T")
  check(d.batch_size >= 1, f"config.data.batch_size={d.batch_size} must be >= 1")
  check(d.eval_batch_size >= 1, f"config.data.eval_batch_size={d.eval_batch_size} must be >= 1")
  check(d.noise in ("device", "host"), f"config.data.noise={d.noise!r} must be 'device' (drawn in the step) or 'host'")
  check(d.workers >= 0 and d.threads >= 1, f"config.data.workers={d.workers} must be >= 0 and data.threads >= 1")
  o = c.optim
  check(o.name in ("adam", "adamw", "sgd"), f"config.optim.name={o.name!r} is not one of adam, adamw, sgd")
  check(o.lr > 0, f"config.optim.lr={o.lr} must be > 0")
  check(o.get("transformer_lr") is None or o.transformer_lr > 0,
        f"config.optim.transformer_lr={o.get('transformer_lr')} must be > 0 (or None: optim.lr)")
  check(0 < o.decay_factor <= 1, f"config.optim.decay_factor={o.decay_factor} must be in (0, 1]")
  check(all(e >= 0 for e in o.decay_epochs), f"config.optim.decay_epochs={o.decay_epochs} must be >= 0")
  check(c.num_epochs > 0 or c.total_steps > 0, "config.num_epochs or config.total_steps must be > 0")
  check(c.log_every >= 1, f"config.log_every={c.log_every} must be >= 1")
  check(c.ckpt_every >= 1, f"config.ckpt_every={c.ckpt_every} must be >= 1")
  check(c.keep_ckpts >= 1, f"config.keep_ckpts={c.keep_ckpts} must be >= 1")
  check(c.eval_every >= -1, f"config.eval_every={c.eval_every} must be -1 (per epoch), 0 (end only) or > 0")
  check(c.mesh.data == -1 or c.mesh.data >= 1, f"config.mesh.data={c.mesh.data} must be -1 (all devices) or >= 1")
  if problems:
    raise ConfigError("Invalid config:\n  " + "\n  ".join(problems))
