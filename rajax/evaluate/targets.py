"""Evaluation targets: the recognizers whose predictions the tables report, one column each.

A target maps a batch of float images in [0, 1] shaped [B, H, W, 3] to per-example outputs:

  ZooTarget       a `rajax.recognizer` (or any `Recognizer`): runs jitted on the device mesh, its
                  variables replicated and the batch sharded;
  OnnxTarget      an ONNX classifier run by onnxruntime on the host (a black box, like a cloud API);
  CallableTarget  any Python function images -> labels [B] or logits [B, K], run on the host.

Every target's outputs go through `summarise`: the top-k class indices (k = min(5, K)) and, for
targets that give logits, the best class within each half of `rajax.tasks.classification.class_halves(K, seed)` (the
category-transfer table's subset predictions). A target that returns only labels has top-1 and
no subset predictions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rajax.tasks.classification import class_halves

TOPK = 5


class TargetError(ValueError):
  """A target is misconfigured or returned outputs of the wrong shape."""


def summarise(logits, *, seed: int, xp=jnp) -> dict:
  """logits [B, K] -> {"topk": [B, min(5, K)] class indices, best first; "sub_A", "sub_B": [B] class ids}.

  `xp` is jax.numpy (on device, inside jit) or numpy (black-box targets on the host).
  """
  k = min(TOPK, logits.shape[-1])
  if xp is jnp:
    topk = jax.lax.top_k(logits, k)[1]
  else:
    topk = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
  out = {"topk": topk.astype(xp.int32)}
  if logits.shape[-1] >= 2:
    for half, classes in zip("AB", class_halves(logits.shape[-1], seed)):
      idx = xp.asarray(classes, dtype=xp.int32)
      out[f"sub_{half}"] = idx[xp.argmax(xp.take(logits, idx, axis=-1), axis=-1)].astype(xp.int32)
  return out


def _file_digest(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with path.open("rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


@dataclasses.dataclass
class ZooTarget:
  """A `Recognizer` evaluated on device. `key` identifies its weights for the prediction cache."""

  name: str
  recognizer: Any
  key: str
  on_device = True

  @property
  def num_classes(self) -> int:
    return self.recognizer.num_classes

  def logits(self, recognizer, images: jax.Array) -> jax.Array:
    """Traced inside the evaluator's jitted functions (the recognizer is an argument)."""
    return recognizer(images).astype(jnp.float32)


@dataclasses.dataclass
class HostTarget:
  """Base of the black-box targets: called on host numpy batches."""

  name: str
  key: str
  on_device = False

  def outputs(self, images: np.ndarray, *, seed: int) -> dict:
    out = np.asarray(self.predict(images))
    if out.ndim == 1:
      if out.shape[0] != images.shape[0]:
        raise TargetError(f"Target {self.name!r} returned {out.shape[0]} labels for {images.shape[0]} images.")
      return {"topk": out.astype(np.int32)[:, None]}
    if out.ndim != 2 or out.shape[0] != images.shape[0]:
      raise TargetError(f"Target {self.name!r} must return labels [B] or logits [B, K] for {images.shape[0]} "
                        f"images; got shape {out.shape}.")
    return summarise(out.astype(np.float32), seed=seed, xp=np)

  def predict(self, images: np.ndarray) -> np.ndarray:
    raise NotImplementedError


@dataclasses.dataclass
class CallableTarget(HostTarget):
  """Any function from float32 images [B, H, W, 3] in [0, 1] to labels [B] or logits [B, K]."""

  fn: Callable[[np.ndarray], Any] = None

  def predict(self, images: np.ndarray) -> np.ndarray:
    return self.fn(images)


@dataclasses.dataclass
class OnnxTarget(HostTarget):
  """An ONNX classifier: images are normalised ((x - mean) / std), laid out as `layout` and fed to
  the model's first input; its first output must be logits [B, K]."""

  path: str = ""
  layout: str = "NCHW"
  mean: tuple = (0.0, 0.0, 0.0)
  std: tuple = (1.0, 1.0, 1.0)
  session: Any = None

  def __post_init__(self):
    if self.layout not in ("NCHW", "NHWC"):
      raise TargetError(f"ONNX target {self.name!r}: layout={self.layout!r} must be 'NCHW' or 'NHWC'.")
    try:
      import onnxruntime
    except ImportError as e:
      raise TargetError("ONNX targets need onnxruntime: pip install onnxruntime") from e
    file = pathlib.Path(self.path).expanduser()
    if not file.is_file():
      raise TargetError(f"ONNX target {self.name!r}: no model file at {file.resolve()}; set its `path`.")
    try:
      self.session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types on bad files
      raise TargetError(f"ONNX target {self.name!r}: cannot load {file} ({type(e).__name__}: {e}).") from e
    self._input = self.session.get_inputs()[0].name

  def predict(self, images: np.ndarray) -> np.ndarray:
    x = (images - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
    if self.layout == "NCHW":
      x = x.transpose(0, 3, 1, 2)
    return self.session.run(None, {self._input: np.ascontiguousarray(x, dtype=np.float32)})[0]


def build(name: str, spec, *, compute_dtype: str = "float32", seed: int = 0):
  """A target from its config section: kind "zoo" | "onnx" | "callable" | "run" (the recognizer a
  training run trained: `run` is its workdir)."""
  from rajax.models import recognizer

  kind = spec.get("kind", "zoo")
  if kind == "zoo":
    arch = spec.get("name", name)
    weights = spec.get("weights", None)
    options = dict(spec.get("options", {}) or {})
    num_classes = spec.get("num_classes", 1000)   # None: the architecture's own (a detector's)
    rec = recognizer(arch, weights, num_classes=num_classes, dtype=compute_dtype, seed=spec.get("seed", seed),
                     **options)
    if weights == "random":
      wkey = f"random:{spec.get('seed', seed)}"
    elif weights is None and getattr(rec, "task", "classification") in ("detection", "segmentation"):
      wkey = "variables:" + tree_digest(rec.variables)   # a detector's or segmenter's weights: a fetched asset
    elif weights is None:
      wkey = "bundled:" + _file_digest(_bundled(arch))
    else:
      wkey = _file_digest(pathlib.Path(weights).expanduser())
    key = json.dumps(["zoo", arch, num_classes, sorted(options.items()), wkey, compute_dtype])
    return ZooTarget(name=name, recognizer=rec, key=key)
  if kind == "onnx":
    path = spec.get("path", "")
    if not path:
      raise TargetError(f"ONNX target {name!r} needs `path` (the .onnx file).")
    t = OnnxTarget(name=name, key="", path=path, layout=spec.get("layout", "NCHW"),
                   mean=tuple(spec.get("mean", (0.0, 0.0, 0.0))), std=tuple(spec.get("std", (1.0, 1.0, 1.0))))
    t.key = json.dumps(["onnx", _file_digest(pathlib.Path(path).expanduser()), t.layout, t.mean, t.std])
    return t
  if kind == "callable":
    ref = spec.get("fn", "")
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
      raise TargetError(f"Callable target {name!r}: fn={ref!r} must look like 'package.module:function'.")
    try:
      fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
      raise TargetError(f"Callable target {name!r}: cannot import {ref!r} ({e}).") from e
    return CallableTarget(name=name, key=json.dumps(["callable", ref, spec.get("version", "")]), fn=fn)
  if kind == "run":
    from rajax import runs
    path = spec.get("run", "")
    try:
      run = runs.load(path, compute_dtype=compute_dtype)
    except runs.RunError as e:
      raise TargetError(f"Target {name!r}: {e}") from None
    if run.recognizer is None:
      raise TargetError(f"Target {name!r}: the run in {path} (method {run.spec.name!r}) trains no recognizer; "
                        "a run target is the recognizer a method trained.")
    return ZooTarget(name=name, recognizer=run.recognizer, key=json.dumps(["run", run.key, compute_dtype]))
  raise TargetError(f"Target {name!r}: unknown kind {kind!r}; use 'zoo', 'onnx', 'callable' or 'run'.")


def wrap(name: str, obj) -> ZooTarget | HostTarget:
  """A target from a Python object: a `Recognizer` (on device) or a callable images -> labels/logits.

  The cache key of a callable is its qualified name; give it a `cache_key` attribute to say
  when its predictions change.
  """
  from rajax.models import Recognizer

  if isinstance(obj, (ZooTarget, HostTarget)):
    return obj
  from rajax.detection import Detector
  from rajax.segmentation.segmenter import Segmenter
  if isinstance(obj, (Recognizer, Detector, Segmenter)):
    return ZooTarget(name=name, recognizer=obj, key=json.dumps(["recognizer", obj.name, tree_digest(obj.variables)]))
  if callable(obj):
    key = getattr(obj, "cache_key", f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}")
    return CallableTarget(name=name, key=json.dumps(["callable", key]), fn=obj)
  raise TargetError(f"Target {name!r}: expected a Recognizer or a callable, got {type(obj).__name__}.")


def tree_digest(tree) -> str:
  """sha256 of a pytree's leaves (a recognizer's weights), for cache keys."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):
    digest.update(np.asarray(leaf).tobytes())
  return digest.hexdigest()


def task_of(spec) -> str:
  """"detection", "segmentation" or "classification": which task a target section's recognizer solves,
  without building it (a zoo name the detector or segmenter zoo knows, a run trained with one, or the
  section's own `task`)."""
  if spec.get("task"):
    return spec.get("task")
  kind = spec.get("kind", "zoo")
  if kind == "zoo":
    return zoo_task(spec.get("name", ""))
  if kind == "run":
    from rajax import runs
    try:
      return zoo_task(runs.read_config(spec.get("run", "")).recognizer.name)
    except runs.RunError:
      return "classification"
  return "classification"


def zoo_task(name: str) -> str:
  """The task of zoo recognizer `name`: "detection" (the detector zoo), "segmentation" (the segmenter
  zoo) or "classification" (everything else)."""
  from rajax.detection import zoo as detector_zoo
  from rajax.segmentation import zoo as segmenter_zoo
  if name in detector_zoo.available():
    return "detection"
  if name in segmenter_zoo.available():
    return "segmentation"
  return "classification"


def object_task(obj) -> str:
  """The task of a built target's recognizer (a Detector, a Segmenter, else classification)."""
  from rajax.detection import Detector
  from rajax.segmentation.segmenter import Segmenter
  rec = getattr(obj, "recognizer", None)
  if isinstance(rec, Detector):
    return "detection"
  if isinstance(rec, Segmenter):
    return "segmentation"
  return "classification"


def _bundled(arch: str) -> pathlib.Path:
  from rajax.weights import bundled
  return pathlib.Path(bundled.bundled_path(arch))
