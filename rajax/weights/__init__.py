"""Reading and writing model weights as Flax variable trees.

`load(path, template)` reads a weights file and checks it against the variables a module expects
(`template`, e.g. from `module.init`): every missing key, unexpected key and wrong shape is named in
one error. The native format is Flax msgpack (`flax.serialization`), written by `save()`.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Any, Mapping

import numpy as np
from flax import serialization
from flax import traverse_util

NATIVE_SUFFIXES = (".msgpack",)


class WeightsError(ValueError):
  """A weights file is missing, unreadable, or does not fit the model."""


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


def load(path: str | os.PathLike, template: Mapping[str, Any], *, what: str = "model") -> dict:
  """Reads the variables in `path` and checks them against `template`'s keys and shapes.

  Returns a nested dict of numpy arrays in the template's dtypes.
  """
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise WeightsError(
        f"No weights file for {what} at {path.resolve()}. Pass the path of an existing file "
        f"(formats: {', '.join(NATIVE_SUFFIXES)}), or weights=None for a random initialisation."
    )
  if path.suffix not in NATIVE_SUFFIXES:
    raise WeightsError(
        f"Cannot read {path}: unsupported weights format {path.suffix!r}; supported: "
        f"{', '.join(NATIVE_SUFFIXES)}. Convert the file first."
    )
  try:
    loaded = serialization.msgpack_restore(path.read_bytes())
  except Exception as e:  # msgpack raises several unrelated types on corrupt input
    raise WeightsError(f"{path} is not a readable Flax msgpack weights file ({type(e).__name__}: {e}).") from e
  return check_variables(loaded, template, source=str(path))


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
    lines = [f"Weights from {source} do not fit the model:"]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", bad_shape)):
      if items:
        lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
    lines.append("Check that the file was written for this architecture and its settings (num_classes, width).")
    raise WeightsError("\n".join(lines))
  flat = {k: np.asarray(got[k], dtype=want[k].dtype) for k in want}
  return traverse_util.unflatten_dict(flat, sep="/")


def _to_numpy(tree):
  if isinstance(tree, Mapping):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree)
