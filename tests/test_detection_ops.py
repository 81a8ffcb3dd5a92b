"""Specifications of rajax.detection's static-shape primitives: boxes, NMS, matching and sampling.

References: torchvision's own outputs (tests/reference/detection_ops.npz, made by
tests/reference/make_detection_ops.py), a NumPy greedy NMS written here, and hand-computed values.
"""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rajax.detection import boxes as B
from rajax.detection import matching as M
from rajax.detection import nms as N

FIXTURE = pathlib.Path(__file__).parent / "reference" / "detection_ops.npz"


@pytest.fixture(scope="module")
def ref():
  with np.load(FIXTURE) as f:
    return {k: f[k] for k in f.files}


# ====================================================================== a NumPy reference


def greedy_nms_reference(boxes, scores, threshold, labels=None, valid=None):
  """Textbook greedy NMS in NumPy: stable descending order, float32 IoU, suppress when IoU > threshold
  (compared as a double), boxes of other labels never suppress."""
  boxes = np.asarray(boxes, np.float32)
  scores = np.asarray(scores, np.float32)
  n = len(scores)
  idx = np.arange(n) if valid is None else np.flatnonzero(valid)
  order = idx[np.argsort(-scores[idx], kind="stable")]
  x1, y1, x2, y2 = boxes.T
  areas = (x2 - x1) * (y2 - y1)
  suppressed = np.zeros(n, bool)
  keep = []
  for pos, i in enumerate(order):
    if suppressed[i]:
      continue
    keep.append(int(i))
    rest = order[pos + 1:]
    w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
    h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
    inter = w * h
    with np.errstate(invalid="ignore", divide="ignore"):
      ovr = inter / (areas[i] + areas[rest] - inter)
    hit = ovr.astype(np.float64) > threshold
    if labels is not None:
      hit &= labels[rest] == labels[i]
    suppressed[rest[hit]] = True
  return np.array(keep, np.int64)


def random_boxes(rng, n, size=64.0, grid=None):
  xy = rng.uniform(0, size * 0.8, (n, 2))
  wh = rng.uniform(1.0, size * 0.4, (n, 2))
  b = np.concatenate([xy, xy + wh], axis=1)
  if grid:
    b = np.round(b * grid) / grid
  return b.astype(np.float32)


def kept(indices, valid):
  return np.asarray(indices)[np.asarray(valid)]


# ====================================================================== boxes


def test_iou_equals_torchvision_bit_for_bit_and_padding_boxes_have_iou_zero(ref):
  got = np.asarray(B.iou(ref["boxes/b1"], ref["boxes/b2"]))
  np.testing.assert_array_equal(got, ref["boxes/iou"])
  pad = np.zeros((2, 4), np.float32)
  np.testing.assert_array_equal(np.asarray(B.iou(pad, pad)), np.zeros((2, 2)))
  np.testing.assert_array_equal(np.asarray(B.iou(pad, ref["boxes/b2"])), np.zeros((2, 9)))


def test_giou_equals_torchvision_and_hand_values(ref):
  np.testing.assert_allclose(np.asarray(B.giou(ref["boxes/b1"][1:], ref["boxes/b2"])), ref["boxes/giou"],
                             rtol=1e-6, atol=1e-7)
  # Disjoint unit squares two apart: IoU 0, enclosing 3x1 box, union 2 -> GIoU = -(3 - 2)/3.
  a, b = np.array([[0, 0, 1, 1]], np.float32), np.array([[2, 0, 3, 1]], np.float32)
  np.testing.assert_allclose(np.asarray(B.giou(a, b)), [[-1 / 3]], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(B.elementwise_giou(a[0], a[0])), 1.0)
  pad = np.zeros((1, 4), np.float32)
  assert np.asarray(B.giou(pad, pad))[0, 0] == 0.0


def test_iou_and_giou_gradients_are_finite_on_padding_boxes():
  def loss(x):
    return jnp.sum(B.iou(x, x)) + jnp.sum(B.giou(x, x))

  x = jnp.array([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 3.0, 4.0], [2.0, 2.0, 2.0, 5.0]])
  g = jax.jit(jax.grad(loss))(x)
  assert np.isfinite(np.asarray(g)).all()
  assert np.asarray(g[1]).any()  # the real box does get a gradient


def test_iou_broadcasts_over_a_batch_axis(ref):
  b1, b2 = ref["boxes/b1"], ref["boxes/b2"]
  got = np.asarray(B.iou(np.stack([b1, b1[::-1]]), np.stack([b2, b2])))
  np.testing.assert_array_equal(got[0], ref["boxes/iou"])
  np.testing.assert_array_equal(got[1], ref["boxes/iou"][::-1])


@pytest.mark.parametrize("name,weights", [("rpn", (1.0, 1.0, 1.0, 1.0)), ("roi", (10.0, 10.0, 5.0, 5.0))])
def test_box_coder_encode_and_decode_equal_torchvision(ref, name, weights):
  coder = B.BoxCoder(weights)
  np.testing.assert_allclose(np.asarray(coder.encode(ref["boxes/coder_gt"], ref["boxes/coder_ref"])),
                             ref[f"boxes/encode_{name}"], rtol=1e-6, atol=1e-6)
  deltas = ref[f"boxes/deltas_{name}"].reshape(50, 3, 4)
  got = np.asarray(coder.decode(deltas, ref["boxes/coder_ref"][:, None, :])).reshape(50, 12)
  np.testing.assert_allclose(got, ref[f"boxes/decode_{name}"], rtol=1e-6, atol=1e-4)
  # The clamp is active in the fixture: without it the first rows would explode.
  unclamped = np.asarray(B.BoxCoder(weights, clip=1e9).decode(deltas, ref["boxes/coder_ref"][:, None, :]))
  assert not np.allclose(unclamped.reshape(50, 12)[:10], ref[f"boxes/decode_{name}"][:10], rtol=1e-3)


def test_box_coder_round_trip_and_degenerate_reference_stays_finite():
  rng = np.random.default_rng(0)
  ref_boxes, gt = random_boxes(rng, 20), random_boxes(rng, 20)
  coder = B.BoxCoder((10.0, 10.0, 5.0, 5.0))
  np.testing.assert_allclose(np.asarray(coder.decode(coder.encode(gt, ref_boxes), ref_boxes)), gt, rtol=1e-5, atol=1e-4)
  deltas = coder.encode(np.zeros((3, 4), np.float32), np.zeros((3, 4), np.float32))
  assert np.isfinite(np.asarray(deltas)).all()


def test_clip_and_min_size_mask_equal_torchvision(ref):
  np.testing.assert_array_equal(np.asarray(B.clip_to_image(ref["boxes/wild"], (50, 70))), ref["boxes/clipped"])
  np.testing.assert_array_equal(np.flatnonzero(np.asarray(B.size_at_least(ref["boxes/wild"], 12.0))),
                                ref["boxes/small_keep"])


def test_area_and_centre_size_format_by_hand():
  box = np.array([[2.0, 4.0, 12.0, 10.0]], np.float32)
  np.testing.assert_array_equal(np.asarray(B.area(box)), [60.0])
  np.testing.assert_array_equal(np.asarray(B.xyxy_to_cxcywh(box)), [[7.0, 7.0, 10.0, 6.0]])
  np.testing.assert_array_equal(np.asarray(B.cxcywh_to_xyxy(B.xyxy_to_cxcywh(box))), box)


def test_box_functions_refuse_a_wrong_last_axis():
  with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
    B.iou(np.zeros((3, 5)), np.zeros((2, 4)))


def test_check_targets_names_the_bad_box():
  boxes = np.array([[[0, 0, 5, 5], [4, 1, 2, 6], [0, 0, 0, 0]]], np.float32)
  valid = np.array([[True, True, False]])
  with pytest.raises(ValueError, match=r"x2 <= x1"):
    B.check_targets(boxes, valid)
  B.check_targets(boxes, np.array([[True, False, False]]), image_size=(5, 5))  # padding is not checked
  with pytest.raises(ValueError, match="outside the 4x5 image"):
    B.check_targets(boxes, np.array([[True, False, False]]), image_size=(4, 5))


# ====================================================================== NMS


PAD_TO = 160  # small cases are padded to one size (with invalid slots): one compilation serves them all


def run_nms(boxes, scores, threshold, max_output=None, tile=N.DEFAULT_TILE, valid=None, labels=None):
  """The kept input indices (best first) of nms / batched_nms, the input padded to PAD_TO slots."""
  n = len(scores)
  valid = np.ones(n, bool) if valid is None else valid
  size = max(n, PAD_TO)
  extra = size - n
  boxes = np.concatenate([boxes, np.tile(np.array([[0, 0, 50, 50]], np.float32), (extra, 1))])  # junk, invalid
  scores = np.concatenate([scores, np.ones(extra, np.float32)])
  valid = np.concatenate([valid, np.zeros(extra, bool)])
  max_output = size if max_output is None else max_output
  if labels is None:
    idx, ok = N.nms(boxes, scores, valid, iou_threshold=threshold, max_output=max_output, tile=tile)
  else:
    labels = np.concatenate([labels, np.zeros(extra, np.asarray(labels).dtype)])
    idx, ok = N.batched_nms(boxes, scores, labels, valid, iou_threshold=threshold, max_output=max_output, tile=tile)
  out = kept(idx, ok)
  assert (out < n).all()
  return out


NMS_CASES = ["random0_0.3", "random0_0.5", "random0_0.7", "random1_0.3", "random1_0.5", "random1_0.7",
             "equal_0.5", "threefifths_0.6", "tied_scores_0.5"]


def test_nms_equals_torchvision_on_every_fixture_case(ref):
  for case in NMS_CASES:
    b, s, thr = ref[f"nms/{case}/boxes"], ref[f"nms/{case}/scores"], float(ref[f"nms/{case}/threshold"])
    np.testing.assert_array_equal(run_nms(b, s, thr), ref[f"nms/{case}/keep"], err_msg=case)
  # What the hand-made cases pin: IoU == 0.5 survives, float32(3/5) > 0.6 does not, ties go by index.
  np.testing.assert_array_equal(ref["nms/equal_0.5/keep"], [0, 1])
  np.testing.assert_array_equal(ref["nms/threefifths_0.6/keep"], [0])
  np.testing.assert_array_equal(ref["nms/tied_scores_0.5/keep"], [0, 3])


@pytest.mark.parametrize("broken", [">=", "float32 threshold"])
def test_nms_negative_control_a_changed_comparison_fails_the_fixture(ref, monkeypatch, broken):
  if broken == ">=":  # x > nextafter(t32, -inf) is x >= t32
    patched = lambda t: np.nextafter(np.float32(t), np.float32(-np.inf))
    case = "equal_0.5"
  else:  # comparing with float32(t) misses float32 values between t and float32(t)
    patched = lambda t: np.float32(t)
    case = "threefifths_0.6"
  monkeypatch.setattr(N, "float32_strict_threshold", patched)
  b, s, thr = ref[f"nms/{case}/boxes"], ref[f"nms/{case}/scores"], float(ref[f"nms/{case}/threshold"])
  assert not np.array_equal(run_nms(b, s, thr), ref[f"nms/{case}/keep"])


def test_nms_equals_the_numpy_greedy_reference_across_tiles_with_ties_and_padding():
  rng = np.random.default_rng(5)
  n = 90
  b = random_boxes(rng, n, grid=2)
  s = (np.round(rng.uniform(0, 1, n) * 8) / 8).astype(np.float32)  # heavy ties
  b[:4] = b[4]  # identical boxes
  valid = rng.uniform(size=n) > 0.15
  b[~valid] = 0.0
  for thr in (0.3, 0.5):
    expected = greedy_nms_reference(b, s, thr, valid=valid)
    for tile in (7, 32, 512):  # many tiles (fixed point inside each), and one tile
      np.testing.assert_array_equal(run_nms(b, s, thr, tile=tile, valid=valid), expected, err_msg=f"{thr} {tile}")


def test_nms_keeps_the_first_max_output_boxes_and_pads_the_rest():
  rng = np.random.default_rng(6)
  b, s = random_boxes(rng, 64), rng.uniform(size=64).astype(np.float32)
  full = greedy_nms_reference(b, s, 0.5)
  idx, ok = N.nms(b, s, np.ones(64, bool), iou_threshold=0.5, max_output=5, tile=8)
  np.testing.assert_array_equal(kept(idx, ok), full[:5])
  assert ok.all() and idx.shape == (5,)
  idx, ok = N.nms(b, s, np.ones(64, bool), iou_threshold=0.5, max_output=100)
  assert idx.shape == (100,) and int(ok.sum()) == len(full) and (np.asarray(idx)[~np.asarray(ok)] == 0).all()


def test_batched_nms_equals_torchvision_and_classes_never_suppress_each_other(ref):
  # On the 1/8 grid torchvision's coordinate trick is exact: its output is the reference, order included.
  b, s, lab = ref["bnms/grid/boxes"], ref["bnms/grid/scores"], ref["bnms/grid/labels"]
  np.testing.assert_array_equal(run_nms(b, s, 0.5, labels=lab), ref["bnms/grid/keep"])
  for case in ("grid", "large"):
    b, s, lab = ref[f"bnms/{case}/boxes"], ref[f"bnms/{case}/scores"], ref[f"bnms/{case}/labels"]
    got = run_nms(b, s, 0.5, labels=lab)
    np.testing.assert_array_equal(got, greedy_nms_reference(b, s, 0.5, labels=lab), err_msg=case)
    # torchvision's per-class path keeps the same boxes; it orders equal scores arbitrarily (an unstable sort).
    vanilla = ref[f"bnms/{case}/keep_vanilla"]
    np.testing.assert_array_equal(np.sort(got), np.sort(vanilla), err_msg=case)
    np.testing.assert_array_equal(s[got], s[vanilla], err_msg=case)
  same = np.array([[0, 0, 10, 10]] * 3, np.float32)
  np.testing.assert_array_equal(run_nms(same, np.array([0.9, 0.8, 0.7], np.float32), 0.5,
                                        labels=np.array([1, 2, 1])), [0, 1])


def test_nms_is_jittable_and_vmaps_over_a_batch_with_one_compilation():
  rng = np.random.default_rng(7)
  b = np.stack([random_boxes(rng, 40) for _ in range(3)])
  s = rng.uniform(size=(3, 40)).astype(np.float32)
  lab = rng.integers(0, 3, (3, 40))
  valid = rng.uniform(size=(3, 40)) > 0.2
  fn = jax.jit(jax.vmap(functools.partial(N.batched_nms, iou_threshold=0.4, max_output=12, tile=16)))
  idx, ok = fn(b, s, lab, valid)
  for i in range(3):
    np.testing.assert_array_equal(kept(idx[i], ok[i]), greedy_nms_reference(b[i], s[i], 0.4, lab[i], valid[i])[:12])
  fn(b[::-1], s[::-1], lab[::-1], valid[::-1])
  assert fn._cache_size() == 1


def test_nms_refuses_batched_input_and_names_the_fix():
  with pytest.raises(ValueError, match="vmap"):
    N.nms(np.zeros((2, 5, 4)), np.zeros((2, 5)), np.ones((2, 5), bool), iou_threshold=0.5, max_output=3)


def test_top_k_picks_the_best_valid_in_index_order_for_ties_and_pads():
  s = np.array([0.3, 0.9, 0.3, 0.5, 0.9, 0.1], np.float32)
  valid = np.array([True, True, True, True, False, True])
  idx, ok = N.top_k(s, valid, 4)
  np.testing.assert_array_equal(np.asarray(idx), [1, 3, 0, 2])
  assert np.asarray(ok).all()
  idx, ok = N.top_k(s, valid, 8)
  np.testing.assert_array_equal(np.asarray(idx)[np.asarray(ok)], [1, 3, 0, 2, 5])
  assert idx.shape == (8,) and int(np.asarray(ok).sum()) == 5


def test_top_k_then_nms_equals_nms_over_all_candidates_when_k_covers_the_output():
  rng = np.random.default_rng(8)
  b, s = random_boxes(rng, 200), rng.uniform(size=200).astype(np.float32)
  full = greedy_nms_reference(b, s, 0.5)
  top, ok = N.top_k(s, np.ones(200, bool), 60)
  idx, kv = N.nms(b[np.asarray(top)], s[np.asarray(top)], np.asarray(ok), iou_threshold=0.5, max_output=10)
  first = np.asarray(top)[kept(idx, kv)]
  np.testing.assert_array_equal(first, full[:10])
  rank = {int(i): r for r, i in enumerate(np.argsort(-s, kind="stable"))}
  assert rank[int(full[9])] < 60  # the premise: the top 60 cover the first 10 kept boxes


# ====================================================================== matching


MATCHERS = {"rpn": (0.7, 0.3, True), "roi": (0.5, 0.5, False), "mid": (0.6, 0.2, False), "mid_lq": (0.6, 0.2, True)}


@pytest.mark.parametrize("name", sorted(MATCHERS))
def test_matcher_equals_torchvision(ref, name):
  got = np.asarray(M.Matcher(*MATCHERS[name])(ref["match/iou"]))
  np.testing.assert_array_equal(got, ref[f"match/{name}"])


def test_matcher_fixture_exercises_ties_and_the_threshold(ref):
  iou, rpn = ref["match/iou"], ref["match/rpn"]
  assert np.float32(iou[4, 0]) == np.float32(0.7) and rpn[0] == 4  # float32(0.7) >= 0.7: a positive
  # Anchors 1 and 2 tie for ground truth 2's best IoU (2/3, between the thresholds): both match it.
  assert iou[2, 1] == iou[2, 2] == iou[2].max() < 0.7 and rpn[1] == rpn[2] == 2
  assert np.asarray(M.Matcher(0.7, 0.3, False)(iou))[1] == M.BETWEEN_THRESHOLDS


@pytest.mark.parametrize("name", sorted(MATCHERS))
def test_matcher_equals_torchvision_when_a_ground_truth_overlaps_nothing(ref, name):
  """torchvision's quirk, kept: a ground truth with highest IoU 0 is "attained" by every anchor, so
  with low-quality matching every anchor gets its best ground truth back (even at IoU 0)."""
  got = np.asarray(M.Matcher(*MATCHERS[name])(ref["match/iou_zero"]))
  np.testing.assert_array_equal(got, ref[f"match/zero_{name}"])
  assert ref["match/iou_zero"][5].max() == 0
  assert (ref["match/zero_rpn"] >= 0).all()


def test_matcher_negative_control_one_best_prediction_per_ground_truth_is_not_torchvision(ref):
  """Without the ties (argmax per ground truth only), low-quality matching differs from torchvision."""
  iou = ref["match/iou"]
  plain = np.asarray(M.Matcher(0.7, 0.3, False)(iou))
  broken = plain.copy()
  best_col = iou.argmax(axis=1)
  broken[best_col] = iou[:, best_col].argmax(axis=0)
  assert not np.array_equal(broken, ref["match/rpn"])


def test_matcher_ignores_padding_rows_and_columns():
  rng = np.random.default_rng(9)
  gt, anchors = random_boxes(rng, 4, grid=1), random_boxes(rng, 50, grid=1)
  matcher = M.Matcher(0.7, 0.3, True)
  plain = np.asarray(matcher(B.iou(gt, anchors)))
  gt_pad = np.concatenate([gt, np.zeros((3, 4), np.float32), anchors[:1]])  # an invalid row that equals anchor 0
  an_pad = np.concatenate([anchors, np.zeros((6, 4), np.float32)])
  gt_valid = np.array([True] * 4 + [False] * 4)
  an_valid = np.array([True] * 50 + [False] * 6)
  got = np.asarray(matcher(B.iou(gt_pad, an_pad), gt_valid, an_valid))
  np.testing.assert_array_equal(got[:50], plain)
  assert (got[50:] == M.BETWEEN_THRESHOLDS).all()
  none = np.asarray(matcher(B.iou(gt_pad, an_pad), np.zeros(8, bool), an_valid))
  assert (none[:50] == M.BELOW_LOW_THRESHOLD).all()


def test_matcher_batches_by_broadcasting(ref):
  iou = ref["match/iou"]
  got = np.asarray(M.Matcher(0.7, 0.3, True)(np.stack([iou, iou])))
  np.testing.assert_array_equal(got, np.stack([ref["match/rpn"]] * 2))


@pytest.mark.parametrize("num_pos,num_neg,size,fraction,expect", [
    (200, 500, 256, 0.5, (128, 128)),   # plenty of both
    (10, 500, 256, 0.5, (10, 246)),     # few positives: negatives fill up
    (10, 20, 256, 0.25, (10, 20)),      # few of both: fewer than 256 samples
    (300, 0, 64, 0.25, (16, 0)),        # no negatives: the positive quota still holds
])
def test_sampler_draws_exact_counts(num_pos, num_neg, size, fraction, expect):
  n = 800  # one length for every case (ignored labels fill up)
  labels = np.concatenate([np.ones(num_pos), np.zeros(num_neg), -np.ones(n - num_pos - num_neg)])
  labels = np.random.default_rng(0).permutation(labels).astype(np.float32)
  s = M.sample_balanced(jax.random.key(1), labels, batch_size_per_image=size, positive_fraction=fraction)
  pos, neg = np.asarray(s.positive), np.asarray(s.negative)
  assert (int(pos.sum()), int(neg.sum())) == expect
  assert (labels[pos] >= 1).all() and (labels[neg] == 0).all()
  idx, valid, is_pos = np.asarray(s.indices), np.asarray(s.valid), np.asarray(s.is_positive)
  assert idx.shape == (size,) and int(valid.sum()) == sum(expect) and int(is_pos.sum()) == expect[0]
  assert len(set(idx[valid].tolist())) == sum(expect)
  np.testing.assert_array_equal(np.sort(idx[is_pos]), np.flatnonzero(pos))
  np.testing.assert_array_equal(np.sort(idx[valid & ~is_pos]), np.flatnonzero(neg))


def test_sampler_is_uniform_and_keyed_per_image():
  labels = np.array([1.0] * 8 + [0.0] * 8, np.float32)
  batch = np.stack([labels] * 400)  # 400 images, one key: each image its own stream
  s = M.sample_balanced(jax.random.key(2), batch, batch_size_per_image=4, positive_fraction=0.5)
  freq = np.asarray(s.positive).mean(axis=0)[:8]  # each positive is drawn with probability 2/8
  assert np.all(np.abs(freq - 0.25) < 0.07), freq
  assert len({tuple(r) for r in np.asarray(s.indices)}) > 100
  again = M.sample_balanced(jax.random.key(2), batch, batch_size_per_image=4, positive_fraction=0.5)
  np.testing.assert_array_equal(np.asarray(again.indices), np.asarray(s.indices))


def test_sample_from_masks_reproduces_torchs_sample(ref):
  pos, neg = ref["match/sampled_pos"], ref["match/sampled_neg"]
  labels = ref["match/rpn_labels"]
  assert (labels[pos] == 1).all() and (labels[neg] == 0).all()
  assert pos.sum() == min(16, (labels == 1).sum()) and pos.sum() + neg.sum() == 64  # torch's counts
  s = M.sample_from_masks(pos, neg, batch_size_per_image=64)
  np.testing.assert_array_equal(np.asarray(s.positive), pos)
  np.testing.assert_array_equal(np.asarray(s.negative), neg)
  ours = M.sample_balanced(jax.random.key(0), labels, batch_size_per_image=64, positive_fraction=0.25)
  assert int(ours.positive.sum()) == pos.sum() and int(ours.negative.sum()) == neg.sum()
  with pytest.raises(ValueError, match="both positive and negative"):
    M.sample_from_masks(pos, pos, batch_size_per_image=64)
