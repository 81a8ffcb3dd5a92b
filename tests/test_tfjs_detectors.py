"""The TF.js graph interpreter and the CenterNet / NanoDet detectors on it, against the TF.js runtime.

tests/reference/tfjs_detectors.npz holds what @tensorflow/tfjs 4.22 (CPU backend) computed with
the human-models graphs on four real photos (tests/reference/make_tfjs_fixtures.py: darknet's
dog, scikit-image's astronaut, coffee and chelsea at 640x480), fed as @vladmandic/human feeds
them. The weights are float16 in the files and both runtimes compute with the same dequantised
float32 values, so the differences are float32 rounding against TF.js's JavaScript (float64
per-element arithmetic, float32 storage): heatmaps and scores in [0, 1] agree to ~1e-6 (checked
to 2e-5), box sides of up to ~330 pixels to ~2e-3 (checked to 1e-2 pixel), distribution logits
to ~1e-5 (checked to 2e-4). Negative controls show that the nearest wrong variants (the
half-pixel resize rule, cell centres without the half-cell offset, another photo) miss by
orders of magnitude more.

The photos and graphs come from `python -m rajax.assets fetch` (the session fixture runs it; it
only verifies what is already in the cache).
"""

import base64
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

from rajax import assets
from rajax.detection import centernet, nanodet, zoo
from rajax.tasks import detection as detection_task
from rajax.models import tfjs_graph

HERE = pathlib.Path(__file__).resolve().parent
FIXTURE = HERE / "reference" / "tfjs_detectors.npz"


def _maker():
  spec = importlib.util.spec_from_file_location("make_tfjs_fixtures", HERE / "reference" / "make_tfjs_fixtures.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _compile(fn, *args):
  """fn jitted and compiled for args (under the suite's XLA flags: at these sizes, measured, LLVM's
  optimisation passes cost more compile time than they save in run time)."""
  return jax.jit(fn).lower(*args).compile()


@pytest.fixture(scope="session")
def fetched():
  """The human-models graphs and darknet's photos in the cache (fetched if absent; verified)."""
  assets.fetch(["human-models", "darknet"])
  return assets


@pytest.fixture(scope="module")
def fx():
  return np.load(FIXTURE)


@pytest.fixture(scope="module")
def photos(fetched, fx):
  maker = _maker()
  imgs = np.stack([maker.prepare(n) for n in maker.PHOTOS])
  for name, img in zip(maker.PHOTOS, imgs):
    assert maker.digest(img) == str(fx[f"{name}/sha256"]), (
        f"prepared photo {name} differs from the one the fixture was made from (another Pillow or scikit-image?)")
  return maker.PHOTOS, jnp.asarray(imgs, jnp.float32) / 255.0


@pytest.fixture(scope="module")
def cnet(fetched):
  return zoo.build("centernet_mobilenetv3", depthwise="conv")


@pytest.fixture(scope="module")
def ndet(fetched):
  return zoo.build("nanodet")


# ----------------------------------------------------------------------------------------------
# The interpreter on hand-made graphs

def _write_graph(tmp_path, nodes, weights, data: bytes, signature=None):
  spec = {"format": "graph-model", "modelTopology": {"node": nodes},
          "weightsManifest": [{"paths": ["g.bin"], "weights": weights}],
          "signature": signature or {}}
  (tmp_path / "g.bin").write_bytes(data)
  (tmp_path / "g.json").write_text(json.dumps(spec))
  return tmp_path / "g.json"


def _s(text):
  return {"s": base64.b64encode(text.encode()).decode()}


def test_weights_are_dequantised_and_a_fused_conv_computes_tensorflows_formula(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 5, 6, 2)).astype(np.float32)
  w = rng.normal(size=(3, 3, 2, 4)).astype(np.float16)          # float16-quantised, as in human-models
  q = rng.integers(0, 256, size=(4,)).astype(np.uint8)           # uint8 affine: bias = q * 0.02 - 2
  nodes = [
      {"name": "x", "op": "Placeholder", "attr": {"shape": {"shape": {"dim": [{"size": "1"}, {"size": "5"}, {"size": "6"}, {"size": "2"}]}}}},
      {"name": "w", "op": "Const"}, {"name": "b", "op": "Const"},
      {"name": "y", "op": "_FusedConv2D", "input": ["x", "w", "b"],
       "attr": {"strides": {"list": {"i": ["1", "2", "2", "1"]}}, "padding": _s("SAME"), "data_format": _s("NHWC"),
                "fused_ops": {"list": {"s": [_s("BiasAdd")["s"], _s("Relu6")["s"]]}}, "num_args": {"i": "1"}}},
  ]
  weights = [{"name": "w", "shape": [3, 3, 2, 4], "dtype": "float32", "quantization": {"dtype": "float16", "original_dtype": "float32"}},
             {"name": "b", "shape": [4], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 0.02, "min": -2.0}}]
  params, graph = tfjs_graph.load(_write_graph(tmp_path, nodes, weights, w.tobytes() + q.tobytes(),
                                               {"outputs": {"y": {"name": "y:0"}}}))
  np.testing.assert_array_equal(params["w"], w.astype(np.float32))
  np.testing.assert_array_equal(params["b"], q.astype(np.float32) * np.float32(0.02) + np.float32(-2.0))
  out = np.asarray(jax.jit(graph)(params, x)["y"])
  # TensorFlow's SAME at stride 2 on 5x6: outputs 3x3, pad (1, 1) rows and (0, 1) columns.
  xp = np.pad(x, ((0, 0), (1, 1), (0, 1), (0, 0)))
  want = np.zeros((1, 3, 3, 4))
  for i in range(3):
    for j in range(3):
      want[0, i, j] = np.einsum("hwc,hwco->o", xp[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3], w.astype(np.float64))
  pre = want + (q * 0.02 - 2.0)
  assert (pre < 0).any() and (pre > 0).any()
  np.testing.assert_allclose(out, np.clip(pre, 0, 6), atol=1e-5)
  assert np.abs(np.clip(pre + 0.5, 0, 6) - out).max() > 0.4    # negative control: another bias
  # Differentiable with respect to the input and the weights: JAX's gradients against finite differences.
  f = lambda p, x: jnp.sum(graph(p, x)["y"] ** 2)
  jax.test_util.check_grads(f, (params, jnp.asarray(x)), order=1, modes=("rev",), atol=5e-2, rtol=5e-2, eps=1e-2)


def test_unknown_ops_are_refused_at_load_naming_the_op_and_its_node(tmp_path):
  nodes = [{"name": "x", "op": "Placeholder"}, {"name": "odd", "op": "FancyNewOp", "input": ["x"]}]
  with pytest.raises(tfjs_graph.GraphError, match=r"g.json uses TF ops .* not implement: FancyNewOp \(at odd\)"):
    tfjs_graph.load(_write_graph(tmp_path, nodes, [], b""))


def test_truncated_shards_are_refused(tmp_path):
  nodes = [{"name": "w", "op": "Const"}]
  weights = [{"name": "w", "shape": [4], "dtype": "float32"}]
  with pytest.raises(tfjs_graph.GraphError, match=r"end before weight 'w'.*truncated"):
    tfjs_graph.load(_write_graph(tmp_path, nodes, weights, b"\x00" * 8))


def test_resize_bilinear_equals_tfjs_under_its_three_rules(fx):
  x = jnp.asarray(fx["resize/input"])
  rules = {"legacy": {}, "align_corners": {"align_corners": True}, "half_pixel": {"half_pixel_centers": True}}
  for size in ((12, 5), (4, 16)):
    for rule, kw in rules.items():
      got = np.asarray(tfjs_graph.resize_bilinear(x, size, **kw))
      np.testing.assert_allclose(got, fx[f"resize/{rule}_{size[0]}x{size[1]}"], atol=2e-7, err_msg=f"{rule} {size}")
    # negative control: the rules are different functions here
    assert np.abs(fx[f"resize/legacy_{size[0]}x{size[1]}"] - fx[f"resize/half_pixel_{size[0]}x{size[1]}"]).max() > 0.05


def test_depthwise_taps_equal_the_grouped_convolution():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 9, 11, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 3, 2)), jnp.float32)
  for stride, pad in ((1, "SAME"), (2, "SAME"), (2, "VALID")):
    node = tfjs_graph.Node("d", "DepthwiseConv2dNative", ("x", "w"),
                           {"strides": (1, stride, stride, 1), "padding": pad, "dilations": (1, 1, 1, 1)})
    taps_node = tfjs_graph.Node("d", node.op, node.inputs, {**node.attr, tfjs_graph._IMPL: "taps"})
    conv, taps = jax.jit(lambda x, w: (tfjs_graph._conv2d(node, x, w, depthwise=True),
                                       tfjs_graph._conv2d(taps_node, x, w, depthwise=True)))(x, w)
    assert conv.shape == taps.shape
    np.testing.assert_allclose(np.asarray(taps), np.asarray(conv), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# The graphs against TF.js on real photos

@pytest.fixture(scope="module")
def centernet_run(cnet, photos):
  names, x = photos
  m = cnet.model

  def run(v, x):
    heads = m.heads(v, x)
    wrong = tfjs_graph.resize_bilinear(x[:1] * 255.0, (512, 512), half_pixel_centers=True)   # negative control
    return heads, m.graph_detections(v, x), m.decode(heads["heatmap"], heads["ltrb"], x.shape[1:3]), \
        m.graph.batched(v["params"], wrong, (centernet._HEATMAP,))[centernet._HEATMAP]

  return names, _compile(run, cnet.variables, x)(cnet.variables, x)


def test_centernet_heads_equal_tfjs_on_real_photos(centernet_run, fx):
  names, (heads, _, _, wrong) = centernet_run
  for i, n in enumerate(names):
    kp, ltrb = np.asarray(heads["heatmap"][i]), np.asarray(heads["ltrb"][i])
    rows = fx[f"{n}/centernet/rows"]
    np.testing.assert_allclose(kp.max(-1), fx[f"{n}/centernet/kp_max"], atol=2e-5, err_msg=n)
    np.testing.assert_allclose(kp.reshape(-1, 80)[rows], fx[f"{n}/centernet/kp_rows"], atol=2e-5, err_msg=n)
    np.testing.assert_allclose(ltrb.reshape(-1, 4)[rows], fx[f"{n}/centernet/wh_rows"], atol=1e-2, err_msg=n)
    np.testing.assert_allclose(1 / (1 + np.exp(-np.asarray(heads["heatmap_logits"][i]))), kp, atol=1e-6)
  # Negative controls: the half-pixel resize rule, and another photo's heatmap.
  assert np.abs(np.asarray(wrong[0]).max(-1) - fx["dog/centernet/kp_max"]).max() > 100 * 2e-5
  assert np.abs(np.asarray(heads["heatmap"][1]).max(-1) - fx["dog/centernet/kp_max"]).max() > 0.1


def test_centernet_detections_equal_the_graphs_and_tfjs(centernet_run, fx):
  names, (_, graph_det, dets, _) = centernet_run
  scale = np.asarray([640, 480, 640, 480]) / 512
  for i, n in enumerate(names):
    tf_det = fx[f"{n}/centernet/detections"]
    np.testing.assert_allclose(np.asarray(graph_det[i]), tf_det, atol=1e-2, err_msg=n)     # the graph's own TopK path
    valid = np.asarray(dets.valid[i])
    assert valid.sum() == (tf_det[:, 4] > 0.05).sum() > 0
    np.testing.assert_array_equal(np.asarray(dets.labels[i])[valid], tf_det[valid, 5].astype(int))
    np.testing.assert_allclose(np.asarray(dets.scores[i])[valid], tf_det[valid, 4], atol=2e-5)
    want = np.clip(tf_det[:, :4] * scale, 0, [640, 480, 640, 480])
    np.testing.assert_allclose(np.asarray(dets.boxes[i])[valid], want[valid], atol=2e-2)
    assert not np.asarray(dets.scores[i])[~valid].any()
  top = {n: [cnet_label for cnet_label in np.asarray(dets.labels[i])[:5]] for i, n in enumerate(names)}
  coco = centernet.COCO80
  assert {"bicycle", "dog", "truck"} <= {coco[k] for k in top["dog"]}        # what DESIGN.md records
  assert coco[top["astronaut"][0]] == "person" and coco[top["coffee"][0]] == "cup"
  assert coco[top["chelsea"][0]] == "dog"                                     # CenterNet's known miss on the cat


@pytest.fixture(scope="module")
def nanodet_run(ndet, photos):
  names, x = photos
  m = ndet.model
  return names, _compile(lambda v, x: (m.heads(v, x), m.detect(v, x)), ndet.variables, x)(ndet.variables, x)


def test_nanodet_heads_and_decoded_boxes_equal_tfjs_on_real_photos(nanodet_run, ndet, fx):
  names, (heads, _) = nanodet_run
  start = {8: 0, 16: 52 * 52, 32: 52 * 52 + 26 * 26}
  for i, n in enumerate(names):
    for s in nanodet.STRIDES:
      sl = slice(start[s], start[s] + (416 // s) ** 2)
      rows = fx[f"{n}/nanodet/rows_{s}"]
      scores = np.asarray(heads["scores"][i, sl])
      np.testing.assert_allclose(scores.max(-1), fx[f"{n}/nanodet/score_max_{s}"], atol=2e-5, err_msg=f"{n} {s}")
      np.testing.assert_allclose(scores[rows], fx[f"{n}/nanodet/scores_{s}"], atol=2e-5)
      dist = np.asarray(heads["distributions"][i, sl]).reshape(-1, 44)
      np.testing.assert_allclose(dist[rows], fx[f"{n}/nanodet/dist_{s}"], atol=2e-4)
      np.testing.assert_allclose(np.asarray(heads["boxes"][i, sl])[rows], fx[f"{n}/nanodet/boxes_{s}"], atol=1e-2)
  # Negative control: cell centres at i * stride (no half-cell offset) move every box by s / 2.
  dist = heads["distributions"][:1]
  shifted = ndet.model.decode_boxes(dist) - jnp.concatenate([p := ndet.model.points()[1][:, None] / 2, p, p, p], -1)
  rows = fx["dog/nanodet/rows_8"]
  assert np.abs(np.asarray(shifted[0, :2704])[rows] - fx["dog/nanodet/boxes_8"]).max() > 1.0


def test_nanodet_detections_equal_tfjs_gfl_decoding_and_nms(nanodet_run, fx):
  names, (_, dets) = nanodet_run
  scale = np.asarray([640, 480, 640, 480]) / 416
  found = {}
  for i, n in enumerate(names):
    tf_det = fx[f"{n}/nanodet/detections"]
    k = int((tf_det[:, 5] >= 0).sum())
    valid = np.asarray(dets.valid[i])
    assert valid.sum() == k > 0, n
    np.testing.assert_array_equal(np.asarray(dets.labels[i])[:k], tf_det[:k, 5].astype(int))
    np.testing.assert_allclose(np.asarray(dets.scores[i])[:k], tf_det[:k, 4], atol=2e-5)
    np.testing.assert_allclose(np.asarray(dets.boxes[i])[:k], tf_det[:k, :4] * scale, atol=2e-2)
    found[n] = [nanodet.COCO80[c] for c in np.asarray(dets.labels[i])[:4]]
  assert {"bicycle", "dog", "truck"} <= set(found["dog"])
  assert found["astronaut"][0] == "person" and "cup" in found["coffee"]


@pytest.mark.heavy   # 5-10 s of a 2-core CI; `python -m pytest -m heavy` runs it
def test_segmenter_graphs_equal_tfjs(fetched, photos, fx):
  """selfie (Conv2DBackpropInput, AvgPool, AddN) and meet (MatMul, BiasAdd) on the astronaut photo."""
  names, x = photos
  i = names.index("astronaut")
  for seg, size in (("selfie", (256, 256)), ("meet", (144, 256))):
    params, graph = tfjs_graph.load(assets.path(f"human-models/{seg}.json"), depthwise="conv")
    fn = lambda p, x: next(iter(graph.batched(p, tfjs_graph.resize_bilinear(x * 255.0, size) / 255.0).values()))
    mask = np.asarray(jax.jit(fn)(params, x[i:i + 1]))[0, ::4, ::4]
    np.testing.assert_allclose(mask, fx[f"astronaut/{seg}/mask"], atol=1e-4, err_msg=seg)
    assert np.abs(mask - fx[f"dog/{seg}/mask"]).max() > 0.1          # negative control: another photo's mask


# ----------------------------------------------------------------------------------------------
# Differentiable, jittable, trainable

def _pseudo_targets(dets, n: int = 8, threshold: float = 0.3):
  """The detection task's pseudo-targets: the detector's own detections on the clean photo."""
  return detection_task.pseudo_targets(dets, score_threshold=threshold, max_boxes=n)[0]


def _descent(detector, x, targets, steps: int, lr: float):
  """Loss values over `steps` normalised gradient steps on the image (step k moves a pixel by at most
  lr / (k + 1)), and the first gradient and terms."""
  def total(x, v):
    per_image, terms, _ = detector.model.loss(v, x, targets)
    return jnp.sum(per_image), terms

  step = jax.jit(jax.value_and_grad(total, has_aux=True)).lower(x, detector.variables).compile()
  values, first = [], None
  for k in range(steps + 1):
    (value, terms), gx = step(x, detector.variables)
    values.append(float(value))
    if first is None:
      first = (gx, terms)
    x = x - lr / (k + 1) * gx / jnp.max(jnp.abs(gx))
  return values, first


def _noisy_first_photo(photos, targets, size: int):
  """The dog photo at size x size (the detector's own input size: its resize is then the identity,
  which keeps the CPU cost of these tests down) with Gaussian noise, and its targets rescaled."""
  _, x = photos
  x = tfjs_graph.resize_bilinear(x[:1], (size, size))
  x0 = jnp.clip(x + 0.15 * jax.random.normal(jax.random.key(0), x.shape), 0, 1)
  t0 = jax.tree.map(lambda a: a[:1], targets)
  scale = jnp.asarray([size / 640, size / 480, size / 640, size / 480])
  return x0, t0._replace(boxes=t0.boxes * scale)


@pytest.mark.heavy   # 10-25 s of a 2-core CI; `python -m pytest -m heavy` runs it
def test_centernet_loss_is_finite_differentiable_and_falls_under_descent_on_the_image(cnet, photos, centernet_run):
  x0, t0 = _noisy_first_photo(photos, _pseudo_targets(centernet_run[1][2]), 512)
  assert int(t0.valid.sum()) >= 3
  values, (gx, terms) = _descent(cnet, x0, t0, steps=1, lr=0.02)
  assert set(terms) == {"heatmap", "box"} and all(np.isfinite(float(v[0])) and float(v[0]) > 0 for v in terms.values())
  assert np.isfinite(np.asarray(gx)).all() and float(jnp.abs(gx).max()) > 0
  assert values[1] < values[0], values


@pytest.mark.heavy
def test_centernet_loss_keeps_falling_over_more_descent_steps(cnet, photos, centernet_run):
  x0, t0 = _noisy_first_photo(photos, _pseudo_targets(centernet_run[1][2]), 512)
  values, _ = _descent(cnet, x0, t0, steps=4, lr=0.02)
  assert all(b < a for a, b in zip(values, values[1:])), values


def _param_gradients_are_finite_and_nonzero(detector, x, targets):
  grad = jax.jit(jax.grad(lambda v: jnp.sum(detector.model.loss(v, x, targets)[0])))(detector.variables)
  leaves = jax.tree.leaves(grad)
  assert len(leaves) == len(jax.tree.leaves(detector.variables))
  assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
  assert sum(float(jnp.abs(g).sum()) > 0 for g in leaves) > 0.9 * len(leaves)


@pytest.mark.heavy
def test_detector_losses_are_differentiable_with_respect_to_the_weights(cnet, ndet, photos, centernet_run, nanodet_run):
  _param_gradients_are_finite_and_nonzero(cnet, *_noisy_first_photo(photos, _pseudo_targets(centernet_run[1][2]), 512))
  _param_gradients_are_finite_and_nonzero(ndet, *_noisy_first_photo(photos, _pseudo_targets(nanodet_run[1][1]), 416))


def test_centernet_targets_splat_gaussians_with_cornernet_radius():
  boxes = jnp.asarray([[10.0, 20.0, 30.0, 28.0], [0, 0, 0, 0]])
  splat = jax.jit(lambda b, l, v: centernet.heatmap_targets(b, l, v, grid=(40, 40), num_classes=8))
  heat, centres = splat(boxes, jnp.asarray([3, 5]), jnp.asarray([True, False]))
  np.testing.assert_array_equal(np.asarray(centres[0]), [20, 24])
  assert float(heat[24, 20, 3]) == 1.0 and int((np.asarray(heat) == 1).sum()) == 1 and float(heat[..., 5].max()) == 0
  # CornerNet's radius for h=8, w=20 at overlap 0.7 (the smallest of the three roots): 3.17 -> 3.
  r = float(centernet.gaussian_radius(jnp.float32(8), jnp.float32(20)))
  b1, c1 = 28, 160 * 0.3 / 1.7
  b2, c2 = 56, 0.3 * 160
  a3, b3, c3 = 2.8, -1.4 * 28, -0.3 * 160
  want = min((b1 + np.sqrt(b1 ** 2 - 4 * c1)) / 2, (b2 + np.sqrt(b2 ** 2 - 16 * c2)) / 2, (b3 + np.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2)
  assert r == pytest.approx(want, rel=1e-5) and int(r) == 3
  sigma = 7 / 6
  assert float(heat[24, 21, 3]) == pytest.approx(np.exp(-1 / (2 * sigma ** 2)), rel=1e-5)
  assert float(heat[27, 23, 3]) == pytest.approx(np.exp(-18 / (2 * sigma ** 2)), rel=1e-4)
  assert float(heat[24, 24, 3]) == 0.0 and float(heat[28, 20, 3]) == 0.0  # outside the (2r+1)^2 window


@pytest.mark.heavy
def test_nanodet_loss_is_finite_differentiable_and_falls_under_descent_on_the_image(ndet, photos, nanodet_run):
  x0, t0 = _noisy_first_photo(photos, _pseudo_targets(nanodet_run[1][1]), 416)
  values, (gx, terms) = _descent(ndet, x0, t0, steps=2, lr=0.02)
  assert set(terms) == {"qfl", "giou", "dfl"} and all(np.isfinite(float(v[0])) and float(v[0]) > 0 for v in terms.values())
  assert np.isfinite(np.asarray(gx)).all() and float(jnp.abs(gx).max()) > 0
  assert values[2] < values[1] < values[0], values


def test_atss_assigns_cells_inside_the_box_near_its_centre(ndet):
  pts, strides = ndet.model.points()
  box = jnp.asarray([[100.0, 120.0, 180.0, 260.0], [0, 0, 0, 0]])
  assign = jax.jit(lambda b, v: nanodet.atss_assign(pts, strides, ndet.model.level_sizes, b, v))
  assigned, pos = assign(box, jnp.asarray([True, False]))
  pos = np.asarray(pos)
  assert 1 <= pos.sum() <= 27 and (np.asarray(assigned)[pos] == 0).all()
  inside = np.asarray((pts[:, 0] > 100) & (pts[:, 0] < 180) & (pts[:, 1] > 120) & (pts[:, 1] < 260))
  assert inside[pos].all()
  _, none = assign(box, jnp.asarray([False, False]))
  assert not np.asarray(none).any()


@pytest.mark.heavy
def test_centernet_depthwise_taps_path_equals_the_grouped_conv_path_on_a_photo(fetched, photos, fx):
  names, x = photos
  taps = zoo.build("centernet_mobilenetv3", depthwise="taps")
  heads = jax.jit(taps.model.heads)(taps.variables, x[:1])
  np.testing.assert_allclose(np.asarray(heads["heatmap"][0]).max(-1), fx["dog/centernet/kp_max"], atol=2e-5)


def test_features_are_named_nhwc_maps(cnet, ndet):
  x = jnp.zeros((1, 64, 64, 3))
  # A Detector is a pytree argument of jitted code (its variables traced, its model static).
  out = jax.eval_shape(lambda d, x: d(x), cnet, x)
  assert out.boxes.shape == (1, 100, 4) and out.valid.shape == (1, 100)
  assert jax.eval_shape(lambda d, x: d(x), ndet, x).boxes.shape == (1, 100, 4)
  shapes = jax.eval_shape(cnet.features, x)
  assert {k: v.shape for k, v in shapes.items()} == {
      "stride4": (1, 128, 128, 24), "stride8": (1, 64, 64, 32), "stride16": (1, 32, 32, 88),
      "stride32": (1, 16, 16, 120), "head": (1, 128, 128, 128)}
  shapes = jax.eval_shape(ndet.features, x)
  assert {k: v.shape for k, v in shapes.items()} == {
      "stride8": (1, 52, 52, 128), "stride16": (1, 26, 26, 256), "stride32": (1, 13, 13, 512),
      "pan8": (1, 52, 52, 128), "pan16": (1, 26, 26, 128), "pan32": (1, 13, 13, 128)}


def test_zoo_names_and_bad_arguments(fetched):
  assert {"centernet_mobilenetv3", "nanodet"} <= set(zoo.available())
  with pytest.raises(ValueError, match="COCO-80 detector"):
    zoo.build("nanodet", num_classes=21)
  with pytest.raises(ValueError, match=r"model.json.*python -m rajax.assets fetch human-models"):
    zoo.build("centernet_mobilenetv3", weights="centernet.pth")
  with pytest.raises(ValueError, match="Unknown options"):
    zoo.build("centernet_mobilenetv3", iou_threshold=0.5)
  with pytest.raises(ValueError, match="not the human-models CenterNet graph"):
    zoo.build("centernet_mobilenetv3", weights=assets.path("human-models/nanodet.json"))
  with pytest.raises(ValueError, match=r"images \[B, H, W, 3\]"):
    zoo.build("nanodet").model.detect(zoo.build("nanodet").variables, jnp.zeros((64, 64, 3)))
