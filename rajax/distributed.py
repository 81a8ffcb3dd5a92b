"""Multi-process runs: start-up of JAX's distributed runtime, device order, and failing fast.

One process per host (or per GPU) runs the same program; `jax.distributed.initialize()` connects
them through a coordinator, after which `jax.devices()` lists the devices of all processes and a
jitted step runs over all of them. Every process reads its own slice of the data
(`rajax.data.train_dataset`) and `rajax.sharding.global_batch` assembles the global batch.

Start-up is asked for with `config.distributed=True` or `RAJAX_DISTRIBUTED=1`. Where the processes
are comes from the cluster: under Slurm (`srun`), Open MPI and on Cloud TPU VMs JAX reads it from
the environment. Elsewhere (e.g. several processes on one machine) set

    JAX_COORDINATOR_ADDRESS=host:port   process 0's address, reachable from every process
    RAJAX_NUM_PROCESSES=N               number of processes
    RAJAX_PROCESS_ID=i                  this process, 0 <= i < N

and optionally JAX_LOCAL_DEVICE_IDS=0,1 (the local GPUs this process uses). Timeouts, in seconds:

    RAJAX_HEARTBEAT_TIMEOUT   (default 100) a process that stops sending heartbeats this long is
                              declared dead, and every other process exits with an error
    RAJAX_INIT_TIMEOUT        (default 300) how long to wait for all processes to connect
    RAJAX_SHUTDOWN_TIMEOUT    (default 300) how long a finished process waits for the others

A process that dies (killed, out of memory, machine lost) stops sending heartbeats; the
coordination service then terminates the others ("Terminating process because the JAX distributed
service detected fatal errors ... The following tasks are unhealthy (stopped sending heartbeats)"),
instead of leaving them blocked in a collective forever; often a collective fails even sooner
(connection reset) and the process ends itself through `fail_fast`. If process 0, which hosts the
service, dies, the others notice at once. A Python exception in one process ends that process at
once (`fail_fast`) rather than after the shutdown timeout, so the same mechanisms stop the others.
The launch scripts then exit non-zero; rerunning them resumes from the last complete checkpoint.

A stop request (SIGTERM, Ctrl-C) reaches the processes at slightly different steps; the trainer
lets them agree (`any_process`, at logging steps) so that all save the same step and exit together.
"""

from __future__ import annotations

import os
import sys
import traceback

import jax
import numpy as np

ENV_ENABLE = "RAJAX_DISTRIBUTED"
_TIMEOUTS = {"heartbeat_timeout_seconds": "RAJAX_HEARTBEAT_TIMEOUT",
             "initialization_timeout": "RAJAX_INIT_TIMEOUT",
             "shutdown_timeout_seconds": "RAJAX_SHUTDOWN_TIMEOUT"}


class DistributedError(RuntimeError):
  """The processes of a multi-process run could not be started or connected."""


def requested(config_flag: bool = False) -> bool:
  """Whether this run is multi-process: `config.distributed` or RAJAX_DISTRIBUTED=1."""
  value = os.environ.get(ENV_ENABLE, "").strip().lower()
  if value not in ("", "0", "1", "false", "true"):
    raise DistributedError(f"{ENV_ENABLE}={os.environ[ENV_ENABLE]!r}: use 1 (multi-process) or 0.")
  return bool(config_flag) or value in ("1", "true")


def _env_int(name: str, minimum: int) -> int | None:
  text = os.environ.get(name, "").strip()
  if not text:
    return None
  try:
    value = int(text)
  except ValueError:
    value = minimum - 1
  if value < minimum:
    raise DistributedError(f"{name}={text!r} must be an integer >= {minimum}.")
  return value


def initialize_kwargs() -> dict:
  """jax.distributed.initialize() arguments from the RAJAX_* environment variables."""
  kwargs = {}
  num, pid = _env_int("RAJAX_NUM_PROCESSES", 1), _env_int("RAJAX_PROCESS_ID", 0)
  if (num is None) != (pid is None):
    raise DistributedError("Set both RAJAX_NUM_PROCESSES and RAJAX_PROCESS_ID (or neither, under Slurm, "
                           "Open MPI or on a Cloud TPU VM, where JAX finds them itself).")
  if num is not None:
    if pid >= num:
      raise DistributedError(f"RAJAX_PROCESS_ID={pid} must be < RAJAX_NUM_PROCESSES={num}.")
    if not os.environ.get("JAX_COORDINATOR_ADDRESS"):
      raise DistributedError("RAJAX_NUM_PROCESSES is set but JAX_COORDINATOR_ADDRESS is not: set it to "
                             "host:port of process 0, the same for every process.")
    kwargs.update(num_processes=num, process_id=pid)
  for arg, name in _TIMEOUTS.items():
    value = _env_int(name, 1)
    if value is not None:
      kwargs[arg] = value
  return kwargs


def initialize(config_flag: bool = False) -> bool:
  """Starts JAX's distributed runtime if this run is multi-process; True if it is (or already was).

  Must run before anything touches a JAX device. Errors name the missing setting.
  """
  if not requested(config_flag):
    return False
  if jax.distributed.is_initialized():
    return True
  kwargs = initialize_kwargs()
  # Cross-process collectives on CPU (tests, debugging) go through gloo; keep a choice made elsewhere.
  if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  where = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if "process_id" in kwargs:  # a failed connection ends the process from inside JAX: say first what it tried
    print(f"rajax: process {kwargs['process_id']} of {kwargs['num_processes']} connecting to the coordinator at "
          f"{where} (waiting up to {kwargs.get('initialization_timeout', 300)}s for all processes)",
          file=sys.stderr, flush=True)
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, RuntimeError) as e:
    hint = (f"Check that process 0 runs and that {where} is reachable from this process"
            if where else
            "Outside Slurm, Open MPI and Cloud TPU VMs set JAX_COORDINATOR_ADDRESS=host:port, "
            "RAJAX_NUM_PROCESSES and RAJAX_PROCESS_ID (the launch/ scripts do)")
    raise DistributedError(f"Starting the multi-process runtime failed ({ENV_ENABLE}=1 or config.distributed): "
                           f"{str(e).rstrip('.')}. {hint}.") from e
  fail_fast(jax.process_index(), jax.process_count())
  return True


def devices() -> list:
  """All devices, those of process 0 first, then process 1, ...: the mesh order in which the
  hosts' local batch slices concatenate to the global batch."""
  return sorted(jax.devices(), key=lambda d: (d.process_index, d.id))


def check_mesh(mesh: jax.sharding.Mesh) -> None:
  """Every process must hold the same number of the mesh's devices (each feeds an equal batch slice)."""
  if jax.process_count() == 1:
    return
  per_process = {}
  for d in mesh.devices.flat:
    per_process[d.process_index] = per_process.get(d.process_index, 0) + 1
  counts = [per_process.get(p, 0) for p in range(jax.process_count())]
  if len(set(counts)) != 1:
    raise ValueError(f"The mesh's {mesh.size} devices are spread over the {jax.process_count()} processes as "
                     f"{counts}; every process must hold the same number. Use config.mesh.data=-1 "
                     f"(all {jax.device_count()} devices) in multi-process runs.")


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is true on any of them (a collective: all processes must call it).

  Used to agree on stopping: a signal reaches the processes at slightly different steps, but all of
  them must save the same step and leave the loop together.
  """
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # noqa: PLC0415 - only multi-process runs need it
  return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))


def gather_hosts(x) -> np.ndarray:
  """Every process's `x` (host-local, or a batch-sharded global array) concatenated along axis 0
  in process order, as a NumPy array on every process (a collective in multi-process runs)."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils  # noqa: PLC0415 - only multi-process runs need it
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def fail_fast(process_index: int, process_count: int) -> None:
  """Makes an uncaught exception end this process at once, without the orderly shutdown.

  The orderly shutdown waits (up to RAJAX_SHUTDOWN_TIMEOUT) for every process to reach it, while
  the others wait in the next collective for this one: both would sit idle for minutes. Exiting
  at once stops this process's heartbeats, so the coordination service ends the others too.
  """
  previous = sys.excepthook

  def hook(kind, value, tb):
    try:
      previous(kind, value, tb)
    except Exception:  # noqa: BLE001 - the report below must still happen
      traceback.print_exception(kind, value, tb)
    heartbeat = os.environ.get("RAJAX_HEARTBEAT_TIMEOUT", "100")
    if issubclass(kind, KeyboardInterrupt):
      cause = "It was interrupted twice."
    elif issubclass(kind, jax.errors.JaxRuntimeError):
      cause = ("A runtime error in a collective (all-reduce, connection reset, timeout) usually means that "
               "another process died or stalled: look at the other processes' output for the first error.")
    else:
      cause = "Fix the error above."
    print(f"rajax: process {process_index} of {process_count} failed with {kind.__name__}; it exits now and "
          f"the other processes stop within the heartbeat timeout ({heartbeat}s). {cause} Then rerun the same "
          "launch command to resume from the last complete checkpoint.", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)

  sys.excepthook = hook
