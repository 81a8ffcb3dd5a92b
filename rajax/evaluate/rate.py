"""Rate-accuracy: standard codecs alone against a processor before them (NPP), at real bit counts.

Coding for machines asks how many bits a recognizer needs: each codec of `codecs` codes the clean
images at every quality of its sweep, and each processor's output likewise (a processor built around
a codec, NPP's, reads the quality itself: its P runs at the codec's normalised quality,
`rajax.runs.Run.coded`). Every coded image is decoded and read by the targets; the rate is the real
file's bits per pixel. The evaluator writes

  <name>         rows (codec, processing, quality): bpp, PSNR and SSIM against the clean image, top-1
                 per classifier (with config.labels="recognizer": agreement with the target's own top-1
                 on the clean image, which scores 100% by construction);
  <name>_detection  (when `detection` is configured) the same on whole images for detectors: bpp of
                 each image's own pixels, VOC07 mAP against the detector's detections on the clean image
                 (or the dataset's boxes);
  <name>_bd      rows (processing, codec): the Bjontegaard-delta rate of processing + codec against the
                 codec alone at equal accuracy, per target (negative = bits saved), the BD-accuracy
                 at equal rate, and the BD-rate at equal PSNR (the cost to the eye), each marked with
                 whether the codec and the recognizer were the ones the processor was trained with;
  <name>_curves.png  accuracy against bpp (log scale), one panel per (target, codec).

Config section:
  processors   runs to put before the codecs (default: all of config.processors)
  codecs       {codec: qualities} or a sequence of codec names (their `rajax.codecs` sweeps)
  targets      classifiers (default: every classification target)
  detection    optional: {targets: detectors, data: {...} as the detection evaluator's, labels,
               score_threshold}
  bd_method    how the BD curves are interpolated for accuracy (`rajax.metrics.BD_METHODS`; default
               "mpeg_vcm", the monotone refit of the MPEG coding-for-machines practice, since measured
               accuracy need not rise strictly with the rate); PSNR uses "pchip"
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from rajax import codecs, metrics
from rajax.evaluate.context import CLEAN, Context, EvalError, coded_view
from rajax.evaluate.report import Table, pyplot, write_table


def _mean(x) -> float:
  return float(np.mean(x)) if len(x) else float("nan")


def sweeps(cfg, name: str) -> dict[str, tuple[int, ...]]:
  """{codec: qualities from the lowest rate to the highest} of the section's `codecs`."""
  given = cfg.get("codecs") or codecs.NAMES
  items = given.items() if hasattr(given, "items") else ((c, None) for c in given)
  out = {}
  for codec, qualities in items:
    if codec not in codecs.NAMES:
      raise EvalError(f"config.evals.{name}.codecs names {codec!r}, not one of {', '.join(codecs.NAMES)}.")
    c = codecs.get(codec)
    qs = tuple(int(q) for q in (qualities or c.sweep))
    for q in qs:
      try:
        c.check_quality(q)
      except ValueError as e:
        raise EvalError(f"config.evals.{name}.codecs.{codec}: {e}") from None
    if len(set(qs)) < metrics.BD_MIN_POINTS:
      raise EvalError(f"config.evals.{name}.codecs.{codec} has {len(set(qs))} distinct qualities; a BD-rate needs at "
                      f"least {metrics.BD_MIN_POINTS} (default sweep {c.sweep}).")
    out[codec] = tuple(sorted(set(qs), key=c.normalise))   # lowest rate first
  return out


def problems(cfg, name: str) -> list[str]:
  """What is wrong with a rate_accuracy section, each with the fix (checked before any evaluator runs)."""
  out = []
  try:
    sweeps(cfg, name)
  except EvalError as e:
    out.append(str(e))
  method = cfg.get("bd_method", "mpeg_vcm")
  if method not in metrics.BD_METHODS:
    out.append(f"config.evals.{name}.bd_method={method!r} is not one of {', '.join(metrics.BD_METHODS)}")
  det = cfg.get("detection")
  if det is not None:
    from rajax.evaluate import detection as detection_eval
    if not det.get("targets"):
      out.append(f"config.evals.{name}.detection.targets is empty: name the detectors to evaluate")
    out += detection_eval.problems(det, f"{name}.detection")
  return out


def _trained_codec(ctx: Context, proc: str) -> str | None:
  cfg = ctx.processor(proc).train_config
  return cfg.method.get("codec") if "codec" in cfg.method else None


def _bd(rates_anchor, metric_anchor, rates_test, metric_test, method: str) -> tuple[float, float, str]:
  """(BD-rate %, BD-metric, why NaN) of one pair of curves; NaN with the reason when the curves allow none."""
  try:
    rate = metrics.bd_rate(rates_anchor, metric_anchor, rates_test, metric_test, method=method)
  except ValueError as e:
    return float("nan"), float("nan"), str(e)
  try:
    return rate, metrics.bd_metric(rates_anchor, metric_anchor, rates_test, metric_test, method=method), ""
  except ValueError as e:
    return rate, float("nan"), str(e)


# ==================================================================== the evaluator

def rate_accuracy(ctx: Context, cfg, name: str) -> Table:
  """The rate-accuracy tables, BD-rates and curves (see the module docstring)."""
  bad = problems(cfg, name)
  if bad:
    raise EvalError("\n".join(bad))
  procs = ctx.processor_names(cfg.get("processors"))
  # `targets` absent: every classifier; given empty (a detection-only section): none
  tnames = list(cfg.targets) if "targets" in cfg and cfg.targets is not None else ctx.target_names(None)
  if not tnames and cfg.get("detection") is None:
    raise EvalError(f"config.evals.{name} has no targets: name classifiers in `targets` or detectors in "
                    "`detection.targets`.")
  plan = sweeps(cfg, name)
  method = cfg.get("bd_method", "mpeg_vcm")
  rows_of = {b: [(c, q, coded_view(b, c, q)) for c, qs in plan.items() for q in qs] for b in [CLEAN, *procs]}
  tables, curves, det_targets, det_curves = [], {}, [], {}
  if tnames:
    tables.append(_classification(ctx, name, tnames, rows_of, curves))
  if cfg.get("detection") is not None:
    det_table, det_targets, det_curves = _detection(ctx, cfg.detection, f"{name}_detection" if tnames else name,
                                                    rows_of)
    tables.append(det_table)
  table, rest = tables[0], tables[1:]
  for t in rest:
    if jax.process_index() == 0:
      write_table(ctx.workdir, t)
    table.notes.append(f"Detection: {t.name}.md.")
    table.extra["detection"] = t.rows
  bd = _bd_table(ctx, name, procs, plan, tnames, curves, det_targets, det_curves, method)
  if jax.process_index() == 0:
    write_table(ctx.workdir, bd)
    table.figures.append(_plot(ctx, name, procs, plan, tnames, curves, det_targets, det_curves))
  table.notes.append(f"BD-rates: {bd.name}.md.")
  table.extra["bd"] = bd.rows
  table.extra["bd_notes"] = bd.notes
  return table


def _classification(ctx: Context, name: str, tnames, rows_of, curves: dict) -> Table:
  """The classification rate-accuracy table on config.data's images; fills `curves`."""
  views = [v for b in rows_of for _, _, v in rows_of[b]]
  recs = ctx.records(views, tnames, what=name)
  cols = ["codec", "processing", "quality", "bpp", "PSNR", "SSIM"] + [f"{t} top-1" for t in tnames]
  table = Table(name, "Rate and accuracy per codec and quality: codec alone vs processing + codec",
                cols, {"codec": "text", "processing": "text", "quality": "num", "bpp": "num", "PSNR": "db",
                       "SSIM": "ssim"} | {f"{t} top-1": "pct" for t in tnames})
  for b, items in rows_of.items():
    for codec, q, v in items:
      quality = recs[(v, "quality")]
      row = {"codec": codec, "processing": "codec alone" if b == CLEAN else b, "quality": q, "view": v,
             "bpp": _mean(quality["bpp"]), "PSNR": _mean(quality["psnr"]), "SSIM": _mean(quality["ssim"])}
      curve = curves.setdefault((b, codec), {"bpp": [], "psnr": []})
      curve["bpp"].append(row["bpp"])
      curve["psnr"].append(row["PSNR"])
      for t in tnames:
        row[f"{t} top-1"] = ctx.accuracy(recs, v, t)["top1"]
        curve.setdefault(t, []).append(row[f"{t} top-1"])
      table.rows.append(row)
  labels = ("each target's own top-1 class on the clean image (which scores 100%)" if ctx.config.labels == "recognizer"
            else "the dataset's labels")
  table.notes.append(f"{len(recs['labels'])} images; bpp: the real file's bits (8 x its bytes, container included) per "
                     f"pixel, averaged over the images; top-1 against {labels}; PSNR/SSIM of the decoded image against "
                     "the clean one.")
  return table


def _bd_table(ctx, name, procs, plan, tnames, curves, det_targets, det_curves, method) -> Table:
  targets = list(tnames) + list(det_targets)
  cols = ["processing", "codec", "codec in training"] + [f"{t} BD-rate" for t in targets]
  cols += [f"{t} BD-accuracy" for t in targets] + (["PSNR BD-rate"] if curves else [])
  formats = {"processing": "text", "codec": "text", "codec in training": "text"}
  formats |= {f"{t} BD-rate": "num" for t in targets} | {f"{t} BD-accuracy": "num" for t in targets}
  formats["PSNR BD-rate"] = "num"
  table = Table(f"{name}_bd", "BD-rate (%) of processing + codec against the codec alone (negative = bits saved)",
                cols, formats)
  failures = []
  for p in procs:
    trained = _trained_codec(ctx, p)
    loss = ctx.processor(p).loss_recognizer
    for codec in plan:
      row = {"processing": p, "codec": codec, "codec in training": "yes" if codec == trained else "no"}
      for t in targets:
        source = det_curves if t in det_targets else curves
        anchor, test = source[(CLEAN, codec)], source[(p, codec)]
        pct = lambda c: 100 * np.asarray(c[t])   # accuracy in percent: BD-accuracy in points
        rate, metric, why = _bd(anchor["bpp"], pct(anchor), test["bpp"], pct(test), method)
        row[f"{t} BD-rate"], row[f"{t} BD-accuracy"] = rate, metric
        if why:
          failures.append(f"{p} + {codec}, {t}: {why}")
      if curves:
        anchor, test = curves[(CLEAN, codec)], curves[(p, codec)]
        row["PSNR BD-rate"], _, why = _bd(anchor["bpp"], anchor["psnr"], test["bpp"], test["psnr"], "pchip")
        if why:
          failures.append(f"{p} + {codec}, PSNR: {why}")
      row["loss recognizer"] = loss
      table.rows.append(row)
  seen = sorted({ctx.processor(p).loss_recognizer for p in procs if ctx.processor(p).loss_recognizer})
  table.notes.append(f"BD-rate: the average difference in log-rate at equal accuracy over the accuracy range both curves "
                     f"cover, in percent; BD-accuracy: the average accuracy difference at equal rate, in points. Accuracy "
                     f"curves: {'refitted monotone (CompressAI-Vision/MPEG VCM practice), then PCHIP' if method == 'mpeg_vcm' else method}"
                     f"; PSNR curves: PCHIP. Recognizers used as a training loss: {', '.join(seen) or 'none'}; every other "
                     "column is transfer to a recognizer never seen in training.")
  if failures:
    table.notes.append("No BD value (-) where the curves allow none: " + "; ".join(failures))
  return table


def _detection(ctx: Context, det, name: str, rows_of) -> tuple[Table, list[str], dict]:
  """The detection rate-accuracy table on whole images, and its curves."""
  from rajax.evaluate import detection as detection_eval
  from rajax.tasks import detection as det_task
  data = detection_eval._data(ctx, det)
  labels = detection_eval._labels(det, data, name)
  tnames = list(det.targets)
  for t in tnames:
    detection_eval._detector(ctx, t, name)
  views = [v for b in rows_of for _, _, v in rows_of[b]]
  recs = detection_eval.records(ctx, data, [CLEAN, *views], tnames, what=name)
  rates = _whole_image_rates(ctx, data, views, name)
  mask = recs["dataset"]["mask"] > 0
  threshold = float(det.get("score_threshold", 0.5))
  targets = {t: detection_eval.targets_for(recs, t, labels, threshold, data.settings["max_boxes"]) for t in tnames}
  cols = ["codec", "processing", "quality", "bpp"] + [f"{t} VOC07 mAP" for t in tnames]
  table = Table(name, "Rate and detection accuracy on whole images: codec alone vs processing + codec", cols,
                {"codec": "text", "processing": "text", "quality": "num", "bpp": "num"} |
                {f"{t} VOC07 mAP": "pct" for t in tnames})
  curves: dict = {}
  for b, items in rows_of.items():
    for codec, q, v in items:
      row = {"codec": codec, "processing": "codec alone" if b == CLEAN else b, "quality": q, "view": v,
             "bpp": _mean(rates[v][mask])}
      curve = curves.setdefault((b, codec), {"bpp": []})
      curve["bpp"].append(row["bpp"])
      for t in tnames:
        ev = det_task.Evaluator.for_detector(ctx.target(t).recognizer, coco=False)
        ev.add(detection_eval._detections(recs[(v, t)]), targets[t], mask=mask)
        row[f"{t} VOC07 mAP"] = ev.result()["voc07_map11"]
        curve.setdefault(t, []).append(row[f"{t} VOC07 mAP"])
      table.rows.append(row)
  table.notes.append(f"{int(mask.sum())} whole images, each resized and padded to the detector's canvas and coded as "
                     "that canvas; bpp: the file's bits per pixel of the image's own (unpadded) area. Targets: "
                     + ("the dataset's boxes." if labels == "dataset" else
                        f"each detector's detections on the clean image scoring >= {threshold:g}."))
  return table, tnames, curves


def _whole_image_rates(ctx: Context, data, views: Sequence[str], name: str) -> dict[str, np.ndarray]:
  """{coded view: bits per pixel of each whole image's own area [N]}, cached per view."""
  import json

  from rajax.evaluate import detection as detection_eval
  out = {}
  for v in views:
    def compute(v=v):
      per, rows_all = [], []
      with jax.set_mesh(ctx.mesh):
        for batch, rows in detection_eval._batches(ctx, data):
          _, _, extra = ctx.view_outputs(v, batch)
          canvas = np.prod(batch["target"].shape[1:3])
          size = np.asarray(ctx.host_images(batch["image_size"]), np.float64)
          per.append(np.asarray(ctx.host_images(extra["bpp"]), np.float64) * canvas / np.maximum(size.prod(-1), 1.0))
          rows_all.append(rows)
      rows = np.concatenate(rows_all)
      n = detection_eval._num_examples(data)
      order = np.argsort(np.where(rows < 0, np.iinfo(np.int64).max, rows), kind="stable")[:n]
      return {"bpp": np.concatenate(per)[order]}
    key = [ctx.view_key(v), data.clean_key if ctx.reads_clean(v) else data.key]
    out[v] = ctx.cached("whole_image_bpp", json.loads(json.dumps(key)), compute)["bpp"]
  return out


def _plot(ctx: Context, name: str, procs, plan, tnames, curves, det_targets, det_curves) -> str:
  plt = pyplot()
  targets = list(tnames) + list(det_targets)
  fig, axes = plt.subplots(len(targets), len(plan), figsize=(3.2 * len(plan), 2.6 * len(targets)), squeeze=False)
  for i, t in enumerate(targets):
    source = det_curves if t in det_targets else curves
    for j, codec in enumerate(plan):
      ax = axes[i][j]
      for b, style in [(CLEAN, dict(color="black", marker="o", label=f"{codec} alone"))] + [
          (p, dict(marker="s", label=f"{p} + {codec}")) for p in procs]:
        c = source[(b, codec)]
        ax.plot(c["bpp"], 100 * np.asarray(c[t]), **style)
      ax.set_xscale("log")
      ax.set_title(f"{t}, {codec}", fontsize=9)
      ax.set_xlabel("bits per pixel", fontsize=8)
      ax.set_ylabel("mAP (%)" if t in det_targets else "top-1 (%)", fontsize=8)
      ax.tick_params(labelsize=7)
      ax.grid(alpha=0.3)
      if i == 0 and j == 0:
        ax.legend(fontsize=7)
  fig.tight_layout()
  path = ctx.workdir / f"{name}_curves.png"
  tmp = path.with_name(f".{path.name}.tmp.png")
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  tmp.replace(path)
  return path.name
