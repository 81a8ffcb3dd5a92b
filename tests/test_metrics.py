"""Tests of rajax.metrics against independent numpy/scipy references and hand-built examples."""

import functools
import math

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from rajax import metrics


def rng(seed=0):
  return np.random.default_rng(seed)


def images(seed, shape):
  return rng(seed).uniform(size=shape).astype(np.float32)


# --------------------------------------------------------------------------- numpy/scipy references


def np_psnr(a, b):
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  mse = ((a - b) ** 2).reshape(a.shape[0], -1).mean(axis=1)
  return 10.0 * np.log10(1.0 / mse)


def np_ssim(a, b, padding="same"):
  """The paper's pytorch_ssim formula, written independently of rajax/dm-pix, in float64.

  A normalised 11x11 Gaussian window (sigma 1.5) applied per channel by zero-padded 'same'
  correlation; sigma = E[x^2] - mu^2; C1 = 0.01^2, C2 = 0.03^2; the map averaged over H, W, C.
  padding="valid" keeps only the positions whose window lies inside the image.
  """
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  x = np.arange(11, dtype=np.float64)
  g = np.exp(-((x - 5) ** 2) / (2 * 1.5**2))
  g /= g.sum()
  w = np.outer(g, g)

  def filt(img):  # [H, W] -> [H, W]
    return ndimage.correlate(img, w, mode="constant", cval=0.0)

  c1, c2 = 0.01**2, 0.03**2
  out = []
  for i in range(a.shape[0]):
    maps = []
    for c in range(a.shape[-1]):
      x1, x2 = a[i, :, :, c], b[i, :, :, c]
      mu1, mu2 = filt(x1), filt(x2)
      s11 = filt(x1 * x1) - mu1**2
      s22 = filt(x2 * x2) - mu2**2
      s12 = filt(x1 * x2) - mu1 * mu2
      m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))
      if padding == "valid":
        m = m[5:-5, 5:-5]
      maps.append(m)
    out.append(np.mean(np.stack(maps, axis=-1)))
  return np.array(out)


def test_reference_ssim_window_is_normalised_gaussian():
  # Guard the reference itself: the 2-D window sums to 1 and peaks at the centre.
  x = np.arange(11, dtype=np.float64)
  g = np.exp(-((x - 5) ** 2) / (2 * 1.5**2))
  g /= g.sum()
  w = np.outer(g, g)
  assert abs(w.sum() - 1) < 1e-12
  assert np.unravel_index(np.argmax(w), w.shape) == (5, 5)
  # On a constant image far from the border the 'same' correlation is the identity.
  z = np.full((31, 31), 0.7)
  np.testing.assert_allclose(ndimage.correlate(z, w, mode="constant")[15, 15], 0.7, rtol=1e-12)


# --------------------------------------------------------------------------- psnr


def test_psnr_matches_numpy_per_image():
  a = images(0, (4, 37, 29, 3))
  b = np.clip(a + rng(1).normal(scale=[[[[0.01]]], [[[0.05]]], [[[0.1]]], [[[0.2]]]], size=a.shape), 0, 1)
  b = b.astype(np.float32)
  out = metrics.psnr(jnp.asarray(a), jnp.asarray(b))
  assert out.shape == (4,)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), np_psnr(a, b), rtol=1e-5)
  # More noise, lower PSNR.
  assert np.all(np.diff(np.asarray(out)) < 0)


def test_psnr_hand_computed():
  # Every pixel off by 0.1 -> MSE 0.01 -> 20 dB; off by 0.01 -> 40 dB.
  a = jnp.zeros((2, 3, 4, 3))
  b = jnp.stack([jnp.full((3, 4, 3), 0.1), jnp.full((3, 4, 3), 0.01)])
  np.testing.assert_allclose(np.asarray(metrics.psnr(a, b)), [20.0, 40.0], rtol=1e-5)


def test_psnr_bfloat16_input():
  a = images(2, (2, 8, 8, 3))
  b = images(3, (2, 8, 8, 3))
  a16, b16 = jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16)
  out = metrics.psnr(a16, b16)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), np_psnr(np.asarray(a16.astype(jnp.float32)),
                                                      np.asarray(b16.astype(jnp.float32))), rtol=1e-5)


@pytest.mark.parametrize("fn", [metrics.psnr, metrics.ssim])
def test_image_metrics_bad_shapes(fn):
  a = jnp.zeros((2, 16, 16, 3))
  with pytest.raises(ValueError, match=r"equal shape \[B, H, W, C\]"):
    fn(a, jnp.zeros((2, 16, 16, 1)))
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    fn(jnp.zeros((16, 16, 3)), jnp.zeros((16, 16, 3)))  # a single unbatched image


# --------------------------------------------------------------------------- ssim


@pytest.mark.parametrize("shape", [(2, 37, 29, 3), (1, 23, 41, 1), (3, 15, 13, 3)])
def test_ssim_same_matches_pytorch_ssim_formula(shape):
  a = images(4, shape)
  noise = rng(5).normal(scale=0.1, size=shape)
  b = np.clip(a * 0.8 + 0.1 + noise, 0, 1).astype(np.float32)
  out = metrics.ssim(jnp.asarray(a), jnp.asarray(b))  # default padding is "same"
  assert out.shape == (shape[0],)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), np_ssim(a, b, "same"), atol=1e-4, rtol=0)
  out_explicit = metrics.ssim(jnp.asarray(a), jnp.asarray(b), padding="same")
  np.testing.assert_allclose(np.asarray(out_explicit), np_ssim(a, b, "same"), atol=1e-4, rtol=0)


def test_ssim_same_matches_formula_on_structured_images():
  # Smooth images with strong borders make the zero-padded border region matter.
  h, w = 37, 29
  yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
  a = np.stack([np.stack([yy, xx, 0.5 + 0.5 * np.sin(6 * yy * xx)], -1)] * 2).astype(np.float32)
  b = a.copy()
  b[0] = np.clip(b[0] ** 1.5, 0, 1)
  b[1] = np.clip(1 - b[1], 0, 1)
  out = metrics.ssim(jnp.asarray(a), jnp.asarray(b))
  np.testing.assert_allclose(np.asarray(out), np_ssim(a, b, "same"), atol=1e-4, rtol=0)


def test_ssim_map_averages_to_ssim_and_its_masked_mean_is_the_ssim_of_a_crop():
  """metrics.ssim_map's mean is metrics.ssim; rajax.evaluate.quality zeroes the padding of a canvas and
  averages the map over the real pixels, which is exactly the SSIM (and PSNR) of the image cropped."""
  from rajax.evaluate import quality
  a = images(8, (2, 24, 20, 3))
  b = np.clip(a + rng(9).normal(scale=0.1, size=a.shape), 0, 1).astype(np.float32)
  m = metrics.ssim_map(jnp.asarray(a), jnp.asarray(b))
  assert m.shape == a.shape
  np.testing.assert_allclose(np.asarray(m).mean(axis=(1, 2, 3)), np.asarray(metrics.ssim(jnp.asarray(a),
                                                                                         jnp.asarray(b))), atol=1e-6)
  sizes = np.array([[17, 20], [24, 11]])
  for i, (h, w) in enumerate(sizes):   # padding unlike the image: the canvas's SSIM is far from the crop's
    b[i, h:], b[i, :, w:] = 1 - a[i, h:], 1 - a[i, :, w:]
  q = quality.canvas_quality(jnp.asarray(a), jnp.asarray(b), jnp.asarray(sizes))
  for i, (h, w) in enumerate(sizes):
    crop_a, crop_b = a[i:i + 1, :h, :w], b[i:i + 1, :h, :w]
    np.testing.assert_allclose(float(q["ssim"][i]), np_ssim(crop_a, crop_b, "same")[0], atol=1e-5)
    mse = np.mean((crop_a.astype(np.float64) - crop_b) ** 2)
    np.testing.assert_allclose(float(q["psnr"][i]), 10 * np.log10(1 / mse), rtol=1e-5)
    # negative control: the whole canvas, padding included, gives another SSIM
    assert abs(float(q["ssim"][i]) - np_ssim(a[i:i + 1], b[i:i + 1], "same")[0]) > 1e-3


def test_ssim_same_differs_from_valid():
  # The two paddings are genuinely different definitions (the test above would not tell them apart
  # if they coincided); check the reference reproduces the gap.
  a = images(6, (2, 37, 29, 3))
  b = np.clip(a + rng(7).normal(scale=0.15, size=a.shape), 0, 1).astype(np.float32)
  same = np.asarray(metrics.ssim(jnp.asarray(a), jnp.asarray(b), padding="same"))
  valid = np.asarray(metrics.ssim(jnp.asarray(a), jnp.asarray(b), padding="valid"))
  assert np.all(np.abs(same - valid) > 1e-3)
  np.testing.assert_allclose(same - valid, np_ssim(a, b, "same") - np_ssim(a, b, "valid"), atol=2e-4)


def test_ssim_valid_equals_dm_pix_and_reference():
  a = images(8, (2, 37, 29, 3))
  b = np.clip(a + rng(9).normal(scale=0.1, size=a.shape), 0, 1).astype(np.float32)
  out = metrics.ssim(jnp.asarray(a), jnp.asarray(b), padding="valid")
  assert out.shape == (2,)
  np.testing.assert_allclose(np.asarray(out), np.asarray(dm_pix.ssim(jnp.asarray(a), jnp.asarray(b))),
                             atol=1e-6, rtol=0)
  np.testing.assert_allclose(np.asarray(out), np_ssim(a, b, "valid"), atol=1e-4, rtol=0)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_ssim_identical_images_is_one(padding):
  a = jnp.asarray(images(10, (3, 37, 29, 3)))
  np.testing.assert_allclose(np.asarray(metrics.ssim(a, a, padding=padding)), np.ones(3), atol=1e-5)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_ssim_lower_for_noisier_images(padding):
  yy, xx = np.meshgrid(np.linspace(0, 1, 37), np.linspace(0, 1, 29), indexing="ij")
  clean = np.broadcast_to(((yy + xx) / 2)[None, :, :, None], (1, 37, 29, 3)).astype(np.float32)
  noise = rng(12).normal(size=clean.shape)
  scores = []
  for scale in (0.01, 0.05, 0.1, 0.3):
    noisy = np.clip(clean + scale * noise, 0, 1).astype(np.float32)
    scores.append(float(metrics.ssim(jnp.asarray(clean), jnp.asarray(noisy), padding=padding)[0]))
  assert all(s < 1.0 for s in scores)
  assert scores == sorted(scores, reverse=True), scores
  assert scores[0] - scores[-1] > 0.3


def test_ssim_per_image_independent_of_batch():
  a = images(13, (3, 21, 19, 3))
  b = images(14, (3, 21, 19, 3))
  batch = np.asarray(metrics.ssim(jnp.asarray(a), jnp.asarray(b)))
  single = np.array([float(metrics.ssim(jnp.asarray(a[i:i + 1]), jnp.asarray(b[i:i + 1]))[0]) for i in range(3)])
  np.testing.assert_allclose(batch, single, atol=1e-6)
  # And different images really give different values (so per-image output is not a broadcast mean).
  assert np.ptp(batch) > 1e-4


def test_ssim_bfloat16_input():
  a = jnp.asarray(images(15, (1, 17, 17, 3)), jnp.bfloat16)
  b = jnp.asarray(images(16, (1, 17, 17, 3)), jnp.bfloat16)
  out = metrics.ssim(a, b)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), np_ssim(np.asarray(a.astype(jnp.float32)),
                                                      np.asarray(b.astype(jnp.float32))), atol=1e-4)


def test_ssim_unknown_padding():
  a = jnp.zeros((1, 16, 16, 3))
  with pytest.raises(ValueError, match=r"padding must be 'same'.*'valid', got 'reflect'"):
    metrics.ssim(a, a, padding="reflect")


def test_image_metrics_under_jit():
  a = images(17, (2, 37, 29, 3))
  b = np.clip(a + rng(18).normal(scale=0.1, size=a.shape), 0, 1).astype(np.float32)
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  np.testing.assert_allclose(np.asarray(jax.jit(metrics.psnr)(ja, jb)), np_psnr(a, b), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(jax.jit(metrics.ssim)(ja, jb)), np_ssim(a, b, "same"), atol=1e-4)
  valid = jax.jit(functools.partial(metrics.ssim, padding="valid"))
  np.testing.assert_allclose(np.asarray(valid(ja, jb)), np_ssim(a, b, "valid"), atol=1e-4)
  static = jax.jit(metrics.ssim, static_argnames="padding")
  np.testing.assert_allclose(np.asarray(static(ja, jb, padding="same")), np_ssim(a, b, "same"), atol=1e-4)


def test_ssim_is_differentiable():
  # SSIM is often used as a loss; its gradient must be finite, and an ascent step must increase it.
  a = jnp.asarray(images(19, (1, 19, 17, 3)))
  b = jnp.clip(a + 0.2 * jnp.asarray(rng(20).normal(size=a.shape), jnp.float32), 0, 1)
  f = lambda x: metrics.ssim(x, a)[0]
  g = jax.grad(f)(b)
  assert np.all(np.isfinite(np.asarray(g)))
  assert float(f(b + 1e-3 * g / jnp.abs(g).max())) > float(f(b))


# --------------------------------------------------------------------------- topk_correct / accuracy


# 4 examples, 6 classes. Rank of each class (0 = highest) written next to each row.
LOGITS = np.array([
    [0.1, 0.9, 0.3, 0.2, 0.5, 0.0],  # order: 1, 4, 2, 3, 0, 5
    [5.0, 1.0, 2.0, 3.0, 4.0, 6.0],  # order: 5, 0, 4, 3, 2, 1
    [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0],  # order: 0, 1, 2, 3, 4, 5
    [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],  # order: 5, 4, 3, 2, 1, 0
], np.float32)
LABELS = np.array([1, 4, 5, 0], np.int32)
# label rank: ex0 -> 0 (top1), ex1 -> 2 (top3), ex2 -> 5 (last), ex3 -> 5 (last)
EXPECTED = {
    1: [True, False, False, False],
    2: [True, False, False, False],
    3: [True, True, False, False],
    5: [True, True, False, False],
    6: [True, True, True, True],
}


def test_topk_correct_hand_built():
  out = metrics.topk_correct(jnp.asarray(LOGITS), jnp.asarray(LABELS), ks=(1, 2, 3, 5, 6))
  assert set(out) == {"top1", "top2", "top3", "top5", "top6"}
  for k, exp in EXPECTED.items():
    assert out[f"top{k}"].shape == (4,)
    assert out[f"top{k}"].dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(out[f"top{k}"]), exp, err_msg=f"k={k}")


def test_topk_correct_default_ks():
  out = metrics.topk_correct(jnp.asarray(LOGITS), jnp.asarray(LABELS))
  assert set(out) == {"top1", "top5"}
  np.testing.assert_array_equal(np.asarray(out["top1"]), EXPECTED[1])
  np.testing.assert_array_equal(np.asarray(out["top5"]), EXPECTED[5])


def test_accuracy_hand_built():
  acc = metrics.accuracy(jnp.asarray(LOGITS), jnp.asarray(LABELS), ks=(1, 3, 5, 6))
  assert set(acc) == {"top1", "top3", "top5", "top6"}
  assert acc["top1"].shape == ()
  assert acc["top1"].dtype == jnp.float32
  assert float(acc["top1"]) == pytest.approx(0.25)
  assert float(acc["top3"]) == pytest.approx(0.5)
  assert float(acc["top5"]) == pytest.approx(0.5)
  assert float(acc["top6"]) == pytest.approx(1.0)
  default = metrics.accuracy(jnp.asarray(LOGITS), jnp.asarray(LABELS))
  assert set(default) == {"top1", "top5"}
  assert float(default["top1"]) == pytest.approx(0.25)


def test_accuracy_matches_numpy_random():
  r = rng(21)
  b, k = 64, 10
  logits = r.normal(size=(b, k)).astype(np.float32)
  labels = r.integers(0, k, size=b)
  # numpy reference: rank of the label = number of classes with a strictly larger logit.
  rank = (logits > logits[np.arange(b), labels][:, None]).sum(axis=1)
  acc = metrics.accuracy(jnp.asarray(logits), jnp.asarray(labels), ks=(1, 3, 5))
  for kk in (1, 3, 5):
    assert float(acc[f"top{kk}"]) == pytest.approx(np.mean(rank < kk))
  np.testing.assert_array_equal(
      np.asarray(metrics.topk_correct(jnp.asarray(logits), jnp.asarray(labels), ks=(1,))["top1"]),
      logits.argmax(axis=1) == labels)


def test_topk_correct_errors():
  logits = jnp.zeros((3, 4))
  labels = jnp.array([0, 1, 2])
  with pytest.raises(ValueError, match=r"k=5 is not in \[1, 4\]"):
    metrics.topk_correct(logits, labels)  # default ks includes 5 > K = 4
  with pytest.raises(ValueError, match=r"k=5 is not in \[1, 4\]"):
    metrics.accuracy(logits, labels)
  with pytest.raises(ValueError, match=r"k=0 is not in \[1, 4\]"):
    metrics.topk_correct(logits, labels, ks=(0,))
  with pytest.raises(ValueError, match=r"logits \[B, K\] and labels \[B\]"):
    metrics.topk_correct(jnp.zeros((4,)), jnp.array([0]), ks=(1,))
  with pytest.raises(ValueError, match=r"logits \[B, K\] and labels \[B\]"):
    metrics.topk_correct(logits, jnp.array([0, 1]), ks=(1,))
  with pytest.raises(ValueError, match=r"logits \[B, K\] and labels \[B\]"):
    metrics.topk_correct(logits, jnp.zeros((3, 1), jnp.int32), ks=(1,))
  with pytest.raises(ValueError, match=r"logits \[B, K\] and labels \[B\]"):
    metrics.accuracy(jnp.zeros((3, 4, 2)), labels, ks=(1,))
  # k up to K is fine.
  assert float(metrics.accuracy(logits + jnp.arange(4.0), labels, ks=(4,))["top4"]) == 1.0


def test_topk_and_accuracy_under_jit():
  jl, jy = jnp.asarray(LOGITS), jnp.asarray(LABELS)
  out = jax.jit(metrics.topk_correct, static_argnames="ks")(jl, jy, ks=(1, 3))
  np.testing.assert_array_equal(np.asarray(out["top1"]), EXPECTED[1])
  np.testing.assert_array_equal(np.asarray(out["top3"]), EXPECTED[3])
  acc = jax.jit(metrics.accuracy)(jl, jy)  # default ks (1, 5)
  assert float(acc["top1"]) == pytest.approx(0.25)
  assert float(acc["top5"]) == pytest.approx(0.5)


def _two_sided_binomial(k, n):
  tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n
  return min(1.0, 2 * tail)


def test_paired_test_counts_discordant_examples_and_exact_p():
  a = np.array([1, 1, 0, 0, 1, 0, 0, 0, 1, 1] * 3, bool)
  b = np.array([1, 0, 1, 1, 1, 1, 0, 1, 1, 1] * 3, bool)
  out = metrics.paired_test(a, b)
  assert (out["gained"], out["lost"]) == (12, 3)
  assert out["p"] == pytest.approx(_two_sided_binomial(3, 15), rel=1e-9)
  assert out["p"] == pytest.approx(0.03515625, rel=1e-9)
  assert metrics.paired_summary(out) == "+12/-3, p = 0.035"
  swapped = metrics.paired_test(b, a)
  assert (swapped["gained"], swapped["lost"]) == (3, 12) and swapped["p"] == pytest.approx(out["p"])


def test_paired_test_even_split_and_no_difference():
  a = np.array([1, 0, 1, 0, 1, 1], bool)
  b = np.array([0, 1, 1, 0, 1, 1], bool)
  assert metrics.paired_test(a, b) == {"gained": 1, "lost": 1, "p": 1.0}
  assert metrics.paired_test(a, a) == {"gained": 0, "lost": 0, "p": 1.0}


def test_paired_test_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="same examples"):
    metrics.paired_test(np.zeros(4, bool), np.zeros(5, bool))
