"""The train-step benchmark: its JSON record, the FLOP counter, collectives in the compiled
data-parallel step, per-device BatchNorm statistics, the PyTorch reference and device prefetching."""

import json
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rajax import bench, flops, hlo, sharding
from rajax import config as config_lib
from rajax.models import layers, processor

BENCH = "configs/bench.py"


def _config(arg: str, *overrides: str):
  return config_lib.from_command_line(f"{BENCH}:{arg}", list(overrides))


# --------------------------------------------------------------------------- FLOP counter

def _conv(x, w, stride=1, pad=1):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _tiny_net(params, x):
  h = jax.nn.relu(_conv(x, params["w1"]))              # 8x8, 3 -> 4
  h = jax.nn.relu(_conv(h, params["w2"], stride=2))    # 4x4, 4 -> 8
  return h.reshape(h.shape[0], -1) @ params["fc"]      # 128 -> 5


TINY_PARAMS = {"w1": jax.ShapeDtypeStruct((3, 3, 3, 4), jnp.float32),
               "w2": jax.ShapeDtypeStruct((3, 3, 4, 8), jnp.float32),
               "fc": jax.ShapeDtypeStruct((128, 5), jnp.float32)}
TINY_X = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)


def test_flops_forward_matches_hand_count():
  conv1 = 2 * (2 * 8 * 8 * 4) * (3 * 3 * 3)    # 2 x output elements x (taps x input channels)
  conv2 = 2 * (2 * 4 * 4 * 8) * (3 * 3 * 4)
  fc = 2 * 2 * 128 * 5
  got = flops.count(_tiny_net, TINY_PARAMS, TINY_X)
  assert got == {"conv": conv1 + conv2, "dot": fc, "total": conv1 + conv2 + fc}


def test_flops_training_counts_what_the_gradient_runs():
  """Gradient w.r.t. the parameters only: every weight gradient (as costly as the forward layer),
  input gradients of all layers but the first; the stride-2 conv's input gradient counts only its
  taps on real (non-padding) inputs: 11 of the 4 x 3 (output, tap) pairs per axis."""
  conv1 = 2 * (2 * 8 * 8 * 4) * 27
  conv2 = 2 * (2 * 4 * 4 * 8) * 36
  fc = 2 * 2 * 128 * 5
  conv2_input_grad = 2 * 2 * 4 * 8 * (11 * 11)
  forward = conv1 + conv2 + fc
  backward = fc + fc + conv2 + conv2_input_grad + conv1   # fc: weight + input; conv2: weight + input; conv1: weight
  got = flops.count(jax.value_and_grad(lambda p, x: jnp.sum(_tiny_net(p, x))), TINY_PARAMS, TINY_X)
  assert got["total"] == forward + backward
  assert got["total"] < 3 * forward   # not the "3x forward" estimate: conv1 has no input gradient


def test_flops_transposed_conv_counts_real_input_taps():
  """A stride-2 transposed conv 4x4 -> 8x8 (pix2pix's up-sampling): each input element meets each of
  the 3 taps per axis, one of the 12 pairs falls outside the output: 11 x 11 per channel pair."""
  up = nn.ConvTranspose(6, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)), transpose_kernel=True, use_bias=False)
  x = jax.ShapeDtypeStruct((2, 4, 4, 5), jnp.float32)
  v = jax.eval_shape(up.init, jax.random.PRNGKey(0), x)
  assert jax.eval_shape(up.apply, v, x).shape == (2, 8, 8, 6)
  assert flops.count(up.apply, v, x)["conv"] == 2 * 2 * 5 * 6 * 11 * 11


def test_flops_srresnet_x4_forward_is_the_design_figure():
  """The paper's SRResNet (5 blocks, 64 channels) x4 at 56x56: ~8.8 GFLOP per image forward."""
  def conv(hw, k, cin, cout):
    return 2 * hw * hw * k * k * cin * cout
  hand = (conv(56, 9, 3, 64) + 10 * conv(56, 3, 64, 64) + conv(56, 3, 64, 64) + conv(56, 3, 64, 256)
          + conv(112, 3, 64, 256) + conv(224, 9, 64, 3))
  p = processor("srresnet", scale=4, blocks=5)
  x = jax.ShapeDtypeStruct((1, 56, 56, 3), jnp.float32)
  v = jax.eval_shape(lambda: p.init(jax.random.PRNGKey(0), jnp.zeros((1, 56, 56, 3)), train=False))
  got = flops.count(lambda v, x: p.apply(v, x, train=True, mutable=["batch_stats"]), v, x)
  assert got["total"] == hand
  assert 8.7e9 < hand < 8.9e9


def test_peak_table():
  assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.5
  assert bench.peak_tflops("NVIDIA H100 PCIe", jnp.bfloat16) == 756.0
  assert bench.peak_tflops("NVIDIA H200", "float32") == 494.7
  assert bench.peak_tflops("NVIDIA A100-SXM4-80GB", "bfloat16") == 312.0
  assert bench.peak_tflops("TPU v5 lite", "bfloat16") == 197.0
  assert bench.peak_tflops("TPU v5", "bfloat16") == 459.0
  assert bench.peak_tflops("TPU v4", "bfloat16") == 275.0
  assert bench.peak_tflops("cpu", "float32") is None


# --------------------------------------------------------------------------- HLO collectives

def test_collectives_parser():
  text = """
  %all-reduce.1 = (f32[16]{0}, f32[3,3,16,16]{3,2,1,0}, /*index=2*/f32[]) all-reduce(%a, %b, %c), channel_id=1, replica_groups={{0,1}}, to_apply=%add
  %all-reduce.2 = bf16[8]{0} all-reduce(%d), channel_id=2, replica_groups={{0,1}}, to_apply=%add
  %all-gather = f32[16,10]{1,0} all-gather(%e), channel_id=3, dimensions={0}
  %ag-start = (f32[2,10]{1,0}, f32[16,10]{1,0}) all-gather-start(%e), channel_id=4, dimensions={0}
  %ag-done = f32[16,10]{1,0} all-gather-done(%ag-start)
  %cp = (u8[4]{0}, u8[4]{0}, u32[], u32[]) collective-permute-start(%f), source_target_pairs={{0,1}}
  %fusion = f32[16]{0} fusion(%all-reduce.2), kind=kLoop
  """
  s = hlo.collectives(text)
  assert s["all-reduce"] == {"count": 2, "bytes": 4 * (16 + 144 * 16 + 1) + 2 * 8}
  assert s["all-gather"] == {"count": 2, "bytes": 2 * 4 * 160}
  assert s["collective-permute"] == {"count": 1, "bytes": 4}
  assert s["reduce-scatter"]["count"] == s["all-to-all"]["count"] == 0
  assert hlo.total(s)["count"] == 5
  assert hlo.ring_all_reduce_seconds(8e6, 8, 1e9) == pytest.approx(2 * 7 / 8 * 8e-3)
  assert hlo.ring_all_reduce_seconds(8e6, 1, 1e9) == 0.0


def test_step_collectives_global_vs_per_device_bn():
  """The data-parallel step on 8 devices: with per-device BatchNorm statistics, one all-reduce
  (gradients, running statistics and metrics, combined) and nothing else; with global statistics,
  also an all-reduce per BN layer forward and backward."""
  config = _config("task=sr,mode=plain,tiny=true,batch=16,blocks=1", "processor.channels=8", "data.crop=16")
  table = bench.collective_table(config, 8)
  sizes = table["trainable"]
  assert sizes["bn_layers"] == 2 and sizes["bn_channels"] == 16
  per_device, glob = table["by_bn_stats"]["per_device"], table["by_bn_stats"]["global"]
  for entry in (per_device, glob):
    others = {k: v for k, v in entry["collectives"].items() if k != "all-reduce"}
    assert all(v["count"] == 0 for v in others.values()), others
  grads_and_stats = 4 * (sizes["param_elements"] + sizes["batch_stat_elements"])
  assert per_device["collectives"]["all-reduce"]["count"] == 1
  assert 0 <= per_device["total"]["bytes"] - grads_and_stats <= 64   # + a few metric scalars
  assert glob["collectives"]["all-reduce"]["count"] >= 2 * sizes["bn_layers"]
  assert glob["total"]["bytes"] >= 4 * sizes["param_elements"] + 4 * 2 * sizes["bn_channels"]
  assert "per_device" in bench.format_collectives(table)


def test_collective_table_needs_enough_devices():
  config = _config("task=sr,mode=plain,tiny=true,batch=16")
  with pytest.raises(bench.BenchError, match="xla_force_host_platform_device_count=64"):
    bench.collective_table(config, 64)


# --------------------------------------------------------------------------- per-device BatchNorm

def _bn_pair(dtype=jnp.float32):
  return (layers.batch_norm(train=True, dtype=dtype, stats="global"),
          layers.batch_norm(train=True, dtype=dtype, stats="per_device"))


def test_per_device_bn_on_one_device_is_batchnorm():
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 5, 5, 4)) * 3.0 + 1.5
  glob, local = _bn_pair()
  shapes = [jax.tree.map(jnp.shape, jax.eval_shape(m.init, jax.random.PRNGKey(1), x)) for m in (glob, local)]
  assert shapes[0] == shapes[1]
  v = {"params": {"scale": jnp.linspace(0.5, 2.0, 4), "bias": jnp.linspace(-1.0, 1.0, 4)},
       "batch_stats": {"mean": jnp.full(4, 0.3), "var": jnp.full(4, 2.0)}}

  @jax.jit
  def both(v, x):
    train = [m.apply(v, x, mutable=["batch_stats"]) for m in _bn_pair()]
    evals = [layers.batch_norm(train=False, dtype=jnp.float32, stats=s).apply(v, x) for s in layers.BN_STATS]
    bf16 = [m.apply(v, x.astype(jnp.bfloat16), mutable=["batch_stats"])[0] for m in _bn_pair(jnp.bfloat16)]
    return train, evals, bf16

  (g, l), evals, bf16 = both(v, x)
  np.testing.assert_allclose(l[0], g[0], rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), l[1], g[1])
  assert not np.allclose(g[1]["batch_stats"]["mean"], v["batch_stats"]["mean"])   # the statistics moved
  np.testing.assert_allclose(evals[1], evals[0], rtol=1e-6)
  # bfloat16 compute: bfloat16 out, statistics in float32
  assert bf16[1].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.float32(bf16[1]), np.float32(bf16[0]), atol=0.05)


def test_per_device_bn_on_8_devices_uses_each_shards_statistics():
  mesh = sharding.make_mesh(8)
  rng = np.random.default_rng(0)
  shift = np.repeat(np.arange(8, dtype=np.float32), 2)[:, None, None, None]   # a different mean per shard
  x = (rng.normal(size=(16, 3, 3, 5)) * (1 + shift) + 4 * shift).astype(np.float32)
  eps = 1e-5
  expect, means, variances = [], [], []
  for s in range(8):
    xs = x[2 * s:2 * s + 2]
    m, var = xs.mean((0, 1, 2)), xs.var((0, 1, 2))
    expect.append((xs - m) / np.sqrt(var + eps))
    means.append(m)
    variances.append(var)
  outs = {}
  for stats in layers.BN_STATS:
    bn = layers.batch_norm(train=True, dtype=jnp.float32, stats=stats)
    v = bn.init(jax.random.PRNGKey(0), x[:2])
    f = jax.jit(lambda v, x: bn.apply(v, x, mutable=["batch_stats"]),
                in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
                out_shardings=(sharding.batch_sharded(mesh), sharding.replicated(mesh)))
    with jax.set_mesh(mesh):
      outs[stats] = jax.device_get(f(v, sharding.global_batch({"x": x}, mesh)["x"]))
  y, new = outs["per_device"]
  np.testing.assert_allclose(y, np.concatenate(expect), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(new["batch_stats"]["mean"], 0.1 * np.mean(means, 0), rtol=1e-5)
  np.testing.assert_allclose(new["batch_stats"]["var"], 0.9 + 0.1 * np.mean(variances, 0), rtol=1e-5)
  whole = (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + eps)    # global: the whole batch's statistics
  np.testing.assert_allclose(outs["global"][0], whole, rtol=1e-4, atol=1e-4)
  assert not np.allclose(y, whole, atol=1e-2)


def test_per_device_bn_rejects_uneven_split_and_bad_option():
  mesh = sharding.make_mesh(8)
  bn = layers.batch_norm(train=True, dtype=jnp.float32, stats="per_device")
  x = jnp.ones((12, 2, 2, 3))
  v = bn.init(jax.random.PRNGKey(0), x)
  with jax.set_mesh(mesh), pytest.raises(ValueError, match="cannot be split over the 8 devices"):
    bn.apply(v, x, mutable=["batch_stats"])
  with pytest.raises(ValueError, match="Unknown BatchNorm statistics 'local'"):
    layers.batch_norm(train=True, dtype=jnp.float32, stats="local")
  with pytest.raises(ValueError, match="bn_stats"):
    processor("srresnet", bn_stats="local")
  with pytest.raises(config_lib.ConfigError, match="config.bn_stats='local'"):
    _config("task=sr,mode=plain,tiny=true", "bn_stats=local")


# --------------------------------------------------------------------------- the benchmark command

SCHEMA = {"bench", "task", "mode", "batch", "input_shape", "target_shape", "dtype", "bn_stats", "processor",
          "recognizer", "devices", "platform", "device_kind", "steps", "warmup", "img_per_s", "step_ms",
          "step_ms_min", "step_ms_max", "img_per_s_pipelined", "step_ms_pipelined", "compile_s",
          "peak_memory_bytes", "compiled_memory_bytes", "flops_per_image", "flops_forward_per_image", "tflops",
          "peak_tflops", "fraction_of_peak", "host", "jax_version"}


def _has_torch() -> bool:
  try:
    import torch  # noqa: F401
    import torchvision  # noqa: F401
  except ImportError:
    return False
  return True


def test_bench_cli_prints_one_json_record(capsys):
  """One JSON line; end to end from the grain pipeline too, and next to PyTorch where it is installed."""
  code = bench.cli(["--config", f"{BENCH}:task=denoise,mode=plain,tiny=true,steps=2,batch=4,blocks=1",
                    "--pipeline", "--vs-torch", "--config.bench.warmup=1", "--config.mesh.data=1",
                    "--config.bench.pipeline_images=4"])
  assert code == 0
  lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
  assert len(lines) == 1
  r = json.loads(lines[0])
  assert SCHEMA <= set(r)
  assert (r["task"], r["mode"], r["batch"], r["dtype"], r["devices"]) == ("denoise", "plain", 4, "float32", 1)
  assert r["input_shape"] == r["target_shape"] == [32, 32, 3] and r["recognizer"] is None
  assert r["img_per_s"] == pytest.approx(4 / (r["step_ms"] / 1e3))
  assert r["step_ms_min"] <= r["step_ms"] <= r["step_ms_max"] and r["compile_s"] > 0
  assert r["platform"] == "cpu" and r["peak_tflops"] is None and r["fraction_of_peak"] is None
  # P: forward + weight gradients + input gradients of all convs but the first: just under 3x forward
  fwd = r["flops_forward_per_image"]["processor_forward"]
  assert 2.5 * fwd < r["flops_per_image"] < 3 * fwd
  assert r["tflops"] == pytest.approx(r["flops_per_image"] * r["img_per_s"] / 1e12)
  p = r["pipeline"]
  assert p["img_per_s"] > 0 and p["host_pipeline_img_per_s"] > 0
  assert p["fraction_of_step_only"] == pytest.approx(p["img_per_s"] / p["step_only_img_per_s"])
  if _has_torch():
    ref = r["vs_torch"]["eager_fp32"]
    assert ref["img_per_s"] > 0 and ref["device"] == "cpu"
    assert ref["ratio"] == pytest.approx(r["img_per_s"] / ref["img_per_s"])
  else:
    assert "PyTorch is not installed" in r["vs_torch"]["skipped"]


def test_bench_cli_recognizer_alone(capsys):
  """--recognizer times R's forward and its loss's input gradient on the step's target shapes."""
  code = bench.cli(["--config", f"{BENCH}:task=sr,tiny=true,steps=2,batch=4", "--recognizer",
                    "--config.bench.warmup=1"])
  assert code == 0
  lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
  assert len(lines) == 1
  r = json.loads(lines[0])
  assert (r["bench"], r["recognizer"], r["batch"], r["input_shape"]) == ("recognizer", "resnet18", 4, [32, 32, 3])
  assert r["forward_ms"] > 0 and r["input_grad_ms"] > 0 and r["forward_compile_s"] > 0 and r["input_grad_compile_s"] > 0
  with pytest.raises(SystemExit):
    bench.cli(["--config", f"{BENCH}:task=sr,tiny=true", "--recognizer", "--vs-torch"])
  assert "does not combine" in capsys.readouterr().err


def test_ra_step_flops_are_p_training_plus_r_forward_and_input_gradient():
  """The RA step's count (traced, not compiled): P's training pass (~3x its forward) and R's forward
  and input gradient (~2x its forward; R's weights get no gradient)."""
  setup = bench.Setup(_config("task=sr,mode=ra,tiny=true,batch=4,blocks=1", "mesh.data=1"))
  state = jax.eval_shape(setup.init_state)
  fwd = bench.flops_breakdown(setup, state)
  with jax.set_mesh(setup.mesh):
    step = flops.count_jaxpr(setup.step.trace(state, setup.batch, setup.frozen).jaxpr)["total"] / 4
  p, r = fwd["processor_forward"], fwd["recognizer_forward"]
  assert 2.5 * p + 1.8 * r < step < 3 * p + 2 * r


def test_bench_cli_errors(capsys):
  with pytest.raises(SystemExit) as e:
    bench.cli(["--config", f"{BENCH}:task=sr,mode=plain,tiny=true", "--config.bench.stepz=3"])
  assert e.value.code == 2 and "bench.stepz" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    bench.cli(["--config", f"{BENCH}:task=sr,mode=plain,tiny=true", "--bogus"])
  with pytest.raises(SystemExit) as e:
    bench.cli(["--config", "configs/smoke.py"])
  assert "no 'bench' section" in capsys.readouterr().err


def test_vs_torch_is_skipped_cleanly_without_torch(monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)   # import torch -> ImportError
  out = bench._vs_torch(_config("task=sr,mode=ra,tiny=true"), 100.0)
  assert set(out) == {"skipped"} and "PyTorch is not installed" in out["skipped"]


def test_torch_variant_names():
  from rajax import bench_torch
  assert bench_torch.parse_variant("compile_bf16_cl") == {"compile": True, "bf16": True, "channels_last": True}
  assert bench_torch.parse_variant("eager_fp32") == {"compile": False, "bf16": False, "channels_last": False}
  with pytest.raises(ValueError, match="Unknown PyTorch reference variant"):
    bench_torch.parse_variant("jit_fp8")
  assert bench.torch_variants(_config("task=sr,mode=ra,tiny=true,dtype=bfloat16"), "cuda") == "amp_bf16_cl,compile_bf16_cl"
  assert bench.torch_variants(_config("task=sr,mode=ra,tiny=true"), "cpu") == "eager_fp32"


def test_torch_reference_steps():
  pytest.importorskip("torch")
  pytest.importorskip("torchvision")
  from rajax import bench_torch
  for mode, variants in (("unsupervised", "eager_fp32"), ("transformer", "amp_bf16_cl")):
    out = bench_torch.run(mode=mode, batch=2, crop=8, scale=1, blocks=1, channels=4, num_classes=10, lam=0.01,
                          width=4, t_blocks=1, t_channels=4, variants=variants, steps=1, warmup=1, device="cpu")
    rec = out[variants]
    assert set(out) == {variants} and (rec["steps"], rec["device"], rec["peak_memory_bytes"]) == (1, "cpu", None)
    # One timed step of a batch of 2: the throughput is that step's time read the other way round.
    assert rec["img_per_s"] * rec["step_ms"] == pytest.approx(2 * 1e3, rel=1e-12)
    assert rec["torch_version"] == pytest.importorskip("torch").__version__


def test_torch_reference_matches_rajax_shapes_and_parameter_counts():
  """The reference networks are the same networks: equal parameter counts for P, T and R."""
  pytest.importorskip("torchvision")
  from rajax import bench_torch
  p_t, t_t, r_t = bench_torch.build_modules(scale=4, blocks=2, channels=16, t_blocks=1, t_channels=8,
                                            num_classes=10, transformer=True, width=8)
  count_t = lambda m: sum(p.numel() for p in m.parameters())
  count_j = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  p_j = processor("srresnet", scale=4, blocks=2, channels=16)
  t_j = processor("resnet_generator", blocks=1, channels=8)
  for net, torch_net, size in ((p_j, p_t, 8), (t_j, t_t, 16)):
    v = jax.eval_shape(lambda net=net, size=size: net.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))))
    assert count_j(v["params"]) == count_t(torch_net)
  from rajax.models import resnet
  r_j = resnet.ResNet(stage_sizes=(2, 2, 2, 2), num_classes=10, width=8)
  assert count_j(jax.eval_shape(r_j.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]) == count_t(r_t)
  import torch
  assert tuple(p_t(torch.rand(1, 3, 8, 8)).shape) == (1, 3, 32, 32)
  assert tuple(t_t(torch.rand(1, 3, 16, 16)).shape) == (1, 3, 16, 16)


# --------------------------------------------------------------------------- prefetching to the device

def test_prefetch_to_device_keeps_order_and_raises_reader_errors():
  mesh = sharding.make_mesh(8)
  batches = [{"x": np.full((8, 2), i, np.float32)} for i in range(5)]
  got = [jax.device_get(b["x"]) for b in sharding.prefetch_to_device(iter(batches), mesh, size=2)]
  assert [int(g[0, 0]) for g in got] == list(range(5))

  def broken():
    yield batches[0]
    raise OSError("disk gone")

  it = sharding.prefetch_to_device(broken(), mesh)
  next(it)
  with pytest.raises(OSError, match="disk gone"):
    next(it)
  with pytest.raises(ValueError, match="prefetch size"):
    next(sharding.prefetch_to_device(iter(batches), mesh, size=0))


# --------------------------------------------------------------------------- launch/bench_gpu.sh

def _bench_gpu_dry_run(gpus: int, *args: str) -> list[str]:
  import os
  import subprocess
  env = {**os.environ, "NUM_GPUS": str(gpus), "PYTHON": "python"}
  env.pop("XLA_FLAGS", None)
  r = subprocess.run(["launch/bench_gpu.sh", "--dry-run", *args, "runs/bench"], capture_output=True, text=True,
                     env=env, timeout=60)
  assert r.returncode == 0, r.stderr
  return r.stdout.splitlines()


def test_bench_gpu_script_commands_are_valid():
  import shlex
  lines = _bench_gpu_dry_run(8)
  names = [l.split(":", 1)[0] for l in lines]
  for required in ("sr_ra", "denoise_ra", "jpeg_ra", "sr_unsupervised", "sr_transformer", "sr_ra_pipeline",
                   "hlo_sr_ra", "multi_sr_ra_global", "multi_sr_ra_per_device"):
    assert required in names
  assert len(names) == len(set(names))
  assert not any(n.startswith("multi_") for n in (l.split(":", 1)[0] for l in _bench_gpu_dry_run(1)))
  assert [l.split(":", 1)[0] for l in _bench_gpu_dry_run(1, "--only", "^jpeg")] == ["jpeg_ra", "jpeg_ra_pipeline"]
  for line in lines:   # every command's config loads, with its overrides
    argv = shlex.split(line.split(":", 1)[1])
    argv = argv[argv.index("rajax.bench") + 1:]
    spec = argv[argv.index("--config") + 1]
    overrides = [a[len("--config."):] for a in argv if a.startswith("--config.")]
    config = config_lib.from_command_line(spec, overrides)
    assert "bench" in config
    assert ("--config.mesh.data=1" in argv) != line.startswith("multi_") or "--hlo" in argv


def test_bench_gpu_script_xla_flags_are_known_to_xla():
  import os
  import shlex
  import subprocess
  flags = set()
  for line in _bench_gpu_dry_run(8):
    for word in shlex.split(line.split(":", 1)[1]):
      if word.startswith("XLA_FLAGS="):
        flags.update(word.split("=", 1)[1].split())
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in flags
  env = {**os.environ, "XLA_FLAGS": " ".join(sorted(flags)), "JAX_PLATFORMS": "cpu"}
  r = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], capture_output=True, text=True, env=env,
                     timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]   # XLA aborts on a flag it does not know


def test_a_detector_as_r_is_benchmarked_on_box_targets_of_the_detection_pipelines_form(monkeypatch):
  """configs/bench.py with a detector: the synthetic batch carries boxes inside the image (labels
  past the background class, half the slots valid) instead of class labels, and the step trains P
  on the detector's own loss over them."""
  import toy_detector
  from rajax.detection import zoo
  monkeypatch.setattr(zoo, "_FAMILIES", (*zoo._FAMILIES, "toy_detector"))
  config = config_lib.load("configs/bench.py:task=sr,mode=ra,recognizer=toy_detector,tiny=true")
  config.data.crop, config.data.resize = 32, 48
  config.mesh.data = 1
  setup = bench.Setup(config)
  host = bench.synthetic_batch(config, recognizer=setup.recognizer)
  assert "label" not in host and host["boxes"].shape == (2, 8, 4)
  boxes = host["boxes"]
  assert np.all(boxes[..., 2:] > boxes[..., :2]) and boxes.min() >= 0 and boxes.max() <= 32
  assert host["labels"].min() >= 1 and host["labels"].max() < setup.recognizer.num_classes
  np.testing.assert_array_equal(host["valid"].sum(-1), [4, 4])
  state = setup.init_state()
  compiled, _, _ = setup.compile(state)
  _, metrics = compiled(state, setup.batch, setup.frozen)
  assert np.isfinite(float(metrics["recognition"])) and float(metrics["recognition"]) > 0
  assert "top1" not in metrics


def test_bench_ops_times_every_piece_of_the_ra_step_and_formats_the_table():
  """rajax.bench_ops on the tiny shapes: one positive time per op (fwd and fwd+bwd of each layer,
  P, R's forward and input gradient, Adam), the markdown table lists them, and a PyTorch column
  appears only when it was timed."""
  from rajax import bench_ops
  config = config_lib.load(f"{BENCH}:task=sr,mode=ra,tiny=true")
  record = bench_ops.run(config, repeats=1)
  ops = [r["op"] for r in record["rows"]]
  c = config.processor.channels
  for name in (f"head conv 9x9 3->{c}", f"body conv 3x3 {c}->{c}", f"BatchNorm (train) {c}", f"PReLU {c}",
               f"tail conv 9x9 {c}->3", "P"):
    assert f"{name} fwd" in ops and f"{name} fwd+bwd" in ops, name
  assert {"R fwd", "R input grad", "Adam (P)"} <= set(ops)
  assert all(r["rajax_ms"] > 0 and "torch_ms" not in r for r in record["rows"])
  table = bench_ops.markdown(record)
  assert table.count("\n") == len(ops) + 1 and "PyTorch" not in table
  record["rows"][0] |= {"torch_ms": 2 * record["rows"][0]["rajax_ms"], "ratio": 2.0}
  assert "| 2.00x |" in bench_ops.markdown(record)


def test_trace_rows_name_each_layer_of_either_implementation():
  """The profile's row of an XLA instruction comes from its name stack (forward or transposed, P's
  layer by its name, R, P's optimizer), and PyTorch's layer names land in the same rows."""
  from rajax import bench_ops
  row = lambda op: bench_ops.jax_trace_row(op, "SRResNet", "ResNet")
  assert row("jit(train_step)/jvp(SRResNet)/head/conv_general_dilated") == "P fwd: head conv 9x9"
  assert row("jit(train_step)/transpose(jvp(SRResNet))/blocks_1/conv2/rev") == "P bwd: body convs 3x3"
  assert row("jit(train_step)/jvp(SRResNet)/mid/conv_general_dilated") == "P fwd: body convs 3x3"
  assert row("jit(train_step)/transpose(jvp(SRResNet))/blocks_0/bn1/reduce_sum") == "P bwd: BatchNorm"
  assert row("jit(train_step)/jvp(SRResNet)/up_1_prelu/jit(_where)/select_n") == "P fwd: PReLU"
  assert row("jit(train_step)/transpose(jvp(SRResNet))/up_0/conv_general_dilated") == "P bwd: up convs 3x3"
  assert row("jit(train_step)/transpose(jvp(SRResNet))/up_1/bhwk,bhwo->ko/dot_general") == "P bwd: up convs 3x3"
  assert row("jit(train_step)/jvp(SRResNet)/transpose") == "P fwd: pixel shuffle"
  assert row("jit(train_step)/transpose(jvp(SRResNet))/vmap()/transpose") == "P bwd: pixel shuffle"
  assert row("jit(train_step)/jvp(SRResNet)/tanh") == "P fwd: other"
  assert row("jit(train_step)/transpose(jvp(SRResNet))/tail/conv_general_dilated") == "P bwd: tail conv 9x9"
  assert row("jit(train_step)/jvp(ResNet)/layer4_1/conv2/conv_general_dilated") == "R fwd"
  assert row("jit(train_step)/transpose(jvp(ResNet))/layer1_0/bn1/mul") == "R input grad"
  assert row("jit(train_step)/optimizer_processor/sqrt") == "Adam (P)"
  assert row("jit(train_step)/transpose(jvp(jit(log_softmax)))/neg") == "loss and the rest"
  assert row("") == "loss and the rest"
  # PyTorch's module names (rajax.bench_torch.build_modules) give the same rows
  part = bench_ops.p_part
  assert [part("head.0", "conv"), part("blocks.3.conv1", "conv"), part("mid.0", "conv"), part("up.0", "conv"),
          part("up.1", "shuffle"), part("up.2", "prelu"), part("blocks.0.bn2", "bn"), part("tail", "conv")] == [
      "head conv 9x9", "body convs 3x3", "body convs 3x3", "up convs 3x3", "pixel shuffle", "PReLU", "BatchNorm",
      "tail conv 9x9"]


def test_trace_profiles_the_whole_step_with_jax_profiler():
  """--trace on the tiny RA step: P's layers, R's forward and input gradient and Adam each take
  time, the busy time is of the order of the step's wall time, and the table ends with both."""
  from rajax import bench_ops
  config = config_lib.load(f"{BENCH}:task=sr,mode=ra,tiny=true,steps=2")
  record = bench_ops.trace(config)
  busy = {r["row"]: r["rajax_ms"] for r in record["trace_rows"]}
  assert list(busy) == list(bench_ops.TRACE_ROWS)
  for row in ("P fwd: head conv 9x9", "P fwd: tail conv 9x9", "P bwd: tail conv 9x9", "P bwd: body convs 3x3",
              "R fwd", "R input grad", "Adam (P)"):
    assert busy[row] > 0, row
  total = sum(busy.values())
  assert 0.2 * record["rajax_step_ms"] < total < 3 * 2 * record["rajax_step_ms"], (total, record["rajax_step_ms"])
  assert record["rajax_top"][0]["ms"] >= record["rajax_top"][-1]["ms"] > 0
  table = bench_ops.trace_markdown(record)
  assert table.count("\n") == len(bench_ops.TRACE_ROWS) + 3 and "PyTorch" not in table
