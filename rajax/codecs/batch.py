"""Round trips through a codec on the host, one image or a batch, with their real bit counts.

`roundtrip_batch` codes the images of a batch on host threads (a ThreadPoolExecutor): Pillow and
libheif release the GIL while they encode and decode, so the images really run in parallel. Each
codec is pinned to one thread per image (see rajax.codecs.formats), so the bytes, and therefore the
decoded images and bit counts, are the same whatever the number of threads and in input order.
"""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np

from rajax.codecs.formats import Codec, check_image, get


def roundtrip(name: str, img: np.ndarray, quality: int) -> tuple[np.ndarray, int]:
  """(decoded uint8 [H, W, 3], bits) of `img` coded by codec `name` at `quality`; bits = 8 x the file's bytes."""
  codec = get(name)
  data = codec.encode(img, quality)
  return codec.decode(data), 8 * len(data)


def _qualities(codec: Codec, qualities, n: int) -> list[int]:
  q = np.asarray(qualities)
  if q.ndim == 0:
    return [codec.check_quality(q.item() if np.issubdtype(q.dtype, np.integer) else qualities)] * n
  if q.shape != (n,):
    raise ValueError(f"roundtrip_batch takes one {codec.axis} for the batch or one per image ({n}), "
                     f"got an array shaped {q.shape}.")
  if not np.issubdtype(q.dtype, np.integer):
    raise ValueError(f"{codec.name} {codec.axis} values must be integers, got a {q.dtype} array.")
  return [codec.check_quality(v) for v in q.tolist()]


def default_threads(n: int) -> int:
  """The threads `roundtrip_batch` uses for n images by default: one per image, at most one per usable core."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
  return max(1, min(n, cores))


def roundtrip_batch(name: str, imgs: np.ndarray, qualities, *, threads: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Codes each image of `imgs` (uint8 [N, H, W, 3]) with codec `name` and decodes it again.

  `qualities`: one integer for all images or one per image ([N]). `threads`: host threads coding
  images at once (default: one per image up to the usable cores; 1 runs in the calling thread).
  Returns (decoded uint8 [N, H, W, 3], bits int64 [N]) in input order.
  """
  codec = get(name)
  if not isinstance(imgs, np.ndarray) or imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[-1] != 3:
    got = f"{type(imgs).__name__} {getattr(imgs, 'dtype', '')} {getattr(imgs, 'shape', '')}".strip()
    raise ValueError(f"roundtrip_batch expects uint8 RGB images shaped [N, H, W, 3], got {got}.")
  n = imgs.shape[0]
  qs = _qualities(codec, qualities, n)
  if threads is None:
    threads = default_threads(n)
  if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
    raise ValueError(f"roundtrip_batch threads must be a positive integer or None, got {threads!r}.")
  out = np.empty_like(imgs)
  bits = np.zeros((n,), np.int64)

  def one(i: int) -> None:
    data = codec.encode(check_image(imgs[i], f"roundtrip_batch[{i}]"), qs[i])
    decoded = codec.decode(data)
    if decoded.shape != imgs.shape[1:]:
      raise RuntimeError(f"{name} decoded image {i} as {decoded.shape}, not {imgs.shape[1:]}.")
    out[i] = decoded
    bits[i] = 8 * len(data)

  if threads == 1 or n <= 1:
    for i in range(n):
      one(i)
  else:
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(threads, n)) as pool:
      for future in [pool.submit(one, i) for i in range(n)]:
        future.result()  # re-raises the first image's error, if any
  return out, bits


def bpp(bits, height: int, width: int):
  """Bits per pixel of images of `height` x `width` pixels: bits / (height * width), float64 (arrays elementwise)."""
  if height < 1 or width < 1:
    raise ValueError(f"bpp needs a positive image size, got {height}x{width}.")
  return np.asarray(bits, np.float64) / (height * width) if np.ndim(bits) else float(bits) / (height * width)
