"""The launch scripts: what they run (dry runs and real runs against stand-ins for python, srun,
gcloud and nvidia-smi), the environment each process gets, failures and signals."""

import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
OVERRIDES = ["--config.optim.processor.lr=3e-4", "--config.data.data_dir=/data/with space/it's"]
TRAIN_ARGS = ["-m", "rajax.train", "--config", "configs/smoke.py", "--workdir", "runs/x", *OVERRIDES]
ENV_KEYS = ["RAJAX_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "JAX_COORDINATOR_BIND_ADDRESS", "RAJAX_NUM_PROCESSES",
            "RAJAX_PROCESS_ID", "JAX_LOCAL_DEVICE_IDS", "XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION",
            "LIBTPU_INIT_ARGS", "RAJAX_HEARTBEAT_TIMEOUT"]

# Stands in for python: records its arguments, working directory and environment, then exits with
# STUB_RC_<process id> (default 0), or with STUB_WAIT=1 waits for SIGTERM and reports it.
_PYTHON = f"""#!{sys.executable}
import json, os, signal, sys, time
keys = {ENV_KEYS!r}
record = {{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": {{k: os.environ.get(k) for k in keys}}}}
with open(os.environ["STUB_RECORD"], "a") as f:
  f.write(json.dumps(record) + "\\n")
rank = os.environ.get("RAJAX_PROCESS_ID", "0")
if os.environ.get("STUB_WAIT"):
  def on_term(signum, frame):
    print(f"rank {{rank}} got TERM", flush=True)
    sys.exit(143)
  signal.signal(signal.SIGTERM, on_term)
  print(f"rank {{rank}} ready", flush=True)
  deadline = time.time() + 60
  while time.time() < deadline:
    time.sleep(0.05)
  sys.exit(99)
sys.exit(int(os.environ.get("STUB_RC_" + rank, "0")))
"""

# Stands in for srun and gcloud: records its arguments; gcloud also runs the --command it was given in
# bash (as each TPU worker's shell would).
_TOOL = f"""#!{sys.executable}
import json, os, subprocess, sys
name = os.path.basename(sys.argv[0])
env = {{k: os.environ.get(k) for k in {ENV_KEYS!r}}}
with open(os.environ["STUB_RECORD"], "a") as f:
  f.write(json.dumps({{"tool": name, "argv": sys.argv[1:], "cwd": os.getcwd(), "env": env}}) + "\\n")
if name == "gcloud" and os.environ.get("STUB_RUN_REMOTE"):
  remote = [a for a in sys.argv if a.startswith("--command=")][0][len("--command="):]
  sys.exit(subprocess.call(["bash", "-c", remote], cwd="/"))
sys.exit(int(os.environ.get("STUB_TOOL_RC", "0")))
"""


@pytest.fixture
def stubs(tmp_path):
  """A bin directory with python, srun, gcloud (and, with gpus(n), nvidia-smi) stand-ins first on PATH."""
  bindir = tmp_path / "bin"
  bindir.mkdir()
  for name, text in (("python", _PYTHON), ("srun", _TOOL), ("gcloud", _TOOL)):
    (bindir / name).write_text(text)
    (bindir / name).chmod(0o755)
  record = tmp_path / "record.jsonl"

  class Stubs:
    python = str(bindir / "python")

    @staticmethod
    def gpus(n):
      (bindir / "nvidia-smi").write_text("#!/bin/sh\n" + "".join(
          f"echo 'GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i})'\n" for i in range(n)))
      (bindir / "nvidia-smi").chmod(0o755)

    @staticmethod
    def env(**extra):
      env = {k: v for k, v in os.environ.items()
             if not k.startswith(("SLURM_", "RAJAX_", "JAX_", "XLA_", "LIBTPU_", "STUB_"))}
      env.update(PATH=f"{bindir}:{env['PATH']}", PYTHON=str(bindir / "python"), STUB_RECORD=str(record))
      env.update({k: str(v) for k, v in extra.items()})
      return env

    @staticmethod
    def records():
      return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []

  return Stubs


def _run(cmd, env, timeout=60, cwd=ROOT):
  return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- launch/local.sh


def test_local_dry_run_prints_the_command_and_runs_nothing(stubs):
  r = _run([LAUNCH / "local.sh", "--dry-run", "configs/smoke.py", "runs/x", *OVERRIDES], stubs.env(JAX_PLATFORMS="cpu"))
  assert r.returncode == 0, r.stderr
  lines = r.stdout.strip().splitlines()
  assert lines[0] == "JAX_PLATFORMS=cpu"
  assert shlex.split(lines[1]) == [stubs.python, *TRAIN_ARGS]
  assert "--xla_gpu" not in r.stdout  # no GPU flags on the CPU
  assert stubs.records() == []


def test_local_sets_gpu_flags_and_gives_each_process_its_gpus(stubs):
  stubs.gpus(4)
  env = stubs.env(XLA_FLAGS="--xla_dump_to=/tmp/hlo")
  r = _run([LAUNCH / "local.sh", "--dry-run", "configs/smoke.py", "runs/x", *OVERRIDES], env)
  assert r.returncode == 0, r.stderr
  assert "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true\\ --xla_dump_to=/tmp/hlo" in r.stdout
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9" in r.stdout

  r = _run([LAUNCH / "local.sh", "--processes", "2", "--dry-run", "configs/smoke.py", "runs/x", *OVERRIDES], env)
  assert r.returncode == 0, r.stderr
  procs = [shlex.split(line) for line in r.stdout.splitlines() if "rajax.train" in line]
  assert len(procs) == 2
  ports = set()
  for i, words in enumerate(procs):
    env_words = dict(w.split("=", 1) for w in words[:words.index(stubs.python)])
    assert words[words.index(stubs.python) + 1:] == TRAIN_ARGS
    assert env_words["RAJAX_DISTRIBUTED"] == "1" and env_words["RAJAX_NUM_PROCESSES"] == "2"
    assert env_words["RAJAX_PROCESS_ID"] == str(i)
    assert env_words["JAX_LOCAL_DEVICE_IDS"] == ["0,1", "2,3"][i]
    host, port = env_words["JAX_COORDINATOR_ADDRESS"].split(":")
    assert host == "127.0.0.1" and env_words["JAX_COORDINATOR_BIND_ADDRESS"] == f"127.0.0.1:{port}"
    ports.add(port)
  assert len(ports) == 1

  r = _run([LAUNCH / "local.sh", "--processes", "3", "--dry-run", "configs/smoke.py", "runs/x"], env)
  assert r.returncode == 2 and "4 GPUs cannot be split evenly over 3 processes" in r.stderr


def test_gpu_xla_flags_of_the_scripts_are_known_to_xla(stubs):
  stubs.gpus(1)
  flags = set()
  for script in ("local.sh", "slurm.sh"):
    r = _run([LAUNCH / script, "--dry-run", "configs/smoke.py", "runs/x"], stubs.env())
    assert r.returncode == 0, r.stderr
    value = [line for line in r.stdout.splitlines() if line.startswith("XLA_FLAGS=")][0]
    flags.update(shlex.split(value.split("=", 1)[1])[0].split())
  assert flags
  # XLA parses every backend's flags on any backend and aborts on an unknown one.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(XLA_FLAGS=" ".join(sorted(flags)), JAX_PLATFORMS="cpu")
  r = _run([sys.executable, "-c", "import jax; print(jax.devices())"], env)
  assert r.returncode == 0, r.stderr[-2000:]


def test_local_runs_every_process_and_reports_the_failed_one(stubs):
  r = _run([LAUNCH / "local.sh", "--processes", "2", "configs/smoke.py", "runs/x", *OVERRIDES],
           stubs.env(JAX_PLATFORMS="cpu", STUB_RC_1=3))
  assert r.returncode == 3, r.stdout + r.stderr
  records = sorted(stubs.records(), key=lambda rec: rec["env"]["RAJAX_PROCESS_ID"])
  assert [rec["argv"] for rec in records] == [TRAIN_ARGS, TRAIN_ARGS]
  assert [rec["env"]["RAJAX_PROCESS_ID"] for rec in records] == ["0", "1"]
  assert records[0]["env"]["JAX_COORDINATOR_ADDRESS"] == records[1]["env"]["JAX_COORDINATOR_ADDRESS"]
  assert records[0]["env"]["JAX_COORDINATOR_ADDRESS"].startswith("127.0.0.1:")
  assert records[0]["env"]["JAX_LOCAL_DEVICE_IDS"] is None  # no GPUs
  pids = re.findall(r"^\[process (\d)\] launch: process \1 of 2 has pid (\d+)", r.stdout, re.M)
  assert sorted(p for p, _ in pids) == ["0", "1"]
  assert "process 1 exited with status 3" in r.stderr and "process 0 exited" not in r.stderr
  assert "Rerun the same command to resume" in r.stderr

  r = _run([LAUNCH / "local.sh", "--processes", "2", "configs/smoke.py", "runs/x"], stubs.env(JAX_PLATFORMS="cpu"))
  assert r.returncode == 0 and r.stderr == "", r.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_local_passes_a_stop_signal_on_to_every_process(stubs, sig):
  # The launcher starts with SIGINT at its default, as from a terminal: a suite started in the
  # background (`pytest &`, some CI runners) ignores SIGINT, and bash cannot trap a signal that was
  # ignored when it started. The wrapper resets it and execs the launcher under the same pid.
  default_int = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                 "os.execv(sys.argv[1], sys.argv[1:])"]
  proc = subprocess.Popen([*default_int, LAUNCH / "local.sh", "--processes", "2", "configs/smoke.py", "runs/x"], cwd=ROOT,
                          env=stubs.env(JAX_PLATFORMS="cpu", STUB_WAIT=1), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
  try:
    # Generous bounds (a stopped run exits in about a second): the suite runs beside heavy tests.
    ready, lines = set(), []
    deadline = time.monotonic() + 120
    while len(ready) < 2 and time.monotonic() < deadline:
      line = proc.stdout.readline()
      lines.append(line)
      if m := re.search(r"rank (\d) ready", line):
        ready.add(m[1])
    assert ready == {"0", "1"}, "".join(lines)
    proc.send_signal(sig)  # to the launcher only, not to its process group
    out, _ = proc.communicate(timeout=120)
  finally:
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
  out = "".join(lines) + out
  assert "[process 0] rank 0 got TERM" in out and "[process 1] rank 1 got TERM" in out, out
  assert proc.returncode == 143, out
  assert "process 0 exited with status 143 (signal 15)" in out


def test_local_usage_errors(stubs):
  for args, message in ((["configs/smoke.py"], "usage:"), (["--processes", "0", "a", "b"], "positive integer"),
                        (["a", "b", "--lr=3"], "unknown option --lr=3")):
    r = _run([LAUNCH / "local.sh", *args], stubs.env())
    assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
  assert stubs.records() == []


# --------------------------------------------------------------------------- launch/slurm.sh


def _slurm_env(stubs, **extra):
  return stubs.env(**{**dict(SLURM_JOB_ID=4242, SLURM_JOB_NUM_NODES=2, SLURM_NTASKS_PER_NODE=8, SLURM_GPUS_ON_NODE=8,
                             SLURM_SUBMIT_DIR=ROOT), **extra})


def test_slurm_dry_run_prints_the_srun_command(stubs):
  r = _run([LAUNCH / "slurm.sh", "--dry-run", "configs/smoke.py", "runs/x", *OVERRIDES], stubs.env(), cwd="/")
  assert r.returncode == 0, r.stderr
  assert "not inside a Slurm allocation" in r.stdout
  assert shlex.split(r.stdout.splitlines()[-1]) == ["srun", "--kill-on-bad-exit=1", stubs.python, *TRAIN_ARGS]
  assert "RAJAX_DISTRIBUTED=1" in r.stdout and "--xla_gpu_enable_latency_hiding_scheduler=true" in r.stdout
  r = _run([LAUNCH / "slurm.sh", "--dry-run", "configs/smoke.py", "runs/x"], _slurm_env(stubs), cwd="/")
  assert "Slurm job 4242: 2 node(s), 8 task(s) per node" in r.stdout
  assert f"cd {ROOT}" in r.stdout
  assert stubs.records() == []


def test_slurm_runs_srun_from_the_submit_directory(stubs, tmp_path):
  env = _slurm_env(stubs, SRUN_FLAGS="--mpi=none", RAJAX_HEARTBEAT_TIMEOUT=60, XLA_FLAGS="--xla_dump_to=/tmp/x")
  r = _run([LAUNCH / "slurm.sh", "configs/smoke.py", "runs/x", *OVERRIDES], env, cwd=tmp_path)
  assert r.returncode == 0, r.stderr
  (rec,) = stubs.records()
  assert rec["tool"] == "srun" and rec["cwd"] == str(ROOT)
  assert rec["argv"] == ["--kill-on-bad-exit=1", "--mpi=none", stubs.python, *TRAIN_ARGS]
  assert rec["env"]["RAJAX_DISTRIBUTED"] == "1" and rec["env"]["RAJAX_HEARTBEAT_TIMEOUT"] == "60"
  assert rec["env"]["XLA_FLAGS"] == "--xla_gpu_enable_latency_hiding_scheduler=true --xla_dump_to=/tmp/x"
  assert rec["env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.9"
  # Nothing pins the coordinator or the process ids: jax.distributed reads them from Slurm.
  assert rec["env"]["JAX_COORDINATOR_ADDRESS"] is None and rec["env"]["RAJAX_PROCESS_ID"] is None


def test_slurm_failures_and_misuse(stubs, tmp_path):
  r = _run([LAUNCH / "slurm.sh", "configs/smoke.py", "runs/x"], _slurm_env(stubs, STUB_TOOL_RC=137), cwd=tmp_path)
  assert r.returncode == 137 and "srun exited with status 137" in r.stderr
  assert "Submit the same command again to resume" in r.stderr
  r = _run([LAUNCH / "slurm.sh", "configs/smoke.py", "runs/x"], stubs.env())
  assert r.returncode == 2 and "not inside a Slurm allocation" in r.stderr
  r = _run([LAUNCH / "slurm.sh", "configs/smoke.py", "runs/x"], _slurm_env(stubs, SLURM_NTASKS_PER_NODE=1))
  assert r.returncode == 0 and "1 task(s) per node but 8 GPU(s) per node" in r.stderr
  r = _run([LAUNCH / "slurm.sh", "configs/smoke.py"], stubs.env())
  assert r.returncode == 2 and "usage:" in r.stderr


def test_jax_distributed_finds_the_processes_from_slurm_variables(monkeypatch):
  """What each srun task's jax.distributed.initialize() works out from Slurm's variables."""
  from jax._src import clusters
  from rajax import distributed
  for k in list(os.environ):
    if k.startswith(("SLURM_", "RAJAX_", "JAX_COORDINATOR", "JAX_LOCAL_DEVICE", "OMPI_", "TPU_")):
      monkeypatch.delenv(k)
  monkeypatch.setenv("RAJAX_DISTRIBUTED", "1")
  for k, v in dict(SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="gpu[007-008]", SLURM_NTASKS="16", SLURM_PROCID="9",
                   SLURM_LOCALID="1", SLURM_STEP_NUM_NODES="2").items():
    monkeypatch.setenv(k, v)
  assert distributed.requested() and distributed.initialize_kwargs() == {}
  address, count, index, local = clusters.ClusterEnv.auto_detect_unset_distributed_params(
      None, None, None, None, None, 10)
  assert address.startswith("gpu007:") and (count, index, local) == (16, 9, [1])


# --------------------------------------------------------------------------- launch/tpu_pod.sh


def test_tpu_pod_runs_the_training_command_on_every_worker(stubs):
  args = ["--tpu", "rajax-v4-32", "--zone", "us-central2-b", "--project", "proj", "configs/smoke.py", "runs/x",
          *OVERRIDES]
  env = stubs.env(LIBTPU_INIT_ARGS="--xla_tpu_custom=1", RAJAX_HEARTBEAT_TIMEOUT=60)
  dry = _run([LAUNCH / "tpu_pod.sh", "--dry-run", *args], env)
  assert dry.returncode == 0, dry.stderr
  assert stubs.records() == []

  r = _run([LAUNCH / "tpu_pod.sh", *args], stubs.env(LIBTPU_INIT_ARGS="--xla_tpu_custom=1", RAJAX_HEARTBEAT_TIMEOUT=60,
                                                     STUB_RUN_REMOTE=1))
  assert r.returncode == 0, r.stderr
  gcloud, worker = stubs.records()
  assert gcloud["tool"] == "gcloud"
  assert gcloud["argv"][:7] == ["compute", "tpus", "tpu-vm", "ssh", "rajax-v4-32", "--zone=us-central2-b",
                                "--project=proj"]
  assert gcloud["argv"][7] == "--worker=all" and gcloud["argv"][8].startswith("--command=")
  # The printed command is the one that runs.
  assert shlex.split(dry.stdout) == ["gcloud", *gcloud["argv"]]
  # What a worker's shell makes of --command: the training command, word for word, in the repository.
  assert worker["argv"] == TRAIN_ARGS and worker["cwd"] == str(ROOT)
  assert worker["env"]["RAJAX_DISTRIBUTED"] == "1" and worker["env"]["RAJAX_HEARTBEAT_TIMEOUT"] == "60"
  flags = worker["env"]["LIBTPU_INIT_ARGS"].split()
  assert "--xla_tpu_enable_data_parallel_all_reduce_opt=true" in flags and flags[-1] == "--xla_tpu_custom=1"


def test_tpu_pod_failures_and_misuse(stubs):
  r = _run([LAUNCH / "tpu_pod.sh", "--tpu", "t", "--zone", "z", "configs/smoke.py", "runs/x"],
           stubs.env(STUB_TOOL_RC=255))
  assert r.returncode == 255 and "Run the same command again to resume" in r.stderr
  for args in (["configs/smoke.py", "runs/x"], ["--tpu", "t", "configs/smoke.py", "runs/x"],
               ["--tpu", "t", "--zone", "z", "configs/smoke.py"], ["--tpu"]):
    r = _run([LAUNCH / "tpu_pod.sh", *args], stubs.env())
    assert r.returncode == 2 and "usage:" in r.stderr, args
