#!/usr/bin/env python3
"""The budgeted benchmark run behind `launch/bench_gpu.sh --budget SECONDS`: install, smoke, runs.

    launch/bench_gpu.sh --budget 510 --wheels .whl OUTDIR     # what a session with a GPU runs
    launch/bench_gpu.sh --budget 510 --dry-run OUTDIR         # the plan; runs nothing

launch/bench_gpu.sh holds the table of runs, in priority order, and calls this script with it
(`--run NAME|XLA_FLAGS|ARGS`, repeated, and `--smoke ...`). In order:

1. install: with --wheels DIR, the pinned wheels (launch/gpu_wheels.txt) whose module does not import
   with PYTHON are installed into a new folder put first on PYTHONPATH (launch/gpu_wheels.py);
2. smoke: one tiny step (and PyTorch's eager step, without torch.compile); if it fails the script stops
   with its error; if only its PyTorch part fails, the runs go on without --vs-torch (noted in their
   records);
3. the runs, each started only when its estimated cost fits in what the budget leaves, each under a
   time limit (twice its estimate, at least estimate + 120 s, never past the budget) after which it
   is killed with its process group. A --vs-torch run that fails after its JAX part was timed is
   run again at once without --vs-torch, and the later runs drop it too.

Estimates: the table below (first guesses for one H100/H200; no accelerator run has measured them
yet), refined as the run goes: the smoke run's wall time replaces the start-up cost, a finished run's
measured JAX time (wall time less start-up and its PyTorch variants' own times from its record)
replaces the table for later runs of the same kind, its PyTorch variants' times replace theirs, and
kinds not seen yet are scaled by the mean measured/table ratio so far.

OUTDIR gets three files, each written as things happen (a run cut short by a kill loses only itself):
records.jsonl (one JSON object a line: "environment", "install", "smoke", each run with its
status ok | failed | timeout | cut | skipped and, when ok, the benchmark's own record under "record";
a "summary" last), bench.log (every run's output) and commands.txt (the plan, then each command with
its XLA flags as it starts). SIGTERM, SIGINT or SIGHUP stop the run in progress (record "cut"), mark
the rest skipped with the reason, and end the script (exit 128 + signal number).

Standard library only. Exit status: 0 when every started run succeeded, 1 when one failed or the
smoke or install step did, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import dataclasses
import datetime
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import gpu_wheels  # noqa: E402  (launch/gpu_wheels.py, next to this file)

# ------------------------------------------------------------------ estimates (seconds, one H100/H200)
# First guesses: no accelerator run has measured them yet; the run replaces them as it measures.
START_S = 20          # interpreter, imports, CUDA start, networks, state, batch (replaced by the smoke run's wall)
JAX_S = {             # trace + compile + warm-up + 2 x 30 timed steps of the JAX step, by task and mode
    ("sr", "plain"): 30, ("sr", "ra"): 40, ("sr", "unsupervised"): 45, ("sr", "transformer"): 80,
    ("denoise", "plain"): 35, ("denoise", "ra"): 50, ("denoise", "unsupervised"): 55,
    ("denoise", "transformer"): 100,
    ("jpeg", "plain"): 35, ("jpeg", "ra"): 50, ("jpeg", "unsupervised"): 55, ("jpeg", "transformer"): 100,
}
TORCH_S = {"eager": 15, "compile": 90}   # one PyTorch variant: eager (or AMP) / torch.compile of the step
PIPELINE_S = 60       # --pipeline: photo JPEGs, the host pipeline alone, then end to end
RECOGNIZER_S = 20     # --recognizer: R's forward and input gradient alone
HLO_S = 120           # --hlo: two compiles of the 8-device step on the host's CPUs
INSTALL_S = 20        # checks, pip install --target, import check (dry-run plan only)
SMOKE_S = START_S + 15
SMOKE_LIMIT_S = 120   # the smoke run's own limit (SMOKE_TIMEOUT in the environment overrides it)
RESERVE_S = 10        # kept at the end of the budget for stopping a run and writing the summary
KILL_GRACE_S = 5      # between SIGTERM and SIGKILL of a run's process group
LOG_CAP_BYTES = 12 << 20        # bench.log stays under what a run brings back per file
RUN_LOG_CAP_BYTES = 2 << 20     # per run, the rest dropped (the last lines are still in its record)
TAIL_LINES = 40
# rajax.bench logs this after the JAX step has been timed and before PyTorch starts.
TORCH_MARKER = "timing the PyTorch reference"


class Stop(Exception):
  """A signal asked the script to stop."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


@dataclasses.dataclass
class Run:
  """One line of launch/bench_gpu.sh's table: NAME|extra XLA flags|arguments of python -m rajax.bench."""
  name: str
  flags: str
  args: list[str]
  dropped: str = ""   # why --vs-torch was taken out, when it was

  @classmethod
  def parse(cls, entry: str) -> "Run":
    parts = entry.split("|", 2)
    if len(parts) != 3 or not parts[0].strip() or "--config" not in parts[2].split():
      raise ValueError(f"a run is NAME|XLA_FLAGS|--config ... (rajax.bench arguments), got {entry!r}")
    return cls(parts[0].strip(), parts[1].strip(), parts[2].split())

  def _config_args(self) -> dict[str, str]:
    spec = self.args[self.args.index("--config") + 1] if "--config" in self.args[:-1] else ""
    out = {}
    for item in spec.split(":", 1)[1].split(",") if ":" in spec else []:
      k, _, v = item.partition("=")
      out[k.strip()] = v.strip()
    return out

  def _override(self, key: str) -> str | None:
    for a in self.args:
      if a.startswith(f"--config.{key}="):
        return a.split("=", 1)[1]
    return None

  @property
  def task(self) -> str:
    return self._config_args().get("task", "sr")

  @property
  def mode(self) -> str:
    return self._config_args().get("mode", "ra")

  @property
  def vs_torch(self) -> bool:
    return "--vs-torch" in self.args

  @property
  def kind(self) -> str:
    """What runs of equal cost share: task/mode, blocks, and which of the bench's extras."""
    a = self._config_args()
    kind = f"{self.task}/{self.mode}"
    if a.get("blocks") not in (None, "", "0", "5"):
      kind += f" blocks={a['blocks']}"
    if a.get("tiny", "false").lower() in ("true", "1"):
      kind += " tiny"
    for extra in ("--recognizer", "--hlo", "--pipeline"):
      if extra in self.args:
        kind += " " + extra
    return kind

  def torch_variants(self) -> list[str]:
    """The PyTorch variants a --vs-torch run times on CUDA (rajax.bench.torch_variants)."""
    if not self.vs_torch:
      return []
    given = self._override("bench.torch_variants")
    if given and given != "auto":
      return [v.strip() for v in given.split(",") if v.strip()]
    fp32 = (self._config_args().get("dtype") == "float32" or self._override("compute_dtype") == "float32")
    return ["eager_fp32", "compile_fp32_cl"] if fp32 else ["amp_bf16_cl", "compile_bf16_cl"]

  def without_torch(self, why: str) -> "Run":
    return dataclasses.replace(self, args=[a for a in self.args if a != "--vs-torch"], dropped=why)

  def xla_flags(self, base: str) -> str:
    return f"{base} {self.flags}".strip()

  def command(self, python: str, base_flags: str) -> str:
    line = f"{python} -m rajax.bench {' '.join(self.args)}"
    flags = self.xla_flags(base_flags)
    return f"XLA_FLAGS={shlex.quote(flags)} {line}" if flags else line


def _variant_kind(variant: str) -> str:
  return "compile" if variant.startswith("compile") else "eager"


def run_limit(estimate: float, left: float) -> float:
  """A run's time limit: twice its estimate, at least estimate + 120 s, never past what the budget leaves."""
  return min(left, max(2 * estimate, estimate + 120))


class Estimator:
  """Seconds a run is expected to take: the table above, refined by what the run has measured."""

  def __init__(self):
    self.start = float(START_S)
    self.jax: dict[str, float] = {}       # kind -> measured JAX seconds
    self.torch: dict[str, float] = {}     # "eager" | "compile" -> measured seconds of one variant
    self.ratios: list[float] = []         # measured / table JAX seconds of the finished runs
    self.torch_available = True

  @staticmethod
  def table_jax(run: Run) -> float:
    if "--hlo" in run.args:
      return float(HLO_S)
    if "--recognizer" in run.args:
      return float(RECOGNIZER_S)
    base = JAX_S.get((run.task, run.mode), max(JAX_S.values()))
    return float(base + (PIPELINE_S if "--pipeline" in run.args else 0))

  @property
  def ratio(self) -> float:
    return min(4.0, max(0.5, sum(self.ratios) / len(self.ratios))) if self.ratios else 1.0

  def jax_part(self, run: Run) -> float:
    return self.jax.get(run.kind, self.table_jax(run) * self.ratio)

  def torch_part(self, run: Run) -> float:
    if not self.torch_available:
      return 0.0
    return sum(self.torch.get(k, TORCH_S[k] * self.ratio) for k in map(_variant_kind, run.torch_variants()))

  def estimate(self, run: Run) -> int:
    return int(round(self.start + self.jax_part(run) + self.torch_part(run)))

  def learn_smoke(self, wall: float, record: dict | None) -> None:
    self.start = max(1.0, wall)
    vs = (record or {}).get("vs_torch")
    if isinstance(vs, dict) and "skipped" in vs:
      self.torch_available = False   # no PyTorch here: --vs-torch runs record that and cost nothing more

  def learn_records(self, path: pathlib.Path | str) -> int:
    """Learns from an earlier run's records.jsonl (its smoke run and finished runs); returns how many."""
    n = 0
    for line in pathlib.Path(path).read_text().splitlines():
      try:
        rec = json.loads(line)
      except ValueError:
        continue
      if rec.get("status") != "ok" or "args" not in rec:
        continue
      if rec["name"] == "smoke":
        self.learn_smoke(float(rec["wall_s"]), rec.get("record"))
      else:
        self.learn(Run(rec["name"], rec.get("flags", ""), list(rec["args"])), float(rec["wall_s"]), rec.get("record"))
      n += 1
    return n

  def learn(self, run: Run, wall: float, record: dict | None) -> None:
    torch_s = 0.0
    for name, v in ((record or {}).get("vs_torch") or {}).items():
      if isinstance(v, dict) and "warmup_s" in v:
        seconds = float(v["warmup_s"]) + float(v.get("steps", 0)) * float(v.get("step_ms", 0)) / 1e3
        self.torch[_variant_kind(name)] = seconds
        torch_s += seconds
    jax_s = max(1.0, wall - self.start - torch_s)
    self.jax[run.kind] = jax_s
    self.ratios.append(jax_s / self.table_jax(run))


# ------------------------------------------------------------------ running one command

@dataclasses.dataclass
class Outcome:
  status: str                 # ok | failed | timeout | cut
  rc: int | None
  wall_s: float
  record: dict | None
  tail: list[str]
  torch_started: bool         # the JAX part was timed and PyTorch had begun


def _child_setup():
  os.setpgrp()
  try:   # the run dies with this script, even when the script is killed with SIGKILL
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


class Log:
  """bench.log: every line of every run as it comes, capped per run and in all."""

  def __init__(self, path: pathlib.Path):
    self.f = open(path, "a", buffering=1)
    self.lock = threading.Lock()
    self.total = path.stat().st_size
    self.run_bytes = 0
    self.dropped = 0

  def begin(self, title: str) -> None:
    self.run_bytes, self.dropped = 0, 0
    self.write(f"===== {title}\n", force=True)

  def write(self, text: str, force: bool = False) -> None:
    with self.lock:
      n = len(text.encode(errors="replace"))
      if not force and (self.run_bytes + n > RUN_LOG_CAP_BYTES or self.total + n > LOG_CAP_BYTES):
        self.dropped += 1
        return
      self.f.write(text)
      self.run_bytes += n
      self.total += n

  def end(self) -> None:
    if self.dropped:
      self.write(f"[{self.dropped} lines not kept in this log: size limit]\n", force=True)


def run_command(argv: Sequence[str], env: dict[str, str], limit: float, log: Log) -> Outcome:
  """Runs argv in its own process group with stdout/stderr streamed to `log`; kills it after `limit`
  seconds. The last stdout line that is a JSON object is its record."""
  t0 = time.monotonic()
  tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
  records: list[str] = []
  marker = threading.Event()
  try:
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=env, preexec_fn=_child_setup, text=True, errors="replace", bufsize=1)
  except OSError as e:
    log.write(f"cannot start {argv[0]}: {e}\n")
    return Outcome("failed", None, time.monotonic() - t0, None, [f"cannot start {argv[0]}: {e}"], False)

  def pump(stream, is_stdout):
    for line in stream:
      if is_stdout and line.startswith("{"):
        records.append(line)
        continue
      if TORCH_MARKER in line:
        marker.set()
      tail.append(line.rstrip("\n"))
      log.write(line if line.endswith("\n") else line + "\n")

  threads = [threading.Thread(target=pump, args=(proc.stdout, True), daemon=True),
             threading.Thread(target=pump, args=(proc.stderr, False), daemon=True)]
  for t in threads:
    t.start()
  status = None
  try:
    try:
      proc.wait(timeout=max(0.0, limit))
    except subprocess.TimeoutExpired:
      status = "timeout"
      _kill(proc)
  except Stop:
    _kill(proc)
    for t in threads:
      t.join(timeout=2)
    raise
  finally:
    if proc.poll() is None:
      _kill(proc)
  try:   # what the run left behind in its process group (worker processes) goes with it
    os.killpg(proc.pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass
  for t in threads:
    t.join(timeout=5)
  wall = time.monotonic() - t0
  record = None
  for line in reversed(records):
    try:
      record = json.loads(line)
      break
    except ValueError:
      tail.append(line.rstrip("\n")[:500])
  if status is None:
    status = "ok" if proc.returncode == 0 and record is not None else "failed"
  return Outcome(status, proc.returncode, wall, record if status == "ok" else None, list(tail), marker.is_set())


def _kill(proc: subprocess.Popen) -> None:
  for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5)):
    try:
      os.killpg(proc.pid, sig)
    except ProcessLookupError:
      return
    try:
      proc.wait(timeout=wait)
      return
    except subprocess.TimeoutExpired:
      pass


# ------------------------------------------------------------------ the budgeted run

class Runner:

  def __init__(self, args, runs: list[Run], smoke: Run):
    self.args, self.smoke = args, smoke
    self.queue = collections.deque(runs)
    self.budget = float(args.budget)
    self.python = args.python
    self.base_flags = os.environ.get("XLA_FLAGS", "").strip()
    self.est = Estimator()
    if args.estimates:
      self.est.learn_records(args.estimates)
    self.t0 = time.monotonic()
    self.env = dict(os.environ)
    self.env["PYTHONUNBUFFERED"] = "1"
    self.torch_dropped = ""
    self.outcomes: dict[str, list[str]] = {"ok": [], "failed": [], "timeout": [], "cut": [], "skipped": []}
    self.smoke_limit = float(os.environ.get("SMOKE_TIMEOUT", SMOKE_LIMIT_S))
    self.current: Run | None = None

  # time
  def elapsed(self) -> float:
    return time.monotonic() - self.t0

  def left(self) -> float:
    return self.budget - RESERVE_S - self.elapsed()

  # output
  def open(self, outdir: pathlib.Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    if (outdir / "records.jsonl").exists():
      raise ValueError(f"{outdir} already holds records.jsonl from another run; give a new OUTDIR or remove it")
    self.records = open(outdir / "records.jsonl", "a", buffering=1)
    self.commands = open(outdir / "commands.txt", "a", buffering=1)
    self.log = Log(outdir / "bench.log")

  def emit(self, record: dict[str, Any]) -> None:
    """One line of records.jsonl, written whole even when a signal arrives meanwhile."""
    mask = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, mask)
    try:
      self.records.write(json.dumps({**record, "at_s": round(self.elapsed(), 1)}) + "\n")
      self.records.flush()
    finally:
      signal.pthread_sigmask(signal.SIG_SETMASK, old)

  def say(self, text: str, *, err: bool = False) -> None:
    line = f"[{self.elapsed():5.0f} s] {text}"
    print(line, file=sys.stderr if err else sys.stdout, flush=True)
    self.commands.write(line + "\n")

  # steps
  def environment(self) -> None:
    rec = {"name": "environment", "status": "ok", "budget_s": self.budget, "python": self.python,
           "xla_flags": self.base_flags, "num_gpus": self.args.gpus,
           "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    for key, cmd in (("nvidia_smi", ["nvidia-smi", "-L"]), ("git_commit", ["git", "rev-parse", "HEAD"])):
      if shutil.which(cmd[0]):
        try:
          rec[key] = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
          pass
    self.emit(rec)

  def install(self) -> bool:
    if not self.args.wheels:
      self.say("install: no --wheels; using what the machine has")
      return True
    try:
      pins = gpu_wheels.read_pins(self.args.pins)
      plan = gpu_wheels.plan_install(pins, self.args.wheels, python=self.python)
      for line in plan.describe(self.args.wheels, "a new folder"):
        self.say("install: " + line)
      site = tempfile.mkdtemp(prefix="rajax-gpu-site-")
      summary = gpu_wheels.install(plan, self.args.wheels, site)
    except (gpu_wheels.WheelError, OSError, subprocess.SubprocessError) as e:
      self.emit({"name": "install", "status": "failed", "error": str(e)})
      self.say(f"install FAILED: {e}", err=True)
      return False
    if summary["installed"]:
      self.env["PYTHONPATH"] = os.pathsep.join([site] + ([self.env["PYTHONPATH"]] if self.env.get("PYTHONPATH") else []))
    self.emit({"name": "install", "status": "ok", **summary})
    self.say(f"install: ok ({len(summary['installed'])} installed into {site}, "
             f"{len(summary['skipped_importable'])} imported already)")
    return True

  def execute(self, run: Run, limit: float, estimate: int | None) -> Outcome:
    cmd = run.command(self.python, self.base_flags)
    self.say(f"{run.name}: start (" + (f"estimate {estimate} s, " if estimate is not None else "") +
             f"limit {limit:.0f} s): {cmd}")
    self.log.begin(f"{run.name}: {cmd}")
    env = dict(self.env)
    flags = run.xla_flags(self.base_flags)
    if flags:
      env["XLA_FLAGS"] = flags
    else:
      env.pop("XLA_FLAGS", None)
    self.current, self.current_t0 = run, time.monotonic()   # until its record is written: what a stop cuts
    try:
      return run_command([self.python, "-m", "rajax.bench", *run.args], env, limit, self.log)
    finally:
      self.log.end()

  def finish(self, rec: dict[str, Any]) -> None:
    self.emit(rec)
    self.current = None

  def _record(self, run: Run, out: Outcome, estimate: int | None, limit: float) -> dict[str, Any]:
    rec = {"name": run.name, "status": out.status, "wall_s": round(out.wall_s, 1), "estimate_s": estimate,
           "limit_s": round(limit), "kind": run.kind, "command": run.command(self.python, self.base_flags),
           "flags": run.flags, "args": run.args}
    if run.dropped:
      rec["dropped"] = {"--vs-torch": run.dropped}
    if out.status == "ok":
      rec["record"] = out.record
    else:
      rec["rc"] = out.rc
      rec["log_tail"] = out.tail
    return rec

  def smoke_step(self) -> bool:
    """The tiny step first: False (stop) when it fails, or when jax runs it on the CPU of a GPU machine."""
    limit = min(self.smoke_limit, self.left())
    out = self.execute(self.smoke, limit, None)
    rec = self._record(self.smoke, out, None, limit)
    on_cpu = out.status == "ok" and self.args.gpus > 0 and (out.record or {}).get("platform") == "cpu"
    if on_cpu:
      rec["status"] = "failed"
      rec["reason"] = (f"jax ran the smoke step on the CPU although nvidia-smi lists {self.args.gpus} GPU(s); "
                       "install jax with its CUDA plugin (jax[cuda12]) or check CUDA_VISIBLE_DEVICES")
    self.finish(rec)
    if on_cpu:
      self.say(f"smoke: FAILED: {rec['reason']}; stopping", err=True)
      return False
    if out.status == "ok":
      self.est.learn_smoke(out.wall_s, out.record)
      self.say(f"smoke: ok in {out.wall_s:.0f} s" + ("" if self.est.torch_available else
                                                     " (no PyTorch here: --vs-torch records will say skipped)"))
      return True
    if self.smoke.vs_torch and out.torch_started:
      self.est.start = max(1.0, out.wall_s)
      self.drop_torch(f"the smoke run's PyTorch part failed ({out.status}): " + " | ".join(out.tail[-3:]))
      return True
    self.say(f"smoke: {out.status.upper()} after {out.wall_s:.0f} s (exit {out.rc}); stopping. Its last lines:",
             err=True)
    for line in out.tail[-15:]:
      print("  " + line, file=sys.stderr, flush=True)
    return False

  def drop_torch(self, why: str) -> None:
    self.torch_dropped = why
    self.say(f"--vs-torch dropped from the remaining runs: {why}", err=True)

  def skip(self, run: Run, reason: str, estimate: int | None = None) -> None:
    self.emit({"name": run.name, "status": "skipped", "reason": reason, "estimate_s": estimate, "kind": run.kind,
               "command": run.command(self.python, self.base_flags)})
    self.outcomes["skipped"].append(run.name)
    self.say(f"{run.name}: skipped: {reason}")

  def runs(self) -> None:
    while self.queue:
      run = self.queue.popleft()
      if self.torch_dropped and run.vs_torch:
        run = run.without_torch(self.torch_dropped)
      estimate = self.est.estimate(run)
      left = self.left()
      if estimate > left:
        self.skip(run, f"estimated {estimate} s, {max(0, left):.0f} s left of the {self.budget:.0f} s budget "
                       f"({RESERVE_S} s kept for the records)", estimate)
        continue
      limit = run_limit(estimate, left)
      out = self.execute(run, limit, estimate)
      self.finish(self._record(run, out, estimate, limit))
      self.outcomes[out.status].append(run.name)
      if out.status == "ok":
        self.est.learn(run, out.wall_s, out.record)
        self.say(f"{run.name}: ok in {out.wall_s:.0f} s: {summary_line(out.record)}")
        continue
      self.say(f"{run.name}: {out.status.upper()} after {out.wall_s:.0f} s (exit {out.rc}): "
               + (out.tail[-1] if out.tail else ""), err=True)
      if run.vs_torch and out.torch_started and not self.torch_dropped:
        self.drop_torch(f"{run.name}'s PyTorch part failed ({out.status}) after its JAX step was timed: "
                        + " | ".join(out.tail[-3:]))
        self.queue.appendleft(run)   # again at once, without --vs-torch

  def stop_all(self, reason: str) -> None:
    while self.queue:
      self.skip(self.queue.popleft(), reason)

  def summary(self, status: str) -> None:
    self.emit({"name": "summary", "status": status, "elapsed_s": round(self.elapsed(), 1),
               **{k: v for k, v in self.outcomes.items()}})
    self.say(f"done ({status}) in {self.elapsed():.0f} s of {self.budget:.0f}: "
             + ", ".join(f"{len(v)} {k}" for k, v in self.outcomes.items()))


def summary_line(r: dict | None) -> str:
  """The figures of a rajax.bench record on one line."""
  if not r:
    return ""
  if r.get("bench") == "collectives":
    return "; ".join(f"{bn}: {v['total']['count']} collectives, {v['total']['bytes']:,} bytes"
                     for bn, v in r.get("by_bn_stats", {}).items())
  if r.get("bench") == "recognizer":
    return f"forward {r.get('forward_ms', 0):.1f} ms, input gradient {r.get('input_grad_ms', 0):.1f} ms"
  s = f"{r.get('img_per_s', 0):.1f} img/s, {r.get('step_ms', 0):.2f} ms/step, compile {r.get('compile_s', 0):.1f} s"
  if r.get("fraction_of_peak") is not None:
    s += f", {100 * r['fraction_of_peak']:.1f}% of peak"
  if "pipeline" in r:
    s += f", end to end {r['pipeline'].get('img_per_s', 0):.1f} img/s"
  for name, v in (r.get("vs_torch") or {}).items():
    if isinstance(v, dict) and "img_per_s" in v:
      s += f", {name} {v['img_per_s']:.1f} img/s ({v.get('ratio', 0):.2f}x)"
  return s


# ------------------------------------------------------------------ the plan (--dry-run)

def plan(args, runs: list[Run], smoke: Run) -> int:
  base = os.environ.get("XLA_FLAGS", "").strip()
  est = Estimator()
  if args.estimates:
    print(f"estimates: {est.learn_records(args.estimates)} finished runs of {args.estimates} replace the table's guesses")
  print(f"budget {args.budget} s, of which {RESERVE_S} s are kept for the records; estimates are first guesses "
        f"for one H100/H200 (start-up {START_S} s, PyTorch eager {TORCH_S['eager']} s and torch.compile "
        f"{TORCH_S['compile']} s a variant), refined from measured times as the runs finish")
  t = 0.0
  if args.wheels:
    p = gpu_wheels.plan_install(gpu_wheels.read_pins(args.pins), args.wheels, python=args.python)
    for line in p.describe(args.wheels, "a new folder (first on PYTHONPATH)"):
      print(f"install: {line}")
    t += INSTALL_S if p.to_install else 5
  else:
    print("install: none (no --wheels)")
  limit = min(float(os.environ.get("SMOKE_TIMEOUT", SMOKE_LIMIT_S)), args.budget - RESERVE_S - t)
  print(f"smoke: (estimate {SMOKE_S} s, limit {limit:.0f} s; a failure stops the script): "
        f"{smoke.command(args.python, base)}")
  t += SMOKE_S
  for i, run in enumerate(runs, 1):
    e = est.estimate(run)
    if t + e > args.budget - RESERVE_S:
      print(f"{i:3d}. {run.name} (estimate {e} s): skipped: it would end at {t + e:.0f} s, past the "
            f"{args.budget - RESERVE_S:.0f} s the budget leaves")
      continue
    print(f"{i:3d}. {run.name} (estimate {e} s, from {t:.0f} s to {t + e:.0f} s): {run.command(args.python, base)}")
    t += e
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="launch/bench_budget.py", description=__doc__.split("\n\n")[0],
                                   epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--budget", type=float, required=True, help="seconds for everything, install and smoke included")
  parser.add_argument("--python", default="python3", help="the interpreter that runs rajax.bench")
  parser.add_argument("--wheels", help="folder of the pinned wheels to install first (launch/gpu_wheels.py fetch)")
  parser.add_argument("--pins", default=str(gpu_wheels.DEFAULT_PINS), help="the pin list")
  parser.add_argument("--gpus", type=int, default=0)
  parser.add_argument("--estimates", metavar="RECORDS", help="an earlier run's records.jsonl to take estimates from")
  parser.add_argument("--dry-run", action="store_true")
  parser.add_argument("--smoke", required=True, metavar="NAME|XLA_FLAGS|ARGS")
  parser.add_argument("--run", action="append", default=[], metavar="NAME|XLA_FLAGS|ARGS")
  parser.add_argument("outdir")
  args = parser.parse_args(argv)
  if not args.budget > RESERVE_S:
    parser.error(f"--budget must be more than the {RESERVE_S} s kept for the records, got {args.budget:g}")
  try:
    runs, smoke = [Run.parse(e) for e in args.run], Run.parse(args.smoke)
  except ValueError as e:
    parser.error(str(e))
  if args.estimates and not os.path.isfile(args.estimates):
    parser.error(f"--estimates {args.estimates}: no such file; give the records.jsonl of an earlier budgeted run")
  names = [r.name for r in runs]
  if len(set(names)) != len(names):
    parser.error(f"run names must be unique: {sorted(n for n in set(names) if names.count(n) > 1)}")
  try:
    if args.dry_run:
      return plan(args, runs, smoke)
  except gpu_wheels.WheelError as e:
    print(f"launch/bench_gpu.sh: {e}", file=sys.stderr)
    return 2
  runner = Runner(args, runs, smoke)
  try:
    runner.open(pathlib.Path(args.outdir))
  except (ValueError, OSError) as e:
    parser.error(str(e))

  def on_signal(signum, frame):
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
      signal.signal(s, signal.SIG_IGN)   # one stop is enough; finish writing
    raise Stop(signum)

  for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, on_signal)
  try:
    runner.environment()
    for line in plan_lines(runner):
      runner.commands.write(line + "\n")
    if not runner.install():
      runner.stop_all("not started: the install step failed")
      runner.summary("install failed")
      return 1
    if not runner.smoke_step():
      runner.stop_all("not started: the smoke run failed")
      runner.summary("smoke failed")
      return 1
    runner.runs()
  except Stop as s:
    cur = runner.current
    runner.say(f"stopped by {s} during {cur.name if cur else 'the set-up'}", err=True)
    if cur is not None:
      runner.emit({"name": cur.name, "status": "cut", "reason": f"the script was stopped by {s}",
                   "wall_s": round(time.monotonic() - runner.current_t0, 1), "kind": cur.kind, "command": cur.command(runner.python, runner.base_flags)})
      if cur is not runner.smoke:
        runner.outcomes["cut"].append(cur.name)
    runner.stop_all(f"not started: the script was stopped by {s} at {runner.elapsed():.0f} s")
    runner.summary(f"stopped by {s}")
    return 128 + s.signum
  failed = runner.outcomes["failed"] + runner.outcomes["timeout"]
  runner.summary("done" if not failed else "done, with failures")
  return 1 if failed else 0


def plan_lines(runner: Runner) -> list[str]:
  """The order and first estimates, for commands.txt."""
  return [f"plan: {i}. {r.name} (first estimate {runner.est.estimate(r)} s)" for i, r in
          enumerate(runner.queue, 1)]


if __name__ == "__main__":
  sys.exit(main())
