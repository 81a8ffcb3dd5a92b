"""Experiment configs: loading `configs/*.py:arg` files, command-line overrides, validation.

A config file defines `get_config(arg: str | None) -> ml_collections.ConfigDict`; `arg` is the text
after the colon in `configs/imagenet.py:task=sr,mode=ra,recognizer=resnet18`, parsed with `parse_arg`.
Any field can then be overridden as `--config.optim.lr=3e-4`; an unknown field or a value of the
wrong type fails with a message naming it, and the config is locked afterwards.

`base()` holds the paper's ImageNet settings; the files in configs/ adjust it. Fields that moved
(`config.lam` is now `config.method.lam`, `config.optim.lr` is per network:
`config.optim.processor.lr`) fail with a message naming the new field (`MOVED`), and the config.json
of a run written before they moved is read through `migrate`.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import pathlib
from typing import Any, Sequence

import ml_collections
from ml_collections import config_dict

from rajax import degrade, methods, optim
from rajax.models import PROCESSORS
from rajax.models import recognizers as recognizer_lib
from rajax.models.layers import BN_STATS, as_dtype


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
    if path in MOVED and not _has(config, path):
      raise ConfigError(f"config.{path} has moved: set --config.{MOVED[path]}={value} instead.")
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


# --------------------------------------------------------------------------- fields that moved

# Old field -> where it lives now (the method's settings under config.method, optimizers per network).
MOVED = {
    "mode": "method.name", "lam": "method.lam", "unsupervised_distance": "method.distance",
    "label_smoothing": "method.label_smoothing", "min_confidence": "method.min_confidence",
    "optim.transformer_lr": "optim.transformer.lr",
    **{f"optim.{f}": f"optim.processor.{f}" for f in ("name", "lr", "b1", "b2", "eps", "weight_decay", "decay_epochs",
                                                       "decay_factor", "grad_clip")},
}


def _has(config: ml_collections.ConfigDict, path: str) -> bool:
  node = config
  for name in path.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      return False
    node = node[name]
  return True


def migrate(saved: dict) -> dict:
  """A run's saved config (config.json) with fields that have moved since (`MOVED`) in their new place.

  The old flat optimizer settings become the processor's and, for a run that trained a
  transformer, the transformer's (with its own rate, optim.transformer_lr, when one was set).
  """
  saved = json.loads(json.dumps(saved))
  old_optim = saved.get("optim", {})
  if "lr" in old_optim:   # the flat optimizer section of older runs
    flat = {k: v for k, v in old_optim.items() if k != "transformer_lr"}
    saved["optim"] = {"processor": dict(flat), "transformer": dict(flat)}
    if old_optim.get("transformer_lr") is not None:
      saved["optim"]["transformer"]["lr"] = old_optim["transformer_lr"]
  for old, new in MOVED.items():
    if "." in old or old not in saved:
      continue
    value = saved.pop(old)
    section, field = new.split(".")
    saved.setdefault(section, {})[field] = value
  return saved


# --------------------------------------------------------------------------- the paper's settings

def base(*, task: str = "sr", method: str = "ra", recognizer: str = "resnet18") -> ml_collections.ConfigDict:
  """The paper's ImageNet setting for `task` and `method` (SRResNet P, recognizer R, Adam 1e-4, batch 20)."""
  spec = methods.get(method)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = task                       # sr | denoise | jpeg | codec (P before a codec: NPP)
  # The method (rajax.methods) and its settings; its defaults come from the method itself.
  c.method = ml_collections.ConfigDict({"name": method, **spec.defaults()})
  if "lam" in c.method:
    c.method.lam = config_dict.placeholder(float)   # the recognition loss weight; None: the paper's
  c.labels = "dataset"                # dataset | recognizer (R's pseudo-targets on the clean image, for unlabelled data)
  c.compute_dtype = "float32"         # bfloat16 on GPU/TPU
  # Training BatchNorm statistics of the trained networks: "global" (over the whole batch, one all-reduce
  # per layer forward and backward when it is sharded) or "per_device" (each device's slice).
  c.bn_stats = "global"
  # Category transfer: train on half "A" or "B" of tasks.classification.class_halves(recognizer.num_classes, seed).
  c.classes = ml_collections.ConfigDict(dict(half="", seed=0))

  c.processor = ml_collections.ConfigDict(dict(name="srresnet", blocks=5, channels=64))
  # Flax variables (.msgpack, e.g. another run's processor.msgpack; for EDSR also an official or BasicSR
  # .pt/.pth) to start P from; None: random init.
  c.init_processor = config_dict.placeholder(str)
  c.transformer = ml_collections.ConfigDict(dict(name="resnet_generator", blocks=6, channels=64))
  # C, a learned proxy codec (rajax.models.proxy_codec) standing in for a real codec's backward pass (NPP):
  # trained by proxy_rd / proxy_codec, frozen in npp (config.method.codec_weights). N, M: CompressAI's widths.
  c.codec = ml_collections.ConfigDict(dict(name="bmshj2018-hyperprior", N=128, M=192))
  c.init_codec = config_dict.placeholder(str)   # Flax variables or a CompressAI checkpoint to start C from
  c.recognizer = ml_collections.ConfigDict(dict(name=recognizer, num_classes=1000))
  # File; None: bundled pretrained; "random": a seeded random initialisation (tests; training R from scratch).
  c.recognizer.weights = config_dict.placeholder(str)
  # Options of R's own training loss, for the tasks that take them (rajax.tasks.<task>.LOSS_OPTIONS):
  # aux_weight, a segmenter's auxiliary-head weight (torchvision's segmentation reference: 0.5).
  c.recognizer.loss = ml_collections.ConfigDict(dict(aux_weight=0.5))

  # kernel: how SR's input is made: "pil" (Pillow's antialiased bicubic) or "torch" (PyTorch's bicubic
  # without antialiasing, then 8-bit rounding: SR4IR's on-the-fly LR images).
  # families: task "mixture"'s (name, severity) degradations, one drawn per example (rajax.degrade.mixture).
  c.degrade = ml_collections.ConfigDict(dict(scale=4, sigma=0.1, quality=10, kernel="pil", families=()))

  c.data = ml_collections.ConfigDict()
  c.data.source = "tfds"              # tfds | synthetic | photos
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
  # an epoch is `repeats` random crops of each training photo; eval is a grid x grid of crops (+ mirrors)
  # of data.eval_split's photos ("validation" or "test"), or of `names` when given.
  c.data.photos = ml_collections.ConfigDict(dict(short_side=192, repeats=64, grid=3, scales=(1.0,),
                                                 eval_scales=(1.0,), names=()))

  # One optimizer per trained network (rajax.optim.section): the paper's Adam at 1e-4 with its decay
  # after 4 and 5 epochs for P and T; SGD with momentum for R, for the methods that train it.
  c.optim = ml_collections.ConfigDict(dict(
      processor=optim.section(), transformer=optim.section(), codec=optim.section(),
      recognizer=optim.section(name="sgd", lr=1e-3, momentum=0.9, weight_decay=1e-4)))
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


# --------------------------------------------------------------------------- validation

def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError listing every invalid value, each with the field name and what is allowed.

  The method validates its own settings (`MethodSpec.validate`), the optimizer module the optimizer
  sections of the networks the method trains.
  """
  problems = []

  def check(ok: bool, msg: str):
    if not ok:
      problems.append(msg)

  check(c.task in degrade.TASKS, f"config.task={c.task!r} is not one of {', '.join(degrade.TASKS)}")
  check("method" in c and "name" in c.method,
        "config.method.name is missing: configs are made by rajax.config.base(task=..., method=...)")
  spec = None
  if "method" in c and "name" in c.method:
    if c.method.name in methods.METHODS:
      spec = methods.get(c.method.name)
    else:
      problems.append(f"config.method.name={c.method.name!r} is not one of {', '.join(methods.names())}")
  check(c.classes.half in ("", "A", "B"), f"config.classes.half={c.classes.half!r} must be '', 'A' or 'B'")
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
  check(c.recognizer.num_classes is None or c.recognizer.num_classes >= 1,
        f"config.recognizer.num_classes={c.recognizer.num_classes} must be >= 1 (or None: a detector's own)")
  aux = (c.recognizer.get("loss") or {}).get("aux_weight", 0.5)
  check(isinstance(aux, (int, float)) and aux >= 0,
        f"config.recognizer.loss.aux_weight={aux!r} must be a number >= 0 (0: the main head only; torchvision's "
        "reference 0.5)")
  d = c.data
  check(d.source in ("tfds", "synthetic", "photos"),
        f"config.data.source={d.source!r} is not 'tfds', 'synthetic' or 'photos'")
  if d.source == "photos":
    check(c.labels == "recognizer", "config.data.source='photos' has no labels: set config.labels='recognizer'")
    check(d.eval_split in ("validation", "test"),
          f"config.data.eval_split={d.eval_split!r}: the photos evaluate on 'validation' (to choose settings) or "
          "'test' (to report them)")
  check(d.crop >= 8, f"config.data.crop={d.crop} must be >= 8")
  check(d.resize == 0 or d.resize >= d.crop, f"config.data.resize={d.resize} must be 0 or >= data.crop ({d.crop})")
  if c.task == "sr":
    # a processor may name the SR factors it has (EDSR and SwinIR add x3); others upscale by 2, 4 or 8
    sr_scales = getattr(PROCESSORS.get(c.processor.name), "SR_SCALES", (2, 4, 8))
    check(c.degrade.scale in sr_scales,
          f"config.degrade.scale={c.degrade.scale} must be one of {', '.join(map(str, sr_scales))} for SR with "
          f"processor {c.processor.name!r}")
    check(d.crop % max(c.degrade.scale, 1) == 0,
          f"config.data.crop={d.crop} must be divisible by config.degrade.scale={c.degrade.scale}")
  if c.task == "mixture":
    problems.extend(degrade.family_problems(c.degrade.get("families", ())))
  check(c.degrade.sigma >= 0, f"config.degrade.sigma={c.degrade.sigma} must be >= 0")
  check(1 <= c.degrade.quality <= 95, f"config.degrade.quality={c.degrade.quality} must be in [1, 95]")
  check(d.batch_size >= 1, f"config.data.batch_size={d.batch_size} must be >= 1")
  check(d.eval_batch_size >= 1, f"config.data.eval_batch_size={d.eval_batch_size} must be >= 1")
  check(d.noise in ("device", "host"), f"config.data.noise={d.noise!r} must be 'device' (drawn in the step) or 'host'")
  check(d.workers >= 0 and d.threads >= 1, f"config.data.workers={d.workers} must be >= 0 and data.threads >= 1")
  if spec is not None:
    problems.extend(spec.validate(c))
    for name in spec.trains:
      if name not in c.optim:
        problems.append(f"config.optim.{name} is missing: method {spec.name!r} trains the {name}; add "
                        f"config.optim.{name} = rajax.optim.section(...)")
      else:
        problems.extend(optim.validate(c.optim[name], f"config.optim.{name}"))
  check(c.num_epochs > 0 or c.total_steps > 0, "config.num_epochs or config.total_steps must be > 0")
  check(c.log_every >= 1, f"config.log_every={c.log_every} must be >= 1")
  check(c.ckpt_every >= 1, f"config.ckpt_every={c.ckpt_every} must be >= 1")
  check(c.keep_ckpts >= 1, f"config.keep_ckpts={c.keep_ckpts} must be >= 1")
  check(c.eval_every >= -1, f"config.eval_every={c.eval_every} must be -1 (per epoch), 0 (end only) or > 0")
  check(c.mesh.data == -1 or c.mesh.data >= 1, f"config.mesh.data={c.mesh.data} must be -1 (all devices) or >= 1")
  if problems:
    raise ConfigError("Invalid config:\n  " + "\n  ".join(problems))
