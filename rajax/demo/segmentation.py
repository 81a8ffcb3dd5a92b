"""The demo's task transfer to segmentation: its processors, trained with a classifier, evaluated by
real person segmenters.

    python -m rajax.demo --workdir runs/demo                 # (--no-segmentation leaves it out)

After the classification evaluation, each task's plain and RA processors (trained with the classifier
MobileNetV2; for SR also the one trained with CenterNet) are evaluated by the segmentation evaluator of
the evaluation suite (configs/eval/photos_segmentation.py) with the person / background segmenters
`selfie` and `meet` (real weights, fetched by `python -m rajax.assets fetch`) on the whole test photos.
The photos have no masks, so each segmenter's targets are its own label maps on the clean photo; a
row's mIoU says how much of what the segmenter sees in the clean photo it still sees in the
processed one. The paired comparison with plain processing is a sign test per photo on its mIoU.
"""

from __future__ import annotations

import pathlib
import shutil
import time
from typing import Sequence

from rajax.demo import DETECTION_RUN, DETECTION_TASK, ROOT, TASK_TITLES, title

CONFIG = ROOT / "configs" / "eval" / "photos_segmentation.py"
SEGMENTERS = ("selfie", "meet")


def check_assets() -> None:
  """An AssetError naming `python -m rajax.assets fetch` if a segmenter's graph is missing."""
  from rajax import assets
  for name in SEGMENTERS:
    for ext in ("json", "bin"):
      assets.path(f"human-models/{name}.{ext}")


def eval_config(workdir: pathlib.Path, task: str, modes: Sequence[str], quick: bool):
  from rajax import config as config_lib
  return config_lib.load(f"{CONFIG}:runs={workdir},task={task},modes={','.join(modes)},quick={quick}")


def evaluate_segmentation(workdir: pathlib.Path, tasks: Sequence[str], modes: Sequence[str], quick: bool) -> dict:
  """{task: the segmentation Table's JSON} measured once on the test photos in WORKDIR/eval/segmentation_<task>
  (figures copied to WORKDIR): `modes`' runs, and the detection run for DETECTION_TASK when it was trained."""
  from rajax import evaluate
  out = {}
  for task in tasks:
    t0 = time.perf_counter()
    where = workdir / "eval" / f"segmentation_{task}"
    runs = list(modes) + ([DETECTION_RUN] if task == DETECTION_TASK and (workdir / task / DETECTION_RUN).exists() else [])
    table = evaluate.run(eval_config(workdir, task, runs, quick), where)["segmentation"]
    figures = []
    for f in table.figures:
      name = f"segmentation_{task}_{f.split('_')[-1]}"
      shutil.copyfile(where / f, workdir / name)
      figures.append(name)
    js = table.to_json()
    out[task] = dict(rows=[dict(r, view=row["view"]) for r, row in zip(js["rows"], table.rows)], notes=js["notes"],
                     paired=js["extra"].get("paired_vs_plain", {}), figures=figures,
                     seconds=time.perf_counter() - t0)
    print(f"[demo] segmentation transfer {task} in {time.perf_counter() - t0:.0f} s: " + ", ".join(
        f"{r['view']} {_cell(r.get('selfie mIoU'))}/{_cell(r.get('meet mIoU'))}" for r in table.rows), flush=True)
  return out


def _cell(v) -> str:
  return "-" if v is None or v != v else f"{100 * v:.1f}"


def report_lines(segmentation: dict | None) -> list[str]:
  """The report's "Transfer to segmentation" section: mIoU per row and the sign test against plain."""
  if not segmentation:
    return []
  notes = next(iter(segmentation.values()))["notes"]
  lines = ["## Transfer to segmentation (in the form of the paper's Table 18)", "",
           "Processors trained with the classifier MobileNetV2 (and, for SR, with the detector CenterNet), evaluated "
           "by two real person / background segmenters never used in training, selfie and meet. " + notes[0]
           + " Cells: mIoU (%) of person and background, pixel accuracy (%); \"vs plain\": photos with a higher "
           "per-photo mIoU than plain processing's output (+), lower (-), and the exact sign test's p.", ""]
  for task, table in segmentation.items():
    lines += [f"**{TASK_TITLES.get(task, task)}** ({table['seconds']:.0f} s)", "",
              "| processing | " + " | ".join(f"{s} mIoU | {s} pixel acc | {s} vs plain" for s in SEGMENTERS) + " |",
              "|---|" + "---:|" * (3 * len(SEGMENTERS))]
    for r in table["rows"]:
      cells = []
      for s in SEGMENTERS:
        cells += [_cell(r.get(f"{s} mIoU")), _cell(r.get(f"{s} pixel acc")), r.get(f"{s} vs plain") or ""]
      lines.append(f"| {title(r['view'])} | " + " | ".join(cells) + " |")
    lines.append("")
  lines += claims(segmentation) + [""]
  for table in segmentation.values():
    lines += [f"![{f}]({f})" for f in table["figures"]]
  return lines + [""]


def claims(segmentation: dict | None) -> list[str]:
  """Whether RA's gain carries over to each segmenter, per task, by the sign test on per-photo mIoU."""
  from rajax.demo.report import SIGNIFICANCE
  lines = []
  for task, table in (segmentation or {}).items():
    rows = {r["view"]: r for r in table["rows"]}
    if "ra" not in rows or "plain" not in rows:
      continue
    parts = []
    for s in SEGMENTERS:
      gain = (rows["ra"][f"{s} mIoU"] or 0) - (rows["plain"][f"{s} mIoU"] or 0)
      test = table["paired"].get("ra", {}).get(s)
      verdict = ("no gain" if gain <= 0 else "a gain beyond chance" if test and test["p"] < SIGNIFICANCE
                 else "ahead by no more than chance")
      parts.append(f"{s} {gain * 100:+.1f} mIoU points ({verdict}"
                   + (f"; photos +{test['gained']}/-{test['lost']}, p = {test['p']:.2g}" if test else "") + ")")
    lines.append(f"- **{TASK_TITLES.get(task, task)}**, RA vs plain on person segmenters: " + "; ".join(parts) + ".")
  return lines
