"""The evaluation suite: exact checks of its measures, then every evaluator end to end on tiny models."""

import hashlib
import json
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn
from flax import serialization

import rajax
from rajax import config as config_lib
from rajax import evaluate, losses, networks, train
from rajax.methods import ra as ra_methods
from rajax.tasks import classification
from rajax import weights as weights_lib
from rajax.evaluate import boundary as boundary_lib
from rajax.evaluate import tables, targets as targets_lib
from rajax.evaluate import context as context_lib
from rajax.data import photos

import numpy_metrics

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
  # The returned point is past the boundary: the class there differs. (Checked one bracket width further
  # on: the bracket is 6e-7 wide, so float32 rounding of x + t d outside the jitted search can land on
  # either side of the boundary itself.)
  step = np.where(ok, bd + tol, 0).reshape(-1, 1, 1, 1)
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


def _halves_by_hand(num_classes: int, seed: int):
  """The documented split: classes in the order of SHA-256("seed:class"); A is the first half, both sorted."""
  order = sorted(range(num_classes), key=lambda c: hashlib.sha256(f"{seed}:{c}".encode()).hexdigest())
  return tuple(sorted(order[:num_classes // 2])), tuple(sorted(order[num_classes // 2:]))


def test_class_halves_follow_the_sha256_order_of_seed_and_class():
  """class_halves(n, seed): A = the n // 2 classes first in the order of SHA-256("seed:class"), B the rest."""
  # By hand: SHA-256 of "0:0", "0:1", "0:2", "0:3" begins ac72.., ef13.., 9328.., 76d3..: the order is
  # 3, 2, 0, 1. For seed 1 and five classes, "1:0".."1:4" begin a668.., d6b5.., 673a.., 85f2.., 492a..:
  # the order is 4, 2, 3, 0, 1 and A takes the first two.
  assert hashlib.sha256(b"0:3").hexdigest().startswith("76d3")
  assert evaluate.class_halves(4, seed=0) == ((2, 3), (0, 1))
  assert evaluate.class_halves(5, seed=1) == ((2, 4), (0, 1, 3))
  assert evaluate.class_halves(10, seed=0) == ((3, 4, 7, 8, 9), (0, 1, 2, 5, 6))
  for n, seed in ((2, 0), (7, 3), (10, 1), (1000, 0), (1000, 1)):
    assert evaluate.class_halves(n, seed=seed) == _halves_by_hand(n, seed), (n, seed)
  a, b = evaluate.class_halves(1000, seed=0)
  assert len(a) == len(b) == 500 and not set(a) & set(b) and set(a) | set(b) == set(range(1000))
  assert evaluate.class_halves(1000, seed=1) != (a, b)
  with pytest.raises(ValueError, match="at least 2"):
    evaluate.class_halves(1)


def test_class_halves_check_tells_other_rules_apart():
  """The comparison above fails for a split by another rule: "class:seed" hashed, MD5, halves swapped,
  the first half of range(n), or the seed ignored."""
  def by(key, first=True):
    order = sorted(range(10), key=key)
    a, b = tuple(sorted(order[:5])), tuple(sorted(order[5:]))
    return (a, b) if first else (b, a)
  sha = lambda s: hashlib.sha256(s.encode()).hexdigest()
  broken = [by(lambda c: sha(f"{c}:0")), by(lambda c: hashlib.md5(f"0:{c}".encode()).hexdigest()),
            by(lambda c: sha(f"0:{c}"), first=False), by(lambda c: c), by(lambda c: sha(str(c)))]
  for split in broken:
    assert split != evaluate.class_halves(10, seed=0), split


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
  a, _ = classification.class_halves(K, seed=0)
  settings = ra_methods.Settings(mode="ra", lam=1.0, classes=a)
  nets = {"processor": rajax.processor("srresnet", scale=1, blocks=1, channels=4)}
  module = _Linear(K)
  rec = rajax.Recognizer("linear", module, module.init(jax.random.key(2), jnp.zeros((1, 16, 16, 3))))
  x = jax.random.uniform(jax.random.key(0), (4, 16, 16, 3))
  labels = jnp.asarray([a[0], a[1], a[2], [c for c in range(K) if c not in a][0]], jnp.int32)
  batch = {"input": x, "target": x, "label": labels}
  variables = nets["processor"].init(jax.random.key(1), x[:1], train=False)
  params, stats = {"processor": variables["params"]}, {"processor": variables["batch_stats"]}
  loss_fn = ra_methods.make_loss_fn(settings, nets)
  _, aux = jax.jit(loss_fn)(params, stats, batch, rec)
  terms, logits, out = aux.terms, aux.outputs, aux.image   # the recognizer's logits on P's output, and that output
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
  assert ra_methods.Settings.of(c).classes == a
  c.classes.half = "C"
  with pytest.raises(config_lib.ConfigError, match="classes.half"):
    config_lib.validate(c)


# ==================================================================== end to end on tiny models

TAIL_SCALE = 0.02   # the random processors' tail weights: outputs within a few dB of their inputs


def _save_run(workdir: pathlib.Path, mode: str, seed: int, **fields) -> pathlib.Path:
  """A finished trainer workdir (config.json + processor.msgpack) with random processor weights.

  P learns a correction of its input (processor.input_skip); its tail, zero at initialisation, gets
  small random weights here, so each run's output is its own perturbation of the input.
  """
  c = _tiny_run_config(mode)
  for k, v in fields.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  net = networks.module(c, "processor")
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(c.to_json_best_effort(indent=2))
  variables = jax.jit(lambda k: net.init(k, jnp.zeros((1, 8, 8, 3)), train=False))(jax.random.key(seed))
  variables = jax.device_get(variables)
  tail = variables["params"]["tail"]
  tail["kernel"] = TAIL_SCALE * np.random.default_rng(seed).standard_normal(tail["kernel"].shape, np.float32)
  weights_lib.save(workdir / "processor.msgpack", variables)
  return workdir


def _tiny_run_config(mode: str) -> ml_collections.ConfigDict:
  """The smoke config for denoising with a 1-block, 8-channel P (correcting its input) and a width-4 ResNet-18 R."""
  c = config_lib.load(f"{ROOT / 'configs/smoke.py'}:task=denoise,mode={mode}")
  c.processor.blocks, c.processor.channels, c.processor.input_skip = 1, 8, True
  c.recognizer.width = 4
  return c


def _train_on_half(workdir: pathlib.Path, half: str) -> pathlib.Path:
  """Two steps of the real trainer (rajax.train.run) with RA on half `half` of the classes."""
  c = _tiny_run_config("ra")
  c.classes.half = half
  c.total_steps, c.log_every, c.ckpt_every, c.final_eval = 2, 1, 2, False
  train.run(c, workdir)
  return workdir


def test_a_run_with_extra_network_options_loads_as_trained(tmp_path):
  """Architecture options beyond the defaults (the demo's processor.outer_kernel, input_skip) reach the model."""
  work = _save_run(tmp_path / "k5", "plain", seed=0, **{"processor.outer_kernel": 5, "processor.input_skip": True})
  p = context_lib.load_processor("k5", work)
  net = p.run.modules["processor"]
  assert (net.outer_kernel, net.input_skip) == (5, True)
  assert p.run.variables["processor"]["params"]["head"]["kernel"].shape == (5, 5, 3, 8)


def test_a_run_is_loaded_once_while_its_files_are_unchanged(tmp_path):
  """runs.load gives the same Run for an unchanged directory, also through a link to it, and reads a
  rewritten processor anew."""
  from rajax import runs as runs_lib
  work = _save_run(tmp_path / "a", "plain", seed=0)
  (tmp_path / "link").symlink_to(work)
  first = runs_lib.load(work)
  assert runs_lib.load(work) is first and runs_lib.load(tmp_path / "link") is first
  tail = lambda r: np.asarray(r.variables["processor"]["params"]["tail"]["kernel"])
  before = tail(first)
  _save_run(work, "plain", seed=1)   # the same files, new weights
  os.utime(work / "processor.msgpack", ns=(1, 1))
  again = runs_lib.load(work)
  assert again is not first and not np.array_equal(tail(again), before)


def test_a_run_trained_against_a_recognizer_file_is_measured_by_that_recognizer(tmp_path):
  """SR4IR's T->S: P trained against a fixed R read from a weights file. Its "own R" is that file's
  recognizer (same variables), not the table's source; a run with the zoo's weights has none of its own."""
  rec = networks.module(_tiny_run_config("ra"), "recognizer")
  moved = jax.tree.map(lambda v: np.asarray(v) * 1.5, jax.device_get(dict(rec.variables)))
  weights_lib.save(tmp_path / "t_hr.msgpack", moved)
  fixed = _save_run(tmp_path / "t_then_s", "ra", seed=0, **{"recognizer.weights": str(tmp_path / "t_hr.msgpack")})
  random = _save_run(tmp_path / "ra", "ra", seed=0)
  c = _eval_config(tmp_path)
  c.processors = ml_collections.ConfigDict({"t_then_s": str(fixed), "ra": str(random)})
  ctx = evaluate.Context(c, tmp_path / "eval")
  name = ctx.fixed_recognizer("t_then_s")
  assert name == "t_then_s:R" and ctx.fixed_recognizer("ra") is None
  got = ctx.target(name).recognizer.variables
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(moved)):
    np.testing.assert_array_equal(np.asarray(a), b)


class Counting:
  """A black-box target: the zoo recognizer `rec` behind a host callable, counting its calls."""

  def __init__(self, rec):
    self.rec, self.calls = rec, 0
    self._fn = jax.jit(lambda r, x: r(x))
    self.cache_key = "counting-resnet18-w4"

  def __call__(self, images):
    self.calls += 1
    return np.asarray(self._fn(self.rec, jnp.asarray(images)))


HALF = "ra_half_a"   # the processor trained on half A of the classes
LINEAR_CLASSES = 40


def _eval_config(runs: pathlib.Path, half: pathlib.Path | None = None) -> ml_collections.ConfigDict:
  c = evaluate.base_config(task="denoise")
  c.data.source = "photos"
  c.data.photos.short_side = 40
  c.data.photos.grid = 1                # 5 test photos x 1 crop x 2 (mirror) = 10 images
  c.data.split = "test"
  c.data.photos.names = photos.BUNDLED_TEST
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
  category = ("plain", "ra") + ((HALF,) if half else ())
  if half:
    c.processors[HALF] = str(half)
  c.evals.category = E(dict(type="category", processors=category, targets=("resnet18", "linear")))
  c.evals.lambda_sweep = E(dict(type="lambda_sweep", processors=("plain", "ra"), targets=("resnet18", "linear")))
  c.evals.boundary = E(dict(type="boundary", plain="plain", ra="ra", source="resnet18", random_directions=1,
                            max_distance=60.0, grid=4, bisect=4, max_images=4, map=E(dict(size=5))))
  c.evals.imagenet_c = E(dict(type="imagenet_c", processors=("ra",), targets=("resnet18", "linear"),
                              corruptions=("brightness",), severities=(2,)))
  return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  _save_run(root / "plain", "plain", seed=0)
  _save_run(root / "ra", "ra", seed=1)
  return root


@pytest.fixture(scope="module")
def half_run(tmp_path_factory):
  return _train_on_half(tmp_path_factory.mktemp("half") / "ra_half_a", "A")


@pytest.fixture(scope="module")
def source_rec():
  return rajax.recognizer("resnet18", "random", num_classes=K, width=4)


@pytest.fixture(scope="module")
def linear_rec():
  """A linear classifier as a zoo-style target: its top-1 varies from image to image, unlike the random
  ResNet's, and with 40 classes its top-5 is not all of them, so the tables' cells differ between rows,
  halves and measures."""
  module = _Linear(LINEAR_CLASSES)
  return rajax.Recognizer("linear", module, module.init(jax.random.key(5), jnp.zeros((1, 32, 32, 3))))


# -------------------------------------------------------------------- the direct computation

IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
CHUNK = 10   # images per call of the directly applied networks (one compiled program each)


def _chunked(fn, images: np.ndarray) -> np.ndarray:
  """fn over [N, ...] in zero-padded chunks of CHUNK."""
  out = []
  for s in range(0, len(images), CHUNK):
    part = images[s:s + CHUNK]
    pad = CHUNK - len(part)
    out.append(np.asarray(fn(np.concatenate([part, np.zeros((pad,) + part.shape[1:], part.dtype)])))[:len(part)])
  return np.concatenate(out)


class Direct:
  """The evaluation recomputed outside rajax.evaluate: the held-out photos read with PhotoSource, the
  noise drawn by its documented rule, the saved processors and the recognizers applied with module.apply
  (the linear one in float64 NumPy), and every measure from its definition (numpy_metrics)."""

  def __init__(self, config, runs: dict[str, pathlib.Path], source_rec, linear_rec):
    self.config = config
    src = photos.PhotoSource("test", short_side=config.data.photos.short_side, crop=config.data.crop,
                             grid=config.data.photos.grid, names=photos.BUNDLED_TEST)
    self.clean_u8 = np.stack([src[i]["image"] for i in range(len(src))])
    assert self.clean_u8.shape == (10, 32, 32, 3)
    self.clean = self.clean_u8.astype(np.float32) / np.float32(255)
    # rajax.degrade.gaussian_noise with the pipeline's per-example generator default_rng([seed, index]).
    noise = np.stack([np.random.default_rng([config.seed, i]).standard_normal((32, 32, 3), dtype=np.float32)
                      for i in range(len(src))])
    self.noisy = np.clip(self.clean + np.float32(config.degrade.sigma) * noise, 0.0, 1.0)
    net = rajax.processor("srresnet", scale=1, blocks=1, channels=8, input_skip=True)
    p_apply = jax.jit(lambda v, x: net.apply(v, x, train=False))
    self.variables = {name: serialization.msgpack_restore((path / "processor.msgpack").read_bytes())
                      for name, path in runs.items()}
    self.process = lambda name, x: np.clip(_chunked(lambda c: p_apply(self.variables[name], c), x), 0.0, 1.0)
    r_apply = jax.jit(lambda v, x: source_rec.module.apply(v, x, train=False))
    normalise = lambda x: (np.asarray(x, np.float64) - IMAGENET_MEAN) / IMAGENET_STD
    kernel = np.asarray(linear_rec.variables["params"]["Dense_0"]["kernel"], np.float64)
    bias = np.asarray(linear_rec.variables["params"]["Dense_0"]["bias"], np.float64)
    self.logits_fn = {
        "resnet18": lambda x: _chunked(lambda c: r_apply(source_rec.variables, c),
                                       normalise(x).astype(np.float32)).astype(np.float64),
        "linear": lambda x: normalise(x).reshape(len(x), -1) @ kernel + bias,
    }
    self.logits_fn["blackbox"] = self.logits_fn["resnet18"]   # the same network, run on the host
    self.views = {"input": self.noisy, **{n: self.process(n, self.noisy) for n in runs}, "clean": self.clean}
    self.logits = {(v, t): fn(x) for v, x in self.views.items() for t, fn in self.logits_fn.items()}
    for (v, t), z in self.logits.items():   # no near-ties: a top-1 is the same in float32 and float64
      top2 = np.sort(z, axis=-1)[:, -2:]
      assert np.all(top2[:, 1] - top2[:, 0] > 1e-4), (v, t)
    self.labels = {t: self.logits[("clean", t)].argmax(-1) for t in self.logits_fn}

  def quality(self, view: str) -> dict:
    x = self.views[view]
    return {"PSNR": float(np.mean(numpy_metrics.psnr(x, self.clean))),
            "SSIM": float(np.mean(numpy_metrics.ssim(x, self.clean)))}

  def correct(self, view: str, target: str, k: int = 1) -> np.ndarray:
    topk = np.argsort(-self.logits[(view, target)], axis=-1, kind="stable")[:, :k]
    return np.any(topk == self.labels[target][:, None], axis=-1)

  def top(self, view: str, target: str, k: int = 1) -> float:
    return float(np.mean(self.correct(view, target, k)))

  def subset(self, view: str, target: str, classes) -> float:
    """Accuracy over the examples labelled in `classes`, of the argmax over `classes`' logits."""
    classes = np.asarray(classes)
    labels = self.labels[target]
    keep = np.isin(labels, classes)
    pred = classes[self.logits[(view, target)][:, classes].argmax(-1)]
    return float(np.mean(pred[keep] == labels[keep])) if keep.any() else float("nan")


TOLERANCE = {"PSNR": dict(rel=1e-5, abs=0), "SSIM": dict(rel=0, abs=2e-5), "BD": dict(rel=1e-6, abs=0),
             "IBD": dict(rel=1e-6, abs=1e-6)}


def _assert_cells(row: dict, expected: dict, what: str) -> None:
  """Each expected cell equals the table's: PSNR to 1e-5 relative, SSIM to 2e-5, distances (means of float32
  values) to 1e-6, a fraction of images or a count exactly, text exactly; NaN (no image in a half) only where
  NaN is expected."""
  for col, want in expected.items():
    assert col in row, f"{what}: no column {col!r} in {sorted(row)}"
    got = row[col]
    if isinstance(want, str) or want is None:
      assert got == want, f"{what} {col}: {got!r} != {want!r}"
    elif np.isnan(want) or np.isinf(want):
      assert got == want or (np.isnan(want) and np.isnan(got)), f"{what} {col}: {got!r} != {want!r}"
    else:
      tol = TOLERANCE.get(col.split(" ")[0], dict(rel=0, abs=1e-12))
      assert got == pytest.approx(want, **tol), f"{what} {col}: {got!r} != {want!r}"


def test_table_cells_are_compared_one_by_one():
  """_assert_cells fails on a top-1 off by one image of ten, an SSIM off by 1e-4, a PSNR off by 1e-3 dB,
  NaN for a number, a missing column and other text."""
  row = {"PSNR": 20.0, "SSIM": 0.5, "r top-1": 0.3, "r A": float("nan"), "t": "+1/-0, p = 1"}
  _assert_cells(row, dict(row, PSNR=20.0 * (1 + 5e-6), SSIM=0.5 + 1e-5), "same")
  for broken in ({"r top-1": 0.4}, {"SSIM": 0.5001}, {"PSNR": 20.001}, {"r A": 0.0}, {"r top-5": 0.3},
                 {"t": "+0/-1, p = 1"}):
    with pytest.raises(AssertionError):
      _assert_cells(row, broken, "broken")
  with pytest.raises(AssertionError):
    _assert_cells(dict(row, **{"r A": 1.0}), {"r A": float("nan")}, "broken")


def _bd_by_definition(logits_fn, x: np.ndarray, d: np.ndarray, *, max_distance: float, grid: int,
                      bisect: int) -> np.ndarray:
  """BD from the module docstring of rajax.evaluate.boundary: the first of the grid points
  k * max_distance / grid where the top-1 class differs, then `bisect` halvings of the interval
  before it; the upper end (or inf)."""
  top1 = lambda z: logits_fn(z).argmax(-1)
  y0 = top1(x)
  out = np.full(len(x), np.inf)
  for i in range(len(x)):
    flips = lambda t: top1((x[i] + np.float32(t) * d[i])[None])[0] != y0[i]
    ts = [np.float32(k * max_distance / grid) for k in range(1, grid + 1)]
    k = next((k for k, t in enumerate(ts) if flips(t)), None)
    if k is None:
      continue
    lo, hi = (ts[k - 1] if k else np.float32(0)), ts[k]
    for _ in range(bisect):
      mid = np.float32(0.5) * (lo + hi)
      lo, hi = (lo, mid) if flips(mid) else (mid, hi)
    out[i] = hi
  return out


def _unit(v: np.ndarray) -> np.ndarray:
  flat = v.reshape(len(v), -1).astype(np.float64)
  return (flat / np.linalg.norm(flat, axis=1, keepdims=True)).reshape(v.shape).astype(np.float32)


def test_every_evaluator_writes_tables_whose_cells_match_a_direct_computation(runs, half_run, source_rec,
                                                                               linear_rec, tmp_path):
  """Every cell of every table (and the decision map) recomputed from the saved processor files and the
  recognizers (class Direct); then a rerun reads everything from the cache, and new weights invalidate
  exactly their records."""
  config = _eval_config(runs, half_run)
  blackbox = Counting(source_rec)
  extra = {"blackbox": blackbox, "linear": linear_rec}
  results = evaluate.run(config, tmp_path, targets=extra)
  for name in config.evals:
    for suffix in (".md", ".csv", ".json"):
      assert (tmp_path / f"{name}{suffix}").is_file(), name + suffix
  assert (tmp_path / "lambda_sweep.png").stat().st_size > 0 and (tmp_path / "boundary_map.png").stat().st_size > 0
  assert (tmp_path / "report.md").read_text().count("## ") == len(config.evals)
  saved = json.loads((tmp_path / "accuracy.json").read_text())
  direct = Direct(config, {"plain": runs / "plain", "ra": runs / "ra", HALF: half_run}, source_rec, linear_rec)
  targets = ["resnet18", "blackbox", "linear"]

  # ---- accuracy (Table 1): PSNR, SSIM, top-1, top-5 per target, and RA against plain example by example
  acc = {r["view"]: r for r in results["accuracy"].rows}
  assert list(acc) == ["input", "plain", "ra", "clean"]
  for v in acc:
    want = direct.quality(v) if v != "clean" else {"PSNR": float("inf"), "SSIM": 1.0}
    for t in targets:
      want |= {f"{t} top-1": direct.top(v, t), f"{t} top-5": direct.top(v, t, 5)}
    _assert_cells(acc[v], want, f"accuracy/{v}")
  for t in targets:
    gained = int(np.sum(direct.correct("ra", t) & ~direct.correct("plain", t)))
    lost = int(np.sum(direct.correct("plain", t) & ~direct.correct("ra", t)))
    p = numpy_metrics.mcnemar_p(gained, lost)
    test = results["accuracy"].extra["paired_vs_plain"]["ra"][t]
    assert (test["gained"], test["lost"]) == (gained, lost) and test["p"] == pytest.approx(p, rel=1e-9), (t, test)
    assert acc["ra"][f"{t} vs plain"] == f"+{gained}/-{lost}, p = {p:.2g}"
  assert all(f"{t} vs plain" not in acc[v] for v in ("input", "plain", "clean") for t in targets)
  assert [r["PSNR"] for r in saved["rows"]][:3] == [acc[v]["PSNR"] for v in ("input", "plain", "ra")]
  # The checks can tell: the linear target's top-1 differs between the rows and from its top-5; the RA
  # processor gains a different number of examples than it loses (gained and lost swapped would show);
  # the table's SSIM is the zero-padded one (the paper's), not the valid-window one (scikit-image's) nor
  # one with another window.
  assert direct.top("plain", "linear") != direct.top("ra", "linear") != direct.top("input", "linear")
  assert direct.top("plain", "linear") != direct.top("plain", "linear", 5) < 1
  assert test["gained"] != test["lost"]
  for v in ("input", "ra"):
    for other in (dict(padding="valid"), dict(sigma=3.0), dict(size=7)):
      off = float(np.mean(numpy_metrics.ssim(direct.views[v], direct.clean, **other)))
      assert abs(off - acc[v]["SSIM"]) > 1e-3, (v, other)

  # ---- transfer (Table 2) and lambda (Table 5): every cell
  transfer = results["transfer"].rows
  assert [r["processor"] for r in transfer] == ["plain", "ra"]
  for r, loss_rec in zip(transfer, ("none (plain)", "resnet18")):
    _assert_cells(r, {"loss recognizer": loss_rec} | {t: direct.top(r["processor"], t) for t in targets},
                  f"transfer/{r['processor']}")
  lam = results["lambda_sweep"].rows
  assert [(r["lambda"], r["processor"]) for r in lam] == [(0.0, "plain"), (1e-3, "ra")]   # RA: the paper's 1e-3
  for r in lam:
    _assert_cells(r, direct.quality(r["processor"]) | {f"{t} top-1": direct.top(r["processor"], t)
                                                        for t in ("resnet18", "linear")}, f"lambda/{r['processor']}")
  assert direct.top("plain", "linear") != direct.top("ra", "linear")

  # ---- category (Table 3): subset accuracy on each half, for a processor trained on half A too
  halves = {"resnet18": _halves_by_hand(K, config.classes.seed),
            "linear": _halves_by_hand(LINEAR_CLASSES, config.classes.seed)}
  assert results["category"].extra["halves"] == {t: dict(zip("AB", h)) for t, h in halves.items()}
  cat = results["category"].rows
  views = ["input", "plain", "ra", HALF, "clean"]
  assert [r["trained on"] for r in cat] == ["-", "all classes", "all classes", "half A", "-"]
  for r, v in zip(cat, views):
    _assert_cells(r, {f"{t} {h}": direct.subset(v, t, half) for t in halves for h, half in zip("AB", halves[t])},
                  f"category/{v}")
  a, b = halves["linear"]
  # The half-A processor's in-half column (A) and out-of-half column (B) are each a direct figure; the
  # linear target labels images in both halves, and the columns differ from each other and from the
  # argmax over all classes.
  labels = direct.labels["linear"]
  assert np.isin(labels, a).any() and np.isin(labels, b).any()
  in_half, out_half = direct.subset(HALF, "linear", a), direct.subset(HALF, "linear", b)
  assert in_half != out_half and cat[3]["linear A"] == in_half and cat[3]["linear B"] == out_half
  keep = np.isin(labels, a)
  assert float(np.mean(direct.correct(HALF, "linear")[keep])) != in_half, "restricting the argmax matters"
  assert np.abs(direct.views[HALF] - direct.noisy).max() > 1e-2, "trained: P no longer reproduces its input"

  # ---- ImageNet-C: the corrupted input from imagecorruptions itself, then the RA processor on it
  from imagecorruptions import corrupt
  bright = np.stack([corrupt(img, severity=2, corruption_name="brightness") for img in direct.clean_u8])
  x = bright.astype(np.float32) / np.float32(255)
  ra_out = direct.process("ra", x)
  ic = results["imagenet_c"].rows
  assert [(r["corruption"], r["severity"]) for r in ic] == [("brightness", 2), ("mean", None)]
  for t in ("resnet18", "linear"):
    want = {f"{t} input": float(np.mean(direct.logits_fn[t](x).argmax(-1) == direct.labels[t])),
            f"{t} ra": float(np.mean(direct.logits_fn[t](ra_out).argmax(-1) == direct.labels[t]))}
    _assert_cells(ic[0], want, f"imagenet_c/{t}")
    _assert_cells(ic[1], want, f"imagenet_c/mean/{t}")          # one corruption at one severity: its mean
  assert ic[0]["linear input"] != direct.top("input", "linear"), "the corruption, not the noise, is measured"

  # ---- boundary (Table 6): the selected images, then BD and IBD by the definition along the same directions
  bcfg = config.evals.boundary
  search = dict(max_distance=bcfg.max_distance, grid=bcfg.grid, bisect=bcfg.bisect)
  pred = {t: direct.logits[("plain", t)].argmax(-1) for t in targets}
  wrong = pred["resnet18"] != direct.labels["resnet18"]
  rows = {(r["target"], r["direction"]): r for r in results["boundary"].rows}
  pool = set()
  for t in ("blackbox", "linear"):
    same_mistake = wrong & (pred[t] == pred["resnet18"]) & (pred[t] != direct.labels[t])
    idx = [int(i) for i in np.nonzero(same_mistake)[0][:bcfg.max_images]]
    pool |= set(idx)
    if not idx:
      _assert_cells(rows[(t, "-")], {"images": 0}, f"boundary/{t}")
      continue
    xp, xr = direct.views["plain"][idx], direct.views["ra"][idx]
    per_image = results["boundary"].extra["per_image"][t]
    assert per_image["indices"] == idx
    for dname, d in (("RA", _unit(xr - xp)),
                     ("random (x1)", _unit(np.stack([np.random.default_rng([config.seed, i, 0]).standard_normal(
                         (32, 32, 3), dtype=np.float32) for i in idx])))):
      bd_s = _bd_by_definition(direct.logits_fn["resnet18"], xp, d, **search)
      bd_t = _bd_by_definition(direct.logits_fn[t], xp, d, **search)
      ok = np.isfinite(bd_s) & np.isfinite(bd_t)
      want = {"images": len(idx), "found": float(ok.mean())}
      if ok.any():
        want |= {"BD resnet18": float(np.mean(bd_s[ok])), "BD target": float(np.mean(bd_t[ok])),
                 "IBD": float(np.mean(np.abs(bd_s[ok] - bd_t[ok])))}
      else:
        want |= {"BD resnet18": float("nan"), "BD target": float("nan"), "IBD": float("nan")}
      _assert_cells(rows[(t, dname)], want, f"boundary/{t}/{dname}")
      stored = per_image[dname.split(" ")[0]]
      np.testing.assert_array_equal(stored["bd_source"], bd_s.astype(np.float32))
      np.testing.assert_array_equal(stored["bd_target"], bd_t.astype(np.float32))
  # The black box is the source network: its boundaries coincide with the source's (IBD 0), found for some.
  mistakes = int(np.sum(wrong))
  assert mistakes > 0 and rows[("blackbox", "RA")]["images"] == min(4, mistakes)
  assert rows[("blackbox", "RA")]["found"] > 0 and rows[("blackbox", "RA")]["IBD"] == 0.0
  # The decision map: each recognizer's class over the plane through the first selected image.
  index = sorted(pool)[0]
  xp, xr = direct.views["plain"][index], direct.views["ra"][index]
  with np.load(tmp_path / "boundary_map.npz") as z:
    maps = {k: z[k] for k in z.files}
  ra_dist = float(np.linalg.norm((xr - xp).astype(np.float64)))
  assert float(maps["ra_distance"]) == pytest.approx(ra_dist, rel=1e-5)
  assert float(maps["radius"]) == pytest.approx(2 * ra_dist, rel=1e-5)
  u = _unit((xr - xp)[None])[0]
  v = np.random.default_rng([config.seed, index, 10_000]).standard_normal(u.shape).astype(np.float32)
  v = _unit((v - np.sum(v * u) * u)[None])[0]
  coords = np.linspace(-float(maps["radius"]), float(maps["radius"]), 5, dtype=np.float32)
  grid_a, grid_b = np.meshgrid(coords, coords)
  points = xp[None] + grid_a.reshape(-1, 1, 1, 1) * u[None] + grid_b.reshape(-1, 1, 1, 1) * v[None]
  for t in targets:
    np.testing.assert_array_equal(maps[f"map_{t}"], direct.logits_fn[t](points).argmax(-1).reshape(5, 5), t)
  assert len(np.unique(maps["map_linear"])) > 1

  # ---- a rerun regenerates every table from the cache: nothing is recomputed, the black box is not called
  calls = blackbox.calls
  again = evaluate.run(config, tmp_path, targets=extra)
  assert again.stats == {"computed": 0, "cached": results.stats["computed"] + results.stats["cached"]}
  assert blackbox.calls == calls
  assert again["accuracy"].rows == results["accuracy"].rows
  # New weights in a processor file invalidate exactly its records: its quality and one per target.
  shutil.copytree(runs / "ra", tmp_path / "ra_new")
  _save_run(tmp_path / "ra_new", "ra", seed=7)
  config.processors.ra = str(tmp_path / "ra_new")
  third = evaluate.run(config, tmp_path, targets=extra, only=["accuracy"])
  assert third.stats["computed"] == 1 + len(targets)
  assert blackbox.calls > calls
  assert {r["view"]: r for r in third["accuracy"].rows}["ra"]["PSNR"] != acc["ra"]["PSNR"]


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
