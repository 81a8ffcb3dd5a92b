"""The offline demo: the paper's claims in miniature, with real ImageNet classifiers and real photos.

    python -m rajax.demo --workdir runs/demo            # 12 training runs, evaluation, report
    python -m rajax.demo --workdir runs/demo --quick    # a few steps each: checks the machinery
    python -m rajax.demo --workdir runs/demo --tasks sr --modes plain,ra

For each task (SR x4, denoising sigma 0.1, JPEG quality 10) and each method (plain, RA,
unsupervised RA, RA with transformer) it trains a processor with `rajax.train` from
`configs/demo.py` in `WORKDIR/<task>/<mode>` (rerunning resumes), with MobileNetV2 (real ImageNet
weights) as the loss recognizer R. It then evaluates every processor on crops of held-out photos
with R and with EfficientNet-Lite0, a recognizer never used in training, and writes
`report.md`, `results.json` and figures to WORKDIR.

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
MODES = ("plain", "ra", "unsupervised", "transformer")
RECOGNIZERS = ("mobilenet_v2", "efficientnet_lite0")   # the loss recognizer first, then the unseen one
LOSS_RECOGNIZER = RECOGNIZERS[0]
RUN_ORDER = ("pretrain", "transformer", "unsupervised", "ra", "plain")   # by cost, most expensive first
CONFIG = pathlib.Path(__file__).resolve().parent.parent / "configs" / "demo.py"
TASK_TITLES = {"sr": "super-resolution x4", "denoise": "denoising (sigma 0.1)", "jpeg": "JPEG deblocking (quality 10)"}
MODE_TITLES = {"input": "degraded input", "plain": "plain", "ra": "RA", "unsupervised": "unsupervised RA",
               "transformer": "RA with transformer", "clean": "clean image"}


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
  """The `python -m rajax.train` command of one demo run ("pretrain" or a mode) of `task`."""
  stage = "pretrain" if run == "pretrain" else "finetune"
  mode = "plain" if run == "pretrain" else run
  cmd = [sys.executable, "-m", "rajax.train", "--config", f"{CONFIG}:task={task},mode={mode},stage={stage},quick={quick}",
         "--workdir", str(workdir / task / run), "--config.final_eval=false"]  # the demo evaluates every run itself
  if stage == "finetune":
    cmd.append(f"--config.init_processor={workdir / task / 'pretrain' / 'processor.msgpack'}")
  return cmd


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
  runs = [(t, r) for t in tasks for r in ("pretrain", *modes)]
  # Every pretraining first (the other runs wait for them), then the longest runs first, so the
  # last minutes do not leave a core idle behind one long run.
  pending = sorted(runs, key=lambda run: RUN_ORDER.index(run[1]))
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
    return name == "pretrain" or (task, "pretrain") in done

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


def evaluate_all(workdir: pathlib.Path, tasks: Sequence[str], modes: Sequence[str], quick: bool
                 ) -> tuple[dict, dict, dict]:
  """(results, paired, samples): results[task][row][recognizer] = {"top1", "psnr", "ssim"};
  paired[task][mode][recognizer] = `metrics.paired_test` of the mode's per-crop top-1 against
  plain processing's (crops gained, lost, p); sample crops for the figures."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from rajax import metrics, recognizer, train, weights
  from rajax.methods import to_float_images

  recs = {name: recognizer(name) for name in RECOGNIZERS}
  predict = jax.jit(_per_crop(lambda r, x: jnp.argmax(r(x), axis=-1), 1))
  quality = jax.jit(_per_crop(lambda out, y: (metrics.psnr(out, y), metrics.ssim(out, y)), 0))
  results, paired, samples = {}, {}, {}
  for task in tasks:
    config = demo_config(task, "plain", quick)
    batch, photo_names = _heldout_batch(config)
    x, y = to_float_images(jnp.asarray(batch["input"])), to_float_images(jnp.asarray(batch["target"]))
    clean_labels = {n: np.asarray(predict(r, y)) for n, r in recs.items()}
    shown = {"input": x if task != "sr" else jax.image.resize(x, y.shape, "bicubic").clip(0, 1)}
    seen = dict(shown)
    for mode in modes:
      mconf = demo_config(task, mode, quick)
      _, nets = train.build_networks(mconf)
      run_dir = workdir / task / mode
      out = None
      for name, net in nets.items():
        file = run_dir / f"{name}.msgpack"
        if not file.is_file():
          raise FileNotFoundError(f"{file} is missing: the {task}/{mode} run has not finished. Rerun the demo to resume it.")
        template = jax.eval_shape(lambda: net.init(jax.random.key(0), x[:1] if name == "processor" else y[:1]))
        variables = weights.load(file, template, what=f"{task}/{mode} {name}")
        apply = functools.partial(_eval_apply(), net)
        if name == "processor":
          out = jnp.clip(apply(variables, x), 0.0, 1.0)
          shown[mode] = seen[mode] = out
        else:  # the transformer T sits between P and the recognizers
          seen[mode] = jnp.clip(apply(variables, out), 0.0, 1.0)
    seen["clean"] = shown["clean"] = y
    table, preds = {}, {}
    for row, images in seen.items():
      psnr, ssim = quality(shown[row], y)
      table[row], preds[row] = {}, {}
      for rname, r in recs.items():
        preds[row][rname] = clean_labels[rname] if row == "clean" else np.asarray(predict(r, images))
        table[row][rname] = {"top1": float(np.mean(preds[row][rname] == clean_labels[rname])),
                             "psnr": float(jnp.mean(psnr)), "ssim": float(jnp.mean(ssim))}
    results[task] = table
    if "plain" in preds:
      paired[task] = {mode: {rname: metrics.paired_test(preds["plain"][rname] == clean_labels[rname],
                                                        preds[mode][rname] == clean_labels[rname])
                             for rname in recs} for mode in modes if mode != "plain"}
    picks = np.asarray(_sample_indices(photo_names))
    samples[task] = {row: {"images": np.asarray(shown[row][picks]), "pred": preds[row][LOSS_RECOGNIZER][picks]}
                     for row in shown}
    print(f"[demo] evaluated {task} on {len(y)} held-out crops: " + ", ".join(
        f"{row} {table[row][LOSS_RECOGNIZER]['top1']:.1%}" for row in table), flush=True)
  return results, paired, samples


EVAL_CHUNK = 40   # crops per step of the demo's evaluation: a whole set of 480 at once is slower on a CPU


def _per_crop(fn, n_lead: int):
  """`fn(*lead, *arrays)` over a whole set of crops, EVAL_CHUNK at a time (`jax.lax.map`): the first
  `n_lead` arguments (a recognizer, variables) are passed whole, the arrays [N, ...] after them are
  split along N. `fn` takes batches."""
  import jax

  def run(*args):
    lead, arrays = args[:n_lead], args[n_lead:]
    one = lambda xs: jax.tree.map(lambda o: o[0], fn(*lead, *(a[None] for a in xs)))
    return jax.lax.map(one, tuple(arrays), batch_size=EVAL_CHUNK)
  return run


@functools.cache
def _eval_apply():
  """net, variables, images -> inference output, compiled once per architecture and shape (not per run)."""
  import jax
  return jax.jit(lambda net, variables, images: _per_crop(lambda v, x: net.apply(v, x, train=False), 1)(
      variables, images), static_argnums=0)


def _sample_indices(photo_names: Sequence[str]) -> list[int]:
  """One crop per held-out photo (the centre one of its grid), at most four."""
  first = {}
  for i, n in enumerate(photo_names):
    first.setdefault(n, []).append(i)
  return [idx[len(idx) // 4] for idx in list(first.values())[:4]]


# ==================================================================== outputs

def _fmt_pct(v: float) -> str:
  return f"{100 * v:.1f}"


def write_results(workdir: pathlib.Path, results: dict, paired: dict | None = None,
                  crops: dict | None = None) -> pathlib.Path:
  path = workdir / "results.json"
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps({"results": results, "paired_vs_plain": paired or {}, "heldout_crops": crops or {},
                             "recognizers": {"loss": LOSS_RECOGNIZER, "unseen": list(RECOGNIZERS[1:])}}, indent=2))
  os.replace(tmp, path)
  return path


SIGNIFICANCE = 0.05   # the p-value below which the report calls a paired difference significant


def _paired_text(test: dict | None) -> str:
  if not test:
    return ""
  verdict = "significant" if test["p"] < SIGNIFICANCE else "within chance"
  return f"; {test['gained']} crops gained, {test['lost']} lost, McNemar p = {test['p']:.2g}, {verdict}"


def claims(results: dict, paired: dict | None = None) -> list[str]:
  """Plain statements of which of the paper's claims held in this run.

  The claim (RA's top-1 on the loss recognizer beats plain processing's, with PSNR within 1 dB)
  holds when RA is ahead and, given `paired` (from evaluate_all), McNemar's test puts the crop-by-crop
  split below SIGNIFICANCE; RA ahead by no more than chance is "not shown". Without `paired`, being
  ahead is enough.
  """
  lines = []
  paired = paired or {}
  for task, table in results.items():
    if "plain" not in table or "ra" not in table:
      continue
    p, r = table["plain"], table["ra"]
    tests = paired.get(task, {}).get("ra", {})
    gain = r[LOSS_RECOGNIZER]["top1"] - p[LOSS_RECOGNIZER]["top1"]
    dpsnr = r[LOSS_RECOGNIZER]["psnr"] - p[LOSS_RECOGNIZER]["psnr"]
    test = tests.get(LOSS_RECOGNIZER)
    if gain <= 0 or dpsnr <= -1.0:
      verdict = "does not hold"
    elif test and test["p"] >= SIGNIFICANCE:
      verdict = "is not shown (RA is ahead by no more than chance)"
    else:
      verdict = "holds"
    lines.append(
        f"- **{TASK_TITLES[task]}**: RA {'beats' if gain > 0 else 'does not beat'} plain processing on "
        f"{LOSS_RECOGNIZER} ({_fmt_pct(r[LOSS_RECOGNIZER]['top1'])}% vs {_fmt_pct(p[LOSS_RECOGNIZER]['top1'])}%, "
        f"{gain * 100:+.1f} points{_paired_text(test)}) with PSNR {dpsnr:+.2f} dB "
        f"relative to plain: the claim {verdict} here.")
    for unseen in RECOGNIZERS[1:]:
      g = r[unseen]["top1"] - p[unseen]["top1"]
      lines.append(
          f"  Transfer to {unseen} (never used in training): {_fmt_pct(r[unseen]['top1'])}% vs "
          f"{_fmt_pct(p[unseen]['top1'])}% ({g * 100:+.1f} points{_paired_text(tests.get(unseen))}): the gain "
          f"{'carries over' if g > 0 else 'does not carry over'} in this run.")
  if paired:
    lines.append("")
    lines.append("The held-out crops of one photo overlap and share its content, so they are not independent "
                 "examples: the p-values treat them as if they were, and are optimistic.")
  return lines


def write_report(workdir: pathlib.Path, results: dict, *, quick: bool, train_seconds: float,
                 eval_seconds: float, figures: Sequence[str], paired: dict | None = None) -> pathlib.Path:
  import jax

  config = demo_config("sr", "ra", quick)
  pre = demo_config("sr", "plain", quick, stage="pretrain")
  lines = ["# rajax demo: recognition-aware processing on real photos", ""]
  lines += [f"Generated {datetime.datetime.now().isoformat(timespec='seconds')} by `python -m rajax.demo "
            f"--workdir {workdir}{' --quick' if quick else ''}` on {jax.device_count()} "
            f"{jax.devices()[0].platform} device(s), {os.cpu_count()} CPU cores.", ""]
  if quick:
    lines += ["**Quick mode**: a few training steps per run, to check the machinery. The numbers below say "
              "nothing about the methods.", ""]
  lines += ["## Settings", "",
            f"- Processor P: SRResNet, {config.processor.blocks} residual blocks, "
            + ", ".join(f"{demo_config(t, 'plain', quick).processor.channels} channels for {t}" for t in TASKS)
            + f", {config.processor.outer_kernel}x{config.processor.outer_kernel} head and tail (transformer T: "
            f"ResNet generator, {config.transformer.blocks} blocks, {config.transformer.channels} channels); Adam, "
            f"batch {config.data.batch_size}, learning rate decayed x{config.optim.decay_factor:g} at "
            f"{tuple(config.optim.decay_epochs)} of each run.",
            f"- Runs: each task first trains P with the plain loss ({_steps(pre)} steps, lr {pre.optim.lr:g}, "
            f"{pre.data.crop}x{pre.data.crop} crops); every method, plain included, then continues from that P for "
            f"{_steps(config)} steps at lr {config.optim.lr:g} on {config.data.crop}x{config.data.crop} crops.",
            f"- Loss recognizer R: {LOSS_RECOGNIZER} with its real ImageNet weights; unseen recognizer: "
            f"{', '.join(RECOGNIZERS[1:])} (real ImageNet weights, never used in training).",
            f"- Loss weights for {' / '.join(TASKS)}: RA {_lams('ra', quick)} (the paper's: 1e-3), unsupervised RA "
            f"{_lams('unsupervised', quick)} ({_distance(quick)}), RA with transformer {_lams('transformer', quick)}; "
            "see configs/demo.py.",
            f"- Data: photos shipped in scikit-image, scikit-learn and matplotlib, split by photo. Training: random "
            f"{config.data.crop}x{config.data.crop} crops (with flips) of {len(_photos().TRAIN)} photos resized to "
            f"short sides {_sides(config, 'scales')}. Evaluation: {len(_photos().HELDOUT)} held-out photos "
            f"({', '.join(_photos().HELDOUT)}) resized to short sides {_sides(config, 'eval_scales')}, a "
            f"{config.data.photos.grid}x{config.data.photos.grid} grid of crops of each and their mirror images "
            f"({_heldout_count(config)} crops).",
            *_confidence_line(quick),
            "- Labels: no ground truth exists for these photos, so each recognizer's label for a crop is its own "
            "top-1 class on the clean crop; top-1 below is agreement with it (100% for clean images by "
            "construction). PSNR and SSIM (11x11 Gaussian window, sigma 1.5) compare P's output with the clean crop.",
            "- Degradations: bicubic x4 downscaling (Pillow, antialiased), clip(y + 0.1 N(0, 1)), Pillow JPEG "
            "quality 10 with 4:2:0 chroma. The degraded-input row shows SR inputs upscaled bicubically.",
            f"- Wall time: training {datetime.timedelta(seconds=round(train_seconds))}, evaluation "
            f"{datetime.timedelta(seconds=round(eval_seconds))}.", ""]
  paired = paired or {}
  lines += ["## Accuracy and quality per method (in the form of the paper's Table 1)", "",
            f"Top-1 agreement on {LOSS_RECOGNIZER} (the loss recognizer), PSNR (dB) and SSIM of P's output. "
            "\"vs plain\": held-out crops the method gets right and plain processing wrong (+), the reverse (-), and "
            "McNemar's exact p-value: the chance of a split at least this lopsided if the two were equally good.", ""]
  for task, table in results.items():
    lines += [f"**{TASK_TITLES[task]}**", "", "| processing | top-1 (%) | vs plain | PSNR | SSIM |",
              "|---|---:|---:|---:|---:|"]
    for row, recs in table.items():
      m = recs[LOSS_RECOGNIZER]
      lines.append(f"| {MODE_TITLES[row]} | {_fmt_pct(m['top1'])} | "
                   f"{_paired_cell(paired.get(task, {}).get(row, {}).get(LOSS_RECOGNIZER))} | "
                   f"{m['psnr']:.2f} | {m['ssim']:.4f} |")
    lines.append("")
  lines += ["## Transfer to a recognizer never used in training (the paper's Table 2)", "",
            f"Rows: processors trained with R = {LOSS_RECOGNIZER}. Columns: top-1 agreement (%) on each recognizer; "
            "in brackets, crops gained and lost against plain processing and McNemar's p.", ""]
  for task, table in results.items():
    lines += [f"**{TASK_TITLES[task]}**", "", "| processing | " + " | ".join(RECOGNIZERS) + " |",
              "|---|" + "---:|" * len(RECOGNIZERS)]
    for row, recs in table.items():
      tests = paired.get(task, {}).get(row, {})
      lines.append(f"| {MODE_TITLES[row]} | " + " | ".join(
          _fmt_pct(recs[r]["top1"]) + (f" ({_paired_cell(tests[r])})" if r in tests else "") for r in RECOGNIZERS) + " |")
    lines.append("")
  lines += ["## Which claims held", ""] + claims(results, paired) + [""]
  lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
  path = workdir / "report.md"
  tmp = path.with_suffix(".md.tmp")
  tmp.write_text("\n".join(lines))
  os.replace(tmp, path)
  return path


def _paired_cell(test: dict | None) -> str:
  from rajax import metrics
  return metrics.paired_summary(test) if test else ""


def _steps(config) -> int:
  n = len(_photos().TRAIN) * len(config.data.photos.scales) * config.data.photos.repeats // config.data.batch_size
  return config.total_steps if config.total_steps > 0 else int(n * config.num_epochs)


def _lams(mode: str, quick: bool) -> str:
  return " / ".join(f"{demo_config(t, mode, quick).lam:g}" for t in TASKS)


def _distance(quick: bool) -> str:
  d = demo_config("sr", "unsupervised", quick).unsupervised_distance
  return {"prob_mse": "MSE of softmax probabilities", "kl": "KL divergence of the softmax probabilities"}.get(d, d)


def _confidence_line(quick: bool) -> list[str]:
  threshold = demo_config("sr", "ra", quick).min_confidence
  if threshold <= 0:
    return []
  return [f"- Recognition loss: only on crops that {LOSS_RECOGNIZER} itself recognises with a top-1 probability of "
          f"at least {threshold:g} on the clean crop."]


def _sides(config, field: str) -> str:
  return ", ".join(str(round(config.data.photos.short_side * s)) for s in config.data.photos[field])


def _heldout_count(config) -> int:
  return len(_photos().HELDOUT) * len(config.data.photos.eval_scales) * 2 * config.data.photos.grid ** 2


def _photos():
  from rajax.data import photos
  return photos


def write_figures(workdir: pathlib.Path, results: dict, samples: dict) -> list[str]:
  """samples_<task>.png (input / plain / RA / target with R's predicted class) and top1.png."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  from rajax.data import class_name
  files = []
  for task, rows in samples.items():
    cols = [c for c in ("input", "plain", "ra", "clean") if c in rows]
    n = len(rows[cols[0]]["images"])
    fig, axes = plt.subplots(n, len(cols), figsize=(2.6 * len(cols), 2.9 * n), squeeze=False)
    for j, col in enumerate(cols):
      for i in range(n):
        ax = axes[i][j]
        ax.imshow(np.clip(rows[col]["images"][i], 0, 1), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(class_name(int(rows[col]["pred"][i]))[:24], fontsize=8)
        if i == 0:
          ax.set_title(MODE_TITLES[col], fontsize=10)
    fig.suptitle(f"{TASK_TITLES[task]}: {LOSS_RECOGNIZER}'s top-1 class under each image", fontsize=10)
    fig.tight_layout()
    name = f"samples_{task}.png"
    fig.savefig(workdir / name, dpi=80)
    plt.close(fig)
    files.append(name)
  fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 3.6), squeeze=False)
  for ax, (task, table) in zip(axes[0], results.items()):
    rows = [r for r in table if r != "clean"]
    xs = np.arange(len(rows))
    for k, rname in enumerate(RECOGNIZERS):
      ax.bar(xs + (k - 0.5) * 0.38, [100 * table[r][rname]["top1"] for r in rows], width=0.38,
             label=rname + (" (loss)" if rname == LOSS_RECOGNIZER else " (unseen)"))
    ax.set_xticks(xs)
    ax.set_xticklabels([MODE_TITLES[r].replace(" with ", "\n+") for r in rows], fontsize=7)
    ax.set_ylabel("top-1 agreement (%)")
    ax.set_title(TASK_TITLES[task], fontsize=10)
    ax.set_ylim(0, 100)
  axes[0][0].legend(fontsize=7, loc="upper left")
  fig.tight_layout()
  fig.savefig(workdir / "top1.png", dpi=90)
  plt.close(fig)
  return files + ["top1.png"]


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
  parser.add_argument("--modes", default=",".join(MODES), type=lambda s: _names(s, MODES, "mode"),
                      help=f"comma-separated subset of {','.join(MODES)}")
  parser.add_argument("--jobs", type=int, default=2,
                      help="training runs at a time (default 2: one compiles while another trains)")
  args = parser.parse_args(argv)
  if args.jobs < 1:
    parser.error(f"--jobs must be >= 1, got {args.jobs}")
  workdir = args.workdir
  workdir.mkdir(parents=True, exist_ok=True)
  import jax
  # Identical programs (e.g. the plain step of every task's runs, or a resumed demo) compile once.
  jax.config.update("jax_compilation_cache_dir", str(workdir / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  t0 = time.perf_counter()
  train_seconds = train_all(workdir, args.tasks, args.modes, args.quick, jobs=args.jobs)
  t1 = time.perf_counter()
  results, paired, samples = evaluate_all(workdir, args.tasks, args.modes, args.quick)
  eval_seconds = time.perf_counter() - t1
  write_results(workdir, results, paired, {t: _heldout_count(demo_config(t, "plain", args.quick)) for t in results})
  figures = write_figures(workdir, results, samples)
  report = write_report(workdir, results, quick=args.quick, train_seconds=train_seconds,
                        eval_seconds=eval_seconds, figures=figures, paired=paired)
  print(f"[demo] done in {datetime.timedelta(seconds=round(time.perf_counter() - t0))}: {report}", flush=True)
  for line in claims(results, paired):
    print(line.replace("**", ""), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
