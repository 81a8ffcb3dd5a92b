"""Model weights: reading PyTorch and safetensors checkpoints without torch, Flax msgpack files.

    load(path, template, torch_key=...)   any supported file -> Flax variables checked against template
    read_state_dict(path)                 a .pth/.pt/.bin/.safetensors file -> {torch name: numpy array}
    save(path, variables)                 Flax variables -> msgpack, atomically

Formats, chosen by suffix:
  .msgpack                       Flax variables (`flax.serialization`), rajax's native format;
  .pth .pt .bin .ckpt .tar       `torch.save` files, zip or legacy format, read by a restricted
                                 unpickler that refuses anything but tensors and plain containers;
  .safetensors                   read with the `safetensors` library.

Every check (missing keys, unexpected keys, shapes) is reported in one `WeightsError` that names
each offending key. `python -m rajax.weights convert ARCH IN OUT` stores a converted checkpoint as
msgpack so later runs skip the conversion.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Any, Callable, Mapping

import numpy as np
from flax import serialization
from flax import traverse_util

from rajax.weights.errors import WeightsError, mismatch_error

NATIVE_SUFFIXES = (".msgpack",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
SAFETENSORS_SUFFIXES = (".safetensors",)
SUFFIXES = NATIVE_SUFFIXES + TORCH_SUFFIXES + SAFETENSORS_SUFFIXES


def save(path: str | os.PathLike, variables: Mapping[str, Any]) -> pathlib.Path:
  """Writes `variables` to `path` (Flax msgpack) atomically: a crash never leaves a partial file."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  data = serialization.msgpack_serialize(_to_numpy(variables))
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
  return path


def _check_file(path: pathlib.Path, what: str) -> None:
  if not path.is_file():
    raise WeightsError(
        f"No weights file for {what} at {path.resolve()}. Pass the path of an existing file "
        f"(formats: {', '.join(SUFFIXES)}).")
  if path.suffix not in SUFFIXES:
    raise WeightsError(
        f"Cannot read {path}: unsupported weights format {path.suffix!r}; supported: {', '.join(SUFFIXES)}.")


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A PyTorch (.pth/.pt/.bin/...) or .safetensors file -> flat {torch name: numpy array}.

  Never executes code from the file: torch pickles go through an allow-list unpickler.
  """
  from rajax.weights import convert, torch_pickle

  path = pathlib.Path(path).expanduser()
  _check_file(path, "a state dict")
  if path.suffix in SAFETENSORS_SUFFIXES:
    return _read_safetensors(path)
  if path.suffix not in TORCH_SUFFIXES:
    raise WeightsError(f"{path} is not a PyTorch or safetensors file (suffixes {TORCH_SUFFIXES + SAFETENSORS_SUFFIXES}).")
  try:
    obj = torch_pickle.load(path)
  except torch_pickle.UnsafeCheckpointError as e:
    raise WeightsError(str(e)) from None
  except (torch_pickle.CheckpointFormatError, EOFError, OSError, ValueError) as e:
    raise WeightsError(f"Cannot read {path} as a PyTorch checkpoint: {e}") from e
  except Exception as e:  # pickle raises assorted types on corrupt input
    raise WeightsError(f"Cannot read {path} as a PyTorch checkpoint ({type(e).__name__}: {e}).") from e
  return convert.state_dict_of(obj, source=str(path))


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    from safetensors import flax as st_flax  # handles bfloat16, which safetensors.numpy does not
    tensors = st_flax.load_file(str(path))
  except Exception as e:  # safetensors raises its own SafetensorError and others
    raise WeightsError(f"Cannot read {path} as a safetensors file ({type(e).__name__}: {e}).") from e
  return {k: np.asarray(v) for k, v in tensors.items()}


def load(
    path: str | os.PathLike,
    template: Mapping[str, Any],
    *,
    what: str = "model",
    torch_key: Callable[[str], str] | None = None,
    rename_torch_keys: Callable[[dict], dict] | None = None,
) -> dict:
  """Reads the weights in `path` and checks them against `template`'s keys and shapes.

  `.msgpack` files hold Flax variables; PyTorch and safetensors files are converted with
  `torch_key` (the architecture's Flax-path -> torch-prefix map), after `rename_torch_keys` (if
  given) has renamed keys of older layouts. Returns a nested dict of numpy
  arrays in the template's dtypes.
  """
  from rajax.weights import convert

  path = pathlib.Path(path).expanduser()
  _check_file(path, what)
  if path.suffix in NATIVE_SUFFIXES:
    try:
      loaded = serialization.msgpack_restore(path.read_bytes())
    except Exception as e:  # msgpack raises several unrelated types on corrupt input
      raise WeightsError(f"{path} is not a readable Flax msgpack weights file ({type(e).__name__}: {e}).") from e
    return check_variables(loaded, template, source=str(path))
  if torch_key is None:
    raise WeightsError(f"{what} cannot read PyTorch-layout weights ({path}): it has no torch key map. "
                       "Pass a Flax .msgpack file.")
  state_dict = read_state_dict(path)
  if rename_torch_keys is not None:
    state_dict = rename_torch_keys(state_dict)
  return convert.from_torch(state_dict, template, torch_key, source=str(path))


def check_variables(loaded: Mapping[str, Any], template: Mapping[str, Any], *, source: str) -> dict:
  """Checks `loaded` has exactly `template`'s keys and shapes; casts to the template's dtypes."""
  want = traverse_util.flatten_dict(dict(template), sep="/")
  got = traverse_util.flatten_dict(dict(loaded), sep="/") if isinstance(loaded, Mapping) else {}
  missing = sorted(set(want) - set(got))
  unexpected = sorted(set(got) - set(want))
  bad_shape = sorted(
      f"{k}: file {tuple(np.shape(got[k]))}, model {tuple(want[k].shape)}"
      for k in set(want) & set(got) if tuple(np.shape(got[k])) != tuple(want[k].shape))
  if missing or unexpected or bad_shape:
    raise mismatch_error(source, missing=missing, unexpected=unexpected, bad_shape=bad_shape,
                         hint="Check that the file was written for this architecture and its settings "
                              "(num_classes, width).")
  flat = {k: np.asarray(got[k], dtype=want[k].dtype) for k in want}
  return traverse_util.unflatten_dict(flat, sep="/")


def _to_numpy(tree):
  if isinstance(tree, Mapping):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree)


__all__ = ["NATIVE_SUFFIXES", "SUFFIXES", "WeightsError", "check_variables", "load", "read_state_dict", "save"]
