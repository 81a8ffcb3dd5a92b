"""The `degradations` evaluator: restorers for unknown degradations, per degradation, seen and unseen.

    c.evals.degradations = ConfigDict(dict(type="degradations",
        seen=(("gaussian_noise", 3), ("fog", 3)), unseen=(("shot_noise", 3),), reference="ra"))

For every degradation ((name, severity) of `rajax.degrade.DEGRADATION_FAMILIES`: the ImageNet-C
corruptions, rain and low light), listed under `seen` (in the restorers' training mixture) or
`unseen` (held out), the evaluation images are degraded by it alone (a mixture of that one family,
the randomness of image i fixed by (config.seed, i)), and each row gives, for the degraded input
and each processor applied to it, PSNR and SSIM against the clean image and every target's top-1.
Rows "mean (seen)" and "mean (unseen)" pool the examples of each set. With `reference` (a processor,
e.g. the RA restorer), every other processor's top-1 is compared with it example by example
(`rajax.metrics.paired_test`: examples gained, lost, McNemar's exact p), per degradation and pooled
per set; the JSON holds every test under extra["paired"].

Detection and segmentation targets (optional sub-sections, each with `targets` and the `data`,
`labels` and thresholds of the detection / segmentation evaluator) get a side table each,
`<name>_detection` and `<name>_segmentation`: the same rows on whole images (each image resized into
the canvas and then degraded), with PSNR/SSIM of the real pixels and each detector's VOC07 mAP and
recovered boxes, or each segmenter's mIoU; the mean rows pool the images of every degradation of the
set into one mAP / one confusion matrix. Against `reference`, the paired test is the detection and
segmentation evaluators' sign test per image (target boxes recovered; per-image mIoU):

    c.evals.degradations.detection = ConfigDict(dict(targets=("centernet",), labels="recognizer",
                                                     data=ConfigDict(dict(source="photos", size=(256, 256)))))
    c.evals.degradations.segmentation = ConfigDict(dict(targets=("deeplab",), labels="recognizer"))
"""

from __future__ import annotations

import jax
import numpy as np

from rajax import data as data_lib
from rajax import degrade, metrics
from rajax.evaluate.context import CLEAN, INPUT, Context, DataSpec, EvalError
from rajax.evaluate import detection as detection_eval
from rajax.evaluate import quality as quality_lib
from rajax.evaluate import segmentation as segmentation_eval
from rajax.evaluate.report import Table, write_table
from rajax.evaluate.tables import _labels_note, _row_title

SETS = ("seen", "unseen")
DENSE = {"detection": detection_eval, "segmentation": segmentation_eval}


def problems(cfg, name: str) -> list[str]:
  """What is wrong with the detection / segmentation sub-sections (for rajax.evaluate.validate)."""
  out = []
  for kind, module in DENSE.items():
    sub = cfg.get(kind)
    if sub is None:
      continue
    if not sub.get("targets"):
      out.append(f"config.evals.{name}.{kind}.targets is empty: name the "
                 f"{'detectors' if kind == 'detection' else 'segmenters'} to evaluate")
    out += module.problems(sub, f"{name}.{kind}")
  return out


def _families(cfg, field: str, name: str) -> list[tuple[str, int]]:
  families = [tuple(f) for f in (cfg.get(field) or ())]
  problems = degrade.family_problems(families, f"evals.{name}.{field}") if families else []
  if problems:
    raise EvalError("; ".join(problems) + ".")
  return [(str(n), int(s)) for n, s in families]


def degradations(ctx: Context, cfg, name: str) -> Table:
  """PSNR, SSIM and top-1 per degradation (seen and unseen) for the input and each processor (module docstring)."""
  procs = ctx.processor_names(cfg.get("processors"))
  tnames = ctx.target_names(cfg.get("targets"))
  sets = {s: _families(cfg, s, name) for s in SETS}
  if not sets["seen"] and not sets["unseen"]:
    raise EvalError(f"evals.{name}: list the degradations to evaluate in evals.{name}.seen and/or .unseen, as "
                    "(name, severity) pairs, e.g. (('gaussian_noise', 3), ('fog', 3)).")
  reference = cfg.get("reference") or None
  if reference is not None and reference not in procs:
    raise EvalError(f"evals.{name}.reference={reference!r} is not one of its processors ({', '.join(procs)}).")
  for v in procs:
    if ctx.processor(v).task == "sr":
      raise EvalError(f"Processor {v!r} is a super-resolution model; evals.{name} degrades full-size images: use "
                      "restorers trained at scale 1 (task mixture, denoise or jpeg).")
  views = [INPUT] + procs
  others = [v for v in views if v != reference]
  cols = ["set", "degradation", "processing", "PSNR", "SSIM"] + [f"{t} top-1" for t in tnames]
  if reference:
    cols += [f"{t} vs {reference}" for t in tnames]
  formats = {"set": "text", "degradation": "text", "processing": "text", "PSNR": "db", "SSIM": "ssim"}
  formats |= {f"{t} top-1": "pct" for t in tnames} | {f"{t} vs {reference}": "text" for t in tnames}
  table = Table(name, cfg.get("title", "Restoration of seen and unseen degradations: PSNR, SSIM, top-1 (%)"), cols,
                formats)
  pooled = {}    # (set, view) -> {"psnr": [...], "ssim": [...], target: [correct arrays]}
  paired = {}
  recs = None
  for group in SETS:
    for family, severity in sets[group]:
      spec = DataSpec(data_lib.Degradation(task="mixture", families=((family, severity),)))
      recs = ctx.records(views + [CLEAN], tnames, spec, what=f"{name} {family}/{severity}")
      deg = f"{family} {severity}"
      for v in views:
        q = recs[(v, "quality")]
        row = {"set": group, "degradation": deg, "processing": _row_title(ctx, v), "view": v,
               "PSNR": float(np.mean(q["psnr"])), "SSIM": float(np.mean(q["ssim"]))}
        store = pooled.setdefault((group, v), {"psnr": [], "ssim": []})
        store["psnr"].append(q["psnr"])
        store["ssim"].append(q["ssim"])
        for t in tnames:
          correct = ctx.top1_correct(recs, v, t)
          row[f"{t} top-1"] = float(np.mean(correct))
          store.setdefault(t, []).append(correct)
          if reference and v != reference:
            test = metrics.paired_test(ctx.top1_correct(recs, reference, t), correct)
            paired.setdefault(deg, {}).setdefault(v, {})[t] = test
            row[f"{t} vs {reference}"] = metrics.paired_summary(test)
        table.rows.append(row)
  for group in SETS:
    if not sets[group]:
      continue
    for v in views:
      store = pooled[(group, v)]
      row = {"set": group, "degradation": f"mean ({group})", "processing": _row_title(ctx, v), "view": v,
             "PSNR": float(np.mean(np.concatenate(store["psnr"]))), "SSIM": float(np.mean(np.concatenate(store["ssim"])))}
      for t in tnames:
        correct = np.concatenate(store[t])
        row[f"{t} top-1"] = float(np.mean(correct))
        if reference and v != reference:
          test = metrics.paired_test(np.concatenate(pooled[(group, reference)][t]), correct)
          paired.setdefault(f"mean ({group})", {}).setdefault(v, {})[t] = test
          row[f"{t} vs {reference}"] = metrics.paired_summary(test)
      table.rows.append(row)
  table.notes.append("Seen: in the restorers' training mixture; unseen: held out. "
                     + ", ".join(f"{g}: " + ", ".join(f"{n} {s}" for n, s in sets[g]) for g in SETS if sets[g]) + ". "
                     + _labels_note(ctx, recs))
  if reference:
    table.notes.append(f"\"vs {reference}\": examples a row's images are recognised correctly on (top-1) and "
                       f"{reference}'s are not (+), the reverse (-), and McNemar's exact p-value; the mean rows pool "
                       f"the examples of every degradation of the set. Rows compared: {', '.join(others)}.")
  table.extra["paired"] = paired
  table.extra["sets"] = {g: [list(f) for f in sets[g]] for g in SETS}
  for kind in DENSE:
    if cfg.get(kind) is not None:
      side = _dense_table(ctx, cfg[kind], f"{name}_{kind}", kind, sets, views, reference)
      if jax.process_index() == 0:
        write_table(ctx.workdir, side)
      table.notes.append(f"{kind.capitalize()}: {side.name}.md.")
      table.extra[kind] = {"rows": side.rows, "paired": side.extra["paired"]}
  return table


# ==================================================================== detection and segmentation targets

class _Detection:
  """Per degradation: the detection evaluator's records; scores: VOC07 mAP and recovered boxes."""

  columns = ("VOC07 mAP", "recovered")

  def __init__(self, ctx: Context, sub, name: str):
    self.ctx, self.sub, self.name = ctx, sub, name
    self.tnames = list(sub.targets)
    self.threshold = float(sub.get("score_threshold", 0.5))
    for t in self.tnames:
      detection_eval._detector(ctx, t, name)

  def parts(self, deg, views: list[str], what: str) -> dict:
    """{(view, target): (detections, targets, kept-image mask)} and {view: quality cells}, kept mask."""
    data = detection_eval._data(self.ctx, self.sub, degradation=deg)
    labels = detection_eval._labels(self.sub, data, self.name)
    recs = detection_eval.records(self.ctx, data, views + [CLEAN], self.tnames, what=what)
    keep = recs["dataset"]["mask"] > 0
    targets = {t: detection_eval.targets_for(recs, t, labels, self.threshold, data.settings["max_boxes"])
               for t in self.tnames}
    out = {(v, t): (detection_eval._detections(recs[(v, t)]), targets[t], keep) for v in views for t in self.tnames}
    return out, {v: recs[(v, "quality")] for v in views}, keep, labels

  def per_image(self, part) -> np.ndarray:
    dets, targets, keep = part
    return detection_eval.recovered(dets, targets, self.threshold)[keep]

  def scores(self, t: str, parts: list) -> dict[str, float]:
    from rajax.tasks import detection as det_task
    ev = det_task.Evaluator.for_detector(self.ctx.target(t).recognizer, coco=False)
    found = total = 0
    for dets, targets, keep in parts:
      ev.add(dets, targets, mask=keep)
      found += int(self.per_image((dets, targets, keep)).sum())
      total += int(np.sum(np.asarray(targets.valid)[keep] & ~np.asarray(targets.difficult)[keep]))
    return {"VOC07 mAP": ev.result()["voc07_map11"], "recovered": found / total if total else float("nan")}

  def note(self, labels: str) -> str:
    return ("Cells: VOC07 mAP@0.5 (11-point) and the fraction of target boxes recovered by detections scoring >= "
            f"{self.threshold:g} (same class, IoU > 0.5); targets: "
            + ("the dataset's boxes" if labels == "dataset" else
               f"each detector's detections on the clean image scoring >= {self.threshold:g}")
            + ". \"vs\": images on which a row recovers more target boxes than the reference (+), fewer (-), the "
            "exact sign test's p.")


class _Segmentation:
  """Per degradation: the segmentation evaluator's records; score: mIoU of the summed confusion matrices."""

  columns = ("mIoU", "pixel acc")

  def __init__(self, ctx: Context, sub, name: str):
    self.ctx, self.sub, self.name = ctx, sub, name
    self.tnames = list(sub.targets)
    self.threshold = float(sub.get("confidence_threshold", 0.0))
    for t in self.tnames:
      segmentation_eval._segmenter(ctx, t, name)

  def parts(self, deg, views: list[str], what: str):
    data = segmentation_eval._data(self.ctx, self.sub, degradation=deg)
    labels = segmentation_eval._labels(self.sub, data, self.name)
    recs = segmentation_eval.records(self.ctx, data, views + [CLEAN], self.tnames, labels, self.threshold, what=what)
    keep = recs["data"]["mask"] > 0
    out = {(v, t): (recs[(v, t)]["matrix"], keep) for v in views for t in self.tnames}
    return out, {v: recs[(v, "quality")] for v in views}, keep, labels

  def per_image(self, part) -> np.ndarray:
    matrices, keep = part
    return segmentation_eval.per_image_scores(matrices[keep])["miou"]

  def scores(self, t: str, parts: list) -> dict[str, float]:
    from rajax.tasks import segmentation as seg_task
    ev = seg_task.Evaluator.for_segmenter(self.ctx.target(t).recognizer)
    for matrices, keep in parts:
      ev.add_matrix(matrices[keep], num_images=int(keep.sum()))
    res = ev.result()
    return {"mIoU": res["miou"], "pixel acc": res["pixel_accuracy"]}

  def note(self, labels: str) -> str:
    return ("Cells: mIoU and pixel accuracy of the confusion matrix summed over the images; targets: "
            + ("the dataset's label maps" if labels == "dataset" else "each segmenter's own argmax on the clean image")
            + ". \"vs\": images on which a row's per-image mIoU is higher than the reference's (+), lower (-), "
            "the exact sign test's p (ties left out).")


def _dense_table(ctx: Context, sub, name: str, kind: str, sets: dict, views: list[str], reference) -> Table:
  """The side table of detection or segmentation targets over the same degradations and processors."""
  scorer = (_Detection if kind == "detection" else _Segmentation)(ctx, sub, name)
  tnames = scorer.tnames
  cols = ["set", "degradation", "processing", "PSNR", "SSIM"] + [f"{t} {c}" for t in tnames for c in scorer.columns]
  cols += [f"{t} vs {reference}" for t in tnames] if reference else []
  formats = {"set": "text", "degradation": "text", "processing": "text", "PSNR": "db", "SSIM": "ssim"}
  formats |= {f"{t} {c}": "pct" for t in tnames for c in scorer.columns} | {f"{t} vs {reference}": "text" for t in tnames}
  table = Table(name, f"Restoration of seen and unseen degradations: {kind} on whole images", cols, formats)
  pooled: dict = {}     # (set, view) -> {"quality": [(records, keep)], target: [parts]}
  paired: dict = {}

  def add_row(group, deg, v, quality, parts_of):
    row = {"set": group, "degradation": deg, "processing": _row_title(ctx, v), "view": v}
    q = {k: np.concatenate([np.asarray(r[k])[keep] for r, keep in quality]) for k in ("psnr", "ssim")}
    row |= quality_lib.cells(q, np.ones(len(q["psnr"]), bool), clean=False)
    for t in tnames:
      for c, value in scorer.scores(t, parts_of(v, t)).items():
        row[f"{t} {c}"] = value
      if reference and v != reference:
        a = np.concatenate([scorer.per_image(p) for p in parts_of(reference, t)])
        b = np.concatenate([scorer.per_image(p) for p in parts_of(v, t)])
        scored = np.isfinite(a) & np.isfinite(b)
        test = metrics.paired_test(a[scored] > b[scored], b[scored] > a[scored])
        paired.setdefault(deg, {}).setdefault(v, {})[t] = test
        row[f"{t} vs {reference}"] = metrics.paired_summary(test)
    table.rows.append(row)

  labels = "recognizer"
  for group in SETS:
    for family, severity in sets[group]:
      deg = f"{family} {severity}"
      parts, quality, keep, labels = scorer.parts(
          data_lib.Degradation(task="mixture", families=((family, severity),)), views, f"{name} {family}/{severity}")
      for v in views:
        store = pooled.setdefault((group, v), {"quality": []})
        store["quality"].append((quality[v], keep))
        for t in tnames:
          store.setdefault(t, []).append(parts[(v, t)])
        add_row(group, deg, v, [(quality[v], keep)], lambda v, t: [parts[(v, t)]])
  for group in SETS:
    if sets[group]:
      for v in views:
        add_row(group, f"mean ({group})", v, pooled[(group, v)]["quality"], lambda v, t: pooled[(group, v)][t])
  table.notes.append("Whole images, each resized into its canvas, then degraded (seen: in the restorers' training "
                     "mixture; unseen: held out); PSNR and SSIM of the images' real pixels against the clean image. "
                     + scorer.note(labels) + " The mean rows pool the images of every degradation of the set.")
  table.extra["paired"] = paired
  return table
