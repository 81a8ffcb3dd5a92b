"""Multi-process runs on this machine: processes of 4 CPU devices joined by jax.distributed on 127.0.0.1.

The end-to-end tests start `launch/local.sh --processes 2` (two processes x 4 CPU devices, cross-process
collectives through gloo) next to a one-process run over 8 devices, kill one of the two processes
after a checkpoint, check that the other one exits by itself, rerun the same launch command and
compare the result with the one-process run. Every process runs in a process group that is killed
when a test ends, and every wait is bounded.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rajax
from rajax import weights
from rajax.data import pipeline as rd

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "local.sh"
SMOKE = "configs/smoke.py"
# 8 steps (2/3 of an epoch), a checkpoint every 2; 13 eval examples, so the last eval batch is padded
# (differently for one and for two processes). SGD with momentum instead of Adam: the two runs sum
# gradients in different orders, and Adam's division by sqrt(v) turns the rounding noise in the conv
# biases that feed BatchNorm (true gradient zero) into learning-rate-sized steps; with SGD an update
# is proportional to its gradient, so rounding stays rounding and the parameters can be compared.
RUN = ["--config.total_steps=8", "--config.ckpt_every=2", "--config.log_every=1",
       "--config.data.synthetic.eval_size=13", "--config.optim.processor.name=sgd", "--config.optim.processor.lr=0.5"]
# Less LLVM optimisation: the programs compile about twice as fast. The one- and two-process runs use
# the same flags, so their arithmetic is the same.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
HEARTBEAT_S = 5
BOUND_S = 420  # no single run here may take longer than this
# Hang bounds for a process that must stop by itself once a peer has failed: it takes a few seconds
# (the heartbeat timeout, or at once), while a process that waits at jax.distributed's shutdown
# barrier instead waits its 300 s timeout. The bounds only stop a hang; they time nothing.
STOP_BOUND_S = 150


def _env(devices: int, **extra) -> dict:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("RAJAX_", "JAX_COORDINATOR", "JAX_LOCAL_DEVICE", "JAX_COMPILATION_CACHE"))}
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}", JAX_PLATFORMS="cpu",
             PYTHON=sys.executable, PYTHONUNBUFFERED="1", RAJAX_HEARTBEAT_TIMEOUT=str(HEARTBEAT_S))
  env.update({k: str(v) for k, v in extra.items()})
  return env


class Job:
  """A command in its own process group; its output is collected line by line as it arrives."""

  def __init__(self, cmd, env):
    self.cmd = [str(c) for c in cmd]
    self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, start_new_session=True)
    self.lines: list[str] = []
    self._cond = threading.Condition()
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.proc.stdout:
      with self._cond:
        self.lines.append(line.rstrip("\n"))
        self._cond.notify_all()
    with self._cond:
      self._cond.notify_all()

  @property
  def text(self) -> str:
    with self._cond:
      return "\n".join(self.lines)

  def tail(self, n=60) -> str:
    with self._cond:
      return "\n".join(self.lines[-n:])

  def wait_for_line(self, pattern: str, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    seen = 0
    with self._cond:
      while True:
        for line in self.lines[seen:]:
          if m := regex.search(line):
            return m
        seen = len(self.lines)
        left = deadline - time.monotonic()
        if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
          raise AssertionError(f"no line matching {pattern!r} from {' '.join(self.cmd)}:\n{self.tail()}")
        self._cond.wait(min(left, 0.5))

  def wait(self, timeout: float) -> int:
    try:
      rc = self.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.kill()
      raise AssertionError(f"{' '.join(self.cmd)} still ran after {timeout:.0f}s:\n{self.tail()}") from None
    self._reader.join(timeout=30)
    return rc

  def kill(self):
    """Kills the whole process group (the launcher, its processes and their helpers)."""
    try:
      os.killpg(self.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    try:
      self.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
      pass


def _complete_steps(workdir: pathlib.Path) -> list[int]:
  """Steps whose checkpoint is complete: Orbax gives a step's directory its final name when it is."""
  ckpts = workdir / "checkpoints"
  return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.exists() else []


def _records(workdir: pathlib.Path, split: str) -> list[dict]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if r["split"] == split]


def _processor_variables(workdir: pathlib.Path) -> dict:
  p = rajax.processor("srresnet", scale=4, blocks=2, channels=16)
  template = jax.eval_shape(lambda: p.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
  return weights.load(workdir / "processor.msgpack", template)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return True


# --------------------------------------------------------------------------- one run, observed by several tests


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """`launch/local.sh --processes 2`, whose process 1 is killed once a checkpoint is complete; then the
  same launch command again and, next to it, a one-process run over 8 devices."""
  base = tmp_path_factory.mktemp("multiprocess")
  one, two = base / "one_process", base / "two_processes"
  # Process 0 of the rerun reads the programs process 0 of the first run compiled.
  env2 = _env(4, JAX_COMPILATION_CACHE_DIR=base / "jax_cache", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0,
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0)
  launch = [LAUNCH, "--processes", "2", SMOKE, two, *RUN]
  jobs = []
  started = time.monotonic()
  try:
    first = Job(launch, env2)
    jobs.append(first)
    pids = {i: int(first.wait_for_line(rf"^\[process {i}\] launch: process {i} of 2 has pid (\d+)", 60)[1])
            for i in (0, 1)}
    deadline = time.monotonic() + BOUND_S
    while not _complete_steps(two):
      assert first.proc.poll() is None, f"the two-process run ended before its first checkpoint:\n{first.tail()}"
      assert time.monotonic() < deadline, f"no checkpoint after {BOUND_S}s:\n{first.tail()}"
      time.sleep(0.05)
    os.kill(pids[1], signal.SIGKILL)
    killed_at, complete_at_kill = time.monotonic(), _complete_steps(two)
    # The reference runs while process 0 notices the loss and during the rerun (the machine has 2 cores).
    reference = Job([sys.executable, "-m", "rajax.train", "--config", SMOKE, "--workdir", one, *RUN], _env(8))
    jobs.append(reference)
    first_rc = first.wait(timeout=STOP_BOUND_S)
    exit_s = time.monotonic() - killed_at
    assert first_rc != 0, f"the two-process run finished before process 1 could be killed:\n{first.tail()}"
    complete_after = _complete_steps(two)

    second = Job(launch, env2)
    jobs.append(second)
    second_rc = second.wait(timeout=BOUND_S)
    rerun_s = time.monotonic() - killed_at - exit_s
    reference_rc = reference.wait(timeout=BOUND_S)
    print(f"\ntwo processes: killed after {killed_at - started:.0f}s, other exited {exit_s:.0f}s later, "
          f"rerun took {rerun_s:.0f}s; one process: {time.monotonic() - started:.0f}s or less")
    assert reference_rc == 0, reference.tail()
    return types.SimpleNamespace(one=one, two=two, first=first, first_rc=first_rc, pids=pids,
                                 complete_at_kill=complete_at_kill, complete_after=complete_after,
                                 second=second, second_rc=second_rc)
  finally:
    for job, name in zip(jobs, ("first_launch", "one_process", "second_launch")):
      job.kill()
      (base / f"{name}.log").write_text(job.text)


@pytest.mark.slow
def test_a_killed_process_makes_the_other_exit_with_an_error(runs):
  assert not _alive(runs.pids[0]) and not _alive(runs.pids[1])
  out = runs.first.text
  survivor = "\n".join(line for line in out.splitlines() if line.startswith("[process 0]"))
  # Either the coordination service notices the missing heartbeats and ends process 0, or process 0's
  # next collective fails first (the peer's connection is gone) and it ends itself, saying why, or
  # the peer died in the middle of sending a collective's data and the CPU collectives library
  # (gloo) aborts process 0 on the truncated message (SIGABRT; not catchable from Python).
  by_heartbeat = ("Terminating process because the JAX distributed service detected fatal errors" in survivor
                  and "stopped sending heartbeats" in survivor)
  by_collective = ("rajax: process 0 of 2 failed with JaxRuntimeError" in survivor
                   and "another process died or stalled" in survivor)
  by_transport = ("gloo::EnforceNotMet" in survivor
                  and "local.sh: process 0 exited with status 134 (signal 6)" in out)
  assert by_heartbeat or by_collective or by_transport, out[-4000:]
  assert "local.sh: process 1 exited with status 137 (signal 9)" in out
  assert re.search(r"local.sh: process 0 exited with status \d+", out)
  assert "Rerun the same command to resume" in out
  assert runs.complete_after == runs.complete_at_kill, "no checkpoint can complete once a process is gone"


@pytest.mark.slow
def test_rerunning_the_launch_command_resumes_both_processes(runs):
  out = runs.second.text
  assert runs.second_rc == 0, out[-4000:]
  resumed = {int(m[1]): int(m[2]) for m in re.finditer(
      r"^\[process (\d)\] rajax.train: resumed from checkpoint at step (\d+)", out, re.M)}
  assert resumed == {0: runs.complete_after[-1], 1: runs.complete_after[-1]}, (resumed, runs.complete_after)
  assert 2 <= resumed[0] < 8
  assert "2 process(es)" in out and "on 8 cpu device(s)" in out
  steps = [r["step"] for r in _records(runs.two, "train")]
  assert steps == list(range(1, 9)), "each step logged once, across the interruption"
  assert _complete_steps(runs.two)[-1] == 8


@pytest.mark.slow
def test_two_processes_train_to_the_parameters_of_one_process_over_eight_devices(runs):
  assert runs.second_rc == 0, runs.second.tail()
  one, two = _records(runs.one, "train"), _records(runs.two, "train")
  assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, 9))
  for a, b in zip(one, two):  # the same global batches, the same losses step by step
    for key in ("loss", "pixel_mse", "recognition", "psnr", "top1", "grad_norm"):
      np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-7, err_msg=f"step {a['step']} {key}")
  a, b = _processor_variables(runs.one), _processor_variables(runs.two)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6), a, b)


@pytest.mark.slow
def test_evaluation_gives_the_same_numbers_for_one_and_two_processes(runs):
  assert runs.second_rc == 0, runs.second.tail()
  one, two = _records(runs.one, "eval")[-1], _records(runs.two, "eval")[-1]
  assert one["count"] == two["count"] == 13  # padding is masked out in both
  for key in ("psnr", "ssim", "top1", "top5", "pixel_mse"):
    np.testing.assert_allclose(two[key], one[key], rtol=1e-5, err_msg=key)


# --------------------------------------------------------------------------- per-host input


class RecordingImages:
  """n small random images whose label is their index; records which indices are read."""

  def __init__(self, n):
    self.n, self.reads = n, []
    self._lock = threading.Lock()

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    with self._lock:
      self.reads.append(int(i))
    rng = np.random.default_rng([7, i])
    return {"image": rng.integers(0, 256, (20 + i % 3, 24, 3), dtype=np.uint8), "label": i}


def _train_batches(source, steps, *, process_index=0, process_count=1, global_batch=6, threads=0):
  ds = rd.train_dataset(source, rd.Degradation("denoise", sigma=0.1), resize=0, crop=16, global_batch=global_batch,
                        seed=3, process_index=process_index, process_count=process_count, threads=threads)
  it = iter(ds)
  return [next(it) for _ in range(steps)]


def test_each_process_reads_only_its_own_examples_and_an_epoch_reads_each_once():
  n, global_batch = 24, 6
  steps = n // global_batch  # one epoch
  reads, labels = [], []
  for p in range(2):
    source = RecordingImages(n)
    batches = _train_batches(source, steps, process_index=p, process_count=2, global_batch=global_batch)
    labels.append([int(x) for b in batches for x in b["label"]])
    reads.append(source.reads)
    assert sorted(reads[p]) == sorted(labels[p]), "a process decodes exactly the examples it feeds"
  assert len(set(reads[0])) == len(reads[0]) == n // 2 == len(set(reads[1])) == len(reads[1])
  assert not set(reads[0]) & set(reads[1]), "no example is read by both processes"
  assert sorted(reads[0] + reads[1]) == list(range(n)), "none is lost"


@pytest.mark.parametrize("process_count", [2, 3])
def test_the_global_batch_does_not_depend_on_the_number_of_processes(process_count):
  steps = 7  # crosses the epoch boundary (4 steps per epoch)
  whole = _train_batches(RecordingImages(24), steps, threads=2)
  parts = [_train_batches(RecordingImages(24), steps, process_index=p, process_count=process_count, threads=2)
           for p in range(process_count)]
  for s in range(steps):
    for key in ("input", "target", "label"):
      # Hosts' blocks in process order are the global batch (crops, flips and noise included).
      np.testing.assert_array_equal(np.concatenate([part[s][key] for part in parts]), whole[s][key])


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_evaluation_covers_every_example_once_whatever_the_number_of_processes(process_count):
  n, global_batch = 13, 8
  source = RecordingImages(n)
  reference, lengths = {}, []
  for p in range(process_count):
    ds = rd.eval_dataset(source, rd.Degradation("denoise", sigma=0.1), resize=0, crop=16, global_batch=global_batch,
                         seed=1, process_index=p, process_count=process_count, threads=1)
    batches = list(ds)
    lengths.append(len(batches))
    for b in batches:
      for label, mask, x in zip(b["label"], b["mask"], b["input"]):
        if mask:
          assert int(label) not in reference, f"example {label} evaluated twice"
          reference[int(label)] = x
  assert len(set(lengths)) == 1, f"every process runs the same number of eval steps: {lengths}"
  assert sorted(reference) == list(range(n))
  one = {int(lbl): x for b in rd.eval_dataset(source, rd.Degradation("denoise", sigma=0.1), resize=0, crop=16,
                                                global_batch=global_batch, seed=1, threads=1)
         for lbl, m, x in zip(b["label"], b["mask"], b["input"]) if m}
  for i in range(n):
    np.testing.assert_array_equal(reference[i], one[i])


# --------------------------------------------------------------------------- start-up settings


@pytest.fixture
def clean_env(monkeypatch):
  for k in list(os.environ):
    if k.startswith(("RAJAX_", "JAX_COORDINATOR", "SLURM_", "OMPI_")):
      monkeypatch.delenv(k)
  return monkeypatch


@pytest.mark.parametrize("env,message", [
    ({"RAJAX_DISTRIBUTED": "yes"}, "RAJAX_DISTRIBUTED='yes': use 1 (multi-process) or 0"),
    ({"RAJAX_NUM_PROCESSES": "2"}, "Set both RAJAX_NUM_PROCESSES and RAJAX_PROCESS_ID"),
    ({"RAJAX_NUM_PROCESSES": "2", "RAJAX_PROCESS_ID": "2", "JAX_COORDINATOR_ADDRESS": "h:1"},
     "RAJAX_PROCESS_ID=2 must be < RAJAX_NUM_PROCESSES=2"),
    ({"RAJAX_NUM_PROCESSES": "2", "RAJAX_PROCESS_ID": "0"}, "JAX_COORDINATOR_ADDRESS is not"),
    ({"RAJAX_HEARTBEAT_TIMEOUT": "soon"}, "RAJAX_HEARTBEAT_TIMEOUT='soon' must be an integer >= 1"),
    ({"RAJAX_INIT_TIMEOUT": "0"}, "RAJAX_INIT_TIMEOUT='0' must be an integer >= 1"),
])
def test_bad_multi_process_settings_are_named(clean_env, env, message):
  from rajax import distributed
  for k, v in env.items():
    clean_env.setenv(k, v)
  with pytest.raises(distributed.DistributedError, match=re.escape(message)):
    distributed.requested()
    distributed.initialize_kwargs()


def test_multi_process_settings_from_the_environment(clean_env):
  from rajax import distributed
  assert not distributed.requested() and distributed.requested(True)
  assert distributed.initialize(False) is False  # single-process: nothing starts
  for k, v in dict(RAJAX_DISTRIBUTED="1", JAX_COORDINATOR_ADDRESS="10.0.0.1:1234", RAJAX_NUM_PROCESSES="4",
                   RAJAX_PROCESS_ID="3", RAJAX_HEARTBEAT_TIMEOUT="20", RAJAX_INIT_TIMEOUT="60").items():
    clean_env.setenv(k, v)
  assert distributed.requested()
  assert distributed.initialize_kwargs() == dict(num_processes=4, process_id=3, heartbeat_timeout_seconds=20,
                                                 initialization_timeout=60)


def test_no_cluster_found_says_what_to_set(tmp_path):
  env = _env(1, RAJAX_DISTRIBUTED=1)
  r = subprocess.run([sys.executable, "-c", "from rajax import distributed; distributed.initialize()"], cwd=ROOT,
                     env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode != 0
  assert "DistributedError" in r.stderr and "set JAX_COORDINATOR_ADDRESS=host:port, RAJAX_NUM_PROCESSES" in r.stderr


# --------------------------------------------------------------------------- failures


_PEER = textwrap.dedent("""
    import os, time
    import jax, numpy as np
    from rajax import distributed, sharding
    distributed.initialize()
    mesh = sharding.make_mesh(-1, distributed.devices())
    total = jax.jit(lambda x: x.sum(), out_shardings=sharding.replicated(mesh))
    me = jax.process_index()
    if os.environ.get("AGREE"):  # only process 1 wants to stop, from step 3 on
      try:
        distributed.check_mesh(sharding.make_mesh(4, distributed.devices()))
      except ValueError as e:
        print("refused:", e, flush=True)
      for i in range(50):
        if distributed.any_process(me == 1 and i >= 3):
          print(f"both stop at {i}", flush=True)
          break
      raise SystemExit(0)
    for i in range(100000):
      x = sharding.global_batch({"x": np.ones((4,), np.float32)}, mesh)["x"]
      print(f"step {i} sum {float(total(x))}", flush=True)
      if i == 3 and me == int(os.environ.get("FAIL_PROCESS", "-1")):
        raise RuntimeError("deliberate failure")
      time.sleep(0.2)
""")


def _free_port() -> int:
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _peers(tmp_path, **extra):
  script = tmp_path / "peer.py"
  script.write_text(_PEER)
  port = _free_port()
  jobs = []
  for i in range(2):
    env = _env(4, RAJAX_DISTRIBUTED=1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}", RAJAX_NUM_PROCESSES=2, RAJAX_PROCESS_ID=i,
               RAJAX_HEARTBEAT_TIMEOUT=5, **extra)
    jobs.append(Job([sys.executable, script], env))
  return jobs


def test_a_dead_coordinator_makes_the_other_process_exit(tmp_path):
  jobs = _peers(tmp_path)
  try:
    for job in jobs:
      job.wait_for_line(r"^step 2 sum 8.0", 120)  # 8 devices x 1: both processes take part
    os.kill(jobs[0].proc.pid, signal.SIGKILL)
    assert jobs[1].wait(timeout=STOP_BOUND_S) != 0
    assert "JAX distributed service detected fatal errors" in jobs[1].text, jobs[1].tail()
  finally:
    for job in jobs:
      job.kill()


def test_an_exception_in_one_process_ends_it_at_once_and_the_others_follow(tmp_path):
  """The failing process exits with status 1 through rajax's hook (without it, it would wait at the
  shutdown barrier for its 300 s and outlast STOP_BOUND_S); the other one is ended by the coordination
  service, because the failed one stopped sending heartbeats."""
  jobs = _peers(tmp_path, FAIL_PROCESS=1)
  try:
    jobs[1].wait_for_line(r"^step 3 sum", 120)
    assert jobs[1].wait(timeout=STOP_BOUND_S) == 1, jobs[1].tail()
    rc0 = jobs[0].wait(timeout=STOP_BOUND_S)
    assert "RuntimeError: deliberate failure" in jobs[1].text
    assert "rajax: process 1 of 2 failed with RuntimeError; it exits now" in jobs[1].text
    assert "Fix the error above" in jobs[1].text
    assert rc0 != 0, f"process 0: rc {rc0}\n{jobs[0].tail()}"
    assert "stopped sending heartbeats" in jobs[0].text, jobs[0].tail()
  finally:
    for job in jobs:
      job.kill()


def test_processes_agree_to_stop_when_one_of_them_is_asked_to(tmp_path):
  jobs = _peers(tmp_path, AGREE=1)
  try:
    for job in jobs:
      assert job.wait(timeout=120) == 0, job.tail()
      assert "both stop at 3" in job.text, job.tail()
      # A mesh over the 4 devices of process 0 alone leaves process 1 nothing to feed.
      assert "refused: The mesh's 4 devices are spread over the 2 processes as [4, 0]" in job.text, job.tail()
  finally:
    for job in jobs:
      job.kill()


def test_importing_any_rajax_module_starts_no_jax_backend():
  """jax.distributed.initialize must run before any backend starts: no rajax module may compute with
  JAX at import time (a module-level jnp constant did, and broke every multi-process run)."""
  code = textwrap.dedent("""
      import importlib, pkgutil, traceback
      from jax._src import xla_bridge
      def started(*a, **k):
          traceback.print_stack()
          raise SystemExit("a JAX backend started during the imports above")
      xla_bridge.backends = started
      import rajax
      for m in pkgutil.walk_packages(rajax.__path__, "rajax."):
          if m.name.endswith("__main__"):
              continue
          importlib.import_module(m.name)
      print("no backend")
  """)
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                     env={**os.environ, "RAJAX_DISTRIBUTED": "0"})
  assert r.returncode == 0 and "no backend" in r.stdout, r.stderr[-3000:]
