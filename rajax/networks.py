"""The networks of a run, built from its config: one place for "which module is network N".

Network names are roles, each built from the config section of the same name:

  processor    P, `rajax.processor(config.processor.name, ...)`; its upscaling factor is the task's
               (`config.degrade.scale` for SR, 1 otherwise); `config.init_processor` starts it from a
               saved run's processor.msgpack (or, for EDSR, an official or BasicSR .pt/.pth file);
  transformer  T, a processor of scale 1 between P and R (`config.transformer`);
  codec        C, a learned proxy codec (`rajax.models.proxy_codec`, `config.codec`), trained by the
               proxy methods (from `config.init_codec` when set) and frozen in NPP;
  recognizer   R, `rajax.recognizer(config.recognizer.name, config.recognizer.weights, ...)`: frozen by
               most methods, trained by some (then it starts from those weights; weights="random" is
               training from scratch).

A method's trained networks are linen modules (R: a `Recognizer`, whose module and normalisation
the step uses); its frozen ones are values passed to the step (`Recognizer`, `FrozenNetwork`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from rajax import weights as weights_lib
from rajax.methods import base
from rajax.models import PROCESSORS, processor, recognizer


class NetworkError(ValueError):
  """A network section of the config cannot be built."""


def scale(config: ml_collections.ConfigDict) -> int:
  """P's upscaling factor: the SR scale for task "sr", 1 otherwise."""
  return config.degrade.scale if config.task == "sr" else 1


def input_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """One processor input, (h, w, 3), for the config's crop size."""
  size = config.data.crop // scale(config)
  return (size, size, 3)


def options(section: ml_collections.ConfigDict, *exclude: str) -> dict[str, Any]:
  """A network section's fields as constructor keyword arguments (without name and `exclude`)."""
  return {k: v for k, v in section.items() if k not in ("name",) + exclude}


def _fields(processor_name: str) -> list[str]:
  return [f.name for f in dataclasses.fields(PROCESSORS[processor_name])]


def _common_for(processor_name: str, common: dict[str, Any]) -> dict[str, Any]:
  """The run-wide options (dtype, bn_stats) that processor `processor_name` has (EDSR has no BatchNorm)."""
  if processor_name not in PROCESSORS:
    return common  # rajax.processor names the unknown processor
  fields = _fields(processor_name)
  return {k: v for k, v in common.items() if k in fields}


def recognition_task(config: ml_collections.ConfigDict) -> str:
  """The task of config.recognizer ("classification", "detection", "segmentation"), from its name alone."""
  from rajax import tasks
  return tasks.of_recognizer(config.recognizer.name).NAME


def module(config: ml_collections.ConfigDict, name: str):
  """The module of network `name` ("processor", "transformer": linen modules; "recognizer": a Recognizer)."""
  common = dict(dtype=config.compute_dtype, bn_stats=config.get("bn_stats", "global"))
  if name == "processor":
    kwargs = options(config.processor)
    if "scale" in _fields(config.processor.name):
      kwargs["scale"] = scale(config)
    elif config.task == "sr":
      raise NetworkError(f"config.processor.name={config.processor.name!r} cannot upscale; use 'srresnet' or 'edsr' "
                         "for task 'sr'.")
    return processor(config.processor.name, **_common_for(config.processor.name, common), **kwargs)
  if name == "transformer":
    return processor(config.transformer.name, **_common_for(config.transformer.name, common),
                     **options(config.transformer))
  if name == "codec":
    from rajax.models import proxy_codec
    return proxy_codec.proxy_codec(config.codec.name, dtype=config.compute_dtype, **options(config.codec))
  if name == "recognizer":
    return recognizer(config.recognizer.name, config.recognizer.weights, dtype=config.compute_dtype,
                      seed=config.seed, **options(config.recognizer, "weights", "loss"))
  raise NetworkError(f"Unknown network {name!r}; one of {', '.join(base.NETWORKS)}.")


def trained_modules(config: ml_collections.ConfigDict, spec: base.MethodSpec, built: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
  """The modules of the networks `spec` trains (`built`: networks already made, reused)."""
  built = built or {}
  return {n: built[n] if n in built else module(config, n) for n in spec.trains}


def initial_variables(config: ml_collections.ConfigDict, spec: base.MethodSpec, modules: Mapping[str, Any]
                      ) -> dict[str, Any]:
  """Variables that trained networks start from instead of a random initialisation.

  P: `config.init_processor` when set; R: its weights (pretrained, a file, or a seeded random
  initialisation for weights="random").
  """
  out = {}
  if "processor" in spec.trains and config.get("init_processor"):
    out["processor"] = load_variables(modules["processor"], config.init_processor, input_shape(config),
                                      what="the processor (config.init_processor)")
  if "codec" in spec.trains and config.get("init_codec"):
    out["codec"] = load_variables(modules["codec"], config.init_codec, (config.data.crop, config.data.crop, 3),
                                  what="the proxy codec (config.init_codec)")
  if "recognizer" in spec.trains:
    variables = modules["recognizer"].variables
    out["recognizer"] = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  return out


def load_variables(net, path: str, shape: tuple[int, ...], *, what: str) -> dict[str, Any]:
  """Flax variables {"params", "batch_stats"} of linen module `net` from a file, checked.

  A .msgpack file holds rajax's own variables. A PyTorch file (.pt, .pth, ...) is read for
  processors that name their torch layout with `torch_key` (and `rename_torch_keys` when they read
  several layouts), e.g. EDSR's official and BasicSR checkpoints.
  """
  from rajax.models import proxy_codec
  if isinstance(net, proxy_codec.ProxyCodec) and not str(path).endswith(".msgpack"):   # a CompressAI checkpoint
    return jax.tree.map(jnp.asarray, {"params": proxy_codec.load_compressai(path, net)["params"], "batch_stats": {}})
  if hasattr(net, "feature_input"):   # a processor that reads a recognizer's features (VRD-IR), not images
    shape = net.feature_input(shape)
  x = jnp.zeros((1, *shape), jnp.float32)
  kwargs = getattr(net, "init_kwargs", lambda n: {})(1)
  template = jax.eval_shape(lambda: base.init_variables(net, jax.random.key(0), x, **kwargs))
  read = functools.partial(weights_lib.load, path, what=what, torch_key=getattr(net, "torch_key", None),
                           rename_torch_keys=getattr(net, "rename_torch_keys", None))
  fresh = tuple(getattr(net, "fresh_on_load", ()))   # parameter groups a file may lack (NPP's quality layers)
  try:
    loaded = read(template)
  except weights_lib.WeightsError:
    if not fresh:
      raise
    reduced = {**template, "params": {k: v for k, v in template["params"].items() if not k.startswith(fresh)}}
    loaded = read(reduced)   # still wrong: this error names what does not fit
    started = base.init_variables(net, jax.random.key(0), x, **kwargs)["params"]
    new = sorted(k for k in started if k.startswith(fresh))
    loaded["params"] = {**loaded["params"], **{k: jax.device_get(started[k]) for k in new}}
    print(f"rajax.networks: {what}: {path} has no {', '.join(new)}; those start from their initialisation",
          flush=True)
  loaded = {"params": loaded["params"], "batch_stats": loaded.get("batch_stats", {})}  # EDSR has no batch_stats
  return jax.tree.map(jnp.asarray, loaded)


def frozen_networks(config: ml_collections.ConfigDict, spec: base.MethodSpec, *, evaluation: bool = False
                    ) -> dict[str, Any]:
  """The frozen networks `spec` uses, by name; with `evaluation`, also the recognizer that evaluates
  a method that has none of its own (config.recognizer), so every run reports recognition metrics."""
  names = list(spec.frozen)
  if evaluation and "recognizer" not in spec.networks:
    names.append("recognizer")
  out = {}
  for name in names:
    if name == "recognizer":
      out[name] = module(config, "recognizer")
    else:  # a frozen processor or transformer: from the file its method's config names
      path = config.method.get(f"{name}_weights")
      if not path:
        raise NetworkError(f"Method {spec.name!r} uses a frozen {name}: set config.method.{name}_weights to a "
                           f"trained run's {name}.msgpack.")
      net = module(config, name)
      shape = input_shape(config) if name == "processor" else (config.data.crop, config.data.crop, 3)
      out[name] = base.FrozenNetwork(net, load_variables(net, path, shape, what=f"the frozen {name} ({path})"))
  return out
