"""The trainer end to end, as a user runs it: the smoke CLI, logs, checkpoints, kill-and-resume."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rajax
from rajax import weights

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A longer smoke run for the interruption tests: 12 steps per epoch, a checkpoint every 12 steps.
LONG = ["--config.num_epochs=10", "--config.ckpt_every=12", "--config.log_every=12", "--config.keep_ckpts=20"]


def _cmd(workdir, *overrides):
  return [sys.executable, "-m", "rajax.train", "--config", "configs/smoke.py", "--workdir", str(workdir), *overrides]


def _train(workdir, *overrides, timeout=240):
  r = subprocess.run(_cmd(workdir, *overrides), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  return r.stdout


def _records(workdir):
  return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def _saved_steps(workdir):
  ckpts = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.exists() else []


def _processor_params(workdir):
  p = rajax.processor("srresnet", scale=4, blocks=2, channels=16)
  template = jax.eval_shape(lambda: p.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
  return weights.load(pathlib.Path(workdir) / "processor.msgpack", template)


def _saved_state(workdir, step):
  """The train state checkpointed at `step`, read with Orbax alone: {path: array} over params, batch_stats,
  opt_state (moments, counts), step and rng."""
  import orbax.checkpoint as ocp
  tree = ocp.StandardCheckpointer().restore(pathlib.Path(workdir) / "checkpoints" / str(step) / "state")
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _state_differences(a, b):
  """Paths of the saved states `a` and `b` that are missing from one or differ in any bit."""
  return sorted(set(a) ^ set(b)) + [k for k in a if k in b and not (
      a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes())]


def _records_after(workdir, step, log_every=12):
  """The metrics.jsonl records of the steps after `step`: eval records, and train records whose whole
  averaging window (the `log_every` steps up to them) lies after `step`; img_per_s (a timing) left out."""
  return [{k: v for k, v in r.items() if k != "img_per_s"} for r in _records(workdir)
          if r["step"] - (log_every if r["split"] == "train" else 0) >= step]


def _assert_resumed_run_is_the_uninterrupted_one(resumed, uninterrupted, resume_step, final_step=120):
  """The final checkpoint (parameters, BatchNorm statistics, optimizer state, step, rng), the written
  networks and the log records after the resume point are those of the uninterrupted run, exactly."""
  final = _saved_state(uninterrupted, final_step)
  assert _state_differences(_saved_state(resumed, final_step), final) == []
  assert any("batch_stats" in k for k in final) and any("opt_state" in k and "nu" in k for k in final)
  for name in ("params", "batch_stats"):
    jax.tree.map(np.testing.assert_array_equal, _processor_params(uninterrupted)[name],
                 _processor_params(resumed)[name])
  after = _records_after(uninterrupted, resume_step)
  assert len(after) >= 2 and _records_after(resumed, resume_step) == after
  # Negative controls: the state comparison tells apart a state whose BatchNorm statistics, or whose
  # optimizer state, alone come from an earlier checkpoint (as if they had not been restored).
  earlier = _saved_state(uninterrupted, final_step - 12)
  for part in ("['batch_stats']", "['opt_state']"):
    mixed = {k: earlier[k] if k.startswith(part) else v for k, v in final.items()}
    assert _state_differences(mixed, final), part


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  _train(workdir, *LONG)
  return workdir


@pytest.mark.slow
def test_smoke_cli_trains_logs_and_checkpoints(tmp_path):
  out = _train(tmp_path)  # its timeout is the bound for a hang; no speed is asserted on shared cores
  lines = [ln for ln in out.splitlines() if ln.startswith("[train]")]
  assert len(lines) == 36 // 4
  for key in ("loss", "pixel_mse", "recognition", "psnr", "img/s", "ETA"):
    assert key in lines[-1], key
  records = _records(tmp_path)
  train = [r for r in records if r["split"] == "train"]
  evals = [r for r in records if r["split"] == "eval"]
  assert [r["step"] for r in train] == list(range(4, 37, 4))
  assert all(r["img_per_s"] > 0 and np.isfinite(r["loss"]) for r in train)
  assert train[-1]["psnr"] > train[0]["psnr"] + 1.0, "the processor should learn in the smoke run"
  assert evals and {"psnr", "ssim", "top1", "top5", "count"} <= set(evals[-1]) and evals[-1]["count"] == 16
  assert _saved_steps(tmp_path)[-1] == 36
  params = _processor_params(tmp_path)
  assert set(params) == {"params", "batch_stats"}
  assert json.loads((tmp_path / "config.json").read_text())["method"]["name"] == "ra"


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_state_and_log(tmp_path, uninterrupted):
  proc = subprocess.Popen(_cmd(tmp_path, *LONG), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline = time.time() + 180
  while not _saved_steps(tmp_path) and time.time() < deadline and proc.poll() is None:
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be interrupted"
  proc.kill()  # SIGKILL: no chance to clean up
  proc.wait(timeout=30)
  assert proc.returncode == -signal.SIGKILL
  at_kill = _saved_steps(tmp_path)
  assert at_kill and at_kill[-1] < 120, at_kill

  out = _train(tmp_path, *LONG)
  resumed = int(out.split("resumed from checkpoint at step ")[1].split()[0])
  assert 12 <= resumed < 120 and resumed % 12 == 0
  _assert_resumed_run_is_the_uninterrupted_one(tmp_path, uninterrupted, resumed)
  steps = [r["step"] for r in _records(tmp_path) if r["split"] == "train"]
  assert steps == sorted(set(steps)) == list(range(12, 121, 12)), "no duplicated or missing log records"


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_rerun_finishes_identically(tmp_path, uninterrupted):
  proc = subprocess.Popen(_cmd(tmp_path, *LONG), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  output = []
  for line in proc.stdout:
    output.append(line)
    if line.startswith("[train] step 12/"):
      proc.send_signal(signal.SIGTERM)
      break
  rest, _ = proc.communicate(timeout=120)
  text = "".join(output) + rest
  assert proc.returncode == 128 + signal.SIGTERM, text[-2000:]
  stopped = int(text.split("stopped by signal at step ")[1].split(";")[0])
  assert stopped in _saved_steps(tmp_path)

  out = _train(tmp_path, *LONG)
  assert f"resumed from checkpoint at step {stopped}" in out
  _assert_resumed_run_is_the_uninterrupted_one(tmp_path, uninterrupted, stopped)


def test_init_processor_starts_from_a_file(tmp_path):
  """config.init_processor: P starts from another run's processor.msgpack (checked against the model)."""
  from rajax import config as config_lib
  from rajax import methods, networks

  first = tmp_path / "first"
  _train(first, "--config.total_steps=2")
  config = config_lib.load(str(ROOT / "configs/smoke.py"))
  config.init_processor = str(first / "processor.msgpack")
  spec = methods.get(config.method.name)
  modules = networks.trained_modules(config, spec)
  txs = {n: optax.adam(1e-3) for n in spec.trains}
  method = methods.build(methods.Setup(config=config, modules=modules, optimizers=txs, input_shape=(8, 8, 3)))
  fresh = method.init(jax.random.PRNGKey(5))
  loaded = method.init(jax.random.PRNGKey(5), networks.initial_variables(config, spec, modules))
  want = weights.load(first / "processor.msgpack", {"params": fresh.params["processor"],
                                                    "batch_stats": fresh.batch_stats["processor"]})
  for a, b in zip(jax.tree.leaves(loaded.variables("processor")), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(fresh.params["processor"]),
                                                        jax.tree.leaves(want["params"])))
  # A run started from it says so; a file for another architecture is refused with the key names.
  out = _train(tmp_path / "second", "--config.total_steps=1", f"--config.init_processor={first / 'processor.msgpack'}")
  assert "processor initialised from" in out
  r = subprocess.run(_cmd(tmp_path / "third", "--config.total_steps=1", "--config.processor.channels=8",
                          f"--config.init_processor={first / 'processor.msgpack'}"),
                     cwd=ROOT, capture_output=True, text=True, timeout=240)
  assert r.returncode != 0 and "wrong shapes" in r.stderr and "config.init_processor" in r.stderr


def _eval_by_hand(config, workdir, *, noise, sigma, index_shift=0):
  """The final evaluation's mean PSNR and pixel MSE, computed here from the run's processor.msgpack: the
  evaluation images centre-cropped by slicing, noise by the documented rule (host: example i's
  np.random.default_rng([seed, i]).standard_normal(float32); device: jax.random.normal of
  fold_in(key(seed), i)), P in inference mode by module.apply, the metrics in float64."""
  from rajax import data as data_lib
  from rajax import networks
  source = data_lib.make_source(config.data, config.data.eval_split)
  crop, n = config.data.crop, len(source)
  images = [source[i]["image"] for i in range(n)]
  off = [((im.shape[0] - crop) // 2, (im.shape[1] - crop) // 2) for im in images]
  y = np.stack([im[t:t + crop, l:l + crop] for im, (t, l) in zip(images, off)]).astype(np.float64) / 255.0
  draws = []
  for i in range(n):
    j = i + index_shift
    if noise == "host":
      draws.append(np.random.default_rng([config.seed, j]).standard_normal((crop, crop, 3), dtype=np.float32))
    else:
      draws.append(np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(config.seed), j), (crop, crop, 3))))
  x = np.clip(y + sigma * np.stack(draws).astype(np.float64), 0.0, 1.0).astype(np.float32)
  p = networks.module(config, "processor")
  template = jax.eval_shape(lambda: p.init(jax.random.key(0), jnp.zeros((1, crop, crop, 3))))
  variables = weights.load(pathlib.Path(workdir) / "processor.msgpack", template)
  out = np.clip(np.asarray(p.apply(variables, x, train=False), np.float64), 0.0, 1.0)
  mse = ((out - y) ** 2).reshape(n, -1).mean(1)
  return {"psnr": float(np.mean(-10 * np.log10(mse))), "pixel_mse": float(mse.mean())}


def test_denoise_with_the_noise_drawn_on_device_or_host(tmp_path):
  """config.data.noise: "device" (default; the pipeline ships clean crops and indices, the steps draw the
  noise) and "host" (NumPy in the pipeline) both train and evaluate, over the 8-device mesh, with
  degrade.sigma = 0.2; each run's final PSNR and pixel MSE are those computed by hand (`_eval_by_hand`) from
  its own processor, and not those of the default sigma, of the other place's noise or of shifted indices."""
  from rajax import config as config_lib
  from rajax import train

  results, configs = {}, {}
  for noise in ("device", "host"):
    c = config_lib.load(f"{ROOT / 'configs/smoke.py'}:task=denoise,mode=plain")
    c.data.noise = noise
    c.degrade.sigma = 0.2
    c.processor.blocks, c.processor.channels = 1, 8
    c.total_steps, c.log_every = 2, 1
    config_lib.validate(c)
    results[noise], configs[noise] = train.run(c, tmp_path / noise), c
    train_records = [r for r in _records(tmp_path / noise) if r["split"] == "train"]
    assert [r["step"] for r in train_records] == [1, 2] and all(np.isfinite(r["loss"]) for r in train_records)
  assert config_lib.base().data.noise == "device"
  bad = config_lib.base(task="denoise")
  bad.data.noise = "gpu"
  with pytest.raises(config_lib.ConfigError, match="data.noise"):
    config_lib.validate(bad)
  for noise, r in results.items():
    assert r["count"] == 16
    by_hand = lambda **kw: _eval_by_hand(configs[noise], tmp_path / noise, **{"noise": noise, "sigma": 0.2, **kw})
    want = by_hand()
    assert abs(r["psnr"] - want["psnr"]) <= 5e-5, (noise, r["psnr"], want["psnr"])
    np.testing.assert_allclose(r["pixel_mse"], want["pixel_mse"], rtol=1e-5)
    other = "host" if noise == "device" else "device"
    for wrong in (by_hand(sigma=0.1), by_hand(noise=other), by_hand(index_shift=1)):
      assert abs(r["psnr"] - wrong["psnr"]) > 5e-5, (noise, wrong)
