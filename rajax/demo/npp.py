"""NPP offline: a pre-processor before JPEG, trained with MobileNetV2, measured in real bits.

    python -m rajax.demo.npp --workdir runs/npp_demo            # the five stages, then the report
    python -m rajax.demo.npp --workdir runs/npp_demo --quick    # a few steps each: checks the machinery

The stages of configs/npp_demo.py, each a `python -m rajax.train` process in WORKDIR/<stage>
(rerunning resumes; two at a time where they do not depend on each other):

  proxy_rd -> proxy_codec -> fixed -> adaptive     C: rate-distortion, then towards JPEG; P: from the
                                                   identity, NPP at JPEG quality 30 / lam 2, then over
                                                   the five (quality, lam) pairs

then, once, on the held-out test photos (configs/eval/npp_photos.py, through `rajax.evaluate`): every
codec (JPEG, and WebP, AVIF and HEVC, which P never saw) at its five-quality sweep, alone and after
P, read by MobileNetV2 (the training loss) and EfficientNet-Lite0 (never used in training), and JPEG
on whole photos read by the COCO detector CenterNet; BD-rates against each codec alone
(negative = bits saved at equal accuracy) and the curves. The report is WORKDIR/report.md (the
evaluation's own tables in WORKDIR/eval/) and WORKDIR/results.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import sys
import time
from typing import Sequence

from rajax import demo as demo_lib

STAGES = ("proxy_rd", "proxy_codec", "fixed", "adaptive")
NEEDS = {"proxy_rd": (), "proxy_codec": ("proxy_rd",), "fixed": ("proxy_codec",), "adaptive": ("fixed", "proxy_codec")}
ROOT = demo_lib.ROOT
CONFIG = ROOT / "configs" / "npp_demo.py"
EVAL_CONFIG = ROOT / "configs" / "eval" / "npp_photos.py"
CODECS = ("jpeg", "webp", "avif", "hevc")


def command(workdir: pathlib.Path, stage: str, quick: bool, train_args: Sequence[str] = ()) -> list[str]:
  """The `python -m rajax.train` command of one stage, starting from the stages it needs."""
  if stage not in STAGES:
    raise ValueError(f"Unknown NPP demo stage {stage!r}; one of {', '.join(STAGES)}.")
  cmd = [sys.executable, "-m", "rajax.train", "--config", f"{CONFIG}:stage={stage},quick={quick}",
         "--workdir", str(workdir / stage), "--config.final_eval=false"]
  if stage == "proxy_codec":
    cmd.append(f"--config.init_codec={workdir / 'proxy_rd' / 'codec.msgpack'}")
  if stage == "adaptive":
    cmd.append(f"--config.init_processor={workdir / 'fixed' / 'processor.msgpack'}")
  if stage in ("fixed", "adaptive"):
    cmd.append(f"--config.method.codec_weights={workdir / 'proxy_codec' / 'codec.msgpack'}")
  return cmd + list(train_args)


def train(workdir: pathlib.Path, quick: bool, *, jobs: int = 2, train_args: Sequence[str] = ()) -> float:
  """Every stage (a finished one is skipped by rajax.train itself); returns seconds."""
  return demo_lib.run_processes(workdir, [(s, command(workdir, s, quick, train_args), NEEDS[s]) for s in STAGES],
                                quick=quick, jobs=jobs)


def eval_config(workdir: pathlib.Path, quick: bool, codecs: Sequence[str], detection: bool):
  from rajax import config as config_lib
  return config_lib.load(f"{EVAL_CONFIG}:runs={workdir},quick={quick},codecs={','.join(codecs)},"
                         f"detection={detection}")


def summary(tables) -> dict:
  """{"bd": [{processing, codec, codec in training, <target> BD-rate, ...}], "detection_bd": [...]}."""
  out = {"bd": tables["rate"].extra["bd"]}
  if "rate_detection" in tables:
    out["detection_bd"] = tables["rate_detection"].extra["bd"]
  return out


def _pct(v) -> str:
  return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.1f}%"


def claim_lines(results: dict, loss: str = "mobilenet_v2") -> list[str]:
  """One line per BD-rate: what NPP saved (or cost) against each codec alone, trained or transferred."""
  lines = []
  for row in results["bd"] + results.get("detection_bd", []):
    for col, value in row.items():
      if not col.endswith(" BD-rate") or col == "PSNR BD-rate":
        continue
      target = col[: -len(" BD-rate")]
      seen = ("trained codec" if row["codec in training"] == "yes" else "unseen codec") + ", " + (
          "loss recognizer" if target == loss else "unseen recognizer")
      if isinstance(value, float) and math.isnan(value):
        verdict = "no BD-rate (the curves do not overlap or do not rise; see the table's note)"
      else:
        verdict = f"{'saves' if value < 0 else 'costs'} {abs(value):.1f}% of the bits at equal accuracy"
      lines.append(f"NPP + {row['codec']} read by {target} ({seen}): {verdict}; PSNR BD-rate "
                   f"{_pct(row.get('PSNR BD-rate'))}.")
  return lines


def write_report(workdir: pathlib.Path, tables, *, quick: bool, train_seconds: float, eval_seconds: float) -> pathlib.Path:
  results = summary(tables)
  results.update(train_seconds=train_seconds, eval_seconds=eval_seconds, quick=quick)
  fmt = lambda s: str(datetime.timedelta(seconds=round(s)))
  lines = ["# NPP on the photos: rate against accuracy, codec alone vs pre-processor + codec", "",
           f"Training {fmt(train_seconds)}, evaluation {fmt(eval_seconds)}" + (" (--quick: checks the machinery only; "
                                                                               "the figures mean nothing)" if quick else "") + ".",
           "", "P was trained with MobileNetV2 as the loss and JPEG as the codec (configs/npp_demo.py); every other "
           "codec and recognizer is transfer. BD-rate: bits at equal accuracy against the codec alone (negative = "
           "saved). The full tables: eval/report.md.", ""]
  from rajax.evaluate.report import Table
  for name in ("rate", "rate_detection"):
    if name not in tables:
      continue
    t = tables[name]
    bd = Table(f"{name}_bd", "", [], {})
    bd_rows = t.extra["bd"]
    cols = [c for c in bd_rows[0] if c != "loss recognizer"] if bd_rows else []
    lines += [f"## {'Classification (test crops)' if name == 'rate' else 'Detection (whole test photos)'}", "",
              "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in bd_rows:
      lines.append("| " + " | ".join(r[c] if isinstance(r[c], str) else bd.cell(r, c) for c in cols) + " |")
    lines += [""] + [f"![{f}](eval/{f})" for f in t.figures] + [""]
  lines += ["## What held", ""] + [f"- {line}" for line in claim_lines(results)] + [""]
  path = workdir / "report.md"
  tmp = path.with_suffix(".md.tmp")
  tmp.write_text("\n".join(lines))
  os.replace(tmp, path)
  jtmp = workdir / "results.json.tmp"
  jtmp.write_text(json.dumps(results, indent=2, default=float))
  os.replace(jtmp, workdir / "results.json")
  return path


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m rajax.demo.npp", description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, type=pathlib.Path, help="directory for the stages and the report")
  parser.add_argument("--quick", action="store_true", help="a few steps per stage, few photos (checks the machinery)")
  parser.add_argument("--codecs", default=",".join(CODECS),
                      type=lambda s: demo_lib._names(s, CODECS, "codec"), help="codecs to evaluate (default: all four)")
  parser.add_argument("--no-detection", dest="detection", action="store_false",
                      help="leave out CenterNet on whole photos")
  parser.add_argument("--jobs", type=int, default=2, help="training runs at a time (default 2)")
  parser.add_argument("--train-arg", action="append", default=[], metavar="--config.KEY=VALUE",
                      help="passed to every stage (repeatable)")
  args = parser.parse_args(argv)
  if args.jobs < 1:
    parser.error(f"--jobs must be >= 1, got {args.jobs}")
  from rajax import assets
  try:
    from rajax.data import photos
    for name in (n for split in photos.SPLITS.values() for n in split if "/" in n):
      assets.path(name)
    if args.detection:
      from rajax.demo import detection as detection_demo
      detection_demo.check_assets(args.quick)
  except assets.AssetError as e:
    parser.error(f"{e}\n(--no-detection leaves out the detector; the photos are needed either way)")
  workdir = args.workdir
  workdir.mkdir(parents=True, exist_ok=True)
  import jax
  jax.config.update("jax_compilation_cache_dir", str(workdir / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  t0 = time.perf_counter()
  train_seconds = train(workdir, args.quick, jobs=args.jobs, train_args=args.train_arg)
  t1 = time.perf_counter()
  from rajax import evaluate
  tables = evaluate.run(eval_config(workdir, args.quick, args.codecs, args.detection), workdir / "eval")
  report = write_report(workdir, tables, quick=args.quick, train_seconds=train_seconds,
                        eval_seconds=time.perf_counter() - t1)
  print(f"[demo] done in {datetime.timedelta(seconds=round(time.perf_counter() - t0))}: {report}", flush=True)
  for line in claim_lines(summary(tables)):
    print(line, flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
