"""Image quality of whole images on padded canvases (the detection and segmentation evaluators' batches).

Those evaluators place each image at the top left of a fixed canvas and pad the rest; a batch
carries each image's real (height, width) as "image_size". Per image, against the clean canvas:

  psnr   10 log10(1 / MSE) over the image's real pixels (all three channels);
  ssim   the paper's SSIM (rajax.metrics.ssim: 11x11 Gaussian window, sigma 1.5, zero padding) of the
         image's real pixels: both images' padding is set to zero and the SSIM map averaged over the
         real pixels only, which is exactly the SSIM of the image cropped to its real size;
  lpips  (when asked) LPIPS over the whole canvas, with the shown image's padding replaced by the
         clean image's, so that only the real pixels differ. LPIPS averages deep features over the
         canvas, so it equals the LPIPS of the cropped pair only for images that fill their canvas; a
         crop would need one compiled network per image size and at least min_size pixels a side.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rajax import metrics


def real_pixels(image_size: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """bool [B, H, W]: the pixels at the top left of each canvas inside its image_size (height, width)."""
  ys = jnp.arange(shape[0])[None, :, None]
  xs = jnp.arange(shape[1])[None, None, :]
  return (ys < image_size[:, 0, None, None]) & (xs < image_size[:, 1, None, None])


def canvas_quality(shown: jax.Array, clean: jax.Array, image_size: jax.Array,
                   distance: Callable[[jax.Array, jax.Array], jax.Array] | None = None) -> dict[str, jax.Array]:
  """{"psnr", "ssim"(, "lpips" with an LPIPS `distance`)} [B] of float images [B, H, W, 3] in [0, 1]
  on their canvases (see the module docstring)."""
  shown, clean = shown.astype(jnp.float32), clean.astype(jnp.float32)
  real = real_pixels(image_size, clean.shape[1:3])[..., None]
  count = jnp.maximum(jnp.sum(real, axis=(1, 2, 3)) * clean.shape[-1], 1)
  a, y = jnp.where(real, shown, 0.0), jnp.where(real, clean, 0.0)
  mse = jnp.sum(jnp.square(a - y), axis=(1, 2, 3)) / count
  ssim = jnp.sum(jnp.where(real, metrics.ssim_map(a, y), 0.0), axis=(1, 2, 3)) / count
  out = {"psnr": 10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-12)), "ssim": ssim}
  if distance is not None:
    out["lpips"] = distance(jnp.where(real, shown, clean), clean)
  return out


def columns(lpips: bool) -> tuple[list[str], dict[str, str]]:
  """The tables' quality columns and their formats: PSNR, SSIM, and LPIPS when the records hold it."""
  cols = ["PSNR", "SSIM"] + (["LPIPS"] if lpips else [])
  return cols, {"PSNR": "db", "SSIM": "ssim", "LPIPS": "ssim"}


def cells(q: dict, keep, *, clean: bool) -> dict[str, float]:
  """A row's quality cells: the means over the kept images (PSNR of the clean row: inf)."""
  mean = lambda k: float(np.mean(np.asarray(q[k])[keep])) if np.any(keep) else float("nan")
  out = {"PSNR": float("inf") if clean else mean("psnr"), "SSIM": mean("ssim")}
  if "lpips" in q:
    out["LPIPS"] = mean("lpips")
  return out
