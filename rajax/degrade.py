"""Degradations that make a processor's input from a clean image, on the host (numpy / Pillow).

Each works on one uint8 RGB image [H, W, 3] and is usable on its own or as a pipeline stage:

  bicubic_down(img, scale)        Pillow's bicubic (antialiased) resize to (W/scale, H/scale), uint8;
  jpeg(img, quality)              a Pillow JPEG round trip at `quality`, 4:2:0 chroma subsampling, uint8;
  gaussian_noise(img, sigma, rng) clip(y + sigma * N(0, 1), 0, 1) with y = img / 255, float32.

`degrade(task, img, ...)` picks one by task name ("sr", "denoise", "jpeg").
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

TASKS = ("sr", "denoise", "jpeg")


def _check_uint8_rgb(img: np.ndarray, who: str) -> None:
  if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
    got = f"{type(img).__name__} {getattr(img, 'dtype', '')} {getattr(img, 'shape', '')}"
    raise ValueError(f"{who} expects a uint8 RGB image shaped [H, W, 3], got {got}.")


def bicubic_down(img: np.ndarray, scale: int) -> np.ndarray:
  """Downscales by an integer `scale` with Pillow's bicubic filter (antialiased), uint8 out."""
  _check_uint8_rgb(img, "bicubic_down")
  h, w = img.shape[:2]
  if scale < 1 or h % scale or w % scale:
    raise ValueError(f"bicubic_down: image {h}x{w} is not divisible by scale {scale}; crop it to a multiple first.")
  if scale == 1:
    return img
  return np.asarray(Image.fromarray(img).resize((w // scale, h // scale), Image.BICUBIC))


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
  """Encodes with Pillow at `quality` (1..95) with 4:2:0 subsampling and decodes again, uint8 out."""
  _check_uint8_rgb(img, "jpeg")
  if not 1 <= quality <= 95:
    raise ValueError(f"jpeg quality must be in [1, 95], got {quality}.")
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=int(quality), subsampling=2)
  buf.seek(0)
  with Image.open(buf) as im:
    return np.asarray(im.convert("RGB"))


def gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
  """clip(img / 255 + sigma * N(0, 1), 0, 1) as float32, the noise drawn from `rng`."""
  _check_uint8_rgb(img, "gaussian_noise")
  if sigma < 0:
    raise ValueError(f"gaussian_noise sigma must be >= 0, got {sigma}.")
  y = img.astype(np.float32) / 255.0
  n = rng.standard_normal(img.shape, dtype=np.float32)
  return np.clip(y + np.float32(sigma) * n, 0.0, 1.0)


def degrade(task: str, img: np.ndarray, *, rng: np.random.Generator, scale: int = 4, sigma: float = 0.1,
            quality: int = 10) -> np.ndarray:
  """The processor input for `task` made from the clean uint8 image `img`."""
  if task == "sr":
    return bicubic_down(img, scale)
  if task == "denoise":
    return gaussian_noise(img, sigma, rng)
  if task == "jpeg":
    return jpeg(img, quality)
  raise ValueError(f"Unknown task {task!r}; one of {TASKS}.")
