"""Test set-up, before jax starts: 8 fake CPU devices for the sharding tests, quick compilation, and
one persistent compilation cache for the whole test run.

XLA's CPU compiler runs without LLVM's optimisation passes (`--xla_backend_optimization_level=0`,
unless XLA_FLAGS already chooses a level): the suite compiles hundreds of small programs and runs
each a few times, so compilation is most of its time, and this cuts the CPU time of the method and
step tests by 40%. The programs compute the same; float results can differ in the last bits from
an optimised build, which is why `tests/reference/methods_10_steps.npz` records the flags it was
made with.

The cache (`.pytest_cache/jax_compilation` in the checkout, or $JAX_COMPILATION_CACHE_DIR) is
shared by the pytest workers and by the trainer runs the tests start in subprocesses, so a program
that several tests or processes compile (a resumed run's train step, a model used by many tests)
is compiled once. Delete the directory to start cold.
"""

import os
import pathlib

_FLAGS = ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0")
for _flag in _FLAGS:
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(pathlib.Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax_compilation"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
