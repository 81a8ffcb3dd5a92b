"""The offline demo: the paper's claims in miniature, with real recognizers and real photos.

    python -m rajax.demo --workdir runs/demo            # every run, the choice on validation, the test report
    python -m rajax.demo --workdir runs/demo --quick    # a few steps each: checks the machinery
    python -m rajax.demo --workdir runs/demo --tasks sr --modes plain,ra
    python -m rajax.demo --workdir runs/demo --modes plain,ra,ra_joint,recognizer_on_input   # Appendix A too
    python -m rajax.demo --workdir runs/demo --no-detection --no-segmentation   # classifiers only

Protocol. The photos (rajax.data.photos: 45 real photos from installed packages and two Debian
packages) are split by photo into train (23), validation (8) and test (14). For each task (SR x4,
denoising sigma 0.1, JPEG quality 10) the demo trains P with the plain loss, then every method from
that P (plain, RA, unsupervised RA, RA with transformer), each a `rajax.train` run of
`configs/demo.py` in `WORKDIR/<task>/<run>` (rerunning resumes), with MobileNetV2 (real ImageNet
weights) as the loss recognizer R. RA and unsupervised RA are trained at each recognition weight of
LAM_GRID; `select` evaluates those candidates on the validation photos only and keeps, per task,
the best (WORKDIR/<task>/<mode> links to it). With the detection part (the default), a P for SR is
also trained with the real COCO detector CenterNet as the loss (its weight chosen the same way, by
CenterNet's mAP on the validation photos). Then, once, on the test photos: every processor is
evaluated with R and with EfficientNet-Lite0, a recognizer never used in training, through the
evaluation suite (`rajax.evaluate` with configs/eval/photos.py), and the plain, RA and CenterNet
runs by the detectors CenterNet and NanoDet (configs/eval/photos_detection.py) and by the person
segmenters selfie and meet (configs/eval/photos_segmentation.py) on whole photos; the report
(`report.md`, `results.json`, figures; `rajax.demo.report`) says which claims held.
`--modes` takes any rajax method: the default four keep the demo's budget; the Appendix A
alternatives add their table to the report.

Labels: the photos have no ground truth, so each recognizer's label for a crop is its own top-1
class on the clean crop, and "top-1" is agreement with it (the clean images score 100% by
construction); a detector's targets are its own detections on the clean photo.
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


# The recognition weights tried per method. The demo trains one run per value (WORKDIR/<task>/<mode>_lam<v>),
# evaluates them on the validation photos and keeps, per task, the one with the best top-1 on the loss
# recognizer among those within 1 dB of plain processing's PSNR there (`select`): WORKDIR/<task>/<mode>
# becomes a link to it, and only that run is measured on the test photos. --quick tries the first only.
LAM_GRID = {"ra": (1e-4, 3e-4, 1e-3), "unsupervised": (1.0, 10.0), "ra_centernet": (3e-4, 3e-3)}
# The detection run (task transfer from detection): P trained with the real COCO detector CenterNet as
# the loss (configs/demo.py recognizer=centernet_mobilenetv3), for SR; evaluated by NanoDet and the classifiers.
DETECTION_RUN = "ra_centernet"
DETECTION_TASK = "sr"
DETECTOR = "centernet_mobilenetv3"
PSNR_BUDGET_DB = 1.0   # a candidate more than this below plain processing's validation PSNR is not chosen


def lam_tag(lam: float) -> str:
  """A recognition weight as a run-name suffix: 3e-4 -> "3e-4", 2.5e-4 -> "2p5e-4", 10.0 -> "1e1"."""
  mantissa, exponent = f"{lam:e}".split("e")
  mantissa = mantissa.rstrip("0").rstrip(".")
  return f"{mantissa}e{int(exponent)}".replace(".", "p")


def grid(mode: str, quick: bool) -> tuple[float, ...]:
  """The recognition weights the demo tries for `mode` (empty: the mode is trained at its one setting)."""
  values = LAM_GRID.get(mode, ())
  return values[:1] if quick else values


def candidates(mode: str, quick: bool) -> list[str]:
  """The runs that stand for `mode` until `select` picks one: `<mode>_lam<v>` for each weight of its grid."""
  return [f"{mode}_lam{lam_tag(v)}" for v in grid(mode, quick)]


def run_spec(run: str) -> dict:
  """What a demo run name means: {"mode", "stage", "lam" (None: the config's), "recognizer"}."""
  base, _, tag = run.partition("_lam")
  lam = float(tag.replace("p", ".")) if tag else None
  if run == "pretrain":
    return dict(mode="plain", stage="pretrain", lam=None, recognizer=LOSS_RECOGNIZER)
  if base == DETECTION_RUN:
    return dict(mode="ra", stage="finetune", lam=lam, recognizer=DETECTOR)
  return dict(mode=base, stage="finetune", lam=lam, recognizer=LOSS_RECOGNIZER)


def title(row: str) -> str:
  """How the report names a row: a view, the method a run trained, or a candidate of the weight grid."""
  from rajax import methods
  if row in VIEW_TITLES:
    return VIEW_TITLES[row]
  if row == DETECTION_RUN:
    return "RA with CenterNet (a detector) as the loss"
  spec = run_spec(row)
  name = "RA with CenterNet" if row.startswith(DETECTION_RUN) else methods.get(spec["mode"]).title
  return name + (f", lambda {spec['lam']:g}" if spec["lam"] is not None else "")


def eval_count(config) -> int:
  """The number of evaluation crops a demo config evaluates on (its data.eval_split's photos)."""
  from rajax.data import photos
  names = config.data.photos.names or photos.split_names(config.data.eval_split)
  return len(names) * len(config.data.photos.eval_scales) * 2 * config.data.photos.grid ** 2


def demo_config(task: str, mode: str, quick: bool, *, stage: str = "finetune", split: str = "test",
                lam: float | None = None, recognizer: str = LOSS_RECOGNIZER):
  """The config of one demo run, as its `run_command` trains it (for evaluation and the report)."""
  from rajax import config as config_lib
  if not CONFIG.is_file():
    raise FileNotFoundError(f"{CONFIG} not found: run the demo from a rajax source checkout (pip install -e .).")
  arg = f"task={task},mode={mode},stage={stage},quick={quick},split={split},recognizer={recognizer}"
  config = config_lib.load(f"{CONFIG}:{arg}" + (f",lam={lam!r}" if lam is not None else ""))
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


def run_command(workdir: pathlib.Path, task: str, run: str, quick: bool, train_args: Sequence[str] = (), *,
                config_args: Sequence[str] = ()) -> list[str]:
  """The `python -m rajax.train` command of one demo run of `task` ("pretrain", a method, or a
  candidate `<mode>_lam<v>` of the weight grid), with `train_args` (e.g. "--config.processor.channels=48") last."""
  from rajax import methods
  spec = run_spec(run)
  stage, mode = spec["stage"], spec["mode"]
  arg = f"task={task},mode={mode},stage={stage},quick={quick},recognizer={spec['recognizer']}"
  if spec["lam"] is not None:
    arg += f",lam={spec['lam']!r}"
  arg += "".join(f",{a}" for a in config_args)
  cmd = [sys.executable, "-m", "rajax.train", "--config", f"{CONFIG}:{arg}",
         "--workdir", str(workdir / task / run), "--config.final_eval=false"]  # the demo evaluates every run itself
  spec = methods.get(mode)
  if stage == "finetune" and "processor" in spec.trains:
    cmd.append(f"--config.init_processor={workdir / task / 'pretrain' / 'processor.msgpack'}")
  if "processor" in spec.frozen:   # trained on a fixed P: the task's plain run
    cmd.append(f"--config.method.processor_weights={workdir / task / 'plain' / 'processor.msgpack'}")
  return cmd + list(train_args)


def needs(run: str) -> tuple[str, ...]:
  """The runs of the same task that `run` starts from: the pretraining, and the plain run for a method
  that uses a fixed P."""
  from rajax import methods
  if run == "pretrain":
    return ()
  return ("pretrain", "plain") if "processor" in methods.get(run_spec(run)["mode"]).frozen else ("pretrain",)


def with_needs(modes: Sequence[str]) -> list[str]:
  """`modes` and the runs they start from (a fixed-P method's plain run), in order, without repeats."""
  return list(dict.fromkeys([*modes, *(d for m in modes for d in needs(m) if d != "pretrain")]))


def task_runs(task: str, modes: Sequence[str], quick: bool, detection: bool = False) -> list[str]:
  """The runs the demo trains for `task` (besides its pretraining): each mode, or its grid's candidates,
  and the detection run's candidates for DETECTION_TASK when `detection`."""
  out = [r for m in with_needs(modes) for r in (candidates(m, quick) or [m])]
  if detection and task == DETECTION_TASK:
    out += candidates(DETECTION_RUN, quick)
  return out


def schedule(tasks: Sequence[str], modes: Sequence[str], quick: bool = False,
             detection: bool = False) -> list[tuple[str, str]]:
  """Every run, in the order they start: each task's pretraining first, then the longest runs (the
  detection runs, then the methods that train most networks), so the last minutes do not leave a core
  idle behind one long run."""
  from rajax import methods

  def cost(run):
    spec = methods.get(run_spec(run)["mode"])
    return (run_spec(run)["recognizer"] != LOSS_RECOGNIZER, len(spec.trains) + len(spec.networks))
  per_task = {t: task_runs(t, modes, quick, detection) for t in tasks}
  names = sorted(dict.fromkeys(r for t in tasks for r in per_task[t]), key=cost, reverse=True)   # stable
  ordered = [(t, r) for r in names for t in tasks if r in per_task[t]]
  return [(t, "pretrain") for t in tasks] + ordered


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
              status_every: float = 30.0, detection: bool = False, train_args: Sequence[str] = (),
              config_args: Sequence[str] = ()) -> float:
  """Per task: the plain pretraining run, then every mode from it, each a `python -m rajax.train`
  process in its own sub-directory (`WORKDIR/<task>/pretrain`, `WORKDIR/<task>/<mode>`; each resumes
  if interrupted). Up to `jobs` runs at a time: compilation is single-threaded, so a second run
  overlaps one run's compilation with another's training. Each run's output goes to its
  `train.log`; progress (runs done, running steps, ETA) is printed here. Returns seconds."""
  runs = schedule(tasks, modes, quick, detection)
  commands = {(t, r): run_command(workdir, t, r, quick, train_args, config_args=config_args) for t, r in runs}
  return run_processes(workdir, [(f"{t}/{r}", commands[(t, r)], tuple(f"{t}/{n}" for n in needs(r)))
                                 for t, r in runs], quick=quick, jobs=jobs, status_every=status_every)


def run_processes(workdir: pathlib.Path, runs: Sequence[tuple[str, list[str], Sequence[str]]], *, quick: bool,
                  jobs: int = 2, status_every: float = 30.0, times: dict | None = None) -> float:
  """Runs `(name, command, needs)` training processes, up to `jobs` at a time, each once the runs it
  `needs` have finished, in the given order; each one's output goes to WORKDIR/<name>/train.log. A
  failed run stops the others (each saves a checkpoint) and raises with the end of its log; Ctrl-C
  likewise. Returns seconds; `times`, when given, receives each run's seconds by name."""
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
  print(f"[demo] {len(runs)} training runs, {jobs} at a time; each run's output: WORKDIR/<run>/train.log",
        flush=True)

  def ready(run):
    return all(n in done for n in run[2])

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
        name, cmd, _ = run
        log = workdir / name / "train.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "a")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        running[name] = (proc, out, log, time.perf_counter())
        print(f"[demo] start {name} ({len(done) + len(running)}/{len(runs)})", flush=True)
      time.sleep(0.2)
      for name, (proc, out, log, started) in list(running.items()):
        if proc.poll() is None:
          continue
        out.close()
        del running[name]
        if proc.returncode != 0:
          tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
          stop_all()
          raise RuntimeError(f"The demo run {name} failed (exit status {proc.returncode}); the end of "
                             f"{log}:\n{tail}\nFix the cause and rerun the demo: finished runs are kept, "
                             "interrupted ones resume.")
        done.append(name)
        if times is not None:
          times[name] = time.perf_counter() - started
        elapsed = time.perf_counter() - t0
        left = len(pending) + len(running)
        eta = elapsed / len(done) * left
        print(f"[demo] done  {name} in {fmt(time.perf_counter() - started)} | {len(done)}/{len(runs)} runs "
              f"| elapsed {fmt(elapsed)} | ETA {fmt(eta) if left else '0:00:00'}", flush=True)
      if running and time.perf_counter() - last_status >= status_every:
        last_status = time.perf_counter()
        print("[demo] running: " + "; ".join(f"{n} {_last_progress(v[2])}" for n, v in running.items())
              + f" | elapsed {fmt(last_status - t0)}", flush=True)
  except KeyboardInterrupt:
    stop_all()
    raise
  return time.perf_counter() - t0


# ==================================================================== selection on the validation photos

def _link(task_dir: pathlib.Path, name: str, target: str) -> None:
  """task_dir/name -> target (a sibling run directory), replaced atomically."""
  link = task_dir / name
  if link.exists() and not link.is_symlink():
    raise RuntimeError(f"{link} is a run directory, where the demo keeps a link to the run chosen on the validation "
                       "photos (a workdir of an older demo?): use a new --workdir.")
  tmp = task_dir / f".{name}.link"
  tmp.unlink(missing_ok=True)
  tmp.symlink_to(target)
  os.replace(tmp, link)


def choose(candidate_rows: Sequence[dict], plain_psnr: float, score: str) -> tuple[int, bool]:
  """(index, within budget) of the candidate to keep: the best `score` among those whose PSNR is within
  PSNR_BUDGET_DB of plain processing's (ties: the earlier, smaller weight); if none is, the first."""
  ok = [i for i, r in enumerate(candidate_rows) if r["psnr"] >= plain_psnr - PSNR_BUDGET_DB]
  if not ok:
    return 0, False
  return max(ok, key=lambda i: (candidate_rows[i][score], -i)), True


def select(workdir: pathlib.Path, tasks: Sequence[str], modes: Sequence[str], quick: bool,
           detection: bool = False) -> dict:
  """Per task, the weight of each gridded mode chosen on the validation photos (see LAM_GRID), with every
  candidate's validation figures; WORKDIR/<task>/<mode> is made a link to the chosen run and the whole
  choice is written to WORKDIR/selection.json. The detection run's candidates are chosen by CenterNet's
  VOC07 mAP on the whole validation photos (targets: its own detections on the clean photos)."""
  from rajax import evaluate
  from rajax.demo import detection as detection_demo
  out = {}
  for task in tasks:
    gridded = [m for m in with_needs(modes) if grid(m, quick)]
    if detection and task == DETECTION_TASK:
      gridded.append(DETECTION_RUN)
    if not gridded:
      continue
    t0 = time.perf_counter()
    runs = [c for m in gridded for c in candidates(m, quick)]
    config = eval_config(workdir, task, ["plain", *runs], quick, split="validation", targets=LOSS_RECOGNIZER)
    table = evaluate.run(config, workdir / "eval" / f"validation_{task}", only=["accuracy"])["accuracy"]
    rows = {row["view"]: {"top1": row[f"{LOSS_RECOGNIZER} top-1"], "psnr": row["PSNR"], "ssim": row["SSIM"]}
            for row in table.rows}
    if DETECTION_RUN in gridded:
      det = detection_demo.evaluate_split(workdir, task, ["plain", *candidates(DETECTION_RUN, quick)], quick,
                                          split="validation", detectors=("centernet",))
      for r in det["rows"]:
        if r["view"] in rows:
          rows[r["view"]]["centernet_map"] = r.get("centernet VOC07 mAP") or 0.0
    out[task] = {"plain": rows["plain"]}
    for mode in gridded:
      names = candidates(mode, quick)
      score = "centernet_map" if mode == DETECTION_RUN else "top1"
      k, within = choose([rows[n] for n in names], rows["plain"]["psnr"], score)
      out[task][mode] = {"chosen": names[k], "lam": grid(mode, quick)[k], "score": score, "within_budget": within,
                         "candidates": {n: dict(rows[n], lam=v) for n, v in zip(names, grid(mode, quick))}}
      _link(workdir / task, mode, names[k])
    print(f"[demo] chose on the validation photos for {task} in {time.perf_counter() - t0:.0f} s: " + ", ".join(
        f"{m} lambda {c['lam']:g}" for m, c in out[task].items() if m != "plain"), flush=True)
  path = workdir / "selection.json"
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(out, indent=2))
  os.replace(tmp, path)
  return out


# ==================================================================== evaluation on the test photos

def _eval_batch(config):
  """All evaluation crops of `config`'s task and split: degraded inputs and clean targets as numpy arrays."""
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


def eval_config(workdir: pathlib.Path, task: str, modes: Sequence[str], quick: bool, *, split: str = "test",
                targets: str = ",".join(RECOGNIZERS), extra: Sequence[str] = ()):
  """The evaluation suite's config of the demo's runs of `task` (configs/eval/photos.py); `extra` runs
  enter the accuracy and transfer tables only."""
  from rajax import config as config_lib
  return config_lib.load(f"{EVAL_CONFIG}:runs={workdir},task={task},modes={','.join(modes)},quick={quick},"
                         f"split={split},targets={targets},extra={','.join(extra)}")


def evaluate_all(workdir: pathlib.Path, tasks: Sequence[str], modes: Sequence[str], quick: bool,
                 detection: bool = False) -> tuple[dict, dict, dict, dict]:
  """(results, paired, samples, appendix), measured once on the test photos by `rajax.evaluate`
  (configs/eval/photos.py) in WORKDIR/eval/<task>: results[task][row][recognizer] = {"top1", "psnr",
  "ssim"}; paired[task][mode][recognizer] = `metrics.paired_test` of the mode's per-crop top-1 against
  plain processing's; sample crops for the figures; appendix[task] = the Appendix A table's rows. A
  gridded mode is the run `select` chose (WORKDIR/<task>/<mode>); with `detection`, DETECTION_TASK's
  table has the detection run too."""
  from rajax import evaluate

  modes = with_needs(modes)
  results, paired, samples, appendix = {}, {}, {}, {}
  for task in tasks:
    extra = [DETECTION_RUN] if detection and task == DETECTION_TASK else []
    config = eval_config(workdir, task, modes, quick, extra=extra)
    tables = evaluate.run(config, workdir / "eval" / task, only=["accuracy", "alternatives"])
    accuracy = tables["accuracy"]
    results[task] = {row["view"]: {r: {"top1": row[f"{r} top-1"], "psnr": row["PSNR"], "ssim": row["SSIM"]}
                                   for r in RECOGNIZERS} for row in accuracy.rows}
    paired[task] = {}
    for mode, tests in accuracy.extra.get("paired_vs_plain", {}).items():
      paired[task][mode] = tests
    appendix[task] = tables["alternatives"].rows
    samples[task] = _samples(workdir, task, [m for m in ("plain", "ra", *extra) if m in [*modes, *extra]], quick)
    print(f"[demo] evaluated {task} on {accuracy.rows and len(results[task])} rows: " + ", ".join(
        f"{row} {results[task][row][LOSS_RECOGNIZER]['top1']:.1%}" for row in results[task]), flush=True)
  return results, paired, samples, appendix


def _samples(workdir: pathlib.Path, task: str, modes: Sequence[str], quick: bool) -> dict:
  """A few test crops per row (input, the modes' outputs, clean) and the loss recognizer's top-1
  class on what it is fed, for the figures."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from rajax import recognizer, runs
  from rajax.methods import to_float_images
  batch, photo_names = _eval_batch(demo_config(task, "plain", quick))
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
  """One crop per test photo (the centre one of its grid), at most four."""
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
  parser.add_argument("--no-detection", dest="detection", action="store_false",
                      help="leave out the detection part (the run with CenterNet as the loss, and every evaluation by "
                           "the real COCO detectors CenterNet and NanoDet; rajax.demo.detection)")
  parser.add_argument("--no-segmentation", dest="segmentation", action="store_false",
                      help="leave out the evaluation by the real person segmenters selfie and meet "
                           "(rajax.demo.segmentation)")
  parser.add_argument("--jobs", type=int, default=2,
                      help="training runs at a time (default 2: one compiles while another trains)")
  parser.add_argument("--validation-only", action="store_true",
                      help="stop after the choice on the validation photos (selection.json, the validation table "
                           "printed): for choosing the demo's settings without looking at the test photos")
  parser.add_argument("--train-arg", action="append", default=[], metavar="--config.KEY=VALUE",
                      help="passed to every training run (repeatable), e.g. --train-arg=--config.processor.channels=48")
  parser.add_argument("--config-arg", action="append", default=[], metavar="KEY=VALUE",
                      help="an argument of configs/demo.py for every training run (repeatable), e.g. min_confidence=0.3")
  args = parser.parse_args(argv)
  if args.jobs < 1:
    parser.error(f"--jobs must be >= 1, got {args.jobs}")
  workdir = args.workdir
  modes = list(args.modes)
  if any(grid(m, args.quick) for m in modes) and "plain" not in modes:
    modes.insert(0, "plain")   # the weight is chosen within plain processing's PSNR on the validation photos
  detection = args.detection and DETECTION_TASK in args.tasks
  from rajax import assets
  try:   # before any training: the fetched photos (and the detectors' graphs) must be there
    from rajax.data import photos
    for name in (n for split in photos.SPLITS.values() for n in split if "/" in n):
      assets.path(name)
    if args.detection:
      from rajax.demo import detection as detection_demo
      detection_demo.check_assets(args.quick)
    if args.segmentation:
      from rajax.demo import segmentation as segmentation_demo
      segmentation_demo.check_assets()
  except assets.AssetError as e:
    parser.error(f"{e}\n(--no-detection and --no-segmentation leave out the detectors and the segmenters; the photos "
                 "are needed either way)")
  workdir.mkdir(parents=True, exist_ok=True)
  import jax
  # Identical programs (e.g. the plain step of every task's runs, or a resumed demo) compile once.
  jax.config.update("jax_compilation_cache_dir", str(workdir / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  t0 = time.perf_counter()
  train_args = list(args.train_arg)
  for item in args.config_arg:   # checked here, before any run starts
    key, sep, value = item.partition("=")
    if not sep or key in ("task", "mode", "stage", "quick", "lam", "recognizer", "split"):
      parser.error(f"--config-arg {item!r}: give KEY=VALUE for a configs/demo.py argument other than the ones the "
                   "demo sets itself (task, mode, stage, quick, lam, recognizer, split)")
  train_seconds = train_all(workdir, args.tasks, modes, args.quick, jobs=args.jobs, detection=detection,
                            train_args=train_args, config_args=tuple(args.config_arg))
  t1 = time.perf_counter()
  selection = select(workdir, args.tasks, modes, args.quick, detection=detection)
  t2 = time.perf_counter()
  if args.validation_only:
    from rajax.demo import report as report_lib
    print("\n".join(report_lib.selection_lines(selection)), flush=True)
    print(f"[demo] stopped after the validation photos (--validation-only) in "
          f"{datetime.timedelta(seconds=round(t2 - t0))}: {workdir / 'selection.json'}", flush=True)
    return 0
  results, paired, samples, appendix = evaluate_all(workdir, args.tasks, modes, args.quick, detection=detection)
  detection_tables = None
  if args.detection:
    from rajax.demo import detection as detection_demo
    t3 = time.perf_counter()
    detection_tables = detection_demo.evaluate_detection(
        workdir, args.tasks, [m for m in ("plain", "ra") if m in modes], args.quick)
    print(f"[demo] detection transfer evaluated in {datetime.timedelta(seconds=round(time.perf_counter() - t3))}",
          flush=True)
  segmentation_tables = None
  if args.segmentation:
    from rajax.demo import segmentation as segmentation_demo
    t4 = time.perf_counter()
    segmentation_tables = segmentation_demo.evaluate_segmentation(
        workdir, args.tasks, [m for m in ("plain", "ra") if m in modes], args.quick)
    print(f"[demo] segmentation transfer evaluated in {datetime.timedelta(seconds=round(time.perf_counter() - t4))}",
          flush=True)
  eval_seconds = time.perf_counter() - t2
  from rajax.demo import report as report_lib
  report_lib.write_results(workdir, results, paired,
                           {t: eval_count(demo_config(t, "plain", args.quick)) for t in results}, detection_tables,
                           selection, segmentation_tables)
  figures = report_lib.write_figures(workdir, results, samples)
  extra = [m for m in modes if m not in DEFAULT_MODES]
  report = report_lib.write_report(workdir, results, quick=args.quick, train_seconds=train_seconds,
                                   select_seconds=t2 - t1, eval_seconds=eval_seconds, figures=figures, paired=paired,
                                   appendix=appendix if extra else None, detection=detection_tables,
                                   selection=selection, segmentation=segmentation_tables)
  print(f"[demo] done in {datetime.timedelta(seconds=round(time.perf_counter() - t0))}: {report}", flush=True)
  from rajax.demo import segmentation as segmentation_demo
  for line in (report_lib.claims(results, paired) + report_lib.detection_claims(detection_tables, results, paired)
               + segmentation_demo.claims(segmentation_tables)):
    print(line.replace("**", ""), flush=True)
  return 0

