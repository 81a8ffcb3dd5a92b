"""fasterrcnn_mobilenet_v3_large_fpn against torchvision's, on the same seeded weights.

tests/reference/make_faster_rcnn_mobilenet.py ran torchvision once with the detector's exact
structure (MobileNetV3-Large with FrozenBatchNorm2d, FPN over features 13 and 16 plus the max-pool
level, 15 anchors a location, rpn_score_thresh 0.05, 91 classes) on two photos resized to 96x127,
and recorded the RPN outputs, proposals, RoIAlign of the first proposals, detections and the four
losses given torch's own samples. Weights come from tests/seeded_state_dict.py through rajax's
torch-key map. One compiled program runs by default (eval); the losses with their gradient are heavy.
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
from rajax.detection import faster_rcnn as frcnn
from rajax.detection.detector import Detector
from rajax.models import mobilenet_v3
from rajax.weights import convert
from test_faster_rcnn import images, targets

FIXTURE = pathlib.Path(__file__).resolve().parent / "reference" / "faster_rcnn_mobilenet.npz"
RULES = [[r"backbone\.body\..*\.(bias|running_mean)", -0.05, 0.05],
         [r"backbone\.body\.\d+\.block\.\d+\.1\.weight", 0.6, 1.0],
         [r"rpn\.head\.(cls_logits|bbox_pred)\.weight", -0.1, 0.1],
         [r"roi_heads\.box_predictor\.cls_score\.bias", -3.0, 4.0],
         [r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.weight", -0.05, 0.05]]
NAME = "fasterrcnn_mobilenet_v3_large_fpn"


@functools.lru_cache(maxsize=None)
def fixture() -> dict:
  with np.load(FIXTURE) as f:
    return {k: f[k] for k in f.files}


def rec() -> dict:
  return {k[len("mobilenet/"):]: v for k, v in fixture().items() if k.startswith("mobilenet/")}


def config(**changes) -> frcnn.Config:
  return frcnn.Config(num_classes=91, min_size=96, max_size=160, **{**frcnn._tuples(frcnn.ARCHS[NAME]), **changes})


@functools.lru_cache(maxsize=None)
def detector() -> Detector:
  model = frcnn.FasterRCNN(config())
  sd = seeded_state_dict.values("mobilenet", json.loads(str(rec()["keys"])), RULES)
  template = jax.eval_shape(lambda: model.init(jax.random.key(0)))
  variables = convert.from_torch(frcnn.rename_torch_keys(sd), template, frcnn.torch_key_fn(model.cfg),
                                 source="seeded mobilenet")
  return Detector(name=NAME, model=model, variables=jax.tree.map(jnp.asarray, variables))


@functools.lru_cache(maxsize=None)
def eval_outputs():
  @jax.jit
  def go(det, x):
    out = det.model.run(det.variables, x, train=False)
    keep = ("features", "objectness", "rpn_deltas", "proposals", "proposal_valid", "pooled")
    return {k: out[k] for k in keep}, det.model.postprocess(out, x.shape[1:3])

  return jax.device_get(go(detector(), images()))


@pytest.mark.heavy   # 10-25 s of a 2-core CI; `python -m pytest -m heavy` runs it
def test_mobilenet_fpn_levels_rpn_and_proposals_match_torchvision():
  out, _ = eval_outputs()
  r = rec()
  # Features 13 and 16 are both at stride 32: two 3x4 FPN maps and the 2x2 pool level, 15 anchors each.
  assert {k: v.shape[1:] for k, v in out["features"].items()} == {"0": (3, 4, 256), "1": (3, 4, 256),
                                                                    "pool": (2, 2, 256)}
  np.testing.assert_array_equal(
      np.concatenate(detector().model.anchors([(3, 4), (3, 4), (2, 2)], (96, 128))), r["anchors"])
  np.testing.assert_allclose(out["objectness"], r["objectness"], rtol=1e-4, atol=1e-4)
  for i, n in enumerate(r["proposal_counts"]):
    assert int(out["proposal_valid"][i].sum()) == n
    np.testing.assert_allclose(out["proposals"][i, :n], r["proposals"][i, :n], atol=1e-3)
  np.testing.assert_allclose(out["pooled"][:, :12, ..., :8], r["pooled12"], rtol=1e-4, atol=1e-4)


def test_mobilenet_detections_match_torchvision():
  _, dets = eval_outputs()
  r = rec()
  for i, n in enumerate(r["det_counts"]):
    assert n > 0 and int(dets.valid[i].sum()) == n
    np.testing.assert_allclose(dets.scores[i, :n], r["det_scores"][i, :n], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dets.boxes[i, :n], r["det_boxes"][i, :n], atol=2e-3)


def test_mobilenet_rpn_score_threshold_is_0_05():
  assert detector().model.cfg.rpn_score_thresh == 0.05
  assert frcnn.ARCHS["fasterrcnn_mobilenet_v3_large_320_fpn"]["min_size"] == 320


@pytest.mark.parametrize("name", [NAME, "fasterrcnn_mobilenet_v3_large_320_fpn"])
def test_mobilenet_variables_map_one_to_one_onto_torchvision_s_state_dict(name):
  # Both MobileNetV3 detectors have one layout (the 320 one differs in its transform and RPN counts).
  assert {n for n, o in frcnn.ARCHS.items() if o["backbone"] == "mobilenet_v3_large"} == {
      NAME, "fasterrcnn_mobilenet_v3_large_320_fpn"}
  cfg = frcnn.Config(num_classes=91, **frcnn._tuples(frcnn.ARCHS[name]))
  template = jax.eval_shape(lambda: frcnn.FasterRCNN(cfg).init(jax.random.key(0)))
  torch_key = frcnn.torch_key_fn(cfg)
  got = {}
  for path, leaf in traverse_util.flatten_dict(template).items():
    collection, *module, kind = path
    got[f"{torch_key('/'.join(module))}.{convert._LEAF_TO_TORCH[(collection, kind)]}"] = tuple(leaf.shape)
  want = {k: tuple(s) for k, s in json.loads(str(fixture()["layout"])) if not k.endswith("num_batches_tracked")}
  assert set(got) == set(want), sorted(set(got) ^ set(want))[:10]
  for k, shape in want.items():
    if len(shape) == 4:
      shape = (shape[2], shape[3], shape[1], shape[0])
    elif len(shape) == 2:
      shape = (shape[1], shape[0])
    assert got[k] == shape, (k, got[k], shape)


def test_mobilenet_frozen_stages_follow_torchvision():
  # stage_indices [0, 2, 4, 7, 13, 16]: 3 trainable stages freeze features 0..6, 6 freeze none, 0 all.
  assert mobilenet_v3.STAGE_INDICES == (0, 2, 4, 7, 13, 16)
  assert mobilenet_v3.frozen_paths(3) == tuple(f"features_{i}" for i in range(7))
  assert mobilenet_v3.frozen_paths(6) == ()
  assert len(mobilenet_v3.frozen_paths(0)) == 17
  with pytest.raises(ValueError, match="0..6"):
    mobilenet_v3.frozen_paths(7)


@pytest.mark.heavy
def test_mobilenet_losses_match_torchvision_given_its_samples():
  det, r = detector(), rec()
  samples = {"rpn": (jnp.asarray(r["rpn_pos"]), jnp.asarray(r["rpn_neg"])),
             "roi": (jnp.asarray(r["roi_pos"]), jnp.asarray(r["roi_neg"]))}

  @jax.jit
  def go(v, x):
    def f(x):
      total, terms, _ = det.model.loss(v, x, targets(), rng=None, samples=samples)
      return jnp.mean(total), terms
    return jax.value_and_grad(f, has_aux=True)(x)

  (_, terms), grad = jax.device_get(go(det.variables, images()))
  for k in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"):
    np.testing.assert_allclose(np.mean(terms[k]), r[f"loss/{k}"], rtol=1e-4, err_msg=k)
  assert np.isfinite(grad).all() and np.abs(grad).max() > 0


@pytest.mark.heavy
def test_mobilenet_squeeze_excitation_gate_is_hardsigmoid(monkeypatch):
  """Negative control: a logistic SE gate (MobileNetV2-era SE) moves the RPN outputs well past the tolerance."""
  monkeypatch.setattr(mobilenet_v3, "hardsigmoid", jax.nn.sigmoid)
  det = detector()
  out = jax.jit(lambda d, x: d.model.run(d.variables, x, train=False)["objectness"])(det, images())
  assert np.abs(np.asarray(out) - rec()["objectness"]).max() > 1e-2


@pytest.mark.heavy
def test_random_mobilenet_detector_builds_from_the_zoo_and_detects():
  from rajax.detection import zoo
  det = zoo.build("fasterrcnn_mobilenet_v3_large_320_fpn", "random")
  assert det.model.cfg.min_size == 320 and det.model.cfg.rpn_post_nms_top_n_test == 150
  dets = jax.jit(lambda d, x: d(x))(det, jnp.full((1, 64, 96, 3), 0.5))
  assert dets.boxes.shape == (1, 100, 4) and np.isfinite(np.asarray(dets.boxes)).all()
