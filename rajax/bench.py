"""Train-step throughput: the real rajax step on device-resident batches, as one JSON line.

    python -m rajax.bench --config configs/bench.py:task=sr,mode=ra
    python -m rajax.bench --config configs/bench.py:task=denoise,mode=ra --config.compute_dtype=bfloat16 --vs-torch
    python -m rajax.bench --config configs/bench.py:task=sr,mode=ra --pipeline   # fed by the grain pipeline
    python -m rajax.bench --config configs/bench.py:task=sr,mode=ra,tiny=true --hlo  # collectives on 8 CPU devices
    python -m rajax.bench --config configs/bench.py:task=denoise,recognizer=mobilenet_v2 --recognizer  # R alone

The step is the method's own `train_step` (`rajax.methods`) over the networks the trainer builds
(`rajax.networks`), jitted with the trainer's shardings over all devices (or
`config.mesh.data` of them), on a synthetic batch already on the device. Compilation and
`bench.warmup` steps are excluded and reported apart; `step_ms` is the median over `bench.steps`
steps, each blocked on; `img_per_s` is the global batch over it (`img_per_s_pipelined` lets the
steps queue up, as training does).

FLOPs per image come from `rajax.flops` (convolutions and matrix products of the step's jaxpr:
what the step really executes, backward included); `tflops` is the rate achieved and
`fraction_of_peak` divides it by the dense peak of the devices (`PEAK_TFLOPS`, by device kind
and compute dtype; null where unknown, e.g. on CPUs).

--vs-torch   also times the PyTorch reference step (`rajax.bench_torch`) with the same shapes on the
             same device and reports each variant's img/s and rajax's ratio to it.
--pipeline   also feeds the step from the real grain pipeline (ImageNet-sized JPEGs made from
             bundled photos; decode, crop and degradation on the host; transfers overlapped by
             `sharding.prefetch_to_device`) and reports end-to-end img/s next to step-only img/s.
--recognizer instead of the step, times the recognizer alone on the step's target batch: its
             forward and the input gradient of its cross-entropy (what RA backpropagates into P).
--hlo [N]    instead of timing, compiles the data-parallel step on N fake CPU devices, for
             global and per-device BatchNorm statistics, and prints the collectives it contains.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rajax import config as config_lib
from rajax import flops as flops_lib
from rajax import hlo as hlo_lib
from rajax import methods, networks, optim, sharding
from rajax.methods import ra
from rajax.models import layers, recognizer

# Dense (non-sparse) peak TFLOP/s per device, by a lower-case substring of `device.device_kind`
# (first match wins). "float32" is what the compiler runs float32 convolutions and matrix
# products at by default: TF32 tensor cores on NVIDIA GPUs since Ampere, one bfloat16 pass on TPUs.
PEAK_TFLOPS: tuple[tuple[str, str, dict[str, float]], ...] = (
    ("h200", "NVIDIA H200", {"bfloat16": 989.5, "float16": 989.5, "float32": 494.7}),
    ("h100 pcie", "NVIDIA H100 PCIe", {"bfloat16": 756.0, "float16": 756.0, "float32": 378.0}),
    ("h100 nvl", "NVIDIA H100 NVL", {"bfloat16": 835.5, "float16": 835.5, "float32": 417.5}),
    ("h100", "NVIDIA H100 SXM", {"bfloat16": 989.5, "float16": 989.5, "float32": 494.7}),
    ("a100", "NVIDIA A100", {"bfloat16": 312.0, "float16": 312.0, "float32": 156.0}),
    ("tpu v4", "TPU v4", {"bfloat16": 275.0, "float32": 275.0}),
    ("tpu v5 lite", "TPU v5e", {"bfloat16": 197.0, "float32": 197.0}),
    ("tpu v5e", "TPU v5e", {"bfloat16": 197.0, "float32": 197.0}),
    ("tpu v5", "TPU v5p", {"bfloat16": 459.0, "float32": 459.0}),
    ("tpu v6 lite", "TPU v6e", {"bfloat16": 918.0, "float32": 918.0}),
    ("tpu v6e", "TPU v6e", {"bfloat16": 918.0, "float32": 918.0}),
)

log = logging.getLogger("rajax.bench")


class BenchError(ValueError):
  """A benchmark setting cannot be run as asked."""


def peak_tflops(device_kind: str, dtype: Any) -> float | None:
  """Dense peak TFLOP/s of one device of `device_kind` at compute `dtype`; None when not in the table."""
  kind, name = device_kind.lower(), jnp.dtype(dtype).name
  for key, _, peaks in PEAK_TFLOPS:
    if key in kind:
      return peaks.get(name)
  return None


# --------------------------------------------------------------------------- the step under test

class Setup:
  """Everything the timed step needs: mesh, networks, optimizers, recognizer, state and batch."""

  def __init__(self, config: ml_collections.ConfigDict, devices: Sequence[Any] | None = None,
               batch: dict[str, np.ndarray] | None = None):
    self.config = config
    self.mesh = sharding.make_mesh(config.mesh.data, devices)
    sharding.check_batch_size(config.data.batch_size, self.mesh)
    self.spec = methods.get(config.method.name)
    self.degradation = degradation(config)
    self.replicated, self.batched = sharding.replicated(self.mesh), sharding.batch_sharded(self.mesh)
    self.frozen = jax.device_put(networks.frozen_networks(config, self.spec), self.replicated)
    self.modules = networks.trained_modules(config, self.spec, self.frozen)
    self.recognizer = self.frozen.get("recognizer")
    if self.recognizer is None and "recognizer" in self.modules:
      self.recognizer = self.modules["recognizer"]
    self.optimizers = optim.make_optimizers(config.optim, self.spec.trains, 1000, 1000)
    self.input_size = config.data.crop // self.scale
    host = batch if batch is not None else synthetic_batch(config, recognizer=self.recognizer)
    self.batch = sharding.global_batch(host, self.mesh)
    device_stage = self.degradation.device_stage(config.seed)  # denoising noise drawn in the step
    self.method = methods.build(methods.Setup(config=config, modules=self.modules, optimizers=self.optimizers,
                                              input_shape=networks.input_shape(config), device_stage=device_stage))
    self.step = jax.jit(self.method.train_step, in_shardings=(self.replicated, self.batched, self.replicated),
                        out_shardings=(self.replicated, self.replicated), donate_argnums=(0,))

  @property
  def scale(self) -> int:
    return self.config.degrade.scale if self.config.task == "sr" else 1

  def init_state(self) -> methods.TrainState:
    """A fresh train state, as the trainer's. The parameters are drawn with the RBG generator, which
    compiles several times faster on CPUs than the default one (the values do not change the
    step's cost); the state's own key is the trainer's kind."""

    initial = networks.initial_variables(self.config, self.spec, self.modules)   # a trained R starts from its weights

    def init(key, initial):
      return self.method.init(key, initial).replace(rng=jax.random.PRNGKey(self.config.seed))

    return jax.jit(init, out_shardings=self.replicated)(jax.random.key(self.config.seed, impl="rbg"), initial)

  def compile(self, state):
    """(compiled step, its jaxpr, seconds spent tracing, lowering and compiling)."""
    t0 = time.perf_counter()
    with jax.set_mesh(self.mesh):
      traced = self.step.trace(state, self.batch, self.frozen)
      compiled = traced.lower().compile()
    return compiled, traced.jaxpr, time.perf_counter() - t0


def degradation(config: ml_collections.ConfigDict):
  """The training pipeline's degradation for `config`, as the trainer makes it."""
  from rajax import data as data_lib
  return data_lib.Degradation(task=config.task, scale=config.degrade.scale, sigma=config.degrade.sigma,
                              quality=config.degrade.quality, noise=config.data.get("noise", "host"),
                              kernel=config.degrade.get("kernel", "pil"))


def synthetic_batch(config: ml_collections.ConfigDict, seed: int = 0, *, recognizer=None,
                    boxes_per_image: int = 8) -> dict[str, np.ndarray]:
  """A host batch with the keys, shapes and dtypes of the training pipeline's for `config`
  (random pixels and labels): uint8 "input" (SR, JPEG) or float32 "input" (denoising with the noise
  drawn on the host) or none (noise drawn in the step from the examples' "index"). For a detector
  (`recognizer.task == "detection"`), box targets as rajax.data.detection gives them: random boxes
  of 1/8 to 1/2 of the image, `boxes_per_image` slots of which the first half are valid."""
  rng = np.random.default_rng(seed)
  b, crop = config.data.batch_size, config.data.crop
  scale = config.degrade.scale if config.task == "sr" else 1
  if crop % scale:
    raise BenchError(f"config.data.crop={crop} is not divisible by the SR scale {scale}.")
  size = crop // scale
  batch = {"target": rng.integers(0, 256, (b, crop, crop, 3), dtype=np.uint8),
           "label": rng.integers(0, getattr(recognizer, "num_classes", None) or config.recognizer.num_classes, (b,),
                                 dtype=np.int32)}
  if getattr(recognizer, "task", "classification") == "detection":
    n = boxes_per_image
    wh = rng.uniform(crop / 8, crop / 2, (b, n, 2))
    xy = rng.uniform(0, 1, (b, n, 2)) * (crop - wh)
    first = 1 if recognizer.model.background else 0
    batch.pop("label")
    batch.update(boxes=np.concatenate([xy, xy + wh], -1).astype(np.float32),
                 labels=rng.integers(first, recognizer.num_classes, (b, n), dtype=np.int32),
                 valid=np.arange(n)[None, :].repeat(b, 0) < max(1, n // 2), difficult=np.zeros((b, n), bool))
  if degradation(config).on_device:
    batch["index"] = np.arange(b, dtype=np.int32)
  elif config.task == "denoise":
    batch["input"] = rng.random((b, size, size, 3), dtype=np.float32)
  else:
    batch["input"] = rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)
  return batch


def flops_breakdown(setup: Setup, state) -> dict[str, float]:
  """Forward FLOPs per image of each network (training mode for P and T), for the record."""
  b = setup.config.data.batch_size
  out = {}
  x = jax.ShapeDtypeStruct((b, setup.input_size, setup.input_size, 3), jnp.float32)
  y = jax.ShapeDtypeStruct((b, setup.config.data.crop, setup.config.data.crop, 3), jnp.float32)
  with jax.set_mesh(setup.mesh):
    for name, net in setup.modules.items():
      if name == "recognizer":   # a trained R: counted below with its inference forward
        continue
      arg = x if name == "processor" else y
      f = flops_lib.count(lambda v, a, net=net: net.apply(v, a, train=True, mutable=["batch_stats"]),
                          state.variables(name), arg)
      out[f"{name}_forward"] = f["total"] / b
    if setup.recognizer is not None:
      out["recognizer_forward"] = flops_lib.count(lambda r, a: r(a), setup.recognizer, y)["total"] / b
  return out


def _time_steps(compiled, state, batch, frozen, *, steps: int, warmup: int):
  for _ in range(warmup):
    state, metrics = compiled(state, batch, frozen)
    jax.block_until_ready((state, metrics))
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch, frozen)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  t0 = time.perf_counter()
  for _ in range(steps):  # queued, as in training
    state, metrics = compiled(state, batch, frozen)
  jax.block_until_ready((state, metrics))
  pipelined = (time.perf_counter() - t0) / steps
  if not all(np.isfinite(float(v)) for v in jax.device_get(metrics).values()):
    log.warning("the benchmarked step produced non-finite metrics: %s", jax.device_get(metrics))
  return state, sorted(times), pipelined


def _peak_memory(devices) -> int | None:
  peaks = []
  for d in devices:
    try:
      stats = d.memory_stats()
    except Exception:  # some backends do not implement it
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


def _compiled_memory(compiled) -> int | None:
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
  except Exception:
    return None


def _checked_bench(config: ml_collections.ConfigDict):
  bench = config.bench
  if bench.steps < 1 or bench.warmup < 0:
    raise BenchError(f"config.bench.steps={bench.steps} must be >= 1 and bench.warmup={bench.warmup} >= 0.")
  return bench


def run(config: ml_collections.ConfigDict, *, vs_torch: bool = False, pipeline: bool = False) -> dict[str, Any]:
  """Times the train step of `config` (configs/bench.py); returns the JSON record."""
  bench = _checked_bench(config)
  host_batch, pipe = None, None
  if pipeline:
    pipe = _pipeline(config)
    host_batch = next(iter(pipe))
  setup = Setup(config, batch=host_batch)
  devices = list(setup.mesh.devices.flat)
  log.info("compiling the %s/%s step on %d %s device(s)", config.task, config.method.name, len(devices), devices[0].platform)
  state = setup.init_state()
  compiled, jaxpr, compile_s = setup.compile(state)
  step_flops = flops_lib.count_jaxpr(jaxpr)["total"]
  breakdown = flops_breakdown(setup, state)
  b = config.data.batch_size
  log.info("timing %d steps after %d warm-up steps", bench.steps, bench.warmup)
  state, times, pipelined = _time_steps(compiled, state, setup.batch, setup.frozen, steps=bench.steps,
                                        warmup=bench.warmup)
  med = times[len(times) // 2]
  img_per_s = b / med
  per_image = step_flops / b
  tflops = per_image * img_per_s / 1e12
  kind = devices[0].device_kind
  peak = peak_tflops(kind, config.compute_dtype)
  record = {
      "bench": "train_step", "task": config.task, "mode": config.method.name, "batch": b,
      "input_shape": [setup.input_size, setup.input_size, 3], "target_shape": [config.data.crop, config.data.crop, 3],
      "dtype": jnp.dtype(config.compute_dtype).name, "bn_stats": config.bn_stats,
      "noise_on_device": setup.degradation.on_device,
      "processor": {"name": config.processor.name, "blocks": config.processor.blocks,
                    "channels": config.processor.channels},
      "recognizer": config.recognizer.name if setup.recognizer is not None else None,
      "devices": len(devices), "platform": devices[0].platform, "device_kind": kind,
      "steps": bench.steps, "warmup": bench.warmup,
      "img_per_s": img_per_s, "step_ms": 1e3 * med, "step_ms_min": 1e3 * times[0], "step_ms_max": 1e3 * times[-1],
      "img_per_s_pipelined": b / pipelined, "step_ms_pipelined": 1e3 * pipelined,
      "compile_s": compile_s,
      "peak_memory_bytes": _peak_memory(devices), "compiled_memory_bytes": _compiled_memory(compiled),
      "flops_per_image": per_image, "flops_forward_per_image": breakdown,
      "tflops": tflops, "peak_tflops": None if peak is None else peak * len(devices),
      "fraction_of_peak": None if peak is None else tflops / (peak * len(devices)),
      "host": _host(), "jax_version": jax.__version__,
  }
  if pipeline:
    record["pipeline"] = _run_pipeline(setup, pipe, compiled, state, step_img_per_s=b / pipelined)
  if vs_torch:
    record["vs_torch"] = _vs_torch(config, img_per_s)
  return record


def recognizer_run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Times the recognizer of `config` alone on the step's target batch: its forward, and the
  gradient of its cross-entropy with respect to the input (what RA's loss backpropagates into P)."""
  bench = _checked_bench(config)
  rec = networks.module(config, "recognizer")
  host = synthetic_batch(config)
  x = jnp.asarray(host["target"], jnp.float32) / 255.0
  labels = jnp.asarray(host["label"])

  def loss(x):
    logp = jax.nn.log_softmax(rec(x).astype(jnp.float32))
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))

  record = {"bench": "recognizer", "recognizer": config.recognizer.name, "batch": config.data.batch_size,
            "input_shape": list(x.shape[1:]), "dtype": jnp.dtype(config.compute_dtype).name,
            "platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind,
            "steps": bench.steps, "host": _host(), "jax_version": jax.__version__}
  for name, fn in (("forward", jax.jit(lambda x: rec(x))), ("input_grad", jax.jit(jax.grad(loss)))):
    t0 = time.perf_counter()
    compiled = fn.lower(x).compile()
    record[f"{name}_compile_s"] = time.perf_counter() - t0
    for _ in range(bench.warmup):
      jax.block_until_ready(compiled(x))
    times = []
    for _ in range(bench.steps):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(x))
      times.append(time.perf_counter() - t0)
    record[f"{name}_ms"] = 1e3 * float(np.median(times))
  return record


# --------------------------------------------------------------------------- end to end

def _pipeline(config):
  """The trainer's grain training pipeline over ImageNet-sized photo JPEGs."""
  from rajax import data as data_lib
  from rajax.data.bench import PhotoJpegs
  source = PhotoJpegs(max(config.bench.pipeline_images, config.data.batch_size))
  return data_lib.train_dataset(source, degradation(config), resize=config.data.resize, crop=config.data.crop,
                                global_batch=config.data.batch_size, seed=config.seed,
                                workers=config.data.workers, threads=config.data.threads)


def _run_pipeline(setup: Setup, pipe, compiled, state, *, step_img_per_s: float) -> dict[str, Any]:
  bench, b = setup.config.bench, setup.config.data.batch_size
  steps, warmup = bench.steps, max(bench.warmup, 2)
  it = iter(pipe)
  for _ in range(warmup):
    next(it)
  t0 = time.perf_counter()
  for _ in range(steps):
    next(it)
  host_img_per_s = steps * b / (time.perf_counter() - t0)
  del it
  batches = sharding.prefetch_to_device(iter(pipe), setup.mesh, size=bench.prefetch)
  try:
    for _ in range(warmup):
      state, metrics = compiled(state, next(batches), setup.frozen)
    jax.block_until_ready((state, metrics))
    t0 = time.perf_counter()
    for _ in range(steps):
      state, metrics = compiled(state, next(batches), setup.frozen)
    jax.block_until_ready((state, metrics))
    e2e = steps * b / (time.perf_counter() - t0)
  finally:
    batches.close()
  return {"img_per_s": e2e, "step_only_img_per_s": step_img_per_s, "fraction_of_step_only": e2e / step_img_per_s,
          "host_pipeline_img_per_s": host_img_per_s, "workers": setup.config.data.workers,
          "threads": setup.config.data.threads, "prefetch": bench.prefetch, "resize": setup.config.data.resize,
          "source": f"{max(bench.pipeline_images, b)} photo JPEGs, 500x375 q90"}


# --------------------------------------------------------------------------- PyTorch reference

def torch_variants(config: ml_collections.ConfigDict, device: str) -> str:
  """The reference variants for `config.bench.torch_variants` ("auto": by device and compute dtype)."""
  if config.bench.torch_variants != "auto":
    return config.bench.torch_variants
  bf16 = jnp.dtype(config.compute_dtype) != jnp.float32
  if device == "cuda":
    return "amp_bf16_cl,compile_bf16_cl" if bf16 else "eager_fp32,compile_fp32_cl"
  return "amp_bf16_cl" if bf16 else "eager_fp32"


def _vs_torch(config: ml_collections.ConfigDict, img_per_s: float) -> dict[str, Any] | None:
  from rajax import bench_torch
  try:
    import torch
  except ImportError as e:
    msg = f"PyTorch is not installed ({e}); the reference comparison was skipped."
    log.warning(msg)
    return {"skipped": msg}
  if config.recognizer.name != "resnet18":
    raise BenchError(f"The PyTorch reference uses ResNet-18 as R; config.recognizer.name is "
                     f"{config.recognizer.name!r}. Use recognizer=resnet18 for --vs-torch.")
  spec = methods.get(config.method.name)
  if spec.name not in bench_torch.MODES:
    raise BenchError(f"The PyTorch reference implements the methods {', '.join(bench_torch.MODES)}; "
                     f"config.method.name is {spec.name!r}.")
  if config.processor.name != "srresnet" or ("transformer" in spec.trains and config.transformer.name != "resnet_generator"):
    raise BenchError("The PyTorch reference implements P = SRResNet and T = ResnetGenerator only.")
  device = "cuda" if torch.cuda.is_available() else "cpu"
  variants = torch_variants(config, device)
  log.info("timing the PyTorch reference (%s) on %s", variants, device)
  results = bench_torch.run(
      mode=spec.name, batch=config.data.batch_size, crop=config.data.crop,
      scale=config.degrade.scale if config.task == "sr" else 1, blocks=config.processor.blocks,
      channels=config.processor.channels, num_classes=config.recognizer.num_classes,
      lam=ra.Settings.of(config).lam, width=config.recognizer.get("width", 64), t_blocks=config.transformer.blocks, t_channels=config.transformer.channels,
      variants=variants, steps=config.bench.steps, warmup=config.bench.warmup, device=device)
  for r in results.values():
    r["ratio"] = img_per_s / r["img_per_s"]
  return results


# --------------------------------------------------------------------------- collectives in HLO

def collective_table(config: ml_collections.ConfigDict, num_devices: int = 8) -> dict[str, Any]:
  """Compiles the data-parallel step of `config` on `num_devices` CPU devices for each BatchNorm
  statistics option; returns their collectives (rajax.hlo.collectives) and what the step holds.

  Needs that many CPU devices: XLA_FLAGS=--xla_force_host_platform_device_count=N set before jax
  starts (`python -m rajax.bench --hlo N` sets it).
  """
  cpus = jax.devices("cpu")
  if len(cpus) < num_devices:
    raise BenchError(f"{num_devices} CPU devices are needed and {len(cpus)} exist; set "
                     f"XLA_FLAGS=--xla_force_host_platform_device_count={num_devices} before jax starts "
                     f"(python -m rajax.bench --hlo {num_devices} does).")
  if config.data.batch_size % num_devices:
    raise BenchError(f"config.data.batch_size={config.data.batch_size} is not divisible by {num_devices} devices.")
  out = {"devices": num_devices, "task": config.task, "mode": config.method.name, "batch": config.data.batch_size,
         "dtype": jnp.dtype(config.compute_dtype).name, "by_bn_stats": {}}
  for bn in layers.BN_STATS:
    c = config.copy_and_resolve_references()
    with c.unlocked():
      c.bn_stats = bn
      c.mesh.data = num_devices
    setup = Setup(c, devices=cpus[:num_devices])
    state = jax.eval_shape(setup.init_state)
    compiled, _, seconds = setup.compile(state)
    stats = hlo_lib.collectives(compiled.as_text())
    out["by_bn_stats"][bn] = {"collectives": stats, "total": hlo_lib.total(stats), "compile_s": seconds}
    out.setdefault("trainable", _trainable_sizes(state))
  return out


def _trainable_sizes(state) -> dict[str, int]:
  """Parameter and BatchNorm-statistics sizes (float32 elements) and the BN layer count of the trained networks."""
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  stats = jax.tree.leaves(state.batch_stats)
  return {"param_elements": params, "batch_stat_elements": sum(int(np.prod(x.shape)) for x in stats),
          "bn_layers": len(stats) // 2, "bn_channels": sum(int(np.prod(x.shape)) for x in stats) // 2}


def format_collectives(table: dict[str, Any]) -> str:
  lines = [f"{table['task']}/{table['mode']} step, batch {table['batch']}, {table['devices']} devices "
           f"(fake CPU), {table['dtype']}; trained networks: {table['trainable']['param_elements']:,} parameters, "
           f"{table['trainable']['bn_layers']} BatchNorm layers",
           f"{'bn_stats':12s} {'collective':20s} {'count':>6s} {'bytes':>14s}"]
  for bn, entry in table["by_bn_stats"].items():
    for kind, v in entry["collectives"].items():
      if v["count"]:
        lines.append(f"{bn:12s} {kind:20s} {v['count']:6d} {v['bytes']:14,d}")
    lines.append(f"{bn:12s} {'total':20s} {entry['total']['count']:6d} {entry['total']['bytes']:14,d}")
  return "\n".join(lines)


# --------------------------------------------------------------------------- command line

def _host() -> dict[str, Any]:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
  except OSError:
    pass
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  return {"cpu": cpu, "cores": os.cpu_count(), "load_average": load}


def _summary(r: dict[str, Any]) -> str:
  s = (f"{r['task']}/{r['mode']} {r['dtype']} batch {r['batch']} bn_stats={r['bn_stats']} on {r['devices']} x "
       f"{r['device_kind']}: {r['img_per_s']:.1f} img/s ({r['step_ms']:.2f} ms/step, compile {r['compile_s']:.1f} s), "
       f"{r['flops_per_image'] / 1e9:.3f} GFLOP/img, {r['tflops']:.3f} TFLOP/s")
  if r["fraction_of_peak"] is not None:
    s += f" = {100 * r['fraction_of_peak']:.1f}% of peak"
  if "pipeline" in r:
    p = r["pipeline"]
    s += (f"\n  end to end (grain pipeline): {p['img_per_s']:.1f} img/s = {100 * p['fraction_of_step_only']:.0f}% "
          f"of step-only; host pipeline alone {p['host_pipeline_img_per_s']:.1f} img/s")
  for name, v in (r.get("vs_torch") or {}).items():
    if isinstance(v, dict):
      s += f"\n  vs PyTorch {name}: {v['img_per_s']:.1f} img/s, rajax/PyTorch = {v['ratio']:.2f}x"
  return s


def cli(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m rajax.bench", description=__doc__.split("\n\n")[0],
      epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="benchmark config FILE.py[:ARG], e.g. configs/bench.py:task=sr,mode=ra")
  parser.add_argument("--vs-torch", action="store_true", help="also time the PyTorch reference step")
  parser.add_argument("--pipeline", action="store_true", help="also time the step fed by the grain pipeline")
  parser.add_argument("--recognizer", action="store_true",
                      help="time the recognizer alone: its forward and its loss's input gradient")
  parser.add_argument("--hlo", type=int, nargs="?", const=8, default=0, metavar="N",
                      help="count the collectives of the step compiled on N fake CPU devices (default 8)")
  args, rest = parser.parse_known_args(argv)
  overrides = config_lib.overrides_from_args(parser, rest, "data.batch_size=16")
  if args.hlo < 0:
    parser.error(f"--hlo needs a positive device count, got {args.hlo}")
  if args.recognizer and (args.vs_torch or args.pipeline or args.hlo):
    parser.error("--recognizer times the recognizer alone; it does not combine with --vs-torch, --pipeline or --hlo")
  if args.hlo:  # before jax starts its backends
    flag = f"--xla_force_host_platform_device_count={args.hlo}"
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
      os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
  logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
  logging.getLogger("absl").setLevel(logging.WARNING)
  try:
    config = config_lib.from_command_line(args.config, overrides)
    if "bench" not in config:
      raise config_lib.ConfigError(f"{args.config} has no 'bench' section; use configs/bench.py.")
    if args.hlo:
      table = collective_table(config, args.hlo)
      print(format_collectives(table), flush=True)
      print(json.dumps({"bench": "collectives", **table}), flush=True)
      return 0
    if args.recognizer:
      r = recognizer_run(config)
      print(f"{r['recognizer']} batch {r['batch']} {r['input_shape']} {r['dtype']} on {r['device_kind']}: "
            f"forward {r['forward_ms']:.1f} ms, input gradient {r['input_grad_ms']:.1f} ms", file=sys.stderr, flush=True)
      print(json.dumps(r), flush=True)
      return 0
    record = run(config, vs_torch=args.vs_torch, pipeline=args.pipeline)
  except (config_lib.ConfigError, BenchError) as e:
    parser.exit(2, f"rajax.bench: {e}\n")
  print(_summary(record), file=sys.stderr, flush=True)
  print(json.dumps(record), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(cli())
