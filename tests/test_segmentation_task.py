"""The segmentation task (rajax.tasks.segmentation): its loss, pseudo-targets, distances and
metrics, each held against a NumPy float64 recomputation or torch's own values (the fixture of
tests/reference/make_segmentation_loss.py), and every method reaching a segmenter through it.

The segmenter is tests/toy_segmenter.py (two convolutions with a BatchNorm and an auxiliary head),
registered in the zoo only here, so each check compiles in about a second.
"""

from __future__ import annotations

import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import toy_segmenter
from rajax import config as config_lib
from rajax import methods, networks, optim, sharding, tasks
from rajax.segmentation import zoo
from rajax.tasks import segmentation as seg

B, H, W, K = 2, 8, 8, 3
IGNORE = 255


@pytest.fixture(autouse=True)
def _toy_in_the_zoo(monkeypatch):
  monkeypatch.setattr(zoo, "_FAMILIES", (*zoo._FAMILIES, "toy_segmenter"))


def _images(seed=0, b=B, h=H, w=W):
  return jnp.asarray(np.random.default_rng(seed).uniform(0, 1, (b, h, w, 3)), jnp.float32)


def _labels(seed=0, b=B, h=H, w=W, ignored=10, k=K):
  """Random label maps with `ignored` pixels of IGNORE in every image (equal labelled counts)."""
  rng = np.random.default_rng(seed + 100)
  labels = rng.integers(0, k, (b, h, w)).astype(np.int32)
  for i in range(b):
    flat = labels[i].reshape(-1)
    flat[rng.choice(h * w, ignored, replace=False)] = IGNORE
  return labels


def _np_log_softmax(logits):
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_pixel_ce(logits, labels, eps=0.0):
  """Per-pixel CE [B, H, W] (torch's cross_entropy(reduction='none', label_smoothing=eps)), 0 where ignored."""
  logp = _np_log_softmax(logits)
  labels = np.asarray(labels)
  valid = labels != IGNORE
  nll = -np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
  per = (1 - eps) * nll - eps * logp.mean(-1)
  return np.where(valid, per, 0.0), valid


def _np_image_ce(logits, labels, eps=0.0):
  per, valid = _np_pixel_ce(logits, labels, eps)
  return per.sum((1, 2)) / valid.sum((1, 2))


def _np_torchvision_batch_ce(logits, labels):
  """torchvision's criterion term: CE(ignore_index=255) averaged over every labelled pixel of the batch."""
  per, valid = _np_pixel_ce(logits, labels)
  return per.sum() / valid.sum()


# Jitted once for the whole module (eager Flax compiles every op on its own); the checks of
# concrete label ids that only run outside jit are exercised by the bad-input test.
_rec_loss = jax.jit(seg.recognition_loss, static_argnames=("label_smoothing", "train", "aux_weight"))
_heads = jax.jit(lambda s, x: s.heads(x)[0])


def _segmenter(name="toy_segmenter", **kwargs):
  from rajax.models import recognizer
  return recognizer(name, "random", num_classes=K, **kwargs)


# ==================================================================== loss

def test_a_segmenter_name_gives_the_segmentation_task():
  assert tasks.of_recognizer("toy_segmenter") is seg
  assert tasks.get("segmentation") is seg
  assert tasks.of_recognizer("resnet18") is tasks.classification


def test_loss_is_each_images_ce_over_labelled_pixels_plus_half_the_aux_head_as_torchvision():
  s = _segmenter()
  x, t = _images(), _labels()
  per, logits, stats = _rec_loss(s, x, jnp.asarray(t))
  assert stats is None
  heads = _heads(s, x)
  assert set(heads) == {"out", "aux"}
  np.testing.assert_array_equal(logits, heads["out"])
  expected = _np_image_ce(heads["out"], t) + 0.5 * _np_image_ce(heads["aux"], t)
  np.testing.assert_allclose(per, expected, rtol=1e-5)
  # equal labelled counts: the mean over images is torchvision's batch loss
  torchvision = _np_torchvision_batch_ce(heads["out"], t) + 0.5 * _np_torchvision_batch_ce(heads["aux"], t)
  np.testing.assert_allclose(float(jnp.mean(per)), torchvision, rtol=1e-5)
  # negative controls: counting the ignored pixels as class 0, or dropping the aux head, changes it
  as_zero = _np_image_ce(heads["out"], np.where(t == IGNORE, 0, t)) + 0.5 * _np_image_ce(heads["aux"], t)
  assert np.min(np.abs(as_zero - np.asarray(per))) > 1e-4
  assert np.min(np.abs(_np_image_ce(heads["out"], t) - np.asarray(per))) > 1e-4


def test_loss_and_confusion_figures_equal_torchs_on_the_reference_fixture():
  """tests/reference/segmentation_loss.npz: torch's cross_entropy(ignore_index=255) and
  torchvision's criterion / ConfusionMatrix (tests/reference/make_segmentation_loss.py)."""
  ref = np.load(pathlib.Path(__file__).parent / "reference" / "segmentation_loss.npz")
  out, aux, t = (jnp.asarray(ref[f"equal/{n}"]) for n in ("out", "aux", "labels"))
  per = seg.pixel_ce(logits=out, labels=t) + 0.5 * seg.pixel_ce(logits=aux, labels=t)
  np.testing.assert_allclose(per, ref["equal/per_image"], rtol=1e-5)
  np.testing.assert_allclose(float(jnp.mean(per)), ref["equal/criterion"], rtol=1e-5)
  np.testing.assert_allclose(seg.pixel_ce(logits=out, labels=t, label_smoothing=0.1), ref["equal/per_image_smoothed"],
                             rtol=1e-5)
  u = jnp.asarray(ref["unequal/labels"])
  per = seg.pixel_ce(logits=out, labels=u)
  np.testing.assert_allclose(per, ref["unequal/per_image"], rtol=1e-5)
  valid = seg.valid_pixels(u)
  np.testing.assert_allclose(float(jnp.sum(per * valid) / jnp.sum(valid)), ref["unequal/batch"], rtol=1e-5)
  assert abs(float(jnp.mean(per)) - ref["unequal/batch"]) > 1e-3   # unequal counts: the plain mean differs
  m = seg.confusion_matrix(jnp.asarray(ref["confusion/logits"]), jnp.asarray(ref["confusion/labels"]), K)
  np.testing.assert_array_equal(m, ref["confusion/matrix"])
  s = seg.scores(np.asarray(m, np.int64))
  np.testing.assert_allclose(s["iou"], ref["confusion/iu"], rtol=1e-12)
  np.testing.assert_allclose(s["pixel_accuracy"], ref["confusion/acc_global"], rtol=1e-12)


def test_aux_weight_and_models_without_aux_head():
  t = jnp.asarray(_labels(1))
  x = _images(1)
  s = _segmenter()
  heads = _heads(s, x)
  per, _, _ = _rec_loss(s, x, t, aux_weight=0.2)
  np.testing.assert_allclose(per, _np_image_ce(heads["out"], t) + 0.2 * _np_image_ce(heads["aux"], t), rtol=1e-5)
  plain = _segmenter("toy_segmenter_noaux")
  per, logits, _ = _rec_loss(plain, x, t)
  np.testing.assert_allclose(per, _np_image_ce(logits, t), rtol=1e-5)


def test_label_smoothing_matches_torch_cross_entropy_with_ignore_index():
  s = _segmenter("toy_segmenter_noaux")
  x, t = _images(2), _labels(2)
  per, logits, _ = _rec_loss(s, x, jnp.asarray(t), label_smoothing=0.1)
  np.testing.assert_allclose(per, _np_image_ce(logits, t, eps=0.1), rtol=1e-5)
  assert np.min(np.abs(_np_image_ce(logits, t) - np.asarray(per))) > 1e-4


def test_unequal_labelled_counts_weigh_images_equally_and_valid_pixels_give_torchvisions_mean():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(B, H, W, K)).astype(np.float32)
  t = _labels(3)
  t[1, :6] = IGNORE                      # image 1 keeps far fewer labelled pixels
  per = seg.pixel_ce(logits=jnp.asarray(logits), labels=jnp.asarray(t))
  np.testing.assert_allclose(per, _np_image_ce(logits, t), rtol=1e-5)
  valid = seg.valid_pixels(jnp.asarray(t))
  np.testing.assert_array_equal(valid, (t != IGNORE).sum((1, 2)))
  np.testing.assert_allclose(float(jnp.sum(per * valid) / jnp.sum(valid)), _np_torchvision_batch_ce(logits, t),
                             rtol=1e-5)
  assert abs(float(jnp.mean(per)) - _np_torchvision_batch_ce(logits, t)) > 1e-4
  # an image without labelled pixels has loss 0, not NaN
  t[0] = IGNORE
  assert float(seg.pixel_ce(logits=jnp.asarray(logits), labels=jnp.asarray(t))[0]) == 0.0


def test_training_mode_returns_the_batch_statistics_of_the_images():
  s = _segmenter()
  x, t = _images(4), jnp.asarray(_labels(4))
  per, _, stats = _rec_loss(s, x, t, train=True)
  heads, expected = jax.jit(lambda v, im: s.model.logits(v, im, train=True))(s.variables, x)
  np.testing.assert_allclose(stats["bn"]["mean"], expected["bn"]["mean"], rtol=1e-6)
  assert not np.allclose(stats["bn"]["mean"], s.variables["batch_stats"]["bn"]["mean"])
  np.testing.assert_allclose(per, _np_image_ce(heads["out"], t) + 0.5 * _np_image_ce(heads["aux"], t), rtol=1e-5)


def test_the_loss_gradient_reaches_the_images_and_not_through_ignored_pixels():
  s = _segmenter("toy_segmenter_noaux")
  x, t = _images(5), jnp.asarray(_labels(5))
  g = jax.jit(jax.grad(lambda im: jnp.mean(_rec_loss(s, im, t)[0])))(x)
  assert np.all(np.isfinite(g)) and float(jnp.abs(g).max()) > 0
  # gradient w.r.t. the logits is exactly zero at ignored pixels
  logits = s(x)
  gl = jax.jit(jax.grad(lambda z: jnp.sum(seg.pixel_ce(logits=z, labels=t))))(logits)
  np.testing.assert_array_equal(np.asarray(gl)[np.asarray(t) == IGNORE], 0.0)
  assert float(jnp.abs(gl[np.asarray(t) != IGNORE]).min()) > 0


def test_bad_label_maps_are_refused_naming_the_fix():
  s = _segmenter()
  x = _images()
  with pytest.raises(ValueError, match="resize or crop the label maps"):
    seg.recognition_loss(s, x, jnp.zeros((B, H, W + 1), jnp.int32))
  with pytest.raises(ValueError, match=r"\[B, H, W\]"):
    seg.recognition_loss(s, x, jnp.zeros((B, H * W), jnp.int32))
  bad = _labels()
  bad[0, 0, 0] = K
  with pytest.raises(ValueError, match=r"class ids \[3\] outside 0\.\.2"):
    seg.recognition_loss(s, x, jnp.asarray(bad))
  with pytest.raises(ValueError, match="class ids"):
    seg.Evaluator(K).add(s(x), bad)
  with pytest.raises(ValueError, match="label_map"):
    seg.dataset_targets({"target": np.zeros((B, H, W, 3), np.uint8)})
  with pytest.raises(ValueError, match="resize or crop"):
    seg.dataset_targets({"target": np.zeros((B, H, W, 3), np.uint8), "label_map": np.zeros((B, H, 4), np.int32)})
  ok = seg.dataset_targets({"target": np.zeros((B, H, W, 3), np.uint8), "label_map": _labels()})
  assert ok.dtype == jnp.int32 and ok.shape == (B, H, W)
  # inside jit the ids cannot be checked: the broken image's loss is NaN, the other stays finite
  per = jax.jit(lambda z, y: seg.pixel_ce(logits=z, labels=y))(s(x), jnp.asarray(bad))
  assert np.isnan(per[0]) and np.isfinite(per[1])


# ==================================================================== pseudo-targets, distances, features

def test_pseudo_targets_are_the_argmax_with_unconfident_pixels_ignored():
  rng = np.random.default_rng(6)
  logits = (rng.normal(size=(B, H, W, K)) * 2).astype(np.float32)
  p = np.exp(_np_log_softmax(logits))
  labels, confidence = seg.pseudo_targets(jnp.asarray(logits))
  np.testing.assert_array_equal(labels, p.argmax(-1))
  assert labels.dtype == jnp.int32
  np.testing.assert_allclose(confidence, p.max(-1).mean((1, 2)), rtol=1e-5)
  labels, _ = seg.pseudo_targets(jnp.asarray(logits), confidence_threshold=0.6)
  low = p.max(-1) < 0.6
  assert 0 < low.sum() < low.size
  np.testing.assert_array_equal(labels, np.where(low, IGNORE, p.argmax(-1)))


def test_distances_per_pixel_probabilities_and_feature_maps():
  s = _segmenter()
  a, b = seg.embed(s, _images(7)), seg.embed(s, _images(8))
  p, q = np.exp(_np_log_softmax(a["logits"])), np.exp(_np_log_softmax(b["logits"]))
  np.testing.assert_allclose(seg.distance("prob_mse", outputs=a, target_outputs=b), ((p - q) ** 2).mean((1, 2, 3)),
                             rtol=1e-5)
  kl = (q * (np.log(q) - np.log(p))).sum(-1).mean((1, 2))
  np.testing.assert_allclose(seg.distance("kl", outputs=a, target_outputs=b), kl, rtol=1e-4)
  fa, fb = seg.features(s, _images(7))[1], seg.features(s, _images(8))[1]
  expected = sum(((np.asarray(fa[n], np.float64) - np.asarray(fb[n])) ** 2).mean((1, 2, 3)) for n in ("conv1", "conv2"))
  np.testing.assert_allclose(seg.distance("feature_mse", outputs=a, target_outputs=b), expected, rtol=1e-5)
  np.testing.assert_allclose(seg.distance("kl", outputs=a, target_outputs=a), 0.0, atol=1e-6)
  with pytest.raises(ValueError, match="prob_mse, kl, feature_mse"):
    seg.distance("l2", outputs=a, target_outputs=b)


# ==================================================================== metrics

def _np_confusion(pred, target, mask=None, k=K):
  m = np.zeros((k, k), np.int64)
  for i in range(target.shape[0]):
    if mask is not None and not mask[i]:
      continue
    for t, p in zip(target[i].reshape(-1), pred[i].reshape(-1)):
      if 0 <= t < k:
        m[t, p] += 1
  return m


def _np_scores(m):
  """Hand computation: IoU_c = TP / (TP + FP + FN) over classes seen or predicted; accuracy = trace / total."""
  iou = {}
  for c in range(m.shape[0]):
    tp, fp, fn = m[c, c], m[:, c].sum() - m[c, c], m[c, :].sum() - m[c, c]
    if tp + fp + fn:
      iou[c] = tp / (tp + fp + fn)
  return float(np.mean(list(iou.values()))), iou, np.trace(m) / m.sum()


def test_confusion_matrix_and_miou_match_a_hand_computation_with_masked_padding():
  rng = np.random.default_rng(9)
  logits = rng.normal(size=(4, H, W, K)).astype(np.float32)
  pred = logits.argmax(-1)
  target = _labels(9, b=4)
  target[2] = np.where(target[2] == 2, 1, target[2])     # a padding image would be the only one...
  target[:2] = np.where(target[:2] == 2, 0, target[:2])  # ...holding class 2 but for image 3
  mask = np.array([1, 1, 0, 1])
  m = seg.confusion_matrix(jnp.asarray(logits), jnp.asarray(target), K, mask=jnp.asarray(mask))
  assert m.dtype == jnp.int32
  expected = _np_confusion(pred, target, mask)
  np.testing.assert_array_equal(m, expected)
  np.testing.assert_array_equal(seg.confusion_matrix(jnp.asarray(pred), jnp.asarray(target), K),
                                _np_confusion(pred, target))
  miou, iou, acc = _np_scores(expected)
  s = seg.scores(np.asarray(m, np.int64))
  np.testing.assert_allclose(s["miou"], miou, rtol=1e-12)
  np.testing.assert_allclose([s["iou"][c] for c in iou], list(iou.values()), rtol=1e-12)
  np.testing.assert_allclose(s["pixel_accuracy"], acc, rtol=1e-12)
  # negative control: the padding image changes the figures when it is not masked
  assert abs(_np_scores(_np_confusion(pred, target))[0] - miou) > 1e-3
  # a class neither present nor predicted is left out of the mean
  none_of_2 = _np_confusion(np.where(pred == 2, 0, pred), np.where(target == 2, 0, target))
  s = seg.scores(none_of_2)
  assert np.isnan(s["iou"][2])
  np.testing.assert_allclose(s["miou"], _np_scores(none_of_2)[0], rtol=1e-12)


def test_evaluator_accumulates_batches_exactly_and_ignores_padding_images():
  rng = np.random.default_rng(10)
  batches = [(rng.normal(size=(B, H, W, K)).astype(np.float32), _labels(10 + i)) for i in range(3)]
  masks = [np.ones(B), np.ones(B), np.array([1, 0])]
  ev = seg.Evaluator(K, class_names=("bg", "a", "b"))
  for (logits, target), mask in zip(batches, masks):
    ev.add(jnp.asarray(logits), target, mask=mask)
  expected = sum(_np_confusion(lg.argmax(-1), t, m) for (lg, t), m in zip(batches, masks))
  np.testing.assert_array_equal(ev.matrix, expected)
  assert ev.matrix.dtype == np.int64
  miou, iou, acc = _np_scores(expected)
  r = ev.result()
  np.testing.assert_allclose(r["miou"], miou, rtol=1e-12)
  np.testing.assert_allclose(r["pixel_accuracy"], acc, rtol=1e-12)
  assert r["num_images"] == 5.0
  np.testing.assert_allclose(ev.per_class()["a"]["iou"], iou[1], rtol=1e-12)
  assert ev.per_class()["b"]["pixels"] == expected[2].sum()
  with pytest.raises(ValueError, match="no labelled pixels"):
    seg.Evaluator(K).result()


def test_per_shard_confusion_matrices_of_8_devices_sum_to_the_whole_batch():
  devices = jax.devices()
  assert len(devices) == 8, "tests/conftest.py gives 8 CPU devices"
  mesh = sharding.make_mesh()
  rng = np.random.default_rng(11)
  logits = rng.normal(size=(8, 4, 4, K)).astype(np.float32)
  target = _labels(11, b=8, h=4, w=4, ignored=3)
  mask = np.array([1, 1, 1, 1, 1, 1, 0, 0])
  expected = _np_confusion(logits.argmax(-1), target, mask)
  per_shard = jax.jit(jax.shard_map(lambda z, t, m: seg.confusion_matrix(z, t, K, mask=m)[None], mesh=mesh,
                                    in_specs=(P("data"), P("data"), P("data")), out_specs=P("data")))
  with jax.set_mesh(mesh):
    stack = per_shard(*[jax.device_put(a, sharding.batch_sharded(mesh)) for a in (logits, target, mask)])
    whole = jax.jit(lambda z, t, m: seg.counts(z, t, mask=m))(   # what an evaluation step returns
        *[jax.device_put(a, sharding.batch_sharded(mesh)) for a in (logits, target, mask)])["confusion"]
  assert stack.shape == (8, K, K)
  assert len({int(s) for s in np.asarray(stack).sum((1, 2))}) > 1   # the shards hold different counts
  np.testing.assert_array_equal(np.asarray(stack).sum(0), expected)
  np.testing.assert_array_equal(whole, expected)
  ev = seg.Evaluator(K)
  ev.add_matrix(stack, num_images=int(mask.sum()))
  np.testing.assert_array_equal(ev.matrix, expected)
  np.testing.assert_allclose(ev.result()["miou"], _np_scores(expected)[0], rtol=1e-12)


def test_step_metrics_and_per_image_metrics():
  rng = np.random.default_rng(12)
  logits = rng.normal(size=(B, H, W, K)).astype(np.float32)
  t = _labels(12)
  m = seg.step_metrics(jnp.asarray(logits), jnp.asarray(t))
  miou, _, acc = _np_scores(_np_confusion(logits.argmax(-1), t))
  np.testing.assert_allclose(m["miou"], miou, rtol=1e-5)
  np.testing.assert_allclose(m["pixel_accuracy"], acc, rtol=1e-5)
  per = seg.metrics(jnp.asarray(logits), jnp.asarray(t))
  valid = t != IGNORE
  correct = ((logits.argmax(-1) == t) & valid).sum((1, 2))
  np.testing.assert_array_equal(per["correct_pixels"], correct)
  np.testing.assert_array_equal(per["valid_pixels"], valid.sum((1, 2)))
  np.testing.assert_allclose(per["pixel_accuracy"], correct / valid.sum((1, 2)), rtol=1e-6)
  np.testing.assert_allclose(per["recognition_ce"], _np_image_ce(logits, t), rtol=1e-5)


# ==================================================================== methods

def _config(name, **fields):
  c = config_lib.base(task="sr", method=name, recognizer="toy_segmenter")
  c.degrade.scale = 2
  c.processor.update(dict(blocks=1, channels=8))
  c.recognizer.num_classes = K
  c.recognizer.weights = "random"
  c.data.update(dict(source="synthetic", crop=16, resize=0, batch_size=B, eval_batch_size=B))
  for path, value in fields.items():
    *parents, leaf = path.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _built(config):
  config_lib.validate(config)
  spec = methods.get(config.method.name)
  frozen = networks.frozen_networks(config, spec)
  modules = networks.trained_modules(config, spec)
  optimizers = optim.make_optimizers(config.optim, spec.trains, 100, 100)
  method = methods.build(methods.Setup(config=config, modules=modules, optimizers=optimizers,
                                       input_shape=networks.input_shape(config)))
  state = jax.jit(method.init)(jax.random.PRNGKey(0), networks.initial_variables(config, spec, modules))
  return method, modules, frozen, state


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  return {"input": rng.integers(0, 256, (B, 8, 8, 3), dtype=np.uint8),
          "target": rng.integers(0, 256, (B, 16, 16, 3), dtype=np.uint8),
          "label_map": _labels(seed, h=16, w=16, ignored=40)}


def test_ra_step_with_a_segmenter_adds_lam_times_its_pixel_ce_on_p_output():
  method, modules, frozen, state = _built(_config("ra", **{"method.lam": 0.5}))
  assert networks.recognition_task(_config("ra")) == "segmentation"
  batch = _batch()
  _, m = jax.jit(method.train_step)(state, batch, frozen)
  x, y = batch["input"].astype(np.float32) / 255.0, batch["target"].astype(np.float64) / 255.0
  out = modules["processor"].apply(state.variables("processor"), jnp.asarray(x), train=True, mutable=["batch_stats"])[0]
  heads, _ = frozen["recognizer"].heads(out)
  t = batch["label_map"]
  ce = np.mean(_np_image_ce(heads["out"], t) + 0.5 * _np_image_ce(heads["aux"], t))
  mse = np.mean((np.asarray(out, np.float64) - y) ** 2)
  np.testing.assert_allclose(float(m["recognition"]), ce, rtol=1e-5)
  np.testing.assert_allclose(float(m["pixel_mse"]), mse, rtol=1e-5)
  np.testing.assert_allclose(float(m["loss"]), mse + 0.5 * ce, rtol=1e-5)
  miou, _, acc = _np_scores(_np_confusion(np.asarray(heads["out"]).argmax(-1), t))
  np.testing.assert_allclose(float(m["miou"]), miou, rtol=1e-5)
  np.testing.assert_allclose(float(m["pixel_accuracy"]), acc, rtol=1e-5)
  # the label maps matter: other labels give another recognition term
  _, other = jax.jit(method.train_step)(state, dict(batch, label_map=_labels(1, h=16, w=16, ignored=40)), frozen)
  assert abs(float(other["recognition"]) - ce) > 1e-4
  # the auxiliary head's weight is the config's (config.recognizer.loss.aux_weight)
  method, modules, frozen, state = _built(_config("ra", **{"method.lam": 0.5, "recognizer.loss.aux_weight": 0.2}))
  _, m = jax.jit(method.train_step)(state, batch, frozen)
  np.testing.assert_allclose(float(m["recognition"]), np.mean(_np_image_ce(heads["out"], t)
                                                              + 0.2 * _np_image_ce(heads["aux"], t)), rtol=1e-5)


def _p_out(modules, state, batch):
  x = jnp.asarray(batch["input"], jnp.float32) / 255.0
  return modules["processor"].apply(state.variables("processor"), x, train=True, mutable=["batch_stats"])[0]


@pytest.mark.heavy   # 5-15 s of a 2-core CI; `python -m pytest -m heavy` runs it
@pytest.mark.parametrize("distance", ["prob_mse", "feature_mse"])
def test_unsupervised_ra_with_a_segmenter_compares_its_outputs_on_p_output_and_clean_image(distance):
  method, modules, frozen, state = _built(_config("unsupervised", **{"method.distance": distance}))
  batch = _batch(2)
  _, m = jax.jit(method.train_step)(state, batch, frozen)
  s = frozen["recognizer"]
  out, y = _p_out(modules, state, batch), jnp.asarray(batch["target"], jnp.float32) / 255.0
  if distance == "prob_mse":
    p, q = (np.exp(_np_log_softmax(s(im))) for im in (out, y))
    expected = np.mean((p - q) ** 2)
  else:
    fo, fy = s.features(out), s.features(y)
    expected = sum(np.mean((np.asarray(fo[n], np.float64) - np.asarray(fy[n])) ** 2) for n in ("conv1", "conv2"))
  np.testing.assert_allclose(float(m["recognition"]), expected, rtol=1e-4)
  assert "miou" in m


@pytest.mark.heavy   # 5-15 s of a 2-core CI; `python -m pytest -m heavy` runs it
def test_ra_with_unlabelled_images_trains_on_the_segmenters_own_label_maps_of_the_clean_image():
  method, modules, frozen, state = _built(_config("ra", labels="recognizer", **{"method.lam": 1.0}))
  batch = {k: v for k, v in _batch(3).items() if k != "label_map"}
  _, m = jax.jit(method.train_step)(state, batch, frozen)
  s = frozen["recognizer"]
  pseudo = np.asarray(s(jnp.asarray(batch["target"], jnp.float32) / 255.0)).argmax(-1)
  heads = s.heads(_p_out(modules, state, batch))[0]
  ce = np.mean(_np_image_ce(heads["out"], pseudo) + 0.5 * _np_image_ce(heads["aux"], pseudo))
  np.testing.assert_allclose(float(m["recognition"]), ce, rtol=1e-5)


@pytest.mark.heavy   # 5-15 s of a 2-core CI; `python -m pytest -m heavy` runs it
def test_evaluation_steps_score_the_segmentation_of_the_methods_machine_images():
  method, modules, frozen, state = _built(_config("ra"))
  batch = dict(_batch(4), mask=np.array([1, 0]))
  sums = jax.jit(methods.make_eval_step(method, modules))(state, batch, frozen)
  outputs, targets = jax.jit(methods.make_predict_step(method, modules))(state, batch, frozen)
  seen = method.forward(state.all_variables(), frozen, jnp.asarray(batch["input"], jnp.float32) / 255.0)["machine"]
  logits = np.asarray(frozen["recognizer"](seen))
  np.testing.assert_allclose(outputs, logits, rtol=1e-5, atol=1e-6)
  t = batch["label_map"]
  correct = ((logits.argmax(-1) == t) & (t != IGNORE)).sum((1, 2))
  assert float(sums["count"]) == 1.0
  np.testing.assert_allclose(float(sums["correct_pixels"]), correct[0])
  ev = seg.Evaluator.for_segmenter(frozen["recognizer"])
  ev.add(outputs, targets, mask=batch["mask"])
  np.testing.assert_array_equal(ev.matrix, _np_confusion(logits.argmax(-1), t, batch["mask"]))
  # the step's own confusion matrix (what the trainer adds up): the unmasked image's pixels only
  np.testing.assert_array_equal(sums["counts"]["confusion"], _np_confusion(logits.argmax(-1), t, batch["mask"]))


def test_a_segmenter_trained_on_clean_images_takes_its_own_sgd_step_on_its_loss():
  """recognizer_on_clean with a segmenter (SR4IR's task network, a segmenter trained on processed images
  as a baseline): R's parameters take exactly one SGD step on its per-pixel CE (with the aux head) of the
  clean images, its BatchNorm statistics move, and P is not trained."""
  cfg = _config("recognizer_on_clean", **{"optim.recognizer.name": "sgd", "optim.recognizer.momentum": 0.0,
                                          "optim.recognizer.lr": 0.1, "optim.recognizer.weight_decay": 0.0})
  method, modules, frozen, state = _built(cfg)
  assert "recognizer" in method.spec.trains and "processor" not in method.spec.trains
  batch = _batch(4)
  new, m = jax.jit(method.train_step)(state, batch, frozen)
  segmenter = modules["recognizer"]
  y = jnp.asarray(batch["target"], jnp.float32) / 255.0
  t = jnp.asarray(batch["label_map"])
  params0 = state.params["recognizer"]

  stats0 = state.variables("recognizer")["batch_stats"]

  def loss(p):
    per, _, _, _ = seg.loss(segmenter, y, t, variables={"params": p, "batch_stats": stats0}, train=True)
    return jnp.mean(per)
  g = jax.grad(loss)(params0)
  expected = jax.tree.map(lambda p, d: p - 0.1 * d, params0, g)
  chex.assert_trees_all_close(new.params["recognizer"], expected, rtol=1e-4, atol=1e-6)
  moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                       new.batch_stats["recognizer"], state.batch_stats["recognizer"])
  assert any(jax.tree.leaves(moved))


def test_sharded_step_with_a_trained_segmenter_equals_the_single_device_step():
  """8 fake devices agree with one when the segmenter is trained with P (ra_joint): parameters and
  BatchNorm statistics of both networks, and the logged metrics."""
  cfg = _config("ra_joint", **{"optim.processor.name": "sgd", "data.batch_size": 8, "data.eval_batch_size": 8})
  m1, _, f1, s1 = _built(cfg)
  m8, _, f8, s8 = _built(cfg)
  mesh = sharding.make_mesh(8)
  rep, bat = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  rng = np.random.default_rng(7)
  batch = {"input": rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8),
           "target": rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
           "label_map": np.concatenate([_labels(s, h=16, w=16, ignored=40) for s in range(4)])}
  a, ma = jax.jit(m1.train_step)(s1, batch, f1)
  with jax.set_mesh(mesh):
    b, mb = jax.jit(m8.train_step, in_shardings=(rep, bat, rep), out_shardings=(rep, rep))(
        jax.device_put(s8, rep), sharding.global_batch(batch, mesh), jax.device_put(f8, rep))
  chex.assert_trees_all_close(jax.device_get(a.params), jax.device_get(b.params), rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(jax.device_get(a.batch_stats), jax.device_get(b.batch_stats), rtol=1e-4, atol=1e-5)
  for k in ma:
    np.testing.assert_allclose(float(ma[k]), float(mb[k]), rtol=1e-4, err_msg=k)


def test_a_negative_aux_weight_in_the_config_is_refused_naming_the_field():
  config_lib.validate(_config("ra"))
  with pytest.raises(ValueError, match=r"recognizer\.loss\.aux_weight=-0\.5 must be a number >= 0"):
    config_lib.validate(_config("ra", **{"recognizer.loss.aux_weight": -0.5}))
