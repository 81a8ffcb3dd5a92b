"""The train/eval step factory: the four methods, frozen R, stop_gradient, BN statistics, optimizers."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import rajax
from rajax import optim
from rajax import losses
from rajax import step as step_lib

P_CHANNELS = 12   # distinct from every kernel shape of the width-8 recognizer below
R_WIDTH = 8


@pytest.fixture(scope="module")
def nets():
  return {
      "processor": rajax.processor("srresnet", scale=4, blocks=1, channels=P_CHANNELS),
      "transformer": rajax.processor("resnet_generator", blocks=1, channels=8),
  }


@pytest.fixture(scope="module")
def rec():
  return rajax.recognizer("resnet18", "random", num_classes=10, width=R_WIDTH, seed=1)


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  return {
      "input": rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8),
      "target": rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
      "label": rng.integers(0, 10, (4,)).astype(np.int32),
  }


def _setup(mode, nets, lam=None):
  method = step_lib.Method(mode=mode, lam=step_lib.DEFAULT_LAMBDA[mode] if lam is None else lam)
  txs = {n: optax.adam(1e-3) for n in method.networks}
  init = jax.jit(lambda key: step_lib.init_state(method, nets, txs, rng=key, input_shape=(8, 8, 3)))
  return method, txs, init(jax.random.PRNGKey(0))


def _tree_equal(a, b):
  return all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("mode", step_lib.MODES)
def test_every_mode_trains_and_reports_its_terms(mode, nets, rec, batch):
  method, txs, state = _setup(mode, nets)
  step = jax.jit(step_lib.make_train_step(method, nets, txs))
  new, metrics = step(state, batch, rec)
  assert int(new.step) == 1
  assert set(new.params) == set(method.networks) == set(new.opt_state)
  assert not _tree_equal(new.params["processor"], state.params["processor"])
  for k in ("loss", "pixel_mse", "psnr", "grad_norm"):
    assert np.isfinite(float(metrics[k])), k
  if mode == "plain":
    assert "recognition" not in metrics and float(metrics["loss"]) == pytest.approx(float(metrics["pixel_mse"]))
  else:
    expected = float(metrics["pixel_mse"]) + method.lam * float(metrics["recognition"])
    assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-5)
    assert 0.0 <= float(metrics["top1"]) <= 1.0


def test_processor_batchnorm_statistics_update(nets, rec, batch):
  method, txs, state = _setup("ra", nets)
  new, _ = jax.jit(step_lib.make_train_step(method, nets, txs))(state, batch, rec)
  before = state.batch_stats["processor"]["blocks_0"]["bn1"]
  after = new.batch_stats["processor"]["blocks_0"]["bn1"]
  assert not np.allclose(before["mean"], after["mean"])
  assert not np.allclose(before["var"], after["var"])


def test_transformer_mode_recognition_gradient_is_exactly_zero_for_p(nets, rec, batch):
  method, _, state = _setup("transformer", nets)
  loss_fn = step_lib.make_loss_fn(method, nets)

  def recognition(params):
    return loss_fn(params, state.batch_stats, batch, rec)[1][0]["recognition"]

  grads = jax.jit(jax.grad(recognition))(state.params)
  p_leaves = jax.tree.leaves(grads["processor"])
  assert p_leaves and all(bool(jnp.all(g == 0)) for g in p_leaves)
  assert any(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads["transformer"]))


def test_transformer_mode_updates_p_exactly_like_plain_and_t_has_its_own_adam_state(nets, rec, batch):
  _, t_txs, t_state = _setup("transformer", nets)
  t_method = step_lib.Method(mode="transformer", lam=1e-2)
  p_method, p_txs, p_state = _setup("plain", nets)
  chex.assert_trees_all_equal(t_state.params["processor"], p_state.params["processor"])
  t_new, _ = jax.jit(step_lib.make_train_step(t_method, nets, t_txs))(t_state, batch, rec)
  p_new, _ = jax.jit(step_lib.make_train_step(p_method, nets, p_txs))(p_state, batch, rec)
  # P sees only its pixel loss: the same update as plain training, to the last bit.
  chex.assert_trees_all_equal(t_new.params["processor"], p_new.params["processor"])
  # T is trained, by its own optimizer whose moments are separate from P's.
  assert not _tree_equal(t_new.params["transformer"], t_state.params["transformer"])
  mu_t = t_new.opt_state["transformer"][0].mu
  assert jax.tree.structure(mu_t) == jax.tree.structure(t_new.params["transformer"])
  assert any(bool(jnp.any(m != 0)) for m in jax.tree.leaves(mu_t))


def test_ra_gradient_reaches_p_and_lambda_zero_equals_plain(nets, rec, batch):
  method, _, state = _setup("ra", nets)
  loss_fn = step_lib.make_loss_fn(method, nets)
  g = jax.jit(jax.grad(lambda p: loss_fn(p, state.batch_stats, batch, rec)[1][0]["recognition"]))(state.params)
  assert any(bool(jnp.any(x != 0)) for x in jax.tree.leaves(g["processor"]))

  ra0, txs, s0 = _setup("ra", nets, lam=0.0)
  plain, ptxs, s1 = _setup("plain", nets)
  a, _ = jax.jit(step_lib.make_train_step(ra0, nets, txs))(s0, batch, rec)
  b, _ = jax.jit(step_lib.make_train_step(plain, nets, ptxs))(s1, batch, rec)
  chex.assert_trees_all_close(a.params, b.params, atol=1e-7)
  ra1, txs1, s2 = _setup("ra", nets, lam=1.0)
  c, _ = jax.jit(step_lib.make_train_step(ra1, nets, txs1))(s2, batch, rec)
  assert not _tree_equal(c.params, b.params)


def test_unsupervised_mode_matches_prob_mse_of_r_outputs(nets, rec, batch):
  method, _, state = _setup("unsupervised", nets)
  loss_fn = step_lib.make_loss_fn(method, nets)
  _, (terms, _, logits, out, labels) = jax.jit(loss_fn)(state.params, state.batch_stats, batch, rec)
  np.testing.assert_array_equal(labels, batch["label"])  # labels="dataset": the batch's own
  target_logits = jax.jit(lambda r, y: r(y))(rec, jnp.asarray(batch["target"], jnp.float32) / 255.0)
  p = jax.nn.softmax(logits, -1)
  q = jax.nn.softmax(target_logits, -1)
  np.testing.assert_allclose(float(terms["recognition"]), float(jnp.mean((p - q) ** 2)), rtol=1e-5)
  kl = step_lib.Method(mode="unsupervised", lam=1.0, distance="kl")
  _, (kl_terms, *_rest) = jax.jit(step_lib.make_loss_fn(kl, nets))(state.params, state.batch_stats, batch, rec)
  expected_kl = jnp.mean(jnp.sum(q * (jnp.log(q) - jnp.log(p)), -1))
  np.testing.assert_allclose(float(kl_terms["recognition"]), float(expected_kl), rtol=1e-4)


def _recognizer_kernel_shapes(rec):
  return {tuple(x.shape) for x in jax.tree.leaves(rec.variables["params"]) if x.ndim >= 2}


def test_no_gradient_is_computed_for_recognizer_variables(nets, rec, batch):
  """Weight gradients of R would show up as conv/dot outputs shaped like R's kernels; there are none."""
  r_shapes = _recognizer_kernel_shapes(rec)
  p_shapes = {tuple(x.shape) for x in jax.tree.leaves(nets["processor"].init(
      jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]) if x.ndim >= 2}
  assert not r_shapes & p_shapes, "test set-up: P and R kernel shapes must be distinct"

  def produced_shapes(jaxpr):
    shapes = set()
    for eqn in jaxpr.eqns:
      if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
        shapes.update(tuple(v.aval.shape) for v in eqn.outvars)
      for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else ():
        shapes |= produced_shapes(sub)
      for p in eqn.params.values():
        inner = getattr(p, "jaxpr", None)
        if inner is not None:
          shapes |= produced_shapes(getattr(inner, "jaxpr", inner))
    return shapes

  method, txs, state = _setup("ra", nets)
  step = step_lib.make_train_step(method, nets, txs)
  shapes = produced_shapes(jax.make_jaxpr(step)(state, batch, rec).jaxpr)
  assert not shapes & r_shapes

  # The check does see recognizer weight gradients when they are taken.
  loss_fn = step_lib.make_loss_fn(method, nets)

  def with_r_grad(variables):
    r = rajax.Recognizer(name=rec.name, module=rec.module, variables=variables)
    return loss_fn(state.params, state.batch_stats, batch, r)[0]

  r_grad_shapes = produced_shapes(jax.make_jaxpr(jax.grad(with_r_grad))(rec.variables).jaxpr)
  assert r_grad_shapes & r_shapes


def test_recognizer_variables_are_untouched_by_training(nets, rec, batch):
  before = jax.tree.map(np.array, rec.variables)
  method, txs, state = _setup("ra", nets)
  step = jax.jit(step_lib.make_train_step(method, nets, txs))
  for _ in range(2):
    state, _ = step(state, batch, rec)
  chex.assert_trees_all_equal(before, jax.tree.map(np.array, rec.variables))


def test_eval_step_masks_padding_and_measures_on_t_in_transformer_mode(nets, rec, batch):
  method, _, state = _setup("transformer", nets)
  ev = jax.jit(step_lib.make_eval_step(method, nets))
  full = ev(state, dict(batch, mask=np.ones(4, np.float32)), rec)
  assert float(full["count"]) == 4
  # Replace the last two examples by garbage marked as padding: sums over the first two only.
  garbage = {k: np.array(v) for k, v in batch.items()}
  garbage["target"][2:] = 0
  garbage["label"][2:] = 0
  garbage["mask"] = np.array([1, 1, 0, 0], np.float32)
  half = ev(state, garbage, rec)
  first_two = ev(state, {k: v[:2] for k, v in batch.items()}, rec)
  assert float(half["count"]) == 2
  for k in ("psnr", "ssim", "top1", "recognition_ce"):
    np.testing.assert_allclose(float(half[k]), float(first_two[k]), rtol=1e-5)
  # Recognition is measured on T(P(x)): compare with R applied by hand.
  x = jnp.asarray(batch["input"], jnp.float32) / 255.0
  out = jnp.clip(nets["processor"].apply({"params": state.params["processor"],
                                          "batch_stats": state.batch_stats["processor"]}, x), 0, 1)
  t = nets["transformer"].apply({"params": state.params["transformer"],
                                 "batch_stats": state.batch_stats["transformer"]}, out)
  correct = jnp.sum(jnp.argmax(rec(t), -1) == batch["label"])
  assert float(full["top1"]) == float(correct)


def test_device_stage_makes_the_denoising_input(rec):
  """A batch without "input" (noise left to the device) trains and evaluates as the batch it completes to."""
  from rajax import degrade
  nets = {"processor": rajax.processor("srresnet", scale=1, blocks=1, channels=8)}
  method = step_lib.Method(mode="ra", lam=1e-3)
  txs = {"processor": optax.adam(1e-3)}
  state = jax.jit(lambda k: step_lib.init_state(method, nets, txs, rng=k, input_shape=(16, 16, 3)))(
      jax.random.PRNGKey(0))
  rng = np.random.default_rng(1)
  clean = {"target": rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8),
           "label": rng.integers(0, 10, (4,)).astype(np.int32), "index": np.array([3, 1, 4, 1], np.int32)}
  stage = degrade.DeviceNoise(sigma=0.1, seed=5)
  full = dict(clean, input=np.asarray(jax.jit(stage)(clean)["input"]))
  want_state, want_metrics = jax.jit(step_lib.make_train_step(method, nets, txs))(state, full, rec)
  got_state, got_metrics = jax.jit(step_lib.make_train_step(method, nets, txs, device_stage=stage))(state, clean, rec)
  chex.assert_trees_all_close(got_metrics, want_metrics, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(got_state.params, want_state.params, rtol=1e-5, atol=1e-6)
  want_eval = jax.jit(step_lib.make_eval_step(method, nets))(state, full, rec)
  got_eval = jax.jit(step_lib.make_eval_step(method, nets, device_stage=stage))(state, clean, rec)
  chex.assert_trees_all_close(got_eval, want_eval, rtol=1e-5, atol=1e-6)
  # Examples 1 and 3 share index 1, hence their noise: identical targets give identical inputs.
  noisy = np.asarray(stage(dict(clean, target=np.repeat(clean["target"][:1], 4, 0)))["input"])
  np.testing.assert_array_equal(noisy[1], noisy[3])
  assert not np.array_equal(noisy[0], noisy[1])
  # Without the stage the step says what is missing and how to provide it.
  with pytest.raises(ValueError, match="device_stage"):
    step_lib.make_train_step(method, nets, txs)(state, clean, rec)
  with pytest.raises(ValueError, match="device_stage"):
    step_lib.make_eval_step(method, nets)(state, clean, rec)


def test_errors_name_the_problem(nets, rec, batch):
  with pytest.raises(ValueError, match="Unknown mode"):
    step_lib.Method(mode="sr")
  with pytest.raises(ValueError, match="lam"):
    step_lib.Method(mode="ra", lam=-1.0)
  with pytest.raises(ValueError, match="missing"):
    step_lib.make_train_step(step_lib.Method(mode="transformer"), {"processor": nets["processor"]}, {})
  method, txs, state = _setup("ra", nets)
  with pytest.raises(ValueError, match="needs a recognizer"):
    step_lib.make_train_step(method, nets, txs)(state, batch, None)
  bad = dict(batch, target=batch["target"][:, :16, :16])
  with pytest.raises(ValueError, match="same shape"):
    step_lib.make_train_step(method, nets, txs)(state, bad, rec)


def test_paper_schedule_is_piecewise_constant_in_epochs():
  cfg = ml_collections.ConfigDict(dict(name="adam", lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                                       decay_epochs=(4, 5), decay_factor=0.1, grad_clip=0.0))
  sched = optim.schedule(cfg, steps_per_epoch=100)
  for s, lr in [(0, 1e-4), (399, 1e-4), (400, 1e-5), (499, 1e-5), (500, 1e-6), (599, 1e-6)]:
    assert float(sched(s)) == pytest.approx(lr, rel=1e-6), s
  tx = optim.make_optimizer(cfg, steps_per_epoch=100)
  params = {"w": jnp.ones(3)}
  updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
  # Adam's first step moves every weight by lr (times sign of the gradient).
  np.testing.assert_allclose(np.asarray(updates["w"]), -1e-4, rtol=1e-3)


def test_transformer_lr_gives_t_its_own_base_rate():
  cfg = ml_collections.ConfigDict(dict(name="adam", lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                                       decay_epochs=(1,), decay_factor=0.1, grad_clip=0.0, transformer_lr=3e-6))
  txs = optim.make_optimizers(cfg, ("processor", "transformer"), steps_per_epoch=10)
  params = {"w": jnp.ones(3)}
  first = {n: tx.update({"w": jnp.ones(3)}, tx.init(params), params)[0]["w"] for n, tx in txs.items()}
  np.testing.assert_allclose(np.asarray(first["processor"]), -1e-4, rtol=1e-3)
  np.testing.assert_allclose(np.asarray(first["transformer"]), -3e-6, rtol=1e-3)
  cfg.transformer_lr = None   # unset: T follows optim.lr
  txs = optim.make_optimizers(cfg, ("processor", "transformer"), steps_per_epoch=10)
  t = txs["transformer"]
  np.testing.assert_allclose(np.asarray(t.update({"w": jnp.ones(3)}, t.init(params), params)[0]["w"]), -1e-4, rtol=1e-3)


def test_min_confidence_keeps_only_confidently_recognised_examples(nets, rec, batch):
  """min_confidence: the RA term is the CE averaged over the examples whose clean top-1 probability
  reaches the threshold; the pixel term still sees every example."""
  y = jnp.asarray(batch["target"], jnp.float32) / 255.0
  clean = jax.jit(lambda r, y: r(y))(rec, y)
  conf = np.asarray(jnp.max(jax.nn.softmax(clean, -1), -1))
  threshold = float(np.median(conf))           # about half the examples pass
  keep = conf >= threshold
  assert 0 < keep.sum() < len(keep)
  _, _, state = _setup("ra", nets)
  run = lambda m: jax.jit(step_lib.make_loss_fn(m, nets))(state.params, state.batch_stats, batch, rec)
  _, (terms, _, logits, _, labels) = run(step_lib.Method(mode="ra", lam=1.0, labels="recognizer",
                                                         min_confidence=threshold))
  per_example = np.asarray(losses.recognition_ce(logits=logits, labels=labels, reduction="none"))
  np.testing.assert_allclose(float(terms["recognition"]), per_example[keep].mean(), rtol=1e-5)
  _, (all_terms, *_) = run(step_lib.Method(mode="ra", lam=1.0, labels="recognizer"))
  np.testing.assert_allclose(float(all_terms["recognition"]), per_example.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(terms["pixel_mse"]), float(all_terms["pixel_mse"]), rtol=1e-6)
  with pytest.raises(ValueError, match="recognizer-made labels"):
    step_lib.Method(mode="ra", min_confidence=0.5)
  with pytest.raises(ValueError, match="min_confidence"):
    step_lib.Method(mode="ra", labels="recognizer", min_confidence=1.5)


def test_recognizer_labels_are_r_top1_on_clean_targets(nets, rec, batch):
  """labels="recognizer": the CE uses argmax R(clean target), whatever batch["label"] holds."""
  y = jnp.asarray(batch["target"], jnp.float32) / 255.0
  want = np.asarray(jnp.argmax(jax.jit(lambda r, y: r(y))(rec, y), -1))
  for mode in ("ra", "unsupervised", "transformer"):
    method = step_lib.Method(mode=mode, lam=1.0, labels="recognizer")
    _, _, state = _setup(mode, nets)
    garbage = {**batch, "label": (batch["label"] + 1) % 10}
    _, (terms, _, logits, _, labels) = jax.jit(step_lib.make_loss_fn(method, nets))(
        state.params, state.batch_stats, garbage, rec)
    np.testing.assert_array_equal(np.asarray(labels), want, err_msg=mode)
    if mode == "ra":
      np.testing.assert_allclose(float(terms["recognition"]),
                                 float(losses.recognition_ce(logits=logits, labels=jnp.asarray(want))), rtol=1e-5)
  with pytest.raises(ValueError, match="label source"):
    step_lib.Method(mode="ra", labels="oracle")
