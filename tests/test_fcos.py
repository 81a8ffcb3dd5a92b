"""rajax's FCOS against torchvision's, on the same seeded weights.

tests/reference/make_fcos.py ran torchvision 0.29.1 once (see its docstring) and recorded, for two
photos: the transform, the FPN maps (P3..P5, P6, P7), the head outputs, the anchors, the final
detections, the matched box of every anchor and the three training losses (with two and three
boxes, with an image without boxes, and with centre radius 1.0). The weights are drawn from the
entry name and each torch key by tests/seeded_state_dict.py and loaded through rajax's torch-key
map, so the comparisons also check that map. Default tests compile two programs (inference; loss
with its input gradient) of the small entry; the ResNet-50 entry is heavy.
"""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import seeded_state_dict
from rajax.detection import fcos
from rajax.detection.detector import Detector
from rajax.detection.types import BoxTargets
from rajax.weights import convert

FIXTURE = pathlib.Path(__file__).resolve().parent / "reference" / "fcos.npz"
GN = r"head\.\w+_head\.conv\.(1|4|7|10)\."
RULES = {"small": [[GN + "weight", 0.5, 1.5], [GN + "bias", -0.3, 0.3],
                   [r"backbone\.body\.layer\d+\.\d+\.bn2\.weight", 0.1, 0.3],
                   [r"head\.classification_head\.cls_logits\.weight", -0.03, 0.03],
                   [r"head\.classification_head\.cls_logits\.bias", -2.0, -1.0],
                   [r"head\.regression_head\.bbox_reg\.weight", -0.03, 0.03],
                   [r"head\.regression_head\.bbox_reg\.bias", 0.5, 1.5],
                   [r"head\.regression_head\.bbox_ctrness\.weight", -0.03, 0.03]],
         "r50": [[GN + "weight", 0.5, 1.5], [GN + "bias", -0.3, 0.3],
                 [r"backbone\.body\.layer\d+\.\d+\.bn3\.weight", 0.1, 0.3],
                 [r"head\.classification_head\.cls_logits\.weight", -0.01, 0.01],
                 [r"head\.classification_head\.cls_logits\.bias", -3.0, -1.0],
                 [r"head\.regression_head\.bbox_reg\.weight", -0.01, 0.01],
                 [r"head\.regression_head\.bbox_reg\.bias", 0.5, 1.5],
                 [r"head\.regression_head\.bbox_ctrness\.weight", -0.01, 0.01]]}
CONFIGS = {
    "small": fcos.Config(backbone="resnet18", num_classes=5, fpn_channels=64, min_size=96, max_size=160,
                         topk_candidates=30),
    "r50": fcos.Config(num_classes=91, min_size=96, max_size=160),
}
TARGETS = [([[10.0, 8.0, 60.0, 50.0], [20.0, 15.0, 50.0, 45.0]], [1, 3]),
           ([[0.0, 0.0, 40.0, 30.0], [30.0, 25.0, 95.5, 70.0], [70.0, 5.0, 104.0, 40.0]], [2, 4, 1])]
EMPTY = [TARGETS[0], ([], [])]
TERMS = ("classification", "bbox_regression", "bbox_ctrness")


@functools.lru_cache(maxsize=None)
def fixture() -> dict:
  with np.load(FIXTURE) as f:
    return {k: f[k] for k in f.files}


def rec(entry: str) -> dict:
  p = f"{entry}/"
  return {k[len(p):]: v for k, v in fixture().items() if k.startswith(p)}


def images() -> jnp.ndarray:
  return jnp.asarray(fixture()["photos"], jnp.float32) / 255.0


def targets(sets=TARGETS, n: int = 3) -> BoxTargets:
  boxes = np.zeros((len(sets), n, 4), np.float32)
  labels = np.zeros((len(sets), n), np.int32)
  valid = np.zeros((len(sets), n), bool)
  for i, (b, l) in enumerate(sets):
    if b:
      boxes[i, :len(b)], labels[i, :len(l)], valid[i, :len(b)] = b, l, True
  return BoxTargets(jnp.asarray(boxes), jnp.asarray(labels), jnp.asarray(valid), jnp.zeros_like(jnp.asarray(valid)))


@functools.lru_cache(maxsize=None)
def detector(entry: str) -> Detector:
  model = fcos.FCOS(CONFIGS[entry])
  keys = json.loads(str(rec(entry)["keys"]))
  sd = seeded_state_dict.values(entry, keys, RULES[entry])
  template = jax.eval_shape(lambda: model.init(jax.random.key(0)))
  variables = convert.from_torch(sd, template, fcos.torch_key_fn(model.cfg), source=f"seeded {entry}")
  return Detector(name=entry, model=model, variables=jax.tree.map(jnp.asarray, variables))


@functools.lru_cache(maxsize=None)
def eval_outputs(entry: str):
  """One compiled program: the Detector (a pytree) in, every intermediate and the detections out."""

  @jax.jit
  def go(det, x):
    out = det.model.run(det.variables, x)
    keep = ("image", "features", "cls_logits", "bbox_regression", "bbox_ctrness")
    return {k: out[k] for k in keep}, det.model.postprocess(out, x.shape[1:3])

  return jax.device_get(go(detector(entry), images()))


@functools.partial(jax.jit, static_argnames=("radius",))
def _loss_and_grad(det, x, tg, radius=None):
  """Detector.loss (the contract's per-image [B]) with its gradient w.r.t. the images, and the matches."""
  def f(x):
    if radius is None:
      total, terms, _ = det.loss(x, tg)
    else:
      terms = det.model.run(det.variables, x, targets=tg, radius=radius)["terms"]
      total = sum(terms.values())
    return jnp.mean(total), (total, terms)
  (_, (total, terms)), grad = jax.value_and_grad(f, has_aux=True)(x)
  return total, terms, grad


@functools.lru_cache(maxsize=None)
def train_outputs(entry: str, sets: str = "loss"):
  tg = targets(EMPTY if sets == "loss_empty" else TARGETS)
  return jax.device_get(_loss_and_grad(detector(entry), images(), tg))


@functools.partial(jax.jit, static_argnames=("radius", "per_image_norm"))
def head_losses(radius: float = 1.5, per_image_norm: bool = False):
  """The loss terms from torch's recorded head outputs (no network): matching and losses alone."""
  r = rec("small")
  model = detector("small").model
  b, h, w = 2, 80, 106
  tg = targets()
  gt = tg.boxes * model._ratios(h, w, inverse=False)
  anchors = r["anchors"]
  counts = [12 * 16, 6 * 8, 3 * 4, 2 * 2, 1]
  matched = fcos.match(anchors, counts, gt, tg.valid, radius=radius)
  args = (jnp.asarray(r["cls_logits"]), jnp.asarray(r["bbox_regression"]), jnp.asarray(r["bbox_ctrness"]),
          jnp.asarray(anchors), matched, gt, tg.labels)
  if not per_image_norm:
    return matched, fcos.losses(*args)
  # The wrong normaliser: each image over its own positives (the anchors are shared by the images).
  terms = [fcos.losses(*(a if j == 3 else a[i:i + 1] for j, a in enumerate(args))) for i in range(b)]
  return matched, {k: jnp.concatenate([t[k] for t in terms]) for k in TERMS}


# ---------------------------------------------------------------------------------------- inference
@pytest.mark.heavy   # 5-10 s of a 2-core CI; `python -m pytest -m heavy` runs it
def test_transform_fpn_p6_p7_and_head_outputs_match_torchvision():
  out, _ = eval_outputs("small")
  r = rec("small")
  np.testing.assert_allclose(out["image"], r["image"], atol=1e-5)
  assert list(out["features"]) == ["0", "1", "2", "p6", "p7"]
  for k, v in out["features"].items():
    np.testing.assert_allclose(v, r[f"fpn/{k}"], rtol=1e-4, atol=2e-4, err_msg=k)
  for k in ("cls_logits", "bbox_regression", "bbox_ctrness"):
    np.testing.assert_allclose(out[k], r[k], rtol=1e-4, atol=5e-5, err_msg=k)
  # P6 is computed from P5 (torchvision's LastLevelP6P7(C, C)), not from C5: its convolution takes the
  # FPN's 64 channels (C5 has 512; the layout test pins 256 -> 256 for fcos_resnet50_fpn).
  assert detector("small").variables["params"]["backbone"]["fpn"]["p6"]["kernel"].shape == (3, 3, 64, 64)


def test_anchors_are_one_stride_sized_box_per_location():
  det = detector("small")
  levels = det.model.anchors([(12, 16), (6, 8), (3, 4), (2, 2), (1, 1)], (96, 128))
  np.testing.assert_array_equal(np.concatenate(levels), rec("small")["anchors"])
  np.testing.assert_array_equal(levels[0][:2], [[-4, -4, 4, 4], [4, -4, 12, 4]])


def test_detections_match_torchvision():
  _, dets = eval_outputs("small")
  r = rec("small")
  for i, n in enumerate(r["det_counts"]):
    assert int(dets.valid[i].sum()) == n
    np.testing.assert_allclose(dets.scores[i, :n], r["det_scores"][i, :n], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dets.boxes[i, :n], r["det_boxes"][i, :n], atol=1e-3)
    np.testing.assert_array_equal(dets.labels[i, :n], r["det_labels"][i, :n])
  # The threshold and the per-level cut both act in this case: some (anchor, class) scores are under
  # 0.2, and level 0 has more candidates (192 x 5) than topk_candidates (30).
  out, _ = eval_outputs("small")
  scores = np.sqrt(jax.nn.sigmoid(out["cls_logits"]) * jax.nn.sigmoid(out["bbox_ctrness"])[..., None])
  assert (scores < 0.2).any() and (scores[:, :192] > 0.2).sum(axis=(1, 2)).min() > 30


def test_detections_without_the_per_level_cut_differ():
  """Negative control: top-k over all levels at once (or no cut) is not torchvision's selection."""
  det = detector("small")
  out, dets = eval_outputs("small")
  anchors = [np.concatenate(det.model.anchors([(12, 16), (6, 8), (3, 4), (2, 2), (1, 1)], (96, 128)))]
  post = jax.jit(lambda c, r, t: fcos.postprocess_levels(c, r, t, anchors, (96, 127), topk_candidates=30))
  _, scores, _, _ = post(out["cls_logits"], out["bbox_regression"], out["bbox_ctrness"])
  assert not np.array_equal(np.asarray(scores), dets.scores)


# ---------------------------------------------------------------------------------------- training
def test_matches_and_losses_match_torchvision():
  r = rec("small")
  total, terms, grad = train_outputs("small")
  for k in TERMS:
    assert terms[k].shape == (2,)
    np.testing.assert_allclose(np.mean(terms[k]), r[f"loss/{k}"], rtol=1e-5, err_msg=k)
  np.testing.assert_allclose(total, sum(terms[k] for k in TERMS), rtol=1e-6)
  matched, _ = head_losses()
  np.testing.assert_array_equal(np.asarray(matched), r["loss/matched"])
  # The two overlapping boxes of image 0 both cover some anchors: the smaller one (label 3) wins there.
  assert (r["loss/matched"][0] == 1).sum() > 0
  # A finite, non-zero gradient reaches the images.
  assert np.isfinite(grad).all() and np.abs(grad).max() > 0


def test_losses_with_an_image_without_boxes_match_torchvision():
  r = rec("small")
  total, terms, grad = train_outputs("small", "loss_empty")
  for k in TERMS:
    np.testing.assert_allclose(np.mean(terms[k]), r[f"loss_empty/{k}"], rtol=1e-5, err_msg=k)
  assert float(terms["bbox_regression"][1]) == 0.0 and float(terms["bbox_ctrness"][1]) == 0.0
  assert float(terms["classification"][1]) > 0.0      # every anchor of the empty image is a negative
  assert np.isfinite(grad).all() and np.abs(grad[1]).max() > 0


def test_centre_radius_and_normaliser_are_torchvision_s():
  r = rec("small")
  # The matching and the losses alone, on torch's recorded head outputs: radius 1.5 gives torch's terms,
  # radius 1.0 gives torch's terms for center_sampling_radius=1.0 and not the default's.
  _, t15 = head_losses(1.5)
  _, t10 = head_losses(1.0)
  for k in TERMS:
    np.testing.assert_allclose(float(jnp.mean(t15[k])), r[f"loss/{k}"], rtol=2e-5, err_msg=k)
    np.testing.assert_allclose(float(jnp.mean(t10[k])), r[f"loss_r1/{k}"], rtol=2e-5, err_msg=k)
  assert abs(float(jnp.mean(t10["classification"])) - float(r["loss/classification"])) > 0.1
  # Negative control: normalising each image by its own positives (9 and 27 here) is not the batch's.
  _, per_image = head_losses(1.5, per_image_norm=True)
  assert abs(float(jnp.mean(per_image["classification"])) - float(r["loss/classification"])) > 0.05


def test_loss_refuses_boxes_outside_the_image():
  det = detector("small")
  bad = targets([([[10.0, 8.0, 160.0, 50.0]], [1]), ([], [])])
  with pytest.raises(ValueError, match="outside the 80x106 image"):
    det.loss(images(), bad)


# ---------------------------------------------------------------------------------------- zoo, weights
def test_zoo_builds_fcos_from_a_torchvision_checkpoint(tmp_path):
  from safetensors.numpy import save_file

  from rajax.detection import zoo
  from rajax.tasks import detection as task
  from rajax.weights import WeightsError

  assert "fcos_resnet50_fpn" in zoo.available()
  keys = json.loads(str(rec("small")["keys"]))
  sd = seeded_state_dict.values("small", keys, RULES["small"])
  path = tmp_path / "small.safetensors"
  save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path))
  det = zoo.build("fcos_resnet50_fpn", str(path), num_classes=5, backbone="resnet18", fpn_channels=64,
                  min_size=96, max_size=160, topk_candidates=30)
  jax.tree.map(np.testing.assert_array_equal, det.variables, detector("small").variables)
  # The contract, traced only: per-image losses through the task, named feature maps.
  total, terms, stats = jax.eval_shape(lambda d, x: task.loss(d, x, targets()), det, images())
  assert total.shape == (2,) and set(terms) == set(TERMS)
  assert jax.tree.structure(stats) == jax.tree.structure(det.variables["batch_stats"])
  feats = jax.eval_shape(lambda d, x: d.features(x), det, images())
  assert {k: v.shape[1:] for k, v in feats.items() if not k.startswith("body/")} == {
      "0": (12, 16, 64), "1": (6, 8, 64), "2": (3, 4, 64), "p6": (2, 2, 64), "p7": (1, 1, 64)}
  with pytest.raises(WeightsError, match="missing keys|unexpected keys|wrong shapes"):
    zoo.build("fcos_resnet50_fpn", str(path), num_classes=5)
  with pytest.raises(ValueError, match="num_classes"):
    zoo.build("fcos_resnet50_fpn", None, num_classes=1)
  with pytest.raises(ValueError, match="Unknown FCOS options"):
    zoo.build("fcos_resnet50_fpn", None, min_sise=96)


def test_fcos_resnet50_fpn_variables_map_one_to_one_onto_torchvision_s_state_dict():
  model = fcos.FCOS(fcos.Config())
  template = jax.eval_shape(lambda: model.init(jax.random.key(0)))
  torch_key = fcos.torch_key_fn(model.cfg)
  got = {}
  for path, leaf in traverse_util.flatten_dict(template).items():
    collection, *module, kind = path
    got[f"{torch_key('/'.join(module))}.{convert._LEAF_TO_TORCH[(collection, kind)]}"] = tuple(leaf.shape)
  want = {k: tuple(s) for k, s in json.loads(str(fixture()["layout"])) if not k.endswith("num_batches_tracked")}
  assert set(got) == set(want), sorted(set(got) ^ set(want))[:10]
  for k, shape in want.items():
    if len(shape) == 4:
      shape = (shape[2], shape[3], shape[1], shape[0])
    assert got[k] == shape, (k, got[k], shape)
  # P6 takes P5's 256 channels (LastLevelP6P7(256, 256)), not C5's 2048.
  assert want["backbone.fpn.extra_blocks.p6.weight"] == (256, 256, 3, 3)
  # The head's prior: cls_logits bias -log(99), every other head conv N(0, 0.01) with zero bias.
  init = fcos.Head(model.cfg).init(jax.random.key(0), [jnp.zeros((1, 4, 4, 256))])["params"]
  np.testing.assert_allclose(init["classification_head"]["cls_logits"]["bias"], -np.log(99.0), rtol=1e-6)
  kernel = np.asarray(init["regression_head"]["tower"]["conv_0"]["kernel"])
  assert abs(kernel.std() - 0.01) < 5e-4 and not np.any(init["regression_head"]["tower"]["conv_0"]["bias"])


# ---------------------------------------------------------------------------------------- heavy
@pytest.mark.heavy
def test_fcos_resnet50_fpn_detections_and_losses_match_torchvision():
  r = rec("r50")
  _, dets = eval_outputs("r50")
  for i, n in enumerate(r["det_counts"]):
    assert int(dets.valid[i].sum()) == n
    np.testing.assert_allclose(dets.scores[i, :n], r["det_scores"][i, :n], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dets.boxes[i, :n], r["det_boxes"][i, :n], atol=2e-3)
  for sets in ("loss", "loss_empty"):
    _, terms, grad = train_outputs("r50", sets)
    for k in TERMS:
      np.testing.assert_allclose(np.mean(terms[k]), r[f"{sets}/{k}"], rtol=1e-4, err_msg=(sets, k))
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0


@pytest.mark.heavy
def test_random_fcos_resnet50_fpn_builds_and_detects():
  from rajax.detection import zoo
  det = zoo.build("fcos_resnet50_fpn", "random", min_size=None)
  dets = jax.jit(lambda d, x: d(x))(det, jnp.zeros((1, 64, 64, 3)) + 0.5)
  assert dets.boxes.shape == (1, 100, 4)
