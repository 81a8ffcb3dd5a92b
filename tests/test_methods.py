"""Every registered method, as a specification: what it trains, what gets gradients, which BatchNorm
statistics move, what its recognizer is fed, sharded equals single-device, and exact resume.

Each method is built the way the trainer builds it (`rajax.networks` from a config,
`rajax.methods.build`) on tiny networks: P a 1-block SRResNet x2, T a 1-block ResNet generator, R a
narrow ResNet-18 with random weights, 16x16 targets.
"""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rajax import config as config_lib
from rajax import losses, methods, networks, optim, runs, sharding, train
from rajax import weights as weights_lib
from rajax.methods import base, npp, vrdir

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
BATCH = 8


def _config(name, **fields):
  c = config_lib.base(task="sr", method=name, recognizer="resnet18")
  c.degrade.scale = 2
  c.processor.update(dict(blocks=1, channels=8))
  c.transformer.update(dict(blocks=1, channels=4))
  c.recognizer.update(dict(num_classes=10, width=4))
  c.recognizer.weights = "random"
  c.data.update(dict(source="synthetic", crop=16, resize=0, batch_size=BATCH, eval_batch_size=BATCH))
  if "layers" in c.method:
    c.method.layers = ("layer3", "layer4")
  for path, value in fields.items():
    *parents, leaf = path.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


@pytest.fixture(scope="module")
def processor_file(tmp_path_factory):
  """A fixed P (random weights, random BatchNorm statistics) for recognizer_on_processor."""
  c = _config("plain")
  net = networks.module(c, "processor")
  v = base.init_variables(net, jax.random.key(7), jnp.zeros((1, 8, 8, 3)))
  v["batch_stats"] = jax.tree.map(lambda s: s + 0.1, v["batch_stats"])
  path = tmp_path_factory.mktemp("fixed_p") / "processor.msgpack"
  weights_lib.save(path, jax.device_get(v))
  return str(path)


@pytest.fixture(scope="module")
def recognizer_file(tmp_path_factory):
  """R's random weights written to a file: R "starting from trained weights" for labels='recognizer'."""
  rec = networks.module(_config("ra"), "recognizer")
  path = tmp_path_factory.mktemp("fixed_r") / "recognizer.msgpack"
  weights_lib.save(path, jax.device_get(dict(rec.variables)))
  return str(path)


def _fields(name, processor_file):
  return {"method.processor_weights": processor_file} if "processor_weights" in methods.get(name).defaults() else {}


class Built:
  """A method built from its config as the trainer builds it, its first state and a jitted step."""

  def __init__(self, config, mesh=None):
    config_lib.validate(config)
    self.config = config
    self.spec = methods.get(config.method.name)
    self.mesh = mesh or sharding.make_mesh(1)
    rep, bat = sharding.replicated(self.mesh), sharding.batch_sharded(self.mesh)
    self.frozen = jax.device_put(networks.frozen_networks(config, self.spec), rep)
    self.modules = networks.trained_modules(config, self.spec)
    self.optimizers = optim.make_optimizers(config.optim, self.spec.trains, 100, 100)
    self.method = methods.build(methods.Setup(config=config, modules=self.modules, optimizers=self.optimizers,
                                              input_shape=networks.input_shape(config)))
    initial = networks.initial_variables(config, self.spec, self.modules)
    self.state = jax.jit(self.method.init, out_shardings=rep)(jax.random.PRNGKey(0), initial)
    self._jitted = jax.jit(self.method.train_step, in_shardings=(rep, bat, rep), out_shardings=(rep, rep))
    self._compiled = None

  def step(self, state, batch, frozen):
    """The jitted step, compiled once with quick (unoptimised) code generation."""
    if self._compiled is None:
      self._compiled = self._jitted.lower(state, batch, frozen).compile(compiler_options=FAST)
    return self._compiled(state, batch, frozen)

  def run(self, state, batch):
    with jax.set_mesh(self.mesh):
      return self.step(state, sharding.global_batch(batch, self.mesh), self.frozen)


@functools.lru_cache(maxsize=None)
def _built(name, processor_file):
  return Built(_config(name, **_fields(name, processor_file)))


def _batch(seed=0, n=BATCH):
  rng = np.random.default_rng(seed)
  return {"input": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
          "target": rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
          "label": rng.integers(0, 10, (n,)).astype(np.int32)}


def _changed(a, b) -> bool:
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_registry_is_explicit_and_refuses_duplicates():
  assert set(methods.names()) == {"plain", "ra", "unsupervised", "transformer", "ra_joint",
                                  "recognizer_on_processor", "recognizer_on_input", "recognizer_on_clean",
                                  "ra_no_pixel", "perceptual", "sr4ir", "sr4ir_s_then_t", "sr4ir_t_then_s",
                                  "sr4ir_joint", "npp", "proxy_rd", "proxy_codec", "vrdir"}
  spec = methods.get("ra")
  with pytest.raises(ValueError, match="registered twice"):
    methods._registry([{"ra": spec}, {"ra": spec}])
  with pytest.raises(ValueError, match="calls itself"):
    methods._registry([{"other": spec}])
  with pytest.raises(ValueError, match="Unknown method 'nope'.*plain"):
    methods.get("nope")
  with pytest.raises(ValueError, match="distinct roles"):
    base.MethodSpec(name="x", title="x", summary="x", trains=("processor",), frozen=("processor",),
                    defaults=dict, validate=lambda c: [], make=None)


# NPP's methods pre-process clean images before a codec (task "codec"): tests/test_npp.py. VRD-IR restores
# a mixture of degradations at full size in a recognizer's feature space: tests/test_vrdir.py.
GENERIC = [n for n in methods.names() if n not in npp.METHODS and n not in vrdir.METHODS]


@pytest.mark.parametrize("name", GENERIC)
def test_one_step_updates_exactly_the_networks_the_method_trains(name, processor_file):
  """The state holds the trained networks only; each one's parameters and (where it has BatchNorm)
  its statistics move in one step; frozen networks stay out of the state; the metrics are finite."""
  b = _built(name, processor_file)
  spec = b.spec
  assert set(b.state.params) == set(spec.trains) == set(b.state.opt_state) == set(b.state.batch_stats)
  assert set(b.frozen) == set(spec.frozen)
  new, metrics = b.run(b.state, _batch())
  assert int(new.step) == 1
  for net in spec.trains:
    assert _changed(new.params[net], b.state.params[net]), f"{name}: {net}'s parameters did not move"
    if jax.tree.leaves(b.state.batch_stats[net]):
      assert _changed(new.batch_stats[net], b.state.batch_stats[net]), f"{name}: {net}'s statistics did not move"
  assert "loss" in metrics and all(np.isfinite(float(v)) for v in metrics.values()), metrics
  assert ("top1" in metrics) == (spec.recognition_loss or "recognizer" in spec.trains)
  # A method that trains R does so with its own optimizer, whose state holds SGD's momentum.
  if "recognizer" in spec.trains:
    momentum = [x for x in jax.tree.leaves(new.opt_state["recognizer"]) if x.ndim >= 2]
    assert momentum and any(np.any(np.asarray(m) != 0) for m in momentum)


def _kernel_shapes(tree):
  return {tuple(x.shape) for x in jax.tree.leaves(tree) if x.ndim >= 2}


def _produced_shapes(jaxpr):
  shapes = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
      shapes.update(tuple(v.aval.shape) for v in eqn.outvars)
    for p in eqn.params.values():
      for sub in p if isinstance(p, (list, tuple)) else [p]:
        inner = getattr(sub, "jaxpr", None)
        if inner is not None:
          shapes |= _produced_shapes(getattr(inner, "jaxpr", inner))
  return shapes


@pytest.mark.parametrize("name", ["ra", "transformer", "perceptual", "ra_joint", "recognizer_on_input"])
def test_recognizer_weight_gradients_exist_only_where_the_method_trains_r(name, processor_file):
  """R's kernel-shaped weight gradients appear in the step's program exactly when R is trained."""
  b = _built(name, processor_file)
  r_shapes = _kernel_shapes(networks.module(b.config, "recognizer").variables["params"])
  others = set().union(*(_kernel_shapes(b.state.params[n]) for n in b.state.params if n != "recognizer"))
  r_shapes -= others
  assert r_shapes, "test set-up: R needs kernel shapes of its own"
  produced = _produced_shapes(jax.make_jaxpr(b.method.train_step)(b.state, _batch(), b.frozen).jaxpr)
  assert bool(produced & r_shapes) == ("recognizer" in b.spec.trains)


def _perturbed_r_statistics(tree):
  return jax.tree.map(lambda s: s * 3.0 + 0.5, tree)


@pytest.mark.parametrize("name", ["ra", "ra_joint"])
def test_frozen_r_reads_its_running_statistics_and_a_trained_r_its_batch_statistics(name, processor_file):
  """RA's frozen R runs in inference mode (its recognition term depends on R's running statistics);
  the jointly trained R runs in training mode (it does not; they only move)."""
  b = _built(name, processor_file)
  batch = _batch()
  _, metrics = b.run(b.state, batch)
  if name == "ra":
    rec = b.frozen["recognizer"]
    frozen = {"recognizer": rec.replace(variables=dict(rec.variables, batch_stats=_perturbed_r_statistics(
        rec.variables["batch_stats"])))}
    with jax.set_mesh(b.mesh):
      _, other = b.step(b.state, sharding.global_batch(batch, b.mesh), frozen)
    assert abs(float(other["recognition"]) - float(metrics["recognition"])) > 1e-4
  else:
    state = b.state.replace(batch_stats=dict(b.state.batch_stats, recognizer=_perturbed_r_statistics(
        b.state.batch_stats["recognizer"])))
    _, other = b.run(state, batch)
    np.testing.assert_allclose(float(other["recognition"]), float(metrics["recognition"]), rtol=1e-6)


@pytest.mark.parametrize("bn", ["batch", "frozen"])
def test_a_trained_r_with_frozen_batchnorm_keeps_its_running_statistics(bn, processor_file):
  """recognizer_bn="frozen": R is fine-tuned on its running statistics (its loss depends on them)
  and they stay as they were; "batch" (the default, the paper's) moves them."""
  b = Built(_config("recognizer_on_input", **{"method.recognizer_bn": bn}))
  batch = _batch(3)
  new, metrics = b.run(b.state, batch)
  assert _changed(new.params["recognizer"], b.state.params["recognizer"])
  moved = _changed(new.batch_stats["recognizer"], b.state.batch_stats["recognizer"])
  assert moved == (bn == "batch")
  state = b.state.replace(batch_stats=dict(b.state.batch_stats, recognizer=_perturbed_r_statistics(
      b.state.batch_stats["recognizer"])))
  _, other = b.run(state, batch)
  same = abs(float(other["recognition"]) - float(metrics["recognition"])) < 1e-6 * abs(float(metrics["recognition"]))
  assert same == (bn == "batch")


def test_recognizer_bn_is_validated():
  with pytest.raises(config_lib.ConfigError, match="recognizer_bn='eval'"):
    config_lib.validate(_config("ra_joint", **{"method.recognizer_bn": "eval"}))


def _np_ce(logits, labels):
  logits = np.asarray(logits, np.float64)
  m = logits.max(-1, keepdims=True)
  logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
  return -logp[np.arange(len(labels)), labels]


def test_joint_fine_tuning_gives_r_the_gradient_of_its_own_loss(processor_file):
  """ra_joint: with plain SGD for R, R's update is -lr * w * dL/dR of L = CE(R(P(x))) with P and R in
  training mode, computed here on its own; P's update follows MSE + lam * CE."""
  cfg = _config("ra_joint", **{"method.lam": 0.01, "method.recognizer_weight": 2.0,
                               "optim.recognizer.momentum": 0.0, "optim.recognizer.weight_decay": 0.0,
                               "optim.recognizer.lr": 0.5})
  b = Built(cfg)
  batch = _batch(1)
  new, metrics = b.run(b.state, batch)
  rec, p_net = b.modules["recognizer"], b.modules["processor"]
  x, y = batch["input"] / 255.0, batch["target"] / 255.0
  rng = jax.random.split(b.state.rng)[1]

  def ce(r_params):
    out = p_net.apply(b.state.variables("processor"), x, train=True, mutable=["batch_stats"])[0]
    logits, _ = rec.apply_train({"params": r_params, "batch_stats": b.state.batch_stats["recognizer"]}, out, rng=rng)
    return jnp.mean(losses.recognition_ce(logits=logits, labels=batch["label"], reduction="none"))

  value, grad = jax.jit(jax.value_and_grad(ce))(b.state.params["recognizer"])
  np.testing.assert_allclose(float(metrics["recognition"]), float(value), rtol=1e-5)
  step = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, new.params["recognizer"], b.state.params["recognizer"])

  def rel_err(weight):  # |step - (-lr * w * grad)| / |step| over all of R's parameters
    err = jax.tree.map(lambda d, g: np.sum((d + 0.5 * weight * np.asarray(g, np.float64)) ** 2), step, grad)
    return np.sqrt(sum(jax.tree.leaves(err)) / sum(np.sum(d ** 2) for d in jax.tree.leaves(step)))

  assert rel_err(2.0) < 1e-3, rel_err(2.0)
  assert rel_err(1.0) > 0.3   # a weight of 1 instead of 2: the check is not blind to the scale


def test_a_trained_r_is_labelled_by_r_as_it_started_not_by_itself(recognizer_file):
  """labels="recognizer" with R trained (ra_joint): the second step's labels are the starting R's
  top-1 on the clean images; with labels from the R being trained it would drift (and collapse)."""
  cfg = _config("ra_joint", labels="recognizer", **{"recognizer.weights": recognizer_file,
                                                     "optim.recognizer.lr": 0.5})
  b = Built(cfg)
  batch = _batch(7)
  s1, _ = b.run(b.state, batch)
  _, m2 = b.run(s1, batch)
  rec, p_net = b.modules["recognizer"], b.modules["processor"]
  x, y = batch["input"] / 255.0, batch["target"] / 255.0
  teacher = np.argmax(np.asarray(jax.jit(rec.apply)(b.state.variables("recognizer"), jnp.asarray(y, jnp.float32))), -1)
  rng = jax.random.split(s1.rng)[1]
  out = p_net.apply(s1.variables("processor"), x, train=True, mutable=["batch_stats"])[0]
  logits, _ = rec.apply_train(s1.variables("recognizer"), out, rng=rng)
  np.testing.assert_allclose(float(m2["recognition"]), np.mean(_np_ce(logits, teacher)), rtol=2e-4)
  student = np.argmax(np.asarray(rec.apply(s1.variables("recognizer"), jnp.asarray(y, jnp.float32))), -1)
  if not np.array_equal(student, teacher):   # the check can tell the two label sources apart
    assert abs(np.mean(_np_ce(logits, student)) - float(m2["recognition"])) > 1e-4


def test_labels_from_a_randomly_started_r_are_refused():
  with pytest.raises(config_lib.ConfigError, match="R starts from random weights"):
    config_lib.validate(_config("recognizer_on_input", labels="recognizer"))


@pytest.mark.parametrize("name", ["recognizer_on_processor", "recognizer_on_input"])
def test_recognizer_training_methods_feed_r_the_images_they_name(name, processor_file):
  """R is trained on the fixed P's clipped output, or on the bicubic-upsampled input; `forward` shows
  the same images; the cross-entropy in the metrics is R's, in training mode, on them."""
  b = _built(name, processor_file)
  batch = _batch(2)
  x = batch["input"] / 255.0
  if name == "recognizer_on_processor":
    fixed = b.frozen["processor"]
    images = np.clip(np.asarray(jax.jit(lambda v, x: fixed.module.apply(v, x, train=False))(fixed.variables, x)), 0, 1)
  else:
    images = np.clip(np.asarray(jax.image.resize(x, (BATCH, 16, 16, 3), "bicubic")), 0, 1)
  views = b.method.forward(b.state.all_variables(), b.frozen, jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(views["machine"], images, atol=1e-6)
  np.testing.assert_array_equal(views["human"], views["machine"])
  _, metrics = b.run(b.state, batch)
  rec = b.modules["recognizer"]
  rng = jax.random.split(b.state.rng)[1]
  logits, _ = jax.jit(lambda v, im: rec.apply_train(v, im, rng=rng))(b.state.variables("recognizer"),
                                                                        jnp.asarray(images, jnp.float32))
  np.testing.assert_allclose(float(metrics["recognition"]), np.mean(_np_ce(logits, batch["label"])), rtol=1e-5)


def test_recognizer_on_clean_trains_r_on_the_clean_targets(processor_file):
  """R's own training: the cross-entropy in the metrics is R's, in training mode, on the clean targets."""
  b = _built("recognizer_on_clean", processor_file)
  batch = _batch(8)
  _, metrics = b.run(b.state, batch)
  rec = b.modules["recognizer"]
  rng = jax.random.split(b.state.rng)[1]
  logits, _ = jax.jit(lambda v, im: rec.apply_train(v, im, rng=rng))(b.state.variables("recognizer"),
                                                                        jnp.asarray(batch["target"] / 255.0, jnp.float32))
  np.testing.assert_allclose(float(metrics["recognition"]), np.mean(_np_ce(logits, batch["label"])), rtol=1e-5)


def test_ra_without_pixel_loss_optimises_the_recognition_term_alone(processor_file):
  b = _built("ra_no_pixel", processor_file)
  _, metrics = b.run(b.state, _batch(3))
  assert float(metrics["pixel_mse"]) > 0
  np.testing.assert_allclose(float(metrics["loss"]), 1e-3 * float(metrics["recognition"]), rtol=1e-6)
  ra = _built("ra", processor_file)
  _, ra_metrics = ra.run(ra.state, _batch(3))
  np.testing.assert_allclose(float(ra_metrics["loss"]), float(ra_metrics["pixel_mse"]) + 1e-3 * float(
      ra_metrics["recognition"]), rtol=1e-6)


def test_perceptual_loss_is_the_feature_mse_of_the_named_layers(processor_file):
  b = _built("perceptual", processor_file)
  batch = _batch(4)
  _, metrics = b.run(b.state, batch)
  rec = b.frozen["recognizer"]

  @jax.jit
  def features(p_vars, x, y):
    out = b.modules["processor"].apply(p_vars, x, train=True, mutable=["batch_stats"])[0]
    return rec(out, features=True)[1], rec(y, features=True)[1]

  f_out, f_y = features(b.state.variables("processor"), jnp.asarray(batch["input"] / 255.0, jnp.float32),
                        jnp.asarray(batch["target"] / 255.0, jnp.float32))
  want = sum(np.mean((np.asarray(f_out[l], np.float64) - np.asarray(f_y[l], np.float64)) ** 2) for l in
             ("layer3", "layer4"))
  np.testing.assert_allclose(float(metrics["recognition"]), want, rtol=1e-4)
  one_layer = np.mean((np.asarray(f_out["layer4"], np.float64) - np.asarray(f_y["layer4"], np.float64)) ** 2)
  assert abs(one_layer - want) > 1e-3 * want   # negative control: the layers chosen matter


# ra and transformer: tests/test_sharding.py; SR4IR's baselines are the steps of recognizer_on_processor,
# ra and ra_joint with other settings.
SHARDED_ELSEWHERE = ("ra", "transformer", "sr4ir_s_then_t", "sr4ir_t_then_s", "sr4ir_joint")


@pytest.mark.parametrize("name", [n for n in GENERIC if n not in SHARDED_ELSEWHERE])
def test_sharded_step_equals_single_device_step(name, processor_file):
  """8 fake devices agree with one, for every method (ra and transformer: tests/test_sharding.py), two
  networks trained at once and a frozen P as a step argument included. SGD for P: Adam turns the
  rounding noise of gradients that are zero in exact arithmetic into learning-rate-sized steps."""
  cfg = _config(name, **_fields(name, processor_file), **{"optim.processor.name": "sgd"})
  one, eight = Built(cfg), Built(cfg, sharding.make_mesh(8))
  s1, m1 = one.run(one.state, _batch(5))
  s8, m8 = eight.run(eight.state, _batch(5))
  chex.assert_trees_all_close(jax.device_get(s1.params), jax.device_get(s8.params), rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(jax.device_get(s1.batch_stats), jax.device_get(s8.batch_stats), rtol=1e-4, atol=1e-5)
  for k in m1:
    np.testing.assert_allclose(float(m1[k]), float(m8[k]), rtol=1e-4, err_msg=k)


STEPS_PER_SMOKE_EPOCH = 96 // 8   # configs/smoke.py: 96 synthetic training images, batch 8


# ra_joint's resume goes through the same trainer path as SR4IR's (two networks, two optimizers): -m heavy.
@pytest.mark.parametrize("mode", [pytest.param("ra_joint", marks=pytest.mark.heavy), "sr4ir"])
def test_two_network_run_resumes_exactly(mode, tmp_path):
  """ra_joint and SR4IR through the trainer (Adam / AdamW for P, SGD with momentum for R): stopped at
  step 3 and resumed to 6, a run ends with the very variables and statistics of a run of 6 and logs
  the same metrics after the resume (lost optimizer states, data positions, schedule or SR4IR's
  warm-up gate would change steps 4-6). SR4IR's resume falls mid-schedule: its TDP term switches on
  at step 3 and both rates restart there (cosine_restarts)."""
  def cfg(total):
    c = config_lib.load(f"configs/smoke.py:mode={mode}")
    c.total_steps, c.ckpt_every, c.log_every, c.final_eval = total, 3, 1, False
    if mode == "sr4ir":
      c.method.warmup_steps = 2
      for net in ("processor", "recognizer"):
        c.optim[net].schedule, c.optim[net].min_lr = "cosine_restarts", 1e-6
        c.optim[net].restart_epochs = (2 / STEPS_PER_SMOKE_EPOCH, 4 / STEPS_PER_SMOKE_EPOCH)
      c.optim.processor.name = "adamw"
    config_lib.validate(c)
    return c

  train.run(cfg(6), tmp_path / "straight")
  train.run(cfg(3), tmp_path / "resumed")
  train.run(cfg(6), tmp_path / "resumed")
  got = {r: runs.load(tmp_path / r).variables for r in ("straight", "resumed")}
  assert set(got["straight"]) == {"processor", "recognizer"}
  chex.assert_trees_all_equal(got["straight"], got["resumed"])
  logs = {r: [json.loads(l) for l in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
          for r in ("straight", "resumed")}
  strip = lambda recs: [{k: v for k, v in rec.items() if k != "img_per_s"} for rec in recs]
  assert strip(logs["straight"]) == strip(logs["resumed"])
  assert [r["step"] for r in logs["resumed"]] == [1, 2, 3, 4, 5, 6]
