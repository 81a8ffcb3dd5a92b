"""Records what ten training steps of each method give, so a rewrite of the step can be held to it.

    python tests/reference/make_method_fixtures.py

Runs `rajax.train.run` on `configs/smoke.py` (float32, the CPU, the tests' 8 fake devices) for ten
steps with a log record per step and an evaluation at the end, for each entry of RUNS, and writes
`methods_10_steps.npz` next to this script: per run, every logged train metric per step, the final
evaluation, and the final variables of every trained network (`<network>.msgpack`, parameters and
BatchNorm statistics), plus a description of the machine and software that made them.
`tests/test_methods_fixture.py` trains the same runs and compares: bit for bit on a machine like
this one with the same XLA flags (the tests' own, tests/conftest.py), to a float tolerance
elsewhere (XLA's CPU code depends on the instruction set and the compiler's options).

Made once, from the code as it was before the methods became plug-ins; rerun it only to record a
change of behaviour on purpose.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
OUT = HERE / "methods_10_steps.npz"
STEPS = 10

# name -> (configs/smoke.py argument, the method's settings as they were named in the config then)
RUNS = {
    "plain": ("task=sr,mode=plain", {}),
    "ra": ("task=sr,mode=ra", {}),
    "unsupervised": ("task=sr,mode=unsupervised", {}),
    "transformer": ("task=sr,mode=transformer", {}),
    "ra_classes_A": ("task=sr,mode=ra", {"classes.half": "A"}),
}
# What every run sets on top of the smoke config: ten steps, one record each, evaluation at the end.
COMMON = {"total_steps": STEPS, "log_every": 1, "ckpt_every": 1000, "eval_every": 0}
# Train records' keys that measure the machine, not the computation.
UNTIMED = ("img_per_s",)


def machine() -> dict[str, str]:
  """What XLA's CPU code depends on: the processor, its features, the software versions, XLA's flags."""
  import jax
  import jaxlib
  info = {"machine": platform.machine(), "python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "devices": str(jax.device_count()), "cpu": "", "flags": "",
          "xla_flags": " ".join(sorted(os.environ.get("XLA_FLAGS", "").split()))}
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      key, _, value = line.partition(":")
      if key.strip() == "model name" and not info["cpu"]:
        info["cpu"] = value.strip()
      elif key.strip() == "flags" and not info["flags"]:
        info["flags"] = " ".join(sorted(value.split()))
  except OSError:
    pass
  return info


def train(config, workdir: pathlib.Path) -> dict[str, "np.ndarray"]:
  """Trains `config` in `workdir`; returns its records and variables as flat "kind/key" arrays."""
  import numpy as np
  from flax import serialization, traverse_util

  from rajax import train as train_lib
  train_lib.run(config, workdir)
  out = {}
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_records = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train_records] == list(range(1, STEPS + 1)), [r["step"] for r in train_records]
  keys = sorted(set().union(*train_records) - {"step", "split", *UNTIMED})
  for k in keys:
    out[f"train/{k}"] = np.array([r[k] for r in train_records], np.float64)
  (final,) = [r for r in records if r["split"] == "eval"]
  for k, v in final.items():
    if k not in ("step", "split"):
      out[f"eval/{k}"] = np.array(v, np.float64)
  for path in sorted(workdir.glob("*.msgpack")):
    variables = serialization.msgpack_restore(path.read_bytes())
    for key, value in traverse_util.flatten_dict(variables, sep="/").items():
      out[f"{path.stem}/{key}"] = np.asarray(value)
  return out


def smoke_config(arg: str, settings: dict):
  """configs/smoke.py:arg with COMMON and `settings` ("a.b" -> value) applied, locked."""
  from rajax import config as config_lib
  config = config_lib.load(f"{ROOT / 'configs/smoke.py'}:{arg}")
  for path, value in {**COMMON, **settings}.items():
    *parents, leaf = path.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  config_lib.validate(config)
  config.lock()
  return config


def main() -> None:
  import numpy as np
  sys.path.insert(0, str(ROOT / "tests"))
  import conftest  # noqa: F401  (the tests' devices: 8 fake CPU devices; before jax starts)
  del conftest
  out = {f"machine/{k}": np.array(v) for k, v in machine().items()}
  with tempfile.TemporaryDirectory() as tmp:
    for name, (arg, settings) in RUNS.items():
      workdir = pathlib.Path(tmp) / name
      for key, value in train(smoke_config(arg, settings), workdir).items():
        out[f"{name}/{key}"] = value
      out[f"{name}/arg"] = np.array(arg)
      out[f"{name}/settings"] = np.array(json.dumps(settings, sort_keys=True))
  np.savez_compressed(OUT, **out)
  print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB, {len(out)} arrays)")


if __name__ == "__main__":
  os.chdir(ROOT)
  main()
