"""The rajax trainer: recognition-aware training of a processor P against a frozen recognizer R.

    python -m rajax.train --config configs/smoke.py --workdir runs/smoke
    python -m rajax.train --config configs/imagenet.py:task=sr,mode=ra,recognizer=resnet18 \
        --workdir runs/sr_ra --config.data.data_dir=$TFDS_DIR --config.compute_dtype=bfloat16

The method (`config.method.name`, `rajax.methods`) says which networks are trained, each with its
own optimizer (`config.optim.<network>`), and which are used frozen; the trainer builds them
(`rajax.networks`) and runs the method's step, knowing nothing else about it.

Runs offline; logs step, each loss term, PSNR, images/s and ETA to stdout and to
`<workdir>/metrics.jsonl`; checkpoints with Orbax under `<workdir>/checkpoints`. Rerunning the same
command resumes from the newest complete checkpoint (SIGTERM saves one before exiting), and the
resumed run ends with the same parameters as an uninterrupted one. At the end the trained
networks are also written as `<workdir>/<network>.msgpack` (Flax variables); `rajax.runs.load`
reads a finished run back.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import signal
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections

from rajax import checkpoint as ckpt_lib
from rajax import config as config_lib
from rajax import data as data_lib
from rajax import distributed, methods, networks
from rajax import optim, progress, sharding, tasks
from rajax.data import detection as detection_data
from rajax.data import segmentation as segmentation_data
from rajax import weights as weights_lib


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
  """Trains as `config` says, in `workdir` (resuming if it holds checkpoints); returns the final eval."""
  config_lib.validate(config)
  workdir = pathlib.Path(workdir)

  # ================================================================ processes, devices, mesh
  distributed.initialize(config.distributed)  # config.distributed or RAJAX_DISTRIBUTED=1; see rajax/distributed.py
  is_main = jax.process_index() == 0
  mesh = sharding.make_mesh(config.mesh.data, distributed.devices())
  distributed.check_mesh(mesh)
  sharding.check_batch_size(config.data.batch_size, mesh)
  sharding.check_batch_size(config.data.eval_batch_size, mesh, "data.eval_batch_size")
  replicated, batched = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
    _write_config(config, workdir)
  print(f"rajax.train: {config.task}/{config.method.name} on {mesh.size} {jax.devices()[0].platform} device(s), "
        f"{jax.process_count()} process(es); workdir {workdir}", flush=True)

  # ================================================================ data
  degradation = data_lib.Degradation(task=config.task, scale=config.degrade.scale, sigma=config.degrade.sigma,
                                     quality=config.degrade.quality, noise=config.data.noise,
                                     kernel=config.degrade.get("kernel", "pil"),
                                     families=tuple(config.degrade.get("families", ())))
  device_stage = degradation.device_stage(config.seed)  # the noise, drawn in the steps (data.noise="device")
  task_name = networks.recognition_task(config)
  detection, segmentation = task_name == "detection", task_name == "segmentation"
  # boxes (rajax.data.detection) or label maps (rajax.data.segmentation) with every image
  dense_data = {"detection": detection_data, "segmentation": segmentation_data}.get(task_name)
  if dense_data is not None:
    train_source, eval_source = (dense_data.config_source(config, s) for s in ("train", "eval"))
  else:
    train_source = data_lib.make_source(config.data, config.data.train_split)
    eval_source = data_lib.make_source(config.data, config.data.eval_split)
  steps_per_epoch = len(train_source) // config.data.batch_size
  if steps_per_epoch < 1:
    raise data_lib.DataError(f"The training split has {len(train_source)} examples, fewer than one batch "
                             f"of {config.data.batch_size}.")
  total_steps = config.total_steps if config.total_steps > 0 else round(config.num_epochs * steps_per_epoch)
  eval_every = {-1: steps_per_epoch, 0: total_steps}.get(config.eval_every, config.eval_every)
  hosts = dict(process_index=jax.process_index(), process_count=jax.process_count())
  if dense_data is not None:
    pipeline = detection_data.detection_pipeline if detection else segmentation_data.segmentation_pipeline
    train_data = pipeline(config, "train", source=train_source, **hosts)
    eval_data = pipeline(config, "eval", source=eval_source, **hosts)
  else:
    train_data = data_lib.train_dataset(
        train_source, degradation, resize=config.data.resize, crop=config.data.crop,
        global_batch=config.data.batch_size, seed=config.seed, workers=config.data.workers,
        threads=config.data.threads, **hosts)
    eval_data = data_lib.eval_dataset(
        eval_source, degradation, resize=config.data.resize, crop=config.data.crop,
        global_batch=config.data.eval_batch_size, seed=config.seed, num_examples=config.data.num_eval_examples,
        workers=config.data.workers, threads=config.data.threads, **hosts)
  train_iter = iter(train_data)

  # ================================================================ networks, optimizers, method
  spec = methods.get(config.method.name)
  frozen = networks.frozen_networks(config, spec, evaluation=True)   # R also evaluates methods that train without one
  frozen = jax.device_put(frozen, replicated)
  modules = networks.trained_modules(config, spec, frozen)
  optimizers = optim.make_optimizers(config.optim, spec.trains, steps_per_epoch, total_steps)
  schedules = {n: optim.schedule(config.optim[n], steps_per_epoch, total_steps) for n in spec.trains}
  method = methods.build(methods.Setup(config=config, modules=modules, optimizers=optimizers,
                                       input_shape=networks.input_shape(config), device_stage=device_stage,
                                       steps_per_epoch=steps_per_epoch))
  initial = jax.device_put(networks.initial_variables(config, spec, modules), replicated)
  state = jax.jit(method.init, out_shardings=replicated)(jax.random.PRNGKey(config.seed), initial)
  del initial

  # ================================================================ checkpoints: resume or start
  checkpoints = ckpt_lib.Checkpoints(workdir / "checkpoints", keep=config.keep_ckpts)
  start_step = checkpoints.latest_step() or 0
  if start_step:
    state = checkpoints.restore(start_step, ckpt_lib.abstract_like(state), train_iter)
    print(f"rajax.train: resumed from checkpoint at step {start_step}", flush=True)
  elif config.init_processor and "processor" in spec.trains:
    print(f"rajax.train: processor initialised from {config.init_processor}", flush=True)
  log = progress.Progress(workdir, total_steps=total_steps, batch_size=config.data.batch_size,
                          start_step=start_step, write=is_main)
  log.truncate_after(start_step)

  # ================================================================ compiled steps
  step_frozen = {n: frozen[n] for n in spec.frozen}
  train_step = jax.jit(method.train_step, in_shardings=(replicated, batched, replicated),
                       out_shardings=(replicated, replicated), donate_argnums=(0,))
  eval_step = jax.jit(methods.make_eval_step(method, modules, labels=config.labels, device_stage=device_stage),
                      in_shardings=(replicated, batched, replicated), out_shardings=replicated)

  # mAP needs every image's detections (the task's Evaluator, on the host); mIoU the confusion matrix
  # that each eval step sums on the devices (its "counts"), added up on the host in int64
  if detection:
    predict_step = jax.jit(methods.make_predict_step(method, modules, labels=config.labels, device_stage=device_stage),
                           in_shardings=(replicated, batched, replicated), out_shardings=replicated)
  if dense_data is not None:
    eval_recognizer = frozen.get("recognizer") or modules["recognizer"]   # its classes name the figures

  def evaluate(state) -> dict:
    sums = None
    evaluator = (tasks.detection.Evaluator.for_detector(eval_recognizer, coco=True) if detection else
                 tasks.segmentation.Evaluator.for_segmenter(eval_recognizer) if segmentation else None)
    for local in eval_data:
      batch = sharding.global_batch(local, mesh)
      out = eval_step(state, batch, frozen)
      counts = out.pop("counts", None)
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
      if segmentation:
        evaluator.add_matrix(counts["confusion"], num_images=int(jax.device_get(out["count"])))
      elif detection:
        outputs, targets = predict_step(state, batch, frozen)   # replicated: every process holds them all
        evaluator.add(outputs, targets, mask=distributed.gather_hosts(local["mask"]))
    sums = jax.device_get(sums)
    count = sums.pop("count")
    result = {k: float(v / count) for k, v in sums.items()} | {"count": int(count)}
    if detection:
      result["recall50"] = float(sums["found50"] / max(sums["num_gt"], 1.0))
    if evaluator is not None:
      result |= {k: float(v) for k, v in evaluator.result().items() if k != "num_images"}
    return result

  # ================================================================ train loop
  stop = _StopFlag()
  final_eval = {}
  with stop, jax.set_mesh(mesh):
    acc, acc_n = None, 0
    step = start_step
    if step >= total_steps:
      print(f"rajax.train: already trained to step {step}/{total_steps}", flush=True)
    t_compile = time.perf_counter()
    while step < total_steps:
      batch = sharding.global_batch(next(train_iter), mesh)
      state, metrics = train_step(state, batch, step_frozen)
      step += 1
      if step == start_step + 1:
        jax.block_until_ready(metrics)
        print(f"rajax.train: first step (compilation included) took {time.perf_counter() - t_compile:.1f}s",
              flush=True)
        log.restart_clock(step)
      acc = metrics if acc is None else jax.tree.map(jnp.add, acc, metrics)
      acc_n += 1
      if step % config.log_every == 0 or step == total_steps:
        means = {k: float(v) / acc_n for k, v in jax.device_get(acc).items()}
        rates = {("lr" if i == 0 else f"lr_{n}"): float(f(step - 1)) for i, (n, f) in enumerate(schedules.items())}
        log.log_train(step, means, **rates, epoch=step / steps_per_epoch)
        acc, acc_n = None, 0
      stopping = stop.requested
      if jax.process_count() > 1:  # all processes stop (and save) at the same step: agree at logging steps
        stopping = step % config.log_every == 0 and distributed.any_process(stop.requested)
      if step % config.ckpt_every == 0 or step == total_steps or stopping:
        checkpoints.save(step, state, train_iter)
      if (step % eval_every == 0 and step < total_steps) or (step == total_steps and config.final_eval):
        final_eval = log.log_eval(step, evaluate(state))
      if stopping:
        checkpoints.close()
        print(f"rajax.train: stopped by signal at step {step}; checkpoint saved. Rerun the same command to resume.",
              flush=True)
        sys.exit(128 + stop.signum)

  # ================================================================ final state
  checkpoints.close()
  if not final_eval and config.final_eval:
    final_eval = log.log_eval(step, evaluate(state))
  if is_main:
    for name in state.params:
      weights_lib.save(workdir / f"{name}.msgpack",
                       {"params": jax.device_get(state.params[name]),
                        "batch_stats": jax.device_get(state.batch_stats[name])})
  return final_eval


# ==================================================================== helpers

def _write_config(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  """Keeps the run's config next to its checkpoints; warns when a resumed run's config differs."""
  path = workdir / "config.json"
  new = json.loads(config.to_json_best_effort(sort_keys=True))
  if path.exists():
    old = json.loads(path.read_text())
    changed = sorted(k for k in set(_flat(old)) | set(_flat(new)) if _flat(old).get(k) != _flat(new).get(k))
    if changed:
      logging.warning("Resuming %s with a config that differs from the saved one in: %s", workdir, ", ".join(changed))
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(new, indent=2, sort_keys=True))
  os.replace(tmp, path)


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


class _StopFlag:
  """Turns SIGTERM/SIGINT into a flag the loop checks, so the run saves a checkpoint and exits."""

  def __init__(self):
    self.requested = False
    self.signum = 0
    self._old = {}

  def __enter__(self):
    for s in (signal.SIGTERM, signal.SIGINT):
      self._old[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, h in self._old.items():
      signal.signal(s, h)

  def _handle(self, signum, frame):
    if self.requested:  # a second signal: stop now
      raise KeyboardInterrupt
    self.requested, self.signum = True, signum


def cli(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m rajax.train", description=__doc__.split("\n\n")[0],
      epilog="Override any config field with --config.FIELD=VALUE, e.g. --config.optim.processor.lr=3e-4.")
  parser.add_argument("--config", required=True, help="config file, optionally with an argument: FILE.py[:ARG]")
  parser.add_argument("--workdir", required=True, help="directory for checkpoints, logs and outputs")
  args, rest = parser.parse_known_args(argv)
  overrides = config_lib.overrides_from_args(parser, rest, "optim.processor.lr=3e-4")
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
  try:
    config = config_lib.from_command_line(args.config, overrides)
  except config_lib.ConfigError as e:
    parser.exit(2, f"rajax.train: {e}\n")
  run(config, args.workdir)


if __name__ == "__main__":
  cli()
