"""Models: processors P (SRResNet), the transformer T (ResnetGenerator) and recognizers R (ResNets).

Shapes, ranges and dtypes; BatchNorm modes; the Recognizer pytree; weights files; and layer-for-layer
equivalence with the PyTorch originals: SRResNet and the ResnetGenerator through fixtures made once
with torch (tests/reference/make_architectures.py), a ResNet at other widths where torch is installed.
"""

import functools
import re

import chex
import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import rajax
import seeded_state_dict as seeded
from rajax import weights as weights_lib
from rajax.models import IMAGENET_MEAN, IMAGENET_STD, layers, resnet_generator
from rajax.weights import convert

SMALL = dict(blocks=2, channels=8)


def _images(key, shape):
  return jax.random.uniform(jax.random.key(key), shape, jnp.float32)


def _init(module, x, seed=0):
  # jit + the RBG generator: several times faster to initialise on CPU than eager threefry.
  return jax.jit(module.init)(jax.random.key(seed, impl="rbg"), x)


@functools.lru_cache(maxsize=None)
def _srresnet(scale, blocks=2, channels=8, dtype="float32"):
  model = rajax.processor("srresnet", scale=scale, blocks=blocks, channels=channels, dtype=dtype)
  variables = _init(model, jnp.zeros((1, 8, 8, 3)))
  return model, variables


# --------------------------------------------------------------------------- SRResNet


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_srresnet_output_shape_dtype_range(scale):
  model, variables = _srresnet(scale)
  x = _images(1, (2, 6, 5, 3))
  y = model.apply(variables, x)
  assert y.shape == (2, 6 * scale, 5 * scale, 3)
  assert y.dtype == jnp.float32
  y = np.asarray(y)
  assert np.all(np.isfinite(y))
  assert y.min() >= 0.0 and y.max() <= 1.0
  # Not a constant image: the output depends on the input.
  assert y.std() > 0
  y2 = np.asarray(model.apply(variables, _images(2, (2, 6, 5, 3))))
  assert not np.allclose(y, y2)


def test_srresnet_bfloat16_params_float32_output_float32():
  model, variables = _srresnet(2, dtype="bfloat16")
  assert model.dtype == jnp.bfloat16
  for path, leaf in traverse_util.flatten_dict(variables, sep="/").items():
    assert leaf.dtype == jnp.float32, path
  x = _images(3, (2, 8, 8, 3))
  y = model.apply(variables, x)
  assert y.dtype == jnp.float32
  assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
  # The compute really runs in bfloat16: close to, but not identical with, the float32 model.
  model32 = rajax.processor("srresnet", scale=2, **SMALL)
  y32 = model32.apply(variables, x)
  diff = np.abs(np.asarray(y) - np.asarray(y32))
  assert diff.max() > 0
  assert diff.max() < 0.05


@pytest.mark.parametrize("blocks,channels", [(0, 4), (1, 8), (3, 6)])
def test_srresnet_blocks_and_channels(blocks, channels):
  model = rajax.processor("srresnet", scale=2, blocks=blocks, channels=channels)
  variables = _init(model, jnp.zeros((1, 4, 4, 3)))
  params = variables["params"]
  block_names = sorted(k for k in params if k.startswith("blocks_"))
  assert block_names == [f"blocks_{i}" for i in range(blocks)]
  assert params["head"]["kernel"].shape == (9, 9, 3, channels)
  assert params["mid"]["kernel"].shape == (3, 3, channels, channels)
  assert params["up_0"]["kernel"].shape == (3, 3, channels, 4 * channels)
  assert params["tail"]["kernel"].shape == (9, 9, channels, 3)
  for name in block_names:
    assert params[name]["conv1"]["kernel"].shape == (3, 3, channels, channels)
    assert params[name]["bn1"]["scale"].shape == (channels,)
  # One upsampling stage per factor of 2.
  assert sorted(k for k in params if k.startswith("up_") and not k.endswith("prelu")) == ["up_0"]


@pytest.mark.parametrize("input_skip", [False, True])
def test_srresnet_outer_kernel_sets_head_and_tail(input_skip):
  model = rajax.processor("srresnet", scale=2, blocks=1, channels=4, outer_kernel=3, input_skip=input_skip)
  x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
  variables = _init(model, x)
  assert variables["params"]["head"]["kernel"].shape == (3, 3, 3, 4)
  assert variables["params"]["tail"]["kernel"].shape == (3, 3, 4, 3)
  assert model.apply(variables, x).shape == (2, 16, 16, 3)
  for bad in (0, 4):
    with pytest.raises(ValueError, match="outer_kernel"):
      rajax.processor("srresnet", scale=2, outer_kernel=bad)


def test_srresnet_upsampling_stages_follow_scale():
  for scale, n in [(1, 0), (2, 1), (4, 2), (8, 3)]:
    _, variables = _srresnet(scale)
    ups = sorted(k for k in variables["params"] if k.startswith("up_") and not k.endswith("prelu"))
    assert ups == [f"up_{i}" for i in range(n)]


@pytest.mark.parametrize("scale", [3, 0, 16])
def test_srresnet_bad_scale(scale):
  with pytest.raises(ValueError, match="scale"):
    rajax.processor("srresnet", scale=scale)


def test_unknown_processor_names_options():
  with pytest.raises(ValueError) as e:
    rajax.processor("rcan")
  assert "rcan" in str(e.value)
  assert all(n in str(e.value) for n in ("srresnet", "resnet_generator", "edsr", "swinir"))


def test_unknown_processor_option_names_options():
  with pytest.raises(TypeError) as e:
    rajax.processor("srresnet", scale=2, n_blocks=3)
  msg = str(e.value)
  assert "n_blocks" in msg
  for option in ("scale", "blocks", "channels", "dtype"):
    assert option in msg


def test_srresnet_rejects_nchw():
  model, variables = _srresnet(2)
  with pytest.raises(ValueError, match="NHWC"):
    model.apply(variables, jnp.zeros((2, 3, 8, 8)))
  with pytest.raises(ValueError, match="NHWC"):
    model.apply(variables, jnp.zeros((8, 8, 3)))


# --------------------------------------------------------------------------- BatchNorm modes


def test_batchnorm_train_updates_statistics():
  model, variables = _srresnet(2)
  x = _images(4, (4, 8, 8, 3))
  y, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert y.shape == (4, 16, 16, 3)
  old = traverse_util.flatten_dict(variables["batch_stats"], sep="/")
  new = traverse_util.flatten_dict(updates["batch_stats"], sep="/")
  assert set(old) == set(new) and len(old) == 2 * 2 * 2  # 2 blocks x 2 BNs x (mean, var)
  for k in old:
    assert not np.allclose(old[k], new[k]), k
  # PyTorch momentum 0.1: from the initial (0, 1) statistics, new = 0.1 * batch statistic (+ 0.9).
  # The first BN sees conv1 of the first block on the head's output; recompute that batch mean.
  _, inter = model.apply(variables, x, capture_intermediates=lambda m, _: m.name == "conv1")
  h = inter["intermediates"]["blocks_0"]["conv1"]["__call__"][0]
  batch_mean = np.asarray(h).mean(axis=(0, 1, 2))
  np.testing.assert_allclose(new["blocks_0/bn1/mean"], 0.1 * batch_mean, rtol=1e-4, atol=1e-6)


def test_batchnorm_train_uses_batch_statistics_eval_does_not():
  model, variables = _srresnet(2)
  x = _images(5, (4, 8, 8, 3))
  full = np.asarray(model.apply(variables, x, train=False))
  one = np.asarray(model.apply(variables, x[:1], train=False))
  np.testing.assert_allclose(full[:1], one, rtol=1e-5, atol=1e-6)
  # In training mode the result of one image does depend on the rest of the batch.
  full_t, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  one_t, _ = model.apply(variables, x[:2], train=True, mutable=["batch_stats"])
  assert not np.allclose(np.asarray(full_t[:1]), np.asarray(one_t[:1]), atol=1e-6)


def test_eval_mode_does_not_mutate():
  model, variables = _srresnet(2)
  x = _images(6, (2, 8, 8, 3))
  y, updates = model.apply(variables, x, train=False, mutable=["batch_stats"])
  old = traverse_util.flatten_dict(variables["batch_stats"], sep="/")
  new = traverse_util.flatten_dict(updates["batch_stats"], sep="/")
  for k in old:
    np.testing.assert_array_equal(old[k], new[k])


# --------------------------------------------------------------------------- ResnetGenerator


@functools.lru_cache(maxsize=None)
def _generator(blocks=1, channels=4):
  model = rajax.processor("resnet_generator", blocks=blocks, channels=channels)
  return model, _init(model, jnp.zeros((1, 16, 16, 3)))


def test_resnet_generator_same_size_unit_range():
  model, variables = _generator()
  x = _images(7, (2, 12, 20, 3))
  y = model.apply(variables, x)
  assert y.shape == x.shape and y.dtype == jnp.float32
  y = np.asarray(y)
  assert y.min() >= 0.0 and y.max() <= 1.0 and y.std() > 0


def test_resnet_generator_bottleneck_width():
  model, variables = _generator(blocks=2, channels=4)
  params = variables["params"]
  assert sorted(k for k in params if k.startswith("blocks_")) == ["blocks_0", "blocks_1"]
  assert params["down_1"]["kernel"].shape == (3, 3, 8, 16)
  for b in ("blocks_0", "blocks_1"):
    assert params[b]["conv1"]["kernel"].shape == (3, 3, 16, 16)
    assert params[b]["bn2"]["scale"].shape == (16,)
  _, inter = model.apply(variables, jnp.zeros((1, 16, 8, 3)),
                         capture_intermediates=lambda m, _: m.name == "blocks_1")
  bottleneck = inter["intermediates"]["blocks_1"]["__call__"][0]
  assert bottleneck.shape == (1, 4, 2, 16)


@pytest.mark.parametrize("hw", [(14, 16), (16, 18), (10, 10)])
def test_resnet_generator_needs_multiple_of_4(hw):
  model, variables = _generator()
  with pytest.raises(ValueError, match="divisible by 4"):
    model.apply(variables, jnp.zeros((1, *hw, 3)))


def test_resnet_generator_rejects_nchw():
  model, variables = _generator()
  with pytest.raises(ValueError, match="NHWC"):
    model.apply(variables, jnp.zeros((1, 3, 16, 16)))


# --------------------------------------------------------------------------- Recognizer

NUM_CLASSES = 10
WIDTH = 8


@pytest.fixture(scope="module")
def rec():
  return rajax.recognizer("resnet18", "random", num_classes=NUM_CLASSES, width=WIDTH, seed=3)


@pytest.fixture(scope="module")
def rec_file(rec, tmp_path_factory):
  return weights_lib.save(tmp_path_factory.mktemp("weights") / "r18.msgpack", rec.variables)


# Jitted calls: a compiled ResNet runs much faster on CPU than its first op-by-op (eager) call.
_logits = jax.jit(lambda r, x: r(x))
_features = jax.jit(lambda r, x: r(x, features=True))


def test_recognizer_logits(rec):
  x = _images(8, (2, 32, 32, 3))
  logits = _logits(rec, x)
  assert logits.shape == (2, NUM_CLASSES) and logits.dtype == jnp.float32
  assert rec.num_classes == NUM_CLASSES
  assert np.all(np.isfinite(np.asarray(logits)))
  assert not np.allclose(logits[0], logits[1])
  # Eager and jitted calls agree.
  np.testing.assert_allclose(rec(x), logits, rtol=1e-5, atol=1e-5)


def test_recognizer_inference_mode(rec):
  x = _images(9, (4, 32, 32, 3))
  full = np.asarray(_logits(rec, x))
  np.testing.assert_allclose(full[1:2], np.asarray(_logits(rec, x[1:2])), rtol=1e-5, atol=1e-5)
  other = x.at[0].set(0.0).at[2:].set(1.0)
  np.testing.assert_allclose(full[1], np.asarray(_logits(rec, other))[1], rtol=1e-5, atol=1e-5)


def test_recognizer_features(rec):
  x = _images(10, (2, 64, 64, 3))
  out = _features(rec, x)
  assert isinstance(out, tuple) and len(out) == 2
  logits, feats = out
  assert isinstance(feats, dict)
  w = WIDTH
  expected = {
      "stem": (2, 32, 32, w),
      "layer1": (2, 16, 16, w),
      "layer2": (2, 8, 8, 2 * w),
      "layer3": (2, 4, 4, 4 * w),
      "layer4": (2, 2, 2, 8 * w),
      "pool": (2, 8 * w),
      "logits": (2, NUM_CLASSES),
  }
  assert set(feats) == set(expected)
  for k, shape in expected.items():
    assert feats[k].shape == shape, k
  np.testing.assert_allclose(feats["logits"], logits)
  np.testing.assert_allclose(logits, _logits(rec, x), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(feats["pool"], np.asarray(feats["layer4"]).mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
  assert float(jnp.min(feats["stem"])) >= 0.0  # after the ReLU
  # logits = fc(pool)
  fc = rec.variables["params"]["fc"]
  np.testing.assert_allclose(logits, np.asarray(feats["pool"]) @ np.asarray(fc["kernel"]) + np.asarray(fc["bias"]),
                             rtol=1e-4, atol=1e-5)


def test_recognizer_preprocess(rec):
  x = _images(11, (2, 32, 32, 3))
  mean = np.array([0.485, 0.456, 0.406], np.float32)
  std = np.array([0.229, 0.224, 0.225], np.float32)
  assert tuple(IMAGENET_MEAN) == pytest.approx(tuple(mean)) and tuple(IMAGENET_STD) == pytest.approx(tuple(std))
  pre = rec.preprocess(x)
  assert pre.dtype == jnp.float32
  np.testing.assert_allclose(pre, (np.asarray(x) - mean) / std, rtol=1e-6, atol=1e-6)
  # The network sees the normalised images.
  net = jax.jit(lambda v, im: rec.module.apply(v, im, train=False))
  direct = net(rec.variables, (np.asarray(x) - mean) / std)
  np.testing.assert_allclose(_logits(rec, x), direct, rtol=1e-5, atol=1e-5)
  raw = net(rec.variables, x)
  assert not np.allclose(_logits(rec, x), raw, atol=1e-3)


def test_recognizer_rejects_nchw(rec):
  with pytest.raises(ValueError, match="NHWC"):
    rec(jnp.zeros((2, 3, 32, 32)))


def test_recognizer_is_pytree_of_variables(rec):
  leaves = jax.tree.leaves(rec)
  var_leaves = jax.tree.leaves(rec.variables)
  assert len(leaves) == len(var_leaves) > 0
  for a, b in zip(leaves, var_leaves):
    assert a is b
  for leaf in leaves:
    assert isinstance(leaf, jax.Array)
  # Rebuilding from the leaves keeps name and module.
  rebuilt = jax.tree.unflatten(jax.tree.structure(rec), leaves)
  assert rebuilt.name == rec.name and rebuilt.module == rec.module


def test_recognizer_as_jit_argument(rec):
  traces = []

  @jax.jit
  def f(r, x):
    traces.append(1)
    return r(x)

  x = _images(12, (2, 32, 32, 3))
  np.testing.assert_allclose(f(rec, x), rec(x), rtol=1e-5, atol=1e-5)
  # Weights are arguments, not constants: new values -> new result, same compiled program.
  scaled = jax.tree.map(lambda v: v * 1.5, rec)
  out = f(scaled, x)
  assert len(traces) == 1
  assert not np.allclose(out, rec(x), atol=1e-4)
  np.testing.assert_allclose(out, scaled(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_recognizer_input_gradient(dtype, rec, rec_file):
  r = rajax.recognizer("resnet18", weights=str(rec_file), num_classes=NUM_CLASSES, width=WIDTH, dtype=dtype)
  assert r.module.dtype == jnp.dtype(dtype)
  for leaf in jax.tree.leaves(r.variables):  # parameters stay float32 whatever the compute dtype
    assert leaf.dtype == jnp.float32
  x = _images(13, (2, 32, 32, 3))
  labels = jnp.array([1, 7])

  def loss(images):
    logits = r(images)
    ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))
    return ce, logits

  (ce, logits), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(x)
  assert logits.shape == (2, NUM_CLASSES) and logits.dtype == jnp.float32
  assert np.isfinite(float(ce))
  assert g.shape == x.shape and g.dtype == jnp.float32
  g = np.asarray(g)
  assert np.all(np.isfinite(g))
  assert np.abs(g).max() > 0
  assert np.count_nonzero(g) > g.size // 2
  # Same weights in either compute dtype: bfloat16 logits are close to float32 ones, but not equal.
  diff = np.abs(np.asarray(logits) - np.asarray(_logits(rec, x)))
  assert diff.max() < 0.1 * np.abs(np.asarray(logits)).max() + 1e-2
  if dtype == "bfloat16":
    assert diff.max() > 0
  else:
    assert diff.max() < 1e-4


def test_unknown_recognizer_lists_names():
  with pytest.raises(ValueError) as e:
    rajax.recognizer("alexnet")
  msg = str(e.value)
  assert "alexnet" in msg
  for name in ("resnet18", "resnet50", "vgg16_bn", "densenet121", "mobilenet_v2", "efficientnet_lite0"):
    assert name in msg


def test_missing_weights_file(tmp_path):
  path = tmp_path / "nope" / "resnet18.msgpack"
  with pytest.raises(weights_lib.WeightsError) as e:
    rajax.recognizer("resnet18", weights=str(path), num_classes=NUM_CLASSES, width=WIDTH)
  assert str(path) in str(e.value)


def test_weights_round_trip(rec, tmp_path):
  path = tmp_path / "r18.msgpack"
  weights_lib.save(path, rec.variables)
  assert path.is_file()
  loaded = rajax.recognizer("resnet18", weights=str(path), num_classes=NUM_CLASSES, width=WIDTH)
  x = _images(14, (2, 32, 32, 3))
  np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(rec(x)))
  for a, b in zip(jax.tree.leaves(loaded.variables), jax.tree.leaves(rec.variables)):
    np.testing.assert_array_equal(a, b)
  # (rec was initialised with seed 3, not recognizer()'s default seed 0: the file's values were used.)


def test_weights_wrong_shape_named(rec, tmp_path):
  # Written for 10 classes, read for 7 classes: fc kernel and bias do not fit.
  path = tmp_path / "r18.msgpack"
  weights_lib.save(path, rec.variables)
  with pytest.raises(weights_lib.WeightsError) as e:
    rajax.recognizer("resnet18", weights=str(path), num_classes=7, width=WIDTH)
  msg = str(e.value)
  assert "params/fc/kernel" in msg and "params/fc/bias" in msg
  assert "conv1/kernel" not in msg


def test_weights_missing_key_named(rec, tmp_path):
  variables = jax.tree.map(np.asarray, rec.variables)
  variables = {"params": dict(variables["params"]), "batch_stats": dict(variables["batch_stats"])}
  del variables["batch_stats"]["layer2_0"]
  path = tmp_path / "r18.msgpack"
  weights_lib.save(path, variables)
  with pytest.raises(weights_lib.WeightsError) as e:
    rajax.recognizer("resnet18", weights=str(path), num_classes=NUM_CLASSES, width=WIDTH)
  msg = str(e.value)
  assert "missing" in msg
  assert "batch_stats/layer2_0/bn1/mean" in msg
  assert "params/layer2_0" not in msg


def test_weights_relative_missing_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(weights_lib.WeightsError) as e:
    rajax.recognizer("resnet18", weights="missing_r18.msgpack", num_classes=NUM_CLASSES, width=WIDTH)
  assert "missing_r18.msgpack" in str(e.value)


def test_weights_bad_format_and_corrupt_file(rec, tmp_path):
  pt = tmp_path / "r18.pt"
  pt.write_bytes(b"not a torch file")
  with pytest.raises(weights_lib.WeightsError, match=r"\.pt"):
    rajax.recognizer("resnet18", weights=str(pt), num_classes=NUM_CLASSES, width=WIDTH)
  bad = tmp_path / "r18.msgpack"
  bad.write_bytes(b"\xc1\xc1 garbage")
  with pytest.raises(weights_lib.WeightsError) as e:
    rajax.recognizer("resnet18", weights=str(bad), num_classes=NUM_CLASSES, width=WIDTH)
  assert str(bad) in str(e.value)


def test_weights_load_casts_to_template_dtype(rec, tmp_path):
  path = tmp_path / "half.msgpack"
  weights_lib.save(path, jax.tree.map(lambda v: np.asarray(v, np.float16), rec.variables))
  loaded = rajax.recognizer("resnet18", weights=str(path), num_classes=NUM_CLASSES, width=WIDTH)
  for a, b in zip(jax.tree.leaves(loaded.variables), jax.tree.leaves(rec.variables)):
    assert a.dtype == jnp.float32
    np.testing.assert_array_equal(a, np.asarray(b, np.float16).astype(np.float32))


def test_weights_unexpected_key_named(rec, tmp_path):
  variables = jax.tree.map(np.asarray, rec.variables)
  variables = {"params": {**variables["params"], "extra": {"kernel": np.zeros(3, np.float32)}},
               "batch_stats": variables["batch_stats"]}
  path = tmp_path / "r18.msgpack"
  weights_lib.save(path, variables)
  with pytest.raises(weights_lib.WeightsError, match="params/extra/kernel"):
    rajax.recognizer("resnet18", weights=str(path), num_classes=NUM_CLASSES, width=WIDTH)


# --------------------------------------------------------------------------- PyTorch equivalence, through fixtures
#
# tests/reference/make_architectures.py writes SRResNet and pix2pix's ResnetGenerator in PyTorch as the
# originals are, loads seeded values into them (tests/seeded_state_dict.py; the keys and torch's outputs
# on two photos are in tests/reference/architectures.{json,npz}). Here the same values go through the
# maps below into the Flax variables (every torch key used once, every shape checked).


def _srresnet_torch_key(path):
  """Flax module path -> the torch SRResNet's module prefix: 'blocks_0/bn1' -> 'blocks.0.bn1', 'up_1' -> 'ups.1'."""
  m = re.fullmatch(r"blocks_(\d+)/(conv1|bn1|prelu|conv2|bn2)", path)
  if m:
    return f"blocks.{m[1]}.{m[2]}"
  m = re.fullmatch(r"up_(\d+)(_prelu)?", path)
  if m:
    return f"{'up_prelus' if m[2] else 'ups'}.{m[1]}"
  if path in ("head", "head_prelu", "mid", "mid_prelu", "tail"):
    return path
  raise KeyError(path)


def _generator_torch_key(blocks):
  """Flax module path -> index in pix2pix's `model` Sequential, where padding and ReLU layers count too."""
  k = 10 + blocks
  top = {"stem": 1, "stem_bn": 2, "down_0": 4, "down_0_bn": 5, "down_1": 7, "down_1_bn": 8,
         "up_0": k, "up_0_bn": k + 1, "up_1": k + 3, "up_1_bn": k + 4, "head": k + 7}
  inner = {"conv1": 1, "bn1": 2, "conv2": 5, "bn2": 6}

  def key(path):
    m = re.fullmatch(r"blocks_(\d+)/(conv1|bn1|conv2|bn2)", path)
    return f"model.{10 + int(m[1])}.conv_block.{inner[m[2]]}" if m else f"model.{top[path]}"

  return key


def _pixel_shuffle_perm(c):
  """perm[k_flax] = k_torch: dm-pix index (i*2+j)*C + ch  <->  PixelShuffle index ch*4 + i*2 + j."""
  perm = np.empty(4 * c, np.int64)
  for i in range(2):
    for j in range(2):
      for ch in range(c):
        perm[(i * 2 + j) * c + ch] = ch * 4 + i * 2 + j
  return perm


def _processor_fixture(entry, *, shuffle_order=True):
  """Processor `entry` of the manifest, its variables from the seeded torch state dict, the photos in
  [0, 1], torch's outputs and the Flax-path -> torch-prefix map."""
  spec = seeded.entry(entry)
  opts = spec["options"]
  model = rajax.processor(spec["kind"], **opts)
  x = jnp.asarray(seeded.photos(entry), jnp.float32) / 255.0
  template = jax.eval_shape(model.init, jax.random.key(0), x)
  key = _srresnet_torch_key if spec["kind"] == "srresnet" else _generator_torch_key(opts["blocks"])
  sd = seeded.state_dict(entry)
  assert seeded.digest(sd) == spec["sha256"], "NumPy did not regenerate the weights torch held"
  variables = convert.from_torch(sd, template, key, source=entry)
  if spec["kind"] == "srresnet" and shuffle_order:
    perm = _pixel_shuffle_perm(opts["channels"])
    for name in [n for n in variables["params"] if re.fullmatch(r"up_\d+", n)]:
      up = variables["params"][name]
      variables["params"][name] = {"kernel": up["kernel"][..., perm], "bias": up["bias"][perm]}
  return model, variables, x, seeded.outputs(entry), key


@functools.partial(jax.jit, static_argnames=("model", "train"))
def _process(model, variables, x, train=False):
  if train:
    return model.apply(variables, x, train=True, mutable=["batch_stats"])
  return model.apply(variables, x)


@pytest.mark.parametrize("entry", ["srresnet_x4", "srresnet_x2", "srresnet_x1"])
def test_srresnet_matches_torch(entry):
  """Eval mode (BatchNorm running statistics), two photos: torch's output image within 2e-5."""
  model, variables, x, want, _ = _processor_fixture(entry)
  scale = seeded.entry(entry)["options"]["scale"]
  got = np.asarray(_process(model, variables, x))
  assert got.shape == want["output"].shape == (x.shape[0], x.shape[1] * scale, x.shape[2] * scale, 3)
  np.testing.assert_allclose(got, want["output"], rtol=1e-5, atol=2e-5)


def test_srresnet_pixel_shuffle_order_matters():
  """dm-pix orders the 4C channels before depth_to_space (row, column, channel), torch's PixelShuffle
  (channel, row, column): without permuting the upsampling convolution's outputs the x2 and x4 models
  miss torch's image, so the test above checks the order."""
  for entry in ("srresnet_x2", "srresnet_x4"):
    model, variables, x, want, _ = _processor_fixture(entry, shuffle_order=False)
    assert np.abs(np.asarray(_process(model, variables, x)) - want["output"]).max() > 0.05, entry


@pytest.mark.parametrize("entry", ["srresnet_x4", "resnet_generator"])
def test_train_mode_matches_torch(entry):
  """One train-mode forward of two photos: torch's output (BatchNorm normalises with the batch's
  statistics), every running mean as torch moved it (momentum 0.1), every running variance moved by
  0.1 towards the biased batch variance torch measured at that layer (torch itself takes the unbiased
  one, n / (n - 1) times it, n = batch x height x width >= 70 here). Negative controls: eval mode,
  momentum 0.01 and statistics left as they were miss."""
  model, variables, x, want, key = _processor_fixture(entry)
  out, updates = _process(model, variables, x, train=True)
  np.testing.assert_allclose(np.asarray(out), want["train_output"], rtol=1e-5, atol=2e-5)
  assert np.abs(np.asarray(_process(model, variables, x)) - want["train_output"]).max() > 0.01
  old = traverse_util.flatten_dict(variables["batch_stats"], sep="/")
  new = traverse_util.flatten_dict(updates["batch_stats"], sep="/")
  bns = sorted({k.rsplit("/", 1)[0] for k in old})
  assert set(new) == set(old) and len(bns) == sum(k.endswith("running_mean") for k, *_ in seeded.entry(entry)["keys"])
  tol = dict(rtol=1e-5, atol=1e-6)
  for path in bns:
    t = f"train/{key(path)}"
    bm, bv = want[f"{t}/batch_mean"], want[f"{t}/batch_var"]
    om, ov = old[f"{path}/mean"], old[f"{path}/var"]
    np.testing.assert_allclose(new[f"{path}/mean"], want[f"{t}/running_mean"], **tol, err_msg=path)
    np.testing.assert_allclose(new[f"{path}/mean"], 0.9 * om + 0.1 * bm, **tol, err_msg=path)
    np.testing.assert_allclose(new[f"{path}/var"], 0.9 * ov + 0.1 * bv, **tol, err_msg=path)
    assert not np.allclose(new[f"{path}/mean"], 0.99 * om + 0.01 * bm, **tol), path
    assert not np.allclose(new[f"{path}/var"], 0.99 * ov + 0.01 * bv, **tol), path
    assert not np.allclose(new[f"{path}/var"], ov, **tol), path


def test_resnet_generator_matches_torch(monkeypatch):
  """pix2pix's ResnetGenerator in eval mode (reflection padding, transposed convolutions with
  output_padding=1), two photos: torch's output image, (tanh + 1) / 2, within 2e-5. Negative
  controls: zero padding in place of reflection, and the transposed convolutions' extra row and
  column put first instead of last, miss it."""
  model, variables, x, want, _ = _processor_fixture("resnet_generator")
  got = np.asarray(_process(model, variables, x))
  assert got.shape == want["output"].shape == x.shape
  np.testing.assert_allclose(got, want["output"], rtol=1e-5, atol=2e-5)
  # (Eager applies below, so that the patched functions are the ones traced.)
  with monkeypatch.context() as m:
    m.setattr(layers, "reflect_pad", lambda a, pad: jnp.pad(a, ((0, 0), (pad, pad), (pad, pad), (0, 0))))
    zero_padded = np.asarray(model.apply(variables, x))
  assert np.abs(zero_padded - want["output"]).max() > 0.01
  conv_transpose = flax.linen.ConvTranspose
  with monkeypatch.context() as m:
    m.setattr(resnet_generator.nn, "ConvTranspose",
              lambda *args, padding, **kwargs: conv_transpose(*args, padding=((2, 1), (2, 1)), **kwargs))
    shifted = np.asarray(model.apply(variables, x))
  assert shifted.shape == want["output"].shape
  assert np.abs(shifted - want["output"]).max() > 0.01


# --------------------------------------------------------------------------- PyTorch equivalence (with torch)
#
# A ResNet written as torchvision's, at other widths and head sizes than the fixtures above, with
# random weights (and random BatchNorm statistics) copied into the Flax variables; skipped without torch.


def _t2np(t):
  return t.detach().cpu().numpy().astype(np.float32)


def _conv_kernel(conv):
  return _t2np(conv.weight).transpose(2, 3, 1, 0)  # [out, in, kh, kw] -> [kh, kw, in, out]


def _conv_vars(conv):
  out = {"kernel": _conv_kernel(conv)}
  if conv.bias is not None:
    out["bias"] = _t2np(conv.bias)
  return out


def _bn_vars(bn):
  return ({"scale": _t2np(bn.weight), "bias": _t2np(bn.bias)},
          {"mean": _t2np(bn.running_mean), "var": _t2np(bn.running_var)})


def _randomize(torch, model, seed):
  """Random weights everywhere, BatchNorm affine parameters and running statistics included."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.copy_(1.0 + 0.3 * torch.randn(m.weight.shape, generator=g))
        m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
        m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


def _torch_nhwc(torch, x_nchw_tensor):
  return _t2np(x_nchw_tensor).transpose(0, 2, 3, 1)


def _make_torch_resnet(torch, block, layers, width, num_classes):
  nn = torch.nn

  class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
      super().__init__()
      self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.downsample = downsample

    def forward(self, x):
      out = torch.relu(self.bn1(self.conv1(x)))
      out = self.bn2(self.conv2(out))
      idt = x if self.downsample is None else self.downsample(x)
      return torch.relu(out + idt)

  class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
      super().__init__()
      self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(planes * 4)
      self.downsample = downsample

    def forward(self, x):
      out = torch.relu(self.bn1(self.conv1(x)))
      out = torch.relu(self.bn2(self.conv2(out)))
      out = self.bn3(self.conv3(out))
      idt = x if self.downsample is None else self.downsample(x)
      return torch.relu(out + idt)

  blk = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]

  class ResNet(nn.Module):

    def __init__(self):
      super().__init__()
      self.inplanes = width
      self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      self.stages = nn.ModuleList()
      for i, n in enumerate(layers):
        self.stages.append(self._make_layer(width * 2**i, n, 1 if i == 0 else 2))
      self.fc = nn.Linear(width * 8 * blk.expansion, num_classes)

    def _make_layer(self, planes, n, stride):
      downsample = None
      if stride != 1 or self.inplanes != planes * blk.expansion:
        downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * blk.expansion, 1, stride, bias=False),
                                   nn.BatchNorm2d(planes * blk.expansion))
      out = [blk(self.inplanes, planes, stride, downsample)]
      self.inplanes = planes * blk.expansion
      out += [blk(self.inplanes, planes) for _ in range(1, n)]
      return nn.Sequential(*out)

    def forward(self, x):
      x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
      for s in self.stages:
        x = s(x)
      return self.fc(torch.flatten(torch.mean(x, dim=(2, 3)), 1))

  return ResNet()


def _resnet_vars_from_torch(t, block):
  params, stats = {}, {}
  params["conv1"] = _conv_vars(t.conv1)
  params["bn1"], stats["bn1"] = _bn_vars(t.bn1)
  n_conv = 2 if block == "basic" else 3
  for i, stage in enumerate(t.stages):
    for j, b in enumerate(stage):
      p, s = {}, {}
      for k in range(1, n_conv + 1):
        p[f"conv{k}"] = _conv_vars(getattr(b, f"conv{k}"))
        p[f"bn{k}"], s[f"bn{k}"] = _bn_vars(getattr(b, f"bn{k}"))
      if b.downsample is not None:
        p["downsample_conv"] = _conv_vars(b.downsample[0])
        p["downsample_bn"], s["downsample_bn"] = _bn_vars(b.downsample[1])
      params[f"layer{i + 1}_{j}"], stats[f"layer{i + 1}_{j}"] = p, s
  params["fc"] = {"kernel": _t2np(t.fc.weight).T, "bias": _t2np(t.fc.bias)}
  return {"params": params, "batch_stats": stats}


@pytest.mark.parametrize("name,block,layers,width,size", [
    ("resnet18", "basic", (2, 2, 2, 2), 8, 48),
    ("resnet50", "bottleneck", (3, 4, 6, 3), 16, 64),
])
def test_resnet_matches_torch(name, block, layers, width, size, tmp_path):
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  t = _make_torch_resnet(torch, block, layers, width, num_classes=7)
  _randomize(torch, t, seed=3)
  t.eval()
  images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(4))
  mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
  with torch.no_grad():
    want = _t2np(t((images - mean) / std))

  # Through a weights file, as a converted torchvision checkpoint would be used.
  path = tmp_path / f"{name}.msgpack"
  weights_lib.save(path, _resnet_vars_from_torch(t, block))
  r = rajax.recognizer(name, weights=str(path), num_classes=7, width=width)
  got = np.asarray(r(jnp.asarray(_torch_nhwc(torch, images))))
  assert got.shape == want.shape == (2, 7)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("dtype", ["int32", "no_such_dtype"])
def test_processor_bad_dtype(dtype):
  with pytest.raises(ValueError, match="dtype"):
    rajax.processor("srresnet", scale=2, dtype=dtype)


def test_processor_bad_sizes():
  with pytest.raises(ValueError, match="blocks"):
    rajax.processor("srresnet", blocks=-1)
  with pytest.raises(ValueError, match="channels"):
    rajax.processor("srresnet", channels=0)


def test_recognizer_bad_option():
  with pytest.raises(TypeError) as e:
    rajax.recognizer("resnet18", "random", num_classes=10, depth=3)
  assert "resnet18" in str(e.value) and "depth" in str(e.value)


# --------------------------------------------------------------------------- depthwise conv, input skip


@pytest.mark.parametrize("stride,padding,k", [(1, ((1, 1), (1, 1)), 3), (2, ((0, 1), (0, 1)), 3),
                                             (2, ((1, 2), (2, 1)), 5), (1, ((2, 2), (2, 2)), 5),
                                             (2, ((2, 2), (2, 2)), 5), (3, ((1, 1), (1, 1)), 3)])
def test_depthwise_conv_impls_agree(stride, padding, k):
  """The CPU-friendly shifted-sum depthwise conv (with its own gradient rule) equals XLA's grouped
  conv, values and gradients for the input and the kernel."""
  from rajax.models.layers import DepthwiseConv
  x = jax.random.normal(jax.random.key(0), (2, 11, 12, 6))
  mods = {impl: DepthwiseConv(6, k, stride=stride, padding=padding, impl=impl) for impl in ("conv", "shifts")}
  v = mods["conv"].init(jax.random.key(1), x)
  outs = {i: m.apply(v, x) for i, m in mods.items()}
  assert outs["conv"].shape == outs["shifts"].shape
  np.testing.assert_allclose(outs["shifts"], outs["conv"], rtol=1e-5, atol=1e-5)
  grads = {i: jax.grad(lambda v, x: jnp.sum(m.apply(v, x) ** 2), argnums=(0, 1))(v, x) for i, m in mods.items()}
  chex.assert_trees_all_close(grads["shifts"], grads["conv"], rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="impl"):
    DepthwiseConv(6, 3, impl="fft").init(jax.random.key(0), x)
  from rajax.models.layers import depthwise_shifts
  with pytest.raises(ValueError, match=r"kernel of shape \(k, k, 1, 6\)"):
    depthwise_shifts(x, jnp.zeros((3, 3, 1, 4)), 1, ((1, 1), (1, 1)))


@pytest.mark.parametrize("form", ["rows", "swapped"])
@pytest.mark.parametrize("k,padding,out", [(3, ((1, 1), (1, 1)), 5), (5, ((2, 2), (2, 2)), 2), (3, ((0, 2), (1, 0)), 4),
                                           (1, ((0, 0), (0, 0)), 3)])
def test_cpu_kernel_gradient_forms_equal_xlas(form, k, padding, out):
  """conv_cpu's kernel gradient (both forms) and input gradient equal XLA's convolution's, and Conv picks
  it on CPU for large unit-stride images only (values unchanged)."""
  from rajax.models import layers
  x = jax.random.normal(jax.random.key(0), (2, 9, 11, 6))
  w = jax.random.normal(jax.random.key(1), (k, k, 6, out))
  ref = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  ct = jax.random.normal(jax.random.key(2), ref(x, w).shape)
  np.testing.assert_allclose(layers.conv_cpu(x, w, padding, form), ref(x, w), rtol=1e-6, atol=1e-6)
  got = jax.grad(lambda x, w: jnp.sum(layers.conv_cpu(x, w, padding, form) * ct), argnums=(0, 1))(x, w)
  want = jax.grad(lambda x, w: jnp.sum(ref(x, w) * ct), argnums=(0, 1))(x, w)
  chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="kernel-gradient form"):
    layers.kernel_grad(x, ct, w.shape, padding, "fft")
  assert layers.cpu_kernel_grad_form(16, 16, 64, 9 * 64 * 64) is None            # small images: XLA's own
  assert layers.cpu_kernel_grad_form(32, 32, 256, 9 * 64 * 256) == "rows"
  assert layers.cpu_kernel_grad_form(64, 64, 3, 81 * 64 * 3) == "swapped"        # few outputs (the SR tail)
  assert layers.cpu_kernel_grad_form(64, 64, 3, 81 * 16 * 3) is None             # a narrow network's tail
  # Conv on a large image takes the path and keeps nn.Conv's values and gradients
  from flax import linen as nn
  big = jax.random.normal(jax.random.key(3), (1, 32, 32, 40))
  conv = layers.Conv(30, (3, 3), padding=((1, 1), (1, 1)))
  flax_conv = nn.Conv(30, (3, 3), padding=((1, 1), (1, 1)))
  v = flax_conv.init(jax.random.key(4), big)
  assert ("custom_vjp" in str(jax.make_jaxpr(lambda v: conv.apply(v, big))(v))) == (jax.default_backend() == "cpu")
  chex.assert_trees_all_close(jax.grad(lambda v: jnp.sum(conv.apply(v, big) ** 2))(v),
                              jax.grad(lambda v: jnp.sum(flax_conv.apply(v, big) ** 2))(v), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k,stride,padding,size", [(3, 1, ((1, 1), (1, 1)), 2), (3, 2, ((1, 1), (1, 1)), 4),
                                                (7, 2, ((3, 3), (3, 3)), 5), (3, 2, ((0, 1), (1, 0)), 7)])
def test_tiny_outputs_take_the_patch_product_with_xlas_values_and_gradients(k, stride, padding, size):
  """conv_patches equals XLA's convolution (values, input and kernel gradients), and Conv uses it on
  CPU for outputs of at most 16 pixels per image (ResNet's last stage on small images)."""
  from flax import linen as nn
  from rajax.models import layers
  x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 128))
  w = jax.random.normal(jax.random.key(1), (k, k, 128, 5))
  ref = lambda x, w: jax.lax.conv_general_dilated(x, w, (stride, stride), padding,
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  got = lambda x, w: layers.conv_patches(x, w, (stride, stride), padding)
  np.testing.assert_allclose(got(x, w), ref(x, w), rtol=1e-4, atol=1e-3)
  ct = jax.random.normal(jax.random.key(2), ref(x, w).shape)
  chex.assert_trees_all_close(jax.grad(lambda x, w: jnp.sum(got(x, w) * ct), argnums=(0, 1))(x, w),
                              jax.grad(lambda x, w: jnp.sum(ref(x, w) * ct), argnums=(0, 1))(x, w), rtol=1e-4, atol=1e-3)
  conv = layers.Conv(5, (k, k), strides=(stride, stride), padding=padding)
  v = nn.Conv(5, (k, k), strides=(stride, stride), padding=padding).init(jax.random.key(3), x)
  np.testing.assert_allclose(conv.apply(v, x), ref(x, v["params"]["kernel"]) + v["params"]["bias"], rtol=1e-4, atol=1e-3)
  uses = "concatenate" in str(jax.make_jaxpr(lambda v: conv.apply(v, x))(v))
  assert uses == (jax.default_backend() == "cpu" and ref(x, w).shape[1] * ref(x, w).shape[2] <= 16)
  narrow = layers.Conv(5, (k, k), strides=(stride, stride), padding=padding)   # few input channels: XLA's own
  x8 = x[..., :8]
  v8 = nn.Conv(5, (k, k), strides=(stride, stride), padding=padding).init(jax.random.key(3), x8)
  assert "concatenate" not in str(jax.make_jaxpr(lambda v: narrow.apply(v, x8))(v8))


@pytest.mark.parametrize("kernel,stride,padding,groups", [(1, 1, ((0, 0), (0, 0)), 1), (1, 2, ((0, 0), (0, 0)), 1),
                                                   (1, 2, ((1, 0), (0, 1)), 1), (3, 1, ((1, 1), (1, 1)), 2)])
def test_conv_impls_agree_with_flax_conv(kernel, stride, padding, groups):
  """layers.Conv has nn.Conv's variables and values for both impls; the 1x1 'dot' path is a matmul."""
  from flax import linen as nn
  from rajax.models.layers import Conv
  x = jax.random.normal(jax.random.key(0), (2, 7, 9, 6))
  ref = nn.Conv(4, (kernel, kernel), strides=(stride, stride), padding=padding, feature_group_count=groups)
  v = ref.init(jax.random.key(1), x)
  v = jax.tree.map(lambda a: a + 0.1, v)  # a non-zero bias
  want = ref.apply(v, x)
  mods = {impl: Conv(4, (kernel, kernel), strides=(stride, stride), padding=padding, feature_group_count=groups,
                     impl=impl) for impl in ("conv", "dot", "auto")}
  for impl, m in mods.items():
    assert jax.tree.structure(m.init(jax.random.key(1), x)) == jax.tree.structure(v)
    np.testing.assert_allclose(m.apply(v, x), want, rtol=1e-5, atol=1e-5, err_msg=impl)
  grads = {i: jax.jit(jax.grad(lambda v, x, m=m: jnp.sum(m.apply(v, x) ** 2), argnums=(0, 1)))(v, x)
           for i, m in mods.items()}
  chex.assert_trees_all_close(grads["dot"], grads["conv"], rtol=1e-4, atol=1e-4)
  hlo = jax.jit(mods["dot"].apply).lower(v, x).as_text()
  assert ("convolution" in hlo) == (kernel != 1), hlo  # 1x1 kernels become a dot_general
  with pytest.raises(ValueError, match="impl"):
    Conv(4, (1, 1), impl="fft").init(jax.random.key(0), x)


@pytest.mark.parametrize("name,kwargs,scale", [("srresnet", dict(scale=4, blocks=1, channels=8), 4),
                                               ("srresnet", dict(scale=1, blocks=1, channels=8), 1),
                                               ("resnet_generator", dict(blocks=1, channels=4), 1)])
def test_input_skip_starts_at_bicubic_or_identity(name, kwargs, scale):
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3), minval=0.05, maxval=0.95)
  net = rajax.processor(name, input_skip=True, **kwargs)
  v = net.init(jax.random.key(1), x)
  out = net.apply(v, x)
  base = jax.image.resize(x, (2, 8 * scale, 8 * scale, 3), "bicubic") if scale > 1 else x
  np.testing.assert_allclose(out, jnp.clip(base, 1e-3, 1 - 1e-3), atol=1e-5)
  # Same parameters as without the skip, and trainable: a gradient reaches the body.
  plain = rajax.processor(name, **kwargs).init(jax.random.key(1), x)
  assert jax.tree.structure(plain) == jax.tree.structure(v)
  g = jax.grad(lambda p: jnp.sum(net.apply({**v, "params": p}, x) ** 2))(v["params"])
  last = "tail" if name == "srresnet" else "head"
  assert float(jnp.abs(g[last]["kernel"]).max()) > 0


@pytest.mark.parametrize("window, strides, padding, size", [
    ((3, 3), (2, 2), ((1, 1), (1, 1)), 17),   # ResNet's and DenseNet's stem pool, odd size
    ((2, 2), (2, 2), ((0, 0), (0, 0)), 8),    # VGG's
    ((3, 2), (1, 2), ((1, 0), (0, 1)), 7),    # uneven window, strides and padding
])
def test_max_pool_slices_equal_xlas_values_and_first_maximum_gradients(window, strides, padding, size):
  """layers.max_pool's CPU form (the maximum of strided slices, a custom gradient) gives nn.max_pool's
  values and gradients, ties included (values on a coarse grid, zeros as after a ReLU: the gradient
  goes to the first maximum of each window, as XLA's select-and-scatter sends it)."""
  from rajax.models import layers
  rng = np.random.default_rng(0)
  x = jnp.asarray(np.maximum(np.round(rng.standard_normal((2, size, size, 3)) * 2) / 2, 0), jnp.float32)
  ref = lambda x: flax.linen.max_pool(x, window, strides=strides, padding=padding)
  got = lambda x: layers.max_pool(x, window, strides, padding, impl="slices")
  ct = jnp.asarray(rng.standard_normal(ref(x).shape), jnp.float32)
  np.testing.assert_array_equal(got(x), ref(x))
  # where windows overlap, one input sums several cotangents, in another order than XLA's (1 ulp)
  np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(got(x) * ct))(x), jax.grad(lambda x: jnp.sum(ref(x) * ct))(x),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(layers.max_pool(x, window, strides, padding), ref(x))   # "auto" on CPU
  with pytest.raises(ValueError, match="max_pool impl"):
    layers.max_pool(x, window, strides, padding, impl="taps")
