"""Image quality and recognition metrics over batches, as pure functions (one value per image).

PSNR and SSIM take float images in [0, 1] shaped [B, H, W, C]. `ssim` follows the paper's
reference implementation (pytorch_ssim): an 11x11 Gaussian window with sigma 1.5 applied to each
RGB channel with zero padding ("same" size), C1 = 0.01^2, C2 = 0.03^2, the map averaged over
pixels and channels of each image. `padding="valid"` gives the more common variant that only
averages windows lying wholly inside the image (tf.image.ssim, dm-pix's default).

`paired_test` compares two processors (or recognizers) example by example on the same examples:
McNemar's exact test on the examples that one gets right and the other wrong.

`bd_rate` / `bd_metric` are Bjontegaard deltas between rate-accuracy curves (the bjontegaard
package's PCHIP, Akima and cubic fits, and MPEG's coding-for-machines monotone refit "mpeg_vcm").
"""

from __future__ import annotations

from typing import Sequence

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def _check_images(a: jax.Array, b: jax.Array, who: str) -> None:
  if a.shape != b.shape or a.ndim != 4:
    raise ValueError(f"{who} expects two image batches of equal shape [B, H, W, C], got {a.shape} and {b.shape}.")


def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
  """Peak signal-to-noise ratio in dB for images in [0, 1]: [B, H, W, C] x2 -> [B]."""
  _check_images(a, b, "psnr")
  return dm_pix.psnr(a.astype(jnp.float32), b.astype(jnp.float32))


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
  x = np.arange(size, dtype=np.float64) - size // 2
  g = np.exp(-(x**2) / (2.0 * sigma**2))
  return (g / g.sum()).astype(np.float32)


def _band_matrix(n: int) -> np.ndarray:
  """[n, n] matrix M with (M @ v) = v convolved with the Gaussian window, zero-padded to size n."""
  g = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA)
  pad = SSIM_WINDOW // 2
  offset = np.arange(n)[None, :] - np.arange(n)[:, None] + pad   # tap index of input j for output i
  inside = (offset >= 0) & (offset < SSIM_WINDOW)
  return np.where(inside, g[np.clip(offset, 0, SSIM_WINDOW - 1)], 0.0).astype(np.float32)


def _same_zero_padded_blur(z: jax.Array) -> jax.Array:
  """Separable Gaussian blur of each channel of [B, H, W, C], zero padding, output size = input size.

  Each pass is a product with a banded [n, n] matrix rather than a grouped convolution: the same
  numbers, and several times faster on a CPU (where a grouped convolution is a slow loop nest).
  """
  hi = jax.lax.Precision.HIGHEST
  z = jnp.einsum("ij,bjwc->biwc", jnp.asarray(_band_matrix(z.shape[1])), z, precision=hi)
  return jnp.einsum("ij,bhjc->bhic", jnp.asarray(_band_matrix(z.shape[2])), z, precision=hi)


def ssim(a: jax.Array, b: jax.Array, *, padding: str = "same") -> jax.Array:
  """Structural similarity for images in [0, 1]: [B, H, W, C] x2 -> [B].

  padding="same" is the paper's definition (zero-padded window, see the module docstring);
  padding="valid" is dm-pix's / tf.image.ssim's.
  """
  _check_images(a, b, "ssim")
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  if padding == "valid":
    return dm_pix.ssim(a, b, filter_size=SSIM_WINDOW, filter_sigma=SSIM_SIGMA)
  if padding == "same":
    return dm_pix.ssim(a, b, filter_fn=_same_zero_padded_blur)
  raise ValueError(f"ssim padding must be 'same' (the paper's) or 'valid', got {padding!r}.")


def ssim_map(a: jax.Array, b: jax.Array) -> jax.Array:
  """The per-pixel SSIM map [B, H, W, C] of `ssim`'s paper definition (zero-padded window): its mean
  over the last three axes is ssim(a, b); a masked mean gives the SSIM of part of each image."""
  _check_images(a, b, "ssim_map")
  return dm_pix.ssim(a.astype(jnp.float32), b.astype(jnp.float32), filter_fn=_same_zero_padded_blur, return_map=True)


def topk_correct(logits: jax.Array, labels: jax.Array, ks: Sequence[int] = (1, 5)) -> dict[str, jax.Array]:
  """For each k, whether the label is among the k highest logits: {"top{k}": bool [B]}."""
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(f"topk_correct expects logits [B, K] and labels [B], got {logits.shape} and {labels.shape}.")
  out = {}
  for k in ks:
    if not 1 <= k <= logits.shape[1]:
      raise ValueError(f"k={k} is not in [1, {logits.shape[1]}] (the number of classes).")
    if k == 1:  # argmax picks the same index as top_k (the first of equal maxima) and, unlike top_k,
      # is partitioned along a sharded batch axis instead of gathering the logits onto every device
      out["top1"] = jnp.argmax(logits, axis=-1) == labels
      continue
    _, idx = jax.lax.top_k(logits, k)
    out[f"top{k}"] = jnp.any(idx == labels[:, None], axis=-1)
  return out


def accuracy(logits: jax.Array, labels: jax.Array, ks: Sequence[int] = (1, 5)) -> dict[str, jax.Array]:
  """Top-k accuracy over the batch, as fractions in [0, 1]: {"top{k}": scalar}."""
  return {name: jnp.mean(c.astype(jnp.float32)) for name, c in topk_correct(logits, labels, ks).items()}


def paired_test(a_correct, b_correct) -> dict[str, float]:
  """McNemar's exact test of per-example correctness of B against A on the same examples.

  a_correct, b_correct: boolean [N] (e.g. `topk_correct(...)["top1"]` of two processors' outputs).
  Returns {"gained": examples B gets right and A wrong, "lost": the reverse, "p": the two-sided
  p-value of the exact binomial test of gained against gained + lost at 1/2}, i.e. how often a
  split at least this lopsided arises when neither is better. Examples both get right or both get
  wrong carry no information about the difference and are not counted.
  """
  from scipy import stats
  a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"paired_test expects two boolean vectors over the same examples, got shapes {a.shape} "
                     f"and {b.shape}.")
  gained, lost = int(np.sum(b & ~a)), int(np.sum(a & ~b))
  p = 1.0 if gained + lost == 0 else float(stats.binomtest(gained, gained + lost, 0.5).pvalue)
  return {"gained": gained, "lost": lost, "p": p}


def paired_summary(test: dict) -> str:
  """A `paired_test` result as table text: "+gained/-lost, p = ..."."""
  return f"+{test['gained']}/-{test['lost']}, p = {test['p']:.2g}"


# ---------------------------------------------------------------------------------------------------
# Bjontegaard deltas between rate-accuracy curves (BD-rate, BD-accuracy).
#
# A curve is a few operating points (rate, metric) of one method, e.g. bits per pixel and top-1 at
# each QP of a codec's sweep. `bd_rate` is the average rate difference of the test curve against
# the anchor at equal metric, in percent (negative = bits saved at equal accuracy): log10(rate) is
# interpolated as a function of the metric on each curve and the difference averaged over the
# metric range both curves cover, then turned into a percentage, 100 (10^d - 1). `bd_metric` is the
# average metric difference at equal rate (the metric interpolated over log10(rate)), in the
# metric's units. Both go through the maintained `bjontegaard` package with
#
#   method="pchip"     piecewise cubic Hermite interpolation (monotone; JVET's and MPEG's choice),
#   method="akima"     Akima splines,
#   method="cubic"     one cubic polynomial fitted through the points (Bjontegaard's VCEG-M33),
#   method="mpeg_vcm"  MPEG's coding-for-machines practice as CompressAI-Vision implements it
#                      (scripts/metrics/curve_fitting.py, cubic_polynomial.py, after H. Wang et al.,
#                      "Improvements of the BD-Rate Metrics Using Monotonic Curve-Fitting Methods",
#                      PCS 2024): each curve's metric is first replaced by `monotone_accuracy`, its
#                      least-squares cubic in log10(rate) constrained to be non-decreasing and concave
#                      at the points and inside the metric's bounds (recognition accuracy often is
#                      not monotone in rate at the top: a lower QP can score a little worse), then
#                      PCHIP as above.
#
# The points of a curve may come in any order (they are sorted by rate). Rates must be positive,
# distinct, at least 4 per curve; for bd_rate with the interpolating methods the metric must rise
# strictly with rate (else use "mpeg_vcm"), and the curves' metric ranges (bd_rate) or rate ranges
# (bd_metric) must overlap.
# ---------------------------------------------------------------------------------------------------

BD_METHODS = ("pchip", "akima", "cubic", "mpeg_vcm")
BD_MIN_POINTS = 4


def _rd_curve(rate, metric, who: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(rates, metrics, order) of one curve as float64 sorted by rate, checked."""
  r = np.asarray(rate, np.float64)
  m = np.asarray(metric, np.float64)
  if r.ndim != 1 or m.shape != r.shape:
    raise ValueError(f"{who}: rates and metrics must be two 1-D sequences of equal length, got shapes {r.shape} and {m.shape}.")
  if len(r) < BD_MIN_POINTS:
    raise ValueError(f"{who} has {len(r)} points; Bjontegaard deltas need at least {BD_MIN_POINTS} (rate, metric) "
                     f"points per curve (e.g. a codec's five-quality sweep).")
  if not (np.all(np.isfinite(r)) and np.all(np.isfinite(m))):
    raise ValueError(f"{who} has non-finite rates or metrics: {r.tolist()}, {m.tolist()}.")
  if np.any(r <= 0):
    raise ValueError(f"{who} has non-positive rates {r[r <= 0].tolist()}; rates (bits, bpp, kbps) must be > 0 "
                     f"since they are compared on a log scale.")
  order = np.argsort(r, kind="stable")
  r, m = r[order], m[order]
  if np.any(np.diff(r) == 0):
    raise ValueError(f"{who} has repeated rates {r.tolist()}; give one point per operating point.")
  return r, m, order


def _check_method(method: str) -> None:
  if method not in BD_METHODS:
    raise ValueError(f"Unknown Bjontegaard method {method!r}; one of {', '.join(BD_METHODS)}.")


def monotone_accuracy(rate, metric, *, bounds: tuple[float, float] = (0.0, 100.0)) -> np.ndarray:
  """The metric of one curve refitted as CompressAI-Vision does before an MPEG coding-for-machines BD-rate.

  Fits f(x) = b0 x^3 + b1 x^2 + b2 x + b3 with x = log10(rate) by least squares to the metric,
  subject to f'(x_i) >= 0 and f''(x_i) <= 0 at every point, f(x_min) >= bounds[0] and
  f(x_max) <= bounds[1] (SLSQP), and returns f at each input rate, in the input order. f'' is linear,
  so concavity at the end points holds on the whole range and, with f' >= 0 at the highest rate,
  f is non-decreasing between the points too. `bounds` are the metric's range (CompressAI-Vision's
  0 and 100 are for percentages; use (0, 1) for fractions). Raises ValueError if the fit fails.
  """
  from scipy import optimize

  r, m, order = _rd_curve(rate, metric, "monotone_accuracy")
  lo, hi = bounds
  if not lo < hi:
    raise ValueError(f"monotone_accuracy bounds must be (low, high) with low < high, got {bounds}.")
  x = np.log10(r)
  centre = float(np.mean(x))  # the fit in x - centre: the same cubics, better conditioned
  t = x - centre
  powers = np.stack([t**3, t**2, t, np.ones_like(t)], axis=1)
  slopes = np.stack([3 * t**2, 2 * t, np.ones_like(t), np.zeros_like(t)], axis=1)
  curvatures = np.stack([6 * t, 2 * np.ones_like(t), np.zeros_like(t), np.zeros_like(t)], axis=1)
  constraints = (
      {"type": "ineq", "fun": lambda b: slopes @ b, "jac": lambda b: slopes},
      {"type": "ineq", "fun": lambda b: -(curvatures @ b), "jac": lambda b: -curvatures},
      {"type": "ineq", "fun": lambda b: powers[0] @ b - lo, "jac": lambda b: powers[:1]},
      {"type": "ineq", "fun": lambda b: hi - powers[-1] @ b, "jac": lambda b: -powers[-1:]},
  )
  start = np.linalg.lstsq(powers, m, rcond=None)[0]
  result = optimize.minimize(lambda b: float(np.sum((powers @ b - m) ** 2)), start,
                             jac=lambda b: 2 * powers.T @ (powers @ b - m), method="SLSQP",
                             constraints=constraints, options={"maxiter": 500, "ftol": 1e-12})
  if not result.success:
    raise ValueError(f"monotone_accuracy: the constrained cubic fit failed ({result.message}) for rates {r.tolist()} "
                     f"and metrics {m.tolist()}.")
  fitted = powers @ result.x
  out = np.empty_like(fitted)
  out[order] = fitted
  return out


def _interpolation(method: str) -> str:
  return "pchip" if method == "mpeg_vcm" else method


def _bd_inputs(rate_anchor, metric_anchor, rate_test, metric_test, method: str, who: str):
  _check_method(method)
  curves = []
  for name, rate, metric in (("anchor", rate_anchor, metric_anchor), ("test", rate_test, metric_test)):
    r, m, _ = _rd_curve(rate, metric, f"{who}'s {name} curve")
    if method == "mpeg_vcm":
      m = monotone_accuracy(r, m, bounds=(min(0.0, m.min()), max(100.0, m.max())))  # CompressAI-Vision's 0..100
    curves.append((r, m))
  return curves


def bd_rate(rate_anchor, metric_anchor, rate_test, metric_test, *, method: str = "pchip") -> float:
  """Bjontegaard-delta rate of the test curve against the anchor, in percent (negative = fewer bits
  at equal metric), averaged over the metric range both cover; `method` one of BD_METHODS."""
  import bjontegaard

  (ra, ma), (rt, mt) = _bd_inputs(rate_anchor, metric_anchor, rate_test, metric_test, method, "bd_rate")
  for name, m in (("anchor", ma), ("test", mt)):
    if np.any(np.diff(m) <= 0):
      raise ValueError(f"bd_rate's {name} curve: the metric does not rise strictly with rate ({m.tolist()} at rising "
                       f"rates), so rate is not a function of it; use method='mpeg_vcm' (monotone refit) or check "
                       f"the points.")
  if max(ma[0], mt[0]) >= min(ma[-1], mt[-1]):
    raise ValueError(f"bd_rate: the curves' metric ranges do not overlap (anchor {ma[0]:.6g}..{ma[-1]:.6g}, test "
                     f"{mt[0]:.6g}..{mt[-1]:.6g}); there is no accuracy at which to compare their rates.")
  return float(bjontegaard.bd_rate(ra, ma, rt, mt, method=_interpolation(method),
                                   require_matching_points=False))


def bd_metric(rate_anchor, metric_anchor, rate_test, metric_test, *, method: str = "pchip") -> float:
  """Bjontegaard-delta metric (BD-accuracy) of the test curve against the anchor: the average metric
  difference at equal rate over the log-rate range both cover, in the metric's units."""
  import bjontegaard

  (ra, ma), (rt, mt) = _bd_inputs(rate_anchor, metric_anchor, rate_test, metric_test, method, "bd_metric")
  if max(ra[0], rt[0]) >= min(ra[-1], rt[-1]):
    raise ValueError(f"bd_metric: the curves' rate ranges do not overlap (anchor {ra[0]:.6g}..{ra[-1]:.6g}, test "
                     f"{rt[0]:.6g}..{rt[-1]:.6g}); there is no rate at which to compare their metrics.")
  return float(bjontegaard.bd_psnr(ra, ma, rt, mt, method=_interpolation(method),
                                   require_matching_points=False))
