"""launch/bench_gpu.sh --budget: the accelerator benchmark as one budgeted call (launch/bench_budget.py) and the
wheels it brings (launch/gpu_wheels.py, launch/gpu_wheels.txt). Dry runs, and real runs against a stand-in for
python that fakes `python -m rajax.bench` runs of given durations and failures; no compilation."""

import ast
import base64
import hashlib
import importlib.util
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import zipfile

import numpy
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "launch" / "bench_gpu.sh"
RESERVE_S = 10   # launch/bench_budget.py keeps this much of the budget for the records

# Stands in for python. `-m rajax.bench ARGS` is faked: it appends its arguments, pid, PYTHONPATH and whether
# the test wheel imports to STUB_CALLS, then behaves as the first [regex, behaviour] of STUB_SPEC whose regex
# matches "XLA_FLAGS ARGS": sleeps jax_s, then (with --vs-torch) logs rajax.bench's PyTorch line and sleeps
# torch_s; fail="jax"|"torch" exits 1 with `error` on stderr at that point; otherwise it prints a record.
# Anything else (the budgeted runner itself, import checks, pip) runs in the real interpreter.
_STUB = f"""#!{sys.executable}
import importlib.util, json, os, re, sys, time
argv = sys.argv[1:]
if argv[:2] != ["-m", "rajax.bench"]:
  os.execv({sys.executable!r}, [{sys.executable!r}] + argv)
args = argv[2:]
line = (os.environ.get("XLA_FLAGS", "") + " " + " ".join(args)).strip()
with open(os.environ["STUB_CALLS"], "a") as f:
  f.write(json.dumps({{"args": args, "line": line, "pid": os.getpid(), "pythonpath": os.environ.get("PYTHONPATH", ""),
                       "test_wheel_imports": importlib.util.find_spec("rajaxfake_a") is not None}}) + "\\n")
b = {{}}
for pattern, behaviour in json.loads(os.environ.get("STUB_SPEC", "[]")):
  if re.search(pattern, line):
    b = behaviour
    break
print("rajax.bench: compiling the step", file=sys.stderr, flush=True)
time.sleep(b.get("jax_s", 0))
if b.get("fail") == "jax":
  print(b.get("error", "stub failure"), file=sys.stderr, flush=True)
  sys.exit(1)
if "--vs-torch" in args:
  print("rajax.bench: timing the PyTorch reference (amp_bf16_cl) on cuda", file=sys.stderr, flush=True)
  time.sleep(b.get("torch_s", 0))
  if b.get("fail") == "torch":
    print(b.get("error", "stub failure"), file=sys.stderr, flush=True)
    sys.exit(1)
record = {{"bench": "train_step", "args": args, "platform": b.get("platform", "gpu"), "img_per_s": 100.0,
          "step_ms": 10.0, "compile_s": 1.0}}
if "--vs-torch" in args:
  record["vs_torch"] = {{"amp_bf16_cl": {{"img_per_s": 50.0, "ratio": 2.0, "step_ms": 1.0, "steps": 30, "warmup_s": 0.1}}}}
print(json.dumps(record), flush=True)
"""


class Bench:
  """The script with the stand-in python, its calls and its OUTDIR."""

  def __init__(self, tmp_path):
    self.tmp = tmp_path
    tmp_path.mkdir(parents=True, exist_ok=True)
    self.python = tmp_path / "python"
    self.python.write_text(_STUB)
    self.python.chmod(0o755)
    self.calls_file = tmp_path / "calls.jsonl"
    self.out = tmp_path / "out"

  def env(self, spec=(), **extra):
    env = {**os.environ, "PYTHON": str(self.python), "NUM_GPUS": "1", "STUB_CALLS": str(self.calls_file),
           "STUB_SPEC": json.dumps([list(s) for s in spec]), "TMPDIR": str(self.tmp), **extra}   # site folders here
    env.pop("XLA_FLAGS", None)
    env.pop("PYTHONPATH", None)
    return env

  def run(self, *args, spec=(), timeout=120, **extra):
    return subprocess.run([str(SCRIPT), *map(str, args)], cwd=ROOT, env=self.env(spec, **extra),
                          capture_output=True, text=True, timeout=timeout)

  def popen(self, prefix, *args, spec=()):
    return subprocess.Popen([*prefix, str(SCRIPT), *map(str, args)], cwd=ROOT, env=self.env(spec),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

  def calls(self):
    if not self.calls_file.exists():
      return []
    return [json.loads(l) for l in self.calls_file.read_text().splitlines()]

  def records(self):
    path = self.out / "records.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []

  def by_name(self):
    return {r["name"]: r for r in self.records()}


@pytest.fixture
def bench(tmp_path):
  return Bench(tmp_path)


def _call_name(call):
  """Which table entry a stand-in call was, from its arguments."""
  spec = call["args"][call["args"].index("--config") + 1]
  return spec.split(":", 1)[1]


def _wheel(folder, name, version, files):
  """A pure-Python wheel `name-version-py3-none-any.whl` holding `files` ({path: text})."""
  dist = f"{name}-{version}.dist-info"
  contents = {p: t.encode() for p, t in files.items()}
  contents[f"{dist}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
  contents[f"{dist}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
  rows = [f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).decode().rstrip('=')},{len(d)}"
          for p, d in contents.items()]
  contents[f"{dist}/RECORD"] = ("\n".join(rows + [f"{dist}/RECORD,,"]) + "\n").encode()
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / f"{name}-{version}-py3-none-any.whl"
  with zipfile.ZipFile(path, "w") as z:
    for p, d in contents.items():
      z.writestr(p, d)
  return path


def _pin_line(path, requirement, module):
  data = path.read_bytes()
  return f"{requirement} {module} {path.name} {len(data)} {hashlib.sha256(data).hexdigest()}\n"


@pytest.fixture
def wheels(tmp_path):
  """A wheel folder and pin list: rajaxfake_a (not installed anywhere) and a wheel for `json` (imports already)."""
  folder = tmp_path / "wheels"
  a = _wheel(folder, "rajaxfake_a", "1.0", {"rajaxfake_a/__init__.py": "__version__ = '1.0'\n"})
  j = _wheel(folder, "fakejson", "1.0", {"fakejson_files/__init__.py": ""})
  pins = tmp_path / "pins.txt"
  pins.write_text("# test pins\n" + _pin_line(a, "rajaxfake_a==1.0", "rajaxfake_a") + _pin_line(j, "fakejson==1.0", "json"))
  return folder, pins


def _load(name):
  """launch/NAME.py as a module (launch/ is not a package)."""
  key = f"launch_{name}"
  if key not in sys.modules:
    spec = importlib.util.spec_from_file_location(key, ROOT / "launch" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module   # dataclasses look their module up
    spec.loader.exec_module(module)
  return sys.modules[key]


def _dead(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  try:
    return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
  except OSError:
    return True


def _wait_for(predicate, seconds):
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline:
    if predicate():
      return True
    time.sleep(0.05)
  return predicate()


# --------------------------------------------------------------------------- the plan (--dry-run)

RUN_LINE = re.compile(r"^\s*(\d+)\. (\S+) \(estimate (\d+) s(?:, from (\d+) s to (\d+) s\): (.*)|\): skipped: (.*))$")


def _plan(stdout):
  """[(name, estimate, start or None when skipped, command or None)] from a dry run's numbered lines."""
  rows = []
  for line in stdout.splitlines():
    m = RUN_LINE.match(line)
    if m:
      rows.append((m[2], int(m[3]), None if m[4] is None else int(m[4]), m[6]))
  return rows


def _tier(name):
  """The issue's priority tiers: the two targets vs PyTorch, the other methods, the levers, end to end;
  None for runs it does not name."""
  if name in ("sr_ra", "denoise_ra"):
    return 0
  if re.fullmatch(r"(sr|denoise)_(unsupervised|transformer)", name):
    return 1
  if name.startswith("multi_") or re.fullmatch(r"(sr|denoise)_ra_(b128|b256|latency_hiding|no_triton_gemm|"
                                               r"no_command_buffer)", name):
    return 2
  if name.endswith("_pipeline"):
    return 3
  return None


def _priority_violations(names):
  """Pairs out of the issue's order: a lower tier after a higher one, or a run it does not name before the levers."""
  bad = []
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      ta, tb = _tier(a), _tier(b)
      if (ta is not None and tb is not None and tb < ta) or (ta is None and tb is not None and tb <= 2):
        bad.append((a, b))
  return bad


def test_dry_run_plans_the_install_the_smoke_run_then_the_runs_in_the_issues_priority_order(bench, wheels):
  folder, pins = wheels
  r = bench.run("--budget", 100000, "--wheels", folder, "--dry-run", bench.out, WHEEL_PINS=pins, NUM_GPUS="2")
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  install = [l for l in lines if l.startswith("install:")]
  assert any("to install" in l and "rajaxfake_a==1.0" in l and "fakejson" not in l for l in install), install
  assert any("already importable, skipped: json" in l for l in install), install
  smoke = [i for i, l in enumerate(lines) if l.startswith("smoke:")]
  first_run = next(i for i, l in enumerate(lines) if RUN_LINE.match(l))
  assert len(smoke) == 1 and max(i for i, l in enumerate(lines) if l.startswith("install:")) < smoke[0] < first_run
  assert "tiny=true" in lines[smoke[0]] and "steps=1" in lines[smoke[0]] and "a failure stops the script" in lines[smoke[0]]
  plan = _plan(r.stdout)
  names = [n for n, *_ in plan]
  assert names[:2] == ["sr_ra", "denoise_ra"] and all("--vs-torch" in c for _, _, _, c in plan[:2])
  assert {"sr_unsupervised", "sr_transformer", "sr_ra_b128", "sr_ra_b256", "sr_ra_latency_hiding",
          "multi_sr_ra_per_device", "sr_ra_pipeline", "denoise_ra_pipeline"} <= set(names)
  assert all(start is not None for _, _, start, _ in plan)   # a budget this large skips nothing
  assert _priority_violations(names) == []
  assert not bench.out.exists() and bench.calls() == []      # a dry run runs nothing and writes nothing
  # the order check fails when the order breaks
  assert _priority_violations(["sr_ra_pipeline", *[n for n in names if n != "sr_ra_pipeline"]])
  assert _priority_violations([names[0], names[2], names[1], *names[3:]])
  rest = [n for n in names if n != "jpeg_ra"]
  assert _priority_violations(rest[:3] + ["jpeg_ra"] + rest[3:])


def _budget_violations(plan, budget, t0):
  """Where a plan breaks the budget rule, simulated from its own estimates: a run starts, at the end of the
  runs before it, exactly when it ends within the budget less the reserve; otherwise it is skipped."""
  bad, t = [], t0
  for name, est, start, _ in plan:
    fits = t + est <= budget - RESERVE_S
    if fits != (start is not None) or (start is not None and start != round(t)):
      bad.append(name)
    if fits:
      t += est
  return bad


def test_dry_run_starts_only_the_runs_whose_estimate_fits_in_the_budget_and_goes_on_past_a_skip(bench):
  r = bench.run("--budget", 100000, "--dry-run", bench.out)
  assert r.returncode == 0, r.stderr
  full = _plan(r.stdout)
  smoke_s = int(re.search(r"^smoke: \(estimate (\d+) s", r.stdout, re.M)[1])
  cheapest = min(e for _, e, _, _ in full[1:])
  assert full[1][1] > cheapest
  budget = RESERVE_S + smoke_s + full[0][1] + cheapest   # the first run and the cheapest later one fit, no more
  r = bench.run("--budget", budget, "--dry-run", bench.out)
  assert r.returncode == 0, r.stderr
  plan = _plan(r.stdout)
  assert [n for n, *_ in plan] == [n for n, *_ in full]
  assert _budget_violations(plan, budget, smoke_s) == []
  started = [n for n, _, s, _ in plan if s is not None]
  assert started[0] == "sr_ra" and len(started) == 2 and plan[1][2] is None   # denoise_ra skipped, a later one runs
  assert all(f"past the {budget - RESERVE_S} s the budget leaves" in l for l in r.stdout.splitlines()
             if "skipped" in l)
  # the rule check fails on a plan that starts a run past the budget, or skips one that fits
  assert _budget_violations([plan[0], (plan[1][0], plan[1][1], plan[0][2] + plan[0][1], "x"), *plan[2:]], budget,
                            smoke_s)
  assert _budget_violations([(plan[0][0], plan[0][1], None, None), *plan[1:]], budget, smoke_s)


# --------------------------------------------------------------------------- real runs against the stand-in

ONLY3 = "^(sr_ra|denoise_ra|sr_unsupervised)$"


def test_runs_go_in_priority_order_each_record_is_the_runs_own_and_three_files_come_back(bench):
  r = bench.run("--budget", 300, "--only", ONLY3, bench.out, spec=[("", {"jax_s": 0.2})])
  assert r.returncode == 0, r.stderr
  calls = bench.calls()
  assert [_call_name(c) for c in calls] == ["task=sr,mode=ra,tiny=true,steps=1", "task=sr,mode=ra",
                                            "task=denoise,mode=ra", "task=sr,mode=unsupervised"]
  records = bench.records()
  assert [x["name"] for x in records] == ["environment", "smoke", "sr_ra", "denoise_ra", "sr_unsupervised", "summary"]
  assert all(x["status"] == "ok" for x in records[1:-1])
  for rec, call in zip(records[1:-1], calls):
    assert rec["record"]["args"] == call["args"]        # the record is what that run printed
    assert rec["command"].endswith(" ".join(call["args"]))
  assert records[1]["limit_s"] <= 120                    # the smoke run is bounded to about its first minute
  assert records[-1]["ok"] == ["sr_ra", "denoise_ra", "sr_unsupervised"] and records[-1]["status"] == "done"
  assert sorted(p.name for p in bench.out.iterdir()) == ["bench.log", "commands.txt", "records.jsonl"]
  log = (bench.out / "bench.log").read_text()
  assert log.count("rajax.bench: compiling the step") == 4 and '"bench": "train_step"' not in log
  assert all(x["command"] in (bench.out / "commands.txt").read_text() for x in records[1:-1])


def test_a_later_run_of_the_same_kind_is_estimated_from_the_measured_wall_time(bench):
  r = bench.run("--budget", 300, "--only", "^(sr_ra_b128|sr_ra_b256|denoise_ra_latency_hiding)$", bench.out,
                spec=[("batch=128", {"jax_s": 2.0})])
  assert r.returncode == 0, r.stderr
  rec = bench.by_name()
  smoke_wall = rec["smoke"]["wall_s"]
  # sr_ra_b256 is the kind sr/ra that sr_ra_b128 measured: start-up (the smoke run) + its measured JAX part
  assert abs(rec["sr_ra_b256"]["estimate_s"] - rec["sr_ra_b128"]["wall_s"]) <= 1
  assert rec["sr_ra_b128"]["estimate_s"] > rec["sr_ra_b128"]["wall_s"] + 10   # from the table, before any measure
  # an unseen kind: the table scaled by the mean measured/table ratio so far (kept within 0.5..4)
  m = _load("bench_budget")
  ratios = [max(1.0, rec[n]["wall_s"] - smoke_wall) / m.JAX_S[("sr", "ra")] for n in ("sr_ra_b128", "sr_ra_b256")]
  expected = smoke_wall + m.JAX_S[("denoise", "ra")] * min(4.0, max(0.5, sum(ratios) / 2))
  assert abs(rec["denoise_ra_latency_hiding"]["estimate_s"] - expected) <= 1.5


def test_estimator_learns_start_up_torch_variants_and_jax_parts_from_records():
  m = _load("bench_budget")
  sr = m.Run.parse("sr_ra||--config configs/bench.py:task=sr,mode=ra --config.mesh.data=1 --vs-torch")
  b128 = m.Run.parse("sr_ra_b128||--config configs/bench.py:task=sr,mode=ra,batch=128 --config.mesh.data=1")
  dn = m.Run.parse("denoise_ra||--config configs/bench.py:task=denoise,mode=ra --config.mesh.data=1 --vs-torch")
  est = m.Estimator()
  assert est.estimate(sr) == m.START_S + m.JAX_S[("sr", "ra")] + m.TORCH_S["eager"] + m.TORCH_S["compile"]
  est.learn_smoke(8.0, {"vs_torch": {"amp_bf16_cl": {"warmup_s": 1.0, "steps": 1, "step_ms": 5.0}}})
  record = {"vs_torch": {"amp_bf16_cl": {"warmup_s": 10.0, "steps": 30, "step_ms": 100.0},
                         "compile_bf16_cl": {"warmup_s": 50.0, "steps": 30, "step_ms": 100.0}}}
  est.learn(sr, 102.0, record)   # PyTorch: 13 + 53 s; JAX: 102 - 8 - 66 = 28 s, 0.7 of the table's 40 s
  assert est.estimate(b128) == 8 + 28
  assert est.estimate(dn) == round(8 + 0.7 * m.JAX_S[("denoise", "ra")] + 13 + 53)
  assert m.Estimator().estimate(b128) != 8 + 28   # without learning the table stays
  # a run's limit: twice its estimate, at least estimate + 120 s, never past what the budget leaves
  assert (m.run_limit(100, 1000), m.run_limit(300, 1000), m.run_limit(300, 200)) == (220, 600, 200)


def test_records_are_written_as_runs_end_and_a_cut_keeps_them_skips_the_rest_and_kills_the_run(bench):
  spec = [("task=denoise,mode=ra", {"jax_s": 120})]
  p = bench.popen(["timeout", "-s", "TERM", "300"], "--budget", 300, "--only", ONLY3, bench.out, spec=spec)
  try:
    assert _wait_for(lambda: len(bench.calls()) == 3, 60), bench.calls()
    assert p.poll() is None and bench.by_name()["sr_ra"]["status"] == "ok"   # on disk while the script runs
    p.send_signal(signal.SIGTERM)   # to timeout, which passes it on as it does when its time is up
    out, err = p.communicate(timeout=60)
  finally:
    p.kill()
  assert p.returncode == 128 + signal.SIGTERM, err
  rec = bench.by_name()
  assert rec["sr_ra"]["status"] == "ok" and rec["denoise_ra"]["status"] == "cut"
  assert rec["sr_unsupervised"]["status"] == "skipped" and "stopped by SIGTERM" in rec["sr_unsupervised"]["reason"]
  assert rec["summary"]["status"] == "stopped by SIGTERM" and rec["summary"]["cut"] == ["denoise_ra"]
  assert _wait_for(lambda: _dead(bench.calls()[2]["pid"]), 10)


def test_a_kill_that_cannot_be_caught_keeps_the_finished_records_and_takes_the_run_with_it(bench):
  spec = [("task=denoise,mode=ra", {"jax_s": 120})]
  p = bench.popen([], "--budget", 300, "--only", ONLY3, bench.out, spec=spec)   # bash execs the runner: p.pid
  try:
    assert _wait_for(lambda: len(bench.calls()) == 3, 60), bench.calls()
    p.kill()
    p.communicate(timeout=60)
  finally:
    p.kill()
  assert p.returncode == -signal.SIGKILL
  names = [r["name"] for r in bench.records()]
  assert names == ["environment", "smoke", "sr_ra"] and bench.by_name()["sr_ra"]["record"]["args"]
  assert _wait_for(lambda: _dead(bench.calls()[2]["pid"]), 10)   # not left running on the GPU


def test_a_run_past_its_time_limit_is_killed_and_the_script_still_ends_within_the_budget(bench, tmp_path):
  prior = tmp_path / "prior.jsonl"   # an earlier run's records: a 0.5 s start-up, sr/ra runs of 1 s
  args = ["--config", "configs/bench.py:task=sr,mode=ra", "--config.mesh.data=1"]
  prior.write_text(json.dumps({"name": "smoke", "status": "ok", "wall_s": 0.5, "flags": "", "args": args}) + "\n" +
                   json.dumps({"name": "sr_ra_b128", "status": "ok", "wall_s": 1.5, "flags": "", "args": args}) + "\n")
  budget = 18
  t0 = time.monotonic()
  r = bench.run("--budget", budget, "--estimates", prior, "--only", "^(sr_ra_b128|sr_ra_b256)$", bench.out,
                spec=[("batch=128", {"jax_s": 300})])
  wall = time.monotonic() - t0
  assert r.returncode == 1, r.stderr
  rec = bench.by_name()
  assert rec["sr_ra_b128"]["status"] == "timeout" and rec["sr_ra_b128"]["estimate_s"] <= 3
  assert rec["sr_ra_b128"]["wall_s"] < budget and rec["sr_ra_b128"]["limit_s"] <= budget - RESERVE_S
  assert rec["sr_ra_b256"]["status"] == "skipped" and "left of the 18 s budget" in rec["sr_ra_b256"]["reason"]
  assert rec["summary"]["timeout"] == ["sr_ra_b128"] and wall < budget + 5   # hang bound: the script stopped it
  assert _dead(bench.calls()[1]["pid"])


def test_a_failing_smoke_run_stops_the_script_with_its_error_before_any_run(bench):
  r = bench.run("--budget", 300, "--only", ONLY3, bench.out,
                spec=[("tiny=true", {"fail": "jax", "error": "boom: no CUDA device visible"})])
  assert r.returncode == 1
  assert "boom: no CUDA device visible" in r.stderr and "smoke: FAILED" in r.stderr
  assert len(bench.calls()) == 1
  rec = bench.by_name()
  assert rec["smoke"]["status"] == "failed" and "boom: no CUDA device visible" in rec["smoke"]["log_tail"]
  assert all(rec[n]["status"] == "skipped" and "smoke run failed" in rec[n]["reason"]
             for n in ("sr_ra", "denoise_ra", "sr_unsupervised"))
  assert rec["summary"]["status"] == "smoke failed"


def test_a_smoke_run_whose_pytorch_part_fails_lets_the_runs_go_on_without_vs_torch(bench):
  r = bench.run("--budget", 300, "--only", "^(sr_ra|denoise_ra)$", bench.out,
                spec=[("tiny=true", {"fail": "torch", "error": "torch: CUDA error"})])
  assert r.returncode == 0, r.stderr
  calls = bench.calls()
  assert len(calls) == 3 and not any("--vs-torch" in c["args"] for c in calls[1:])
  rec = bench.by_name()
  assert rec["sr_ra"]["status"] == "ok" and "smoke" in rec["sr_ra"]["dropped"]["--vs-torch"]


def test_a_smoke_step_that_jax_ran_on_the_cpu_of_a_gpu_machine_stops_the_script(bench):
  spec = [("tiny=true", {"platform": "cpu"})]
  r = bench.run("--budget", 300, "--only", "^sr_ra$", bench.out, spec=spec, NUM_GPUS="1")
  assert r.returncode == 1 and "jax[cuda12]" in r.stderr and len(bench.calls()) == 1
  other = Bench(bench.tmp / "no_gpu")
  r = other.run("--budget", 300, "--only", "^sr_ra$", other.out, spec=spec, NUM_GPUS="0")   # a CPU machine
  assert r.returncode == 0, r.stderr
  assert other.by_name()["sr_ra"]["status"] == "ok"


def test_a_vs_torch_run_that_fails_after_its_jax_step_runs_again_without_torch_and_so_do_the_later_ones(bench):
  spec = [("task=sr,mode=ra --config.mesh.data=1 --vs-torch", {"fail": "torch", "error": "inductor: no compiler"})]
  r = bench.run("--budget", 300, "--only", "^(sr_ra|denoise_ra)$", bench.out, spec=spec)
  assert r.returncode == 1
  calls = bench.calls()
  assert [("--vs-torch" in c["args"], _call_name(c)) for c in calls[1:]] == [
      (True, "task=sr,mode=ra"), (False, "task=sr,mode=ra"), (False, "task=denoise,mode=ra")]
  records = [x for x in bench.records() if x["name"] in ("sr_ra", "denoise_ra")]
  assert [(x["name"], x["status"]) for x in records] == [("sr_ra", "failed"), ("sr_ra", "ok"), ("denoise_ra", "ok")]
  assert "inductor: no compiler" in records[1]["dropped"]["--vs-torch"]
  # a failure in the JAX part is not PyTorch's: no second try, and the later runs keep --vs-torch
  other = Bench(bench.tmp / "jax_fails")
  spec = [("task=sr,mode=ra --config.mesh.data=1 --vs-torch", {"fail": "jax"})]
  r = other.run("--budget", 300, "--only", "^(sr_ra|denoise_ra)$", other.out, spec=spec)
  assert r.returncode == 1
  assert [("--vs-torch" in c["args"], _call_name(c)) for c in other.calls()[1:]] == [
      (True, "task=sr,mode=ra"), (True, "task=denoise,mode=ra")]


def test_the_pytorch_line_the_retry_keys_on_is_the_one_rajax_bench_logs():
  m = _load("bench_budget")
  assert f'"{m.TORCH_MARKER} (%s) on %s"' in (ROOT / "rajax" / "bench.py").read_text()
  assert m.TORCH_MARKER in _STUB


# --------------------------------------------------------------------------- the wheels

def test_the_install_step_installs_the_wheels_that_do_not_import_and_the_runs_see_them(bench, wheels):
  folder, pins = wheels
  r = bench.run("--budget", 300, "--wheels", folder, "--only", "^sr_ra$", bench.out, WHEEL_PINS=pins)
  assert r.returncode == 0, r.stderr
  install = bench.by_name()["install"]
  assert install["status"] == "ok" and install["installed"] == ["rajaxfake_a==1.0"]
  assert install["skipped_importable"] == ["json"]
  site = pathlib.Path(install["site"])
  assert (site / "rajaxfake_a" / "__init__.py").is_file() and not (site / "fakejson_files").exists()
  assert install["machine"]["numpy"] == numpy.__version__   # the interpreter's own, reported after the install
  calls = bench.calls()
  assert len(calls) == 2 and all(c["test_wheel_imports"] and c["pythonpath"].split(os.pathsep)[0] == str(site)
                                 for c in calls)
  # without --wheels nothing is installed and the runs do not see it
  other = Bench(bench.tmp / "plain")
  r = other.run("--budget", 300, "--only", "^sr_ra$", other.out, WHEEL_PINS=pins)
  assert r.returncode == 0 and not any(c["test_wheel_imports"] for c in other.calls())


def test_a_wheel_that_does_not_match_its_pinned_sha256_stops_the_script_before_the_smoke_run(bench, wheels):
  folder, pins = wheels
  path = folder / "rajaxfake_a-1.0-py3-none-any.whl"
  data = bytearray(path.read_bytes())
  data[-30] ^= 0xFF
  path.write_bytes(bytes(data))
  r = bench.run("--budget", 300, "--wheels", folder, "--only", "^sr_ra$", bench.out, WHEEL_PINS=pins)
  assert r.returncode == 1
  assert "does not match its pinned sha256" in r.stderr and "launch/gpu_wheels.py fetch" in r.stderr
  assert bench.calls() == [] and bench.by_name()["install"]["status"] == "failed"
  assert bench.by_name()["sr_ra"]["reason"] == "not started: the install step failed"


def test_a_wheel_that_would_shadow_the_machines_numpy_stops_the_script(bench, tmp_path):
  folder = tmp_path / "shadowing"
  w = _wheel(folder, "rajaxfake_b", "1.0", {"rajaxfake_b/__init__.py": "", "numpy/__init__.py": "__version__ = '0'\n"})
  pins = tmp_path / "shadow_pins.txt"
  pins.write_text(_pin_line(w, "rajaxfake_b==1.0", "rajaxfake_b"))
  r = bench.run("--budget", 300, "--wheels", folder, "--only", "^sr_ra$", bench.out, WHEEL_PINS=pins)
  assert r.returncode == 1 and "shadows the machine's own numpy" in r.stderr, r.stderr
  assert bench.calls() == [] and bench.by_name()["install"]["status"] == "failed"


def test_fetch_downloads_the_pinned_wheels_and_rejects_another_build_of_one(tmp_path):
  index = tmp_path / "index"
  a = _wheel(index, "rajaxfake_a", "1.0", {"rajaxfake_a/__init__.py": "x = 1\n"})
  pins = tmp_path / "pins.txt"
  pins.write_text(_pin_line(a, "rajaxfake_a==1.0", "rajaxfake_a"))
  fetch = [sys.executable, "launch/gpu_wheels.py", "fetch", "--pins", str(pins), "--pip-arg=--no-index",
           f"--pip-arg=--find-links={index}"]
  r = subprocess.run([*fetch, str(tmp_path / "got")], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  assert (tmp_path / "got" / a.name).read_bytes() == a.read_bytes()
  assert f"1 wheels, {a.stat().st_size:,} bytes" in r.stdout
  _wheel(index, "rajaxfake_a", "1.0", {"rajaxfake_a/__init__.py": "x = 2\n"})   # same name, other contents
  r = subprocess.run([*fetch, str(tmp_path / "again")], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 1 and "does not match its pinned sha256" in r.stderr


# the GPU machine's own packages (docs: Python 3.12, jax 0.11 CUDA, flax, optax, orbax, chex, torch, torchvision)
MACHINE = {"jax", "jaxlib", "numpy", "scipy", "flax", "optax", "orbax_checkpoint", "chex", "torch", "torchvision",
           "pillow", "ml_dtypes"}
MACHINE_MODULES = {"jax", "jaxlib", "numpy", "scipy", "flax", "optax", "orbax", "chex", "torch", "torchvision",
                   "PIL", "ml_dtypes", "absl"}
CARRY_LIMIT = 64 << 20


def _pin_problems(pins, tree_bytes):
  """What in a pin list would break on the GPU machine or not travel with the command."""
  bad = []
  names = [p.requirement.split("==")[0].lower().replace("-", "_") for p in pins]
  bad += [f"{n} is the machine's own" for n in names if n in MACHINE]
  bad += [f"{n} pinned twice" for n in set(names) if names.count(n) > 1]
  bad += [f"{p.file} is not for CPython 3.12 on x86_64 Linux" for p in pins
          if p.python_tag not in ("cp312", "py3", "py2.py3") or not re.search(r"-(manylinux\S*x86_64|any)\.whl$", p.file)]
  total = sum(p.size for p in pins)
  if total > CARRY_LIMIT // 2 or total + tree_bytes > CARRY_LIMIT - (8 << 20):
    bad.append(f"{total} bytes of wheels and {tree_bytes} of tree leave no room under the carry limit")
  return bad


def _tracked_bytes():
  files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
  return sum((ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file())


def test_the_pin_list_travels_within_the_carry_limit_and_replaces_nothing_the_gpu_machine_has():
  w = _load("gpu_wheels")
  pins = w.read_pins()
  assert _pin_problems(pins, _tracked_bytes()) == []
  first = pins[0]
  assert _pin_problems([*pins, w.Pin("numpy==2.0.0", "numpy", "numpy-2.0.0-cp312-cp312-manylinux_2_17_x86_64.whl",
                                     10, "0" * 64)], 0)
  assert _pin_problems([w.Pin(first.requirement, first.module, first.file.replace("cp312", "cp311"), 1, "0" * 64)], 0)
  assert _pin_problems([w.Pin(first.requirement, first.module, first.file, 40 << 20, first.sha256)], 0)


def _imports(path):
  """(third-party or rajax module, at module level?) for every absolute import in a file."""
  tree = ast.parse(path.read_text())
  top = {id(n) for node in tree.body for n in (ast.walk(node) if isinstance(node, (ast.Try, ast.If)) else [node])}
  out = []
  for n in ast.walk(tree):
    names = []
    if isinstance(n, ast.Import):
      names = [a.name for a in n.names]
    elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
      names = [n.module] + [f"{n.module}.{a.name}" for a in n.names]
    out += [(name, id(n) in top) for name in names]
  return out


def _file(module):
  p = ROOT.joinpath(*module.split("."))
  return p / "__init__.py" if (p / "__init__.py").is_file() else p.with_suffix(".py") if p.with_suffix(".py").is_file() else None


def _needed_modules():
  """Third-party modules `python -m rajax.bench` needs: imported at module level by any rajax module it reaches,
  or anywhere in the bench's own files (rajax/bench.py, rajax/data/bench.py)."""
  seen, todo, needed = set(), ["rajax.bench"], set()
  while todo:
    m = todo.pop()
    if m in seen:
      continue
    seen.add(m)
    parts = m.split(".")
    todo += [".".join(parts[:i]) for i in range(1, len(parts))]
    for name, top in _imports(_file(m)):
      root = name.split(".")[0]
      if root == "rajax":
        if _file(name):
          todo.append(name)
      elif root not in sys.stdlib_module_names and (top or m in ("rajax.bench", "rajax.data.bench")):
        needed.add(root)
  return needed


def test_every_module_the_bench_imports_is_the_gpu_machines_own_or_pinned():
  pinned = {p.module.split(".")[0] for p in _load("gpu_wheels").read_pins()}
  missing = _needed_modules() - MACHINE_MODULES
  assert {"grain", "ml_collections", "dm_pix", "skimage"} <= missing   # what the scan finds: not nothing
  assert missing - pinned == set()
  assert missing - (pinned - {"grain"}) == {"grain"}   # the check fails when a needed wheel is not pinned


# --------------------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("case", ["budget_word", "budget_small", "wheels_without_budget", "no_wheel_dir",
                                  "no_estimates_file", "outdir_with_records", "corrupt_wheel_dry_run"])
def test_bad_arguments_are_rejected_with_a_message_naming_the_fix(bench, wheels, case):
  folder, pins = wheels
  if case == "outdir_with_records":
    bench.out.mkdir()
    (bench.out / "records.jsonl").write_text("{}\n")
  if case == "corrupt_wheel_dry_run":
    (folder / "rajaxfake_a-1.0-py3-none-any.whl").write_bytes(b"not a wheel")
  args, fix = {
      "budget_word": (["--budget", "ten"], "--budget 510"),
      "budget_small": (["--budget", "5"], "--budget needs whole seconds above 10"),
      "wheels_without_budget": (["--wheels", folder], "add --budget SECONDS"),
      "no_wheel_dir": (["--budget", 300, "--wheels", bench.tmp / "nowhere"],
                       f"python3 launch/gpu_wheels.py fetch {bench.tmp / 'nowhere'}"),
      "no_estimates_file": (["--budget", 300, "--estimates", bench.tmp / "no.jsonl", "--dry-run"],
                            "give the records.jsonl of an earlier budgeted run"),
      "outdir_with_records": (["--budget", 300], "give a new OUTDIR or remove it"),
      "corrupt_wheel_dry_run": (["--budget", 300, "--wheels", folder, "--dry-run"],
                                "fetch them again: python3 launch/gpu_wheels.py fetch"),
  }[case]
  r = bench.run(*args, bench.out, WHEEL_PINS=pins)
  assert r.returncode == 2, (r.stdout, r.stderr)
  assert fix in r.stderr, r.stderr
  assert bench.calls() == []
  if case != "outdir_with_records":
    assert not bench.out.exists()
