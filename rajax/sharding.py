"""Device mesh and shardings for data-parallel training.

One mesh axis, "data": the batch is split along it, parameters and optimizer state are replicated.
The axis type is given explicitly (jax.make_mesh's default differs between jax versions) and is
`Auto`: the compiler propagates the batch sharding through the step. `Explicit` sharding-in-types
rejects reshapes that split or merge spatial axes (dm-pix's depth_to_space, i.e. pixel shuffle,
among them), which would force every model and loss to annotate its reshapes. Hosts feed their local slice of each batch and
`global_batch` assembles the global arrays (`jax.make_array_from_process_local_data`), so the
same code runs on one CPU, one multi-GPU host and a multi-host TPU pod.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterator, Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def make_mesh(num_devices: int = -1, devices: list | None = None) -> Mesh:
  """A 1-D mesh over `num_devices` devices (-1: all) with one "data" axis of type Auto."""
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices) if num_devices in (-1, None) else num_devices
  if not 1 <= n <= len(devices):
    raise ValueError(f"mesh.data={num_devices} devices requested but {len(devices)} are available; "
                     "use -1 for all of them.")
  return Mesh(np.asarray(devices[:n]), (DATA,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over "data", other axes whole."""
  return NamedSharding(mesh, P(DATA))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "data.batch_size") -> None:
  n = mesh.shape[DATA]
  if batch_size % n:
    raise ValueError(f"{what}={batch_size} is not divisible by the {n} devices of the mesh; "
                     f"use a multiple of {n}.")


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This host's slice of a batch -> global arrays sharded along "data"."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of `tree` on all devices of `mesh`."""
  return jax.device_put(tree, replicated(mesh))


def prefetch_to_device(batches: Iterator[Mapping[str, np.ndarray]], mesh: Mesh, size: int = 2
                       ) -> Iterator[dict[str, jax.Array]]:
  """Yields `global_batch(b, mesh)` for each host batch b of `batches`, `size` batches ahead.

  A background thread reads the host iterator and starts each batch's transfer to the devices
  while the step runs on the previous ones, so reading, decoding and copying overlap with device
  compute. An exception in the reader is raised here, at the batch where it happened.
  """
  if size < 1:
    raise ValueError(f"prefetch size must be >= 1, got {size}.")
  q: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  done = object()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def fill():
    try:
      for local in batches:
        if not put(global_batch(local, mesh)):
          return
      put(done)
    except BaseException as e:  # handed to the consumer
      put(e)

  thread = threading.Thread(target=fill, name="prefetch_to_device", daemon=True)
  thread.start()
  try:
    while True:
      item = q.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
