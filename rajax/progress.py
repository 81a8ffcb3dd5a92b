"""Progress of long work: periodic lines with step, losses, images/s and ETA, plus a JSONL record.

Each `log` prints one line to stdout and appends the same numbers as one JSON object to
`<workdir>/metrics.jsonl` (only on process 0), so runs can be followed live and plotted later.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
import time
from typing import Any, Mapping


# Leading keys of a progress line, in this order; any others follow alphabetically.
_ORDER = ("loss", "pixel_mse", "recognition", "psnr", "ssim", "top1", "top5")


def _ordered(metrics: Mapping[str, float]) -> dict[str, float]:
  keys = [k for k in _ORDER if k in metrics] + sorted(k for k in metrics if k not in _ORDER)
  return {k: float(metrics[k]) for k in keys}


def _fmt(v: float) -> str:
  if v == 0 or not math.isfinite(v):
    return f"{v:g}"
  return f"{v:.4g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.3e}"


class Progress:
  """Tracks training speed between log calls and writes metrics to stdout and JSONL."""

  def __init__(self, workdir: str | os.PathLike, *, total_steps: int, batch_size: int, start_step: int = 0,
               write: bool = True):
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self.total_steps = total_steps
    self.batch_size = batch_size
    self.write = write
    self._mark_step = start_step
    self._mark_time = time.perf_counter()

  def truncate_after(self, step: int) -> None:
    """Drops records past `step` (left by a run that died after its last checkpoint), atomically."""
    if not self.write or not self.path.exists():
      return
    keep = [line for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = self.path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, self.path)

  def restart_clock(self, step: int) -> None:
    """Starts a new speed interval at `step` (e.g. after compilation, so it is not counted)."""
    self._mark_step, self._mark_time = step, time.perf_counter()

  def log_train(self, step: int, metrics: Mapping[str, float], **extra: Any) -> dict:
    now = time.perf_counter()
    steps = step - self._mark_step
    dt = now - self._mark_time
    rate = steps * self.batch_size / dt if steps > 0 and dt > 0 else float("nan")
    eta = (self.total_steps - step) * dt / steps if steps > 0 else float("nan")
    self.restart_clock(step)
    metrics = _ordered(metrics)
    record = {"step": step, "split": "train", **metrics, "img_per_s": rate, **extra}
    pct = 100.0 * step / max(self.total_steps, 1)
    eta_s = str(datetime.timedelta(seconds=round(eta))) if math.isfinite(eta) else "?"
    body = " ".join(f"{k} {_fmt(float(v))}" for k, v in metrics.items())
    more = " ".join(f"{k} {_fmt(float(v))}" for k, v in extra.items())
    print(f"[train] step {step}/{self.total_steps} ({pct:.0f}%) | {body} | {more} | {rate:.1f} img/s | ETA {eta_s}",
          flush=True)
    self._append(record)
    return record

  def log_eval(self, step: int, metrics: Mapping[str, float], **extra: Any) -> dict:
    metrics = _ordered(metrics)
    record = {"step": step, "split": "eval", **metrics, **extra}
    print(f"[eval]  step {step}/{self.total_steps} | " + " ".join(f"{k} {_fmt(float(v))}" for k, v in metrics.items()),
          flush=True)
    self._append(record)
    return record

  def _append(self, record: dict) -> None:
    if self.write:
      with self.path.open("a") as f:
        f.write(json.dumps(record) + "\n")
