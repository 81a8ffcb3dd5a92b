"""NPP (rajax.methods.npp): the straight-through composition, one step against a real codec, the proxy's training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rajax import codecs, losses, methods, networks, optim, weights as weights_lib
from rajax import config as config_lib
from rajax.methods import npp

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def test_straight_through_has_the_real_value_and_the_proxy_gradient():
  proxy = lambda p: jnp.tanh(p) * 2.0
  real = lambda p: jnp.round(p * 4.0) / 4.0          # what a real codec does: no useful gradient
  loss = lambda y: jnp.sum(jnp.sin(y) * y)
  p = jnp.linspace(-1.0, 1.0, 7)
  composed = lambda p: loss(npp.straight_through(proxy(p), jax.lax.stop_gradient(real(p))))
  np.testing.assert_allclose(npp.straight_through(proxy(p), real(p)), real(p), rtol=0, atol=1e-7)
  # the gradient: the proxy's Jacobian applied to the loss gradient at the REAL value
  g_loss_at_real = jax.grad(loss)(real(p))
  _, vjp = jax.vjp(proxy, p)
  np.testing.assert_allclose(jax.grad(composed)(p), vjp(g_loss_at_real)[0], rtol=1e-6)


def _config(method="npp", **fields):
  c = config_lib.base(task="codec", method=method, recognizer="resnet18")
  c.processor = config_lib.ml_collections.ConfigDict(dict(name="npp", adaptive=True, channels=(4, 4, 8, 8, 8)))
  c.codec.update(dict(N=8, M=12))
  c.recognizer.update(dict(num_classes=10, width=4))
  c.recognizer.weights = "random"
  c.data.update(dict(source="synthetic", crop=64, resize=0, batch_size=2, eval_batch_size=2))
  c.method.update(fields)
  return c


def _built(c):
  """(trained modules, method, initial state) of a validated config."""
  config_lib.validate(c)
  spec = methods.get(c.method.name)
  modules = networks.trained_modules(c, spec)
  method = methods.build(methods.Setup(config=c, modules=modules,
                                       optimizers=optim.make_optimizers(c.optim, spec.trains, 100, 100),
                                       input_shape=networks.input_shape(c)))
  return modules, method, method.init(jax.random.PRNGKey(0))


_rng = np.random.default_rng(0)
_BATCH = {"target": _rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8),
          "input": None, "label": np.asarray([3, 7], np.int32)}
_BATCH["input"] = _BATCH["target"]


@pytest.fixture(scope="module")
def proxy_file(tmp_path_factory):
  """A seeded random bmshj2018-hyperprior (N 8, M 12) written as a trained run's codec.msgpack."""
  net = networks.module(_config("proxy_rd"), "codec")
  v = net.init({"params": jax.random.key(5), "noise": jax.random.key(6)}, jnp.zeros((1, 64, 64, 3)), train=False)
  path = tmp_path_factory.mktemp("proxy") / "codec.msgpack"
  weights_lib.save(path, {"params": jax.device_get(v["params"]), "batch_stats": {}})
  return str(path)


def test_npp_step_sees_the_real_codec_and_learns_through_the_proxy(proxy_file):
  c = _config(codec="jpeg", pairs=((20, 4.0), (50, 1.0)), quality=50, codec_weights=proxy_file)
  modules, method, state = _built(c)
  frozen = networks.frozen_networks(c, method.spec)
  step = jax.jit(method.train_step).lower(state, _BATCH, frozen).compile(compiler_options=FAST)
  s1, m = step(state, _BATCH, frozen)
  q = int(m["quality"])
  assert q in (20, 50)
  # the step's rate is the real codec's on P's 8-bit output, from the encoded bytes
  x = jnp.asarray(_BATCH["target"], jnp.float32) / 255
  qn = jnp.full((2,), codecs.get("jpeg").normalise(q), jnp.float32)
  pre = modules["processor"].apply(state.variables("processor"), x, train=True, quality=qn, mutable=["batch_stats"])[0]
  _, bits = codecs.roundtrip_batch("jpeg", np.asarray(codecs.quantize_uint8(pre)), q)
  np.testing.assert_allclose(float(m["bpp"]), np.mean(bits) / (64 * 64), rtol=1e-5)
  assert float(m["proxy_bpp"]) != pytest.approx(float(m["bpp"]), rel=1e-3)   # the proxy's own estimate differs
  lam = {20: 4.0, 50: 1.0}[q]
  np.testing.assert_allclose(float(m["loss"]), float(m["bpp"]) + lam * float(m["recognition"])
                             + 0.5 * float(m["pixel_mse"]), rtol=1e-5)
  assert float(m["grad_norm"]) > 0 and np.isfinite(float(m["grad_norm"]))
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(s1.params))]
  assert any(moved)
  # forward: what is shown and recognised is the real codec's output at config.method.quality
  views = method.forward(s1.all_variables(), frozen, x)
  pre_eval = modules["processor"].apply(s1.variables("processor"), x, train=False,
                                        quality=jnp.full((2,), codecs.get("jpeg").normalise(50)))
  decoded, bits = codecs.roundtrip_batch("jpeg", np.asarray(codecs.quantize_uint8(pre_eval)), 50)
  np.testing.assert_allclose(np.asarray(views["machine"]), decoded / 255.0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(views["bpp"]), bits / (64 * 64), rtol=1e-6)


def test_npp_step_with_a_detector_reads_the_real_codecs_output_against_the_detectors_own_boxes(proxy_file, monkeypatch):
  """A detector as NPP's recognizer (the paper's COCO setting): its loss is the detection task's on the
  real codec's decoded image, against its own confident detections on the clean image."""
  import toy_detector  # noqa: F401 - the family module the zoo imports
  from rajax.detection import zoo
  from rajax.tasks import detection as det_task
  monkeypatch.setattr(zoo, "_FAMILIES", (*zoo._FAMILIES, "toy_detector"))
  c = _config(codec="jpeg", pairs=((50, 1.0),), quality=50, codec_weights=proxy_file)
  c.recognizer = config_lib.ml_collections.ConfigDict(dict(name="toy_detector", weights="random", num_classes=3))
  c.labels = "recognizer"
  modules, method, state = _built(c)
  frozen = networks.frozen_networks(c, method.spec)
  s1, m = jax.jit(method.train_step).lower(state, _BATCH, frozen).compile(compiler_options=FAST)(state, _BATCH, frozen)
  det = frozen["recognizer"]
  x = jnp.asarray(_BATCH["target"], jnp.float32) / 255
  qn = jnp.full((2,), codecs.get("jpeg").normalise(50), jnp.float32)
  pre = modules["processor"].apply(state.variables("processor"), x, train=True, quality=qn, mutable=["batch_stats"])[0]
  decoded, _ = codecs.roundtrip_batch("jpeg", np.asarray(codecs.quantize_uint8(pre)), 50)
  targets, _ = det_task.pseudo_targets(det(x))
  per_image, _, _ = det_task.recognition_loss(det, jnp.asarray(decoded / 255.0, jnp.float32), targets,
                                              rng=jax.random.key(0))
  np.testing.assert_allclose(float(m["recognition"]), float(jnp.mean(per_image)), rtol=1e-4)
  np.testing.assert_allclose(float(m["loss"]), float(m["bpp"]) + float(m["recognition"]) + 0.5 * float(m["pixel_mse"]),
                             rtol=1e-5)
  assert float(m["grad_norm"]) > 0 and np.isfinite(float(m["grad_norm"]))


def test_proxy_towards_the_real_codec_trains_only_the_codec():
  c = _config("proxy_codec", codec="jpeg", quality=30)
  modules, method, state = _built(c)
  assert list(state.params) == ["codec"]
  s1, m = jax.jit(method.train_step)(state, _BATCH, {})
  x = jnp.asarray(_BATCH["target"], jnp.float32) / 255
  real, _ = codecs.roundtrip_batch("jpeg", _BATCH["target"], 30)
  out = modules["codec"].apply({"params": state.params["codec"]}, x, train=True,
                               rngs={"noise": jax.random.split(state.rng)[1]})
  np.testing.assert_allclose(float(m["mse"]), float(losses.pixel_mse(pred=out["x_hat"], target=real / 255.0)),
                             rtol=1e-4)
  np.testing.assert_allclose(float(m["loss"]), float(m["bpp"]) + 0.0067 * 255 ** 2 * float(m["mse"])
                             + float(m["aux"]), rtol=1e-5)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(s1.params)))


def test_bad_npp_settings_name_the_fix():
  for fields, words in [(dict(codec="bpg"), "config.method.codec='bpg'"),
                        (dict(pairs=((200, 1.0),)), "outside codec 'jpeg'"),
                        (dict(proxy_quantize="round"), "proxy_quantize"),
                        (dict(pairs=((20, -1.0),)), "lam must be >= 0")]:
    with pytest.raises(config_lib.ConfigError, match=words.replace("(", "\\(")):
      config_lib.validate(_config(**fields, quality=20))
  c = _config(pairs=((20, 1.0), (50, 1.0)), quality=20)
  c.processor.adaptive = False
  with pytest.raises(config_lib.ConfigError, match="adaptive=True"):
    config_lib.validate(c)
  c = _config(quality=20)
  c.task = "jpeg"
  with pytest.raises(config_lib.ConfigError, match="task='codec'"):
    config_lib.validate(c)


@pytest.mark.parametrize("stage", ["proxy_rd", "proxy_codec", "fixed", "adaptive"])
def test_paper_configs_validate(stage):
  import pathlib
  root = pathlib.Path(__file__).resolve().parent.parent / "configs"
  for task in ("cls", "det"):
    c = config_lib.load(f"{root / 'npp.py'}:task={task},stage={stage}")
    config_lib.validate(c)
    if stage == "adaptive":
      assert tuple(map(tuple, c.method.pairs)) == npp.PAPER_PAIRS and c.method.codec == "hevc"


def test_sharded_npp_step_equals_single_device_step(proxy_file):
  """8 fake devices agree with one: the host codec sees the same images whatever the sharding."""
  from rajax import sharding
  c = _config(codec="jpeg", pairs=((30, 2.0),), quality=30, codec_weights=proxy_file)
  c.processor.adaptive = False
  c.optim.processor.name = "sgd"
  c.data.batch_size = 8
  spec = methods.get("npp")
  rng = np.random.default_rng(3)
  target = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
  batch = {"target": target, "input": target, "label": np.arange(8, dtype=np.int32)}
  results = []
  for mesh in (sharding.make_mesh(1), sharding.make_mesh(8)):
    _, method, state = _built(c)
    rep, bat = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    with jax.set_mesh(mesh):
      state = jax.device_put(state, rep)
      frozen = jax.device_put(networks.frozen_networks(c, spec), rep)
      step = jax.jit(method.train_step, in_shardings=(rep, bat, rep), out_shardings=(rep, rep))
      results.append(jax.device_get(step(state, jax.device_put(batch, bat), frozen)))
  (s1, m1), (s8, m8) = results
  import chex
  chex.assert_trees_all_close(s1.params, s8.params, rtol=1e-4, atol=1e-5)
  # P's outputs agree to float rounding, which flips a few 8-bit pixels before the codec: the real
  # codec's output (and what depends on it: the rate, the recognition term, the gradient) agrees to that
  exact = ("pixel_mse", "proxy_bpp", "quality")   # P's and the proxy's own figures
  for k in m1:
    np.testing.assert_allclose(float(m1[k]), float(m8[k]), rtol=1e-4 if k in exact else 1e-2, err_msg=k)


def test_adaptive_stage_starts_from_the_fixed_stage(tmp_path, capsys):
  """configs/npp.py's third stage: init_processor is the fixed stage's processor.msgpack, which has no
  quality layers; they start fresh (scales exactly 1), so the adaptive P computes what the fixed one did."""
  fixed_c = _config(quality=20)
  fixed_c.processor.adaptive = False
  fixed = networks.module(fixed_c, "processor")
  x = jnp.asarray(_BATCH["target"], jnp.float32) / 255
  v = methods.base.init_variables(fixed, jax.random.key(3), x[:1])
  v["batch_stats"] = jax.tree.map(lambda s: s + 0.05, v["batch_stats"])
  weights_lib.save(tmp_path / "processor.msgpack", jax.device_get(v))
  c = _config(quality=20)
  c.init_processor = str(tmp_path / "processor.msgpack")
  spec = methods.get("npp")
  modules = networks.trained_modules(c, spec)
  initial = networks.initial_variables(c, spec, modules)["processor"]
  assert "has no scale_branch1" in capsys.readouterr().out
  want = fixed.apply(v, x)
  got = modules["processor"].apply(initial, x, quality=jnp.asarray([0.1, 0.9]))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
  # a file of another architecture still fails, naming what does not fit
  other = _config(quality=20)
  other.processor.channels = (4, 4, 8, 8, 16)
  other.init_processor = c.init_processor
  with pytest.raises(weights_lib.WeightsError, match="do not fit"):
    networks.initial_variables(other, spec, networks.trained_modules(other, spec))
