"""Segmentation in the evaluation suite: segmenters as targets, the paper's segmentation tables, label maps drawn.

    c.targets.hrnet = evaluate.segmenter("hrnet_w48", "hrnet_w48_cityscapes.pth", num_classes=19)
    c.targets.selfie = evaluate.segmenter("selfie")                      # a real person segmenter (its own weights)
    c.targets.ra_seg = evaluate.run_target("runs/cs_ra_joint")           # the segmenter a run trained
    c.evals.segmentation = ConfigDict(dict(type="segmentation", processors=("plain", "ra"),
                                           targets=("selfie",), data=ConfigDict(dict(source="photos"))))

The `segmentation` evaluator writes the form of the paper's Appendix G table and Table 18: rows are
the processing (the degraded input, each processor -- named with the recognizer its run was trained
with, so a P trained with HRNet-W48 on Cityscapes is Appendix G's and one trained with an ImageNet
classifier is Table 18's transfer -- and the clean image), columns are the evaluation segmenters,
cells mIoU and pixel accuracy from the confusion matrix summed over the images
(rajax.tasks.segmentation.scores), next to PSNR and SSIM.

Data (the evaluator's own `data` section; whole images, not the classification crops):
  source "photos"  whole photos without label maps: names of rajax.data.photos ("chelsea",
                   "darknet/person.jpg"), each resized with its aspect ratio kept (Pillow bilinear)
                   to fit the `size` canvas and padded at the bottom and right;
  source "tfds"    a prepared segmentation dataset through rajax.data.segmentation (`split`, e.g.
                   "cityscapes:validation" or "voc_seg:validation", `data_dir`): each image resized
                   so its short side is `resize` (0: the stored size) and padded to `size`.
Then degraded by the evaluation's task, exactly as the segmentation pipelines do.

Targets per pixel (`labels`): "dataset" (the data's label maps, 255 ignored; the segmenter's class
count must be the dataset's) or "recognizer": each segmenter's own argmax on the clean image
(rajax.tasks.segmentation.pseudo_targets, pixels below `confidence_threshold` ignored), so the clean
row is 100% by construction. "auto" picks "dataset" when the data has label maps. Padding is never
scored. Each row's image quality against the clean image (rajax.evaluate.quality, per image, then
averaged): PSNR and SSIM of each image's real pixels, and LPIPS when config.lpips.backbone is set
(over the canvas, the padding taken from the clean image), as SR4IR's tables give mIoU next to
PSNR and LPIPS.

Each (row, segmenter) record is the per-image confusion matrices [N, K, K] (cached), so the table's
figures are sums and the paired test has its per-image values: against the plain processor, a sign
test per image (`metrics.paired_test` of "worse" against "better": images gained, lost, exact
binomial p) of each image's mIoU (`paired_metric`: "miou", or "pixel_accuracy"). Per-class IoU goes
to a side table `<name>_per_class` (.md/.csv/.json); `figures` images get a figure each
(`<name>_<i>.png`): the first segmenter's predicted label maps on the degraded input, each of
`figure_processors` and the clean image, under the images, with a legend of the class colours.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from rajax import metrics as metrics_lib
from rajax import sharding
from rajax.evaluate import quality as quality_lib
from rajax.evaluate.context import CACHE_VERSION, CLEAN, INPUT, Context, EvalError, log
from rajax.evaluate.quality import real_pixels
from rajax.data import photos as photos_lib
from rajax.evaluate.report import Table, own_columns, pyplot, write_table
from rajax.methods import to_float_images

LABELS = ("auto", "dataset", "recognizer")
PAIRED = ("miou", "pixel_accuracy")
DEFAULT_DATA = dict(source="photos", photos=("chelsea", "coffee", "rocket", "grace_hopper", "flower"),
                    split="cityscapes:validation", data_dir="", size=(256, 256), resize=0, num_examples=-1,
                    batch_size=0)
ROW_TITLES = {INPUT: "input (degraded)", CLEAN: "clean image"}


# ==================================================================== data

@dataclasses.dataclass(frozen=True)
class PhotoCanvas(photos_lib.WholePhotos):
  """Whole photos without label maps, by name (`names` of rajax.data.photos: "chelsea",
  "darknet/dog.jpg"), each resized with its aspect ratio kept (Pillow bilinear) so it fits a `size` =
  (H, W) canvas: a random-access segmentation source (rajax.data.segmentation) whose images the
  pipeline pads."""

  size: tuple[int, int] = (256, 256)

  def record(self, image: np.ndarray, k: int) -> dict:
    return {"image": fit_to_canvas(image, self.size), "id": k}


def fit_to_canvas(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """`img` resized (Pillow bilinear, aspect ratio kept) to floor(h * s) x floor(w * s), s = min(H / h,
  W / w), so it fits the canvas `size` = (H, W) (rajax.data.detection's rule without min/max sizes)."""
  from rajax.data import detection as det_data
  h, w = img.shape[:2]
  nh, nw = det_data.resized_size(h, w, det_data.resize_scale(h, w, size=size), size)
  if (nh, nw) == (h, w):
    return np.asarray(img)
  return np.asarray(Image.fromarray(np.asarray(img)).resize((nw, nh), Image.BILINEAR))


def data_settings(cfg) -> dict:
  """The evaluator's data section over DEFAULT_DATA (unknown fields are an error)."""
  given = dict(cfg.get("data") or {})
  unknown = sorted(set(given) - set(DEFAULT_DATA))
  if unknown:
    raise EvalError(f"Unknown segmentation data field(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_DATA)}.")
  d = {**DEFAULT_DATA, **given}
  d["size"], d["photos"] = tuple(int(s) for s in d["size"]), tuple(d["photos"])
  if d["source"] not in ("photos", "tfds"):
    raise EvalError(f"segmentation data.source={d['source']!r}: use 'photos' (whole photos without label maps) or "
                    "'tfds' (a prepared segmentation dataset, e.g. split='cityscapes:validation').")
  return d


def problems(cfg, name: str) -> list[str]:
  """What is wrong with a segmentation evaluator's config section (for rajax.evaluate.validate)."""
  out = []
  try:
    d = data_settings(cfg)
    if len(d["size"]) != 2 or min(d["size"]) < 8:
      out.append(f"config.evals.{name}.data.size={d['size']} must be (height, width), each >= 8")
    if int(d["resize"]) < 0:
      out.append(f"config.evals.{name}.data.resize={d['resize']} must be >= 0 (0: the stored size)")
  except EvalError as e:
    out.append(f"config.evals.{name}: {e}")
  if cfg.get("labels", "auto") not in LABELS:
    out.append(f"config.evals.{name}.labels={cfg.get('labels')!r} must be one of {', '.join(LABELS)}")
  if cfg.get("paired_metric", "miou") not in PAIRED:
    out.append(f"config.evals.{name}.paired_metric={cfg.get('paired_metric')!r} must be one of {', '.join(PAIRED)}")
  if not 0.0 <= float(cfg.get("confidence_threshold", 0.0)) <= 1.0:
    out.append(f"config.evals.{name}.confidence_threshold={cfg.get('confidence_threshold')} must be in [0, 1]")
  return out


def make_source(d: dict):
  if d["source"] == "photos":
    if not d["photos"]:
      raise EvalError("The segmentation evaluator's data.photos is empty: name at least one photo "
                      "(e.g. 'chelsea' or 'darknet/person.jpg').")
    return PhotoCanvas(split="test", names=tuple(d["photos"]), size=tuple(d["size"]))
  from rajax.data import segmentation as seg_data
  return seg_data.segmentation_source(d["split"], data_dir=d["data_dir"] or None)


@dataclasses.dataclass
class _Data:
  """One segmentation evaluation's images: settings, source, pipeline spec, degradation, cache keys."""

  settings: dict
  source: Any
  spec: Any
  degradation: Any
  key: str
  clean_key: str

  @property
  def annotated(self) -> bool:
    return bool(getattr(self.source, "annotated", True))

  @property
  def num_examples(self) -> int:
    n = len(self.source)
    return n if self.settings["num_examples"] < 0 else min(n, self.settings["num_examples"])


def _data(ctx: Context, cfg, degradation=None) -> _Data:
  """The evaluator's images, degraded by `degradation` (default: the evaluation's task)."""
  from rajax.data import DataError
  from rajax.data import segmentation as seg_data
  d = data_settings(cfg)
  deg = ctx.main.degradation if degradation is None else degradation
  # photos come fitted to the canvas: the pipeline keeps their size; dataset images get `resize`
  resize = 0 if d["source"] == "photos" else int(d["resize"])
  try:
    spec = seg_data.SegmentationSpec(size=d["size"], resize=resize, eval_resize=resize)
    spec.check_degradation(deg)
  except DataError as e:
    raise EvalError(f"evals.<segmentation>.data: {e}") from None
  source = make_source(d)
  base = {k: v for k, v in d.items() if k != "batch_size"}
  deg_key = dataclasses.asdict(deg)
  if deg.task != "denoise":
    deg_key.pop("noise")
  return _Data(d, source, spec, deg, json.dumps([base, deg_key, ctx.config.seed], sort_keys=True),
               json.dumps([base, "clean"], sort_keys=True))


def _batches(ctx: Context, data: _Data):
  """(global batch, example indices of its rows, -1 for padding) over the segmentation images."""
  from rajax.data import segmentation as seg_data
  gb = data.settings["batch_size"] or ctx.config.batch_size
  sharding.check_batch_size(gb, ctx.mesh, "evals.<segmentation>.data.batch_size")
  ds = seg_data.segmentation_eval_dataset(data.source, data.spec, data.degradation, global_batch=gb,
                                          seed=ctx.config.seed, num_examples=data.settings["num_examples"],
                                          process_index=jax.process_index(), process_count=jax.process_count(),
                                          threads=2)
  n = data.num_examples
  pc, local_b = jax.process_count(), gb // jax.process_count()
  stage = data.degradation.device_stage(ctx.config.seed)
  for j, local in enumerate(ds):
    positions = j * local_b + np.arange(local_b)
    rows = np.concatenate([h + pc * positions for h in range(pc)])
    batch = sharding.global_batch(local, ctx.mesh)
    if stage is not None:
      batch = ctx._jit(("device_stage", stage), stage, (ctx.batched,), ctx.batched)(batch)
    yield batch, np.where(rows < n, rows, -1)


# ==================================================================== device functions

def clean_targets(segmenter, clean: jax.Array, image_size: jax.Array, confidence_threshold: float) -> jax.Array:
  """Label maps [B, H, W]: the segmenter's argmax on the clean image (pixels below the confidence
  threshold and outside the real image IGNORE_LABEL)."""
  from rajax.tasks import segmentation as seg_task
  labels, _ = seg_task.pseudo_targets(segmenter(clean), confidence_threshold=confidence_threshold)
  return jnp.where(real_pixels(image_size, labels.shape[1:]), labels, seg_task.IGNORE_LABEL)


def image_matrices(predictions: jax.Array, targets: jax.Array, num_classes: int, mask: jax.Array) -> jax.Array:
  """Per-image confusion matrices [B, K, K] int32 (rajax.tasks.segmentation.confusion_matrix of each image)."""
  from rajax.tasks import segmentation as seg_task
  one = lambda p, t, m: seg_task.confusion_matrix(p[None], t[None], num_classes, mask=m[None])
  return jax.vmap(one)(predictions, targets, mask)


# ==================================================================== the pass over the data

def _segmenter(ctx: Context, name: str, evaluator: str):
  from rajax.segmentation.segmenter import Segmenter
  t = ctx.target(name)
  if not t.on_device or not isinstance(t.recognizer, Segmenter):
    raise EvalError(f"evals.{evaluator}: target {name!r} is not a segmenter; the segmentation table's targets are "
                    "segmenters (evaluate.segmenter(NAME), or a run that trained one). Evaluate classifiers with "
                    "the accuracy evaluator, detectors with the detection evaluator.")
  return t


def _record_key(ctx: Context, data: _Data, view: str, target: str | None, labels: str, threshold: float) -> str:
  dkey = data.clean_key if view == CLEAN else data.key
  parts = [CACHE_VERSION, "segmentation", ctx.view_key(view), dkey]
  if target == "quality":   # of the real pixels; with LPIPS (and its weights) other records than without
    return json.dumps(parts + ["quality", "real pixels"] + ([ctx.lpips_key()] if ctx.lpips_key() else []))
  if target is None:
    return json.dumps([CACHE_VERSION, "segmentation", "data", data.clean_key])
  return json.dumps(parts + [ctx.target(target).key, labels, threshold if labels == "recognizer" else None])


def records(ctx: Context, data: _Data, views: Sequence[str], tnames: Sequence[str], labels: str,
            threshold: float, what: str = "") -> dict:
  """{(view, target): {"matrix": [N, K, K] per-image confusion matrices}, (view, "quality"): {"psnr",
  "ssim"(, "lpips")} [N], "data": {"mask", "image_size"}}, read from the cache or computed in one pass."""
  wanted = [(v, "quality") for v in views] + [(v, t) for v in views for t in tnames] + [("data", None)]
  out, missing = {}, []
  for v, t in wanted:
    key = _record_key(ctx, data, CLEAN if v == "data" else v, t, labels, threshold)
    rec = ctx._cache_read(key)
    if rec is None:
      missing.append((v, t, key))
    else:
      out[(v, t) if t else v] = rec
      ctx.stats["cached"] += 1
  if not missing:
    return out
  need_views = list(dict.fromkeys(v for v, t, _ in missing if t))
  need_targets = list(dict.fromkeys(t for _, t, _ in missing if t not in (None, "quality")))
  rep, bat = ctx.replicated, ctx.batched
  cm_fns = {t: ctx._jit(("seg_matrix", t), lambda s, x, y, m, k=ctx.target(t).num_classes:
                        image_matrices(jnp.argmax(s(x), axis=-1), y, k, m), (rep, bat, bat, bat), rep)
            for t in need_targets}
  target_fn = ctx._jit(("seg_targets", threshold), lambda s, y, size: clean_targets(s, y, size, threshold),
                       (rep, bat, bat), bat)
  distance = ctx.lpips_distance()
  quality_fn = ctx._jit(("canvas_quality", ctx.lpips_settings()),
                        lambda a, y, size: quality_lib.canvas_quality(a, to_float_images(y), size, distance),
                        (bat, bat, bat), rep)
  log(f"{what + ': ' if what else ''}label maps of {', '.join(need_targets) or 'no segmenter'} on "
      f"{data.num_examples} images for {', '.join(need_views) or 'the data'}")
  parts: dict = {(v, t): {} for v, t, _ in missing}
  rows_all = []
  with jax.set_mesh(ctx.mesh):
    for batch, rows in _batches(ctx, data):
      rows_all.append(rows)
      if ("data", None) in parts:
        for k in ("mask", "image_size"):
          parts[("data", None)].setdefault(k, []).append(np.asarray(ctx.host_images(batch[k])))
      truth = {}
      for t in need_targets:
        if labels == "dataset":
          truth[t] = batch["label_map"]
        else:
          clean = ctx.view(CLEAN, batch)[1]
          truth[t] = target_fn(ctx.target(t).recognizer, clean, batch["image_size"])
      for v in need_views:
        shown, seen = ctx.view(v, batch)
        if seen.shape != batch["target"].shape:
          p, c = ctx.processor(v), ctx.config
          trained = p.task + (f" x{p.train_config.degrade.scale}" if p.task == "sr" else "")
          asked = c.task + (f" x{c.degrade.scale}" if c.task == "sr" else "")
          raise EvalError(f"Processor {v!r} gives {tuple(seen.shape[1:3])} images for the "
                          f"{tuple(batch['target'].shape[1:3])} canvas: it was trained for {trained}, the evaluation "
                          f"degrades by {asked}; evaluate it with its own task (--config.task, "
                          "--config.degrade.scale).")
        for (pv, pt), store in parts.items():
          if pv != v or pt is None:
            continue
          if pt == "quality":
            q = jax.device_get(quality_fn(shown, batch["target"], batch["image_size"]))
            for k, a in q.items():
              store.setdefault(k, []).append(np.asarray(a))
          else:
            m = cm_fns[pt](ctx.target(pt).recognizer, seen, truth[pt], batch["mask"])
            store.setdefault("matrix", []).append(np.asarray(jax.device_get(m), np.int64))
  rows = np.concatenate(rows_all)
  order = np.argsort(np.where(rows < 0, np.iinfo(np.int64).max, rows), kind="stable")[:data.num_examples]
  for v, t, key in missing:
    rec = {k: np.concatenate(a)[order] for k, a in parts[(v, t)].items()}
    ctx._cache_write(key, rec)
    ctx.stats["computed"] += 1
    out[(v, t) if t else v] = rec
  return out


# ==================================================================== figures from confusion matrices

def per_image_scores(matrices: np.ndarray) -> dict[str, np.ndarray]:
  """{"miou", "pixel_accuracy"} [N] of per-image confusion matrices [N, K, K] (NaN: no labelled pixel);
  an image's mIoU averages the classes present in its targets or its predictions."""
  from rajax.tasks import segmentation as seg_task
  out = {"miou": [], "pixel_accuracy": []}
  for m in np.asarray(matrices, np.int64):
    s = seg_task.scores(m)
    out["miou"].append(float(s["miou"]) if m.sum() else float("nan"))
    out["pixel_accuracy"].append(float(s["pixel_accuracy"]))
  return {k: np.asarray(v, np.float64) for k, v in out.items()}


def _labels(cfg, data: _Data, name: str) -> str:
  labels = cfg.get("labels", "auto")
  if labels not in LABELS:
    raise EvalError(f"evals.{name}.labels={labels!r} must be one of {', '.join(LABELS)}.")
  if labels == "auto":
    return "dataset" if data.annotated else "recognizer"
  if labels == "dataset" and not data.annotated:
    raise EvalError(f"evals.{name}: labels='dataset' but data.source={data.settings['source']!r} has no label maps; "
                    "set labels='recognizer' (each segmenter's own label maps on the clean image).")
  return labels


def _row_title(ctx: Context, view: str) -> tuple[str, str]:
  if view in ROW_TITLES:
    return ROW_TITLES[view], "-"
  p = ctx.processor(view)
  return f"{view} ({p.title})", p.loss_recognizer or "none"


# ==================================================================== the evaluator

def segmentation(ctx: Context, cfg, name: str) -> Table:
  """The segmentation table (Appendix G, Table 18): rows processing, columns segmenters, cells mIoU."""
  from rajax.tasks import segmentation as seg_task
  procs = ctx.processor_names(cfg.get("processors"))
  tnames = list(cfg.get("targets") or ctx.target_names(None, task="segmentation"))
  if not tnames:
    raise EvalError(f"evals.{name}: no segmenter targets; add one, e.g. c.targets.selfie = "
                    f"evaluate.segmenter('selfie'), and list it in evals.{name}.targets.")
  paired_metric = cfg.get("paired_metric", "miou")
  if paired_metric not in PAIRED:
    raise EvalError(f"evals.{name}.paired_metric={paired_metric!r} must be one of {', '.join(PAIRED)}.")
  threshold = float(cfg.get("confidence_threshold", 0.0))
  data = _data(ctx, cfg)
  labels = _labels(cfg, data, name)
  for t in tnames:
    seg = _segmenter(ctx, t, name).recognizer
    if labels == "dataset" and seg.num_classes != len(data.source.classes):
      raise EvalError(f"evals.{name}: segmenter {t!r} has {seg.num_classes} classes but the data "
                      f"({data.settings['split']}) has {len(data.source.classes)}; evaluate a segmenter of the "
                      f"dataset's classes (e.g. num_classes={len(data.source.classes)} with its weights), or set "
                      "labels='recognizer'.")
  views = [INPUT] + procs + [CLEAN]
  recs = records(ctx, data, views, tnames, labels, threshold, what=name)
  keep = recs["data"]["mask"] > 0
  plain = next((v for v in procs if ctx.processor(v).is_baseline), None)

  qcols, qformats = quality_lib.columns(all("lpips" in recs[(v, "quality")] for v in views))
  cols = ["processing", "loss model"] + qcols
  cols += [f"{t} {k}" for t in tnames for k in ("mIoU", "pixel acc")]
  cols += [f"{t} vs plain" for t in tnames] if plain else []
  formats = {"processing": "text", "loss model": "text"} | qformats
  formats |= {f"{t} {k}": "pct" for t in tnames for k in ("mIoU", "pixel acc")} | {f"{t} vs plain": "text" for t in tnames}
  table = Table(name, cfg.get("title", "Segmentation: mIoU and pixel accuracy (%) per processing and evaluation "
                                       "segmenter (Appendix G, Table 18)"), cols, formats)
  per_image, per_class_rows, paired = {}, [], {}
  for v in views:
    title, loss = _row_title(ctx, v)
    row = {"processing": title, "loss model": loss, "view": v,
           **quality_lib.cells(recs[(v, "quality")], keep, clean=v == CLEAN)}
    for t in tnames:
      seg = ctx.target(t).recognizer
      matrices = recs[(v, t)]["matrix"][keep]
      ev = seg_task.Evaluator.for_segmenter(seg)
      ev.add_matrix(matrices, num_images=int(keep.sum()))
      res = ev.result()
      row[f"{t} mIoU"], row[f"{t} pixel acc"] = res["miou"], res["pixel_accuracy"]
      per_image[(v, t)] = per_image_scores(matrices)
      for cname, c in ev.per_class().items():
        per_class_rows.append({"segmenter": t, "class": cname, "processing": v, **c})
    table.rows.append(row)
  if plain:
    for row in table.rows:
      v = row["view"]
      if v not in procs or v == plain:
        continue
      for t in tnames:
        a, b = per_image[(plain, t)][paired_metric], per_image[(v, t)][paired_metric]
        scored = np.isfinite(a) & np.isfinite(b)
        test = metrics_lib.paired_test(a[scored] > b[scored], b[scored] > a[scored])
        paired.setdefault(v, {})[t] = test
        row[f"{t} vs plain"] = metrics_lib.paired_summary(test)
    table.extra["paired_vs_plain"] = paired
  n = int(keep.sum())
  if labels == "dataset":
    table.notes.append(f"{n} images of {data.settings['split']}; targets: the dataset's label maps (255 ignored).")
  else:
    table.notes.append(f"{n} whole images; targets: each segmenter's own argmax on the clean image"
                       + (f" (pixels of top probability < {threshold:g} ignored)" if threshold else "")
                       + ", so the clean row is 100% by construction.")
  table.notes.append("Cells: mIoU (the mean over classes present in the targets or predictions of the IoU from the "
                     "confusion matrix summed over all images) and pixel accuracy. PSNR and SSIM of each image's real "
                     "pixels against the clean image" + (", LPIPS over its canvas with the clean image's padding"
                                                          if "LPIPS" in cols else "")
                     + ", averaged over the images. \"loss model\": the recognizer each processor was trained with.")
  if plain:
    metric = "mIoU" if paired_metric == "miou" else "pixel accuracy"
    table.notes.append(f"\"vs plain\": images on which a processor's output gets a higher per-image {metric} than "
                       f"{plain}'s (+), a lower one (-), and the exact sign test's p-value (ties left out).")
  side = _per_class_table(name, per_class_rows, views)
  if jax.process_index() == 0:
    write_table(ctx.workdir, side)
  table.notes.append(f"Per-class IoU: {side.name}.md.")
  table.extra["per_class"] = per_class_rows
  table.extra["per_image"] = {f"{v}|{t}": {k: [None if not np.isfinite(x) else float(x) for x in a]
                                            for k, a in s.items()} for (v, t), s in per_image.items()}
  table.extra["labels"] = labels
  nfig = int(cfg.get("figures", 0))
  if nfig > 0 and jax.process_index() == 0:
    fig_procs = [p for p in (cfg.get("figure_processors") or procs[:2]) if p in procs]
    table.figures += draw_figures(ctx, data, name, tnames[0], fig_procs, labels, threshold, nfig)
  own_columns(table, dict(cfg.get("own") or {}), ("mIoU",), where=f"config.evals.{name}.own")
  return table


def _per_class_table(name: str, rows: list[dict], views: Sequence[str]) -> Table:
  """Per-class IoU per segmenter and class (rows), one column per processing; classes with target pixels."""
  grouped: dict = {}
  for r in rows:
    g = grouped.setdefault((r["segmenter"], r["class"]), {"segmenter": r["segmenter"], "class": r["class"],
                                                           "pixels": int(r["pixels"])})
    g[r["processing"]] = r["iou"]
  cols = ["segmenter", "class", "pixels"] + list(views)
  kept = [g for g in grouped.values() if g["pixels"] > 0]
  return Table(f"{name}_per_class", "Per-class IoU (%) per processing", cols,
               {"segmenter": "text", "class": "text", "pixels": "num"} | {v: "pct" for v in views},
               rows=kept, notes=["Classes with at least one target pixel; \"pixels\": their target pixels."])


# ==================================================================== figures

def class_colours(num_classes: int) -> np.ndarray:
  """float [K, 3] RGB colours, one per class (matplotlib's tab10, tab20 for more classes, then an HSV ring)."""
  from matplotlib import colormaps
  if num_classes <= 10:
    return np.asarray(colormaps["tab10"](np.arange(num_classes))[:, :3])
  if num_classes <= 20:
    return np.asarray(colormaps["tab20"](np.arange(num_classes))[:, :3])
  return np.asarray(colormaps["hsv"](np.linspace(0, 1, num_classes, endpoint=False))[:, :3])


def colourise(label_map: np.ndarray, colours: np.ndarray) -> np.ndarray:
  """Label map [H, W] -> RGB [H, W, 3]: each class its colour, IGNORE_LABEL (and other ids) white."""
  out = np.ones((*label_map.shape, 3))
  ok = (label_map >= 0) & (label_map < len(colours))
  out[ok] = colours[label_map[ok]]
  return out


def draw_figures(ctx: Context, data: _Data, name: str, target: str, procs: Sequence[str], labels: str,
                 threshold: float, count: int) -> list[str]:
  """`<name>_<i>.png` for the first `count` images: images (top) and `target`'s label maps (bottom) of the
  degraded input, each of `procs` and the clean image, and the targets, with a legend of the classes."""
  from matplotlib.patches import Patch
  plt = pyplot()
  views = [INPUT] + list(procs) + [CLEAN]
  t = ctx.target(target)
  seg, colours = t.recognizer, class_colours(t.recognizer.num_classes)
  predict = ctx._jit(("seg_predict", target), lambda s, x: jnp.argmax(s(x), axis=-1).astype(jnp.int32),
                     (ctx.replicated, ctx.batched), ctx.replicated)
  target_fn = ctx._jit(("seg_targets", threshold), lambda s, y, size: clean_targets(s, y, size, threshold),
                       (ctx.replicated, ctx.batched, ctx.batched), ctx.batched)
  shown: dict = {v: [] for v in views}
  maps: dict = {v: [] for v in views}
  truth, sizes = [], []
  with jax.set_mesh(ctx.mesh):
    for batch, rows in _batches(ctx, data):
      sizes.append(np.asarray(ctx.host_images(batch["image_size"])))
      if labels == "dataset":
        truth.append(np.asarray(ctx.host_images(batch["label_map"])))
      else:
        truth.append(np.asarray(ctx.host_images(target_fn(seg, ctx.view(CLEAN, batch)[1], batch["image_size"]))))
      for v in views:
        a, b = ctx.view(v, batch)
        shown[v].append(np.asarray(ctx.host_images(a)))
        maps[v].append(np.asarray(jax.device_get(predict(seg, b))))
      if sum(len(s) for s in sizes) >= count:
        break
  sizes, truth = np.concatenate(sizes), np.concatenate(truth)
  images = {v: np.concatenate(s) for v, s in shown.items()}
  preds = {v: np.concatenate(s) for v, s in maps.items()}
  files = []
  for i in range(min(count, data.num_examples)):
    h, w = (int(x) for x in sizes[i])
    if h == 0 or w == 0:
      continue
    cols = len(views) + 1
    fig, axes = plt.subplots(2, cols, figsize=(2.8 * cols, 2 * 2.8 * h / max(w, 1) + 1.0), squeeze=False)
    tgt = truth[i][:h, :w]
    for j, v in enumerate(views):
      pred = preds[v][i][:h, :w]
      m = np.bincount((tgt.astype(np.int64) * seg.num_classes + pred)[tgt < seg.num_classes].ravel(),
                      minlength=seg.num_classes ** 2).reshape(seg.num_classes, seg.num_classes)
      miou = per_image_scores(m[None])["miou"][0]
      axes[0, j].imshow(np.clip(images[v][i][:h, :w], 0, 1), interpolation="nearest")
      axes[0, j].set_title(ROW_TITLES.get(v, v), fontsize=8)
      axes[1, j].imshow(colourise(pred, colours), interpolation="nearest")
      axes[1, j].set_title(f"mIoU {100 * miou:.1f}" if np.isfinite(miou) else "mIoU -", fontsize=8)
    axes[0, -1].axis("off")
    axes[1, -1].imshow(colourise(tgt, colours), interpolation="nearest")
    axes[1, -1].set_title("targets" + (" (dataset)" if labels == "dataset" else " (clean argmax)"), fontsize=8)
    for ax in axes.ravel():
      ax.set_xticks([])
      ax.set_yticks([])
    present = sorted(set(np.unique(tgt).tolist()) | {int(c) for v in views for c in np.unique(preds[v][i][:h, :w])})
    present = [c for c in present if 0 <= c < seg.num_classes]
    handles = [Patch(facecolor=colours[c], label=seg.class_names[c]) for c in present]
    axes[0, -1].legend(handles=handles, loc="center", fontsize=7, title="classes", title_fontsize=7, frameon=False)
    fig.suptitle(f"{target}: predicted label maps", fontsize=9)
    fig.tight_layout()
    file = f"{name}_{i}.png"
    fig.savefig(ctx.workdir / file, dpi=80)
    plt.close(fig)
    files.append(file)
  return files
