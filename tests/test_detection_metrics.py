"""Specifications of the detection metrics (VOC AP, COCO AP) and of the detection task module.

References: a VOC case whose AP is computed by hand below, and faster-coco-eval (a maintained
pycocotools implementation) on cases where its definitions and VOC's agree.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rajax import tasks
from rajax.detection import Detector, coco_eval, voc_eval
from rajax.detection.records import Records
from rajax.detection.types import BoxTargets, Detections
from rajax.tasks import detection as det_task


def pad(rows, n, width):
  out = np.zeros((n, width), np.float32)
  if rows:
    out[:len(rows)] = rows
  return out


def batch(images, n_gt=4, n_det=8):
  """BoxTargets and Detections (NumPy) from [(gts, dets)] with gts = [(box, label, difficult)] and
  dets = [(box, score, label)]; padding slots hold junk that must be ignored."""
  b = len(images)
  tb, tl = np.zeros((b, n_gt, 4), np.float32), np.zeros((b, n_gt), np.int32)
  tv, td = np.zeros((b, n_gt), bool), np.zeros((b, n_gt), bool)
  db, ds = np.zeros((b, n_det, 4), np.float32), np.zeros((b, n_det), np.float32)
  dl, dv = np.zeros((b, n_det), np.int32), np.zeros((b, n_det), bool)
  for i, (gts, dets) in enumerate(images):
    for j, (box, label, difficult) in enumerate(gts):
      tb[i, j], tl[i, j], tv[i, j], td[i, j] = box, label, True, difficult
    for j, (box, score, label) in enumerate(dets):
      db[i, j], ds[i, j], dl[i, j], dv[i, j] = box, score, label, True
    # junk in the padding: a perfect, top-scored detection of every ground truth
    for j in range(len(dets), n_det):
      if gts:
        db[i, j], ds[i, j], dl[i, j] = gts[0][0], 0.99, gts[0][1]
  return Detections(db, ds, dl, dv), BoxTargets(tb, tl, tv, td)


# Image A: class-1 ground truths g1, g2 and a difficult g3. Image B: class-1 g4 and class-2 g5.
IMAGE_A = ([((0, 0, 10, 10), 1, False), ((20, 20, 30, 30), 1, False), ((40, 40, 50, 50), 1, True)],
           [((0, 0, 10, 10), 0.9, 1),      # d1: TP (g1)
            ((0, 0, 10, 9), 0.8, 1),       # d2: IoU 0.9 with g1, taken already: FP
            ((40, 40, 50, 50), 0.7, 1),    # d3: on the difficult g3: ignored
            ((20, 20, 30, 26), 0.4, 1)])   # d6: IoU 0.6 with g2: TP
IMAGE_B = ([((0, 0, 10, 10), 1, False), ((0, 0, 10, 10), 2, False)],
           [((60, 60, 70, 70), 0.6, 1),    # d4: overlaps nothing: FP
            ((0, 0, 10, 10), 0.5, 1),      # d5: TP (g4)
            ((0, 0, 10, 10), 0.3, 2)])     # d7: TP (g5, class 2)
PADDING_IMAGE = ([((0, 0, 5, 5), 2, False)], [((30, 30, 35, 35), 0.95, 2)])  # would be an FP and a miss

# By hand, class 1 (3 non-difficult ground truths), ranking d1 d2 d3 d4 d5 d6:
#   TP 1 0 0 0 1 1, FP 0 1 0 1 0 0 (d3 neither) -> recall 1/3 1/3 1/3 1/3 2/3 1,
#   precision 1 1/2 1/2 1/3 1/2 3/5.
# 11-point: t = 0, .1, .2, .3 -> 1; t = .4, .5, .6 -> max(1/2, 3/5) = .6; t = .7 ... 1 -> .6
#   AP11 = (4 * 1 + 3 * .6 + 4 * .6) / 11 = 8.2 / 11.
# Area: envelope 1 up to recall 1/3, then .6 -> 1/3 * 1 + 2/3 * .6 = 2.2 / 3.
# Class 2: one ground truth, found by its only detection -> AP 1. Class 3: no ground truth -> NaN.
AP11_CLASS1, AREA_CLASS1 = 8.2 / 11, 2.2 / 3


def hand_records(**kwargs):
  rec = Records(4, background=True, **kwargs)
  d, t = batch([IMAGE_A, PADDING_IMAGE])
  rec.add(d, t, mask=np.array([1, 0]))
  d, t = batch([IMAGE_B])
  rec.add(d, t)
  return rec


def test_voc_ap_on_the_hand_made_case():
  result = voc_eval.evaluate(hand_records())
  np.testing.assert_allclose(result.ap11[1], AP11_CLASS1, rtol=1e-12)
  np.testing.assert_allclose(result.ap_area[1], AREA_CLASS1, rtol=1e-12)
  assert result.ap11[2] == 1.0 and result.ap_area[2] == 1.0
  assert np.isnan(result.ap11[0]) and np.isnan(result.ap11[3])  # background, and a class without ground truth
  np.testing.assert_array_equal(result.num_gt, [0, 3, 1, 0])
  np.testing.assert_allclose(result.map11, (AP11_CLASS1 + 1) / 2, rtol=1e-12)
  np.testing.assert_allclose(result.map_area, (AREA_CLASS1 + 1) / 2, rtol=1e-12)
  assert set(result.per_class()) == {"1", "2"}


def test_voc_difficult_boxes_count_and_padding_images_would_change_the_figures():
  """Negative controls: the hand figures depend on the difficult flag and on the image mask."""
  rec = Records(4, background=True)
  a = (IMAGE_A[0][:2] + [(IMAGE_A[0][2][0], 1, False)], IMAGE_A[1])  # g3 no longer difficult: d3 is a TP
  rec.add(*batch([a, IMAGE_B]))
  assert not np.isclose(voc_eval.evaluate(rec).ap11[1], AP11_CLASS1)
  rec = Records(4, background=True)
  rec.add(*batch([IMAGE_A, PADDING_IMAGE, IMAGE_B]))
  assert not np.isclose(voc_eval.evaluate(rec).ap11[2], 1.0)


def test_voc_ap_functions_by_hand():
  recall, precision = np.array([0.5, 1.0]), np.array([1.0, 0.5])
  assert voc_eval.ap_area(recall, precision) == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)
  assert voc_eval.ap_11_point(recall, precision) == pytest.approx((6 * 1.0 + 5 * 0.5) / 11)
  assert voc_eval.ap_11_point(np.zeros(0), np.zeros(0)) == 0.0


def test_records_refuse_bad_targets_labels_and_shapes():
  rec = Records(3, background=True, image_size=(40, 40))
  d, t = batch([([((5, 5, 2, 9), 1, False)], [])])
  with pytest.raises(ValueError, match="x2 <= x1"):
    rec.add(d, t)
  d, t = batch([([((5, 5, 50, 9), 1, False)], [])])
  with pytest.raises(ValueError, match="outside the 40x40 image"):
    rec.add(d, t)
  d, t = batch([([((5, 5, 9, 9), 3, False)], [])])
  with pytest.raises(ValueError, match="outside the detector's label space: 3 classes"):
    rec.add(d, t)
  d, t = batch([([((5, 5, 9, 9), 0, False)], [])])
  with pytest.raises(ValueError, match="0 = background"):
    rec.add(d, t)
  d, t = batch([([((5, 5, 9, 9), 1, False)], [])])
  with pytest.raises(ValueError, match=r"targets must be boxes \[B, N, 4\]"):
    rec.add(d, t._replace(labels=t.labels[:, :2]))
  with pytest.raises(ValueError, match="num_classes"):
    Records(1, background=True)


# ====================================================================== COCO and faster-coco-eval


def coco_101_point(recall, precision):
  """COCO's interpolated AP (pycocotools' accumulate): precision envelope read at recall 0, .01, ..., 1."""
  env = np.maximum.accumulate(np.asarray(precision)[::-1])[::-1]
  thresholds = np.linspace(0.0, 1.0, 101)
  idx = np.searchsorted(recall, thresholds, side="left")
  return float(np.mean([env[i] if i < len(env) else 0.0 for i in idx]))


def random_case(seed, images=12, classes=3):
  """Ground truths in cells of a 4x4 grid of 40-pixel cells (no detection can overlap two of them
  at IoU > 0.5), detections jittered from them (some missed, some duplicated, some of the wrong
  class), false positives in empty cells, distinct scores. Detections of difficult boxes are near
  copies (IoU well above 0.5), where VOC's and COCO's rules for difficult/crowd boxes agree."""
  rng = np.random.default_rng(seed)
  cases = []
  for _ in range(images):
    cells = rng.permutation(16)
    used, free = cells[:rng.integers(1, 6)], cells[6:]
    gts, dets = [], []
    for c in used:
      x, y = 40.0 * (c % 4) + rng.uniform(0, 8), 40.0 * (c // 4) + rng.uniform(0, 8)
      box = (x, y, x + rng.uniform(12, 28), y + rng.uniform(12, 28))
      label = int(rng.integers(1, classes + 1))
      difficult = bool(rng.uniform() < 0.2)
      gts.append((box, label, difficult))
      for _ in range(rng.choice(3, p=[0.2, 0.6, 0.2])):
        j = rng.normal(0, 0.3 if difficult else 3.0, 4)
        wrong = rng.uniform() < 0.15 and not difficult
        dets.append((tuple(np.array(box) + j), 0.0, int(rng.integers(1, classes + 1)) if wrong else label))
    for c in free[:rng.integers(0, 3)]:
      x, y = 40.0 * (c % 4) + rng.uniform(0, 20), 40.0 * (c // 4) + rng.uniform(0, 20)
      dets.append(((x, y, x + 15, y + 15), 0.0, int(rng.integers(1, classes + 1))))
    cases.append((gts, dets))
  scores = rng.permutation(sum(len(d) for _, d in cases)) / 1000.0 + 0.001
  out, k = [], 0
  for gts, dets in cases:
    out.append((gts, [(box, float(scores[k + i]), label) for i, (box, _, label) in enumerate(dets)]))
    k += len(dets)
  return out


def case_records(cases, classes=3):
  rec = Records(classes + 1, background=True)
  for start in range(0, len(cases), 5):
    rec.add(*batch(cases[start:start + 5], n_gt=6, n_det=16))
  return rec


def test_voc_curve_equals_faster_coco_eval_at_iou_half_with_its_101_point_interpolation():
  """Where the definitions agree (no detection overlaps two ground truths above 0.5, distinct scores),
  rajax's VOC precision/recall curve read with COCO's 101-point rule equals faster-coco-eval's AP
  at IoU 0.5, class by class; VOC's all-point area AP is then close to it."""
  from faster_coco_eval import COCOeval_faster

  rec = case_records(random_case(0))
  gt, dt = coco_eval.to_coco(rec)
  ev = COCOeval_faster(gt, dt, "bbox")
  ev.evaluate()
  ev.accumulate()
  precision = ev.eval["precision"]  # [T, R, K, A, M]
  voc = voc_eval.evaluate(rec)
  for k, cls in enumerate(sorted(gt.getCatIds())):
    curve = voc_eval.class_curve(rec, cls, 0.5)
    recall, prec = voc_eval.precision_recall(curve)
    ours = coco_101_point(recall, prec)
    theirs = float(np.mean(precision[0, :, k, 0, -1]))
    assert ours == pytest.approx(theirs, abs=1e-9), cls
    assert abs(voc.ap_area[cls] - theirs) < 0.03
  # A deliberately different protocol (difficult boxes as ordinary ones) does not match.
  plain = case_records([([(b, l, False) for b, l, _ in g], d) for g, d in random_case(0)])
  ev2 = COCOeval_faster(*coco_eval.to_coco(plain), "bbox")
  ev2.evaluate()
  ev2.accumulate()
  assert not np.allclose(ev2.eval["precision"][0, :, :, 0, -1], precision[0, :, :, 0, -1])


def test_coco_evaluate_gives_one_for_perfect_detections_and_the_standard_keys():
  cases = [(g, [(b, 0.5 + 0.01 * i, l) for i, (b, l, _) in enumerate(g)]) for g, _ in random_case(1, images=4)]
  out = coco_eval.evaluate(case_records(cases))
  assert out["map"] == pytest.approx(1.0) and out["ap50"] == pytest.approx(1.0) and out["ap75"] == pytest.approx(1.0)
  assert set(coco_eval.STATS) <= set(out)


def test_coco_map_is_below_ap50_on_jittered_detections():
  out = coco_eval.evaluate(case_records(random_case(2)))
  assert 0.0 < out["ap75"] < out["ap50"] <= 1.0 and out["ap75"] < out["map"] < out["ap50"]


# ====================================================================== the task


@dataclasses.dataclass(frozen=True)
class ToyModel:
  """A detector model for the task's plumbing: its 'loss' is the mean squared distance of the image
  mean to each valid target box's normalised x1 (a function of images, targets and a parameter)."""

  num_classes: int = 4
  class_names: tuple = ("background", "a", "b", "c")
  background: bool = True

  def detect(self, variables, images):
    b = images.shape[0]
    boxes = jnp.tile(jnp.array([[2.0, 2.0, 10.0, 12.0], [0.0, 0.0, 0.0, 0.0]]), (b, 1, 1))
    scores = jnp.stack([jnp.mean(images, axis=(1, 2, 3)) * variables["w"], jnp.zeros(b)], axis=1)
    return Detections(boxes, scores, jnp.ones((b, 2), jnp.int32), jnp.array([[True, False]] * b))

  def loss(self, variables, images, targets, *, rng, train):
    m = jnp.mean(images, axis=(1, 2, 3)) * variables["w"]
    d = (m[:, None] - targets.boxes[..., 0] / 16.0) ** 2 * targets.valid
    per_image = jnp.sum(d, axis=1)
    return per_image, {"box": per_image}, {}

  def features(self, variables, images):
    return {"p2": images * variables["w"], "p3": images[:, ::2, ::2] * 2.0}


def toy_detector(w=1.0):
  return Detector(name="toy", model=ToyModel(), variables={"w": jnp.asarray(w)})


def test_detection_task_is_registered():
  assert tasks.get("detection") is det_task
  assert Detector(name="x", model=ToyModel(), variables={}).task == det_task.NAME


def test_loss_delegates_to_the_detector_and_is_differentiable_in_its_variables():
  images = jnp.full((2, 64, 64, 3), 0.5)
  _, targets = batch([IMAGE_A, IMAGE_B])
  det = toy_detector(2.0)
  per_image, terms, _ = det_task.loss(det, images, targets)
  valid = targets.valid
  expected = [np.sum(((1.0 - targets.boxes[i, :, 0] / 16.0) ** 2) * valid[i]) for i in range(2)]
  np.testing.assert_allclose(np.asarray(per_image), expected, rtol=1e-6)
  g = jax.grad(lambda v: jnp.mean(det_task.loss(det, images, targets, variables=v)[0]))(det.variables)
  assert float(g["w"]) != 0.0


def test_loss_refuses_boxes_outside_the_image_unknown_labels_and_wrong_shapes():
  det, images = toy_detector(), jnp.zeros((2, 16, 16, 3))
  _, targets = batch([IMAGE_A, IMAGE_B])  # boxes up to 50 pixels: outside a 16x16 image
  with pytest.raises(ValueError, match="outside the 16x16 image"):
    det_task.loss(det, images, targets)
  ok = targets._replace(labels=np.where(targets.valid, 4, 0))
  with pytest.raises(ValueError, match="do not fit detector .toy.: 4 classes"):
    det_task.loss(det, jnp.zeros((2, 64, 64, 3)), ok)
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    det_task.loss(det, jnp.zeros((2, 64, 64)), ok)
  with pytest.raises(ValueError, match="for B=3 images"):
    det_task.loss(det, jnp.zeros((3, 64, 64, 3)), ok)


def test_pseudo_targets_keep_the_confident_boxes_best_first():
  boxes = np.array([[[0, 0, 4, 4], [1, 1, 5, 5], [2, 2, 6, 6], [3, 3, 3, 7]],
                    [[0, 0, 4, 4], [1, 1, 5, 5], [2, 2, 6, 6], [3, 3, 8, 7]]], np.float32)
  scores = np.array([[0.4, 0.9, 0.7, 0.95], [0.3, 0.2, 0.1, 0.0]], np.float32)
  labels = np.array([[1, 2, 3, 1], [1, 1, 1, 1]], np.int32)
  valid = np.array([[True, True, True, True], [True, True, True, False]])
  targets, confidence = det_task.pseudo_targets(Detections(boxes, scores, labels, valid), score_threshold=0.5,
                                                max_boxes=3)
  # image 0: slot 3 (0.95) has zero width -> dropped; then 0.9 and 0.7; image 1: nothing >= 0.5
  np.testing.assert_array_equal(np.asarray(targets.valid), [[True, True, False], [False, False, False]])
  np.testing.assert_array_equal(np.asarray(targets.boxes)[0, :2], boxes[0, [1, 2]])
  np.testing.assert_array_equal(np.asarray(targets.labels), [[2, 3, 0], [0, 0, 0]])
  assert not np.asarray(targets.boxes)[1].any() and not np.asarray(targets.difficult).any()
  np.testing.assert_allclose(np.asarray(confidence), [0.95, 0.3])
  t2, _ = jax.jit(det_task.pseudo_targets)(Detections(boxes, scores, labels, valid))
  assert t2.boxes.shape == (2, 4, 4)


def test_feature_mse_distance_per_image():
  det = toy_detector(1.0)
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
  y = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
  got = det_task.distance("feature_mse", outputs=det.features(x), target_outputs=det.features(y))
  xs, ys = np.asarray(x), np.asarray(y)
  mse = lambda a, b: ((a - b) ** 2).mean(axis=(1, 2, 3))
  expected = mse(xs, ys) + mse(2 * xs[:, ::2, ::2], 2 * ys[:, ::2, ::2])
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)
  with pytest.raises(ValueError, match="Unknown distance 'kl'"):
    det_task.distance("kl", outputs=det.features(x), target_outputs=det.features(y))


def test_metrics_count_found_ground_truths_per_image():
  d, t = batch([IMAGE_A, IMAGE_B])
  m = {k: np.asarray(v) for k, v in det_task.metrics(d, t).items()}
  np.testing.assert_array_equal(m["num_gt"], [2, 2])          # g3 is difficult
  np.testing.assert_array_equal(m["found50"], [2, 2])         # g1 by d1, g2 by d6; g4 by d5, g5 by d7
  np.testing.assert_array_equal(m["num_detections"], [4, 3])  # padding slots are not counted


def test_evaluator_accumulates_batches_and_reports_voc_and_coco():
  ev = det_task.Evaluator(4, background=True)
  d, t = batch([IMAGE_A, PADDING_IMAGE])
  ev.add(jax.tree.map(jnp.asarray, d), jax.tree.map(jnp.asarray, t), mask=jnp.array([1.0, 0.0]))
  ev.add(*batch([IMAGE_B]))
  out = ev.result()
  assert out["num_images"] == 2
  np.testing.assert_allclose(out["voc07_map11"], (AP11_CLASS1 + 1) / 2, rtol=1e-12)
  np.testing.assert_allclose(out["voc_map_area"], (AREA_CLASS1 + 1) / 2, rtol=1e-12)
  assert 0.0 < out["coco_map"] <= out["coco_ap50"] <= 1.0
  assert ev.per_class()["1"]["num_gt"] == 3
  ev2 = det_task.Evaluator.for_detector(toy_detector(), coco=False)
  with pytest.raises(ValueError, match="no images"):
    ev2.result()
