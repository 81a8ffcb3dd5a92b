"""Image quality and recognition metrics over batches, as pure functions (one value per image).

PSNR and SSIM take float images in [0, 1] shaped [B, H, W, C]. `ssim` follows the paper's
reference implementation (pytorch_ssim): an 11x11 Gaussian window with sigma 1.5 applied to each
RGB channel with zero padding ("same" size), C1 = 0.01^2, C2 = 0.03^2, the map averaged over
pixels and channels of each image. `padding="valid"` gives the more common variant that only
averages windows lying wholly inside the image (tf.image.ssim, dm-pix's default).

`paired_test` compares two processors (or recognizers) example by example on the same examples:
McNemar's exact test on the examples that one gets right and the other wrong.
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
