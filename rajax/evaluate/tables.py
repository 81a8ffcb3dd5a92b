"""The paper's tables as evaluators: each takes the shared Context and its config section.

  accuracy     Table 1: top-1/top-5 per target, PSNR, SSIM; rows input, processors, clean
  transfer     Table 2: rows = recognizer used as the loss, columns = recognizer evaluated
  category     Table 3: subset accuracy on the two halves of the classes
  lambda_sweep Table 5: PSNR, SSIM, top-1 against the recognition loss weight, with a plot
  alternatives Appendix A: each method with its own recognizer, that recognizer on clean images, transfer
  imagenet_c   top-1 per corruption and severity, input vs processors
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rajax import data as data_lib
from rajax import degrade, metrics
from rajax.evaluate.context import CLEAN, INPUT, Context, DataSpec, EvalError
from rajax.evaluate.report import Table, pyplot
from rajax.tasks.classification import class_halves

ROW_TITLES = {INPUT: "input (unprocessed)", CLEAN: "clean image"}


def _mean(x) -> float:
  return float(np.mean(x)) if len(x) else float("nan")


def _has_lpips(recs, views) -> bool:
  """True when the views' quality records hold LPIPS (config.lpips.backbone is set)."""
  return all("lpips" in recs[(v, "quality")] for v in views)


def _row_title(ctx: Context, view: str) -> str:
  if view in ROW_TITLES:
    return ROW_TITLES[view]
  p = ctx.processor(view)
  return f"{view} ({p.title}{', R=' + p.loss_recognizer if p.loss_recognizer else ''})"


def accuracy(ctx: Context, cfg, name: str) -> Table:
  """Top-1, top-5 on every target, PSNR and SSIM for input, each processor and the clean image.

  With a plain processor among the rows, each other processor's top-1 is also compared with it
  example by example (`metrics.paired_test`: examples gained, lost, McNemar's p) in "<target> vs plain".
  """
  procs = ctx.processor_names(cfg.get("processors"))
  tnames = ctx.target_names(cfg.get("targets"))
  views = [INPUT] + procs + [CLEAN]
  recs = ctx.records(views, tnames, what=name)
  plain = next((v for v in procs if ctx.processor(v).is_baseline), None)
  lpips = _has_lpips(recs, views)
  cols = ["processing", "PSNR", "SSIM"] + (["LPIPS"] if lpips else [])
  cols += [f"{t} {k}" for t in tnames for k in ("top-1", "top-5")]
  cols += [f"{t} vs plain" for t in tnames] if plain else []
  formats = {"processing": "text", "PSNR": "db", "SSIM": "ssim", "LPIPS": "ssim"}
  formats |= {c: "pct" for c in cols if "top-" in c}
  formats |= {f"{t} vs plain": "text" for t in tnames}
  table = Table(name, cfg.get("title", "Accuracy and image quality (Table 1)"), cols, formats)
  paired = {}
  for v in views:
    q = recs[(v, "quality")]
    row = {"processing": _row_title(ctx, v), "view": v, "PSNR": _mean(q["psnr"]) if v != CLEAN else float("inf"),
           "SSIM": _mean(q["ssim"])}
    if lpips:
      row["LPIPS"] = _mean(q["lpips"])
    for t in tnames:
      acc = ctx.accuracy(recs, v, t)
      row[f"{t} top-1"], row[f"{t} top-5"] = acc["top1"], acc["top5"]
      if plain and v in procs and v != plain:
        test = metrics.paired_test(ctx.top1_correct(recs, plain, t), ctx.top1_correct(recs, v, t))
        paired.setdefault(v, {})[t] = test
        row[f"{t} vs plain"] = metrics.paired_summary(test)
    table.rows.append(row)
  table.notes.append(_labels_note(ctx, recs))
  if plain:
    table.notes.append(f"\"vs plain\": examples a processor's output is recognised correctly on (top-1) and {plain}'s is "
                       "not (+), the reverse (-), and McNemar's exact p-value: the chance of a split at least this "
                       "lopsided if the two processors were equally good.")
    table.extra["paired_vs_plain"] = paired
  return table


def transfer(ctx: Context, cfg, name: str) -> Table:
  """Rows: processors named by the recognizer they were trained with; columns: top-1 per target."""
  procs = ctx.processor_names(cfg.get("processors"))
  tnames = ctx.target_names(cfg.get("targets"))
  recs = ctx.records(procs, tnames, what=name)
  cols = ["loss recognizer", "processor"] + tnames
  table = Table(name, cfg.get("title", "Transfer across recognizers: top-1 (%) (Table 2)"), cols,
                {"loss recognizer": "text", "processor": "text"} | {t: "pct" for t in tnames})
  for v in procs:
    p = ctx.processor(v)
    row = {"loss recognizer": p.loss_recognizer or f"none ({p.title})", "processor": v}
    row |= {t: ctx.accuracy(recs, v, t)["top1"] for t in tnames}
    table.rows.append(row)
  table.notes.append("Rows: the recognizer each processor was trained with (its run's config); columns: the "
                     "recognizer evaluated. " + _labels_note(ctx, recs))
  return table


def subset_accuracy(pred_in_half: np.ndarray, labels: np.ndarray, half: Sequence[int]) -> tuple[float, int]:
  """Accuracy over the examples whose label is in `half`, of predictions made among `half`'s classes."""
  keep = np.isin(labels, np.asarray(half))
  n = int(keep.sum())
  return (float(np.mean(pred_in_half[keep] == labels[keep])) if n else float("nan")), n


def category(ctx: Context, cfg, name: str) -> Table:
  """Subset accuracy on halves A and B of the classes (argmax over the half's logits)."""
  procs = ctx.processor_names(cfg.get("processors"))
  tnames = ctx.target_names(cfg.get("targets"))
  views = [INPUT] + procs + [CLEAN]
  recs = ctx.records(views, tnames, what=name)
  seed = ctx.config.classes.seed
  for t in tnames:
    if not ctx.target(t).on_device:
      raise EvalError(f"evals.{name}: target {t!r} is a black box; the category table needs a zoo recognizer's "
                      "logits over all classes. Drop it from evals.{name}.targets.")
  for v in procs:
    p = ctx.processor(v)
    if p.class_half and p.train_config.classes.seed != seed:
      raise EvalError(f"Processor {v!r} was trained on half {p.class_half} of the split with seed "
                      f"{p.train_config.classes.seed}, but config.classes.seed={seed}: set them equal.")
  cols = ["processing", "trained on"] + [f"{t} {h}" for t in tnames for h in ("A", "B")]
  table = Table(name, cfg.get("title", "Category transfer: subset top-1 (%) on class halves A and B (Table 3)"),
                cols, {"processing": "text", "trained on": "text"} | {c: "pct" for c in cols[2:]})
  counts = {}
  for v in views:
    trained = "-" if v in (INPUT, CLEAN) else ({"": "all classes"}.get(ctx.processor(v).class_half)
                                               or f"half {ctx.processor(v).class_half}")
    row = {"processing": _row_title(ctx, v), "trained on": trained}
    for t in tnames:
      rec = recs[(v, t)]
      labels = ctx.labels(recs, t)
      a, b = class_halves(ctx.target(t).num_classes, seed)
      row[f"{t} A"], counts[(t, "A")] = subset_accuracy(rec["sub_A"], labels, a)
      row[f"{t} B"], counts[(t, "B")] = subset_accuracy(rec["sub_B"], labels, b)
    table.rows.append(row)
  table.notes.append(f"Halves: rajax.tasks.classification.class_halves(num_classes, seed={seed}). Images per half: " + ", ".join(
      f"{t} {h} {n}" for (t, h), n in counts.items()) + ". " + _labels_note(ctx, recs))
  table.extra["halves"] = {t: dict(zip("AB", class_halves(ctx.target(t).num_classes, seed))) for t in tnames}
  return table


def lambda_sweep(ctx: Context, cfg, name: str) -> Table:
  """PSNR, SSIM and top-1 against lambda (each processor's run config says its lambda)."""
  procs = ctx.processor_names(cfg.get("processors"))
  tnames = ctx.target_names(cfg.get("targets"))
  recs = ctx.records(procs, tnames, what=name)
  no_weight = [v for v in procs if ctx.processor(v).lam is None]
  if no_weight:
    raise EvalError(f"evals.{name}: processor(s) {no_weight} were trained by a method without a loss weight lambda; "
                    f"list only runs of methods that have one in evals.{name}.processors.")
  points = sorted(((ctx.processor(v).lam, v) for v in procs), key=lambda p: p[0])
  cols = ["lambda", "processor", "PSNR", "SSIM"] + [f"{t} top-1" for t in tnames]
  table = Table(name, cfg.get("title", "Quality and accuracy against the loss weight lambda (Table 5)"), cols,
                {"lambda": "num", "processor": "text", "PSNR": "db", "SSIM": "ssim"} |
                {f"{t} top-1": "pct" for t in tnames})
  for lam, v in points:
    q = recs[(v, "quality")]
    row = {"lambda": lam, "processor": v, "PSNR": _mean(q["psnr"]), "SSIM": _mean(q["ssim"])}
    row |= {f"{t} top-1": ctx.accuracy(recs, v, t)["top1"] for t in tnames}
    table.rows.append(row)
  plt = pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
  lams = [p[0] for p in points]
  positive = [x for x in lams if x > 0]
  for ax, key, label in ((axes[0], "PSNR", "PSNR (dB)"), (axes[1], "SSIM", "SSIM")):
    ax.plot(lams, [r[key] for r in table.rows], "o-")
    ax.set_ylabel(label)
  for t in tnames:
    axes[2].plot(lams, [100 * r[f"{t} top-1"] for r in table.rows], "o-", label=t)
  axes[2].set_ylabel("top-1 (%)")
  axes[2].legend(fontsize=7)
  for ax in axes:
    if positive:
      ax.set_xscale("symlog", linthresh=min(positive))
    ax.set_xlabel("lambda")
  fig.suptitle(table.title, fontsize=10)
  fig.tight_layout()
  png = f"{name}.png"
  fig.savefig(ctx.workdir / png, dpi=90)
  plt.close(fig)
  table.figures.append(png)
  table.notes.append(_labels_note(ctx, recs))
  return table


def alternatives(ctx: Context, cfg, name: str) -> Table:
  """The paper's Appendix A table (and SR4IR's rows): for each processor (any method), top-1 on its outputs
  by its own recognizer (the one its run trained; else the fixed loss recognizer its run read from a
  weights file, as SR4IR's T->S; else `cfg.source`, the fixed loss recognizer), that
  recognizer's top-1 on clean images, top-1 on the outputs of each `cfg.transfer` target (default:
  every other target), PSNR and SSIM. Without dataset labels, a trained R is measured against
  `cfg.source`'s top-1 on the clean image (it shows how far it moved from where it started), and
  every other recognizer against its own, as in the accuracy table.
  """
  procs = ctx.processor_names(cfg.get("processors"))
  source = cfg.get("source")
  if not source:
    raise EvalError(f"evals.{name}.source is not set: name the target that is the fixed loss recognizer.")
  transfer = list(cfg.get("transfer") or [t for t in ctx.target_names(None) if t != source])
  own = {v: ctx.trained_recognizer(v) or ctx.fixed_recognizer(v) or source for v in procs}
  tnames = list(dict.fromkeys([source, *transfer, *own.values()]))
  recs = ctx.records(procs + [CLEAN], tnames, what=name)
  reference = source if ctx.config.labels == "recognizer" else None
  lpips = _has_lpips(recs, procs)
  cols = ["method", "processor", "PSNR", "SSIM"] + (["LPIPS"] if lpips else [])
  cols += ["top-1 (own R)", "own R", "own R on clean"]
  cols += [f"{t} top-1" for t in transfer]
  table = Table(name, cfg.get("title", "Alternatives to a fixed recognition loss (Appendix A)"), cols,
                {"method": "text", "processor": "text", "PSNR": "db", "SSIM": "ssim", "LPIPS": "ssim", "own R": "text"}
                | {c: "pct" for c in cols if "top-1" in c or c.endswith("on clean")})
  for v in procs:
    q = recs[(v, "quality")]
    row = {"method": ctx.processor(v).title, "processor": v, "PSNR": _mean(q["psnr"]), "SSIM": _mean(q["ssim"]),
           "top-1 (own R)": ctx.accuracy(recs, v, own[v], reference)["top1"],
           "own R": ("trained" if ctx.processor(v).run.recognizer is not None
                     else f"{source} (fixed)" if own[v] == source else "its fixed loss R (a weights file)"),
           "own R on clean": ctx.accuracy(recs, CLEAN, own[v], reference)["top1"]}
    row |= {f"{t} top-1": ctx.accuracy(recs, v, t)["top1"] for t in transfer}
    if lpips:
      row["LPIPS"] = _mean(q["lpips"])
    table.rows.append(row)
  table.notes.append(f"\"own R\": the recognizer a run trained (methods that train R), else {source}, the fixed loss "
                     f"recognizer. " + (f"Labels: a trained R's are {source}'s top-1 on the clean image (no ground "
                                        "truth); every other recognizer's are its own." if reference
                                        else _labels_note(ctx, recs)))
  return table


def imagenet_c(ctx: Context, cfg, name: str) -> Table:
  """Top-1 per corruption and severity for the corrupted input and each processor, per target."""
  procs = ctx.processor_names(cfg.get("processors"))
  tnames = ctx.target_names(cfg.get("targets"))
  corruptions = list(cfg.get("corruptions") or degrade.CORRUPTIONS[:15])
  severities = list(cfg.get("severities") or (1, 2, 3, 4, 5))
  bad = [c for c in corruptions if c not in degrade.CORRUPTIONS]
  if bad:
    raise EvalError(f"evals.{name}.corruptions: unknown {bad}; choose from {', '.join(degrade.CORRUPTIONS)}.")
  for v in procs:
    p = ctx.processor(v)
    if p.task == "sr":
      raise EvalError(f"Processor {v!r} is a x{p.train_config.degrade.scale} super-resolution model; ImageNet-C "
                      "images are full size: use processors trained for denoise/jpeg (scale 1).")
  views = [INPUT] + procs
  cols = ["corruption", "severity"] + [f"{t} {_short(v)}" for t in tnames for v in views]
  table = Table(name, cfg.get("title", "ImageNet-C: top-1 (%) per corruption and severity"), cols,
                {"corruption": "text", "severity": "num"} | {c: "pct" for c in cols[2:]})
  means = {c: [] for c in cols[2:]}
  for corruption in corruptions:
    for severity in severities:
      spec = DataSpec(data_lib.Degradation(task="corrupt", corruption=corruption, severity=int(severity)))
      recs = ctx.records(views + [CLEAN], tnames, spec, what=f"{name} {corruption}/{severity}")
      row = {"corruption": corruption, "severity": int(severity)}
      for t in tnames:
        for v in views:
          row[f"{t} {_short(v)}"] = ctx.accuracy(recs, v, t)["top1"]
          means[f"{t} {_short(v)}"].append(row[f"{t} {_short(v)}"])
      table.rows.append(row)
  table.rows.append({"corruption": "mean", "severity": None} | {c: _mean(v) for c, v in means.items()})
  table.notes.append(f"Columns: target, then the corrupted input or the processor applied to it. {_labels_note(ctx, recs)}")
  return table


def _short(view: str) -> str:
  return "input" if view == INPUT else view


def _labels_note(ctx: Context, recs) -> str:
  n = len(recs["labels"])
  if ctx.config.labels == "dataset":
    return f"{n} images; labels from the dataset."
  return (f"{n} images; labels: each target's own top-1 class on the clean image (no ground truth), so the "
          "clean row is 100% by construction.")
