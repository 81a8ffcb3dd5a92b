"""Finished training runs, read back: the one place that turns a trainer workdir into networks.

    run = rajax.runs.load("runs/sr_ra")
    views = run.forward(x)          # {"human": P(x) clipped, "machine": what a recognizer is fed}
    run.recognizer                  # the trained R, for methods that train one (else None)

A run directory holds `config.json` (written when the run started) and, once it has finished,
`<network>.msgpack` for every network its method trains. The config is read over today's
defaults (`rajax.config.migrate` brings fields that have moved since to their new place), so runs
of older versions load too.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from rajax import config as config_lib
from rajax import methods, networks


class RunError(ValueError):
  """A directory is not a finished rajax.train run."""


def _merge(into: ml_collections.ConfigDict, values: Mapping[str, Any]) -> None:
  for k, v in values.items():
    if k not in into:
      continue  # fields of older or newer trainers that this version does not know
    if isinstance(into[k], ml_collections.ConfigDict) and isinstance(v, Mapping):
      _merge(into[k], v)
    else:
      with into.ignore_type():
        into[k] = tuple(v) if isinstance(v, list) else v


def read_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config the run in `workdir` was trained with (its config.json over today's defaults)."""
  workdir = pathlib.Path(workdir).expanduser()
  path = workdir / "config.json"
  if not path.is_file():
    raise RunError(f"{workdir} is not a rajax.train workdir: it has no config.json. Point at a directory "
                   "written by `python -m rajax.train --workdir DIR`.")
  saved = config_lib.migrate(json.loads(path.read_text()))
  name = saved.get("method", {}).get("name", "ra")
  if name not in methods.METHODS:
    raise RunError(f"{workdir} was trained with method {name!r}, which this version does not know "
                   f"({', '.join(methods.names())}).")
  config = config_lib.base(task=saved.get("task", "sr"), method=name)
  for section in ("processor", "transformer"):
    kept = saved.get(section, {})
    if kept.get("name", config[section].name) != config[section].name:
      # another architecture than the default's (e.g. VRD-IR's): its own fields only, not the default's
      config[section] = ml_collections.ConfigDict({k: tuple(v) if isinstance(v, list) else v for k, v in kept.items()})
  _merge(config, saved)
  # Network sections hold constructor arguments, and a method's section its own settings; a run may
  # set ones the defaults leave out (e.g. configs/demo.py's processor.input_skip): keep them all.
  for section in ("processor", "transformer", "recognizer", "method"):
    for k, v in saved.get(section, {}).items():
      if k not in config[section]:
        config[section][k] = tuple(v) if isinstance(v, list) else v
  return config


@dataclasses.dataclass
class Run:
  """A finished run: its config, method, and the trained networks' variables."""

  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  method: methods.Method
  modules: dict[str, Any]
  variables: dict[str, Any]     # trained network -> {"params", "batch_stats"}
  key: str                      # identifies the weights and architecture (for caches)

  @property
  def spec(self) -> methods.MethodSpec:
    return self.method.spec

  @property
  def task(self) -> str:
    return self.config.task

  @property
  def loss_recognizer(self) -> str | None:
    """The recognizer the run was trained with (None for a method no recognizer shapes)."""
    return self.config.recognizer.name if self.spec.recognition_loss else None

  @property
  def lam(self) -> float | None:
    lam = self.config.method.get("lam")
    if lam is None and "lam" in self.config.method:
      from rajax.methods import ra
      lam = ra.DEFAULT_LAMBDA.get(self.spec.name)
    return lam

  @property
  def class_half(self) -> str:
    return self.config.classes.half if "classes" in self.config else ""

  @functools.cached_property
  def frozen(self) -> dict[str, Any]:
    """The frozen networks the method's forward needs (e.g. a fixed processor); none are built when it
    needs none (a frozen recognizer is the loss, not part of the forward)."""
    if not set(self.spec.forward_uses) & set(self.spec.frozen):
      return {}
    return {n: v for n, v in networks.frozen_networks(self.config, self.spec).items() if n in self.spec.forward_uses}

  @property
  def recognizer(self):
    """The trained recognizer (a Recognizer with the run's weights), or None if the method trains none."""
    if "recognizer" not in self.modules:
      return None
    return self.modules["recognizer"].replace(variables=self.variables["recognizer"])

  def forward(self, x: jax.Array, variables=None, frozen=None) -> dict[str, jax.Array]:
    """{"human", "machine"} images for float inputs x in [0, 1] (traceable: pass variables and frozen into jit)."""
    return self.method.forward(self.variables if variables is None else variables,
                               self.frozen if frozen is None else frozen, x)


# Loaded runs, by their directory and the size and modification time of every file in it: the evaluation
# suite loads each processor once per table. A run is shared, so callers must not change it; a rerun or
# resumed training rewrites files and so makes a new key.
_LOADED: collections.OrderedDict = collections.OrderedDict()
LOAD_CACHE_SIZE = 16


def _load_key(workdir: pathlib.Path, compute_dtype: str | None):
  try:
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in workdir.iterdir() if f.is_file())
  except OSError:
    return None   # `_load` names the problem
  return (str(workdir.resolve()), compute_dtype, tuple(files))


def load(workdir: str | os.PathLike, *, compute_dtype: str | None = None) -> Run:
  """The run trained in `workdir`, as saved when it finished (the same Run as an earlier call's while the
  directory's files are unchanged: the last LOAD_CACHE_SIZE are kept)."""
  workdir = pathlib.Path(workdir).expanduser()
  key = _load_key(workdir, compute_dtype)
  if key is not None and key in _LOADED:
    _LOADED.move_to_end(key)
    return _LOADED[key]
  run = _load(workdir, compute_dtype)
  if key is not None:
    _LOADED[key] = run
    while len(_LOADED) > LOAD_CACHE_SIZE:
      _LOADED.popitem(last=False)
  return run


def _load(workdir: pathlib.Path, compute_dtype: str | None) -> Run:
  config = read_config(workdir)
  if compute_dtype:
    config.compute_dtype = compute_dtype
  spec = methods.get(config.method.name)
  files = {n: workdir / f"{n}.msgpack" for n in spec.trains}
  for name, file in files.items():
    if not file.is_file():
      raise RunError(f"{file} is missing: the run in {workdir} has not finished (rerun its training command "
                     "to resume it).")
  built = {}
  if "recognizer" in spec.trains:   # the trained weights, read straight into the architecture
    config.recognizer.weights = str(files["recognizer"])
  modules = networks.trained_modules(config, spec, built)
  variables = {}
  digest = hashlib.sha256(json.dumps([config.method.to_dict(), config.processor.to_dict(), config.transformer.to_dict(),
                                      config.task, config.degrade.scale]).encode())
  for name, file in files.items():
    if name == "recognizer":
      v = modules[name].variables
      variables[name] = {"params": v["params"], "batch_stats": v.get("batch_stats", {})}
    else:
      shape = networks.input_shape(config) if name == "processor" else (config.data.crop, config.data.crop, 3)
      variables[name] = networks.load_variables(modules[name], str(file), shape, what=f"{workdir.name} {name}")
    digest.update(file.read_bytes())
  method = methods.build(methods.Setup(config=config, modules=modules, optimizers={},
                                       input_shape=networks.input_shape(config)))
  return Run(workdir=workdir, config=config, method=method, modules=modules,
             variables=jax.tree.map(jnp.asarray, variables), key=digest.hexdigest())
