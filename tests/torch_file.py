"""Writes a state dict of numpy arrays as a torch zip-format checkpoint, without torch (for tests).

torch.save's zip layout: `<name>/data.pkl` (protocol 2 pickle of an OrderedDict whose values are
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)` calls, the
storages as persistent ids ("storage", torch.<Type>Storage, key, "cpu", numel)), one raw
little-endian file per storage `<name>/data/<key>`, `<name>/byteorder` and `<name>/version`. The
pickle is written by Python's pure-Python pickler with the torch globals emitted by name, so the
file reads as torch.save's does (and rajax's restricted reader resolves exactly these globals).
"""

from __future__ import annotations

import collections
import io
import pathlib
import pickle
import zipfile

import numpy as np

_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage",
            np.dtype(np.float16): "HalfStorage", np.dtype(np.int32): "IntStorage"}


class _Global:
  """A stand-in for a torch global: pickled as GLOBAL module.name."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # never called: save_reduce only checks that a reduce function is callable
    raise TypeError(f"{self.module}.{self.name} is a stand-in")


_REBUILD = _Global("torch._utils", "_rebuild_tensor_v2")


class _Tensor:
  def __init__(self, key: str, array: np.ndarray):
    self.key, self.array = key, array


class _Storage:
  def __init__(self, key: str, array: np.ndarray):
    self.key, self.array = key, array


class _Pickler(pickle._Pickler):  # the pure-Python pickler, whose save_global can be replaced
  def save_global(self, obj, name=None):
    if isinstance(obj, _Global):
      self.write(pickle.GLOBAL + obj.module.encode() + b"\n" + obj.name.encode() + b"\n")
      self.memoize(obj)
      return
    super().save_global(obj, name)

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      return ("storage", _Global("torch", _STORAGE[obj.array.dtype]), obj.key, "cpu", obj.array.size)
    return None

  def reducer_override(self, obj):
    if isinstance(obj, _Tensor):
      a = obj.array
      stride = tuple(int(s) // a.itemsize for s in a.strides)
      return (_REBUILD, (_Storage(obj.key, a), 0, tuple(a.shape), stride, False, collections.OrderedDict()))
    return NotImplemented

  dispatch = dict(pickle._Pickler.dispatch)
  dispatch[_Global] = save_global


def save(path, state_dict: dict) -> pathlib.Path:
  """Writes `state_dict` to `path`: its arrays as tensors, its nested dicts (e.g. a checkpoint's
  {"params": state_dict}) as OrderedDicts, one storage per array in the order they are met."""
  path = pathlib.Path(path)
  arrays = []

  def tensors(d: dict) -> collections.OrderedDict:
    out = collections.OrderedDict()
    for k, v in d.items():
      if isinstance(v, dict):
        out[k] = tensors(v)
      else:
        arrays.append(np.array(v, order="C"))  # keeps 0-d arrays 0-d
        out[k] = _Tensor(str(len(arrays) - 1), arrays[-1])
    return out

  obj = tensors(state_dict)
  buf = io.BytesIO()
  _Pickler(buf, protocol=2).dump(obj)
  name = path.stem
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr(f"{name}/data.pkl", buf.getvalue())
    zf.writestr(f"{name}/byteorder", "little")
    for i, a in enumerate(arrays):
      zf.writestr(f"{name}/data/{i}", a.astype(a.dtype.newbyteorder("<")).tobytes())
    zf.writestr(f"{name}/version", "3\n")
  return path
