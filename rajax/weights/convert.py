"""PyTorch state dicts -> Flax variables, checked key by key and shape by shape.

A rajax recognizer is built so that every Flax layer is exactly one PyTorch layer, and its
architecture module provides `torch_key(flax_module_path) -> torch_module_prefix`
("layer1_0/downsample_conv" -> "layer1.0.downsample.0"). The leaves then map generically:

    params/kernel  4-D  <- weight, OIHW -> HWIO (depthwise (C, 1, kh, kw) -> (kh, kw, 1, C))
    params/kernel  2-D  <- weight, (out, in) -> (in, out)
    params/bias         <- bias
    params/scale        <- weight (BatchNorm / LayerNorm)
    params/negative_slope <- weight (PReLU)
    params/relative_position_bias_table <- relative_position_bias_table (Swin window attention)
    batch_stats/mean    <- running_mean
    batch_stats/var     <- running_var
    batch_stats/scale   <- weight   (frozen BatchNorm: torchvision's FrozenBatchNorm2d keeps its
    batch_stats/bias    <- bias      affine parameters as buffers, so rajax keeps them out of params)

`num_batches_tracked` counters are ignored. Everything else in the state dict that no Flax leaf
claims is reported as unexpected, every Flax leaf without a torch tensor as missing, and every
shape that does not fit as wrong, all in one error.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
from flax import traverse_util

from rajax.weights.errors import WeightsError, mismatch_error

# Wrappers that training frameworks put around a model's keys.
_PREFIXES = ("module.", "_orig_mod.")
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "params", "params_ema")

_LEAF_TO_TORCH = {
    ("params", "kernel"): "weight",
    ("params", "bias"): "bias",
    ("params", "scale"): "weight",
    ("params", "negative_slope"): "weight",
    ("params", "relative_position_bias_table"): "relative_position_bias_table",   # Swin attention
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
    ("batch_stats", "scale"): "weight",
    ("batch_stats", "bias"): "bias",
}


def state_dict_of(obj: Any, *, source: str) -> dict[str, np.ndarray]:
  """The flat {name: array} state dict inside a loaded checkpoint object.

  Accepts a bare state dict or one nested under a usual key ("state_dict", "model", ...; BasicSR's
  "params" before its "params_ema"), and strips the "module." (DataParallel) and "_orig_mod."
  (torch.compile) prefixes.
  """
  sd = obj
  for _ in range(2):
    if isinstance(sd, Mapping) and not _is_flat_tensor_dict(sd):
      inner = [k for k in _CONTAINER_KEYS if k in sd and isinstance(sd[k], Mapping)]
      if not inner:
        break
      sd = sd[inner[0]]
  if not isinstance(sd, Mapping) or not _is_flat_tensor_dict(sd):
    kind = type(obj).__name__
    keys = list(obj)[:10] if isinstance(obj, Mapping) else []
    raise WeightsError(
        f"{source} does not hold a state dict of tensors (top level: {kind}{' with keys ' + str(keys) if keys else ''}). "
        "Save the model as torch.save(model.state_dict(), path).")
  out = {}
  for k, v in sd.items():
    for p in _PREFIXES:
      if k.startswith(p) and all(key.startswith(p) for key in sd):
        k = k[len(p):]
        break
    out[k] = v
  return out


def _is_flat_tensor_dict(d: Mapping) -> bool:
  return len(d) > 0 and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in d.items())


def _to_flax(leaf: tuple[str, str], value: np.ndarray, want_ndim: int) -> np.ndarray:
  if leaf == ("params", "kernel"):
    if value.ndim == 4:
      return np.transpose(value, (2, 3, 1, 0))
    if value.ndim == 2:
      return value.T
  if leaf == ("params", "negative_slope") and want_ndim == 0 and value.shape == (1,):
    return value.reshape(())
  return value


def from_torch(
    state_dict: Mapping[str, np.ndarray],
    template: Mapping[str, Any],
    torch_key: Callable[[str], str],
    *,
    source: str,
) -> dict:
  """Converts a flat PyTorch state dict to Flax variables shaped like `template`.

  Args:
    state_dict: torch parameter/buffer name -> numpy array.
    template: the Flax variables the module expects ({"params": ..., "batch_stats": ...}); only
      shapes and dtypes are used, so `jax.eval_shape(module.init, ...)` output works.
    torch_key: the architecture's map from a Flax module path ("a/b") to a torch module prefix ("a.b").
    source: where the state dict came from, for error messages.

  Returns:
    Nested dict of numpy arrays in the template's dtypes.
  """
  want = traverse_util.flatten_dict(dict(template))
  used, out, missing, bad_shape = set(), {}, [], []
  for path, spec in want.items():
    collection, *module, leaf = path
    kind = _LEAF_TO_TORCH.get((collection, leaf))
    if kind is None:
      raise WeightsError(f"Cannot map Flax variable {'/'.join(path)} to a torch tensor (unknown leaf kind).")
    name = f"{torch_key('/'.join(module))}.{kind}"
    if name not in state_dict:
      missing.append(name)
      continue
    used.add(name)
    value = _to_flax((collection, leaf), np.asarray(state_dict[name]), len(spec.shape))
    if tuple(value.shape) != tuple(spec.shape):
      bad_shape.append(f"{name}: file {tuple(np.shape(state_dict[name]))} -> {tuple(value.shape)}, "
                       f"model {tuple(spec.shape)}")
      continue
    out[path] = np.asarray(value, dtype=spec.dtype)
  unexpected = sorted(k for k in set(state_dict) - used if not k.endswith("num_batches_tracked"))
  if missing or unexpected or bad_shape:
    raise mismatch_error(source, missing=missing, unexpected=unexpected, bad_shape=bad_shape,
                         hint="Check that the file holds this architecture and that num_classes and the "
                              "architecture options match it.")
  return traverse_util.unflatten_dict(out)
