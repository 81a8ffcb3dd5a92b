"""Data-parallel step on 8 fake CPU devices: same result as one device, replicated outputs, donation."""

import chex
import jax
import numpy as np
import optax
import pytest
from flax import traverse_util

import rajax
from rajax import sharding
from rajax.methods import ra


def _run(mesh, mode, batches):
  nets = {"processor": rajax.processor("srresnet", scale=2, blocks=1, channels=8),
          "transformer": rajax.processor("resnet_generator", blocks=1, channels=4)}
  rec = jax.device_put(rajax.recognizer("resnet18", "random", num_classes=10, width=4, seed=3), sharding.replicated(mesh))
  settings = ra.Settings(mode=mode, lam=0.1)
  # SGD, not Adam: a conv bias that feeds BatchNorm has a true gradient of zero, and Adam's division by
  # sqrt(v) turns the float rounding noise left in it into learning-rate-sized steps whose sign differs
  # between reduction orders. With SGD an update is proportional to its gradient, so rounding stays rounding.
  txs = {n: optax.sgd(0.1, momentum=0.9) for n in settings.trains}
  rep, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  method = ra.make_method(settings, nets, txs, (8, 8, 3))
  state = jax.jit(method.init, out_shardings=rep)(jax.random.PRNGKey(0))
  step = jax.jit(method.train_step, in_shardings=(rep, data, rep), out_shardings=(rep, rep), donate_argnums=(0,))
  history = []
  for b in batches:
    old = state
    state, metrics = step(state, sharding.global_batch(b, mesh), {"recognizer": rec})
    history.append((old, metrics))
  return state, history


@pytest.fixture(scope="module")
def batches():
  rng = np.random.default_rng(0)
  return [{"input": rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8),
           "target": rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
           "label": rng.integers(0, 10, (16,)).astype(np.int32)} for _ in range(2)]


def test_eight_fake_devices_are_available():
  assert jax.device_count() == 8, "tests/conftest.py sets XLA_FLAGS for 8 CPU devices"


@pytest.mark.parametrize("mode", ["ra", "transformer"])
def test_sharded_step_equals_single_device_step(mode, batches):
  init, _ = _run(sharding.make_mesh(1), mode, [])
  one, _ = _run(sharding.make_mesh(1), mode, batches)
  eight, history = _run(sharding.make_mesh(8), mode, batches)
  # Batch statistics are global (the compiler all-reduces them), so the results agree to float rounding.
  # The absolute tolerance covers conv biases that feed BatchNorm: their true gradient is zero, so their
  # values after two steps are pure rounding noise (~1e-4) that differs with the reduction order.
  if mode == "ra":
    chex.assert_trees_all_close(jax.device_get(one.params), jax.device_get(eight.params), rtol=2e-5, atol=1e-5)
    chex.assert_trees_all_close(jax.device_get(one.batch_stats), jax.device_get(eight.batch_stats),
                                rtol=2e-5, atol=1e-5)
  else:
    # T's BatchNorm layers see P's nearly constant output, whose variance (E[x^2] - E[x]^2 in float32)
    # cancels badly, so the reduction order moves T's two updates by up to ~2% on some CPUs (measured
    # on a Sapphire Rapids Xeon; well below 2e-5 on an AMD EPYC). A step that split the batch wrongly
    # (per-device losses or statistics, a missing gradient all-reduce) moves them by tens of percent.
    for tree in ("params", "batch_stats"):
      start, a, b = (traverse_util.flatten_dict(jax.device_get(getattr(s, tree)), sep="/") for s in (init, one, eight))
      for k in a:
        scale = np.abs(a[k] - start[k]).max()
        assert np.abs(a[k] - b[k]).max() <= 0.05 * scale + 1e-5, (tree, k, np.abs(a[k] - b[k]).max(), scale)
  for leaf in jax.tree.leaves(eight):
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8
  for _, metrics in history:
    for v in metrics.values():
      assert v.sharding.is_fully_replicated
  # The state passed in was donated to the step: its buffers are gone.
  old_state, _ = history[-1]
  assert all(leaf.is_deleted() for leaf in jax.tree.leaves(old_state))


def test_global_batch_is_split_along_data_axis(batches):
  mesh = sharding.make_mesh(8)
  g = sharding.global_batch(batches[0], mesh)
  assert g["input"].shape == (16, 8, 8, 3)
  shards = g["input"].addressable_shards
  assert len(shards) == 8 and all(s.data.shape == (2, 8, 8, 3) for s in shards)
  np.testing.assert_array_equal(np.asarray(g["input"]), batches[0]["input"])


def test_mesh_and_batch_errors():
  with pytest.raises(ValueError, match="available"):
    sharding.make_mesh(16)
  with pytest.raises(ValueError, match="divisible"):
    sharding.check_batch_size(20, sharding.make_mesh(8))
  assert sharding.make_mesh(-1).shape["data"] == 8
