"""VRD-IR: its FFT path, losses and networks, the phase switch, frozen phi and SAD, sharding, resume,
the mixture of degradations, config errors, and the offline demo end to end (--quick)."""

import json
import pathlib
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from rajax import config as config_lib
from rajax import data as data_lib
from rajax import degrade, methods, networks, optim, runs, sharding, train
from rajax.methods import vrdir
from rajax.models import vrdir as vrdir_models

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
FAMILIES = (("gaussian_noise", 1), ("rain", 2))
CROP, BATCH = 32, 8


def _config(**fields):
  """A tiny VRD-IR run on synthetic images: phi = MobileNetV2's real "stage1" (16 channels, stride 2;
  fewer than the default "stem"'s 32)."""
  c = config_lib.base(task="mixture", method="vrdir", recognizer="mobilenet_v2")
  c.degrade.families = FAMILIES
  c.recognizer.weights = None
  c.labels = "recognizer"
  c.processor = config_lib.ml_collections.ConfigDict(dict(name="vrdir", stride=2, in_channels=16, channels=8,
                                                          branches=2, ise_channels=8))
  c.method.sad_steps = 1
  c.method.phi_layer = "stage1"
  c.data.update(dict(source="synthetic", crop=CROP, resize=0, batch_size=BATCH, eval_batch_size=BATCH, threads=1))
  c.data.synthetic.update(dict(train_size=32, eval_size=8, image_size=40))
  c.optim.processor.lr = 1e-3
  c.optim.processor.schedule = "constant"
  for path, value in fields.items():
    *parents, leaf = path.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


class Built:
  """The method as the trainer builds it, its first state, and its step compiled for a mesh."""

  def __init__(self, config, mesh=None):
    config_lib.validate(config)
    self.spec = methods.get("vrdir")
    self.mesh = mesh or sharding.make_mesh(1)
    rep, bat = sharding.replicated(self.mesh), sharding.batch_sharded(self.mesh)
    self.frozen = jax.device_put(networks.frozen_networks(config, self.spec), rep)
    self.modules = networks.trained_modules(config, self.spec)
    self.optimizers = optim.make_optimizers(config.optim, self.spec.trains, 100, 100)
    self.method = methods.build(methods.Setup(config=config, modules=self.modules, optimizers=self.optimizers,
                                              input_shape=networks.input_shape(config)))
    self.state = jax.jit(self.method.init, out_shardings=rep)(jax.random.PRNGKey(0))
    self._jitted = jax.jit(self.method.train_step, in_shardings=(rep, bat, rep), out_shardings=(rep, rep))
    self._compiled = None

  def run(self, state, batch):
    with jax.set_mesh(self.mesh):
      batch = sharding.global_batch(batch, self.mesh)
      if self._compiled is None:
        self._compiled = self._jitted.lower(state, batch, self.frozen).compile(compiler_options=FAST)
      return self._compiled(state, batch, self.frozen)


_BUILT = {}


def _built(**fields):
  key = tuple(sorted(fields.items()))
  if key not in _BUILT:
    _BUILT[key] = Built(_config(**fields))
  return _BUILT[key]


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  target = rng.integers(0, 256, (BATCH, CROP, CROP, 3), dtype=np.uint8)
  noisy = np.clip(target.astype(np.int32) + rng.integers(-40, 41, target.shape), 0, 255).astype(np.uint8)
  return {"input": noisy, "target": target, "label": np.zeros(BATCH, np.int32)}


def _leaves_equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ==================================================================== FFT path, networks, losses

@pytest.mark.parametrize("w", [7, 8])
def test_fft_path_matches_numpy_rfft2_and_irfft2_at_odd_and_even_widths(w):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 6, w, 5)).astype(np.float32)
  gain = rng.uniform(0.5, 1.5, size=(2, 6, w // 2 + 1, 5)).astype(np.float32)
  np.testing.assert_allclose(vrdir_models.amplitude_spectrum(x), np.abs(np.fft.rfft2(x, axes=(1, 2))),
                             rtol=1e-5, atol=1e-4)
  want = np.fft.irfft2(np.fft.rfft2(x, axes=(1, 2)) * gain, s=(6, w), axes=(1, 2))
  got = vrdir_models.modulate_spectrum(x, gain)
  assert got.shape == x.shape   # irfft2 without s= would give width 6 for w = 7
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(vrdir_models.modulate_spectrum(x, 1.0), x, atol=1e-5)   # the round trip


def test_an_untrained_ise_is_the_identity_and_its_branch_weights_a_distribution():
  f = jax.random.normal(jax.random.key(0), (2, 8, 7, 6))
  ise = vrdir_models.ISE(branches=3, channels=8)
  v = jax.jit(ise.init)(jax.random.key(1), f)
  np.testing.assert_allclose(jax.jit(ise.apply)(v, f), f, atol=1e-5)
  _, weights = jax.jit(vrdir_models.FGM(3).apply)({"params": v["params"]["fgm"]}, f)
  assert weights.shape == (2, 3)
  np.testing.assert_allclose(np.sum(weights, axis=-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 8, 8, 4)])
def test_sads_up_step_is_flaxs_k4_s2_transposed_convolution(shape):
  x = jax.random.normal(jax.random.key(1), shape)
  up = vrdir_models.ConvTranspose2x(5)
  v = jax.tree.map(lambda a: a + 0.1, up.init(jax.random.key(0), x))   # a non-zero bias too
  want = nn.ConvTranspose(5, (4, 4), strides=(2, 2), padding="SAME").apply(v, x)
  got = up.apply(v, x)
  assert got.shape == (shape[0], 2 * shape[1], 2 * shape[2], 5)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _np_cos(a, b):
  a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
  return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_similarity_ranking_loss_is_the_hand_computed_one():
  rng = np.random.default_rng(0)
  rc, c, rd, d = (rng.uniform(size=(3, 4, 5, 3)) for _ in range(4))
  l1 = lambda a, b: np.abs(a - b).reshape(3, -1).mean(1)
  per = l1(rc, c) + 0.1 * l1(rd, d) + np.maximum(0.0, 1.0 - (_np_cos(rc, c) - _np_cos(rd, d)))
  kw = dict(restored_clean=rc, clean=c, restored_degraded=rd, degraded=d)
  np.testing.assert_allclose(vrdir.similarity_ranking_loss(**kw), per.mean(), rtol=1e-5)
  np.testing.assert_allclose(vrdir.similarity_ranking_loss(**kw, reduction="none"), per, rtol=1e-5)
  # the margin term is a hinge: zero once the clean reconstruction is more similar by the margin
  np.testing.assert_allclose(vrdir.similarity_ranking_terms(**kw, margin=-1.0)["ranking"], 0.0)
  with pytest.raises(ValueError, match="reduction"):
    vrdir.similarity_ranking_loss(**kw, reduction="sum")


def test_ise_loss_is_l1_plus_one_minus_cosine_of_global_max_pools():
  rng = np.random.default_rng(1)
  restored, clean = rng.uniform(size=(2, 6, 6, 3)), rng.uniform(size=(2, 6, 6, 3))
  e, fc = rng.normal(size=(2, 3, 3, 4)), rng.normal(size=(2, 3, 3, 4))
  want = np.abs(restored - clean).reshape(2, -1).mean(1) + 0.5 * (1 - _np_cos(e.max((1, 2)), fc.max((1, 2))))
  got = vrdir.ise_loss(restored=restored, clean=clean, enhanced_features=e, clean_features=fc, semantic_weight=0.5,
                       reduction="none")
  np.testing.assert_allclose(got, want, rtol=1e-5)


# ==================================================================== the phases

def test_each_phase_updates_only_its_network_and_the_ise_phase_gives_phi_and_sad_no_gradient():
  b = _built()
  batch = _batch()
  s1, m1 = b.run(b.state, batch)           # step 0 < sad_steps = 1: SAD's pre-training
  s2, m2 = b.run(s1, batch)                # step 1: ISE, SAD frozen
  p0, p1, p2 = (jax.device_get(s.params["processor"]) for s in (b.state, s1, s2))
  o0, o1, o2 = (jax.device_get(s.opt_state["processor"]) for s in (b.state, s1, s2))
  assert float(m1["phase"]) == 0.0 and float(m2["phase"]) == 1.0
  assert not _leaves_equal(p0["sad"], p1["sad"]) and _leaves_equal(p0["ise"], p1["ise"])
  assert _leaves_equal(o0["ise"], o1["ise"])
  assert _leaves_equal(p1["sad"], p2["sad"]) and _leaves_equal(o1["sad"], o2["sad"])   # SAD frozen, bit for bit
  assert not _leaves_equal(p1["ise"], p2["ise"])
  np.testing.assert_allclose(m2["loss"], m2["pixel_l1"] + m2["semantic"], rtol=1e-5)
  np.testing.assert_allclose(m1["loss"], m1["l1_clean"] + 0.1 * m1["l1_degraded"] + m1["ranking"], rtol=1e-5)

  # The loss the step differentiates, with respect to the processor's networks and phi (the recognizer's
  # variables): in the ISE phase SAD's and phi's gradients are exactly zero, ISE's not; in SAD's phase
  # ISE's is zero.
  s = vrdir.settings(_config())
  loss_fn = vrdir.make_loss_fn(b.modules["processor"], s)
  rec = b.frozen["recognizer"]
  d, c = (jnp.asarray(batch[k], jnp.float32) / 255 for k in ("input", "target"))

  def wrt_all(params, rec_vars, phase):
    return loss_fn(params, rec.replace(variables=rec_vars), d, c, phase)[0]

  grad = jax.jit(jax.grad(wrt_all, argnums=(0, 1)))
  g_params, g_phi = grad(p1, rec.variables, 1.0)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(g_params["sad"]))
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(g_phi))
  assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(g_params["ise"]))
  g_params, g_phi = grad(p0, rec.variables, 0.0)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(g_params["ise"]))
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(g_phi))
  assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(g_params["sad"]))


def test_sharded_steps_equal_single_device_steps_in_both_phases():
  """8 fake devices agree with one, across the phase change. SGD: Adam would turn the rounding noise of
  near-zero gradients into learning-rate-sized steps."""
  cfg = _config(**{"optim.processor.name": "sgd"})
  one, eight = Built(cfg), Built(cfg, sharding.make_mesh(8))
  s1, s8 = one.state, eight.state
  for seed in (3, 4):
    s1, m1 = one.run(s1, _batch(seed))
    s8, m8 = eight.run(s8, _batch(seed))
    chex.assert_trees_all_close(jax.device_get(s1.params), jax.device_get(s8.params), rtol=1e-4, atol=1e-6)
    for k in m1:
      np.testing.assert_allclose(float(m1[k]), float(m8[k]), rtol=1e-4, atol=1e-6, err_msg=k)
  assert float(m1["phase"]) == 1.0


def test_a_run_stopped_at_the_phase_change_resumes_exactly(tmp_path):
  """Through the trainer: 4 steps straight, or 2 (all of SAD's pre-training), a checkpoint, and a resumed run
  to 4 (ISE's phase): the same variables and the same logged metrics, bit for bit."""
  def cfg(total):
    c = _config(**{"method.sad_steps": 2})
    c.total_steps, c.ckpt_every, c.log_every, c.final_eval = total, 2, 1, False
    return c

  train.run(cfg(4), tmp_path / "straight")
  train.run(cfg(2), tmp_path / "resumed")
  train.run(cfg(4), tmp_path / "resumed")
  got = {r: runs.load(tmp_path / r).variables for r in ("straight", "resumed")}
  chex.assert_trees_all_equal(got["straight"], got["resumed"])
  logs = {r: [json.loads(l) for l in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
          for r in ("straight", "resumed")}
  strip = lambda recs: [{k: v for k, v in rec.items() if k != "img_per_s"} for rec in recs]
  assert strip(logs["straight"]) == strip(logs["resumed"])
  assert [r["phase"] for r in logs["resumed"]] == [0.0, 0.0, 1.0, 1.0]
  # the loaded run restores through SAD(ISE(phi(x))) with the trained networks
  run = runs.load(tmp_path / "resumed")
  out = run.forward(jnp.full((1, CROP, CROP, 3), 0.5))
  assert out["human"].shape == (1, CROP, CROP, 3) and np.all(np.isfinite(out["human"]))


# ==================================================================== degradations

def test_a_mixture_draws_each_family_deterministically_per_example():
  img = (np.random.default_rng(0).uniform(size=(40, 40, 3)) * 255).astype(np.uint8)
  deg = data_lib.Degradation(task="mixture", families=FAMILIES)
  outs = [deg(img, np.random.default_rng([0, i])) for i in range(8)]
  again = [deg(img, np.random.default_rng([0, i])) for i in range(8)]
  assert all(np.array_equal(a, b) for a, b in zip(outs, again))
  assert all(o.dtype == np.uint8 and o.shape == img.shape for o in outs)
  drawn = []
  for i, out in enumerate(outs):   # the family and the seed each example's rng gives, in that order
    r = np.random.default_rng([0, i])
    name, severity = FAMILIES[int(r.integers(0, len(FAMILIES)))]
    assert np.array_equal(out, degrade.apply_family(img, name, severity, int(r.integers(0, 2**32))))
    drawn.append(name)
  assert set(drawn) == {n for n, _ in FAMILIES}   # both families occur, each exactly as applied alone


@pytest.mark.parametrize("name", degrade.EXTRA_DEGRADATIONS)
def test_rain_and_low_light_are_seeded_and_grow_with_severity(name):
  img = np.full((48, 48, 3), 100, np.uint8)
  a, b, other = (degrade.apply_family(img, name, 3, s) for s in (1, 1, 2))
  assert np.array_equal(a, b) and not np.array_equal(a, other)
  change = [np.abs(degrade.apply_family(img, name, s, 0).astype(float) - img).mean() for s in (1, 5)]
  assert 0 < change[0] < change[1]
  if name == "rain":
    assert np.all(a >= img)    # streaks only brighten
  else:
    assert a.mean() < img.mean()
  with pytest.raises(ValueError, match="severity"):
    degrade.apply_family(img, name, 6, 0)


# ==================================================================== config errors

def test_the_degradations_evaluator_refuses_unknown_families_and_an_empty_list():
  from rajax.evaluate import EVALUATORS, EvalError
  from rajax.evaluate import degradations as degradations_eval
  assert EVALUATORS["degradations"] is degradations_eval.degradations
  with pytest.raises(EvalError, match="evals.d.unseen: unknown degradation 'hail'"):
    degradations_eval._families({"unseen": (("hail", 3),)}, "unseen", "d")
  assert degradations_eval._families({"seen": (("rain", 2),)}, "seen", "d") == [("rain", 2)]


@pytest.mark.parametrize("fields, words", [
    ({"method.phi_layer": "layer9"}, "'layer9' is not a feature map .* stage1 16x16x16, stage2 8x8x24.* stem 16x16x32"),
    ({"processor.in_channels": 24}, "set config.processor.stride=2 and config.processor.in_channels=16"),
    ({"method.sad_steps": 5, "total_steps": 4}, "ISE would never train"),
    ({"method.sad_steps": 0}, "init_processor"),
    ({"method.margin": -1.0}, "margin"),
    ({"degrade.families": ()}, "families is empty"),
    ({"degrade.families": (("fogg", 3),)}, "unknown degradation 'fogg'"),
    ({"degrade.families": (("fog", 9),)}, "severity 9"),
    ({"task": "sr"}, "restores degraded images at their own size"),
])
def test_bad_configs_are_refused_naming_the_field_and_the_fix(fields, words):
  with pytest.raises(config_lib.ConfigError, match=words):
    config_lib.validate(_config(**fields))


def test_vrdir_needs_its_own_processor():
  c = config_lib.base(task="mixture", method="vrdir", recognizer="mobilenet_v2")
  c.degrade.families = FAMILIES
  with pytest.raises(config_lib.ConfigError, match="config.processor.name='vrdir'"):
    config_lib.validate(c)


def test_the_config_file_reads_phis_geometry_from_the_layer():
  for layer, stride, channels in (("stage1", 2, 16), ("stem", 2, 32), ("stage2", 4, 24)):
    c = config_lib.load(f"{ROOT}/configs/vrdir.py:phi={layer},quick=True")
    config_lib.validate(c)
    assert (c.processor.stride, c.processor.in_channels) == (stride, channels)
    assert c.task == "mixture" and len(c.degrade.families) == 6
  for mode in ("plain", "ra"):
    c = config_lib.load(f"{ROOT}/configs/vrdir.py:mode={mode},quick=True")
    config_lib.validate(c)
    assert c.degrade.families == config_lib.load(f"{ROOT}/configs/vrdir.py:quick=True").degrade.families


# ==================================================================== the demo

@pytest.mark.slow
def test_quick_demo_trains_evaluates_and_reports(tmp_path):
  r = subprocess.run([sys.executable, "-m", "rajax.demo.vrdir", "--workdir", str(tmp_path), "--quick"], cwd=ROOT,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  report = json.loads((tmp_path / "report.json").read_text())
  assert set(report["pooled"]) == {"seen", "unseen"}
  for group in ("seen", "unseen"):
    assert set(report["pooled"][group]) == {"input", "plain", "ra", "vrdir"}
    rows = [row for row in report["per_degradation"] if row["set"] == group and row["view"] == "vrdir"]
    assert len(rows) == len(report["sets"][group])
    # the pooled figures are over the same examples as the per-degradation ones (equal counts per degradation)
    np.testing.assert_allclose(report["pooled"][group]["vrdir"]["PSNR"], np.mean([r["PSNR"] for r in rows]),
                               rtol=1e-6)
    test = report["paired_vrdir_vs_ra"][f"mean ({group})"]
    assert set(test) == {"mobilenet_v2", "efficientnet_lite0"} and 0 <= test["mobilenet_v2"]["p"] <= 1
  assert {"rain", "low_light"} <= {n for n, _ in report["sets"]["seen"]}
  assert not {tuple(f) for f in report["sets"]["seen"]} & {tuple(f) for f in report["sets"]["unseen"]}
  det = report["detection"]          # CenterNet on the whole photos, degraded by each family
  for group in ("seen", "unseen"):
    assert set(det["pooled"][group]) == {"input", "plain", "ra", "vrdir"}
    assert all(0.0 <= r["centernet VOC07 mAP"] <= 1.0 for r in det["pooled"][group].values())
    assert 0 <= det["paired_vrdir_vs_ra"][f"mean ({group})"]["centernet"]["p"] <= 1
  text = (tmp_path / "report.md").read_text()
  assert "CenterNet (COCO detector, used by no run) on whole photos" in text
  assert "Mean over the unseen degradations" in text and "VRD-IR against the RA restorer" in text
