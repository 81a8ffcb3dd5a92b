"""Host input-pipeline throughput: images/s per stage and end to end, per task and worker count.

    python -m rajax.data.bench --config configs/imagenet.py --config.data.data_dir=~/tfds
    python -m rajax.data.bench --config configs/imagenet.py --source photos --workers 0,1,2

With a prepared dataset (`--source tfds`, the config's data.name and data.data_dir) the benchmark
reads the real files; `--source photos` (the default when no data_dir is set) uses ImageNet-sized
JPEGs (500x375, quality 90, about ImageNet's average) made from the photos that ship with
scikit-image, so the figures are comparable across machines without the dataset.

Two tables:
  stages    one thread, one image at a time: decode, Resize(256), RandomCrop(224)+flip, and each
            degradation (SR bicubic x4, NumPy Gaussian noise, JPEG q10), in ms/image and images/s,
            then the pipeline's whole per-example transform for each task. Denoising has two rows:
            with the noise drawn on the device (data.noise="device", the default: the host only
            decodes, resizes and crops) and on the host (data.noise="host", NumPy). For comparison,
            the device noise's cost when the device is this machine's CPU (jitted, all threads);
  pipeline  the real grain training pipeline (train_dataset) for each task (denoising with the noise
            on the device and on the host) and worker count, in images/s after a warm-up (worker
            start-up excluded), and the bytes per example it ships to the device.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from typing import Sequence

import numpy as np
from PIL import Image

from rajax.data import pipeline as pipe


class PhotoJpegs:
  """`size` ImageNet-like JPEGs (500x375 or 375x500, quality 90) cut from scikit-image's photos."""

  def __init__(self, size: int = 64, seed: int = 0):
    from skimage import data
    photos = [getattr(data, n)() for n in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                                           "immunohistochemistry", "retina")]
    rng = np.random.default_rng(seed)
    self.items = []
    for i in range(size):
      img = Image.fromarray(np.ascontiguousarray(photos[i % len(photos)][..., :3]))
      w, h = (500, 375) if i % 4 else (375, 500)
      scale = max(w / img.width, h / img.height) * float(rng.uniform(1.0, 1.3))
      img = img.resize((int(np.ceil(img.width * scale)), int(np.ceil(img.height * scale))), Image.BILINEAR)
      left, top = int(rng.integers(0, img.width - w + 1)), int(rng.integers(0, img.height - h + 1))
      buf = io.BytesIO()
      img.crop((left, top, left + w, top + h)).save(buf, format="JPEG", quality=90)
      self.items.append({"image": buf.getvalue(), "label": i % 10})

  def __len__(self):
    return len(self.items)

  def __getitem__(self, i):
    return self.items[i]


def _timeit(fn, items, min_seconds: float, repeats: int = 3) -> float:
  """CPU seconds of this thread per call of fn(item): the best of `repeats` rounds, each cycling
  through items for at least min_seconds / repeats.

  CPU time rather than wall time, and the best round, so that other jobs on a shared machine
  inflate it as little as possible.
  """
  best = float("inf")
  for _ in range(repeats):
    n, start, cpu0 = 0, time.perf_counter(), time.thread_time()
    while True:
      for it in items:
        fn(it)
        n += 1
      if time.perf_counter() - start >= min_seconds / repeats:
        break
    best = min(best, (time.thread_time() - cpu0) / n)
  return best


def _device_noise_seconds(crops: list[np.ndarray], sigma: float, seconds: float, batch: int = 20) -> float:
  """CPU seconds (all threads of this process) per image of the jitted device noise on JAX's default
  backend, in batches of `batch` crops: the best of 3 rounds."""
  import jax
  from rajax import degrade
  imgs = np.stack([crops[i % len(crops)] for i in range(batch)])
  fn = jax.jit(lambda t, i: degrade.gaussian_noise_device(t, i, sigma=sigma, seed=0))
  target, index = jax.device_put(imgs), jax.device_put(np.arange(batch, dtype=np.int32))
  fn(target, index).block_until_ready()  # compile
  best = float("inf")
  for _ in range(3):
    n, start, cpu0 = 0, time.perf_counter(), time.process_time()
    while True:
      fn(target, index).block_until_ready()
      n += batch
      if time.perf_counter() - start >= seconds / 3:
        break
    best = min(best, (time.process_time() - cpu0) / n)
  return best


def stage_table(source, *, resize: int, crop: int, scale: int, sigma: float, quality: int,
                seconds: float, device_noise: bool = True) -> list[tuple[str, float]]:
  """[(stage, CPU seconds per image)] on one thread (the device-noise row: all of JAX's threads)."""
  from rajax import degrade
  raw = [source[i]["image"] for i in range(min(len(source), 32))]
  decoded = [pipe.decode_image(r) for r in raw]
  resized = [pipe.resize_short_side(d, resize) for d in decoded]
  rng = np.random.default_rng(0)
  crops = [pipe.random_crop_flip(r, crop, rng) for r in resized]
  rows = [
      ("decode (PIL, full size)", _timeit(pipe.decode_image, raw, seconds)),
      ("decode, JPEG draft mode (fast_decode; not exact)",
       _timeit(lambda r: pipe.decode_image(r, draft_short_side=resize), raw, seconds)),
      (f"Resize({resize}) bilinear", _timeit(lambda d: pipe.resize_short_side(d, resize), decoded, seconds)),
      (f"RandomCrop({crop}) + flip", _timeit(lambda r: pipe.random_crop_flip(r, crop, rng), resized, seconds)),
      (f"SR: bicubic down x{scale}", _timeit(lambda c: degrade.bicubic_down(c, scale), crops, seconds)),
      (f"denoise, host: NumPy Gaussian noise sigma {sigma}",
       _timeit(lambda c: degrade.gaussian_noise(c, sigma, rng), crops, seconds)),
      (f"JPEG q{quality} round trip", _timeit(lambda c: degrade.jpeg(c, quality), crops, seconds)),
  ]
  for task, noise, label in (("sr", "host", f"+SR x{scale}"), ("denoise", "device", " (denoise, device noise)"),
                              ("denoise", "host", "+noise (denoise, host noise)"), ("jpeg", "host", f"+JPEG q{quality}")):
    deg = pipe.Degradation(task, scale=scale, sigma=sigma, quality=quality, noise=noise)
    example = pipe.TrainExample(deg, resize, crop)
    rows.append((f"whole example: decode+resize+crop{label}",
                 _timeit(lambda r: example.random_map({"image": r, "label": 0, "_position": 0}, rng), raw, seconds)))
  if device_noise:
    import jax
    rows.append((f"device noise: jitted on {jax.default_backend()}, all its threads",
                 _device_noise_seconds(crops, sigma, seconds)))
  return rows


def pipeline_rate(source, degradation, *, resize: int, crop: int, batch: int, workers: int, threads: int,
                  seconds: float, fast_decode: bool = False) -> tuple[float, float]:
  """(images/s of train_dataset after warm-up, bytes per example of its batches)."""
  ds = pipe.train_dataset(source, degradation, resize=resize, crop=crop, global_batch=batch, seed=0,
                          workers=workers, threads=threads, fast_decode=fast_decode)
  it = iter(ds)
  for _ in range(3 + 2 * workers):  # warm-up: worker start-up, thread pools, first prefetches
    first = next(it)
  nbytes = sum(np.asarray(v).nbytes for v in first.values()) / len(first["label"])
  n, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    n += len(next(it)["label"])
  rate = n / (time.perf_counter() - start)
  del it
  return rate, nbytes


def cli(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m rajax.data.bench", description=__doc__.split("\n\n")[0],
                                   epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="experiment config FILE.py[:ARG] (data and degrade sections)")
  parser.add_argument("--source", choices=("auto", "tfds", "photos"), default="auto",
                      help="auto: tfds when the config has data.data_dir, else photos")
  parser.add_argument("--tasks", default="sr,denoise,jpeg", help="comma-separated tasks")
  parser.add_argument("--workers", default="0,1,2", help="comma-separated worker-process counts (0: threads only)")
  parser.add_argument("--threads", type=int, default=0, help="reading threads per process (0: the config's)")
  parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per row (stages: half of it)")
  parser.add_argument("--images", type=int, default=64, help="number of photo JPEGs for --source photos")
  parser.add_argument("--fast_decode", action="store_true", help="also time the pipeline with JPEG draft mode")
  args, rest = parser.parse_known_args(argv)
  bad = [r for r in rest if not r.startswith("--config.")]
  if bad:
    parser.error(f"unrecognized arguments {bad}; config overrides look like --config.data.data_dir=DIR")

  from rajax import config as config_lib
  try:
    config = config_lib.from_command_line(args.config, [r[len("--config."):] for r in rest])
  except config_lib.ConfigError as e:
    parser.exit(2, f"rajax.data.bench: {e}\n")
  d, g = config.data, config.degrade
  kind = args.source if args.source != "auto" else ("tfds" if d.data_dir else "photos")
  if kind == "tfds":
    source = pipe.make_source(d, d.train_split)
    what = f"tfds {d.name}/{d.train_split} in {d.data_dir} ({len(source)} images)"
  else:
    source = PhotoJpegs(args.images)
    what = f"{len(source)} ImageNet-sized JPEGs (500x375, q90) from scikit-image photos"
  threads = args.threads or d.threads
  cpu = _cpu_name()
  print(f"rajax.data.bench: {what}; {os.cpu_count()} CPU core(s): {cpu}", flush=True)
  print(f"resize {d.resize}, crop {d.crop}, batch {d.batch_size}, threads/process {threads}; "
        f"load average {os.getloadavg()[0]:.1f} (pipeline rates are wall-clock: other load lowers them)\n",
        flush=True)

  tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
  rows = stage_table(source, resize=d.resize, crop=d.crop, scale=g.scale, sigma=g.sigma, quality=g.quality,
                     seconds=max(args.seconds / 2, 0.05), device_noise="denoise" in tasks)
  print(f"{'stage (1 thread, CPU time, best of 3)':62s} {'ms/img':>8s} {'img/s/core':>11s}")
  for name, sec in rows:
    print(f"{name:62s} {1e3 * sec:8.2f} {1 / sec:11.0f}")
  print(flush=True)

  print(f"{'pipeline (train_dataset)':30s} {'workers':>8s} {'img/s':>8s} {'img/s/core':>11s} {'KB/img':>8s}",
        flush=True)
  variants = []
  for task in tasks:
    if task == "denoise":  # the config's place for the noise first, then the other one for comparison
      noise = d.get("noise", "device")
      for place in (noise, "host" if noise == "device" else "device"):
        variants.append((f"denoise, {place} noise", pipe.Degradation(task, sigma=g.sigma, noise=place)))
    else:
      variants.append((task, pipe.Degradation(task, scale=g.scale, sigma=g.sigma, quality=g.quality)))
  for name, deg in variants:
    for workers in [int(w) for w in args.workers.split(",")]:
      for fast in ((False, True) if args.fast_decode else (False,)):
        rate, nbytes = pipeline_rate(source, deg, resize=d.resize, crop=d.crop, batch=d.batch_size, workers=workers,
                                     threads=threads, seconds=args.seconds, fast_decode=fast)
        label = name + (" (fast_decode)" if fast else "")
        cores = min(max(workers, 1) if workers else os.cpu_count() or 1, os.cpu_count() or 1)
        print(f"{label:30s} {workers:8d} {rate:8.0f} {rate / cores:11.0f} {nbytes / 1024:8.0f}", flush=True)
  counts = pipe.bad_data_counts()
  skipped = {k: v for k, v in counts.items() if k != "decoded"}
  if skipped:
    print(f"\nbad data (this process): {skipped}")
  return 0


def _cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  import platform
  return platform.processor() or platform.machine()


if __name__ == "__main__":
  sys.exit(cli())
