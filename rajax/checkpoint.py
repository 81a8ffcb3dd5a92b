"""Checkpoints of a training run: Orbax CheckpointManager over the train state and the data iterator.

Saved per step under `<workdir>/checkpoints/<step>/{state,data}`: "state" is the TrainState
(trainable parameters, BatchNorm statistics, optimizer states, step, PRNG key) and "data" the
grain iterator's position, so a resumed run sees exactly the batches an uninterrupted one would.
Frozen recognizers are not saved: the config names them. Orbax writes each step to a temporary
directory and renames it when complete, so a crash mid-save leaves the previous step intact.
"""

from __future__ import annotations

import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class Checkpoints:
  """Saves and restores (TrainState, data iterator) pairs in `directory`, keeping the newest `keep`."""

  def __init__(self, directory: str | pathlib.Path, *, keep: int = 3):
    self.directory = pathlib.Path(directory).absolute()
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True),
        item_names=("state", "data"),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any) -> None:
    """Starts saving (asynchronously: the arrays are copied to host before this returns)."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)

  def restore(self, step: int, abstract_state: Any, data_iterator: Any) -> Any:
    """The state saved at `step`, laid out like `abstract_state`; `data_iterator` is rewound in place."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return restored["state"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) describing `tree`, for restoring into the same layout."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
