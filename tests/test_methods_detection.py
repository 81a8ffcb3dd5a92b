"""Every method works with a detector wherever it works with a classifier: the methods reach R
only through its task (rajax.tasks.detection for a Detector), so a detector's own loss, features
and pseudo-targets take the place of the cross-entropy, the logits and the top-1 labels.

The detector is tests/toy_detector.py (a few convolutions of the DetectorModel contract, with a
BatchNorm), so each check compiles in seconds; each recomputes the step's recognition term from
the detector itself, outside the step.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toy_detector
from rajax import config as config_lib
from rajax import methods, networks, optim, sharding
from rajax.detection import BoxTargets, zoo
from rajax.tasks import detection as detection_task

B, N = 2, 3


@pytest.fixture(autouse=True)
def _toy_in_the_zoo(monkeypatch):
  monkeypatch.setattr(zoo, "_FAMILIES", (*zoo._FAMILIES, "toy_detector"))


def _config(name, **fields):
  c = config_lib.base(task="sr", method=name, recognizer="toy_detector")
  c.degrade.scale = 2
  c.processor.update(dict(blocks=1, channels=8))
  c.transformer.update(dict(blocks=1, channels=4))
  c.recognizer.num_classes = 3
  c.recognizer.weights = "random"
  c.data.update(dict(source="synthetic", crop=16, resize=0, batch_size=B, eval_batch_size=B))
  if "layers" in c.method:
    c.method.layers = ("conv",)
  for path, value in fields.items():
    *parents, leaf = path.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


class Built:
  def __init__(self, config, mesh=None):
    config_lib.validate(config)
    self.spec = methods.get(config.method.name)
    self.frozen = networks.frozen_networks(config, self.spec)
    self.modules = networks.trained_modules(config, self.spec)
    optimizers = optim.make_optimizers(config.optim, self.spec.trains, 100, 100)
    self.method = methods.build(methods.Setup(config=config, modules=self.modules, optimizers=optimizers,
                                              input_shape=networks.input_shape(config)))
    self.state = jax.jit(self.method.init)(jax.random.PRNGKey(0), networks.initial_variables(config, self.spec,
                                                                                            self.modules))
    if mesh is None:
      self.step = jax.jit(self.method.train_step)
    else:
      rep, bat = sharding.replicated(mesh), sharding.batch_sharded(mesh)
      jitted = jax.jit(self.method.train_step, in_shardings=(rep, bat, rep), out_shardings=(rep, rep))

      def step(state, batch, frozen):
        with jax.set_mesh(mesh):
          return jitted(jax.device_put(state, rep), sharding.global_batch(batch, mesh), jax.device_put(frozen, rep))
      self.step = step

  def detector(self):
    return self.frozen.get("recognizer") or self.modules["recognizer"]


def _batch(seed=0, b=B):
  rng = np.random.default_rng(seed)
  xy = rng.uniform(0, 8, (b, N, 2)).astype(np.float32)
  wh = rng.uniform(4, 8, (b, N, 2)).astype(np.float32)
  return {"input": rng.integers(0, 256, (b, 8, 8, 3), dtype=np.uint8),
          "target": rng.integers(0, 256, (b, 16, 16, 3), dtype=np.uint8),
          "boxes": np.concatenate([xy, np.minimum(xy + wh, 16)], -1),
          "labels": rng.integers(1, 3, (b, N)).astype(np.int32),
          "valid": np.array([[True, True, False], [True, False, False]] * (b // 2)),
          "difficult": np.zeros((b, N), bool)}


def _targets(batch):
  return BoxTargets(jnp.asarray(batch["boxes"]), jnp.asarray(batch["labels"]), jnp.asarray(batch["valid"]),
                    jnp.asarray(batch["difficult"]))


def _p_out(b, batch):
  """P's training-mode output, as the step computes it."""
  p = b.modules["processor"]
  return p.apply(b.state.variables("processor"), jnp.asarray(batch["input"], jnp.float32) / 255.0, train=True,
                 mutable=["batch_stats"])[0]


def _loss(detector, images, targets):
  return float(jnp.mean(detector.loss(images, targets)[0]))


def test_ra_with_a_detector_adds_the_detectors_own_loss_on_p_output():
  b = Built(_config("ra", **{"method.lam": 0.5}))
  batch = _batch()
  new, m = b.step(b.state, batch, b.frozen)
  expected = _loss(b.detector(), _p_out(b, batch), _targets(batch))
  np.testing.assert_allclose(float(m["recognition"]), expected, rtol=1e-5)
  np.testing.assert_allclose(float(m["loss"]), float(m["pixel_mse"]) + 0.5 * expected, rtol=1e-5)
  assert "top1" not in m   # a detector has no top-1 for a step to log
  # the boxes matter: moving them changes the term (a step that ignored the targets would not)
  moved = dict(batch, boxes=np.roll(batch["boxes"], 1, axis=0), labels=3 - batch["labels"])
  _, other = b.step(b.state, moved, b.frozen)
  assert abs(float(other["recognition"]) - expected) > 1e-4


@pytest.mark.heavy   # 5-10 s of a 2-core CI; `python -m pytest -m heavy` runs it
def test_ra_with_unlabelled_images_trains_on_the_detectors_own_detections_of_the_clean_image():
  b = Built(_config("ra", labels="recognizer"))
  batch = {k: v for k, v in _batch(1).items() if k in ("input", "target")}
  _, m = b.step(b.state, batch, b.frozen)
  det = b.detector()
  pseudo, _ = detection_task.pseudo_targets(det(jnp.asarray(batch["target"], jnp.float32) / 255.0))
  assert bool(jnp.any(pseudo.valid))
  np.testing.assert_allclose(float(m["recognition"]), _loss(det, _p_out(b, batch), pseudo), rtol=1e-5)


def test_a_batch_without_boxes_and_dataset_labels_is_refused_naming_the_fix():
  b = Built(_config("ra"))
  batch = {k: v for k, v in _batch().items() if k in ("input", "target")}
  with pytest.raises(ValueError, match="labels='recognizer'"):
    b.step(b.state, batch, b.frozen)


def test_unsupervised_ra_with_a_detector_compares_its_features_of_p_output_and_clean_image():
  b = Built(_config("unsupervised", **{"method.distance": "feature_mse"}))
  batch = _batch(2)
  _, m = b.step(b.state, batch, b.frozen)
  det = b.detector()
  f_out = det.features(_p_out(b, batch))["conv"]
  f_clean = det.features(jnp.asarray(batch["target"], jnp.float32) / 255.0)["conv"]
  np.testing.assert_allclose(float(m["recognition"]), float(jnp.mean((f_out - f_clean) ** 2)), rtol=1e-5)


@pytest.mark.heavy   # 10-25 s of a 2-core CI; `python -m pytest -m heavy` runs it
def test_transformer_with_a_detector_gives_p_no_recognition_gradient():
  batch = _batch(3)
  runs = {}
  for lam in (0.0, 1.0):
    b = Built(_config("transformer", **{"method.lam": lam}))
    runs[lam] = b.step(b.state, batch, b.frozen)[0]
  same = jax.tree.map(np.array_equal, runs[0.0].params["processor"], runs[1.0].params["processor"])
  assert all(jax.tree.leaves(same))
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, runs[0.0].params["transformer"],
                                              runs[1.0].params["transformer"])))


@pytest.mark.parametrize("bn", ["batch", "frozen"])
def test_ra_joint_trains_the_detector_with_p(bn):
  b = Built(_config("ra_joint", **{"method.recognizer_bn": bn}))
  batch = _batch(4)
  new, m = b.step(b.state, batch, b.frozen)
  det = b.modules["recognizer"]
  variables = b.state.variables("recognizer")
  per, _, _ = det.loss(_p_out(b, batch), _targets(batch), variables=variables, train=bn == "batch")
  np.testing.assert_allclose(float(m["recognition"]), float(jnp.mean(per)), rtol=1e-5)
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, new.params["recognizer"], b.state.params["recognizer"])))
  stats_moved = not all(jax.tree.leaves(jax.tree.map(np.array_equal, new.batch_stats["recognizer"],
                                                     b.state.batch_stats["recognizer"])))
  assert stats_moved == (bn == "batch")


def test_a_detector_is_trained_on_clean_images_with_its_own_loss():
  """recognizer_on_clean with a detector: its training on the dataset's boxes (the paper's loss
  detectors on VOC), through its loss in training mode."""
  b = Built(_config("recognizer_on_clean"))
  batch = _batch(7)
  new, m = b.step(b.state, batch, b.frozen)
  det = b.modules["recognizer"]
  clean = jnp.asarray(batch["target"], jnp.float32) / 255.0
  per, _, stats = det.loss(clean, _targets(batch), variables=b.state.variables("recognizer"), train=True)
  np.testing.assert_allclose(float(m["recognition"]), float(jnp.mean(per)), rtol=1e-5)
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, new.params["recognizer"], b.state.params["recognizer"])))
  np.testing.assert_allclose(new.batch_stats["recognizer"]["bn"]["mean"], stats["bn"]["mean"], rtol=1e-6)


def test_perceptual_loss_with_a_detector_compares_its_feature_maps():
  b = Built(_config("perceptual", **{"method.lam": 1.0}))
  batch = _batch(5)
  _, m = b.step(b.state, batch, b.frozen)
  det = b.detector()
  f_out = det.features(_p_out(b, batch))["conv"]
  f_clean = det.features(jnp.asarray(batch["target"], jnp.float32) / 255.0)["conv"]
  np.testing.assert_allclose(float(m["recognition"]), float(jnp.mean((f_out - f_clean) ** 2)), rtol=1e-5)


def test_evaluation_steps_score_the_detections_of_the_methods_machine_images():
  b = Built(_config("ra"))
  batch = dict(_batch(6), mask=np.ones(B, np.float32))
  sums = jax.jit(methods.make_eval_step(b.method, b.modules))(b.state, batch, b.frozen)
  outputs, targets = jax.jit(methods.make_predict_step(b.method, b.modules))(b.state, batch, b.frozen)
  views = b.method.forward(b.state.all_variables(), b.frozen, jnp.asarray(batch["input"], jnp.float32) / 255.0)
  expected = b.detector()(views["machine"])
  np.testing.assert_allclose(outputs.scores, expected.scores, rtol=1e-6)
  np.testing.assert_array_equal(targets.valid, batch["valid"])
  counts = detection_task.metrics(expected, _targets(batch))
  np.testing.assert_allclose(float(sums["num_gt"]), float(jnp.sum(counts["num_gt"])))
  assert float(sums["num_gt"]) == 3.0


def test_a_classifier_distance_for_a_detector_is_refused_naming_the_detectors_distances():
  with pytest.raises(config_lib.ConfigError, match="not a distance between detection outputs.*feature_mse"):
    config_lib.validate(_config("unsupervised", **{"method.distance": "prob_mse"}))


@pytest.mark.parametrize("name", ["ra", pytest.param("ra_joint", marks=pytest.mark.heavy)])
def test_sharded_step_with_a_detector_equals_the_single_device_step(name):
  """8 fake devices agree with one: the detector's per-image loss and its BatchNorm statistics
  (ra_joint trains it) are the same when the batch is split across devices."""
  cfg = _config(name, **{"optim.processor.name": "sgd", "data.batch_size": 8, "data.eval_batch_size": 8})
  one, eight = Built(cfg), Built(cfg, sharding.make_mesh(8))
  batch = _batch(9, b=8)
  s1, m1 = one.step(one.state, batch, one.frozen)
  s8, m8 = eight.step(eight.state, batch, eight.frozen)
  chex.assert_trees_all_close(jax.device_get(s1.params), jax.device_get(s8.params), rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(jax.device_get(s1.batch_stats), jax.device_get(s8.batch_stats), rtol=1e-4, atol=1e-5)
  for k in m1:
    np.testing.assert_allclose(float(m1[k]), float(m8[k]), rtol=1e-4, err_msg=k)
