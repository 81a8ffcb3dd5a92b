"""The VRD-IR demo: one restorer for a mixture of degradations, judged by real recognizers on real photos.

    python -m rajax.demo.vrdir --workdir runs/vrdir_demo            # three training runs, evaluation, report
    python -m rajax.demo.vrdir --workdir runs/vrdir_demo --quick    # a few steps each: checks the machinery

Protocol. Three `rajax.train` runs of configs/vrdir.py, in WORKDIR/<mode> (a rerun resumes them or
skips the finished ones), all on the same mixture of its SEEN degradations (Gaussian noise,
defocus blur, fog, rain streaks, JPEG, low light; one per training crop, drawn from the seed):
  plain  a small SRResNet restorer with the MSE,
  ra     the same restorer with MSE + lam * CE of MobileNetV2 (real ImageNet weights) on its output,
  vrdir  VRD-IR with phi = MobileNetV2's early layers ("stem", stride 2): SAD pre-trained with the
         similarity ranking loss for the first part of the steps, then ISE (rajax.methods.vrdir).
Then the evaluation suite's `degradations` table (configs/eval/vrdir.py) on the test photos: for
each SEEN and each held-out UNSEEN degradation, PSNR, SSIM and the top-1 of MobileNetV2 and of
EfficientNet-Lite0 (never used in training) on the degraded input and on each restorer's output,
with McNemar's paired test of each row against the RA restorer. Labels: each recognizer's own top-1
on the clean crop (the photos have none), so "top-1" is agreement with the clean image.
The report (WORKDIR/report.md, WORKDIR/report.json) gives the pooled figures per set, the paired
tests of VRD-IR against RA, the per-degradation table and the time each part took.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys
import time
from typing import Sequence

from rajax import demo as demo_lib
from rajax.demo import ROOT

CONFIG = ROOT / "configs" / "vrdir.py"
EVAL_CONFIG = ROOT / "configs" / "eval" / "vrdir.py"
MODES = ("vrdir", "ra", "plain")      # the longest first: two at a time on two cores
REFERENCE = "ra"
TARGETS = ("mobilenet_v2", "efficientnet_lite0")


def _fmt(sec: float) -> str:
  return str(datetime.timedelta(seconds=round(sec)))


def train_command(workdir: pathlib.Path, mode: str, quick: bool, steps: int | None = None,
                  crop: int | None = None) -> list[str]:
  """The `python -m rajax.train` command of the demo's `mode` run."""
  arg = f"mode={mode},quick={quick}" + (f",steps={steps}" if steps else "") + (f",crop={crop}" if crop else "")
  return [sys.executable, "-m", "rajax.train", "--config", f"{CONFIG}:{arg}", "--workdir", str(workdir / mode),
          "--config.final_eval=false"]   # the demo evaluates every run itself, on seen and unseen degradations


def _finished(run_dir: pathlib.Path) -> bool:
  return (run_dir / "processor.msgpack").is_file()


def train_runs(workdir: pathlib.Path, quick: bool, *, jobs: int = 2, steps: int | None = None,
               crop: int | None = None, status_every: float = 30.0) -> dict[str, float]:
  """Trains MODES, `jobs` at a time, each a subprocess logging to WORKDIR/<mode>/train.log; finished runs are
  skipped. Returns each run's seconds. A failed run stops the others and raises with the end of its log."""
  pending = [m for m in MODES if not _finished(workdir / m)]
  times = {m: 0.0 for m in MODES if m not in pending}
  demo_lib.run_processes(workdir, [(m, train_command(workdir, m, quick, steps, crop), ()) for m in pending],
                         quick=quick, jobs=jobs, status_every=status_every, times=times)
  return times


def evaluate_runs(workdir: pathlib.Path, quick: bool, crop: int | None = None):
  """The `degradations` table of the three runs (configs/eval/vrdir.py), in WORKDIR/eval."""
  from rajax import config as config_lib
  from rajax import evaluate
  config = config_lib.load(f"{EVAL_CONFIG}:runs={workdir},quick={quick},reference={REFERENCE},crop={crop or 0}")
  return evaluate.run(config, workdir / "eval")["degradations"]


def summarise(table) -> dict:
  """The pooled rows per set and view, and VRD-IR's paired tests against RA, from the degradations table."""
  out = {"pooled": {}, "paired_vrdir_vs_ra": {}, "per_degradation": []}
  for row in table.rows:
    entry = {k: v for k, v in row.items() if k not in ("processing", "set", "degradation")}
    if row["degradation"].startswith("mean ("):
      out["pooled"].setdefault(row["set"], {})[row["view"]] = entry
    else:
      out["per_degradation"].append({"set": row["set"], "degradation": row["degradation"], **entry})
  for key, by_view in table.extra["paired"].items():
    if "vrdir" in by_view:
      out["paired_vrdir_vs_ra"][key] = by_view["vrdir"]
  out["sets"] = table.extra["sets"]
  if "detection" in table.extra:    # CenterNet on whole photos: the pooled rows and VRD-IR's sign tests against RA
    det = table.extra["detection"]
    out["detection"] = {"pooled": {}, "paired_vrdir_vs_ra": {k: by_view["vrdir"] for k, by_view in det["paired"].items()
                                                             if "vrdir" in by_view}}
    for row in det["rows"]:
      if row["degradation"].startswith("mean ("):
        out["detection"]["pooled"].setdefault(row["set"], {})[row["view"]] = {
            k: v for k, v in row.items() if k not in ("processing", "set", "degradation")}
  return out


def report(workdir: pathlib.Path, table, summary: dict, times: dict, quick: bool) -> str:
  """WORKDIR/report.md and report.json; returns the markdown."""
  views = ("input", "plain", "ra", "vrdir")
  names = {"input": "degraded input", "plain": "plain restorer", "ra": "RA restorer", "vrdir": "VRD-IR"}
  lines = ["# VRD-IR on a mixture of degradations (rajax.demo.vrdir)", "",
           f"{'Quick run (a few steps: checks the machinery, the figures mean nothing). ' if quick else ''}"
           "Restorers trained on one mixture of the seen degradations; evaluated per degradation on the test "
           "photos, seen and held out. Top-1: agreement with each recognizer's own top-1 on the clean crop.", ""]
  for group, rows in summary["pooled"].items():
    lines += [f"## Mean over the {group} degradations", "",
              "| processing | PSNR | SSIM | " + " | ".join(f"{t} top-1" for t in TARGETS) + " |",
              "|---|---:|---:|" + "---:|" * len(TARGETS)]
    for v in views:
      if v in rows:
        r = rows[v]
        lines.append(f"| {names[v]} | {r['PSNR']:.2f} | {r['SSIM']:.4f} | "
                     + " | ".join(f"{100 * r[f'{t} top-1']:.1f}" for t in TARGETS) + " |")
    paired = summary["paired_vrdir_vs_ra"].get(f"mean ({group})", {})
    if paired:
      lines += ["", "VRD-IR against the RA restorer (McNemar's exact test, examples pooled over the set): "
                + "; ".join(f"{t} +{p['gained']}/-{p['lost']}, p = {p['p']:.2g}" for t, p in paired.items()) + "."]
    lines.append("")
  det = summary.get("detection")
  if det:
    lines += ["## CenterNet (COCO detector, used by no run) on whole photos", "",
              "VOC07 mAP and target boxes recovered, against CenterNet's own detections (score >= 0.3) on the clean "
              "photo, pooled over each set's degradations.", "",
              "| set | processing | PSNR | mAP | recovered |", "|---|---|---:|---:|---:|"]
    for group, rows in det["pooled"].items():
      for v in views:
        if v in rows:
          r = rows[v]
          lines.append(f"| {group} | {names[v]} | {r['PSNR']:.2f} | {100 * r['centernet VOC07 mAP']:.1f} | "
                       f"{100 * r['centernet recovered']:.1f} |")
    tests = [f"{k}: +{p['centernet']['gained']}/-{p['centernet']['lost']} photos, p = {p['centernet']['p']:.2g}"
             for k, p in det["paired_vrdir_vs_ra"].items() if k.startswith("mean (")]
    if tests:
      lines += ["", "VRD-IR against the RA restorer (sign test per photo on boxes recovered): " + "; ".join(tests) + "."]
    lines.append("")
  lines += [table.markdown(), "", "## Time", ""]
  lines += [f"- training {m}: {_fmt(s)}" for m, s in times.items() if m in MODES]
  lines += [f"- {k}: {_fmt(s)}" for k, s in times.items() if k not in MODES]
  text = "\n".join(lines) + "\n"
  (workdir / "report.md").write_text(text)
  (workdir / "report.json").write_text(json.dumps({"quick": quick, "times_s": times, **summary}, indent=2,
                                                  default=float))
  return text


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m rajax.demo.vrdir", description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="where the runs, the evaluation and the report go")
  parser.add_argument("--quick", action="store_true", help="a few steps on small crops of a few photos")
  parser.add_argument("--jobs", type=int, default=2, help="training runs at a time (default 2)")
  parser.add_argument("--steps", type=int, default=None, help="training steps of every run (default: configs/vrdir.py's)")
  parser.add_argument("--crop", type=int, default=None, help="crop size of training and evaluation (default: configs/vrdir.py's)")
  args = parser.parse_args(argv)
  workdir = pathlib.Path(args.workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  times = train_runs(workdir, args.quick, jobs=args.jobs, steps=args.steps, crop=args.crop)
  times["training (wall)"] = time.perf_counter() - t0
  t1 = time.perf_counter()
  table = evaluate_runs(workdir, args.quick, args.crop)
  times["evaluation"] = time.perf_counter() - t1
  times["total"] = time.perf_counter() - t0
  text = report(workdir, table, summarise(table), times, args.quick)
  print(text, flush=True)
  print(f"[vrdir demo] report: {workdir / 'report.md'}, {workdir / 'report.json'}", flush=True)


if __name__ == "__main__":
  main()
