"""Tests of rajax.losses against hand-computed values and plain-numpy reference implementations."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rajax import losses

# --------------------------------------------------------------------------- numpy references


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(axis=-1, keepdims=True)
  z = x - m
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_softmax(x):
  return np.exp(np_log_softmax(x))


def np_ce(logits, target):
  """Per-example cross-entropy with a [B, K] target distribution."""
  return -(np.asarray(target, np.float64) * np_log_softmax(logits)).sum(axis=-1)


def np_onehot(labels, k):
  out = np.zeros((len(labels), k), np.float64)
  out[np.arange(len(labels)), labels] = 1.0
  return out


def rng(seed=0):
  return np.random.default_rng(seed)


def assert_close(actual, expected, rtol=1e-5, atol=1e-6):
  np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- pixel_mse / pixel_l1


def test_pixel_mse_hand_computed():
  pred = jnp.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
  target = jnp.array([[1.0, 0.0, 3.0, 1.0], [1.0, -1.0, 2.0, 0.0]])
  # example 0: diffs 0, 2, 0, 3 -> squares 0, 4, 0, 9 -> mean 13/4
  # example 1: diffs -1, 1, -2, 0 -> squares 1, 1, 4, 0 -> mean 6/4
  assert_close(losses.pixel_mse(pred=pred, target=target, reduction="none"), [13 / 4, 6 / 4])
  assert_close(losses.pixel_mse(pred=pred, target=target, reduction="sum"), 19 / 4)
  assert_close(losses.pixel_mse(pred=pred, target=target, reduction="mean"), 19 / 8)
  assert_close(losses.pixel_mse(pred=pred, target=target), 19 / 8)  # default is "mean"


def test_pixel_l1_hand_computed():
  pred = jnp.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
  target = jnp.array([[1.0, 0.0, 3.0, 1.0], [1.0, -1.0, 2.0, 0.0]])
  # |diffs|: 0, 2, 0, 3 -> 5/4 ; 1, 1, 2, 0 -> 4/4
  assert_close(losses.pixel_l1(pred=pred, target=target, reduction="none"), [5 / 4, 1.0])
  assert_close(losses.pixel_l1(pred=pred, target=target, reduction="sum"), 9 / 4)
  assert_close(losses.pixel_l1(pred=pred, target=target, reduction="mean"), 9 / 8)
  assert_close(losses.pixel_l1(pred=pred, target=target), 9 / 8)


@pytest.mark.parametrize("fn, np_fn", [
    (losses.pixel_mse, lambda d: d * d),
    (losses.pixel_l1, np.abs),
])
def test_pixel_losses_match_numpy_on_images(fn, np_fn):
  r = rng(1)
  pred = r.normal(size=(3, 5, 7, 3)).astype(np.float32)
  target = r.normal(size=(3, 5, 7, 3)).astype(np.float32)
  e = np_fn(pred.astype(np.float64) - target)
  per_example = e.reshape(3, -1).mean(axis=1)

  none = fn(pred=jnp.asarray(pred), target=jnp.asarray(target), reduction="none")
  assert none.shape == (3,)
  assert none.dtype == jnp.float32
  assert_close(none, per_example)

  mean = fn(pred=jnp.asarray(pred), target=jnp.asarray(target), reduction="mean")
  assert mean.shape == ()
  # "mean" equals the mean over every element (torch MSELoss / L1Loss).
  assert_close(mean, e.mean())

  total = fn(pred=jnp.asarray(pred), target=jnp.asarray(target), reduction="sum")
  assert total.shape == ()
  assert_close(total, per_example.sum())


@pytest.mark.parametrize("fn", [losses.pixel_mse, losses.pixel_l1])
def test_pixel_losses_zero_for_identical_inputs(fn):
  x = jnp.asarray(rng(2).normal(size=(2, 4, 4, 3)), jnp.float32)
  assert_close(fn(pred=x, target=x, reduction="none"), [0.0, 0.0], atol=0)


@pytest.mark.parametrize("fn, np_fn", [
    (losses.pixel_mse, lambda d: d * d),
    (losses.pixel_l1, np.abs),
])
def test_pixel_losses_bfloat16_computed_in_float32(fn, np_fn):
  r = rng(3)
  pred = jnp.asarray(r.uniform(size=(2, 8, 8, 3)), jnp.bfloat16)
  target = jnp.asarray(r.uniform(size=(2, 8, 8, 3)), jnp.bfloat16)
  out = fn(pred=pred, target=target, reduction="none")
  assert out.dtype == jnp.float32
  # Reference: the bfloat16 values, exactly representable in float64, differenced in high precision.
  d = np.asarray(pred.astype(jnp.float32), np.float64) - np.asarray(target.astype(jnp.float32), np.float64)
  assert_close(out, np_fn(d).reshape(2, -1).mean(axis=1), rtol=1e-5)
  assert fn(pred=pred, target=target).dtype == jnp.float32


def test_pixel_mse_float32_accumulation_not_bfloat16():
  # A mean of many small squared errors: bfloat16 accumulation would be visibly off.
  pred = jnp.full((1, 4096), 0.1, jnp.bfloat16)
  target = jnp.zeros((1, 4096), jnp.bfloat16)
  v = float(np.float32(jnp.bfloat16(0.1)))
  assert_close(losses.pixel_mse(pred=pred, target=target), v * v, rtol=1e-6)


def test_pixel_mse_gradient_is_2_diff_over_n():
  r = rng(4)
  pred = jnp.asarray(r.normal(size=(2, 3, 4, 1)), jnp.float32)
  target = jnp.asarray(r.normal(size=(2, 3, 4, 1)), jnp.float32)
  g = jax.grad(lambda p: losses.pixel_mse(pred=p, target=target))(pred)
  n = pred.size
  assert_close(g, 2.0 * (np.asarray(pred, np.float64) - np.asarray(target)) / n, rtol=1e-5)
  # "sum" of per-example means: gradient 2 d / (elements per example).
  g_sum = jax.grad(lambda p: losses.pixel_mse(pred=p, target=target, reduction="sum"))(pred)
  assert_close(g_sum, 2.0 * (np.asarray(pred, np.float64) - np.asarray(target)) / (n // 2), rtol=1e-5)


def test_pixel_l1_gradient_is_sign_over_n():
  pred = jnp.array([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]])
  target = jnp.array([[0.0, 0.0, 1.0], [1.0, 2.0, 1.0]])
  g = jax.grad(lambda p: losses.pixel_l1(pred=p, target=target))(pred)
  assert_close(g, np.sign(np.asarray(pred) - np.asarray(target)) / 6.0)


def test_pixel_losses_under_jit():
  r = rng(5)
  pred = jnp.asarray(r.normal(size=(4, 6, 6, 3)), jnp.float32)
  target = jnp.asarray(r.normal(size=(4, 6, 6, 3)), jnp.float32)
  d = np.asarray(pred, np.float64) - np.asarray(target)
  mse = jax.jit(losses.pixel_mse, static_argnames="reduction")
  l1 = jax.jit(functools.partial(losses.pixel_l1, reduction="none"))
  assert_close(mse(pred=pred, target=target, reduction="mean"), (d * d).mean())
  assert_close(mse(pred=pred, target=target, reduction="none"), (d * d).reshape(4, -1).mean(1))
  assert_close(l1(pred=pred, target=target), np.abs(d).reshape(4, -1).mean(1))


@pytest.mark.parametrize("fn", [losses.pixel_mse, losses.pixel_l1])
def test_pixel_losses_bad_input(fn):
  a = jnp.zeros((2, 4, 4, 3))
  with pytest.raises(ValueError, match=r"same shape.*\(2, 4, 4, 3\).*\(2, 4, 4, 1\)"):
    fn(pred=a, target=jnp.zeros((2, 4, 4, 1)))
  with pytest.raises(ValueError, match="reduction must be one of"):
    fn(pred=a, target=a, reduction="avg")
  with pytest.raises(ValueError, match="batch axis"):
    fn(pred=jnp.float32(1.0), target=jnp.float32(2.0))


def test_pixel_losses_are_keyword_only():
  a = jnp.zeros((1, 2))
  with pytest.raises(TypeError):
    losses.pixel_mse(a, a)  # positional order pred/target must not be guessable


# --------------------------------------------------------------------------- recognition_ce


def test_recognition_ce_hand_computed_tiny_case():
  # logits [0, ln 3] -> probabilities [1/4, 3/4]
  logits = jnp.array([[0.0, math.log(3.0)]])
  assert_close(losses.recognition_ce(logits=logits, labels=jnp.array([1])), math.log(4 / 3))
  assert_close(losses.recognition_ce(logits=logits, labels=jnp.array([0])), math.log(4.0))
  # soft label [1/2, 1/2]: -(ln(1/4) + ln(3/4)) / 2
  assert_close(losses.recognition_ce(logits=logits, labels=jnp.array([[0.5, 0.5]])),
               -(math.log(0.25) + math.log(0.75)) / 2)


def test_recognition_ce_label_smoothing_hand_computed():
  logits = jnp.array([[0.0, math.log(3.0)]])
  # eps = 0.2, K = 2: target for label 1 = 0.8 * [0, 1] + 0.1 = [0.1, 0.9]
  expected = -(0.1 * math.log(0.25) + 0.9 * math.log(0.75))
  assert_close(losses.recognition_ce(logits=logits, labels=jnp.array([1]), label_smoothing=0.2), expected)


def test_recognition_ce_matches_numpy_all_reductions():
  r = rng(6)
  b, k = 5, 7
  logits = r.normal(size=(b, k)).astype(np.float32) * 3
  labels = r.integers(0, k, size=b)
  ref = np_ce(logits, np_onehot(labels, k))
  # Equivalent to -log_softmax at the label
  assert_close(ref, -np_log_softmax(logits)[np.arange(b), labels], rtol=1e-12)

  none = losses.recognition_ce(logits=jnp.asarray(logits), labels=jnp.asarray(labels), reduction="none")
  assert none.shape == (b,)
  assert none.dtype == jnp.float32
  assert_close(none, ref)
  assert_close(losses.recognition_ce(logits=jnp.asarray(logits), labels=jnp.asarray(labels)), ref.mean())
  assert_close(losses.recognition_ce(logits=jnp.asarray(logits), labels=jnp.asarray(labels), reduction="sum"),
               ref.sum())


def test_recognition_ce_is_stable_for_large_logits():
  logits = jnp.array([[1000.0, 0.0, -1000.0], [0.0, 500.0, 0.0]])
  out = losses.recognition_ce(logits=logits, labels=jnp.array([1, 1]), reduction="none")
  assert np.all(np.isfinite(np.asarray(out)))
  assert_close(out, [1000.0, 0.0], atol=1e-4)


def test_recognition_ce_onehot_soft_labels_equal_integer_labels():
  r = rng(7)
  b, k = 6, 10
  logits = jnp.asarray(r.normal(size=(b, k)), jnp.float32)
  labels = jnp.asarray(r.integers(0, k, size=b), jnp.int32)
  onehot = jax.nn.one_hot(labels, k)
  for red in ("none", "mean", "sum"):
    hard = losses.recognition_ce(logits=logits, labels=labels, reduction=red)
    soft = losses.recognition_ce(logits=logits, labels=onehot, reduction=red)
    assert_close(soft, hard, rtol=1e-6)
  for eps in (0.1, 0.5):
    hard = losses.recognition_ce(logits=logits, labels=labels, label_smoothing=eps, reduction="none")
    soft = losses.recognition_ce(logits=logits, labels=onehot, label_smoothing=eps, reduction="none")
    assert_close(soft, hard, rtol=1e-6)


def test_recognition_ce_soft_labels_match_numpy():
  r = rng(8)
  b, k = 4, 6
  logits = r.normal(size=(b, k)).astype(np.float32)
  soft = r.uniform(size=(b, k))
  soft = (soft / soft.sum(-1, keepdims=True)).astype(np.float32)
  out = losses.recognition_ce(logits=jnp.asarray(logits), labels=jnp.asarray(soft), reduction="none")
  assert out.shape == (b,)
  assert_close(out, np_ce(logits, soft))


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3, 0.9])
def test_recognition_ce_label_smoothing_matches_numpy_formula(eps):
  r = rng(9)
  b, k = 5, 8
  logits = r.normal(size=(b, k)).astype(np.float32) * 2
  labels = r.integers(0, k, size=b)
  target = (1 - eps) * np_onehot(labels, k) + eps / k
  out = losses.recognition_ce(logits=jnp.asarray(logits), labels=jnp.asarray(labels), label_smoothing=eps,
                              reduction="none")
  assert_close(out, np_ce(logits, target))
  # Soft labels are smoothed with the same formula.
  soft = r.uniform(size=(b, k))
  soft /= soft.sum(-1, keepdims=True)
  out_soft = losses.recognition_ce(logits=jnp.asarray(logits), labels=jnp.asarray(soft, jnp.float32),
                                   label_smoothing=eps, reduction="mean")
  assert_close(out_soft, np_ce(logits, (1 - eps) * soft + eps / k).mean())


def test_recognition_ce_label_smoothing_changes_value():
  logits = jnp.array([[5.0, 0.0, 0.0]])
  plain = float(losses.recognition_ce(logits=logits, labels=jnp.array([0])))
  smooth = float(losses.recognition_ce(logits=logits, labels=jnp.array([0]), label_smoothing=0.3))
  assert smooth > plain + 0.1


def test_recognition_ce_bfloat16_logits_computed_in_float32():
  r = rng(10)
  logits = jnp.asarray(r.normal(size=(3, 5)) * 4, jnp.bfloat16)
  labels = jnp.array([0, 3, 4])
  out = losses.recognition_ce(logits=logits, labels=labels, reduction="none")
  assert out.dtype == jnp.float32
  ref = np_ce(np.asarray(logits.astype(jnp.float32)), np_onehot([0, 3, 4], 5))
  assert_close(out, ref, rtol=1e-5)
  soft = jax.nn.one_hot(labels, 5, dtype=jnp.bfloat16)
  out_soft = losses.recognition_ce(logits=logits, labels=soft)
  assert out_soft.dtype == jnp.float32
  assert_close(out_soft, ref.mean(), rtol=1e-5)


def test_recognition_ce_gradient_is_softmax_minus_target_over_b():
  r = rng(11)
  b, k = 4, 5
  logits = jnp.asarray(r.normal(size=(b, k)), jnp.float32)
  labels = np.array([0, 4, 2, 2])
  g = jax.grad(lambda z: losses.recognition_ce(logits=z, labels=jnp.asarray(labels)))(logits)
  assert_close(g, (np_softmax(np.asarray(logits)) - np_onehot(labels, k)) / b, rtol=1e-5, atol=1e-7)
  eps = 0.2
  g = jax.grad(lambda z: losses.recognition_ce(logits=z, labels=jnp.asarray(labels), label_smoothing=eps,
                                               reduction="sum"))(logits)
  target = (1 - eps) * np_onehot(labels, k) + eps / k
  assert_close(g, np_softmax(np.asarray(logits)) - target, rtol=1e-5, atol=1e-7)


def test_recognition_ce_under_jit():
  r = rng(12)
  logits = jnp.asarray(r.normal(size=(4, 6)), jnp.float32)
  labels = jnp.asarray([1, 0, 5, 3])
  f = jax.jit(losses.recognition_ce, static_argnames=("reduction", "label_smoothing"))
  ref = np_ce(np.asarray(logits), (1 - 0.1) * np_onehot([1, 0, 5, 3], 6) + 0.1 / 6)
  assert_close(f(logits=logits, labels=labels, label_smoothing=0.1, reduction="none"), ref)
  assert_close(f(logits=logits, labels=labels, label_smoothing=0.1), ref.mean())
  assert_close(f(logits=logits, labels=jax.nn.one_hot(labels, 6), label_smoothing=0.1, reduction="sum"), ref.sum())


def test_recognition_ce_bad_input():
  logits = jnp.zeros((3, 4))
  with pytest.raises(ValueError, match=r"Hard labels must be integers.*float32"):
    losses.recognition_ce(logits=logits, labels=jnp.array([0.0, 1.0, 2.0]))
  with pytest.raises(ValueError, match=r"labels must be class indices \[3\] or soft labels \[3, 4\].*\(3, 5\)"):
    losses.recognition_ce(logits=logits, labels=jnp.zeros((3, 5)))
  with pytest.raises(ValueError, match=r"labels must be class indices.*\(2,\)"):
    losses.recognition_ce(logits=logits, labels=jnp.array([0, 1]))
  with pytest.raises(ValueError, match=r"labels must be class indices.*\(3, 1\)"):
    losses.recognition_ce(logits=logits, labels=jnp.zeros((3, 1), jnp.int32))
  with pytest.raises(ValueError, match=r"logits must be \[batch, classes\].*\(4,\)"):
    losses.recognition_ce(logits=jnp.zeros((4,)), labels=jnp.array([0]))
  with pytest.raises(ValueError, match=r"logits must be \[batch, classes\]"):
    losses.recognition_ce(logits=jnp.zeros((2, 3, 4)), labels=jnp.array([0, 1]))
  for eps in (1.0, -0.1, 1.5):
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
      losses.recognition_ce(logits=logits, labels=jnp.array([0, 1, 2]), label_smoothing=eps)
  with pytest.raises(ValueError, match="reduction must be one of"):
    losses.recognition_ce(logits=logits, labels=jnp.array([0, 1, 2]), reduction="batchmean")


# --------------------------------------------------------------------------- prob_mse / prob_kl


def test_prob_mse_hand_computed():
  # p = [1/4, 3/4], q = [1/2, 1/2] -> diffs -1/4, 1/4 -> mean over K of squares = 1/16
  logits = jnp.array([[0.0, math.log(3.0)], [0.0, 0.0]])
  target = jnp.array([[0.0, 0.0], [0.0, 0.0]])
  assert_close(losses.prob_mse(logits=logits, target_logits=target, reduction="none"), [1 / 16, 0.0])
  assert_close(losses.prob_mse(logits=logits, target_logits=target), 1 / 32)
  assert_close(losses.prob_mse(logits=logits, target_logits=target, reduction="sum"), 1 / 16)


def test_prob_mse_matches_numpy_mean_over_b_times_k():
  r = rng(13)
  b, k = 6, 9
  logits = r.normal(size=(b, k)).astype(np.float32) * 2
  target = r.normal(size=(b, k)).astype(np.float32) * 2
  sq = (np_softmax(logits) - np_softmax(target)) ** 2
  out = losses.prob_mse(logits=jnp.asarray(logits), target_logits=jnp.asarray(target))
  assert out.shape == ()
  assert_close(out, sq.sum() / (b * k))
  none = losses.prob_mse(logits=jnp.asarray(logits), target_logits=jnp.asarray(target), reduction="none")
  assert none.shape == (b,)
  assert_close(none, sq.mean(axis=1))
  assert_close(losses.prob_mse(logits=jnp.asarray(logits), target_logits=jnp.asarray(target), reduction="sum"),
               sq.mean(axis=1).sum())


def test_prob_mse_invariant_to_logit_shift_and_zero_for_identical():
  r = rng(14)
  logits = jnp.asarray(r.normal(size=(3, 4)), jnp.float32)
  assert_close(losses.prob_mse(logits=logits, target_logits=logits + 7.0, reduction="none"), np.zeros(3), atol=1e-7)


def test_prob_kl_hand_computed():
  # q = softmax(target) = [1/2, 1/2], p = softmax(logits) = [1/4, 3/4]
  # KL(q||p) = 1/2 ln(2) + 1/2 ln(2/3)
  logits = jnp.array([[0.0, math.log(3.0)]])
  target = jnp.array([[0.0, 0.0]])
  expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
  assert_close(losses.prob_kl(logits=logits, target_logits=target), expected)
  # Direction matters: KL(p||q) is a different number.
  reverse = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
  assert abs(reverse - expected) > 1e-3
  assert_close(losses.prob_kl(logits=target, target_logits=logits), reverse)


def np_kl(logits, target, t=1.0):
  logp = np_log_softmax(np.asarray(logits, np.float64) / t)
  logq = np_log_softmax(np.asarray(target, np.float64) / t)
  return (np.exp(logq) * (logq - logp)).sum(axis=-1)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 4.0])
def test_prob_kl_matches_numpy(temperature):
  r = rng(15)
  b, k = 5, 7
  logits = r.normal(size=(b, k)).astype(np.float32) * 3
  target = r.normal(size=(b, k)).astype(np.float32) * 3
  ref = np_kl(logits, target, temperature)
  kw = dict(logits=jnp.asarray(logits), target_logits=jnp.asarray(target), temperature=temperature)
  none = losses.prob_kl(**kw, reduction="none")
  assert none.shape == (b,)
  assert none.dtype == jnp.float32
  assert_close(none, ref, rtol=1e-5, atol=1e-6)
  assert_close(losses.prob_kl(**kw), ref.mean(), rtol=1e-5)
  assert_close(losses.prob_kl(**kw, reduction="sum"), ref.sum(), rtol=1e-5)
  assert np.all(ref >= 0)


def test_prob_kl_temperature_changes_result():
  logits = jnp.array([[2.0, 0.0, -1.0]])
  target = jnp.array([[0.0, 1.0, 0.5]])
  t1 = float(losses.prob_kl(logits=logits, target_logits=target))
  t4 = float(losses.prob_kl(logits=logits, target_logits=target, temperature=4.0))
  assert_close(t4, np_kl([[2.0, 0.0, -1.0]], [[0.0, 1.0, 0.5]], 4.0)[0])
  # Higher temperature flattens both distributions, so they become closer.
  assert t4 < t1


def test_prob_kl_zero_for_identical_logits():
  r = rng(16)
  logits = jnp.asarray(r.normal(size=(4, 10)) * 5, jnp.float32)
  for t in (1.0, 0.3, 3.0):
    out = losses.prob_kl(logits=logits, target_logits=logits, temperature=t, reduction="none")
    assert_close(out, np.zeros(4), atol=1e-6)


@pytest.mark.parametrize("fn", [losses.prob_mse, losses.prob_kl])
def test_prob_distances_bfloat16_computed_in_float32(fn):
  r = rng(17)
  logits = jnp.asarray(r.normal(size=(3, 6)), jnp.bfloat16)
  target = jnp.asarray(r.normal(size=(3, 6)), jnp.bfloat16)
  out = fn(logits=logits, target_logits=target, reduction="none")
  assert out.dtype == jnp.float32
  l32 = np.asarray(logits.astype(jnp.float32))
  t32 = np.asarray(target.astype(jnp.float32))
  if fn is losses.prob_mse:
    ref = ((np_softmax(l32) - np_softmax(t32)) ** 2).mean(-1)
  else:
    ref = np_kl(l32, t32)
  assert_close(out, ref, rtol=1e-5, atol=1e-7)


def test_prob_distances_gradients():
  r = rng(18)
  logits = jnp.asarray(r.normal(size=(2, 4)), jnp.float32)
  target = jnp.asarray(r.normal(size=(2, 4)), jnp.float32)
  # d KL(q||p) / d logits = (p - q) / B  for the batch mean with T = 1.
  g = jax.grad(lambda z: losses.prob_kl(logits=z, target_logits=target))(logits)
  assert_close(g, (np_softmax(np.asarray(logits)) - np_softmax(np.asarray(target))) / 2, rtol=1e-5, atol=1e-7)
  # prob_mse: compare with a central finite difference in float64 numpy.
  lg = np.asarray(logits, np.float64)
  tg = np.asarray(target, np.float64)
  f = lambda z: ((np_softmax(z) - np_softmax(tg)) ** 2).mean()
  fd = np.zeros_like(lg)
  h = 1e-6
  for idx in np.ndindex(lg.shape):
    e = np.zeros_like(lg)
    e[idx] = h
    fd[idx] = (f(lg + e) - f(lg - e)) / (2 * h)
  g = jax.grad(lambda z: losses.prob_mse(logits=z, target_logits=target))(logits)
  assert_close(g, fd, rtol=1e-4, atol=1e-7)


def test_prob_distances_under_jit():
  r = rng(19)
  logits = jnp.asarray(r.normal(size=(3, 5)), jnp.float32)
  target = jnp.asarray(r.normal(size=(3, 5)), jnp.float32)
  kl = jax.jit(losses.prob_kl, static_argnames=("temperature", "reduction"))
  mse = jax.jit(losses.prob_mse, static_argnames="reduction")
  assert_close(kl(logits=logits, target_logits=target, temperature=2.0, reduction="none"),
               np_kl(np.asarray(logits), np.asarray(target), 2.0), rtol=1e-5)
  assert_close(mse(logits=logits, target_logits=target),
               ((np_softmax(np.asarray(logits)) - np_softmax(np.asarray(target))) ** 2).mean())


@pytest.mark.parametrize("fn", [losses.prob_mse, losses.prob_kl])
def test_prob_distances_bad_input(fn):
  a = jnp.zeros((2, 5))
  with pytest.raises(ValueError, match=r"logits and target_logits must have the same shape.*\(2, 5\).*\(2, 4\)"):
    fn(logits=a, target_logits=jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match="reduction must be one of"):
    fn(logits=a, target_logits=a, reduction="mean_over_k")
  with pytest.raises(ValueError, match="batch axis"):
    fn(logits=jnp.float32(0), target_logits=jnp.float32(0))


def test_prob_kl_bad_temperature():
  a = jnp.zeros((2, 5))
  for t in (0.0, -1.0):
    with pytest.raises(ValueError, match="temperature must be positive"):
      losses.prob_kl(logits=a, target_logits=a, temperature=t)


def test_distances_registry():
  assert set(losses.DISTANCES) == {"prob_mse", "kl"}
  r = rng(20)
  logits = r.normal(size=(3, 4)).astype(np.float32)
  target = r.normal(size=(3, 4)).astype(np.float32)
  mse = losses.DISTANCES["prob_mse"](logits=jnp.asarray(logits), target_logits=jnp.asarray(target))
  kl = losses.DISTANCES["kl"](logits=jnp.asarray(logits), target_logits=jnp.asarray(target))
  assert_close(mse, ((np_softmax(logits) - np_softmax(target)) ** 2).mean())
  assert_close(kl, np_kl(logits, target).mean(), rtol=1e-5)


# --------------------------------------------------------------------------- feature_loss


def _features(seed=21, b=3):
  r = rng(seed)
  shapes = {"conv1": (b, 8, 8, 4), "conv2": (b, 4, 4, 8), "fc": (b, 16)}
  f = {n: r.normal(size=s).astype(np.float32) for n, s in shapes.items()}
  t = {n: r.normal(size=s).astype(np.float32) for n, s in shapes.items()}
  return f, t


def _np_layer(f, t, n, distance):
  d = f[n].astype(np.float64) - t[n]
  e = d * d if distance == "mse" else np.abs(d)
  return e.reshape(e.shape[0], -1).mean(axis=1)


@pytest.mark.parametrize("distance", ["mse", "l1"])
def test_feature_loss_weighted_sum_matches_manual(distance):
  f, t = _features()
  weights = {"conv1": 0.5, "conv2": 2.0, "fc": 0.1}
  manual = sum(w * _np_layer(f, t, n, distance) for n, w in weights.items())
  jf = {n: jnp.asarray(v) for n, v in f.items()}
  jt = {n: jnp.asarray(v) for n, v in t.items()}
  none = losses.feature_loss(features=jf, target_features=jt, weights=weights, distance=distance, reduction="none")
  assert none.shape == (3,)
  assert none.dtype == jnp.float32
  assert_close(none, manual)
  assert_close(losses.feature_loss(features=jf, target_features=jt, weights=weights, distance=distance),
               manual.mean())
  assert_close(losses.feature_loss(features=jf, target_features=jt, weights=weights, distance=distance,
                                   reduction="sum"), manual.sum())


def test_feature_loss_defaults_all_layers_weight_one_mse():
  f, t = _features()
  jf = {n: jnp.asarray(v) for n, v in f.items()}
  jt = {n: jnp.asarray(v) for n, v in t.items()}
  manual = sum(_np_layer(f, t, n, "mse") for n in f)
  assert_close(losses.feature_loss(features=jf, target_features=jt), manual.mean())


def test_feature_loss_layers_subset():
  f, t = _features()
  jf = {n: jnp.asarray(v) for n, v in f.items()}
  jt = {n: jnp.asarray(v) for n, v in t.items()}
  # Only the requested layers count; a layer without a weight gets 1.0.
  out = losses.feature_loss(features=jf, target_features=jt, layers=["conv2", "fc"], weights={"conv2": 3.0},
                            reduction="none")
  assert_close(out, 3.0 * _np_layer(f, t, "conv2", "mse") + _np_layer(f, t, "fc", "mse"))
  # Weights of unlisted layers are ignored when `layers` is given.
  out = losses.feature_loss(features=jf, target_features=jt, layers=("fc",), weights={"conv1": 100.0, "fc": 2.0},
                            distance="l1", reduction="none")
  assert_close(out, 2.0 * _np_layer(f, t, "fc", "l1"))


def test_feature_loss_default_layers_are_weight_names():
  f, t = _features()
  jf = {n: jnp.asarray(v) for n, v in f.items()}
  jt = {n: jnp.asarray(v) for n, v in t.items()}
  out = losses.feature_loss(features=jf, target_features=jt, weights={"conv1": 0.25}, reduction="none")
  assert_close(out, 0.25 * _np_layer(f, t, "conv1", "mse"))


def test_feature_loss_target_features_may_have_extra_layers():
  f, t = _features()
  jf = {"fc": jnp.asarray(f["fc"])}
  jt = {n: jnp.asarray(v) for n, v in t.items()}
  out = losses.feature_loss(features=jf, target_features=jt, reduction="none")
  assert_close(out, _np_layer(f, t, "fc", "mse"))


def test_feature_loss_zero_for_identical_features():
  f, _ = _features()
  jf = {n: jnp.asarray(v) for n, v in f.items()}
  assert_close(losses.feature_loss(features=jf, target_features=dict(jf), distance="l1", reduction="none"),
               np.zeros(3), atol=0)


def test_feature_loss_bfloat16_under_jit_and_grad():
  f, t = _features(seed=22, b=2)
  jf = {n: jnp.asarray(v, jnp.bfloat16) for n, v in f.items()}
  jt = {n: jnp.asarray(v, jnp.bfloat16) for n, v in t.items()}
  weights = {"conv1": 1.0, "fc": 0.5}
  fn = jax.jit(functools.partial(losses.feature_loss, weights=weights, distance="mse", reduction="none"))
  out = fn(features=jf, target_features=jt)
  assert out.dtype == jnp.float32
  f32 = {n: np.asarray(v.astype(jnp.float32)) for n, v in jf.items()}
  t32 = {n: np.asarray(v.astype(jnp.float32)) for n, v in jt.items()}
  assert_close(out, _np_layer(f32, t32, "conv1", "mse") + 0.5 * _np_layer(f32, t32, "fc", "mse"), rtol=1e-5)

  # Gradient w.r.t. the processed features: 2 w (f - t) / (B * elements per example) for the mean.
  ff = {n: jnp.asarray(v) for n, v in f.items()}
  tt = {n: jnp.asarray(v) for n, v in t.items()}
  g = jax.grad(lambda x: losses.feature_loss(features=x, target_features=tt, weights=weights))(ff)
  for n, w in weights.items():
    per_ex = f[n][0].size
    assert_close(g[n], 2 * w * (f[n].astype(np.float64) - t[n]) / (2 * per_ex), rtol=1e-5, atol=1e-8)
  assert_close(g["conv2"], np.zeros_like(f["conv2"]), atol=0)


def test_feature_loss_bad_input():
  f, t = _features()
  jf = {n: jnp.asarray(v) for n, v in f.items()}
  jt = {n: jnp.asarray(v) for n, v in t.items()}
  with pytest.raises(ValueError, match=r"distance must be one of \['l1', 'mse'\], got 'cosine'"):
    losses.feature_loss(features=jf, target_features=jt, distance="cosine")
  with pytest.raises(ValueError, match="at least one layer"):
    losses.feature_loss(features=jf, target_features=jt, layers=[])
  with pytest.raises(ValueError, match="at least one layer"):
    losses.feature_loss(features={}, target_features={})
  with pytest.raises(ValueError, match=r"Layers \['conv3'\] are not in both feature dicts.*available"):
    losses.feature_loss(features=jf, target_features=jt, layers=["conv1", "conv3"])
  with pytest.raises(ValueError, match=r"Layers \['conv9'\] are not in both"):
    losses.feature_loss(features=jf, target_features=jt, weights={"conv9": 1.0})
  # Present in features but missing from target_features.
  jt_missing = {n: v for n, v in jt.items() if n != "conv2"}
  with pytest.raises(ValueError, match=r"Layers \['conv2'\] are not in both"):
    losses.feature_loss(features=jf, target_features=jt_missing)
  with pytest.raises(ValueError, match="same shape"):
    losses.feature_loss(features=jf, target_features={**jt, "fc": jnp.zeros((3, 15))})
  with pytest.raises(ValueError, match="reduction must be one of"):
    losses.feature_loss(features=jf, target_features=jt, reduction="max")
