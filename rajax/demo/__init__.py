"""The offline demo: the paper's claims in miniature, with real ImageNet classifiers and real photos.

    python -m rajax.demo --workdir runs/demo            # 12 training runs, evaluation, report
    python -m rajax.demo --workdir runs/demo --quick    # a few steps each: checks the machinery
    python -m rajax.demo --workdir runs/demo --tasks sr --modes plain,ra
    python -m rajax.demo --workdir runs/demo --modes plain,ra,ra_joint,recognizer_on_input   # Appendix A too
    python -m rajax.demo --workdir runs/demo --detection   # + task transfer to real detectors (rajax.demo.detection)

For each task (SR x4, denoising sigma 0.1, JPEG quality 10) and each method (plain, RA,
unsupervised RA, RA with transformer) it trains a processor with `rajax.train` from
`configs/demo.py` in `WORKDIR/<task>/<mode>` (rerunning resumes), with MobileNetV2 (real ImageNet
weights) as the loss recognizer R. It then evaluates every processor on crops of held-out photos
with R and with EfficientNet-Lite0, a recognizer never used in training, through the evaluation
suite (`rajax.evaluate` with configs/eval/photos.py), and writes `report.md`, `results.json` and
figures to WORKDIR (`rajax.demo.report`). `--modes` takes any rajax method: the default four keep
the demo's budget; the Appendix A alternatives add their table to the report.

Labels: the photos have no ground truth, so each recognizer's label for a crop is its own top-1
class on the clean crop, and "top-1" is agreement with it (the clean images score 100% by
construction).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Sequence

TASKS = ("sr", "denoise", "jpeg")
DEFAULT_MODES = ("plain", "ra", "unsupervised", "transformer")
RECOGNIZERS = ("mobilenet_v2", "efficientnet_lite0")   # the loss recognizer first, then the unseen one
LOSS_RECOGNIZER = RECOGNIZERS[0]
ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
CONFIG = ROOT / "configs" / "demo.py"
EVAL_CONFIG = ROOT / "configs" / "eval" / "photos.py"
TASK_TITLES = {"sr": "super-resolution x4", "denoise": "denoising (sigma 0.1)", "jpeg": "JPEG deblocking (quality 10)"}
VIEW_TITLES = {"input": "degraded input", "clean": "clean image"}


def title(row: str) -> str:
  """How the report names a row: a view, or the method a run trained."""
  from rajax import methods
  return VIEW_TITLES.get(row) or methods.get(row).title


def heldout_count(config) -> int:
  """The number of held-out crops a demo config evaluates on."""
  from rajax.data import photos
  return len(photos.HELDOUT) * len(config.data.photos.eval_scales) * 2 * config.data.photos.grid ** 2


def demo_config(task: str, mode: str, quick: bool, *, stage: str = "finetune"):
  """The config of one demo run, as its `run_command` trains it (for evaluation and the report)."""
  from rajax import config as config_lib
  if not CONFIG.is_file():
    raise FileNotFoundError(f"{CONFIG} not found: run the demo from a rajax source checkout (pip install -e .).")
  config = config_lib.load(f"{CONFIG}:task={task},mode={mode},stage={stage},quick={quick}")
  config_lib.validate(config)
  config.lock()
  return config


# ==================================================================== training

# A quick run trains for a few steps: most of its time is XLA's CPU compiler, and LLVM's optimisation
# passes are a large part of that. Without them the quick demo's training took 1:56 instead of 2:25
# on a 2-core Xeon (Sapphire Rapids); the programs compute the same, only more slowly.
QUICK_XLA_FLAG = "--xla_backend_optimization_level=0"


def quick_xla_flags(flags: str) -> str:
  """`flags` (an XLA_FLAGS value) with QUICK_XLA_FLAG added, unless it already sets that option."""
  if QUICK_XLA_FLAG.split("=")[0] in flags:
    return flags
  return f"{flags} {QUICK_XLA_FLAG}".strip()


def run_command(workdir: pathlib.Path, task: str, run: str, quick: bool) -> list[str]:
  """The `python -m rajax.train` command of one demo run ("pretrain" or a method) of `task`."""
  from rajax import methods
  stage = "pretrain" if run == "pretrain" else "finetune"
  mode = "plain" if run == "pretrain" else run
  cmd = [sys.executable, "-m", "rajax.train", "--config", f"{CONFIG}:task={task},mode={mode},stage={stage},quick={quick}",
         "--workdir", str(workdir / task / run), "--config.final_eval=false"]  # the demo evaluates every run itself
  spec = methods.get(mode)
  if stage == "finetune" and "processor" in spec.trains:
    cmd.append(f"--config.init_processor={workdir / task / 'pretrain' / 'processor.msgpack'}")
  if "processor" in spec.frozen:   # trained on a fixed P: the task's plain run
    cmd.append(f"--config.method.processor_weights={workdir / task / 'plain' / 'processor.msgpack'}")
  return cmd


def needs(run: str) -> tuple[str, ...]:
  """The runs of the same task that `run` starts from: the pretraining, and the plain run for a method
  that uses a fixed P."""
  from rajax import methods
  if run == "pretrain":
    return ()
  return ("pretrain", "plain") if "processor" in methods.get(run).frozen else ("pretrain",)


def schedule(tasks: Sequence[str], modes: Sequence[str]) -> list[tuple[str, str]]:
  """Every run, in the order they start: each task's pretraining first, then the methods that train
  most networks (the longest runs), so the last minutes do not leave a core idle behind one long run."""
  from rajax import methods
  modes = list(dict.fromkeys([*modes, *(d for m in modes for d in needs(m) if d != "pretrain")]))
  cost = lambda m: (len(methods.get(m).trains) + len(methods.get(m).networks))
  ordered = sorted(modes, key=cost, reverse=True)
  return [(t, "pretrain") for t in tasks] + [(t, m) for m in ordered for t in tasks]


def _last_progress(log: pathlib.Path) -> str:
  """The last "[train] step ..." line of a run's log, shortened to its step and speed."""
  try:
    lines = [l for l in log.read_text(errors="replace").splitlines() if l.startswith("[train] step")]
  except OSError:
    return "starting"
  if not lines:
    return "compiling"
  parts = [p.strip() for p in lines[-1][len("[train] "):].split("|")]
  return " ".join(p for p in parts if p.startswith("step") or "img/s" in p)


def train_all(workdir: pathlib.Path, tasks: Sequence[str], modes: Sequence[str], quick: bool, *, jobs: int = 2,
              status_every: float = 30.0) -> float:
  """Per task: the plain pretraining run, then every mode from it, each a `python -m rajax.train`
  process in its own sub-directory (`WORKDIR/<task>/pretrain`, `WORKDIR/<task>/<mode>`; each resumes
  if interrupted). Up to `jobs` runs at a time: compilation is single-threaded, so a second run
  overlaps one run's compilation with another's training. Each run's output goes to its
  `train.log`; progress (runs done, running steps, ETA) is printed here. Returns seconds."""
  runs = schedule(tasks, modes)
  pending = list(runs)
  running, done = {}, []
  env = dict(os.environ)
  # Identical programs (e.g. a resumed demo's) compile once; a cache the caller chose is kept.
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(workdir / "jax_cache"))
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  if quick:
    env["XLA_FLAGS"] = quick_xla_flags(env.get("XLA_FLAGS", ""))
  t0 = last_status = time.perf_counter()
  fmt = lambda sec: str(datetime.timedelta(seconds=round(sec)))
  print(f"[demo] {len(runs)} training runs, {jobs} at a time; each run's output: WORKDIR/<task>/<run>/train.log",
        flush=True)

  def ready(run):
    task, name = run
    return all((task, n) in done for n in needs(name))

  def stop_all():
    # One SIGINT each (the runs have their own sessions, so a Ctrl-C reaches only the demo): rajax.train
    # saves a checkpoint and exits, where a second signal would stop it at once.
    for proc, *_ in running.values():
      proc.send_signal(signal.SIGINT)
    for proc, out, *_ in running.values():
      try:
        proc.wait(timeout=120)
      except subprocess.TimeoutExpired:
        proc.kill()
      out.close()

  try:
    while pending or running:
      for run in [r for r in pending if ready(r)][:max(0, jobs - len(running))]:
        pending.remove(run)
        log = workdir / run[0] / run[1] / "train.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "a")
        proc = subprocess.Popen(run_command(workdir, *run, quick), stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        running[run] = (proc, out, log, time.perf_counter())
        print(f"[demo] start {run[0]}/{run[1]} ({len(done) + len(running)}/{len(runs)})", flush=True)
      time.sleep(0.2)
      for run, (proc, out, log, started) in list(running.items()):
        if proc.poll() is None:
          continue
        out.close()
        del running[run]
        if proc.returncode != 0:
          tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
          stop_all()
          raise RuntimeError(f"The demo run {run[0]}/{run[1]} failed (exit status {proc.returncode}); the end of "
                             f"{log}:\n{tail}\nFix the cause and rerun the demo: finished runs are kept, "
                             "interrupted ones resume.")
        done.append(run)
        elapsed = time.perf_counter() - t0
        left = len(pending) + len(running)
        eta = elapsed / len(done) * left
        print(f"[demo] done  {run[0]}/{run[1]} in {fmt(time.perf_counter() - started)} | {len(done)}/{len(runs)} runs "
              f"| elapsed {fmt(elapsed)} | ETA {fmt(eta) if left else '0:00:00'}", flush=True)
      if running and time.perf_counter() - last_status >= status_every:
        last_status = time.perf_counter()
        print("[demo] running: " + "; ".join(f"{t}/{r} {_last_progress(v[2])}" for (t, r), v in running.items())
              + f" | elapsed {fmt(last_status - t0)}", flush=True)
  except KeyboardInterrupt:
    stop_all()
    raise
  return time.perf_counter() - t0


# ==================================================================== evaluation

def _heldout_batch(config):
  """All held-out crops of `config`'s task: degraded inputs and clean targets as numpy arrays."""
  import numpy as np

  from rajax import data as data_lib
  source = data_lib.make_source(config.data, config.data.eval_split)
  degradation = data_lib.Degradation(task=config.task, scale=config.degrade.scale, sigma=config.degrade.sigma,
                                     quality=config.degrade.quality)
  ds = data_lib.eval_dataset(source, degradation, resize=config.data.resize, crop=config.data.crop,
                             global_batch=config.data.eval_batch_size, seed=config.seed, threads=config.data.threads)
  batches = [b for b in ds]
  out = {k: np.concatenate([b[k] for b in batches]) for k in ("input", "target", "mask")}
  keep = out.pop("mask") > 0
  return {k: v[keep] for k, v in out.items()}, [source[i]["photo"] for i in range(len(source))]


def eval_config(workdir: pathlib.Path, task: str, modes: Sequence[str], quick: bool):
  """The evaluation suite's config of the demo's runs of `task` (configs/eval/photos.py)."""
  from rajax import config as config_lib
  return config_lib.load(f"{EVAL_CONFIG}:runs={workdir},task={task},modes={','.join(modes)},quick={quick}")


def evaluate_all(workdir: pathlib.Path, tasks: Sequence[str], modes: Sequence[str], quick: bool
                 ) -> tuple[dict, dict, dict, dict]:
  """(results, paired, samples, appendix), measured by `rajax.evaluate` (configs/eval/photos.py) in
  WORKDIR/eval/<task>: results[task][row][recognizer] = {"top1", "psnr", "ssim"}; paired[task][mode]
  [recognizer] = `metrics.paired_test` of the mode's per-crop top-1 against plain processing's;
  sample crops for the figures; appendix[task] = the Appendix A table's rows."""
  from rajax import evaluate

  modes = list(dict.fromkeys([*modes, *(d for m in modes for d in needs(m) if d != "pretrain")]))
  results, paired, samples, appendix = {}, {}, {}, {}
  for task in tasks:
    config = eval_config(workdir, task, modes, quick)
    tables = evaluate.run(config, workdir / "eval" / task, only=["accuracy", "alternatives"])
    accuracy = tables["accuracy"]
    results[task] = {row["view"]: {r: {"top1": row[f"{r} top-1"], "psnr": row["PSNR"], "ssim": row["SSIM"]}
                                   for r in RECOGNIZERS} for row in accuracy.rows}
    paired[task] = {}
    for mode, tests in accuracy.extra.get("paired_vs_plain", {}).items():
      paired[task][mode] = tests
    appendix[task] = tables["alternatives"].rows
    samples[task] = _samples(workdir, task, [m for m in ("plain", "ra") if m in modes], quick)
    print(f"[demo] evaluated {task} on {accuracy.rows and len(results[task])} rows: " + ", ".join(
        f"{row} {results[task][row][LOSS_RECOGNIZER]['top1']:.1%}" for row in results[task]), flush=True)
  return results, paired, samples, appendix


def _samples(workdir: pathlib.Path, task: str, modes: Sequence[str], quick: bool) -> dict:
  """A few held-out crops per row (input, the modes' outputs, clean) and the loss recognizer's top-1
  class on what it is fed, for the figures."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from rajax import recognizer, runs
  from rajax.methods import to_float_images
  batch, photo_names = _heldout_batch(demo_config(task, "plain", quick))
  picks = np.asarray(_sample_indices(photo_names))
  x, y = to_float_images(jnp.asarray(batch["input"][picks])), to_float_images(jnp.asarray(batch["target"][picks]))
  rec = recognizer(LOSS_RECOGNIZER)
  top1 = lambda images: np.asarray(_top1()(rec, images))
  up = x if x.shape == y.shape else jnp.clip(jax.image.resize(x, y.shape, "bicubic"), 0.0, 1.0)
  out = {"input": {"images": np.asarray(up), "pred": top1(up)}}
  for mode in modes:
    run = runs.load(workdir / task / mode)
    views = jax.jit(lambda v, f, x: run.forward(x, v, f))(run.variables, run.frozen, x)
    out[mode] = {"images": np.asarray(views["human"]), "pred": top1(views["machine"])}
  out["clean"] = {"images": np.asarray(y), "pred": top1(y)}
  return out


@functools.cache
def _top1():
  """recognizer, images -> top-1 classes, compiled once per recognizer and shape."""
  import jax
  import jax.numpy as jnp
  return jax.jit(lambda r, images: jnp.argmax(r(images), axis=-1))


def _sample_indices(photo_names: Sequence[str]) -> list[int]:
  """One crop per held-out photo (the centre one of its grid), at most four."""
  first = {}
  for i, n in enumerate(photo_names):
    first.setdefault(n, []).append(i)
  return [idx[len(idx) // 4] for idx in list(first.values())[:4]]


# ==================================================================== command line

def _names(text: str, allowed: Sequence[str], what: str) -> list[str]:
  names = [n.strip() for n in text.split(",") if n.strip()]
  bad = [n for n in names if n not in allowed]
  if bad or not names:
    raise argparse.ArgumentTypeError(f"unknown {what} {bad or text!r}; choose from {', '.join(allowed)}")
  return names


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m rajax.demo", description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, type=pathlib.Path, help="directory for the runs and the report")
  parser.add_argument("--quick", action="store_true", help="a few steps per run (checks the machinery only)")
  parser.add_argument("--tasks", default=",".join(TASKS), type=lambda s: _names(s, TASKS, "task"),
                      help=f"comma-separated subset of {','.join(TASKS)}")
  from rajax import methods
  parser.add_argument("--modes", default=",".join(DEFAULT_MODES), type=lambda s: _names(s, methods.names(), "mode"),
                      help=f"comma-separated methods (default {','.join(DEFAULT_MODES)}; any of {','.join(methods.names())})")
  parser.add_argument("--detection", action="store_true",
                      help="also evaluate every run with two real COCO detectors (CenterNet, NanoDet) on whole photos: "
                           "task transfer, rajax.demo.detection (needs `python -m rajax.assets fetch`)")
  parser.add_argument("--jobs", type=int, default=2,
                      help="training runs at a time (default 2: one compiles while another trains)")
  args = parser.parse_args(argv)
  if args.jobs < 1:
    parser.error(f"--jobs must be >= 1, got {args.jobs}")
  workdir = args.workdir
  if args.detection:   # before hours of training: the detectors' graphs and the photos must be there
    from rajax import assets
    from rajax.demo import detection as detection_demo
    try:
      detection_demo.check_assets(args.quick)
    except assets.AssetError as e:
      parser.error(str(e))
  workdir.mkdir(parents=True, exist_ok=True)
  import jax
  # Identical programs (e.g. the plain step of every task's runs, or a resumed demo) compile once.
  jax.config.update("jax_compilation_cache_dir", str(workdir / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  t0 = time.perf_counter()
  train_seconds = train_all(workdir, args.tasks, args.modes, args.quick, jobs=args.jobs)
  t1 = time.perf_counter()
  results, paired, samples, appendix = evaluate_all(workdir, args.tasks, args.modes, args.quick)
  detection = None
  if args.detection:
    t2 = time.perf_counter()
    detection = detection_demo.evaluate_detection(workdir, args.tasks, list(dict.fromkeys(
        [*args.modes, *(d for m in args.modes for d in needs(m) if d != "pretrain")])), args.quick)
    print(f"[demo] detection transfer evaluated in {datetime.timedelta(seconds=round(time.perf_counter() - t2))}",
          flush=True)
  eval_seconds = time.perf_counter() - t1
  from rajax.demo import report as report_lib
  report_lib.write_results(workdir, results, paired,
                           {t: heldout_count(demo_config(t, "plain", args.quick)) for t in results}, detection)
  figures = report_lib.write_figures(workdir, results, samples)
  extra = [m for m in args.modes if m not in DEFAULT_MODES]
  report = report_lib.write_report(workdir, results, quick=args.quick, train_seconds=train_seconds,
                                   eval_seconds=eval_seconds, figures=figures, paired=paired,
                                   appendix=appendix if extra else None, detection=detection)
  print(f"[demo] done in {datetime.timedelta(seconds=round(time.perf_counter() - t0))}: {report}", flush=True)
  for line in report_lib.claims(results, paired):
    print(line.replace("**", ""), flush=True)
  return 0

