"""The person segmenters `selfie` and `meet` (rajax.segmentation.person) against the TF.js runtime.

tests/reference/tfjs_detectors.npz (tests/reference/make_tfjs_fixtures.py) holds what
@tensorflow/tfjs 4.22 computed with the human-models graphs on real photos at 640x480, fed as
@vladmandic/human feeds them: selfie's sigmoid mask [256, 256, 1] and meet's two raw channels
[144, 256, 2], each at every 4th model pixel. The weights are float16 in the files and both
runtimes compute with the same dequantised float32 values, so the differences are float32 rounding:
~3e-6 for selfie's probability, ~6e-5 for meet's logits (of magnitude up to ~17).

Whether the masks make sense is checked on darknet's person.jpg (a person, a dog and a horse) with
the boxes CenterNet (rajax.detection.centernet, equal to TF.js in tests/test_tfjs_detectors.py)
finds there, in the photo's 424 x 640 pixels: an independent model says where the person is.
"""

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from rajax import assets
from rajax.data import photos as photos_lib
from rajax.models import recognizers, tfjs_graph
from rajax.segmentation import person, zoo
from rajax.segmentation.segmenter import Segmenter

HERE = pathlib.Path(__file__).resolve().parent
FIXTURE = HERE / "reference" / "tfjs_detectors.npz"
SIZE = (480, 640)
# CenterNet's boxes (x1, y1, x2, y2; scores 0.67, 0.42, 0.31) on darknet/person.jpg at its own 424 x 640.
PERSON_JPG_BOXES = {"person": (186, 109, 276, 375), "dog": (67, 264, 201, 348), "horse": (396, 136, 602, 343)}
PERSON_JPG_SIZE = (424, 640)


def _maker():
  spec = importlib.util.spec_from_file_location("make_tfjs_fixtures", HERE / "reference" / "make_tfjs_fixtures.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.fixture(scope="module")
def fx():
  return np.load(FIXTURE)


@pytest.fixture(scope="module")
def batch(fx):
  """[astronaut, dog] as the fixture was made (checked by their digests), and person.jpg resized to 640x480."""
  assets.fetch(["human-models", "darknet"])
  maker = _maker()
  imgs = []
  for name in ("astronaut", "dog"):
    img = maker.prepare(name)
    assert maker.digest(img) == str(fx[f"{name}/sha256"]), f"prepared photo {name} differs from the fixture's"
    imgs.append(img)
  raw = photos_lib.photo("darknet/person.jpg")
  assert raw.shape[:2] == PERSON_JPG_SIZE
  imgs.append(np.asarray(Image.fromarray(raw).resize(SIZE[::-1], Image.BICUBIC)))
  return jnp.asarray(np.stack(imgs), jnp.float32) / 255.0


@pytest.fixture(scope="module", params=["selfie", "meet"])
def run(request, batch):
  """(segmenter, model-resolution logits, image-size logits) on the batch, one compilation."""
  seg = zoo.build(request.param, depthwise="conv")
  fn = jax.jit(lambda s, x: (s.model.model_logits(s.variables, x), s(x))).lower(seg, batch).compile()
  z, out = fn(seg, batch)
  return seg, np.asarray(z), np.asarray(out)


def _tfjs_output(seg_name: str, z: np.ndarray) -> np.ndarray:
  """The graph's own output (what TF.js returns) from two-class logits at the model's resolution."""
  if seg_name == "selfie":
    return 0.5 * (1 + np.tanh(z[..., 1:].astype(np.float64) / 2))   # the sigmoid, without overflow
  return z


def test_model_resolution_outputs_equal_tfjs_on_real_photos(run, fx):
  seg, z, _ = run
  h, w = person.SPECS[seg.name].input_size
  assert z.shape == (3, h, w, 2)
  if seg.name == "selfie":
    assert not z[..., 0].any()            # background logit 0: softmax's person probability is the sigmoid
  tol = {"selfie": 2e-5, "meet": 3e-4}[seg.name]
  for i, photo in enumerate(("astronaut", "dog")):
    got = _tfjs_output(seg.name, z[i, ::4, ::4])
    np.testing.assert_allclose(got, fx[f"{photo}/{seg.name}/mask"], atol=tol, err_msg=f"{seg.name} {photo}")
  # Negative control: another photo's output.
  assert np.abs(_tfjs_output(seg.name, z[0, ::4, ::4]) - fx[f"dog/{seg.name}/mask"]).max() > 0.1


def test_image_size_logits_are_tfjs_bilinear_resizes_and_equal_tfjs_where_pixels_coincide(run, fx):
  seg, z, out = run
  h, w = person.SPECS[seg.name].input_size
  assert out.shape == (3, *SIZE, 2) and out.dtype == np.float32
  # TF.js's resizeBilinear (legacy rule: source = dst * in / out), by hand in NumPy on a few rows and columns.
  ys, xs = np.array([0, 7, 233, 479]), np.array([0, 3, 318, 639])
  sy, sx = ys * h / SIZE[0], xs * w / SIZE[1]
  y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
  y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
  fy, fx_ = (sy - y0)[:, None, None], (sx - x0)[None, :, None]
  zz = z[0].astype(np.float64)
  top = zz[y0][:, x0] * (1 - fx_) + zz[y0][:, x1] * fx_
  bottom = zz[y1][:, x0] * (1 - fx_) + zz[y1][:, x1] * fx_
  want = top * (1 - fy) + bottom * fy
  np.testing.assert_allclose(out[0][ys][:, xs], want, atol=1e-4)
  # Image pixels that fall exactly on the fixture's model pixels (every 4th): the TF.js output itself.
  ref = fx[f"astronaut/{seg.name}/mask"]
  rows = np.arange(0, SIZE[0], 15 if seg.name == "selfie" else 40)     # y * h / 480 = 8m (selfie), 12j (meet)
  cols = np.arange(0, SIZE[1], 10)                                     # x * 256 / 640 = 4k
  picked = out[0][rows][:, cols]
  ref_rows = ref[(rows * h // SIZE[0]) // 4][:, (cols * w // SIZE[1]) // 4]
  if seg.name == "selfie":
    got = jax.nn.softmax(picked, -1)[..., 1:]
  else:
    got = picked
  np.testing.assert_allclose(np.asarray(got), ref_rows, atol={"selfie": 2e-5, "meet": 3e-4}[seg.name])
  # Negative control: one image row further is another place.
  assert np.abs(out[0][rows + 7][:, cols] - picked).max() > 0.5


def test_person_masks_fill_the_person_box_and_miss_the_dog_and_horse(run):
  seg, _, out = run
  mask = out[2].argmax(-1) == 1                                       # person.jpg at 480 x 640
  sy = SIZE[0] / PERSON_JPG_SIZE[0]
  frac = {}
  inside = np.zeros_like(mask)
  for name, (x1, y1, x2, y2) in PERSON_JPG_BOXES.items():
    box = (slice(round(y1 * sy), round(y2 * sy)), slice(x1, x2))
    frac[name] = mask[box].mean()
    if name == "person":
      inside[box] = True
  assert frac["person"] > 0.5, frac                                   # most of the person's box is person (channel 1)
  assert frac["dog"] < 0.15 and frac["horse"] < 0.02, frac            # the animals are background
  assert mask[inside].sum() > 0.9 * mask.sum()                        # and little person elsewhere
  # The probabilities are a softmax over (background, person): the same decision as the person channel alone.
  p = np.asarray(jax.nn.softmax(out[2], -1))
  np.testing.assert_array_equal(p[..., 1] > 0.5, mask)


def _loss(seg: Segmenter, variables, x, labels):
  """Mean per-pixel cross-entropy of the segmenter's image-size logits (the segmentation task's loss)."""
  logits = seg.apply(variables, x)
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[..., None], -1))


def _check_gradients(seg: Segmenter, *, weights: bool):
  """Finite, non-zero gradients of the loss with respect to the image (and the weights if `weights`),
  the image's checked against a central finite difference along a random direction."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(0.2, 0.8, size=(1, 40, 56, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 2, size=(1, 40, 56)), jnp.int32)
  argnums = (1, 0) if weights else (1,)
  step = jax.jit(jax.value_and_grad(lambda v, x: _loss(seg, v, x, labels), argnums=argnums))
  step = step.lower(seg.variables, x).compile()
  value, grads = step(seg.variables, x)
  gx = grads[0]
  assert np.isfinite(float(value))
  assert np.isfinite(np.asarray(gx)).all() and float(jnp.abs(gx).max()) > 0
  if weights:
    leaves = jax.tree.leaves(grads[1])
    assert len(leaves) == len(jax.tree.leaves(seg.variables))
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert sum(float(jnp.abs(g).max()) > 0 for g in leaves) > 0.9 * len(leaves)
  d = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  d = d / jnp.linalg.norm(d)
  eps = 1e-2
  fd = (float(step(seg.variables, x + eps * d)[0]) - float(step(seg.variables, x - eps * d)[0])) / (2 * eps)
  analytic = float(jnp.vdot(gx, d))
  assert abs(fd - analytic) <= 0.05 * abs(analytic) + 1e-5, (fd, analytic)
  assert abs(analytic) > 1e-4          # a direction along which the loss does change


def test_selfie_is_jittable_and_differentiable_in_its_input():
  """What a method training P through a frozen segmenter needs (CI; the weights' gradients: heavy)."""
  _check_gradients(zoo.build("selfie", depthwise="conv"), weights=False)


@pytest.mark.heavy   # 5-20 s of a 2-core CI; `python -m pytest -m heavy` runs it
@pytest.mark.parametrize("name", ["selfie", "meet"])
def test_segmenters_are_differentiable_in_their_weights_and_their_input(name):
  _check_gradients(zoo.build(name, depthwise="conv"), weights=True)


@pytest.mark.heavy
def test_depthwise_taps_path_equals_the_conv_path(batch, fx):
  for name in ("selfie", "meet"):
    seg = zoo.build(name, depthwise="taps")
    z = np.asarray(jax.jit(seg.model.model_logits)(seg.variables, batch[:1]))
    np.testing.assert_allclose(_tfjs_output(name, z[0, ::4, ::4]), fx[f"astronaut/{name}/mask"],
                               atol={"selfie": 2e-5, "meet": 3e-4}[name])


def test_zoo_recognizer_features_and_bad_arguments(tmp_path, monkeypatch):
  assets.fetch(["human-models"])
  assert {"selfie", "meet"} <= set(recognizers.available("segmentation"))
  seg = recognizers.recognizer("meet")
  assert isinstance(seg, Segmenter) and seg.task == "segmentation"
  assert seg.num_classes == 2 and seg.class_names == ("background", "person") and seg.model.ignore_label == 255
  x = jnp.zeros((2, 30, 50, 3))
  heads, stats = jax.eval_shape(lambda s, x: s.heads(x, train=True), seg, x)   # a pytree argument of jitted code
  assert set(heads) == {"out"} and heads["out"].shape == (2, 30, 50, 2) and stats == {}
  shapes = {k: v.shape for k, v in jax.eval_shape(seg.features, x).items()}
  assert shapes == {"stride2": (2, 72, 128, 16), "stride4": (2, 36, 64, 16), "stride8": (2, 18, 32, 24),
                    "stride16": (2, 9, 16, 24), "context": (2, 9, 16, 128), "decoder8": (2, 18, 32, 24),
                    "decoder4": (2, 36, 64, 16), "decoder2": (2, 72, 128, 16)}
  with pytest.raises(ValueError, match="2 classes"):
    zoo.build("selfie", num_classes=21)
  with pytest.raises(ValueError, match=r"model.json.*python -m rajax.assets fetch human-models"):
    zoo.build("selfie", weights="selfie.pth")
  with pytest.raises(ValueError, match=r"not the human-models selfie graph.*input is \(1, 144, 256, 3\)"):
    zoo.build("selfie", weights=assets.path("human-models/meet.json"))
  placeholder = {"name": "input_1", "op": "Placeholder",
                 "attr": {"shape": {"shape": {"dim": [{"size": str(n)} for n in (1, 144, 256, 3)]}}}}
  (tmp_path / "other.json").write_text(json.dumps({"format": "graph-model", "modelTopology": {"node": [placeholder]},
                                                   "weightsManifest": []}))
  with pytest.raises(ValueError, match="not the human-models meet graph.*no node 'segment'"):
    zoo.build("meet", weights=tmp_path / "other.json")
  with pytest.raises(ValueError, match="Unknown options"):
    zoo.build("meet", threshold=0.5)
  with pytest.raises(ValueError, match=r"\[batch, height, width, 3\]"):
    seg(jnp.zeros((30, 50, 3)))
  # A missing asset names the command that fetches it.
  monkeypatch.setenv(assets.ENV, str(tmp_path))
  with pytest.raises(assets.AssetError, match=r"human-models/selfie.json is missing.*python -m rajax.assets fetch"):
    zoo.build("selfie")
