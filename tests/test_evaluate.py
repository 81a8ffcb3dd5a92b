"""The evaluation suite: exact checks of its measures, then every evaluator end to end on tiny models."""

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn

import rajax
from rajax import config as config_lib
from rajax import evaluate, losses, step as step_lib, train
from rajax import weights as weights_lib
from rajax.evaluate import boundary as boundary_lib
from rajax.evaluate import tables, targets as targets_lib
from rajax.evaluate import context as context_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
K = 10


# ==================================================================== exact measures

def _linear(w, b):
  """Top-1 of a linear classifier over flattened images."""
  return lambda x: jnp.argmax(x.reshape(x.shape[0], -1) @ w + b, axis=-1)


def test_boundary_distance_equals_the_analytic_distance_for_a_linear_classifier():
  rng = np.random.default_rng(0)
  b_, dim = 6, 4 * 4 * 3
  w = rng.standard_normal((dim, 2)).astype(np.float32)
  bias = np.zeros(2, np.float32)
  x = rng.uniform(0, 1, (b_, 4, 4, 3)).astype(np.float32)
  d = boundary_lib.unit(rng.standard_normal((b_, 4, 4, 3)).astype(np.float32))
  # The class flips where (w0 - w1) . (x + t d) changes sign: t* = -m / ((w0 - w1) . d) when positive.
  wd = w[:, 0] - w[:, 1]
  m = x.reshape(b_, -1) @ wd
  rate = d.reshape(b_, -1) @ wd
  expected = -m / rate
  expected = np.where(expected > 0, expected, np.inf)
  expected = np.where(expected <= 10.0, expected, np.inf)
  bd = np.asarray(jax.jit(lambda x, d: evaluate.boundary_distance(_linear(w, bias), x, d, max_distance=10.0,
                                                                  grid=16, bisect=20))(x, d))
  assert np.isfinite(expected).sum() >= 2 and np.isinf(expected).sum() >= 1, "the draw must cover both cases"
  np.testing.assert_array_equal(np.isinf(bd), np.isinf(expected))
  ok = np.isfinite(expected)
  tol = 10.0 / 16 / 2**20
  assert np.all(bd[ok] >= expected[ok] - 1e-4) and np.all(bd[ok] - expected[ok] <= tol + 1e-4), (bd, expected)
  # The returned point is past the boundary: the class there differs.
  step = np.where(ok, bd, 0).reshape(-1, 1, 1, 1)
  assert np.all(np.asarray(_linear(w, bias)(x + step * d))[ok] != np.asarray(_linear(w, bias)(x))[ok])


def test_inter_boundary_distance_of_two_linear_classifiers():
  # Two classifiers on one pixel value s = x . e: R1 flips at s = 0.3, R2 at s = 0.8; along +e from s = 0
  # the boundaries are 0.3 and 0.8 away, so IBD = 0.5.
  x = np.zeros((1, 2, 2, 3), np.float32)
  e = np.zeros((1, 2, 2, 3), np.float32)
  e[0, 0, 0, 0] = 1.0
  w = np.zeros((12, 2), np.float32)
  w[0, 1] = 1.0
  bd1 = evaluate.boundary_distance(_linear(w, np.array([0.3, 0.0], np.float32)), x, e, max_distance=1.0, bisect=24)
  bd2 = evaluate.boundary_distance(_linear(w, np.array([0.8, 0.0], np.float32)), x, e, max_distance=1.0, bisect=24)
  np.testing.assert_allclose([float(bd1[0]), float(bd2[0])], [0.3, 0.8], atol=1e-5)
  np.testing.assert_allclose(evaluate.inter_boundary_distance(bd1, bd2), [0.5], atol=1e-5)
  assert np.isnan(evaluate.inter_boundary_distance(np.array([np.inf]), np.array([1.0]))[0])


def test_class_halves_are_deterministic_disjoint_and_cover_all_classes():
  a, b = evaluate.class_halves(1000, seed=0)
  assert (a, b) == evaluate.class_halves(1000, seed=0)
  assert len(a) == len(b) == 500 and not set(a) & set(b) and set(a) | set(b) == set(range(1000))
  assert list(a) == sorted(a)
  assert evaluate.class_halves(1000, seed=1) != (a, b)
  # Fixed by (num_classes, seed) alone, on any machine: SHA-256 order.
  assert evaluate.class_halves(4, seed=0) == evaluate.class_halves(4, seed=0)
  with pytest.raises(ValueError, match="at least 2"):
    evaluate.class_halves(1)


def test_subset_prediction_and_accuracy_by_hand():
  a, b = evaluate.class_halves(4, seed=0)
  logits = np.array([[9, 1, 2, 3], [0, 8, 1, 7], [1, 2, 3, 4]], np.float32)
  out = targets_lib.summarise(logits, seed=0, xp=np)
  for half, classes in (("A", a), ("B", b)):
    expected = [max(classes, key=lambda c: row[c]) for row in logits]
    np.testing.assert_array_equal(out[f"sub_{half}"], expected)
  np.testing.assert_array_equal(out["topk"][:, 0], [0, 1, 3])
  np.testing.assert_array_equal(np.asarray(targets_lib.summarise(jnp.asarray(logits), seed=0)["sub_A"]), out["sub_A"])
  labels = np.array([a[0], a[1], b[0]])
  acc, n = tables.subset_accuracy(out["sub_A"], labels, a)
  hand = np.mean([out["sub_A"][i] == labels[i] for i in range(3) if labels[i] in a])
  assert n == 2 and acc == pytest.approx(hand)


class _Linear(nn.Module):
  """A linear classifier with the recognizer module interface (fast to compile)."""

  num_classes: int

  @nn.compact
  def __call__(self, x, *, train=False, features=False):
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def test_training_on_half_a_restricts_examples_and_logits():
  a, _ = step_lib.class_halves(K, seed=0)
  method = step_lib.Method(mode="ra", lam=1.0, classes=a)
  nets = {"processor": rajax.processor("srresnet", scale=1, blocks=1, channels=4)}
  module = _Linear(K)
  rec = rajax.Recognizer("linear", module, module.init(jax.random.key(2), jnp.zeros((1, 16, 16, 3))))
  x = jax.random.uniform(jax.random.key(0), (4, 16, 16, 3))
  labels = jnp.asarray([a[0], a[1], a[2], [c for c in range(K) if c not in a][0]], jnp.int32)
  batch = {"input": x, "target": x, "label": labels}
  variables = nets["processor"].init(jax.random.key(1), x[:1], train=False)
  params, stats = {"processor": variables["params"]}, {"processor": variables["batch_stats"]}
  loss_fn = step_lib.make_loss_fn(method, nets)
  _, aux = jax.jit(loss_fn)(params, stats, batch, rec)
  terms, _, logits, out = aux[:4]   # the recognizer's logits on P's output, and that output
  keep = np.isin(np.asarray(labels), a)
  sub = jnp.take(logits, jnp.asarray(a), axis=-1)
  pos = jnp.asarray([list(a).index(int(l)) if int(l) in a else 0 for l in labels])
  ce = losses.recognition_ce(logits=sub, labels=pos, reduction="none")
  np.testing.assert_allclose(float(terms["recognition"]), float(jnp.sum(ce * keep) / keep.sum()), rtol=1e-5)
  mse = losses.pixel_mse(pred=out, target=x, reduction="none")
  np.testing.assert_allclose(float(terms["pixel_mse"]), float(jnp.sum(mse * keep) / keep.sum()), rtol=1e-5)
  # The trainer config selects the half: config.classes.half.
  c = config_lib.load(str(ROOT / "configs/smoke.py"))
  c.classes.half = "A"
  assert config_lib.method(c).classes == a
  c.classes.half = "C"
  with pytest.raises(config_lib.ConfigError, match="classes.half"):
    config_lib.validate(c)


# ==================================================================== end to end on tiny models

def _save_run(workdir: pathlib.Path, mode: str, seed: int, **fields) -> pathlib.Path:
  """A finished trainer workdir (config.json + processor.msgpack) with random processor weights."""
  c = config_lib.load(f"{ROOT / 'configs/smoke.py'}:task=denoise,mode={mode}")
  c.processor.blocks, c.processor.channels = 1, 8
  c.recognizer.width = 4
  for k, v in fields.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  _, nets = train.build_networks(c)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(c.to_json_best_effort(indent=2))
  variables = jax.jit(lambda k: nets["processor"].init(k, jnp.zeros((1, 8, 8, 3)), train=False))(jax.random.key(seed))
  weights_lib.save(workdir / "processor.msgpack", jax.device_get(variables))
  return workdir


def test_a_run_with_extra_network_options_loads_as_trained(tmp_path):
  """Architecture options beyond the defaults (the demo's processor.outer_kernel, input_skip) reach the model."""
  work = _save_run(tmp_path / "k5", "plain", seed=0, **{"processor.outer_kernel": 5, "processor.input_skip": True})
  p = context_lib.load_processor("k5", work)
  net = p.networks["processor"]
  assert (net.outer_kernel, net.input_skip) == (5, True)
  assert p.variables["processor"]["params"]["head"]["kernel"].shape == (5, 5, 3, 8)


class Counting:
  """A black-box target: the zoo recognizer `rec` behind a host callable, counting its calls."""

  def __init__(self, rec):
    self.rec, self.calls = rec, 0
    self._fn = jax.jit(lambda r, x: r(x))
    self.cache_key = "counting-resnet18-w4"

  def __call__(self, images):
    self.calls += 1
    return np.asarray(self._fn(self.rec, jnp.asarray(images)))


def _eval_config(runs: pathlib.Path) -> ml_collections.ConfigDict:
  c = evaluate.base_config(task="denoise")
  c.data.source = "photos"
  c.data.photos.short_side = 40
  c.data.photos.grid = 1                # 5 held-out photos x 1 crop x 2 (mirror) = 10 images
  c.data.resize = 0
  c.data.crop = 32
  c.data.threads = 2
  # The noise drawn with NumPy in the pipeline: the boundary checks below need a plain-output mistake whose
  # boundary lies within max_distance, which these settings were chosen for on these noisy images.
  c.data.noise = "host"
  c.labels = "recognizer"
  c.batch_size = 8                      # 10 images: the last batch is padded
  c.processors.plain = str(runs / "plain")
  c.processors.ra = str(runs / "ra")
  c.targets.resnet18 = evaluate.zoo("resnet18", "random", num_classes=K, width=4)
  E = ml_collections.ConfigDict
  c.evals.accuracy = E(dict(type="accuracy", processors=("plain", "ra")))
  c.evals.transfer = E(dict(type="transfer", processors=("plain", "ra")))
  c.evals.category = E(dict(type="category", processors=("plain", "ra"), targets=("resnet18",)))
  c.evals.lambda_sweep = E(dict(type="lambda_sweep", processors=("plain", "ra"), targets=("resnet18",)))
  c.evals.boundary = E(dict(type="boundary", plain="plain", ra="ra", source="resnet18", random_directions=1,
                            max_distance=60.0, grid=4, bisect=4, max_images=4, map=E(dict(size=5))))
  c.evals.imagenet_c = E(dict(type="imagenet_c", processors=("ra",), targets=("resnet18",),
                              corruptions=("brightness",), severities=(2,)))
  return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  _save_run(root / "plain", "plain", seed=0)
  _save_run(root / "ra", "ra", seed=1)
  return root


@pytest.fixture(scope="module")
def source_rec():
  return rajax.recognizer("resnet18", "random", num_classes=K, width=4)


def test_every_evaluator_writes_its_tables_and_figures(runs, source_rec, tmp_path):
  config = _eval_config(runs)
  blackbox = Counting(source_rec)
  results = evaluate.run(config, tmp_path, targets={"blackbox": blackbox})
  for name in config.evals:
    for suffix in (".md", ".csv", ".json"):
      assert (tmp_path / f"{name}{suffix}").is_file(), name + suffix
  assert (tmp_path / "lambda_sweep.png").stat().st_size > 0 and (tmp_path / "boundary_map.png").stat().st_size > 0
  assert (tmp_path / "report.md").read_text().count("## ") == len(config.evals)

  acc = {r["view"]: r for r in results["accuracy"].rows}
  assert list(acc) == ["input", "plain", "ra", "clean"]
  # Labels are each target's own top-1 on the clean image: the clean row is 100% by construction.
  assert acc["clean"]["resnet18 top-1"] == 1.0 and acc["clean"]["blackbox top-1"] == 1.0
  # The black box is the same network as the zoo column, run on the host: identical numbers.
  for v in acc:
    assert acc[v]["blackbox top-1"] == acc[v]["resnet18 top-1"]
    assert acc[v]["blackbox top-5"] == acc[v]["resnet18 top-5"]
  # RA against plain example by example: the counts agree with the two top-1 figures (10 images).
  test = results["accuracy"].extra["paired_vs_plain"]["ra"]["resnet18"]
  assert test["gained"] - test["lost"] == round((acc["ra"]["resnet18 top-1"] - acc["plain"]["resnet18 top-1"]) * 10)
  assert 0.0 < test["p"] <= 1.0 and acc["ra"]["resnet18 vs plain"].startswith(f"+{test['gained']}/-{test['lost']}")
  assert all("resnet18 vs plain" not in acc[v] for v in ("input", "plain", "clean"))
  # PSNR and SSIM against a direct computation for the RA processor.
  ctx = evaluate.Context(config, tmp_path / "direct")
  imgs = [b for b, _ in ctx.batches(ctx.main)]
  p = ctx.processor("ra")
  mask = np.concatenate([np.asarray(b["mask"]) for b in imgs]) > 0
  apply = jax.jit(lambda v, x: p.apply(v, step_lib.to_float_images(x))[0])
  out = np.concatenate([np.asarray(apply(p.variables, b["input"])) for b in imgs])
  y = np.concatenate([np.asarray(b["target"]) for b in imgs]).astype(np.float32) / 255
  psnr = np.asarray(rajax.metrics.psnr(jnp.asarray(out[mask]), jnp.asarray(y[mask])))
  assert acc["ra"]["PSNR"] == pytest.approx(float(psnr.mean()), rel=1e-5)

  transfer = results["transfer"].rows
  assert [r["loss recognizer"] for r in transfer] == ["none (plain)", "resnet18"]
  lam = results["lambda_sweep"].rows
  assert [r["lambda"] for r in lam] == [0.0, 1e-3]

  # Boundary analysis: the black box is the source network, so every plain-output mistake is shared
  # and the two boundaries coincide along every direction (IBD 0), through two different code paths.
  bd = [r for r in results["boundary"].rows if r["target"] == "blackbox"]
  mistakes = round((1 - acc["plain"]["resnet18 top-1"]) * 10)
  assert mistakes > 0 and bd[0]["images"] == min(4, mistakes)
  assert bd[0]["found"] > 0
  for r in (r for r in bd if r["found"] > 0):
    assert r["IBD"] == pytest.approx(0.0, abs=1e-6) and r["BD resnet18"] == pytest.approx(r["BD target"])

  cat = results["category"].rows
  assert [r["trained on"] for r in cat] == ["-", "all classes", "all classes", "-"]
  assert cat[-1]["resnet18 A"] in (1.0,) or np.isnan(cat[-1]["resnet18 A"])
  ic = results["imagenet_c"].rows
  assert [r["corruption"] for r in ic] == ["brightness", "mean"] and 0 <= ic[0]["resnet18 ra"] <= 1

  # A re-run regenerates every table from the cache: nothing is recomputed, the black box is not called.
  calls = blackbox.calls
  again = evaluate.run(config, tmp_path, targets={"blackbox": blackbox})
  assert again.stats["computed"] == 0 and again.stats["cached"] > 0
  assert blackbox.calls == calls
  assert again["accuracy"].rows == results["accuracy"].rows
  # New weights in a processor file invalidate exactly its records.
  _save_run(runs / "ra", "ra", seed=7)
  third = evaluate.run(config, tmp_path, targets={"blackbox": blackbox}, only=["accuracy"])
  assert third.stats["computed"] == 3   # ra: quality, resnet18, blackbox
  assert blackbox.calls > calls


def test_denoising_inputs_drawn_on_device_per_example_index(runs, tmp_path):
  """config.data.noise="device" (the default): the evaluation makes each input on device from the clean
  image and the example index, the same in any batch; host and device noise are cached apart."""
  from rajax import degrade
  c = _eval_config(runs)
  c.data.noise = "device"
  c.targets = ml_collections.ConfigDict(dict(resnet18=evaluate.zoo("resnet18", "random", num_classes=K, width=4)))
  c.evals = ml_collections.ConfigDict(dict(accuracy=dict(type="accuracy", processors=("ra",))))
  res = evaluate.run(c, tmp_path)
  ctx = evaluate.Context(c, tmp_path / "direct")
  by_row, clean = {}, {}
  for batch, rows in ctx.batches(ctx.main):
    x, y = np.asarray(batch["input"]), np.asarray(batch["target"])
    assert x.dtype == np.float32 and y.dtype == np.uint8
    want = np.asarray(degrade.gaussian_noise_device(y, np.maximum(rows, 0), sigma=c.degrade.sigma, seed=c.seed))
    np.testing.assert_allclose(x, want, rtol=0, atol=1e-6)
    by_row.update({int(r): x[k] for k, r in enumerate(rows) if r >= 0})
    clean.update({int(r): y[k] for k, r in enumerate(rows) if r >= 0})
  assert sorted(by_row) == list(range(10))
  c.batch_size = 16  # one batch holding all ten images, at other positions of another sharding: the same bits
  for batch, rows in evaluate.Context(c, tmp_path / "direct16").batches(ctx.main):
    for k, r in enumerate(rows):
      if r >= 0:
        np.testing.assert_array_equal(np.asarray(batch["input"])[k], by_row[int(r)])
  # The table's input row is measured on exactly these inputs.
  psnr = rajax.metrics.psnr(jnp.asarray(np.stack([by_row[i] for i in range(10)])),
                            jnp.asarray(np.stack([clean[i] for i in range(10)]).astype(np.float32) / 255))
  acc = {r["view"]: r for r in res["accuracy"].rows}
  assert acc["input"]["PSNR"] == pytest.approx(float(np.mean(psnr)), rel=1e-5)
  c.batch_size = 8
  c.data.noise = "host"
  host = evaluate.run(c, tmp_path)
  # The clean images' records are shared; the noisy input and the processor's outputs are recomputed.
  assert host.stats["cached"] > 0 and host.stats["computed"] >= 4
  assert {r["view"]: r for r in host["accuracy"].rows}["input"]["PSNR"] != acc["input"]["PSNR"]


def _onnx_linear(path: pathlib.Path, w: np.ndarray, b: np.ndarray, hw: int) -> None:
  from onnx import TensorProto, helper, save_model
  graph = helper.make_graph(
      [helper.make_node("Flatten", ["images"], ["flat"], axis=1),
       helper.make_node("MatMul", ["flat", "w"], ["mm"]),
       helper.make_node("Add", ["mm", "b"], ["logits"])],
      "linear", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [None, 3, hw, hw])],
      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, w.shape[1]])],
      initializer=[helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel().tolist()),
                   helper.make_tensor("b", TensorProto.FLOAT, b.shape, b.ravel().tolist())])
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
  model.ir_version = 8
  save_model(model, str(path))


def test_onnx_target_matches_a_numpy_reference_and_cli_errors(runs, tmp_path):
  hw = 32
  rng = np.random.default_rng(3)
  w = rng.standard_normal((3 * hw * hw, K)).astype(np.float32) * 0.05
  b = rng.standard_normal(K).astype(np.float32)
  _onnx_linear(tmp_path / "linear.onnx", w, b, hw)
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)

  def reference(images):   # the same classifier in numpy: normalise, NCHW, flatten, affine
    x = (images - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x.transpose(0, 3, 1, 2).reshape(len(x), -1) @ w + b

  c = _eval_config(runs)
  c.targets = ml_collections.ConfigDict()
  c.targets.cloud = ml_collections.ConfigDict(dict(kind="onnx", path=str(tmp_path / "linear.onnx"), layout="NCHW",
                                                   mean=mean, std=std))
  c.evals = ml_collections.ConfigDict(dict(accuracy=dict(type="accuracy", processors=("plain",))))
  c.labels = "recognizer"
  res = evaluate.run(c, tmp_path / "out", targets={"numpy": reference})
  rows = res["accuracy"].rows
  assert any(r["cloud top-1"] < 1 for r in rows)
  for r in rows:
    assert r["cloud top-1"] == r["numpy top-1"] and r["cloud top-5"] == r["numpy top-5"]
  ctx = evaluate.Context(c, tmp_path / "out", extra_targets={"numpy": reference})
  recs = ctx.records(["plain"], ["cloud", "numpy"])
  np.testing.assert_array_equal(recs[("plain", "cloud")]["topk"], recs[("plain", "numpy")]["topk"])
  np.testing.assert_array_equal(recs[("plain", "cloud")]["sub_B"], recs[("plain", "numpy")]["sub_B"])

  # Bad inputs name the problem and the fix.
  c.targets.cloud.path = str(tmp_path / "missing.onnx")
  with pytest.raises(evaluate.TargetError, match="no model file"):
    evaluate.run(c, tmp_path / "bad")
  c.processors.plain = str(tmp_path / "nowhere")
  with pytest.raises(evaluate.EvalError, match="not a finished rajax.train workdir"):
    evaluate.validate(c)
  from rajax.evaluate.__main__ import main
  with pytest.raises(SystemExit) as e:
    main(["--config", str(ROOT / "configs/eval/smoke.py"), "--workdir", str(tmp_path / "cli"),
          "--config.processors.plain=" + str(tmp_path / "nowhere")])
  assert e.value.code == 2
