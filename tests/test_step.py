"""The paper's four methods' steps (rajax.methods.ra): frozen R, stop_gradient, BN statistics, optimizers."""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util
from PIL import Image

import rajax
from rajax import optim
from rajax import losses
from rajax import methods
from rajax.methods import ra

P_CHANNELS = 12   # distinct from every kernel shape of the width-8 recognizer below
R_WIDTH = 8


@pytest.fixture(scope="module")
def nets():
  return {
      "processor": rajax.processor("srresnet", scale=4, blocks=1, channels=P_CHANNELS),
      "transformer": rajax.processor("resnet_generator", blocks=1, channels=8),
  }


@pytest.fixture(scope="module")
def rec():
  return rajax.recognizer("resnet18", "random", num_classes=10, width=R_WIDTH, seed=1)


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  return {
      "input": rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8),
      "target": rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
      "label": rng.integers(0, 10, (4,)).astype(np.int32),
  }


def _init_state(settings, nets, txs, *, rng, input_shape):
  return ra.make_method(settings, nets, txs, input_shape).init(rng)


def _frozen(rec):
  return {} if rec is None else {"recognizer": rec}


def _train_step(settings, nets, txs, *, device_stage=None):
  """step(state, batch, R): the method's train step with R as its frozen recognizer."""
  method = ra.make_method(settings, nets, txs, (8, 8, 3), device_stage=device_stage)
  return lambda state, batch, rec: method.train_step(state, batch, _frozen(rec))


def _eval_step(settings, nets, *, device_stage=None):
  """eval_step(state, batch, R): the trainer's evaluation of the method, measured with R."""
  method = ra.make_method(settings, nets, {}, (8, 8, 3), device_stage=device_stage)
  ev = methods.make_eval_step(method, nets, labels=settings.labels, device_stage=device_stage)
  return lambda state, batch, rec: ev(state, batch, _frozen(rec))


def _setup(mode, nets, lam=None):
  method = ra.Settings(mode=mode, lam=ra.DEFAULT_LAMBDA[mode] if lam is None else lam)
  txs = {n: optax.adam(1e-3) for n in method.trains}
  init = jax.jit(lambda key: _init_state(method, nets, txs, rng=key, input_shape=(8, 8, 3)))
  return method, txs, init(jax.random.PRNGKey(0))


def _tree_equal(a, b):
  return all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# --------------------------------------------------------------------------- the step against independent references
#
# The references run P, T and R with `module.apply` and compute every loss term and metric again in
# float64 NumPy from the methods' definitions (the table in rajax/step.py's docstring), not from the
# step's code. Each comparison is paired with deliberately wrong references that it must reject.

SCENE_LABELS = (2, 5, 9, 1, 9, 7)   # the dataset labels of `scenes`
# The programs of these tests are compiled without LLVM's optimisation passes: 2-3x faster to compile on a
# CPU, and the same numbers up to float32 rounding, which the tolerances below allow for.
_quick_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture(scope="module")
def scenes():
  """Six 32x32 targets (smooth colour waves with some grain), their Pillow bicubic 8x8 inputs, labels.

  Unlike uniform noise, these give the random R different top-1 classes on different images, so the
  labels R makes, its confidence filter and a class subset each select some of the examples, not all.
  """
  rng = np.random.default_rng(0)
  yy, xx, _ = np.mgrid[0:32, 0:32, 0:1] / 31.0
  targets = []
  for _ in SCENE_LABELS:
    base, amp, freq, dy, dx = rng.uniform(0, 1, 3), rng.uniform(-1, 1, 3), rng.uniform(1, 6), *rng.uniform(-1, 1, 2)
    img = base + 0.5 * amp * np.sin(np.pi * freq * (dy * yy + dx * xx)) + rng.normal(0, 0.05, (32, 32, 3))
    targets.append(np.clip(img * 255, 0, 255).astype(np.uint8))
  inputs = [np.asarray(Image.fromarray(t).resize((8, 8), Image.BICUBIC)) for t in targets]
  return {"input": np.stack(inputs), "target": np.stack(targets), "label": np.array(SCENE_LABELS, np.int32)}


def _f64(x):
  return np.asarray(x, np.float64)


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _softmax(z):
  return np.exp(_log_softmax(z))


def _wmean(values, weight):
  return float((values * weight).sum() / max(weight.sum(), 1.0))


def _r_logits(rec, images, variant="frozen"):
  """R's logits in float64: the images ImageNet-normalised here, then R's module in inference mode.

  Broken variants for the negative controls: "batch_stats" runs R's BatchNorm in training mode (batch
  statistics instead of its running ones), "unnormalised" feeds R the [0, 1] images as they are.
  """
  x = _f64(images)
  if variant != "unnormalised":
    x = (x - np.asarray(rec.mean)) / np.asarray(rec.std)
  x = x.astype(np.float32)
  if variant == "batch_stats":
    return _f64(rec.module.apply(rec.variables, x, train=True, mutable=["batch_stats"])[0])
  return _f64(rec.module.apply(rec.variables, x, train=False))


def _forward(nets, state, batch, mode):
  """P (and T, fed P's output) in training mode by module.apply: outputs and updated BatchNorm statistics."""
  def train_apply(name, x):
    out, updates = nets[name].apply({"params": state.params[name], "batch_stats": state.batch_stats[name]}, x,
                                    train=True, mutable=["batch_stats"])
    return out, updates["batch_stats"]

  out, stats = train_apply("processor", np.asarray(batch["input"], np.float32) / np.float32(255))
  fw = {"out": out, "seen": out, "batch_stats": {"processor": stats}}
  if mode == "transformer":
    fw["seen"], fw["batch_stats"]["transformer"] = train_apply("transformer", out)
  return fw


def _recognizer_labels(clean_logits):
  return np.argmax(clean_logits, -1)


def _expected_metrics(spec, *, out, target, labels, seen_logits, clean_logits):
  """The step's metrics by definition, in float64.

  pixel_mse: per-example mean of (P(x) - y)^2, averaged over the examples in the class subset (all without
  one); psnr: the mean over all examples of -10 log10(per-example MSE of clip(P(x), 0, 1)); recognition:
  softmax CE of R's logits on what it sees (restricted to the subset's classes, labels as positions in the
  subset, smoothed targets (1 - eps) onehot + eps / K) for ra and transformer, or the distance between
  R's probabilities on P(x) and on y for unsupervised, averaged over the subset's examples (and, with
  min_confidence, over those R recognises with that top-1 probability on y); top1: argmax of R's full logits
  equal to the label, over all examples; loss: pixel_mse + lam * recognition.
  """
  mode, classes = spec["mode"], tuple(spec.get("classes", ()))
  y, out = _f64(target) / 255.0, _f64(out)
  n = len(labels)
  per_pixel = ((out - y) ** 2).reshape(n, -1).mean(1)
  clipped = ((np.clip(out, 0.0, 1.0) - y) ** 2).reshape(n, -1).mean(1)
  weight = np.isin(labels, classes).astype(np.float64) if classes else np.ones(n)
  m = {"pixel_mse": _wmean(per_pixel, weight), "psnr": float(np.mean(-10 * np.log10(clipped)))}
  recognition = 0.0
  if mode != "plain":
    cols = list(classes) if classes else list(range(seen_logits.shape[-1]))
    sub = seen_logits[:, cols]
    if mode == "unsupervised":
      logp, logq = _log_softmax(sub), _log_softmax(clean_logits[:, cols])
      if spec.get("distance", "prob_mse") == "prob_mse":
        per = ((np.exp(logp) - np.exp(logq)) ** 2).mean(-1)
      else:
        per = (np.exp(logq) * (logq - logp)).sum(-1)
      rec_weight = weight
    else:
      positions = np.array([cols.index(l) if l in cols else 0 for l in labels])
      k, eps = len(cols), spec.get("label_smoothing", 0.0)
      soft = (1 - eps) * np.eye(k)[positions] + eps / k
      per = -(soft * _log_softmax(sub)).sum(-1)
      rec_weight = weight
      if spec.get("min_confidence", 0.0):
        rec_weight = weight * (_softmax(clean_logits).max(-1) >= spec["min_confidence"])
    recognition = _wmean(per, rec_weight)
    m["recognition"] = recognition
    m["top1"] = float(np.mean(np.argmax(seen_logits, -1) == labels))
  m["loss"] = m["pixel_mse"] + spec["lam"] * recognition
  return m


def _mismatches(got, want):
  """The metrics in `want` that `got` misses: loss terms beyond float32 rounding (1e-5 relative), PSNR
  beyond 1e-4 dB, top-1 (a multiple of 1/6 here) beyond float32 rounding."""
  bad = []
  for k, w in want.items():
    g = float(got[k])
    tol = 1e-6 if k == "top1" else 1e-4 if k == "psnr" else 1e-8 + 1e-5 * abs(w)
    if not abs(g - w) <= tol:
      bad.append(f"{k}: step {g!r}, reference {w!r}")
  return bad


# Every method, and the options where they apply. "mid" is a min_confidence halfway between the two
# middle top-1 probabilities of R on the clean targets (half the examples pass, none sits at the threshold).
VARIANTS = {
    "plain": dict(mode="plain", lam=0.0),
    "plain_classes": dict(mode="plain", lam=0.0, classes=(7, 2, 5)),
    "ra": dict(mode="ra", lam=0.5),
    "ra_smoothing_classes": dict(mode="ra", lam=0.5, label_smoothing=0.2, classes=(7, 2, 5)),
    "ra_recognizer_labels_min_confidence": dict(mode="ra", lam=0.5, labels="recognizer", min_confidence="mid"),
    "unsupervised": dict(mode="unsupervised", lam=10.0),
    "unsupervised_kl_classes_recognizer_labels": dict(mode="unsupervised", lam=1.0, distance="kl", classes=(9, 2, 5),
                                                      labels="recognizer"),
    "transformer": dict(mode="transformer", lam=0.5),
    "transformer_smoothing_classes_recognizer_labels_min_confidence": dict(
        mode="transformer", lam=0.5, label_smoothing=0.2, classes=(9, 2, 5), labels="recognizer",
        min_confidence="mid"),
}


@pytest.fixture(scope="module")
def clean_logits(rec, scenes):
  return _r_logits(rec, scenes["target"] / 255.0)


@pytest.fixture(scope="module")
def stepped(nets, rec, scenes, clean_logits):
  """variant -> (spec, state, state after one step on `scenes`, metrics); each variant's step compiled once."""
  cache = {}

  def run(name):
    if name not in cache:
      spec = dict(VARIANTS[name])
      if spec.get("min_confidence") == "mid":
        conf = np.sort(_softmax(clean_logits).max(-1))
        spec["min_confidence"] = float(conf[len(conf) // 2 - 1] + conf[len(conf) // 2]) / 2
      method = ra.Settings(**spec)
      txs = {n: optax.adam(1e-3) for n in method.trains}
      state = jax.jit(lambda key: _init_state(method, nets, txs, rng=key, input_shape=(8, 8, 3)))(
          jax.random.PRNGKey(0))
      new, metrics = _quick_jit(_train_step(method, nets, txs))(state, scenes, rec)
      cache[name] = spec, state, new, jax.device_get(metrics)
    return cache[name]

  return run


def _leaves_apart(got, want, rel=1e-4):
  """Paths of the leaves of `got` farther from `want` than `rel` of the largest |value| in the leaf.

  1e-4: T's BatchNorm layers see P's nearly constant output, whose variance (E[x^2] - E[x]^2 in float32)
  cancels, so float32 rounding of P's output reaches T's statistics and gradients at about 2e-5 of
  their scale; P's own agree to 1e-6."""
  flat = lambda t: traverse_util.flatten_dict(jax.tree.map(_f64, t), sep="/")
  g, w = flat(got), flat(want)
  assert g.keys() == w.keys()
  return [k for k in w if not np.abs(g[k] - w[k]).max() <= rel * np.abs(w[k]).max()]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_step_metrics_and_batch_statistics_equal_an_independent_float64_computation(
    name, nets, rec, scenes, clean_logits, stepped):
  """One step's loss, pixel_mse, recognition, psnr and top1, and its new BatchNorm statistics, are those of
  the method's definition computed here (`_expected_metrics`), for every method and option; a reference
  with any one thing wrong (labels off by one, smoothing, subset or confidence filter ignored, R with
  batch statistics or without normalisation, R shown P(x) instead of T(P(x)), ...) is rejected."""
  spec, state, new, metrics = stepped(name)
  mode = spec["mode"]
  assert int(new.step) == 1
  assert set(new.params) == set(new.opt_state) == set(ra.Settings(**spec).trains)
  want_keys = {"loss", "pixel_mse", "psnr", "grad_norm"}
  want_keys |= set() if mode == "plain" else {"recognition", "top1"}
  want_keys |= {"grad_norm_transformer"} if mode == "transformer" else set()
  assert set(metrics) == want_keys

  fw = _forward(nets, state, scenes, mode)
  assert _leaves_apart(new.batch_stats, fw["batch_stats"]) == []
  assert _leaves_apart(new.batch_stats, state.batch_stats), "the check cannot tell statistics left as they were"

  labels = _recognizer_labels(clean_logits) if spec.get("labels") == "recognizer" else scenes["label"]
  if spec.get("classes"):
    inside = np.isin(labels, spec["classes"]).sum()
    assert 0 < inside < len(labels), "test set-up: the class subset should hold some of the examples, not all"
  seen = _r_logits(rec, fw["seen"])

  def expect(spec=spec, labels=labels, seen=seen, clean=clean_logits):
    return _expected_metrics(spec, out=fw["out"], target=scenes["target"], labels=labels, seen_logits=seen,
                             clean_logits=clean)

  want = expect()
  assert _mismatches(metrics, want) == []

  # Negative controls: the comparison above rejects each of these wrong steps.
  y = scenes["target"] / 255.0
  batch_mse = np.mean((np.clip(_f64(fw["out"]), 0, 1) - y) ** 2)
  broken = {"PSNR of the batch's mean MSE": dict(want, psnr=-10 * np.log10(batch_mse))}
  if spec.get("classes"):
    broken["class subset ignored"] = expect(spec={k: v for k, v in spec.items() if k != "classes"})
  if mode != "plain":
    broken["lambda doubled"] = expect(spec=dict(spec, lam=2 * spec["lam"]))
    for variant in ("batch_stats", "unnormalised"):
      broken[f"R {variant}"] = expect(seen=_r_logits(rec, fw["seen"], variant),
                                      clean=_r_logits(rec, y, variant))
  if mode in ("ra", "transformer"):
    broken["labels off by one"] = expect(labels=(labels + 1) % 10)
  if spec.get("label_smoothing"):
    broken["label smoothing ignored"] = expect(spec=dict(spec, label_smoothing=0.0))
  if spec.get("min_confidence"):
    broken["confidence filter ignored"] = expect(spec=dict(spec, min_confidence=0.0))
  if spec.get("labels") == "recognizer":
    broken["dataset labels"] = expect(labels=scenes["label"])
  if mode == "unsupervised":
    other = "kl" if spec.get("distance", "prob_mse") == "prob_mse" else "prob_mse"
    broken[f"distance {other}"] = expect(spec=dict(spec, distance=other))
  if mode == "transformer":
    broken["R shown P(x), not T(P(x))"] = expect(seen=_r_logits(rec, fw["out"]))
  for what, wrong in broken.items():
    assert _mismatches(metrics, wrong), f"the check cannot tell the step from one with {what}"


def _reference_gradients(spec, nets, rec, state, batch):
  """{network: {term: gradient}} of each loss term, written here with module.apply and taken by jax.grad
  in float32: "pixel" MSE(P(x), y) and "recognition" (ra: CE(R(P(x)), label); unsupervised: MSE of R's
  probabilities on P(x) and on y) for P; for T in the transformer method CE(R(T(out)), label) with P's
  output `out` a fixed input."""
  x = jnp.asarray(batch["input"], jnp.float32) / 255.0
  y = jnp.asarray(batch["target"], jnp.float32) / 255.0
  labels = jnp.asarray(batch["label"])
  mean, std = jnp.asarray(rec.mean, jnp.float32), jnp.asarray(rec.std, jnp.float32)

  def r(images):
    return rec.module.apply(rec.variables, (images - mean) / std, train=False)

  def net(name, params, inputs):
    return nets[name].apply({"params": params, "batch_stats": state.batch_stats[name]}, inputs, train=True,
                            mutable=["batch_stats"])[0]

  def ce(logits):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

  terms = {"processor": {"pixel": lambda p: jnp.mean((net("processor", p, x) - y) ** 2)}}
  if spec["mode"] == "ra":
    terms["processor"]["recognition"] = lambda p: ce(r(net("processor", p, x)))
  elif spec["mode"] == "unsupervised":
    q = jax.nn.softmax(r(y))
    terms["processor"]["recognition"] = lambda p: jnp.mean((jax.nn.softmax(r(net("processor", p, x))) - q) ** 2)
  elif spec["mode"] == "transformer":
    out = net("processor", state.params["processor"], x)
    terms["transformer"] = {"recognition": lambda t: ce(r(net("transformer", t, out)))}
  return {n: {k: jax.tree.map(_f64, _quick_jit(jax.grad(f))(state.params[n])) for k, f in fs.items()}
          for n, fs in terms.items()}


ADAM = dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8)   # optax.adam(1e-3), as `stepped` builds it


def _adam_first_step(p, g, *, lr, b1, b2, eps, bias_correction=True):
  """(new parameters, first moment, second moment) of Adam's first step from zero moments, in float64."""
  m, v = (1 - b1) * g, (1 - b2) * g * g
  m_hat, v_hat = (m / (1 - b1), v / (1 - b2)) if bias_correction else (m, v)
  return p - lr * m_hat / (np.sqrt(v_hat) + eps), m, v


def _adam_problems(params, new_params, adam_state, g, *, bias_correction=True, elementwise=True, **adam):
  """What differs between the step's update of one network and Adam's first step on gradient `g`.

  elementwise: each moment to 1e-4 of the network's largest (see `_leaves_apart`); parameters to 2e-7 where
  |g| > 1e-5 (below, a gradient can be float rounding of a true zero, a conv bias feeding BatchNorm, whose
  sign is noise) and elsewhere within Adam's bound |step| <= lr (plus the parameters' float32 rounding).
  Otherwise (T, see the test) the moments as vectors: the first one's direction to a cosine of 1 - 1e-4, its
  length to 1e-3 and the second one's sum to 2e-3; parameters to 2e-7 where |g| exceeds 5% of its leaf's
  largest.
  """
  problems = []
  if int(adam_state.count) != 1:
    problems.append(f"count {adam_state.count}")
  flat = lambda t: traverse_util.flatten_dict(jax.tree.map(_f64, t), sep="/")
  p0, p1, gg, mu, nu = (flat(t) for t in (params, new_params, g, adam_state.mu, adam_state.nu))
  g_max = max(np.abs(v).max() for v in gg.values())
  lr = adam["lr"]
  refs = {k: _adam_first_step(p0[k], gg[k], bias_correction=bias_correction, **adam) for k in gg}
  if not elementwise:
    m = np.concatenate([refs[k][1].ravel() for k in gg])
    got = np.concatenate([mu[k].ravel() for k in gg])
    cosine = got @ m / np.sqrt((got @ got) * (m @ m))
    if not cosine >= 1 - 1e-4:
      problems.append(f"first moment at cosine {cosine:.6f}")
    if not abs(np.sqrt(got @ got) / np.sqrt(m @ m) - 1) <= 1e-3:
      problems.append(f"first moment of length {np.sqrt(got @ got):.4e}, not {np.sqrt(m @ m):.4e}")
    v_sum, nu_sum = sum(refs[k][2].sum() for k in gg), sum(nu[k].sum() for k in gg)
    if not abs(nu_sum / v_sum - 1) <= 2e-3:
      problems.append(f"second moment summing to {nu_sum:.4e}, not {v_sum:.4e}")
  for k in gg:
    ref, m, v = refs[k]
    if elementwise:
      mu_error = np.abs(mu[k] - m).max() / ((1 - adam["b1"]) * g_max)
      if not mu_error <= 1e-4:
        problems.append(f"{k}: first moment off by {mu_error:.1e} of the largest")
      nu_error = np.abs(nu[k] - v).max() / ((1 - adam["b2"]) * g_max ** 2)
      if not nu_error <= 1e-4:
        problems.append(f"{k}: second moment off by {nu_error:.1e} of the largest")
    clear = np.abs(gg[k]) > (1e-5 if elementwise else 0.05 * np.abs(gg[k]).max())
    if not np.allclose(p1[k][clear], ref[clear], rtol=0, atol=2e-7):
      problems.append(f"{k}: parameters")
    if not np.all(np.abs(p1[k] - p0[k])[~clear] <= lr + 2e-7):
      problems.append(f"{k}: parameters beyond lr")
  return problems


@pytest.mark.parametrize("name", ["ra", "unsupervised", "transformer"])
def test_one_step_is_an_adam_step_on_the_gradient_of_the_methods_loss(name, nets, rec, scenes, stepped):
  """After one step, each trained network's Adam moments are (1 - b1) g and (1 - b2) g^2, its parameters
  p - lr m_hat / (sqrt(v_hat) + eps), and grad_norm is |g|, with g the gradient computed here of
  MSE + lam * recognition for P in ra and unsupervised; of the MSE alone for P, and of lam * CE(R(T(out)))
  with P's output fixed for T, in the transformer method. The recognition term's gradient reaches P in ra
  and unsupervised: the step's update is neither the pixel-only one nor one with lam ignored.

  T's gradient is compared as a vector: T's BatchNorm layers normalise P's low-contrast output, so the
  float32 rounding difference between the step's P(x) and the one here (1e-7) moves T's ReLU inputs across
  zero at a few places, which shifts single leaves of T's gradient by up to ~1% (a kink, not an error).
  """
  spec, state, new, metrics = stepped(name)
  lam, grads = spec["lam"], _reference_gradients(spec, nets, rec, state, scenes)
  combine = lambda a, b, w: jax.tree.map(lambda u, v: u + w * v, a, b)
  want, broken = {}, {}
  if spec["mode"] == "transformer":
    want["processor"] = grads["processor"]["pixel"]
    want["transformer"] = jax.tree.map(lambda v: lam * v, grads["transformer"]["recognition"])
    broken["T's gradient with lam ignored"] = ("transformer", grads["transformer"]["recognition"])
  else:
    g = grads["processor"]
    want["processor"] = combine(g["pixel"], g["recognition"], lam)
    broken["P's gradient without the recognition term"] = ("processor", g["pixel"])
    broken["P's gradient with lam ignored"] = ("processor", combine(g["pixel"], g["recognition"], 1.0))
  elementwise = {"processor": True, "transformer": False}
  check = lambda n, g, **kw: _adam_problems(state.params[n], new.params[n], new.opt_state[n][0], g,
                                            elementwise=elementwise[n], **ADAM, **kw)
  for n, g in want.items():
    assert check(n, g) == [], n
    norm = np.sqrt(sum(float(np.sum(v * v)) for v in jax.tree.leaves(g)))
    got = metrics["grad_norm" if n == "processor" else "grad_norm_transformer"]
    np.testing.assert_allclose(float(got), norm, rtol=1e-5 if elementwise[n] else 1e-3)
  # Negative controls: wrong gradients, and Adam without its bias correction, are rejected.
  for what, (n, g) in broken.items():
    assert check(n, g), f"the check cannot tell the step from one with {what}"
  for n, g in want.items():
    assert check(n, g, bias_correction=False), f"the check cannot tell {n}'s Adam without bias correction"


def test_processor_batchnorm_statistics_update(nets, rec, batch):
  method, txs, state = _setup("ra", nets)
  new, _ = jax.jit(_train_step(method, nets, txs))(state, batch, rec)
  before = state.batch_stats["processor"]["blocks_0"]["bn1"]
  after = new.batch_stats["processor"]["blocks_0"]["bn1"]
  assert not np.allclose(before["mean"], after["mean"])
  assert not np.allclose(before["var"], after["var"])


def test_transformer_mode_recognition_gradient_is_exactly_zero_for_p(nets, rec, batch):
  method, _, state = _setup("transformer", nets)
  loss_fn = ra.make_loss_fn(method, nets)

  def recognition(params):
    return loss_fn(params, state.batch_stats, batch, rec)[1][0]["recognition"]

  grads = jax.jit(jax.grad(recognition))(state.params)
  p_leaves = jax.tree.leaves(grads["processor"])
  assert p_leaves and all(bool(jnp.all(g == 0)) for g in p_leaves)
  assert any(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads["transformer"]))


def test_transformer_mode_updates_p_exactly_like_plain_and_t_has_its_own_adam_state(nets, rec, batch):
  _, t_txs, t_state = _setup("transformer", nets)
  t_method = ra.Settings(mode="transformer", lam=1e-2)
  p_method, p_txs, p_state = _setup("plain", nets)
  chex.assert_trees_all_equal(t_state.params["processor"], p_state.params["processor"])
  t_new, _ = jax.jit(_train_step(t_method, nets, t_txs))(t_state, batch, rec)
  p_new, _ = jax.jit(_train_step(p_method, nets, p_txs))(p_state, batch, rec)
  # P sees only its pixel loss: the same update as plain training, to the last bit.
  chex.assert_trees_all_equal(t_new.params["processor"], p_new.params["processor"])
  # T is trained, by its own optimizer whose moments are separate from P's.
  assert not _tree_equal(t_new.params["transformer"], t_state.params["transformer"])
  mu_t = t_new.opt_state["transformer"][0].mu
  assert jax.tree.structure(mu_t) == jax.tree.structure(t_new.params["transformer"])
  assert any(bool(jnp.any(m != 0)) for m in jax.tree.leaves(mu_t))


def test_ra_gradient_reaches_p_and_lambda_zero_equals_plain(nets, rec, batch):
  method, _, state = _setup("ra", nets)
  loss_fn = ra.make_loss_fn(method, nets)
  g = jax.jit(jax.grad(lambda p: loss_fn(p, state.batch_stats, batch, rec)[1][0]["recognition"]))(state.params)
  assert any(bool(jnp.any(x != 0)) for x in jax.tree.leaves(g["processor"]))

  ra0, txs, s0 = _setup("ra", nets, lam=0.0)
  plain, ptxs, s1 = _setup("plain", nets)
  a, _ = jax.jit(_train_step(ra0, nets, txs))(s0, batch, rec)
  b, _ = jax.jit(_train_step(plain, nets, ptxs))(s1, batch, rec)
  chex.assert_trees_all_close(a.params, b.params, atol=1e-7)
  ra1, txs1, s2 = _setup("ra", nets, lam=1.0)
  c, _ = jax.jit(_train_step(ra1, nets, txs1))(s2, batch, rec)
  assert not _tree_equal(c.params, b.params)


def test_unsupervised_mode_matches_prob_mse_of_r_outputs(nets, rec, batch):
  method, _, state = _setup("unsupervised", nets)
  loss_fn = ra.make_loss_fn(method, nets)
  _, (terms, _, logits, out, labels) = jax.jit(loss_fn)(state.params, state.batch_stats, batch, rec)
  np.testing.assert_array_equal(labels, batch["label"])  # labels="dataset": the batch's own
  target_logits = jax.jit(lambda r, y: r(y))(rec, jnp.asarray(batch["target"], jnp.float32) / 255.0)
  p = jax.nn.softmax(logits, -1)
  q = jax.nn.softmax(target_logits, -1)
  np.testing.assert_allclose(float(terms["recognition"]), float(jnp.mean((p - q) ** 2)), rtol=1e-5)
  kl = ra.Settings(mode="unsupervised", lam=1.0, distance="kl")
  _, (kl_terms, *_rest) = jax.jit(ra.make_loss_fn(kl, nets))(state.params, state.batch_stats, batch, rec)
  expected_kl = jnp.mean(jnp.sum(q * (jnp.log(q) - jnp.log(p)), -1))
  np.testing.assert_allclose(float(kl_terms["recognition"]), float(expected_kl), rtol=1e-4)


def _recognizer_kernel_shapes(rec):
  return {tuple(x.shape) for x in jax.tree.leaves(rec.variables["params"]) if x.ndim >= 2}


def test_no_gradient_is_computed_for_recognizer_variables(nets, rec, batch):
  """Weight gradients of R would show up as conv/dot outputs shaped like R's kernels; there are none."""
  r_shapes = _recognizer_kernel_shapes(rec)
  p_shapes = {tuple(x.shape) for x in jax.tree.leaves(nets["processor"].init(
      jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]) if x.ndim >= 2}
  assert not r_shapes & p_shapes, "test set-up: P and R kernel shapes must be distinct"

  def produced_shapes(jaxpr):
    shapes = set()
    for eqn in jaxpr.eqns:
      if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
        shapes.update(tuple(v.aval.shape) for v in eqn.outvars)
      for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else ():
        shapes |= produced_shapes(sub)
      for p in eqn.params.values():
        inner = getattr(p, "jaxpr", None)
        if inner is not None:
          shapes |= produced_shapes(getattr(inner, "jaxpr", inner))
    return shapes

  method, txs, state = _setup("ra", nets)
  step = _train_step(method, nets, txs)
  shapes = produced_shapes(jax.make_jaxpr(step)(state, batch, rec).jaxpr)
  assert not shapes & r_shapes

  # The check does see recognizer weight gradients when they are taken.
  loss_fn = ra.make_loss_fn(method, nets)

  def with_r_grad(variables):
    r = rajax.Recognizer(name=rec.name, module=rec.module, variables=variables)
    return loss_fn(state.params, state.batch_stats, batch, r)[0]

  r_grad_shapes = produced_shapes(jax.make_jaxpr(jax.grad(with_r_grad))(rec.variables).jaxpr)
  assert r_grad_shapes & r_shapes


def _state_layout_problems(method, nets, state):
  """How `state` differs from the layout of the method's trainable networks: params, batch_stats and
  opt_state hold one entry per trained network, with exactly that network's variables (from its init)."""
  problems = []
  for tree in ("params", "batch_stats", "opt_state"):
    if set(getattr(state, tree)) != set(method.trains):
      problems.append(f"{tree} holds {sorted(getattr(state, tree))}, not {sorted(method.trains)}")
  shapes = {"processor": (1, 8, 8, 3), "transformer": (1, 32, 32, 3)}
  for n in set(method.trains) & set(state.params) & set(state.batch_stats):
    init = jax.eval_shape(lambda: nets[n].init(jax.random.key(0), jnp.zeros(shapes[n])))
    for tree in ("params", "batch_stats"):
      got = jax.tree.map(lambda x: (x.shape, x.dtype), getattr(state, tree)[n])
      if got != jax.tree.map(lambda x: (x.shape, x.dtype), dict(init).get(tree, {})):
        problems.append(f"{tree}[{n!r}] is not {n}'s {tree}")
  return problems


@pytest.mark.parametrize("mode", ["ra", "transformer"])
def test_the_train_state_holds_only_the_trainable_networks(mode, nets, rec, batch):
  """R is frozen: the TrainState (what the optimizer updates and a checkpoint saves) holds the variables of
  the networks the method trains and nothing of R, and the step returns a state of the same layout. (That
  R's weights are never differentiated is test_no_gradient_is_computed_for_recognizer_variables.)"""
  method, txs, state = _setup(mode, nets)
  assert _state_layout_problems(method, nets, state) == []
  out_state, _ = jax.eval_shape(_train_step(method, nets, txs), state, batch, rec)
  assert jax.tree.structure(out_state) == jax.tree.structure(state)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), out_state) == jax.tree.map(lambda x: (x.shape, x.dtype), state)
  # Negative controls: a state that carried R's variables, beside P's or inside them, is rejected.
  with_r = state.replace(params={**state.params, "recognizer": rec.variables["params"]})
  assert _state_layout_problems(method, nets, with_r)
  merged = state.replace(batch_stats={**state.batch_stats, "processor": {**state.batch_stats["processor"],
                                                                         "recognizer": rec.variables["batch_stats"]}})
  assert _state_layout_problems(method, nets, merged)


def test_eval_step_masks_padding_and_measures_on_t_in_transformer_mode(nets, rec, batch):
  method, _, state = _setup("transformer", nets)
  ev = jax.jit(_eval_step(method, nets))
  full = ev(state, dict(batch, mask=np.ones(4, np.float32)), rec)
  assert float(full["count"]) == 4
  # Replace the last two examples by garbage marked as padding: sums over the first two only.
  garbage = {k: np.array(v) for k, v in batch.items()}
  garbage["target"][2:] = 0
  garbage["label"][2:] = 0
  garbage["mask"] = np.array([1, 1, 0, 0], np.float32)
  half = ev(state, garbage, rec)
  first_two = ev(state, {k: v[:2] for k, v in batch.items()}, rec)
  assert float(half["count"]) == 2
  for k in ("psnr", "ssim", "top1", "recognition_ce"):
    np.testing.assert_allclose(float(half[k]), float(first_two[k]), rtol=1e-5)
  # Recognition is measured on T(P(x)): compare with R applied by hand.
  x = jnp.asarray(batch["input"], jnp.float32) / 255.0
  out = jnp.clip(nets["processor"].apply({"params": state.params["processor"],
                                          "batch_stats": state.batch_stats["processor"]}, x), 0, 1)
  t = nets["transformer"].apply({"params": state.params["transformer"],
                                 "batch_stats": state.batch_stats["transformer"]}, out)
  correct = jnp.sum(jnp.argmax(rec(t), -1) == batch["label"])
  assert float(full["top1"]) == float(correct)


def test_device_stage_makes_the_denoising_input(rec):
  """A batch without "input" (noise left to the device) trains and evaluates as the batch it completes to."""
  from rajax import degrade
  nets = {"processor": rajax.processor("srresnet", scale=1, blocks=1, channels=8)}
  method = ra.Settings(mode="ra", lam=1e-3)
  txs = {"processor": optax.adam(1e-3)}
  state = jax.jit(lambda k: _init_state(method, nets, txs, rng=k, input_shape=(16, 16, 3)))(
      jax.random.PRNGKey(0))
  rng = np.random.default_rng(1)
  clean = {"target": rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8),
           "label": rng.integers(0, 10, (4,)).astype(np.int32), "index": np.array([3, 1, 4, 1], np.int32)}
  stage = degrade.DeviceNoise(sigma=0.1, seed=5)
  full = dict(clean, input=np.asarray(jax.jit(stage)(clean)["input"]))
  want_state, want_metrics = jax.jit(_train_step(method, nets, txs))(state, full, rec)
  got_state, got_metrics = jax.jit(_train_step(method, nets, txs, device_stage=stage))(state, clean, rec)
  chex.assert_trees_all_close(got_metrics, want_metrics, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(got_state.params, want_state.params, rtol=1e-5, atol=1e-6)
  want_eval = jax.jit(_eval_step(method, nets))(state, full, rec)
  got_eval = jax.jit(_eval_step(method, nets, device_stage=stage))(state, clean, rec)
  chex.assert_trees_all_close(got_eval, want_eval, rtol=1e-5, atol=1e-6)
  # Examples 1 and 3 share index 1, hence their noise: identical targets give identical inputs.
  noisy = np.asarray(stage(dict(clean, target=np.repeat(clean["target"][:1], 4, 0)))["input"])
  np.testing.assert_array_equal(noisy[1], noisy[3])
  assert not np.array_equal(noisy[0], noisy[1])
  # Without the stage the step says what is missing and how to provide it.
  with pytest.raises(ValueError, match="device_stage"):
    _train_step(method, nets, txs)(state, clean, rec)
  with pytest.raises(ValueError, match="device_stage"):
    _eval_step(method, nets)(state, clean, rec)


def test_errors_name_the_problem(nets, rec, batch):
  with pytest.raises(ValueError, match="unknown method 'sr'"):
    ra.Settings(mode="sr")
  with pytest.raises(ValueError, match="lam"):
    ra.Settings(mode="ra", lam=-1.0)
  with pytest.raises(ValueError, match="missing"):
    _train_step(ra.Settings(mode="transformer"), {"processor": nets["processor"]}, {})
  method, txs, state = _setup("ra", nets)
  with pytest.raises(ValueError, match="needs a recognizer"):
    _train_step(method, nets, txs)(state, batch, None)
  bad = dict(batch, target=batch["target"][:, :16, :16])
  with pytest.raises(ValueError, match="same shape"):
    _train_step(method, nets, txs)(state, bad, rec)


def test_paper_schedule_is_piecewise_constant_in_epochs():
  cfg = optim.section(name="adam", lr=1e-4, decay_epochs=(4, 5), decay_factor=0.1)
  sched = optim.schedule(cfg, steps_per_epoch=100)
  for s, lr in [(0, 1e-4), (399, 1e-4), (400, 1e-5), (499, 1e-5), (500, 1e-6), (599, 1e-6)]:
    assert float(sched(s)) == pytest.approx(lr, rel=1e-6), s
  tx = optim.make_optimizer(cfg, steps_per_epoch=100)
  params = {"w": jnp.ones(3)}
  updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
  # Adam's first step moves every weight by lr (times sign of the gradient).
  np.testing.assert_allclose(np.asarray(updates["w"]), -1e-4, rtol=1e-3)


def test_each_trained_network_has_its_own_optimizer_section():
  cfg = ml_collections.ConfigDict(dict(processor=optim.section(lr=1e-4, decay_epochs=(1,)),
                                       transformer=optim.section(lr=3e-6, decay_epochs=(1,)),
                                       recognizer=optim.section(name="sgd", lr=0.5, momentum=0.0)))
  txs = optim.make_optimizers(cfg, ("processor", "transformer", "recognizer"), steps_per_epoch=10)
  params = {"w": jnp.ones(3)}
  first = {n: tx.update({"w": jnp.full(3, 2.0)}, tx.init(params), params)[0]["w"] for n, tx in txs.items()}
  np.testing.assert_allclose(np.asarray(first["processor"]), -1e-4, rtol=1e-3)
  np.testing.assert_allclose(np.asarray(first["transformer"]), -3e-6, rtol=1e-3)
  np.testing.assert_allclose(np.asarray(first["recognizer"]), -1.0, rtol=1e-6)   # plain SGD: -lr * gradient
  with pytest.raises(ValueError, match=r"No optimizer section for the trained network\(s\) \['other'\]"):
    optim.make_optimizers(cfg, ("processor", "other"), steps_per_epoch=10)


def test_schedules_warm_up_and_decay_by_cosine():
  cos = optim.schedule(optim.section(lr=1.0, schedule="cosine", warmup_epochs=1.0), steps_per_epoch=10,
                       total_steps=110)
  cosine = lambda s: 0.5 * (1 + np.cos(np.pi * s / 110))
  # Warm-up: a factor (s + 1) / 10 on the cosine over the whole run, for the first epoch's 10 steps.
  np.testing.assert_allclose([float(cos(s)) for s in (0, 4, 9)], [0.1 * cosine(0), 0.5 * cosine(4), cosine(9)],
                             rtol=1e-5)
  np.testing.assert_allclose([float(cos(s)) for s in (10, 60, 109)], [cosine(10), cosine(60), cosine(109)], rtol=1e-5, atol=1e-8)
  const = optim.schedule(optim.section(lr=0.3, schedule="constant"), steps_per_epoch=10)
  assert float(const(0)) == float(const(10_000)) == pytest.approx(0.3)
  wd = optim.make_optimizer(optim.section(name="sgd", lr=0.1, momentum=0.0, weight_decay=0.5), steps_per_epoch=10)
  params = {"w": jnp.full(2, 2.0)}
  upd, _ = wd.update({"w": jnp.zeros(2)}, wd.init(params), params)
  np.testing.assert_allclose(np.asarray(upd["w"]), -0.1 * 0.5 * 2.0, rtol=1e-6)   # L2 added to the gradient


def test_cosine_restarts_follow_basicsr_per_step_and_lr_scale_multiplies_a_named_head():
  """SR4IR's schedule (periods [2, 8] epochs of 5 steps, eta_min 1e-6): BasicSR's rule, restated here
  loop by loop, at every step, with the rate at eta_min at the end of the first period and back at the
  full rate right after it; lr_scale ("aux", 10) moves only the parameters under "aux" ten times as far."""
  cfg = optim.section(name="adamw", lr=1e-4, schedule="cosine_restarts", restart_epochs=(2, 8),
                      restart_weights=(1.0, 0.5), min_lr=1e-6)
  assert optim.validate(cfg, "c") == []
  sched = optim.schedule(cfg, steps_per_epoch=5)

  def basicsr(t, periods=(10, 40), weights=(1.0, 0.5), eta_min=1e-6, base=1e-4):
    cum = np.cumsum(periods)
    i = next(k for k, c in enumerate(cum) if t <= c)
    start = 0 if i == 0 else cum[i - 1]
    return eta_min + weights[i] * 0.5 * (base - eta_min) * (1 + np.cos(np.pi * (t - start) / periods[i]))

  np.testing.assert_allclose([float(sched(t)) for t in range(50)], [basicsr(t) for t in range(50)], rtol=1e-5)
  assert float(sched(10)) == pytest.approx(1e-6, rel=1e-4) and float(sched(11)) > 0.99 * 0.5e-4
  bad = optim.section(schedule="cosine_restarts", restart_epochs=(2, 8), restart_weights=(1.0,))
  assert any("one weight per period" in p for p in optim.validate(bad, "c"))
  assert any("restart_epochs" in p for p in optim.validate(optim.section(schedule="cosine_restarts"), "c"))
  tx = optim.make_optimizer(optim.section(name="sgd", lr=0.1, momentum=0.0, lr_scale=(("aux", 10.0),)), 5)
  params = {"backbone": {"w": jnp.ones(2)}, "aux_head": {"w": jnp.ones(2)}}
  upd, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  np.testing.assert_allclose(np.asarray(upd["backbone"]["w"]), -0.1, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(upd["aux_head"]["w"]), -1.0, rtol=1e-6)


def test_min_confidence_keeps_only_confidently_recognised_examples(nets, rec, batch):
  """min_confidence: the RA term is the CE averaged over the examples whose clean top-1 probability
  reaches the threshold; the pixel term still sees every example."""
  y = jnp.asarray(batch["target"], jnp.float32) / 255.0
  clean = jax.jit(lambda r, y: r(y))(rec, y)
  conf = np.asarray(jnp.max(jax.nn.softmax(clean, -1), -1))
  threshold = float(np.median(conf))           # about half the examples pass
  keep = conf >= threshold
  assert 0 < keep.sum() < len(keep)
  _, _, state = _setup("ra", nets)
  run = lambda m: jax.jit(ra.make_loss_fn(m, nets))(state.params, state.batch_stats, batch, rec)
  _, (terms, _, logits, _, labels) = run(ra.Settings(mode="ra", lam=1.0, labels="recognizer",
                                                         min_confidence=threshold))
  per_example = np.asarray(losses.recognition_ce(logits=logits, labels=labels, reduction="none"))
  np.testing.assert_allclose(float(terms["recognition"]), per_example[keep].mean(), rtol=1e-5)
  _, (all_terms, *_) = run(ra.Settings(mode="ra", lam=1.0, labels="recognizer"))
  np.testing.assert_allclose(float(all_terms["recognition"]), per_example.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(terms["pixel_mse"]), float(all_terms["pixel_mse"]), rtol=1e-6)
  with pytest.raises(ValueError, match="recognizer-made labels"):
    ra.Settings(mode="ra", min_confidence=0.5)
  with pytest.raises(ValueError, match="min_confidence"):
    ra.Settings(mode="ra", labels="recognizer", min_confidence=1.5)


def test_recognizer_labels_are_r_top1_on_clean_targets(nets, rec, batch):
  """labels="recognizer": the CE uses argmax R(clean target), whatever batch["label"] holds."""
  y = jnp.asarray(batch["target"], jnp.float32) / 255.0
  want = np.asarray(jnp.argmax(jax.jit(lambda r, y: r(y))(rec, y), -1))
  for mode in ("ra", "unsupervised", "transformer"):
    method = ra.Settings(mode=mode, lam=1.0, labels="recognizer")
    _, _, state = _setup(mode, nets)
    garbage = {**batch, "label": (batch["label"] + 1) % 10}
    _, (terms, _, logits, _, labels) = jax.jit(ra.make_loss_fn(method, nets))(
        state.params, state.batch_stats, garbage, rec)
    np.testing.assert_array_equal(np.asarray(labels), want, err_msg=mode)
    if mode == "ra":
      np.testing.assert_allclose(float(terms["recognition"]),
                                 float(losses.recognition_ce(logits=logits, labels=jnp.asarray(want))), rtol=1e-5)
  for mode in ("plain", "unsupervised"):   # only ra and transformer have the filter
    with pytest.raises(ValueError, match="filters the recognition term of ra and transformer"):
      ra.Settings(mode=mode, labels="recognizer", min_confidence=0.5)
  with pytest.raises(ValueError, match="labels=.oracle. is not one of dataset, recognizer"):
    ra.Settings(mode="ra", labels="oracle")
