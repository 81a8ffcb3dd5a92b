"""Detection in the evaluation suite: detectors as targets, the paper's detection tables, detections drawn.

    c.targets.centernet = evaluate.detector("centernet_mobilenetv3")     # a zoo detector (its real weights)
    c.targets.ra_det = evaluate.run_target("runs/voc_ra_joint")          # the detector a run trained
    c.evals.detection = ConfigDict(dict(type="detection", processors=("plain", "ra"),
                                        targets=("centernet",), data=ConfigDict(dict(source="photos"))))

The `detection` evaluator writes the form of the paper's Tables 4, 8, 9, 12 and 13: rows are the
processing (the degraded input, each processor -- named with the recognizer its run was trained
with, so a P trained with a classifier and evaluated by detectors is Table 4's classification-to-
detection transfer, one trained with a detector Table 8/9's, an unsupervised one Table 13's --
and the clean image), columns are the evaluation detectors, cells VOC07 mAP@0.5 (11-point, the
paper's figure) and/or COCO mAP@[.5:.95] (`metrics`, from rajax.tasks.detection.Evaluator). Table 12
(detection to classification) is the `accuracy` evaluator with classifier targets on the same runs.

Data (the evaluator's own `data` section; whole images, not the classification crops):
  source "photos"  whole photos: names of rajax.data.photos ("chelsea") or of rajax.assets
                   ("darknet/dog.jpg"); no boxes;
  source "tfds"    a prepared detection dataset (`split`, e.g. "voc/2007:test", `data_dir`).
Each image is resized into a `size` canvas with its aspect ratio kept (and torchvision's `min_size` /
`max_size` limits, 0: none) and padded (rajax.data.detection),
then degraded by the evaluation's task, exactly as the detection pipelines do.

Targets per image (`labels`): "dataset" (the data's boxes; VOC's difficult ones ignored) or
"recognizer": each detector's own detections on the clean image scoring >= `score_threshold`
(rajax.tasks.detection.pseudo_targets), so the clean row is 100% by construction. "auto" picks
"dataset" when the data has boxes.

Each row also gives its image quality against the clean image (rajax.evaluate.quality, per image,
then averaged), as SR4IR's tables give mAP next to PSNR and LPIPS: PSNR and SSIM of each image's real
pixels (the canvas without its padding), and LPIPS when config.lpips.backbone is set (over the
canvas, the padding taken from the clean image).

Besides mAP, each row gives `recovered`: the fraction of target boxes that the row's detections
scoring >= `score_threshold` find again (same class, IoU > 0.5; rajax.tasks.detection.metrics), and
against the plain processor a paired sign test per image on the number recovered
(`metrics.paired_test` of "fewer" against "more": images gained, lost, exact binomial p) and
McNemar's test per target box ("boxes vs plain"; optimistic: one image's boxes are not independent). Per-class
AP goes to a side table `<name>_per_class` (.md/.csv/.json); `figures` images get a figure each
(`<name>_<i>.png`) with the first detector's detections (boxes, class names, scores >=
`score_threshold`) drawn on the degraded input, each of `figure_processors` and the clean image.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import jax
import numpy as np

from rajax import metrics as metrics_lib
from rajax import sharding
from rajax.evaluate import quality as quality_lib
from rajax.evaluate.context import CACHE_VERSION, CLEAN, INPUT, Context, EvalError, log
from rajax.methods import to_float_images
from rajax.evaluate.report import Table, own_columns, pyplot, write_table

METRICS = {"voc07_map11": "VOC07 mAP", "voc_map_area": "VOC mAP (area)", "coco_map": "COCO mAP",
           "coco_ap50": "COCO AP50", "coco_ap75": "COCO AP75"}
LABELS = ("auto", "dataset", "recognizer")
DEFAULT_DATA = dict(source="photos", photos=("chelsea", "coffee", "rocket", "grace_hopper", "flower"),
                    split="voc/2007:test", data_dir="", size=(384, 384), min_size=0, max_size=0, max_boxes=100,
                    label_space="contiguous",
                    num_examples=-1, batch_size=0)
ROW_TITLES = {INPUT: "input (degraded)", CLEAN: "clean image"}


# ==================================================================== data

class PhotoList:
  """Whole photos without boxes, by name: a bundled photo (rajax.data.photos) or an asset file
  (rajax.assets, e.g. "darknet/dog.jpg"). A random-access detection source (rajax.data.detection)."""

  annotated = False
  dataset = "photos"
  classes = ()

  def __init__(self, names: Sequence[str]):
    if not names:
      raise EvalError("The detection evaluator's data.photos is empty: name at least one photo "
                      "(e.g. 'chelsea' or 'darknet/dog.jpg').")
    self.names = tuple(names)

  def __len__(self) -> int:
    return len(self.names)

  def image(self, name: str) -> np.ndarray:
    from rajax.data import photos
    return photos.photo(name)

  def __getitem__(self, index: int) -> dict:
    return {"image": self.image(self.names[index]), "boxes": np.zeros((0, 4), np.float32),
            "classes": np.zeros(0, np.int64), "id": index}


def data_settings(cfg) -> dict:
  """The evaluator's data section over DEFAULT_DATA (unknown fields are an error)."""
  given = dict(cfg.get("data") or {})
  unknown = sorted(set(given) - set(DEFAULT_DATA))
  if unknown:
    raise EvalError(f"Unknown detection data field(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_DATA)}.")
  d = {**DEFAULT_DATA, **given}
  d["size"], d["photos"] = tuple(int(s) for s in d["size"]), tuple(d["photos"])
  if d["source"] not in ("photos", "tfds"):
    raise EvalError(f"detection data.source={d['source']!r}: use 'photos' (whole photos without boxes) or 'tfds' "
                    "(a prepared detection dataset, e.g. split='voc/2007:test').")
  return d


def problems(cfg, name: str) -> list[str]:
  """What is wrong with a detection evaluator's config section (for rajax.evaluate.validate)."""
  out = []
  try:
    d = data_settings(cfg)
    if len(d["size"]) != 2 or min(d["size"]) < 8:
      out.append(f"config.evals.{name}.data.size={d['size']} must be (height, width), each >= 8")
  except EvalError as e:
    out.append(f"config.evals.{name}: {e}")
  bad = [m for m in (cfg.get("metrics") or ()) if m not in METRICS]
  if bad:
    out.append(f"config.evals.{name}.metrics: unknown {bad}; choose from {', '.join(METRICS)}")
  if cfg.get("labels", "auto") not in LABELS:
    out.append(f"config.evals.{name}.labels={cfg.get('labels')!r} must be one of {', '.join(LABELS)}")
  if not 0.0 <= float(cfg.get("score_threshold", 0.5)) <= 1.0:
    out.append(f"config.evals.{name}.score_threshold={cfg.get('score_threshold')} must be in [0, 1]")
  return out


def make_source(d: dict):
  if d["source"] == "photos":
    return PhotoList(d["photos"])
  from rajax.data import detection as det_data
  return det_data.detection_source(d["split"], data_dir=d["data_dir"] or None)


# ==================================================================== the pass over the data

@dataclasses.dataclass
class _Data:
  """One detection evaluation's images: settings, source, the degradation, the cache key of the data."""

  settings: dict
  source: Any
  degradation: Any
  key: str
  clean_key: str

  @property
  def annotated(self) -> bool:
    return bool(getattr(self.source, "annotated", True))


def _data(ctx: Context, cfg, degradation=None) -> _Data:
  """The evaluator's images, degraded by `degradation` (default: the evaluation's task)."""
  from rajax.data import detection as det_data
  d = data_settings(cfg)
  deg = ctx.main.degradation if degradation is None else degradation
  det_data.DetectionSpec(size=d["size"]).check_degradation(deg)
  source = make_source(d)
  base = {k: v for k, v in d.items() if k != "batch_size"}
  deg_key = dataclasses.asdict(deg)
  if deg.task != "denoise":
    deg_key.pop("noise")
  return _Data(d, source, deg, json.dumps([base, deg_key, ctx.config.seed], sort_keys=True),
               json.dumps([base, "clean"], sort_keys=True))


def _batches(ctx: Context, data: _Data):
  """(global batch, example indices of its rows, -1 for padding) over the detection images."""
  from rajax.data import detection as det_data
  d = data.settings
  gb = d["batch_size"] or ctx.config.batch_size
  sharding.check_batch_size(gb, ctx.mesh, "evals.<detection>.data.batch_size")
  spec = det_data.DetectionSpec(size=d["size"], min_size=d["min_size"], max_size=d["max_size"], max_boxes=d["max_boxes"],
                                label_space=d["label_space"])
  ds = det_data.detection_eval_dataset(data.source, spec, data.degradation, global_batch=gb, seed=ctx.config.seed,
                                       num_examples=d["num_examples"], process_index=jax.process_index(),
                                       process_count=jax.process_count(), threads=2)
  n = _num_examples(data)
  pc, local_b = jax.process_count(), gb // jax.process_count()
  stage = data.degradation.device_stage(ctx.config.seed)
  for j, local in enumerate(ds):
    positions = j * local_b + np.arange(local_b)
    rows = np.concatenate([h + pc * positions for h in range(pc)])
    batch = sharding.global_batch(local, ctx.mesh)
    if stage is not None:
      batch = ctx._jit(("device_stage", stage), stage, (ctx.batched,), ctx.batched)(batch)
    yield batch, np.where(rows < n, rows, -1)


def _num_examples(data: _Data) -> int:
  n = len(data.source)
  return n if data.settings["num_examples"] < 0 else min(n, data.settings["num_examples"])


def _detector(ctx: Context, name: str, evaluator: str):
  from rajax.detection import Detector
  t = ctx.target(name)
  if not t.on_device or not isinstance(t.recognizer, Detector):
    raise EvalError(f"evals.{evaluator}: target {name!r} is not a detector; the detection table's targets are "
                    "detectors (evaluate.detector(NAME), or a run that trained one). Evaluate classifiers with "
                    "the accuracy evaluator.")
  return t


def _record_key(ctx: Context, data: _Data, view: str, target: str | None) -> str:
  dkey = data.clean_key if view == CLEAN else data.key
  if target == "quality":   # with LPIPS (and its weights) other records than without
    return json.dumps([CACHE_VERSION, "detection quality", ctx.view_key(view), dkey]
                      + ([ctx.lpips_key()] if ctx.lpips_key() else []))
  return json.dumps([CACHE_VERSION, "detections", ctx.view_key(view) if target else "", ctx.target(target).key
                     if target else "", dkey])


def records(ctx: Context, data: _Data, views: Sequence[str], tnames: Sequence[str], what: str = "") -> dict:
  """{(view, target): {"boxes", "scores", "labels", "valid"} [N, K, ...]; (view, "quality"): {"psnr",
  "ssim"(, "lpips")} [N] of the view's shown image; "dataset": the data's boxes {"boxes", "labels",
  "valid", "difficult", "image_size"}}, read from the cache or computed in one pass."""
  wanted = [(v, "quality") for v in views] + [(v, t) for v in views for t in tnames] + [("dataset", None)]
  out, missing = {}, []
  for v, t in wanted:
    key = _record_key(ctx, data, CLEAN if v == "dataset" else v, t)
    rec = ctx._cache_read(key)
    if rec is None:
      missing.append((v, t, key))
    else:
      out[(v, t) if t else v] = rec
      ctx.stats["cached"] += 1
  if not missing:
    return out
  need_views = list(dict.fromkeys(v for v, t, _ in missing if t))
  parts: dict = {(v, t): {} for v, t, _ in missing}
  fns = {t: ctx._jit(("detect", t), lambda r, x: r(x), (ctx.replicated, ctx.batched), ctx.replicated)
         for t in dict.fromkeys(t for _, t, _ in missing if t not in (None, "quality"))}
  distance = ctx.lpips_distance()
  quality_fn = ctx._jit(("canvas_quality", ctx.lpips_settings()),
                        lambda a, y, size: quality_lib.canvas_quality(a, to_float_images(y), size, distance),
                        (ctx.batched, ctx.batched, ctx.batched), ctx.replicated)
  n = _num_examples(data)
  log(f"{what + ': ' if what else ''}detections of {', '.join(fns) or 'no detector'} on {n} images for "
      f"{', '.join(need_views) or 'the targets'}")
  rows_all = []
  with jax.set_mesh(ctx.mesh):
    for batch, rows in _batches(ctx, data):
      rows_all.append(rows)
      if ("dataset", None) in parts:
        host = {k: ctx.host_images(batch[k]) for k in ("boxes", "labels", "valid", "difficult", "image_size", "mask")}
        for k, a in host.items():
          parts[("dataset", None)].setdefault(k, []).append(np.asarray(a))
      for v in need_views:
        shown, seen = ctx.view(v, batch)
        for (pv, pt), store in parts.items():
          if pv != v or pt is None:
            continue
          if pt == "quality":
            out_q = jax.device_get(quality_fn(shown, batch["target"], batch["image_size"]))
          else:
            out_q = jax.device_get(fns[pt](ctx.target(pt).recognizer, seen))._asdict()
          for k, a in out_q.items():
            store.setdefault(k, []).append(np.asarray(a))
  rows = np.concatenate(rows_all)
  order = np.argsort(np.where(rows < 0, np.iinfo(np.int64).max, rows), kind="stable")[:n]
  for v, t, key in missing:
    rec = {k: np.concatenate(a)[order] for k, a in parts[(v, t)].items()}
    ctx._cache_write(key, rec)
    ctx.stats["computed"] += 1
    out[(v, t) if t else v] = rec
  return out


def _detections(rec: dict):
  from rajax.detection import Detections
  return Detections(rec["boxes"], rec["scores"], rec["labels"], rec["valid"].astype(bool))


def targets_for(recs: dict, target: str, labels: str, score_threshold: float, max_boxes: int):
  """The BoxTargets every row of `target`'s column is scored against (numpy arrays [N, M, ...])."""
  from rajax.detection import BoxTargets
  from rajax.tasks import detection as det_task
  if labels == "dataset":
    d = recs["dataset"]
    return BoxTargets(d["boxes"], d["labels"], d["valid"].astype(bool), d["difficult"].astype(bool))
  t, _ = det_task.pseudo_targets(_detections(recs[(CLEAN, target)]), score_threshold=score_threshold,
                                 max_boxes=max_boxes)
  return BoxTargets(*(np.asarray(x) for x in t))


def recovered_boxes(detections, targets, score_threshold: float) -> np.ndarray:
  """bool [N, M]: which (non-difficult, valid) target boxes a detection scoring >= score_threshold finds
  again (same class, IoU > 0.5), as rajax.tasks.detection.metrics counts them (its found50)."""
  from rajax.detection import boxes as boxes_lib
  confident = np.asarray(detections.valid, bool) & (np.asarray(detections.scores) >= score_threshold)
  overlap = np.asarray(boxes_lib.iou(np.asarray(targets.boxes, np.float32), np.asarray(detections.boxes, np.float32)))
  same = np.asarray(targets.labels)[:, :, None] == np.asarray(detections.labels)[:, None, :]
  counted = np.asarray(targets.valid, bool) & ~np.asarray(targets.difficult, bool)
  return np.any((overlap > 0.5) & same & confident[:, None, :], axis=-1) & counted


def recovered(detections, targets, score_threshold: float) -> np.ndarray:
  """Per image, the number of target boxes `recovered_boxes` finds again: int [N]."""
  return recovered_boxes(detections, targets, score_threshold).sum(-1).astype(np.int64)


def _labels(cfg, data: _Data, name: str) -> str:
  labels = cfg.get("labels", "auto")
  if labels not in LABELS:
    raise EvalError(f"evals.{name}.labels={labels!r} must be one of {', '.join(LABELS)}.")
  if labels == "auto":
    return "dataset" if data.annotated else "recognizer"
  if labels == "dataset" and not data.annotated:
    raise EvalError(f"evals.{name}: labels='dataset' but data.source={data.settings['source']!r} has no boxes; "
                    "set labels='recognizer' (each detector's own detections on the clean image).")
  return labels


def _row_title(ctx: Context, view: str) -> tuple[str, str]:
  if view in ROW_TITLES:
    return ROW_TITLES[view], "-"
  p = ctx.processor(view)
  return f"{view} ({p.title})", p.loss_recognizer or "none"


# ==================================================================== the evaluator

def detection(ctx: Context, cfg, name: str) -> Table:
  """The detection table (Tables 4, 8, 9, 12, 13): rows processing, columns detectors, cells mAP."""
  from rajax.tasks import detection as det_task
  procs = ctx.processor_names(cfg.get("processors"))
  tnames = list(cfg.get("targets") or ctx.target_names(None, task="detection"))
  if not tnames:
    raise EvalError(f"evals.{name}: no detector targets; add one, e.g. c.targets.centernet = "
                    "evaluate.detector('centernet_mobilenetv3'), and list it in evals.{name}.targets.")
  chosen = list(cfg.get("metrics") or ("voc07_map11", "coco_map"))
  bad = [m for m in chosen if m not in METRICS]
  if bad:
    raise EvalError(f"evals.{name}.metrics: unknown {bad}; choose from {', '.join(METRICS)}.")
  threshold = float(cfg.get("score_threshold", 0.5))
  data = _data(ctx, cfg)
  labels = _labels(cfg, data, name)
  for t in tnames:
    _detector(ctx, t, name)
  views = [INPUT] + procs + [CLEAN]
  recs = records(ctx, data, views, tnames, what=name)
  mask = recs["dataset"]["mask"] > 0
  plain = next((v for v in procs if ctx.processor(v).is_baseline), None)
  max_boxes = data.settings["max_boxes"]
  need_coco = any(m.startswith("coco") for m in chosen)

  qcols, qformats = quality_lib.columns(all("lpips" in recs[(v, "quality")] for v in views))
  cols = ["processing", "loss model"] + qcols + [f"{t} {METRICS[m]}" for t in tnames for m in chosen]
  cols += [f"{t} recovered" for t in tnames]
  cols += [f"{t} {k}vs plain" for t in tnames for k in ("", "boxes ")] if plain else []
  formats = {"processing": "text", "loss model": "text"} | {c: "pct" for c in cols[2 + len(qcols):]} | qformats
  formats |= {f"{t} {k}vs plain": "text" for t in tnames for k in ("", "boxes ")}
  table = Table(name, cfg.get("title", "Detection: mAP (%) per processing and evaluation detector "
                                       "(Tables 4, 8, 9, 12, 13)"), cols, formats)
  per_class_rows, paired, paired_boxes, counts = [], {}, {}, {}
  targets = {t: targets_for(recs, t, labels, threshold, max_boxes) for t in tnames}
  found, boxes_found = {}, {}
  for v in views:
    title, loss = _row_title(ctx, v)
    row = {"processing": title, "loss model": loss, "view": v,
           **quality_lib.cells(recs[(v, "quality")], mask, clean=v == CLEAN)}
    for t in tnames:
      det = ctx.target(t).recognizer
      dets = _detections(recs[(v, t)])
      ev = det_task.Evaluator.for_detector(det, coco=need_coco)
      ev.add(dets, targets[t], mask=mask)
      res = ev.result()
      for m in chosen:
        row[f"{t} {METRICS[m]}"] = res[m]
      boxes_found[(v, t)] = recovered_boxes(dets, targets[t], threshold)[mask]
      found[(v, t)] = boxes_found[(v, t)].sum(-1)
      total = int(np.sum(np.asarray(targets[t].valid)[mask] & ~np.asarray(targets[t].difficult)[mask]))
      counts[t] = total
      row[f"{t} recovered"] = float(found[(v, t)].sum() / total) if total else float("nan")
      for cname, ap in ev.per_class().items():
        if ap["num_gt"] > 0:
          per_class_rows.append({"detector": t, "class": cname, "processing": v, **ap})
    table.rows.append(row)
  if plain:
    for row in table.rows:
      v = row["view"]
      if v not in procs or v == plain:
        continue
      for t in tnames:
        a, b = found[(plain, t)], found[(v, t)]
        test = metrics_lib.paired_test(a > b, b > a)
        paired.setdefault(v, {})[t] = test
        row[f"{t} vs plain"] = metrics_lib.paired_summary(test)
        ok = np.asarray(targets[t].valid)[mask] & ~np.asarray(targets[t].difficult)[mask]
        box_test = metrics_lib.paired_test(boxes_found[(plain, t)][ok], boxes_found[(v, t)][ok])
        paired_boxes.setdefault(v, {})[t] = box_test
        row[f"{t} boxes vs plain"] = metrics_lib.paired_summary(box_test)
    table.extra["paired_vs_plain"] = paired
    table.extra["paired_boxes_vs_plain"] = paired_boxes
  n = int(mask.sum())
  if labels == "dataset":
    table.notes.append(f"{n} images; targets: the dataset's boxes ({', '.join(f'{t}: {c}' for t, c in counts.items())} "
                       "non-difficult), scored in each detector's label space.")
  else:
    table.notes.append(f"{n} whole images; targets: each detector's own detections on the clean image scoring >= "
                       f"{threshold:g} ({', '.join(f'{t}: {c}' for t, c in counts.items())} boxes), so the clean row is "
                       "100% by construction.")
  table.notes.append(f"Cells: {', '.join(METRICS[m] for m in chosen)} (VOC07: 11-point AP at IoU 0.5; COCO: "
                     "mAP@[.5:.95], faster-coco-eval). \"recovered\": target boxes found again by the row's detections "
                     f"scoring >= {threshold:g} (same class, IoU > 0.5). PSNR and SSIM of each image's real pixels against "
                     "the clean image" + (", LPIPS over its canvas with the clean image's padding" if "LPIPS" in cols
                                          else "") + ", averaged over the images. \"loss model\": the recognizer "
                     "each processor was trained with.")
  if plain:
    table.notes.append(f"\"vs plain\": images on which a processor's output yields more recovered target boxes than "
                       f"{plain}'s (+), fewer (-), and the exact sign test's p-value (McNemar's form); \"boxes vs plain\": the same "
                       "per target box (found again by one and not the other), McNemar's exact p, optimistic since the "
                       "boxes of one image are not independent.")
  side = _per_class_table(name, per_class_rows, views)
  if jax.process_index() == 0:
    write_table(ctx.workdir, side)
  table.notes.append(f"Per-class AP: {side.name}.md.")
  table.extra["per_class"] = per_class_rows
  table.extra["recovered"] = {f"{v}|{t}": f.tolist() for (v, t), f in found.items()}
  table.extra["labels"] = labels
  nfig = int(cfg.get("figures", 0))
  if nfig > 0 and jax.process_index() == 0:
    table.figures += draw_figures(ctx, data, recs, name, tnames[0], list(cfg.get("figure_processors") or procs[:2]),
                                  threshold, nfig)
  own_columns(table, dict(cfg.get("own") or {}), [METRICS[m] for m in chosen], where=f"config.evals.{name}.own")
  return table


def _per_class_table(name: str, rows: list[dict], views: Sequence[str]) -> Table:
  """Per-class VOC AP (11-point) per detector and class (rows), one column per processing."""
  grouped: dict = {}
  for r in rows:
    g = grouped.setdefault((r["detector"], r["class"]), {"detector": r["detector"], "class": r["class"],
                                                          "objects": int(r["num_gt"])})
    g[r["processing"]] = r["ap11"]
  cols = ["detector", "class", "objects"] + list(views)
  return Table(f"{name}_per_class", "Per-class AP (%, VOC07 11-point) per processing", cols,
               {"detector": "text", "class": "text", "objects": "num"} | {v: "pct" for v in views},
               rows=list(grouped.values()), notes=["Classes with at least one target box."])


# ==================================================================== figures

def draw_detections(ax, image: np.ndarray, detections: dict, i: int, class_names: Sequence[str],
                    score_threshold: float) -> int:
  """Draws image i's detections scoring >= score_threshold (boxes, class names, scores) on `ax`; returns how many."""
  from matplotlib.patches import Rectangle
  ax.imshow(np.clip(image, 0, 1), interpolation="nearest")
  n = 0
  for box, score, label, ok in zip(detections["boxes"][i], detections["scores"][i], detections["labels"][i],
                                   detections["valid"][i]):
    if not ok or score < score_threshold:
      continue
    x1, y1, x2, y2 = (float(v) for v in box)
    color = f"C{int(label) % 10}"
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.5))
    ax.text(x1, y1, f"{class_names[int(label)]} {score:.2f}", fontsize=6, color="white",
            bbox=dict(facecolor=color, alpha=0.8, pad=1, edgecolor="none"), va="bottom")
    n += 1
  ax.set_xticks([])
  ax.set_yticks([])
  return n


def draw_figures(ctx: Context, data: _Data, recs: dict, name: str, target: str, procs: Sequence[str],
                 score_threshold: float, count: int) -> list[str]:
  """`<name>_<i>.png` for the first `count` images: `target`'s detections on input, processors, clean."""
  plt = pyplot()
  views = [INPUT] + list(procs) + [CLEAN]
  class_names = ctx.target(target).recognizer.class_names
  shown: dict = {v: [] for v in views}
  sizes = []
  with jax.set_mesh(ctx.mesh):
    for batch, rows in _batches(ctx, data):
      sizes.append(np.asarray(ctx.host_images(batch["image_size"])))
      for v in views:
        shown[v].append(np.asarray(ctx.host_images(ctx.view(v, batch)[0])))
      if sum(len(s) for s in sizes) >= count:
        break
  sizes = np.concatenate(sizes)
  images = {v: np.concatenate(s) for v, s in shown.items()}
  files = []
  for i in range(min(count, _num_examples(data))):
    h, w = (int(x) for x in sizes[i])
    fig, axes = plt.subplots(1, len(views), figsize=(3.2 * len(views), 3.2 * h / max(w, 1) + 0.6), squeeze=False)
    for ax, v in zip(axes[0], views):
      k = draw_detections(ax, images[v][i][:h, :w], recs[(v, target)], i, class_names, score_threshold)
      ax.set_title(f"{ROW_TITLES.get(v, v)} ({k})", fontsize=8)
    fig.suptitle(f"{target}: detections scoring >= {score_threshold:g}", fontsize=9)
    fig.tight_layout()
    file = f"{name}_{i}.png"
    fig.savefig(ctx.workdir / file, dpi=80)
    plt.close(fig)
    files.append(file)
  return files
