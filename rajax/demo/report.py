"""The demo's outputs: results.json, the report (tables in the form of the paper's, the settings, which
claims held) and its figures, from the numbers `rajax.demo.evaluate_all` measured with `rajax.evaluate`.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
from typing import Sequence

from rajax.demo import (DETECTION_RUN, LOSS_RECOGNIZER, PSNR_BUDGET_DB, RECOGNIZERS, TASK_TITLES, TASKS,
                        demo_config, eval_count, title)


def _fmt_pct(v: float) -> str:
  return f"{100 * v:.1f}"


def write_results(workdir: pathlib.Path, results: dict, paired: dict | None = None,
                  crops: dict | None = None, detection: dict | None = None,
                  selection: dict | None = None, segmentation: dict | None = None) -> pathlib.Path:
  path = workdir / "results.json"
  tmp = path.with_suffix(".json.tmp")
  saved = {"results": results, "paired_vs_plain": paired or {}, "test_crops": crops or {},
           "recognizers": {"loss": LOSS_RECOGNIZER, "unseen": list(RECOGNIZERS[1:])},
           "selection": selection or {}}
  if detection:   # the detection part: {task: rows, notes, paired tests} (rajax.demo.detection)
    saved["detection"] = detection
  if segmentation:   # the person segmenters (rajax.demo.segmentation)
    saved["segmentation"] = segmentation
  tmp.write_text(json.dumps(saved, indent=2))
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
  ahead is enough. Transfer to the unseen recognizers follows the same rule.
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
          f"{_fmt_pct(p[unseen]['top1'])}% ({g * 100:+.1f} points{_paired_text(tests.get(unseen))}): "
          f"{_transfer_verdict(g, tests.get(unseen))} in this run.")
  if paired:
    lines.append("")
    lines.append("The test crops of one photo overlap and share its content, so they are not independent "
                 "examples: the p-values treat them as if they were, and are optimistic.")
  return lines


def detection_claims(detection: dict | None, results: dict, paired: dict | None = None) -> list[str]:
  """Task transfer: RA (trained with the classifier) on the detectors, and the detection run (trained
  with CenterNet) on NanoDet and on the classifiers, each against plain processing."""
  lines = []
  if detection:
    from rajax.demo import detection as detection_demo
    lines += detection_demo.claims(detection)
  for task, table in results.items():
    if DETECTION_RUN not in table or "plain" not in table:
      continue
    tests = (paired or {}).get(task, {}).get(DETECTION_RUN, {})
    parts = []
    for rec in RECOGNIZERS:
      g = table[DETECTION_RUN][rec]["top1"] - table["plain"][rec]["top1"]
      parts.append(f"{rec} {_fmt_pct(table[DETECTION_RUN][rec]['top1'])}% vs {_fmt_pct(table['plain'][rec]['top1'])}% "
                   f"({g * 100:+.1f} points{_paired_text(tests.get(rec))}: {_transfer_verdict(g, tests.get(rec))})")
    lines.append(f"- **{TASK_TITLES[task]}**, P trained with CenterNet (a detector) as the loss, on the classifiers "
                 "(detection to classification, the paper's Table 12): " + "; ".join(parts) + ".")
  return lines


def _transfer_verdict(gain: float, test: dict | None) -> str:
  """What a transfer result shows: a gain carries over only when it is ahead beyond chance."""
  if gain <= 0:
    return "the gain does not carry over"
  if test and test["p"] >= SIGNIFICANCE:
    return "RA is ahead by no more than chance, so a carried-over gain is not shown"
  return "the gain carries over"


def write_report(workdir: pathlib.Path, results: dict, *, quick: bool, train_seconds: float,
                 eval_seconds: float, figures: Sequence[str], paired: dict | None = None,
                 appendix: dict | None = None, detection: dict | None = None, selection: dict | None = None,
                 select_seconds: float = 0.0, segmentation: dict | None = None) -> pathlib.Path:
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
            f"batch {config.data.batch_size}, learning rate decayed x{config.optim.processor.decay_factor:g} at "
            f"{tuple(config.optim.processor.decay_epochs)} of each run.",
            f"- Runs: each task first trains P with the plain loss ({_steps(pre)} steps, lr {pre.optim.processor.lr:g}, "
            f"{pre.data.crop}x{pre.data.crop} crops); every method, plain included, then continues from that P for "
            f"{_steps(config)} steps at lr {config.optim.processor.lr:g} on {config.data.crop}x{config.data.crop} crops.",
            f"- Loss recognizer R: {LOSS_RECOGNIZER} with its real ImageNet weights; unseen recognizer: "
            f"{', '.join(RECOGNIZERS[1:])} (real ImageNet weights, never used in training).",
            f"- Loss weights: RA and unsupervised RA ({_distance(quick)}) are trained at each weight of their grid "
            f"and the weight is chosen on the validation photos (below); RA with transformer "
            f"{_lams('transformer', quick)} (T learns from the recognition loss alone); see configs/demo.py and "
            "rajax.demo.LAM_GRID.",
            f"- Data: {_photo_count()} real photos (scikit-image, scikit-learn, matplotlib, and the Debian packages "
            "darknet and opencv-doc), split by photo. Training: random "
            f"{config.data.crop}x{config.data.crop} crops (with flips) of {len(_photos().TRAIN)} photos resized to "
            f"short sides {_sides(config, 'scales')}. Validation (choosing the weights): {len(_photos().VALIDATION)} "
            f"photos; test (every figure below, measured once): {len(_photos().TEST)} photos "
            f"({', '.join(n.rsplit('/', 1)[-1].rsplit('.', 1)[0] for n in _photos().TEST)}), each resized to short sides "
            f"{_sides(config, 'eval_scales')}, a {config.data.photos.grid}x{config.data.photos.grid} grid of crops "
            f"and their mirror images ({eval_count(config)} test crops, "
            f"{eval_count(demo_config('sr', 'ra', quick, split='validation'))} validation crops).",
            *_confidence_line(quick),
            "- Labels: no ground truth exists for these photos, so each recognizer's label for a crop is its own "
            "top-1 class on the clean crop; top-1 below is agreement with it (100% for clean images by "
            "construction). PSNR and SSIM (11x11 Gaussian window, sigma 1.5) compare P's output with the clean crop.",
            "- Degradations: bicubic x4 downscaling (Pillow, antialiased), clip(y + 0.1 N(0, 1)), Pillow JPEG "
            "quality 10 with 4:2:0 chroma. The degraded-input row shows SR inputs upscaled bicubically.",
            f"- Wall time: training {datetime.timedelta(seconds=round(train_seconds))}, choice on the validation "
            f"photos {datetime.timedelta(seconds=round(select_seconds))}, evaluation on the test photos "
            f"{datetime.timedelta(seconds=round(eval_seconds))}.", ""]
  if selection:
    lines += selection_lines(selection)
  paired = paired or {}
  lines += ["## Accuracy and quality per method (in the form of the paper's Table 1)", "",
            f"Top-1 agreement on {LOSS_RECOGNIZER} (the loss recognizer), PSNR (dB) and SSIM of P's output. "
            "\"vs plain\": test crops the method gets right and plain processing wrong (+), the reverse (-), and "
            "McNemar's exact p-value: the chance of a split at least this lopsided if the two were equally good.", ""]
  for task, table in results.items():
    lines += [f"**{TASK_TITLES[task]}**", "", "| processing | top-1 (%) | vs plain | PSNR | SSIM |",
              "|---|---:|---:|---:|---:|"]
    for row, recs in table.items():
      m = recs[LOSS_RECOGNIZER]
      lines.append(f"| {title(row)} | {_fmt_pct(m['top1'])} | "
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
      lines.append(f"| {title(row)} | " + " | ".join(
          _fmt_pct(recs[r]["top1"]) + (f" ({_paired_cell(tests[r])})" if r in tests else "") for r in RECOGNIZERS) + " |")
    lines.append("")
  if appendix:
    lines += _appendix_lines(appendix)
  if detection:   # rajax.demo --detection: the runs evaluated by real detectors (rajax.demo.detection)
    from rajax.demo import detection as detection_demo
    lines += detection_demo.report_lines(detection)
  if segmentation:   # the runs evaluated by real person segmenters (rajax.demo.segmentation)
    from rajax.demo import segmentation as segmentation_demo
    lines += segmentation_demo.report_lines(segmentation)
  lines += ["## Which claims held", ""] + claims(results, paired) + [""]
  more = detection_claims(None, results, paired)
  if more:
    lines += more + [""]
  lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
  path = workdir / "report.md"
  tmp = path.with_suffix(".md.tmp")
  tmp.write_text("\n".join(lines))
  os.replace(tmp, path)
  return path


def _appendix_lines(appendix: dict) -> list[str]:
  """The Appendix A table per task: each method with its own recognizer (trained or the fixed one)."""
  lines = ["## Alternatives to a fixed recognition loss (the paper's Appendix A)", "",
           f"\"own R\": the recognizer a method trained, or {LOSS_RECOGNIZER} where it is fixed. A trained R's top-1 "
           f"is agreement with {LOSS_RECOGNIZER}'s own top-1 class on the clean crop, so its \"on clean\" column shows "
           "how far it moved from the recognizer it started as; the unseen recognizer's is agreement with its own.", ""]
  for task, rows in appendix.items():
    unseen = [c[:-len(" top-1")] for c in rows[0] if c.endswith(" top-1") and c != "top-1 (own R)"] if rows else []
    lines += [f"**{TASK_TITLES[task]}**", "",
              "| method | top-1 (own R) | own R on clean | " + " | ".join(f"{u} top-1" for u in unseen)
              + " | PSNR | SSIM |", "|---|---:|---:|" + "---:|" * len(unseen) + "---:|---:|"]
    for r in rows:
      lines.append(f"| {r['method']} ({r['own R']}) | {_fmt_pct(r['top-1 (own R)'])} | {_fmt_pct(r['own R on clean'])} | "
                   + " | ".join(_fmt_pct(r[f"{u} top-1"]) for u in unseen) + f" | {r['PSNR']:.2f} | {r['SSIM']:.4f} |")
    lines.append("")
  return lines


def _paired_cell(test: dict | None) -> str:
  from rajax import metrics
  return metrics.paired_summary(test) if test else ""


def _steps(config) -> int:
  n = len(_photos().TRAIN) * len(config.data.photos.scales) * config.data.photos.repeats // config.data.batch_size
  return config.total_steps if config.total_steps > 0 else int(n * config.num_epochs)


def _lams(mode: str, quick: bool) -> str:
  return " / ".join(f"{demo_config(t, mode, quick).method.lam:g}" for t in TASKS)


def _distance(quick: bool) -> str:
  d = demo_config("sr", "unsupervised", quick).method.distance
  return {"prob_mse": "MSE of softmax probabilities", "kl": "KL divergence of the softmax probabilities"}.get(d, d)


def _confidence_line(quick: bool) -> list[str]:
  threshold = demo_config("sr", "ra", quick).method.get("min_confidence", 0.0)
  if threshold <= 0:
    return []
  return [f"- Recognition loss: only on crops that {LOSS_RECOGNIZER} itself recognises with a top-1 probability of "
          f"at least {threshold:g} on the clean crop."]


def selection_lines(selection: dict) -> list[str]:
  """The weights chosen on the validation photos, with every candidate's figures there."""
  lines = ["## Weights chosen on the validation photos", "",
           f"Each candidate was trained and evaluated on the validation photos only; the one kept has the best "
           f"top-1 agreement on {LOSS_RECOGNIZER} (for the CenterNet run: CenterNet's VOC07 mAP on the whole "
           f"validation photos) among those within {PSNR_BUDGET_DB:g} dB of plain processing's PSNR there. Only the "
           "kept run is evaluated on the test photos.", "",
           "| task | method | lambda | validation top-1 (%) | validation PSNR | CenterNet mAP (%) | kept |",
           "|---|---|---:|---:|---:|---:|:---:|"]
  for task, choices in selection.items():
    plain = choices["plain"]
    lines.append(f"| {TASK_TITLES[task]} | plain processing | | {_fmt_pct(plain['top1'])} | {plain['psnr']:.2f} | "
                 f"{_fmt_pct(plain['centernet_map']) if 'centernet_map' in plain else ''} | |")
    for mode, c in choices.items():
      if mode == "plain":
        continue
      for name, r in c["candidates"].items():
        lines.append(f"| | {title(mode)} | {r['lam']:g} | {_fmt_pct(r['top1'])} | {r['psnr']:.2f} | "
                     f"{_fmt_pct(r['centernet_map']) if 'centernet_map' in r else ''} | "
                     f"{'yes' if name == c['chosen'] else ''} |")
  return lines + [""]


def _photo_count() -> int:
  return sum(len(v) for v in _photos().SPLITS.values())


def _sides(config, field: str) -> str:
  return ", ".join(str(round(config.data.photos.short_side * s)) for s in config.data.photos[field])


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
          ax.set_title(title(col), fontsize=10)
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
    ax.set_xticklabels([title(r).replace(" with ", "\n+") for r in rows], fontsize=7)
    ax.set_ylabel("top-1 agreement (%)")
    ax.set_title(TASK_TITLES[task], fontsize=10)
    ax.set_ylim(0, 100)
  axes[0][0].legend(fontsize=7, loc="upper left")
  fig.tight_layout()
  fig.savefig(workdir / "top1.png", dpi=90)
  plt.close(fig)
  return files + ["top1.png"]


