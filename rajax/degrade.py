"""Degradations that make a processor's input from a clean image, on the host (numpy / Pillow).

Each works on one uint8 RGB image [H, W, 3] and is usable on its own or as a pipeline stage:

  bicubic_down(img, scale)        Pillow's bicubic (antialiased) resize to (W/scale, H/scale), uint8;
  jpeg(img, quality)              a Pillow JPEG round trip at `quality`, 4:2:0 chroma subsampling, uint8;
  gaussian_noise(img, sigma, rng) clip(y + sigma * N(0, 1), 0, 1) with y = img / 255, float32;
  corrupt(img, name, severity, seed)
                                  one of the 19 ImageNet-C corruptions (Hendrycks & Dietterich) at
                                  severity 1..5, uint8, computed by the `imagecorruptions-imaug`
                                  package and made reproducible by `seed`.

`degrade(task, img, ...)` picks one by task name ("sr", "denoise", "jpeg", or "corrupt" with a
corruption name and severity).
"""

from __future__ import annotations

import io
import threading

import numpy as np
from PIL import Image

TASKS = ("sr", "denoise", "jpeg")  # the processor tasks the trainer knows

# The ImageNet-C corruptions in the benchmark's order: 15 test corruptions (noise, blur, weather,
# digital), then the 4 extra ones released for validation.
CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
    "speckle_noise", "gaussian_blur", "spatter", "saturate",
)

# imagecorruptions draws most of its randomness from NumPy's global generator; `corrupt` reseeds
# it for the duration of one call and restores it afterwards, holding this lock so that threads
# of one process cannot interleave their draws.
_GLOBAL_RNG_LOCK = threading.Lock()


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
  y = img.astype(np.float32)
  y /= np.float32(255.0)
  n = rng.standard_normal(img.shape, dtype=np.float32)
  n *= np.float32(sigma)
  y += n
  return np.clip(y, 0.0, 1.0, out=y)  # in place: the same float32 arithmetic as the formula, fewer copies


def _imagecorruptions():
  try:
    import imagecorruptions  # heavy (scikit-image, OpenCV, numba): imported on first use only
  except ImportError as e:
    raise ImportError(
        "ImageNet-C corruptions need the `imagecorruptions-imaug` package (module `imagecorruptions`): "
        "pip install imagecorruptions-imaug") from e
  return imagecorruptions


def corrupt(img: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
  """ImageNet-C corruption `name` at `severity` (1..5) of `img`, uint8, the same for the same seed.

  The image must be at least 32x32. Randomness: `impulse_noise` and `glass_blur` take `seed`
  directly; every other random corruption draws from NumPy's global generator, which is seeded
  with `seed` for the call and then restored (under a lock, so concurrent threads serialise).
  The result depends only on (img, name, severity, seed), in any thread or process.
  """
  _check_uint8_rgb(img, "corrupt")
  if name not in CORRUPTIONS:
    raise ValueError(f"Unknown corruption {name!r}; one of {', '.join(CORRUPTIONS)}.")
  if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
    raise ValueError(f"corrupt severity must be an integer in 1..5, got {severity!r}.")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
    raise ValueError(f"corrupt seed must be an integer in [0, 2**32), got {seed!r}.")
  if img.shape[0] < 32 or img.shape[1] < 32:
    raise ValueError(f"corrupt needs an image of at least 32x32 pixels, got {img.shape[0]}x{img.shape[1]}.")
  ic = _imagecorruptions()
  kwargs = {"seed": int(seed)} if name in ("impulse_noise", "glass_blur") else {}
  with _GLOBAL_RNG_LOCK:
    saved = np.random.get_state()
    np.random.seed(int(seed))
    try:
      out = ic.corrupt(np.ascontiguousarray(img), corruption_name=name, severity=int(severity), **kwargs)
    finally:
      np.random.set_state(saved)
  return np.ascontiguousarray(out, dtype=np.uint8)


def degrade(task: str, img: np.ndarray, *, rng: np.random.Generator, scale: int = 4, sigma: float = 0.1,
            quality: int = 10, corruption: str = "", severity: int = 3) -> np.ndarray:
  """The processor input for `task` made from the clean uint8 image `img`.

  For task "corrupt" the corruption's seed is drawn from `rng`, so a pipeline that derives `rng`
  from the example index gets the same corrupted image for the same example every time.
  """
  if task == "sr":
    return bicubic_down(img, scale)
  if task == "denoise":
    return gaussian_noise(img, sigma, rng)
  if task == "jpeg":
    return jpeg(img, quality)
  if task == "corrupt":
    return corrupt(img, corruption, severity, int(rng.integers(0, 2**32)))
  raise ValueError(f"Unknown task {task!r}; one of {TASKS + ('corrupt',)}.")
