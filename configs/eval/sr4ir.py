"""SR4IR's tables (its README: mIoU / COCO-style mAP on VOC / top-1 on CUB-200 or Stanford Cars, with
PSNR and SSIM) for the rows that configs/sr4ir.py trains, in `<runs>/<row>`:

    python -m rajax.evaluate --config configs/eval/sr4ir.py:task=cls,dataset=stanford_cars,runs=runs/sr4ir_cars \\
        --workdir runs/eval_sr4ir_cars --config.data.data_dir=$TFDS_DATA_DIR

Rows (directories under `runs`): hr (mode=recognizer_on_clean: the HR oracle), lr
(recognizer_on_input), sr (plain: S alone), s_then_t, t_then_s, joint, sr4ir; `rows` picks a subset.
Each row is read by its own task network T: the one its run trained, T->S's fixed one (the HR run's,
its recognizer.weights), and the HR row's T on the clean images.
  cls  the `alternatives` table: "top-1 (own R)" is each row's cell, "own R on clean" of the hr row is
       the HR oracle; the sr row is read by the HR run's T (`t_hr`).
  seg, det  the `segmentation` / `detection` table on VOC 2012 val with one column per trained T
       (`T_<row>`, the run_target of each row that trained one): a row's cell is its own T's column,
       the HR oracle the clean row of the `T_hr` column, T->S's the `T_hr` column of its row; the
       "own" columns gather those cells, one per row (the README's form).
LR images as in training: torch's bicubic without antialiasing, 8-bit (degrade.kernel "torch").
Every table gives each row's PSNR and SSIM against the clean image (seg/det: of each image's real
pixels, rajax.evaluate.quality), and LPIPS with `lpips=PATH` (or `--config.lpips.backbone=PATH`):
PATH is torchvision's AlexNet file, alexnet-owt-7be5be79.pth (SR4IR downloads it at run time; rajax
reads it only as a file you give), so each row reads as the README's: mIoU / mAP / top-1, PSNR, LPIPS.

Args: task (cls | seg | det), dataset (cls: cub200 | stanford_cars), runs, scale (4 | 8), rows, lpips
(the AlexNet backbone file; empty: no LPIPS column).
"""

import ml_collections

from rajax import config as config_lib
from rajax import evaluate

ROWS = ("hr", "lr", "sr", "s_then_t", "t_then_s", "joint", "sr4ir")
TRAINS_T = ("hr", "lr", "s_then_t", "joint", "sr4ir")   # the rows whose run trains a task network


def get_config(arg=None):
  a = config_lib.parse_arg(arg, task="cls", dataset="stanford_cars", runs="runs/sr4ir", scale=4, rows=",".join(ROWS),
                          lpips="")
  if a.task not in ("cls", "seg", "det"):
    raise config_lib.ConfigError(f"configs/eval/sr4ir.py: task={a.task!r} is not one of cls, seg, det.")
  rows = [r for r in a.rows.split(",") if r]
  unknown = sorted(set(rows) - set(ROWS))
  if unknown:
    raise config_lib.ConfigError(f"configs/eval/sr4ir.py: rows {unknown} are not among {', '.join(ROWS)}.")
  c = evaluate.base_config(task="sr")
  c.degrade.scale = int(a.scale)
  c.degrade.kernel = "torch"
  c.labels = "dataset"
  c.lpips.backbone = a.lpips   # LPIPS (alex) of every row against the clean image when given
  for r in rows:
    c.processors[r] = f"{a.runs}/{r}"
  E = ml_collections.ConfigDict
  if a.task == "cls":
    if a.dataset not in ("cub200", "stanford_cars"):
      raise config_lib.ConfigError(f"configs/eval/sr4ir.py: dataset={a.dataset!r} is cub200 or stanford_cars.")
    c.data.name, c.data.split = a.dataset, "test"
    c.data.resize, c.data.crop = 256, 224
    c.batch_size = 32
    c.targets.t_hr = evaluate.run_target(f"{a.runs}/hr")
    c.evals.sr4ir = E(dict(type="alternatives", processors=tuple(rows), source="t_hr", transfer=(),
                           title=f"SR4IR's rows on {a.dataset} (x{a.scale}): top-1 (%) by each row's own T"))
    return c
  for r in rows:
    if r in TRAINS_T:
      c.targets[f"T_{r}"] = evaluate.run_target(f"{a.runs}/{r}")
  targets = tuple(c.targets.keys())
  # the README's form: each row read by its own T (S alone and T->S by the HR run's; the clean images
  # by the HR run's: the oracle)
  own = {r: f"T_{r}" if r in TRAINS_T else "T_hr" for r in rows}
  own["clean"] = "T_hr"
  own = {v: t for v, t in own.items() if t in targets}
  if a.task == "seg":
    voc = E(dict(source="tfds", split="voc_seg:validation", data_dir="", size=(520, 1040), resize=520))
    c.batch_size = 4
    c.evals.sr4ir = E(dict(type="segmentation", processors=tuple(rows), targets=targets, labels="dataset",
                           data=voc, figures=2, paired_metric="miou", own=own,
                           title=f"SR4IR's rows on VOC 2012 val (x{a.scale}): mIoU (%) per task network T"))
  else:
    voc = E(dict(source="tfds", split="voc/2012:validation", data_dir="", size=(1000, 1000), min_size=600,
                 max_size=1000, max_boxes=64, label_space="contiguous", batch_size=0))
    c.batch_size = 4
    c.evals.sr4ir = E(dict(type="detection", processors=tuple(rows), targets=targets, labels="dataset",
                           metrics=("coco_map", "voc07_map11"), score_threshold=0.05, figures=2, data=voc, own=own,
                           title=f"SR4IR's rows on VOC 2012 val (x{a.scale}): COCO-style mAP (%) per task network T"))
  return c
