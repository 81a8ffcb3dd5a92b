"""The demo's task transfer between classification and detection, with real COCO detectors.

    python -m rajax.demo --workdir runs/demo                 # (--no-detection leaves it out)

After the classification evaluation, each task's plain and RA processors (trained with the classifier
MobileNetV2) and the detection run (P for SR trained with CenterNet as the loss, rajax.demo.DETECTION_RUN)
are evaluated by the detection evaluator of the evaluation suite (configs/eval/photos_detection.py)
with CenterNet-MobileNetV3 and NanoDet (real COCO weights, fetched by `python -m rajax.assets fetch`)
on the whole test photos. The photos have no boxes, so each detector's targets are its own detections
on the clean photo; a row's mAP says how much of what the detector sees in the clean photo it still
sees in the processed one. Per-photo AP is too noisy to pair, so the paired comparison with plain
processing is a sign test per photo on the number of clean-photo detections recovered (same class,
IoU > 0.5, scoring above the threshold).
"""

from __future__ import annotations

import pathlib
import time
from typing import Sequence

from rajax.demo import ROOT, TASK_TITLES, title

CONFIG = ROOT / "configs" / "eval" / "photos_detection.py"
DETECTORS = ("centernet", "nanodet")


def check_assets(quick: bool) -> None:
  """An AssetError naming `python -m rajax.assets fetch` if a detector's graph or a photo is missing."""
  from rajax import assets
  from rajax.detection import centernet, nanodet
  graphs = (centernet.ASSET, nanodet.ASSET)
  for name in (*graphs, *(g.replace(".json", ".bin") for g in graphs)):
    assets.path(name)


def eval_config(workdir: pathlib.Path, task: str, modes: Sequence[str], quick: bool, *, split: str = "test",
                detectors: Sequence[str] = DETECTORS):
  from rajax import config as config_lib
  return config_lib.load(f"{CONFIG}:runs={workdir},task={task},modes={','.join(modes)},quick={quick},split={split},"
                         f"detectors={','.join(detectors)}")


def evaluate_split(workdir: pathlib.Path, task: str, modes: Sequence[str], quick: bool, *, split: str,
                   detectors: Sequence[str] = DETECTORS) -> dict:
  """The detection Table's JSON for `modes` of `task` on `split`'s photos (WORKDIR/eval/detection_<split>_<task>)."""
  from rajax import evaluate
  table = evaluate.run(eval_config(workdir, task, modes, quick, split=split, detectors=detectors),
                       workdir / "eval" / f"detection_{split}_{task}")["detection"]
  js = table.to_json()
  return dict(rows=[dict(r, view=row["view"]) for r, row in zip(js["rows"], table.rows)], notes=js["notes"])


def evaluate_detection(workdir: pathlib.Path, tasks: Sequence[str], modes: Sequence[str], quick: bool) -> dict:
  """{task: the detection Table's JSON} measured once on the test photos in WORKDIR/eval/detection_<task>
  (figures copied to WORKDIR): `modes`' runs, and the detection run for DETECTION_TASK when it was trained."""
  import shutil

  from rajax import evaluate
  from rajax.demo import DETECTION_RUN, DETECTION_TASK
  out = {}
  for task in tasks:
    t0 = time.perf_counter()
    where = workdir / "eval" / f"detection_{task}"
    runs = list(modes) + ([DETECTION_RUN] if task == DETECTION_TASK and (workdir / task / DETECTION_RUN).exists() else [])
    table = evaluate.run(eval_config(workdir, task, runs, quick), where)["detection"]
    figures = []
    for f in table.figures:
      name = f"detection_{task}_{f.split('_')[-1]}"
      shutil.copyfile(where / f, workdir / name)
      figures.append(name)
    js = table.to_json()
    out[task] = dict(rows=[dict(r, view=row["view"]) for r, row in zip(js["rows"], table.rows)], notes=js["notes"],
                     extra={k: js["extra"].get(k, {}) for k in ("paired_vs_plain", "paired_boxes_vs_plain")},
                     figures=figures,
                     seconds=time.perf_counter() - t0)
    print(f"[demo] detection transfer {task} in {time.perf_counter() - t0:.0f} s: " + ", ".join(
        f"{r['view']} {_cell(r.get('centernet VOC07 mAP'))}/{_cell(r.get('nanodet VOC07 mAP'))}" for r in table.rows),
        flush=True)
  return out


def _cell(v) -> str:
  return "-" if v is None or v != v else f"{100 * v:.1f}"


def report_lines(detection: dict) -> list[str]:
  """The report's "Transfer to detection" section: per task, mAP per row and the sign test against plain."""
  if not detection:
    return []
  some = next(iter(detection.values()))
  notes = some["notes"]
  lines = ["## Transfer to detection (in the form of the paper's Table 4)", "",
           "Processors trained with the classifier MobileNetV2, evaluated by two real COCO detectors never used in "
           "training: CenterNet-MobileNetV3 and NanoDet. " + notes[0] + " Cells: VOC07 mAP@0.5 (11-point) / COCO "
           "mAP@[.5:.95] (%); \"recovered\": the clean-image boxes a row's confident detections find again (%). "
           "Per-photo AP is too noisy to pair, so the paired comparison with plain processing is on recovered boxes: "
           "\"vs plain\" gives the photos with more of them than plain processing's output (+), fewer (-), and the "
           "exact sign test's p (the test the claims below use), then the same per box with McNemar's p (optimistic: "
           "the boxes of one photo are not independent).", ""]
  for task, table in detection.items():
    lines += [f"**{TASK_TITLES.get(task, task)}** ({table['seconds']:.0f} s)", "",
              "| processing | " + " | ".join(f"{d} mAP VOC07 / COCO | {d} recovered | {d} vs plain" for d in DETECTORS)
              + " |", "|---|" + "---:|" * (3 * len(DETECTORS))]
    for r in table["rows"]:
      cells = []
      for d in DETECTORS:
        photos, boxes = r.get(f"{d} vs plain"), r.get(f"{d} boxes vs plain")
        cells += [f"{_cell(r.get(f'{d} VOC07 mAP'))} / {_cell(r.get(f'{d} COCO mAP'))}", _cell(r.get(f"{d} recovered")),
                  f"photos {photos}; boxes {boxes}" if photos else ""]
      lines.append(f"| {_title(r)} | " + " | ".join(cells) + " |")
    lines.append("")
  lines += claims(detection) + [""]
  for table in detection.values():
    lines += [f"![{f}]({f})" for f in table["figures"]]
  return lines + [""]


def _title(row: dict) -> str:
  return title(row["view"])


def claims(detection: dict) -> list[str]:
  """Whether RA's gain carries over to each detector, per task, by the sign test on recovered boxes."""
  from rajax.demo.report import SIGNIFICANCE
  lines = []
  for task, table in detection.items():
    rows = {r["view"]: r for r in table["rows"]}
    if "ra" not in rows or "plain" not in rows:
      continue
    paired = table["extra"].get("paired_vs_plain", {}).get("ra", {})
    parts = []
    for d in DETECTORS:
      gain = (rows["ra"][f"{d} VOC07 mAP"] or 0) - (rows["plain"][f"{d} VOC07 mAP"] or 0)
      test = paired.get(d)
      if gain <= 0:
        verdict = "no gain"
      elif test and test["p"] < SIGNIFICANCE:
        verdict = "a gain beyond chance"
      else:
        verdict = "ahead by no more than chance"
      parts.append(f"{d} {gain * 100:+.1f} mAP points ({verdict}"
                   + (f"; photos +{test['gained']}/-{test['lost']}, p = {test['p']:.2g}" if test else "") + ")")
    lines.append(f"- **{TASK_TITLES.get(task, task)}**, RA vs plain on detectors: " + "; ".join(parts) + ".")
  return lines
