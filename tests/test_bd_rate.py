"""Bjontegaard deltas in rajax.metrics: the bjontegaard package's values, closed forms, MPEG's monotone
refit (as CompressAI-Vision does it) and the errors."""

import warnings

import bjontegaard
import numpy as np
import pytest
from scipy import optimize

from rajax import metrics

# bpp and top-1 (%) of two codecs over five QPs, the test codec the better one.
ANCHOR = (np.array([0.12, 0.19, 0.28, 0.41, 0.60]), np.array([52.1, 60.3, 65.8, 69.0, 70.9]))
TEST = (np.array([0.10, 0.16, 0.25, 0.37, 0.55]), np.array([54.0, 61.2, 66.9, 69.7, 71.2]))
INTERPOLATING = ("pchip", "akima", "cubic")


@pytest.mark.parametrize("method", INTERPOLATING)
def test_equals_the_package(method):
  got = metrics.bd_rate(*ANCHOR, *TEST, method=method)
  assert got == bjontegaard.bd_rate(*ANCHOR, *TEST, method=method)
  assert got < 0  # the test codec saves bits
  assert metrics.bd_metric(*ANCHOR, *TEST, method=method) == bjontegaard.bd_psnr(*ANCHOR, *TEST, method=method)
  # points in any order, and curves of different lengths
  shuffle = np.array([3, 0, 4, 1, 2])
  assert metrics.bd_rate(ANCHOR[0][shuffle], ANCHOR[1][shuffle], *TEST, method=method) == pytest.approx(got, abs=1e-12)
  four = (TEST[0][1:], TEST[1][1:])
  assert metrics.bd_rate(*ANCHOR, *four, method=method) == bjontegaard.bd_rate(
      *ANCHOR, *four, method=method, require_matching_points=False)


@pytest.mark.parametrize("method", metrics.BD_METHODS)
def test_closed_forms(method):
  """Every rate times s is 100 (s - 1) percent at every accuracy; every accuracy plus d is d at every rate."""
  rate, acc = ANCHOR
  for scale in (0.8, 1.25):
    assert metrics.bd_rate(rate, acc, scale * rate, acc, method=method) == pytest.approx(100 * (scale - 1), abs=1e-6)
  assert metrics.bd_metric(rate, acc, rate, acc + 2.0, method=method) == pytest.approx(2.0, abs=1e-6)
  assert metrics.bd_rate(rate, acc, rate, acc, method=method) == pytest.approx(0.0, abs=1e-9)


def test_hand_computed_linear_curves():
  """Anchor acc = 10 log10(r) + 50 on r in [0.1, 1], test acc = 20 log10(r) + 60 on r in [0.1, 1].

  BD-rate: log10 r_a(acc) = (acc - 50) / 10, log10 r_t(acc) = (acc - 60) / 20; on the common accuracy
  range [40, 50] the mean difference is mean((acc - 60) / 20 - (acc - 50) / 10) = mean(2 - acc / 20)
  = 2 - 45 / 20 = -0.25 decades, i.e. 100 (10^-0.25 - 1) percent. BD-accuracy over log10 r in
  [-1, 0]: mean(10 x + 10) = 5.
  """
  r = np.logspace(-1, 0, 5)
  anchor, test = 10 * np.log10(r) + 50, 20 * np.log10(r) + 60
  for method in INTERPOLATING:  # every method is exact on straight lines
    assert metrics.bd_rate(r, anchor, r, test, method=method) == pytest.approx(100 * (10**-0.25 - 1), abs=1e-9)
    assert metrics.bd_metric(r, anchor, r, test, method=method) == pytest.approx(5.0, abs=1e-9)


def _reference_fit(x, y, lo, hi):
  """The same constrained least-squares cubic, by a different optimiser (trust-constr) in raw x."""
  basis = lambda x: np.stack([x**3, x**2, x, np.ones_like(x)], -1)
  slope = np.stack([3 * x**2, 2 * x, np.ones_like(x), 0 * x], -1)
  curve = np.stack([6 * x, 2 + 0 * x, 0 * x, 0 * x], -1)
  a = np.concatenate([slope, -curve, basis(x[:1]), -basis(x[-1:])])
  low = np.concatenate([np.zeros(2 * len(x)), [lo], [-hi]])
  res = optimize.minimize(lambda b: np.sum((basis(x) @ b - y) ** 2), np.polyfit(x, y, 3), method="trust-constr",
                          constraints=[optimize.LinearConstraint(a, low, np.inf)],
                          options={"gtol": 1e-12, "xtol": 1e-14, "maxiter": 20000})
  return basis(x) @ res.x


def test_mpeg_vcm_monotone_refit():
  rate = np.array([0.10, 0.16, 0.25, 0.37, 0.55])
  acc = np.array([54.0, 61.2, 66.9, 66.1, 67.0])  # falls between the 3rd and 4th point
  with pytest.raises(ValueError, match="does not rise strictly with rate.*method='mpeg_vcm'"):
    metrics.bd_rate(*ANCHOR, rate, acc)
  fitted = metrics.monotone_accuracy(rate, acc)
  assert np.all(np.diff(fitted) > 0) and np.all(np.diff(fitted, 2) < 0)  # rising and concave along log rate
  np.testing.assert_allclose(fitted, _reference_fit(np.log10(rate), acc, 0.0, 100.0), atol=1e-4)
  shuffle = np.array([4, 2, 0, 3, 1])  # refitted values come back in the input order
  np.testing.assert_allclose(metrics.monotone_accuracy(rate[shuffle], acc[shuffle]), fitted[shuffle], atol=1e-9)
  value = metrics.bd_rate(*ANCHOR, rate, acc, method="mpeg_vcm")
  anchor_fit = metrics.monotone_accuracy(*ANCHOR)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    assert value == pytest.approx(bjontegaard.bd_rate(ANCHOR[0], anchor_fit, rate, fitted, method="pchip"), abs=1e-6)
  # a curve that already is a rising concave cubic in log rate is kept
  x = np.log10(rate)
  cubic = 60 + 30 * (x + 1) - 12 * (x + 1) ** 2 + 0.5 * (x + 1) ** 3
  np.testing.assert_allclose(metrics.monotone_accuracy(rate, cubic), cubic, atol=1e-6)


def test_errors():
  rate, acc = ANCHOR
  with pytest.raises(ValueError, match="has 3 points; Bjontegaard deltas need at least 4"):
    metrics.bd_rate(rate[:3], acc[:3], *TEST)
  with pytest.raises(ValueError, match=r"non-positive rates \[0.0\]"):
    metrics.bd_rate(np.r_[0.0, rate[1:]], acc, *TEST)
  with pytest.raises(ValueError, match=r"non-positive rates \[-1.0\]"):
    metrics.bd_metric(*TEST, np.r_[-1.0, rate[1:]], acc)
  with pytest.raises(ValueError, match="metric ranges do not overlap"):
    metrics.bd_rate(rate, acc, rate, acc + 30)
  with pytest.raises(ValueError, match="rate ranges do not overlap"):
    metrics.bd_metric(rate, acc, rate * 10, acc)
  with pytest.raises(ValueError, match="Unknown Bjontegaard method 'linear'"):
    metrics.bd_rate(*ANCHOR, *TEST, method="linear")
  with pytest.raises(ValueError, match="equal length"):
    metrics.bd_rate(rate, acc[:4], *TEST)
  with pytest.raises(ValueError, match="repeated rates"):
    metrics.bd_rate(np.r_[rate[:4], rate[3]], acc, *TEST)
  with pytest.raises(ValueError, match="non-finite"):
    metrics.bd_metric(rate, np.r_[acc[:4], np.nan], *TEST)
