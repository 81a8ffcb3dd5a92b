"""Float64 NumPy references the tests measure rajax's figures against, written from the definitions.

  psnr        10 log10(1 / MSE) per image, images in [0, 1]
  ssim        SSIM (Wang et al. 2004) per image with a Gaussian window: padding="same" zero-pads the
              image and averages the map over every pixel (the paper's reference code, pytorch_ssim:
              conv2d with padding = window // 2); padding="valid" averages only the windows lying
              wholly inside the image (scikit-image's structural_similarity with gaussian_weights=True,
              sigma=1.5, use_sample_covariance=False, data_range=1, which crops that border)
  mcnemar_p   McNemar's exact two-sided p-value: a binomial(gained + lost, 1/2) test, from binomial
              coefficients
"""

import math

import numpy as np

C1, C2 = 0.01**2, 0.03**2


def psnr(a, b) -> np.ndarray:
  """[N, H, W, C] x2 in [0, 1] -> [N] dB (inf for identical images)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  mse = np.mean((a - b) ** 2, axis=(1, 2, 3))
  with np.errstate(divide="ignore"):
    return 10.0 * np.log10(1.0 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  """[size, size] normalised 2-D Gaussian, centred."""
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2
  g = np.exp(-(x**2) / (2.0 * sigma**2))
  w = np.outer(g, g)
  return w / w.sum()


def _filter(z: np.ndarray, w: np.ndarray, padding: str) -> np.ndarray:
  """Each channel of [N, H, W, C] correlated with w; "same": zero padding, output H x W; "valid": no padding."""
  k = w.shape[0]
  if padding == "same":
    r = k // 2
    z = np.pad(z, ((0, 0), (r, r), (r, r), (0, 0)))
  h, wd = z.shape[1] - k + 1, z.shape[2] - k + 1
  out = np.zeros((z.shape[0], h, wd, z.shape[3]))
  for i in range(k):
    for j in range(k):
      out += w[i, j] * z[:, i:i + h, j:j + wd]
  return out


def ssim(a, b, *, padding: str = "same", size: int = 11, sigma: float = 1.5) -> np.ndarray:
  """[N, H, W, C] x2 in [0, 1] -> [N]: the SSIM map averaged over pixels and channels of each image."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  w = gaussian_window(size, sigma)
  f = lambda z: _filter(z, w, padding)
  mu_a, mu_b = f(a), f(b)
  var_a, var_b, cov = f(a * a) - mu_a**2, f(b * b) - mu_b**2, f(a * b) - mu_a * mu_b
  m = ((2 * mu_a * mu_b + C1) * (2 * cov + C2)) / ((mu_a**2 + mu_b**2 + C1) * (var_a + var_b + C2))
  return m.mean(axis=(1, 2, 3))


def mcnemar_p(gained: int, lost: int) -> float:
  """P(a split at least as lopsided as gained:lost) when each discordant example is a fair coin."""
  n, k = gained + lost, min(gained, lost)
  if n == 0:
    return 1.0
  return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
