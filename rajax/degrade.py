"""Degradations that make a processor's input from a clean image.

On the host (numpy / Pillow), each on one uint8 RGB image [H, W, 3], usable on its own or as a
pipeline stage:

  bicubic_down(img, scale)        Pillow's bicubic (antialiased) resize to (W/scale, H/scale), uint8;
  bicubic_down_torch(img, scale)  PyTorch's `interpolate(mode="bicubic", align_corners=False)` without
                                  antialiasing (a = -0.75, borders clamped), then 8-bit rounding: the
                                  LR images SR4IR's code makes on the fly, uint8;
  jpeg(img, quality)              a Pillow JPEG round trip at `quality`, 4:2:0 chroma subsampling, uint8
                                  (rajax.codecs' "jpeg" codec, which also counts its bits);
  gaussian_noise(img, sigma, rng) clip(y + sigma * N(0, 1), 0, 1) with y = img / 255, float32;
  corrupt(img, name, severity, seed)
                                  one of the 19 ImageNet-C corruptions (Hendrycks & Dietterich) at
                                  severity 1..5, uint8, computed by the `imagecorruptions-imaug`
                                  package and made reproducible by `seed`.

  rain(img, severity, seed)       rain-like streaks (no ImageNet-C corruption has them), uint8;
  low_light(img, severity, seed)  a dark, noisy exposure (gamma, gain, sensor noise), uint8;
  mixture(img, families, rng)     one of several (name, severity) degradation families, drawn per
                                  example from `rng`: an unknown mixture of degradations (VRD-IR's
                                  setting), any of CORRUPTIONS or EXTRA_DEGRADATIONS.

`degrade(task, img, ...)` picks one by task name ("sr", "denoise", "jpeg", "mixture" with its
families, or "corrupt" with a corruption name and severity; "codec" is the clean image itself: a
processor that runs before a codec, which the method applies in its step, e.g. NPP).

On the device, inside a jitted step (JAX, traceable):

  gaussian_noise_device(target, index, sigma=, seed=)
                                  the same formula for a batch of uint8 images [B, H, W, 3], example
                                  b's noise drawn from jax.random.fold_in(jax.random.key(seed), index[b]):
                                  it depends only on (seed, index, sigma), not on the batch the
                                  example sits in, its position there, or how the batch is sharded;
  DeviceNoise(sigma, seed)        that function as a batch stage: adds "input" to a batch holding
                                  the clean "target" and the examples' "index" (what the denoising
                                  pipelines yield when the noise is left to the device).

Drawing the noise on the device takes the most expensive host stage of denoising off the host (NumPy's
normal sampler costs about as much as decoding the JPEG) and ships uint8 crops instead of float32
ones (4x fewer bytes). The numbers differ from NumPy's, so the two paths give different (equally
distributed) noise for the same example.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import types

import numpy as np
from PIL import Image

from rajax import codecs

# the processor tasks the trainer knows ("codec": the clean image itself; "mixture": one of
# config.degrade.families per example)
TASKS = ("sr", "denoise", "jpeg", "codec", "mixture")

# The ImageNet-C corruptions in the benchmark's order: 15 test corruptions (noise, blur, weather,
# digital), then the 4 extra ones released for validation.
CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
    "speckle_noise", "gaussian_blur", "spatter", "saturate",
)

# imagecorruptions draws most of its randomness from `np.random.*`, NumPy's process-wide generator.
# `corrupt` runs copies of its functions whose `np.random` is instead a RandomState private to the
# calling thread and seeded by the call's seed: results depend on the seed only, threads run in
# parallel, and the global generator is neither used nor disturbed.
_thread = threading.local()


class _ThreadRandom:
  """`np.random` as the corruption functions see it: this thread's RandomState of the current call."""

  def __getattr__(self, name):
    state = getattr(_thread, "state", None)
    if state is None:
      raise RuntimeError("imagecorruptions functions copied by rajax.degrade run only inside corrupt().")
    return getattr(state, name)


class _NumpyWithThreadRandom(types.ModuleType):
  """The numpy module with `random` replaced by _ThreadRandom."""

  def __init__(self):
    super().__init__("numpy")
    self.random = _ThreadRandom()

  def __getattr__(self, name):
    return getattr(np, name)


def _check_uint8_rgb(img: np.ndarray, who: str) -> None:
  if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
    got = f"{type(img).__name__} {getattr(img, 'dtype', '')} {getattr(img, 'shape', '')}"
    raise ValueError(f"{who} expects a uint8 RGB image shaped [H, W, 3], got {got}.")


def _check_down(img: np.ndarray, scale: int, who: str) -> None:
  _check_uint8_rgb(img, who)
  h, w = img.shape[:2]
  if scale < 1 or h % scale or w % scale:
    raise ValueError(f"{who}: image {h}x{w} is not divisible by scale {scale}; crop it to a multiple first.")


def bicubic_down(img: np.ndarray, scale: int) -> np.ndarray:
  """Downscales by an integer `scale` with Pillow's bicubic filter (antialiased), uint8 out."""
  _check_down(img, scale, "bicubic_down")
  if scale == 1:
    return img
  h, w = img.shape[:2]
  return np.asarray(Image.fromarray(img).resize((w // scale, h // scale), Image.BICUBIC))


@functools.lru_cache(maxsize=32)
def _torch_bicubic_matrix(size: int, scale: int) -> np.ndarray:
  """[size // scale, size] weights of PyTorch's bicubic resampling by 1 / scale along one axis: output
  i reads the 4 inputs around (i + 0.5) * scale - 0.5 with Keys' cubic (a = -0.75), indices clamped
  to the border (so border weights add up on the edge pixel), no antialiasing."""
  a = -0.75
  out = size // scale
  m = np.zeros((out, size), np.float64)
  for i in range(out):
    src = (i + 0.5) * scale - 0.5
    base = int(np.floor(src))
    t = src - base
    for k, d in zip(range(-1, 3), (1 + t, t, 1 - t, 2 - t)):
      d = abs(d)
      w = ((a + 2) * d - (a + 3)) * d * d + 1 if d <= 1 else ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
      m[i, min(max(base + k, 0), size - 1)] += w
  return m


def bicubic_down_torch(img: np.ndarray, scale: int) -> np.ndarray:
  """Downscales by an integer `scale` as `torch.nn.functional.interpolate(x, scale_factor=1/scale,
  mode="bicubic", align_corners=False)` does (no antialiasing), then rounds to 8 bits with clamping,
  as SR4IR's `quantize`; uint8 out (tests/reference/make_torch_bicubic.py pins it to torch)."""
  _check_down(img, scale, "bicubic_down_torch")
  if scale == 1:
    return img
  h, w = img.shape[:2]
  x = img.astype(np.float64) / 255.0
  y = np.einsum("ih,hwc->iwc", _torch_bicubic_matrix(h, scale), x)
  y = np.einsum("jw,iwc->ijc", _torch_bicubic_matrix(w, scale), y)
  return np.clip(np.round(y * 255.0), 0, 255).astype(np.uint8)


KERNELS = {"pil": bicubic_down, "torch": bicubic_down_torch}   # config.degrade.kernel: how SR's input is made


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
  """Encodes with Pillow at `quality` (1..95) with 4:2:0 subsampling and decodes again, uint8 out."""
  _check_uint8_rgb(img, "jpeg")
  if not 1 <= quality <= 95:
    raise ValueError(f"jpeg quality must be in [1, 95], got {quality}.")
  return codecs.roundtrip("jpeg", img, int(quality))[0]  # rajax.codecs' "jpeg": Pillow, 4:2:0


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


def gaussian_noise_device(target, index, *, sigma: float, seed: int):
  """clip(target / 255 + sigma * N(0, 1), 0, 1) as float32, computed with JAX (traceable, jit-able).

  `target`: uint8 images [B, H, W, 3] (or one image [H, W, 3]); `index`: integer [B] (or a scalar),
  the examples' indices. Example b's noise is `jax.random.normal(k, (H, W, 3))` with
  k = jax.random.fold_in(jax.random.key(seed), index[b]), so the same (seed, index) gives the same
  noisy image in any batch, at any position, on any number of devices or hosts. Indices are used
  modulo 2**32.
  """
  import jax  # here, not at import: the host pipelines (grain workers) never need it
  import jax.numpy as jnp

  if sigma < 0:
    raise ValueError(f"gaussian_noise_device sigma must be >= 0, got {sigma}.")
  y = jnp.asarray(target)
  index = jnp.asarray(index)
  if y.ndim == 3:
    return gaussian_noise_device(y[None], index[None], sigma=sigma, seed=seed)[0]
  if y.dtype != jnp.uint8 or y.ndim != 4 or y.shape[-1] != 3:
    raise ValueError(f"gaussian_noise_device expects uint8 RGB images shaped [B, H, W, 3], got {y.dtype} {y.shape}.")
  if index.shape != y.shape[:1] or not jnp.issubdtype(index.dtype, jnp.integer):
    raise ValueError(f"gaussian_noise_device expects one integer index per image, shaped {y.shape[:1]}; "
                     f"got {index.dtype} {index.shape}.")
  base = jax.random.key(seed)
  noise = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(base, i), y.shape[1:], jnp.float32))(index)
  return jnp.clip(y.astype(jnp.float32) / 255.0 + jnp.float32(sigma) * noise, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class DeviceNoise:
  """The device half of denoising: batch -> batch with "input" = gaussian_noise_device(batch["target"], batch["index"]).

  A batch that already has an "input" (its noise drawn on the host) is returned unchanged. Give it
  the seed the pipeline was built with; train and eval steps apply it before anything else.
  """

  sigma: float
  seed: int

  def __call__(self, batch):
    if "input" in batch:
      return batch
    missing = [k for k in ("target", "index") if k not in batch]
    if missing:
      raise ValueError(f"DeviceNoise needs the batch's clean 'target' and example 'index'; it has no {missing} "
                       f"(keys: {sorted(batch)}). Build the pipeline with Degradation('denoise', noise='device').")
    return {**batch, "input": gaussian_noise_device(batch["target"], batch["index"], sigma=self.sigma, seed=self.seed)}


@functools.cache
def _corruption_functions() -> dict:
  """The 19 corruption functions of imagecorruptions, rebound to globals with a per-thread np.random.

  Every Python function of the package's module is copied with the new globals (so helpers such
  as plasma_fractal see the same np); numba-compiled kernels are left as they are (glass_blur's
  takes the seed as an argument).
  """
  try:
    from imagecorruptions import corruptions as module  # heavy (scikit-image, OpenCV, numba): on first use
  except ImportError as e:
    raise ImportError(
        "ImageNet-C corruptions need the `imagecorruptions-imaug` package (module `imagecorruptions`): "
        "pip install imagecorruptions-imaug") from e
  namespace = dict(vars(module))
  namespace["np"] = _NumpyWithThreadRandom()
  for key, value in vars(module).items():
    if isinstance(value, types.FunctionType) and value.__module__ == module.__name__:
      copy = types.FunctionType(value.__code__, namespace, value.__name__, value.__defaults__, value.__closure__)
      copy.__kwdefaults__ = value.__kwdefaults__
      namespace[key] = copy
  missing = [n for n in CORRUPTIONS if n not in namespace]
  if missing:
    raise ImportError(f"This imagecorruptions version lacks {', '.join(missing)}; pip install -U imagecorruptions-imaug")
  return {n: namespace[n] for n in CORRUPTIONS}


def corrupt(img: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
  """ImageNet-C corruption `name` at `severity` (1..5) of `img`, uint8, the same for the same seed.

  The image must be at least 32x32. The corruption is imagecorruptions' own function; its
  randomness is made reproducible: `impulse_noise` and `glass_blur` take `seed` directly, and the
  others, which call `np.random.*`, draw from `np.random.RandomState(seed)` private to the call
  (the same numbers as `np.random.seed(seed)` would give, without touching NumPy's global
  generator). The result depends only on (img, name, severity, seed), in any thread or process.
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
  fn = _corruption_functions()[name]
  kwargs = {"seed": int(seed)} if name in ("impulse_noise", "glass_blur") else {}
  _thread.state = np.random.RandomState(int(seed))
  try:
    out = fn(Image.fromarray(np.ascontiguousarray(img)), int(severity), **kwargs)
  finally:
    _thread.state = None
  return np.ascontiguousarray(np.uint8(out))  # the package's float -> uint8 conversion


def degrade(task: str, img: np.ndarray, *, rng: np.random.Generator, scale: int = 4, sigma: float = 0.1,
            quality: int = 10, corruption: str = "", severity: int = 3, kernel: str = "pil",
            families: tuple = ()) -> np.ndarray:
  """The processor input for `task` made from the clean uint8 image `img`.

  For task "corrupt" the corruption's seed is drawn from `rng`, so a pipeline that derives `rng`
  from the example index gets the same corrupted image for the same example every time.
  """
  if task == "sr":
    if kernel not in KERNELS:
      raise ValueError(f"Unknown SR kernel {kernel!r}; one of {', '.join(KERNELS)}.")
    return KERNELS[kernel](img, scale)
  if task == "denoise":
    return gaussian_noise(img, sigma, rng)
  if task == "jpeg":
    return jpeg(img, quality)
  if task == "corrupt":
    return corrupt(img, corruption, severity, int(rng.integers(0, 2**32)))
  if task == "mixture":
    return mixture(img, families, rng)
  if task == "codec":
    _check_uint8_rgb(img, "degrade('codec')")
    return img
  raise ValueError(f"Unknown task {task!r}; one of {TASKS + ('corrupt',)}.")


# ==================================================================== degradations ImageNet-C lacks, and mixtures

EXTRA_DEGRADATIONS = ("rain", "low_light")
# rain: streaks per 1000 pixels, streak length (fraction of the image side), streak opacity, per severity
_RAIN = ((4.0, 0.10, 0.35), (6.0, 0.15, 0.45), (8.0, 0.20, 0.55), (10.0, 0.25, 0.65), (12.0, 0.30, 0.75))
# low_light: gamma, gain, sensor noise sigma (of the [0, 1] range), per severity
_LOW_LIGHT = ((1.3, 0.70, 0.01), (1.6, 0.55, 0.02), (1.9, 0.42, 0.03), (2.2, 0.32, 0.04), (2.5, 0.24, 0.05))


def _check_severity_seed(who: str, severity, seed) -> None:
  if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
    raise ValueError(f"{who} severity must be an integer in 1..5, got {severity!r}.")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
    raise ValueError(f"{who} seed must be an integer in [0, 2**32), got {seed!r}.")


def rain(img: np.ndarray, severity: int, seed: int) -> np.ndarray:
  """Rain-like streaks over `img` at `severity` (1..5), uint8; the same for the same seed.

  Streak seeds are drawn uniformly (density per severity, per 1000 pixels), each smeared along one
  direction shared by the image (within 20 degrees of vertical) into a line of 10-30% of the image
  side: the sum of the seed field (brightness 0.5..1) shifted along the line, at most 1. The
  streaks are screen-blended over the image with the severity's opacity (out = 1 - (1 - x)(1 - a s)),
  so they brighten it, as rain does, and never darken it.
  """
  _check_uint8_rgb(img, "rain")
  _check_severity_seed("rain", severity, seed)
  density, length, opacity = _RAIN[int(severity) - 1]
  rng = np.random.default_rng(int(seed))
  h, w = img.shape[:2]
  field = (rng.random((h, w)) < density / 1000.0).astype(np.float32) * rng.uniform(0.5, 1.0, (h, w)).astype(np.float32)
  angle = np.deg2rad(rng.uniform(-20.0, 20.0))
  steps = max(2, int(round(length * max(h, w))))
  streaks = np.zeros((h, w), np.float32)
  for t in range(steps):   # the field shifted along the streak direction (downwards), t pixels
    dy, dx = int(round(t * np.cos(angle))), int(round(t * np.sin(angle)))
    streaks += np.roll(np.roll(field, dy, axis=0), dx, axis=1)
  streaks = np.minimum(streaks, 1.0)   # where streaks cross
  x = img.astype(np.float32) / 255.0
  out = 1.0 - (1.0 - x) * (1.0 - opacity * streaks[..., None])
  return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def low_light(img: np.ndarray, severity: int, seed: int) -> np.ndarray:
  """A low-light exposure of `img` at `severity` (1..5), uint8; the same for the same seed.

  out = quantise(clip(gain * x ** gamma + sigma * N(0, 1))) on x = img / 255: a gamma that darkens
  the shadows more than the highlights, a lower gain, and Gaussian sensor noise that dominates the
  dark signal (the severity's (gamma, gain, sigma) in _LOW_LIGHT).
  """
  _check_uint8_rgb(img, "low_light")
  _check_severity_seed("low_light", severity, seed)
  gamma, gain, sigma = _LOW_LIGHT[int(severity) - 1]
  rng = np.random.default_rng(int(seed))
  x = img.astype(np.float32) / 255.0
  out = gain * x ** gamma + sigma * rng.standard_normal(x.shape, dtype=np.float32)
  return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


DEGRADATION_FAMILIES = CORRUPTIONS + EXTRA_DEGRADATIONS   # the names a mixture's families may take


def family_problems(families, where: str = "config.degrade.families") -> list[str]:
  """The problems of a mixture's (name, severity) families, each naming the fix (empty: valid)."""
  families = tuple(families or ())
  if not families:
    return [f"{where} is empty: list (name, severity) families, e.g. (('gaussian_noise', 3), ('fog', 3)), names "
            f"from {', '.join(DEGRADATION_FAMILIES)}"]
  out = []
  for item in families:
    if not isinstance(item, (tuple, list)) or len(item) != 2:
      out.append(f"{where}: {item!r} is not a (name, severity) pair")
      continue
    name, severity = item
    if name not in DEGRADATION_FAMILIES:
      out.append(f"{where}: unknown degradation {name!r}; one of {', '.join(DEGRADATION_FAMILIES)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
      out.append(f"{where}: {name!r} has severity {severity!r}, not an integer in 1..5")
  if len(set(map(tuple, families))) != len(families):
    out.append(f"{where} lists a family twice: {families}")
  return out


def apply_family(img: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
  """Degradation family `name` (an ImageNet-C corruption, "rain" or "low_light") at `severity`, uint8."""
  if name == "rain":
    return rain(img, severity, seed)
  if name == "low_light":
    return low_light(img, severity, seed)
  return corrupt(img, name, severity, seed)


def mixture(img: np.ndarray, families, rng: np.random.Generator) -> np.ndarray:
  """One of `families` ((name, severity) pairs), drawn uniformly from `rng`, applied with a seed drawn
  from `rng` after it: an example's degradation and its randomness depend only on `rng` (the pipelines
  derive it from the run's seed and the example), so the same example is degraded the same way every time."""
  problems = family_problems(families, "mixture families")
  if problems:
    raise ValueError("; ".join(problems))
  name, severity = families[int(rng.integers(0, len(families)))]
  return apply_family(img, str(name), int(severity), int(rng.integers(0, 2**32)))
