"""Test set-up, before jax starts: 8 fake CPU devices for the sharding tests, and one persistent
compilation cache for the whole test run.

The cache (`.pytest_cache/jax_compilation` in the checkout, or $JAX_COMPILATION_CACHE_DIR) is
shared by the pytest workers and by the trainer runs the tests start in subprocesses, so a program
that several tests or processes compile (a resumed run's train step, a model used by many tests)
is compiled once. Delete the directory to start cold.
"""

import os
import pathlib

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(pathlib.Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax_compilation"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
