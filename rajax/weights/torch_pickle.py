"""Reading PyTorch checkpoint files (`torch.save`) safely, without torch.

Two on-disk formats exist:

  zip     (torch >= 1.6): a zip archive `<name>/data.pkl` + one raw file per storage `<name>/data/<key>`;
  legacy  (torch < 1.6, or `_use_new_zipfile_serialization=False`): a stream of pickles (magic number,
          protocol version, system info, the object, the list of storage keys) followed by each
          storage as an int64 element count and its raw bytes.

Both pickle the object graph and refer to tensor data through "persistent ids". The unpickler
here resolves only an allow-list of globals (tensor/parameter rebuild functions, typed storage
classes, dtypes and OrderedDict) and refuses anything else, so a checkpoint can never run code
on load. Tensors come back as numpy arrays (bfloat16 via ml_dtypes).
"""

from __future__ import annotations

import collections
import io
import os
import pathlib
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch typed storage class -> numpy dtype
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}
_TORCH_DTYPES = {
    "float64": np.float64, "double": np.float64, "float32": np.float32, "float": np.float32,
    "float16": np.float16, "half": np.float16, "bfloat16": ml_dtypes.bfloat16, "int64": np.int64,
    "long": np.int64, "int32": np.int32, "int": np.int32, "int16": np.int16, "short": np.int16,
    "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}


class UnsafeCheckpointError(pickle.UnpicklingError):
  """The checkpoint references a Python object that is not a tensor or a plain container."""


class CheckpointFormatError(ValueError):
  """The file is not a PyTorch checkpoint that this reader understands."""


class _StorageType:
  """Stands in for a torch typed storage class (torch.FloatStorage, ...): it only carries a dtype."""

  def __init__(self, name: str):
    self.name, self.dtype = name, _STORAGE_DTYPES[name]

  def __repr__(self):
    return f"torch.{self.name}"


class _TorchDtype:
  def __init__(self, name: str):
    self.name, self.dtype = name, np.dtype(_TORCH_DTYPES[name])


class _Storage:
  """A flat buffer of one dtype; filled in after unpickling in the legacy format."""

  def __init__(self, dtype: np.dtype, numel: int, data: np.ndarray | None = None):
    self.dtype, self.numel, self.data = dtype, numel, data

  def array(self) -> np.ndarray:
    if self.data is None:
      raise CheckpointFormatError("a tensor refers to a storage whose data is missing from the file")
    return self.data


class _StorageView:
  """A legacy-format view into part of another storage (offset and size in elements)."""

  def __init__(self, base: _Storage, offset: int, size: int):
    self.base, self.offset, self.size, self.dtype = base, offset, size, base.dtype

  def array(self) -> np.ndarray:
    return self.base.array()[self.offset:self.offset + self.size]


class _LazyTensor:
  """A tensor whose storage bytes may not have been read yet (legacy format reads them last)."""

  def __init__(self, storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...], dtype=None):
    self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)
    self.dtype = np.dtype(dtype) if dtype is not None else storage.dtype

  def materialise(self) -> np.ndarray:
    flat = self.storage.array()
    if flat.dtype != self.dtype:  # an untyped (byte) storage read with the tensor's dtype
      flat = flat.view(self.dtype)
    n = int(np.prod(self.size)) if self.size else 1
    if n == 0:
      return np.zeros(self.size, self.dtype)
    last = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride))
    if self.offset < 0 or last >= flat.size:
      raise CheckpointFormatError(
          f"a tensor of shape {self.size} (offset {self.offset}, stride {self.stride}) reaches past the end of "
          f"its storage of {flat.size} elements: the file is truncated or corrupt")
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[self.offset:], shape=self.size, strides=tuple(st * item for st in self.stride), writeable=False)
    return np.array(view, order="C")  # a compact C-order copy that owns its memory


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
  return _LazyTensor(storage, storage_offset, size, stride, dtype=dtype.dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
  return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
    **{("torch", name): _TorchDtype(name) for name in _TORCH_DTYPES},
    ("torch", "UntypedStorage"): "UntypedStorage",
    ("torch.storage", "UntypedStorage"): "UntypedStorage",
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the allow-listed globals; everything else raises UnsafeCheckpointError."""

  def __init__(self, file: BinaryIO, persistent_load, source: str):
    super().__init__(file, encoding="latin1")
    self._persistent_load, self._source = persistent_load, source

  def find_class(self, module: str, name: str):
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise UnsafeCheckpointError(
          f"{self._source} references the Python object {module}.{name}, which is not a tensor or a plain "
          "container. rajax reads only state dicts of tensors and refuses to run code from a checkpoint; "
          "re-save the file as `torch.save(model.state_dict(), path)` or as .safetensors.") from None

  def persistent_load(self, pid):
    return self._persistent_load(pid)


def _decode(x):
  return x.decode("ascii") if isinstance(x, bytes) else x


def _storage_dtype(storage_type, source: str) -> np.dtype | None:
  if isinstance(storage_type, _StorageType):
    return storage_type.dtype
  if storage_type == "UntypedStorage":
    return None
  raise CheckpointFormatError(f"{source}: unknown storage type {storage_type!r}")


def _read_zip(path: pathlib.Path, source: str) -> Any:
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkls = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
      raise CheckpointFormatError(
          f"{source} is a zip file but not a torch checkpoint (expected one '<name>/data.pkl', found {pkls}). "
          "TorchScript archives (torch.jit.save) are not supported: save the state dict with torch.save.")
    prefix = pkls[0][: -len("data.pkl")]
    byteorder = "little"
    if f"{prefix}byteorder" in names:
      byteorder = zf.read(f"{prefix}byteorder").decode().strip()
    storages: dict[str, _Storage] = {}

    def persistent_load(pid):
      kind = _decode(pid[0])
      if kind != "storage":
        raise CheckpointFormatError(f"{source}: unsupported persistent id kind {kind!r}")
      storage_type, key, _location, numel = pid[1], _decode(pid[2]), pid[3], int(pid[4])
      dtype = _storage_dtype(storage_type, source)
      if key not in storages:
        try:
          raw = zf.read(f"{prefix}data/{key}")
        except KeyError:
          raise CheckpointFormatError(f"{source}: storage {key} is missing from the archive (truncated file?)") from None
        dt = np.dtype(np.uint8) if dtype is None else dtype
        dt = dt.newbyteorder("<" if byteorder == "little" else ">") if dt.itemsize > 1 else dt
        if len(raw) < numel * dt.itemsize:
          raise CheckpointFormatError(f"{source}: storage {key} has {len(raw)} bytes, expected {numel * dt.itemsize}")
        data = np.frombuffer(raw, dtype=dt, count=numel).astype(dt.newbyteorder("="), copy=False)
        storages[key] = _Storage(data.dtype, numel, data)
      return storages[key]

    with zf.open(pkls[0]) as f:
      return _RestrictedUnpickler(io.BytesIO(f.read()), persistent_load, source).load()


def _read_legacy(path: pathlib.Path, source: str) -> Any:
  storages: dict[str, _Storage] = {}

  def no_persistent(pid):
    raise CheckpointFormatError(f"{source}: unexpected tensor reference in the file header")

  def persistent_load(pid):
    kind = _decode(pid[0])
    if kind != "storage":
      raise CheckpointFormatError(
          f"{source}: unsupported persistent id kind {kind!r} (a pickled nn.Module?); "
          "save the state dict with torch.save(model.state_dict(), path).")
    storage_type, root_key, _location, numel, view_metadata = pid[1:6]
    dtype = _storage_dtype(storage_type, source)
    if dtype is None:
      raise CheckpointFormatError(f"{source}: untyped storage in a legacy-format file")
    root_key = _decode(root_key)
    if root_key not in storages:
      storages[root_key] = _Storage(dtype, int(numel))
    base = storages[root_key]
    if view_metadata is not None:
      _view_key, offset, view_size = view_metadata
      return _StorageView(base, int(offset), int(view_size))
    return base

  with open(path, "rb") as f:
    try:
      magic = _RestrictedUnpickler(f, no_persistent, source).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
      if isinstance(e, UnsafeCheckpointError):
        raise
      raise CheckpointFormatError(f"{source} is not a PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if magic != _LEGACY_MAGIC:
      raise CheckpointFormatError(f"{source} is not a PyTorch checkpoint (bad magic number)")
    protocol = _RestrictedUnpickler(f, no_persistent, source).load()
    if protocol != _LEGACY_PROTOCOL:
      raise CheckpointFormatError(f"{source}: unsupported legacy torch protocol version {protocol}")
    sys_info = _RestrictedUnpickler(f, no_persistent, source).load()
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    result = _RestrictedUnpickler(f, persistent_load, source).load()
    keys = _RestrictedUnpickler(f, no_persistent, source).load()
    for key in keys:
      key = _decode(key)
      st = storages.get(key)
      if st is None:
        raise CheckpointFormatError(f"{source}: storage {key} is listed but never used")
      header = f.read(8)
      if len(header) < 8:
        raise CheckpointFormatError(f"{source} is truncated: storage {key} is missing")
      (numel,) = struct.unpack("<q" if little else ">q", header)
      dt = st.dtype.newbyteorder("<" if little else ">") if st.dtype.itemsize > 1 else st.dtype
      raw = f.read(numel * dt.itemsize)
      if len(raw) < numel * dt.itemsize:
        raise CheckpointFormatError(f"{source} is truncated: storage {key} has {len(raw)} of "
                                    f"{numel * dt.itemsize} bytes")
      st.data = np.frombuffer(raw, dtype=dt).astype(st.dtype, copy=False)
      st.numel = numel
  return result


def _materialise(obj: Any) -> Any:
  if isinstance(obj, _LazyTensor):
    return obj.materialise()
  if isinstance(obj, dict):
    return type(obj)((k, _materialise(v)) for k, v in obj.items()) if isinstance(obj, collections.OrderedDict) \
        else {k: _materialise(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(v) for v in obj)
  return obj


def load(path: str | os.PathLike) -> Any:
  """Reads a `torch.save` file (zip or legacy format) into plain Python containers of numpy arrays.

  Raises UnsafeCheckpointError if the file references any object other than tensors, typed
  storages, dtypes and OrderedDicts, and CheckpointFormatError if it is not a readable checkpoint.
  """
  path = pathlib.Path(path)
  source = str(path)
  if zipfile.is_zipfile(path):
    obj = _read_zip(path, source)
  else:
    with open(path, "rb") as f:
      head = f.read(2)
    if head[:1] != b"\x80":  # every torch pickle starts with the PROTO opcode
      kind = "a tar archive (torch < 0.4 format)" if _is_tar(path) else "not a pickle"
      raise CheckpointFormatError(f"{source} is not a PyTorch checkpoint that can be read: {kind}.")
    obj = _read_legacy(path, source)
  return _materialise(obj)


def _is_tar(path: pathlib.Path) -> bool:
  import tarfile
  try:
    return tarfile.is_tarfile(path)
  except OSError:
    return False
