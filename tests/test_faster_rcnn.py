"""rajax's Faster R-CNN against torchvision's, piece by piece, on the same seeded weights.

tests/reference/make_faster_rcnn.py ran torchvision once (see its docstring) and recorded every
stage for two photos: the transform, the FPN maps, anchors, RPN outputs, proposals, RoIAlign,
the box branch, the final detections, and the four training losses given torch's own samples
(injected here). The weights are drawn from the entry name and each torch key by
tests/seeded_state_dict.py and loaded through rajax's torch-key map, so the comparisons also
check that map. Negative controls show that the comparisons catch the mistakes they name
(aligned RoIAlign, a wrong level mapping, unrounded anchors, a shifted resize).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seeded_state_dict
from rajax.detection import anchors as anchors_lib
from rajax.detection import faster_rcnn as frcnn
from rajax.detection import roi_align
from rajax.detection.detector import Detector
from rajax.detection.types import BoxTargets
from rajax.weights import convert

FIXTURE = pathlib.Path(__file__).resolve().parent / "reference" / "faster_rcnn.npz"
# The last BatchNorm of each residual branch scales it down (as tests/seeded_state_dict.py explains), and
# the RPN's and the predictor's last layers are drawn small, so that objectness, deltas and class scores
# have the spread of a trained detector's (He-uniform values there give deltas of +-20 and scores of 1.0).
RULES = {"small": [[r"backbone\.body\.layer\d+\.\d+\.bn2\.weight", 0.1, 0.3],
                   [r"rpn\.head\.(cls_logits|bbox_pred)\.weight", -0.02, 0.02],
                   [r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.weight", -0.08, 0.08]],
         "v2": [[r"backbone\.body\.layer\d+\.\d+\.bn2\.weight", 0.1, 0.3],
                [r"rpn\.head\.(cls_logits|bbox_pred)\.weight", -0.02, 0.02],
                [r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.weight", -0.08, 0.08]],
         "vgg": [[r"rpn\.head\.(cls_logits|bbox_pred)\.weight", -0.005, 0.005],
                 [r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.weight", -0.08, 0.08]],
         "r50": [[r"backbone\.body\.layer\d+\.\d+\.bn3\.weight", 0.1, 0.3],
                 [r"rpn\.head\.(cls_logits|bbox_pred)\.weight", -0.005, 0.005],
                 [r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.weight", -0.02, 0.02]]}
CONFIGS = {
    "small": frcnn.Config(backbone="resnet18", num_classes=5, fpn_channels=32, representation_size=64,
                          min_size=96, max_size=160, frozen_bn_eps=0.0),
    "v2": frcnn.Config(backbone="resnet18", num_classes=5, fpn_channels=32, representation_size=64,
                       min_size=96, max_size=160, v2=True),
    "vgg": frcnn.Config(num_classes=5, representation_size=64, min_size=96, max_size=160,
                        **frcnn._tuples(frcnn.ARCHS["fasterrcnn_vgg16"])),
    "r50": frcnn.Config(backbone="resnet50", num_classes=91, min_size=96, max_size=160, frozen_bn_eps=0.0),
}
TARGETS = [([[10.0, 8.0, 60.0, 50.0], [50.5, 20.25, 100.0, 78.0]], [1, 3]),
           ([[0.0, 0.0, 40.0, 30.0], [30.0, 25.0, 95.5, 70.0], [70.0, 5.0, 104.0, 40.0]], [2, 4, 1])]


@functools.lru_cache(maxsize=None)
def fixture() -> dict:
  with np.load(FIXTURE) as f:
    return {k: f[k] for k in f.files}


def rec(entry: str) -> dict:
  p = f"{entry}/"
  return {k[len(p):]: v for k, v in fixture().items() if k.startswith(p)}


def images() -> jnp.ndarray:
  return jnp.asarray(fixture()["photos"], jnp.float32) / 255.0


def targets() -> BoxTargets:
  n = max(len(b) for b, _ in TARGETS)
  boxes = np.zeros((len(TARGETS), n, 4), np.float32)
  labels = np.zeros((len(TARGETS), n), np.int32)
  valid = np.zeros((len(TARGETS), n), bool)
  for i, (b, l) in enumerate(TARGETS):
    boxes[i, :len(b)], labels[i, :len(l)], valid[i, :len(b)] = b, l, True
  return BoxTargets(jnp.asarray(boxes), jnp.asarray(labels), jnp.asarray(valid), jnp.zeros_like(jnp.asarray(valid)))


CONFIGS["v2_2048"] = dataclasses.replace(CONFIGS["v2"], box_batch_size_per_image=2048)
WEIGHTS_OF = {"v2_2048": "v2"}  # the same torch model, sampling up to 2048 RoIs per image


@functools.lru_cache(maxsize=None)
def model_and_variables(entry: str):
  model = frcnn.FasterRCNN(CONFIGS[entry])
  source = WEIGHTS_OF.get(entry, entry)
  keys = json.loads(str(rec(source)["keys"]))
  sd = seeded_state_dict.values(source, keys, RULES[source])
  template = jax.eval_shape(lambda: model.init(jax.random.key(0)))
  variables = convert.from_torch(frcnn.rename_torch_keys(sd), template, frcnn.torch_key_fn(model.cfg),
                                 source=f"seeded {entry}")
  return model, jax.tree.map(jnp.asarray, variables)


@functools.lru_cache(maxsize=None)
def eval_outputs(entry: str):
  model, variables = model_and_variables(entry)

  # One compiled program for everything: the Detector itself is the jitted function's argument (a
  # pytree of its variables), and `detect` is `postprocess(run(...))`.
  detector = Detector(name=entry, model=model, variables=variables)

  @jax.jit
  def go(det, x):
    out = det.model.run(det.variables, x, train=False)
    dets = det.model.postprocess(out, x.shape[1:3])
    keep = ("image", "features", "objectness", "rpn_deltas", "proposals", "proposal_valid", "pooled",
            "class_logits", "box_deltas")
    return {k: out[k] for k in keep}, dets

  return jax.device_get(go(detector, images()))


@functools.lru_cache(maxsize=None)
def train_outputs(entry: str):
  """Losses with torch's samples injected, and their gradient with respect to the input images."""
  model, variables = model_and_variables(entry)
  r = rec(entry)
  samples = {"rpn": (jnp.asarray(r["rpn_pos"]), jnp.asarray(r["rpn_neg"])),
             "roi": (jnp.asarray(r["roi_pos"]), jnp.asarray(r["roi_neg"]))}

  @jax.jit
  def go(v, x):
    def f(x):  # what model.loss sums, with the intermediates it drops
      out = model.run(v, x, train=True, bn_train=False, targets=targets(), samples=samples)
      return jnp.mean(sum(out["terms"].values())), (out["terms"], out["proposals"], out["proposal_valid"])
    (value, (terms, proposals, valid)), grad = jax.value_and_grad(f, has_aux=True)(x)
    return value, terms, grad, proposals, valid

  return jax.device_get(go(variables, images()))


# ---------------------------------------------------------------------------------------- pieces
@pytest.mark.heavy   # 5-10 s of a 2-core CI; `python -m pytest -m heavy` runs it
def test_transform_resizes_normalises_and_pads_as_torchvision():
  out, _ = eval_outputs("small")
  r = rec("small")
  assert tuple(r["image_sizes"][0]) == (96, 127)
  assert out["image"].shape == r["image"].shape == (2, 96, 128, 3)
  np.testing.assert_allclose(out["image"], r["image"], atol=2e-5)


def test_resize_matches_torch_rule_on_a_hand_case():
  # 4 -> 6 pixels, align_corners=False: src = (i + 0.5) * 4/6 - 0.5, clamped at 0.
  m = frcnn._resize_matrix(4, 6)
  src = np.maximum((np.arange(6) + 0.5) * (4 / 6) - 0.5, 0)
  want = np.zeros((6, 4))
  for i, s in enumerate(src):
    lo = int(np.floor(s)); hi = min(lo + 1, 3)
    want[i, lo] += 1 - (s - lo); want[i, hi] += s - lo
  np.testing.assert_allclose(m, want, atol=1e-6)
  # Negative control: align_corners=True sampling (src = i * 3/5) is a different matrix.
  corners = np.zeros((6, 4))
  for i, s in enumerate(np.arange(6) * 3 / 5):
    lo = min(int(np.floor(s)), 2)
    corners[i, lo] += 1 - (s - lo); corners[i, lo + 1] += s - lo
  assert np.abs(m - corners).max() > 0.1


def test_fpn_maps_match_torchvision():
  out, _ = eval_outputs("small")
  r = rec("small")
  assert list(out["features"]) == ["0", "1", "2", "3", "pool"]
  for k in out["features"]:
    np.testing.assert_allclose(out["features"][k], r[f"fpn/{k}"], rtol=1e-4, atol=1e-4, err_msg=k)


def test_anchors_match_torchvision_exactly_and_unrounded_ones_do_not():
  model, _ = model_and_variables("small")
  shapes = [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2)]
  got = np.concatenate(model.anchors(shapes, (96, 128)))
  np.testing.assert_array_equal(got, rec("small")["anchors"])
  raw = np.concatenate(anchors_lib.grid_anchors(shapes, (96, 128), anchors_lib.DEFAULT_SIZES,
                                                anchors_lib.DEFAULT_RATIOS, rounded=False))
  assert np.abs(raw - rec("small")["anchors"]).max() > 0.1


def test_rpn_outputs_match_torchvision():
  out, _ = eval_outputs("small")
  r = rec("small")
  np.testing.assert_allclose(out["objectness"], r["objectness"], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["rpn_deltas"], r["rpn_deltas"], rtol=1e-4, atol=1e-4)


def _check_proposals(boxes, valid, want, counts, atol):
  for i, n in enumerate(counts):
    assert int(valid[i].sum()) == n, (i, int(valid[i].sum()), n)
    assert valid[i, :n].all()
    np.testing.assert_allclose(boxes[i, :n], want[i, :n], atol=atol)


def test_proposals_match_torchvision():
  out, _ = eval_outputs("small")
  r = rec("small")
  _check_proposals(out["proposals"], out["proposal_valid"], r["proposals"], r["proposal_counts"], 1e-3)


def test_roi_align_in_the_model_and_box_branch_match_torchvision():
  out, _ = eval_outputs("small")
  r = rec("small")
  # Pooled from rajax's proposals (within 1e-3 px of torch's), and exactly from torch's own.
  np.testing.assert_allclose(out["pooled"][:, :12], r["pooled12"], rtol=1e-3, atol=1e-3)
  levels = [jnp.asarray(out["features"][k]) for k in ("0", "1", "2", "3")]
  own = roi_align.multi_scale_roi_align(levels, jnp.asarray(r["proposals"][:, :12]), (96, 127))
  np.testing.assert_allclose(own, r["pooled12"], rtol=1e-4, atol=1e-4)
  for i, n in enumerate(r["proposal_counts"]):
    np.testing.assert_allclose(out["class_logits"][i, :n], r["class_logits"][i, :n], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["box_deltas"][i, :n], r["box_deltas"][i, :n], rtol=1e-4, atol=1e-4)


def test_detections_match_torchvision():
  _, dets = eval_outputs("small")
  r = rec("small")
  assert dets.boxes.shape == (2, 100, 4) and dets.valid.shape == (2, 100)
  for i, n in enumerate(r["det_counts"]):
    assert int(dets.valid[i].sum()) == n
    np.testing.assert_allclose(dets.scores[i, :n], r["det_scores"][i, :n], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(dets.labels[i, :n], r["det_labels"][i, :n])
    np.testing.assert_allclose(dets.boxes[i, :n], r["det_boxes"][i, :n], atol=2e-3)
    assert not dets.valid[i, n:].any()


def test_training_losses_equal_torchvision_given_its_samples_and_the_input_gradient_is_finite():
  value, terms, grad, proposals, valid = train_outputs("small")
  r = rec("small")
  _check_proposals(proposals, valid, r["train_proposals"], r["train_proposal_counts"], 1e-3)
  for k in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"):
    np.testing.assert_allclose(np.mean(terms[k]), r[f"loss/{k}"], rtol=1e-4, err_msg=k)
  total = sum(float(r[f"loss/{k}"]) for k in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier",
                                               "loss_box_reg"))
  np.testing.assert_allclose(value, total, rtol=1e-4)
  assert np.isfinite(grad).all() and np.abs(grad).max() > 0


@pytest.mark.parametrize("entry", [pytest.param("v2", marks=pytest.mark.heavy), "v2_2048"])
def test_v2_training_losses_and_batchnorm_statistics_match_torchvision(entry):
  """fasterrcnn_resnet50_fpn_v2's layout (BatchNorm in backbone, FPN and box head, 2-conv RPN head):
  training-mode losses with BatchNorm on batch statistics, and the running statistics it leaves
  (rajax's BatchNorm keeps the biased batch variance, torch the unbiased one: rtol 1e-3 on the
  variances of these large layers). v2_2048 samples up to 2048 RoIs, more than there are, so the
  box head's statistics must skip the padding slots (`v2` samples 512: no padding; heavy)."""
  model, variables = model_and_variables(entry)
  r = rec(entry)
  samples = {"rpn": (jnp.asarray(r["rpn_pos"]), jnp.asarray(r["rpn_neg"])),
             "roi": (jnp.asarray(r["roi_pos"]), jnp.asarray(r["roi_neg"]))}
  go = jax.jit(lambda v, x: model.loss(v, x, targets(), rng=None, train=True, samples=samples))
  total, terms, stats = jax.device_get(go(variables, images()))
  for k in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"):
    np.testing.assert_allclose(np.mean(terms[k]), r[f"loss/{k}"], rtol=1e-4, err_msg=k)
  paths = {"backbone.body.bn1": ("backbone", "body", "bn1"),
           "backbone.fpn.layer_blocks.0.1": ("backbone", "fpn", "layer_norm_0"),
           "roi_heads.box_head.0.1": ("box_head", "norm_0")}
  for torch_name, path in paths.items():
    node = stats
    for p in path:
      node = node[p]
    before = variables["batch_stats"]
    for p in path:
      before = before[p]
    assert np.abs(node["mean"] - before["mean"]).max() > 1e-3  # they moved
    np.testing.assert_allclose(node["mean"], r[f"stats/{torch_name}/mean"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(node["var"], r[f"stats/{torch_name}/var"], rtol=1e-3)


@pytest.mark.heavy
def test_vgg16_one_level_detector_matches_torchvision():
  """fasterrcnn_vgg16's layout: conv5_3 at stride 16, 15 anchors per location on one level, RoIAlign
  at scale 1/16 without level mapping (eval outputs; its losses: the test below). Heavy: by default
its layout (test_every_zoo_architecture_...) and one-level RoIAlign (test_roi_align_matches_...) run."""
  model, variables = model_and_variables("vgg")
  r = rec("vgg")
  out, dets = eval_outputs("vgg")
  np.testing.assert_array_equal(np.asarray(model.anchors([(6, 8)], (96, 128))[0]), r["anchors"])
  np.testing.assert_allclose(out["objectness"], r["objectness"], rtol=1e-4, atol=1e-4)
  _check_proposals(out["proposals"], out["proposal_valid"], r["proposals"], r["proposal_counts"], 1e-3)
  np.testing.assert_allclose(out["pooled"][:, :12, ..., :8], r["pooled12"], rtol=1e-3, atol=1e-3)
  for i, n in enumerate(r["det_counts"]):
    assert int(dets.valid[i].sum()) == n
    np.testing.assert_allclose(dets.scores[i, :n], r["det_scores"][i, :n], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dets.boxes[i, :n], r["det_boxes"][i, :n], atol=2e-3)


def test_every_zoo_architecture_has_torchvisions_state_dict_layout():
  """Each zoo name's Flax variables map one to one onto the torch names and shapes torchvision gives
  that architecture (recorded by the fixture script), so its checkpoints load strictly."""
  for name, options in frcnn.ARCHS.items():
    if options["backbone"] == "mobilenet_v3_large":
      continue  # its layouts are recorded and checked by test_faster_rcnn_mobilenet
    cfg = frcnn.Config(num_classes=91, **frcnn._tuples(options))
    model = frcnn.FasterRCNN(cfg)
    template = jax.eval_shape(lambda: model.init(jax.random.key(0)))
    torch_key = frcnn.torch_key_fn(cfg)
    got = {}
    for path, leaf in __import__("flax").traverse_util.flatten_dict(template).items():
      collection, *module, kind = path
      got[f"{torch_key('/'.join(module))}.{convert._LEAF_TO_TORCH[(collection, kind)]}"] = leaf.shape
    layout = json.loads(str(fixture()[f"layout/{name}"]))
    want = {k: tuple(s) for k, s, _ in layout if not k.endswith("num_batches_tracked")}
    assert set(got) == set(want), (name, sorted(set(got) ^ set(want))[:10])
    for k, shape in want.items():
      flax_shape = got[k]
      if len(shape) == 4:
        shape = (shape[2], shape[3], shape[1], shape[0])
      elif len(shape) == 2:
        shape = (shape[1], shape[0])
      assert tuple(flax_shape) == tuple(shape), (name, k, flax_shape, shape)


@pytest.mark.parametrize("extra", ["pool", "p6p7_p5", "p6p7_c5"])
def test_fpn_and_its_extra_blocks_match_torchvision(extra):
  """rajax.detection.fpn.FPN against torchvision.ops.FeaturePyramidNetwork with LastLevelMaxPool
  (Faster R-CNN) and LastLevelP6P7 from P5 or from C5 (RetinaNet, FCOS), on maps of odd sizes."""
  from rajax.detection import fpn as fpn_lib

  r = rec("fpn")
  feats = [jnp.asarray(r[f"c{i}"]) for i in range(3)]
  module = fpn_lib.FPN(in_channels=(8, 16, 32), out_channels=8, extra="pool" if extra == "pool" else "p6p7",
                       p6_from="c5" if extra == "p6p7_c5" else "p5")
  template = jax.eval_shape(lambda: module.init(jax.random.key(0), feats))
  sd = seeded_state_dict.values(f"fpn_{extra}", json.loads(str(r[f"{extra}/keys"])))
  variables = convert.from_torch(sd, template, fpn_lib.torch_key, source=extra)
  out = module.apply(variables, feats)
  want = {k.split("/")[-1]: v for k, v in r.items() if k.startswith(f"{extra}/out/")}
  assert list(out) == list(want)
  for k in want:
    np.testing.assert_allclose(out[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)


# ---------------------------------------------------------------------------------------- RoIAlign
def _roi_inputs():
  r = rec("roi")
  feats = [jnp.asarray(r[f"feat/{i}"]) for i in range(4)]
  return r, feats, jnp.asarray(r["boxes"])


def test_multiscale_roi_align_matches_torchvision_with_its_level_mapping():
  r, feats, boxes = _roi_inputs()
  np.testing.assert_array_equal(np.asarray(roi_align.map_levels(boxes, 2, 5)), r["levels"])
  got = roi_align.multi_scale_roi_align(feats, boxes, (256, 320))
  np.testing.assert_allclose(got, r["multiscale"], rtol=1e-5, atol=1e-5)
  # Negative control: a level mapping without the canonical level's offset (k0 = 3) differs.
  wrong = roi_align.map_levels(boxes, 2, 5, canonical_level=3.0)
  assert (np.asarray(wrong) != r["levels"]).any()


def test_roi_align_matches_torchvision_aligned_false_and_true():
  r, feats, boxes = _roi_inputs()
  got = roi_align.roi_align(feats[1], boxes, 7, spatial_scale=0.125, sampling_ratio=2, aligned=False)
  np.testing.assert_allclose(got, r["single"], rtol=1e-5, atol=1e-5)
  got_aligned = roi_align.roi_align(feats[1], boxes, 7, spatial_scale=0.125, sampling_ratio=2, aligned=True)
  np.testing.assert_allclose(got_aligned, r["aligned"], rtol=1e-5, atol=1e-5)
  # Negative control: aligned=True is not what Faster R-CNN's pooler computes.
  assert np.abs(np.asarray(got_aligned) - r["single"]).max() > 1e-2


def test_roi_align_gradient_reaches_the_features():
  _, feats, boxes = _roi_inputs()
  g = jax.grad(lambda fs: jnp.sum(roi_align.multi_scale_roi_align(fs, boxes, (256, 320)) ** 2))(feats)
  assert all(np.isfinite(np.asarray(x)).all() for x in g)
  assert sum(float(jnp.abs(x).sum() > 0) for x in g) >= 3  # the boxes use at least three levels


# ---------------------------------------------------------------------------------------- zoo, weights
def test_zoo_builds_from_a_torchvision_checkpoint_and_refuses_another_architecture(tmp_path):
  from safetensors.numpy import save_file

  from rajax.detection import zoo
  from rajax.weights import WeightsError

  assert {"fasterrcnn_resnet50_fpn", "fasterrcnn_resnet18_fpn", "fasterrcnn_resnet101_fpn",
          "fasterrcnn_vgg16"} <= set(zoo.available())
  keys = json.loads(str(rec("small")["keys"]))
  sd = seeded_state_dict.values("small", keys, RULES["small"])
  path = tmp_path / "small.safetensors"
  save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path))
  det = zoo.build("fasterrcnn_resnet18_fpn", str(path), num_classes=5, fpn_channels=32, representation_size=64,
                  min_size=96, max_size=160, frozen_bn_eps=0.0)
  _, want = model_and_variables("small")
  jax.tree.map(np.testing.assert_array_equal, det.variables, want)
  # The Detector contract, traced only (no compilation): sampled losses from an rng, per image;
  # the named feature maps; a clear error without an rng or injected samples.
  from rajax.tasks import detection as task
  total, terms, stats = jax.eval_shape(
      lambda d, x, k: task.loss(d, x, targets(), rng=k, train=True), det, images(), jax.random.key(0))
  assert total.shape == (2,) and set(terms) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier",
                                                "loss_box_reg"}
  assert jax.tree.structure(stats) == jax.tree.structure(det.variables["batch_stats"])
  feats = jax.eval_shape(lambda d, x: d.features(x), det, images())
  assert {k: v.shape[1:3] for k, v in feats.items()} == {
      "0": (24, 32), "1": (12, 16), "2": (6, 8), "3": (3, 4), "pool": (2, 2),
      "body/layer1": (24, 32), "body/layer2": (12, 16), "body/layer3": (6, 8), "body/layer4": (3, 4)}
  with pytest.raises(ValueError, match="rng"):
    jax.eval_shape(lambda d, x: d.loss(x, targets()), det, images())
  with pytest.raises(WeightsError, match="missing keys|unexpected keys|wrong shapes"):
    zoo.build("fasterrcnn_resnet50_fpn", str(path), num_classes=5)
  # An ImageNet classifier of the backbone (seeded ResNet-18 with torchvision's keys) loads into the body.
  cls_sd = seeded_state_dict.state_dict("resnet18")
  cls_path = tmp_path / "resnet18.safetensors"
  save_file({k: np.ascontiguousarray(v) for k, v in cls_sd.items()}, str(cls_path))
  with pytest.raises(WeightsError, match="backbone_weights"):
    zoo.build("fasterrcnn_resnet18_fpn", str(cls_path))
  cfg = frcnn.Config(backbone="resnet18")
  zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype),
                       jax.eval_shape(lambda: frcnn.FasterRCNN(cfg).init(jax.random.key(0))))
  loaded = frcnn._load_backbone(zeros, str(cls_path), cfg, "fasterrcnn_resnet18_fpn")  # what build does after init
  body = loaded["params"]["backbone"]["body"]
  np.testing.assert_array_equal(body["layer2_0"]["conv1"]["kernel"],
                                np.transpose(cls_sd["layer2.0.conv1.weight"], (2, 3, 1, 0)))
  np.testing.assert_array_equal(loaded["batch_stats"]["backbone"]["body"]["bn1"]["var"], cls_sd["bn1.running_var"])
  assert not np.any(loaded["params"]["rpn_head"]["cls_logits"]["kernel"])  # the rest untouched
  with pytest.raises(ValueError, match="num_classes"):
    zoo.build("fasterrcnn_resnet18_fpn", None, num_classes=1)
  with pytest.raises(ValueError, match="Unknown Faster R-CNN options"):
    zoo.build("fasterrcnn_resnet18_fpn", None, min_sise=96)


# ---------------------------------------------------------------------------------------- heavy
@pytest.mark.heavy
def test_vgg16_losses_match_torchvision():
  _, terms, grad, _, _ = train_outputs("vgg")
  for k in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"):
    np.testing.assert_allclose(np.mean(terms[k]), rec("vgg")[f"loss/{k}"], rtol=1e-4, err_msg=k)
  assert np.isfinite(grad).all() and np.abs(grad).max() > 0


@pytest.mark.heavy
def test_v2_detections_match_torchvision():
  model, variables = model_and_variables("v2")
  r = rec("v2")
  dets = jax.device_get(jax.jit(model.detect)(variables, images()))
  for i, n in enumerate(r["det_counts"]):
    assert int(dets.valid[i].sum()) == n
    np.testing.assert_allclose(dets.scores[i, :n], r["det_scores"][i, :n], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dets.boxes[i, :n], r["det_boxes"][i, :n], atol=2e-3)


@pytest.mark.heavy
def test_fasterrcnn_resnet50_fpn_structure_matches_torchvision():
  out, dets = eval_outputs("r50")
  r = rec("r50")
  np.testing.assert_allclose(out["objectness"], r["objectness"], rtol=1e-4, atol=1e-4)
  _check_proposals(out["proposals"], out["proposal_valid"], r["proposals"], r["proposal_counts"], 1e-3)
  np.testing.assert_allclose(out["pooled"][:, :12, ..., :8], r["pooled12"], rtol=1e-3, atol=1e-3)
  for i, n in enumerate(r["det_counts"]):
    assert int(dets.valid[i].sum()) == n
    np.testing.assert_allclose(dets.scores[i, :n], r["det_scores"][i, :n], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dets.boxes[i, :n], r["det_boxes"][i, :n], atol=2e-3)
  value, terms, grad, _, _ = train_outputs("r50")
  for k in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"):
    np.testing.assert_allclose(np.mean(terms[k]), r[f"loss/{k}"], rtol=1e-4, err_msg=k)
  assert np.isfinite(grad).all() and np.abs(grad).max() > 0


@pytest.mark.heavy
def test_random_samples_and_an_image_without_ground_truth():
  """The loss with its own random samples (rng), one image having no valid box: its box terms are
  0 (no positives), everything finite, the input gradient finite; sample sizes as torchvision's."""
  model, variables = model_and_variables("small")
  tg = targets()
  tg = tg._replace(valid=tg.valid.at[1].set(False))

  @jax.jit
  def go(v, x, key):
    def f(x):
      out = model.run(v, x, train=True, bn_train=False, targets=tg, rng=key)
      return jnp.mean(sum(out["terms"].values())), (out["terms"], out["rpn_sample"], out["roi_sample"])
    return jax.value_and_grad(f, has_aux=True)(x)

  (value, (terms, rpn_s, roi_s)), grad = jax.device_get(go(variables, images(), jax.random.key(1)))
  assert np.isfinite(value) and np.isfinite(grad).all() and np.abs(grad).max() > 0
  assert terms["loss_rpn_box_reg"][1] == 0 and terms["loss_box_reg"][1] == 0
  assert terms["loss_rpn_box_reg"][0] > 0 and terms["loss_box_reg"][0] > 0
  assert (rpn_s.positive.sum(1) <= 128).all() and ((rpn_s.positive | rpn_s.negative).sum(1) == 256).all()
  assert rpn_s.positive[1].sum() == 0 and roi_s.is_positive[1].sum() == 0
  assert (roi_s.is_positive.sum(1) <= 128).all() and (roi_s.valid.sum(1) == 512).all()
