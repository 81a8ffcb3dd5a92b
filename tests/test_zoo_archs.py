"""The recognizer zoo's architectures: ResNets, VGG16(-BN), DenseNet-121, MobileNetV2, EfficientNet-Lite0.

Every architecture against its PyTorch original, without torch: tests/reference/architectures.json
holds the original's state-dict keys (torchvision's, or the efficientnet-lite-pytorch port's) and
architectures.npz what torch computed on two photos with seeded weights (made once by
tests/reference/make_architectures.py). The tests rebuild those weights with NumPy
(tests/seeded_state_dict.py), write them as a safetensors file, load it through rajax.recognizer
and compare logits and named features. Also: named feature shapes, train-mode BatchNorm and
dropout, bfloat16 compute, adaptive pooling and TF 'SAME' padding rules.
"""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import errors as flax_errors
from flax import linen as nn
from flax import traverse_util
from safetensors import numpy as st_np

import rajax
import seeded_state_dict as seeded
from rajax.models import densenet, efficientnet, mobilenet, resnet, vgg
from rajax.weights import convert

FAMILIES = {
    "resnet18": resnet, "resnet34": resnet, "resnet50": resnet, "resnet101": resnet, "resnet152": resnet,
    "vgg16": vgg, "vgg16_bn": vgg, "densenet121": densenet, "mobilenet_v2": mobilenet,
    "efficientnet_lite0": efficientnet,
}
ARCHS = list(FAMILIES)

# Faster XLA compilation on CPU: these tests run each network once on a tiny batch.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _model(name, **kwargs):
  fam = FAMILIES[name]
  return fam.MODULE(**{**fam.ARCHS[name], **kwargs})


@functools.lru_cache(maxsize=None)
def _template(model):
  """The variables' shapes and dtypes (the same for every input size: all heads pool globally)."""
  return jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))


def _run(model, variables, x, **kwargs):
  """model.apply(variables, x, features=True, **kwargs), jitted with quick compilation."""
  f = jax.jit(functools.partial(model.apply, features=True, **kwargs))
  return f.lower(variables, x).compile(compiler_options=_FAST_COMPILE)(variables, x)


def _rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# --------------------------------------------------------------------------- named features

_BASIC = {"stem": (2, 64), "layer1": (4, 64), "layer2": (8, 128), "layer3": (16, 256), "layer4": (32, 512),
          "pool": 512}
_BOTTLENECK = {"stem": (2, 64), "layer1": (4, 256), "layer2": (8, 512), "layer3": (16, 1024),
               "layer4": (32, 2048), "pool": 2048}
_VGG = {"stage1": (1, 64), "stage2": (2, 128), "stage3": (4, 256), "stage4": (8, 512), "stage5": (16, 512),
        "pool": (7, 7, 512), "fc6": 4096, "fc7": 4096}
_MOBILE = {"stem": (2, 32), "stage1": (2, 16), "stage2": (4, 24), "stage3": (8, 32), "stage4": (16, 96),
           "stage5": (32, 320), "head": (32, 1280), "pool": 1280}
_LITE0 = {**_MOBILE, "stage3": (8, 40), "stage4": (16, 112)}
# name -> (stride, channels) for maps, an int for vectors, a full shape for fixed-size maps
FEATURES = {
    "resnet18": _BASIC, "resnet34": _BASIC, "resnet50": _BOTTLENECK, "resnet101": _BOTTLENECK,
    "resnet152": _BOTTLENECK, "vgg16": _VGG, "vgg16_bn": _VGG,
    "densenet121": {"stem": (2, 64), "block1": (4, 256), "block2": (8, 512), "block3": (16, 1024),
                    "block4": (32, 1024), "head": (32, 1024), "pool": 1024},
    "mobilenet_v2": _MOBILE, "efficientnet_lite0": _LITE0,
}


@pytest.mark.parametrize("name", ARCHS)
def test_named_features_and_shapes(name):
  model = _model(name)
  b, h, w = 2, 64, 96
  x = jax.ShapeDtypeStruct((b, h, w, 3), jnp.float32)
  logits, feats = jax.eval_shape(functools.partial(model.apply, features=True), _template(model), x)
  assert logits.shape == (b, 1000) and logits.dtype == jnp.float32
  expected = {"logits": (b, 1000)}
  for k, spec in FEATURES[name].items():
    if isinstance(spec, int):
      expected[k] = (b, spec)
    elif len(spec) == 3:
      expected[k] = (b, *spec)
    else:
      stride, c = spec
      expected[k] = (b, h // stride, w // stride, c)
  assert {k: v.shape for k, v in feats.items()} == expected
  assert feats["logits"].dtype == jnp.float32


# Small members of each family: the same code paths at a fraction of the compile time.
SMALL = {
    "resnet": lambda **kw: resnet.ResNet(stage_sizes=(1, 2, 1, 1), block="bottleneck", width=8, **kw),
    "vgg": lambda **kw: vgg.VGG(stages=((8,), (8, 8), (16,), (16,), (16,)), batch_norm=True, **kw),
    "densenet": lambda **kw: densenet.DenseNet(growth_rate=8, block_config=(2, 3, 2, 2), num_init_features=16, **kw),
    "mobilenet": lambda **kw: mobilenet.MobileNetV2(
        width_mult=0.5, settings=((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 1, 2), (6, 64, 1, 2), (6, 96, 1, 1),
                                  (6, 160, 1, 2), (6, 320, 1, 1)), **kw),
    "efficientnet": lambda **kw: efficientnet.EfficientNetLite(width_coefficient=0.5, depth_coefficient=0.3, **kw),
}


# family -> (torch BatchNorm momentum, eps, has dropout). torch's momentum m: new = (1 - m) old + m batch.
_BN_RULES = {"resnet": (0.1, 1e-5, False), "vgg": (0.1, 1e-5, True), "densenet": (0.1, 1e-5, False),
             "densenet_dropout": (0.1, 1e-5, True), "mobilenet": (0.1, 1e-5, True),
             "efficientnet": (0.01, 1e-3, True), "efficientnet_drop_connect": (0.01, 1e-3, True)}
# DenseNet-121 has no dropout (torchvision's drop_rate=0); the option exists, so a member with it is tested too.
# EfficientNet-Lite drops residual branches (drop-connect) as well: a member without the head's dropout
# shows that those draw from the rng too.
_TRAIN_MEMBERS = {**SMALL, "densenet_dropout": lambda **kw: SMALL["densenet"](drop_rate=0.5, **kw),
                  "efficientnet_drop_connect": lambda **kw: SMALL["efficientnet"](dropout_rate=0.0, drop_connect_rate=0.8,
                                                                                  **kw)}


@functools.lru_cache(maxsize=None)
def _train_step(family):
  """A small member, random variables, and a jitted train-mode forward that also returns the input
  and output of every BatchNorm call (caught with nn.intercept_methods while tracing)."""
  model = _TRAIN_MEMBERS[family](num_classes=10)
  variables = _random_variables(_template(model))

  def forward(variables, x, rng):
    seen = {}

    def spy(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
        seen["/".join(context.module.path)] = (args[0], out)
      return out

    with nn.intercept_methods(spy):
      logits, updates = model.apply(variables, x, train=True, rngs={"dropout": rng}, mutable=["batch_stats"])
    return logits, updates["batch_stats"], seen

  def evaluate(variables, x, rng):
    return model.apply(variables, x, rngs={"dropout": rng})

  compiled = [jax.jit(f).lower(variables, _TRAIN_X, jax.random.key(0)).compile(compiler_options=_FAST_COMPILE)
              for f in (forward, evaluate)]
  return model, variables, *compiled


# 64x64: at least 8 values per channel in the deepest BatchNorm (2 x 2 x 2), where float32 statistics
# of fewer values would lose digits to cancellation.
_TRAIN_X = np.random.default_rng(7).standard_normal((2, 64, 64, 3)).astype(np.float32)


@pytest.mark.parametrize("family", list(SMALL))
def test_train_mode_normalises_with_batch_statistics_and_updates_running_ones(family):
  """Train mode, for real: every BatchNorm normalises with its batch's mean and biased variance and
  moves its running statistics by torch's momentum (0.1; 0.01 for EfficientNet-Lite), checked in
  float64 NumPy on the layer's actual input. Negative controls: the old statistics, the other
  momentum and normalising with the running statistics all miss."""
  momentum, eps, _ = _BN_RULES[family]
  model, variables, forward, _ = _train_step(family)
  _, new_stats, seen = forward(variables, _TRAIN_X, jax.random.key(1))
  old = traverse_util.flatten_dict(variables["batch_stats"], sep="/")
  new = traverse_util.flatten_dict(new_stats, sep="/")
  params = traverse_util.flatten_dict(variables["params"], sep="/")
  assert {f"{p}/{s}" for p in seen for s in ("mean", "var")} == set(old) == set(new)
  for path, (x, y) in seen.items():
    x = np.asarray(x, np.float64)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    scale, bias = (np.asarray(params[f"{path}/{k}"], np.float64) for k in ("scale", "bias"))
    om, ov = np.asarray(old[f"{path}/mean"], np.float64), np.asarray(old[f"{path}/var"], np.float64)
    want_y = (x - mean) / np.sqrt(var + eps) * scale + bias
    want_mean = (1 - momentum) * om + momentum * mean
    want_var = (1 - momentum) * ov + momentum * var  # the biased batch variance (torch uses n / (n - 1) of it)
    tol = dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-4 * np.abs(want_y).max(), err_msg=path)
    np.testing.assert_allclose(new[f"{path}/mean"], want_mean, **tol, err_msg=path)
    np.testing.assert_allclose(new[f"{path}/var"], want_var, **tol, err_msg=path)
    # Negative controls: these would have passed a check that cannot tell.
    other = 0.1 if momentum == 0.01 else 0.01
    assert not np.allclose(new[f"{path}/mean"], (1 - other) * om + other * mean, **tol), path
    assert not np.allclose(new[f"{path}/mean"], om, **tol), path
    assert not np.allclose(new[f"{path}/var"], ov, **tol), path
    assert not np.allclose(y, (x - om) / np.sqrt(ov + eps) * scale + bias, rtol=1e-4, atol=1e-4), path


@pytest.mark.parametrize("family", list(_TRAIN_MEMBERS))
def test_train_mode_dropout_draws_from_the_rng(family):
  """With dropout, train mode needs a 'dropout' rng and its output is a function of it: the same key
  gives the same logits, another key others; eval mode ignores it. ResNet (and DenseNet-121 at its
  default drop_rate=0) has no dropout: train mode runs without an rng and gives the same logits for
  any key, which is what the check above would see if a family's dropout ignored its rng."""
  *_, has_dropout = _BN_RULES[family]
  model, variables, forward, evaluate = _train_step(family)
  # Four keys: drop-connect keeps or drops a whole example's branch, so two keys may agree by chance.
  draws = [np.asarray(forward(variables, _TRAIN_X, jax.random.key(k))[0]) for k in (1, 2, 3, 4)]
  again = np.asarray(forward(variables, _TRAIN_X, jax.random.key(1))[0])
  assert draws[0].shape == (2, 10)
  np.testing.assert_array_equal(again, draws[0])
  x = jax.ShapeDtypeStruct(_TRAIN_X.shape, jnp.float32)
  train_without_rng = lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])
  spread = max(np.abs(d - draws[0]).max() for d in draws[1:])
  if has_dropout:
    assert spread > 1e-3 * np.abs(draws[0]).max()
    with pytest.raises(flax_errors.InvalidRngError, match="dropout"):
      jax.eval_shape(train_without_rng, variables, x)
  else:
    assert spread == 0
    jax.eval_shape(train_without_rng, variables, x)
  # Eval mode: deterministic whatever the rng.
  np.testing.assert_array_equal(evaluate(variables, _TRAIN_X, jax.random.key(1)),
                                evaluate(variables, _TRAIN_X, jax.random.key(2)))


@pytest.mark.parametrize("name", ["vgg16", "densenet121", "mobilenet_v2", "efficientnet_lite0"])
def test_rejects_nchw(name):
  model = _model(name, num_classes=10)
  with pytest.raises(ValueError, match="NHWC"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 3, 64, 64)))


# --------------------------------------------------------------------------- torch key maps

# The original's key layout of each leaf: OIHW convolution kernels (depthwise (C, 1, kh, kw)) and
# (out, in) linear weights become HWIO and (in, out); everything else keeps its shape.
_LEAF_KIND = {("params", "kernel"): "weight", ("params", "bias"): "bias", ("params", "scale"): "weight",
              ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


def _torch_layout(shape):
  shape = tuple(shape)
  if len(shape) == 4:
    o, i, kh, kw = shape
    return (kh, kw, i, o)
  return shape[::-1] if len(shape) == 2 else shape


def _keys_of(name, torch_key):
  """{torch key: Flax shape} that rajax's key map gives the architecture's variables."""
  flat = traverse_util.flatten_dict(_template(_model(name)))
  return {f"{torch_key('/'.join(module))}.{_LEAF_KIND[coll, leaf]}": tuple(v.shape)
          for (coll, *module, leaf), v in flat.items()}


# Plausible slips in a key map, one per family: each gives valid-looking keys that are not the original's.
_OFF_KEY_MAPS = {
    resnet: lambda p: resnet.torch_key(p).replace("downsample.0", "downsample.1"),
    vgg: lambda p: re.sub(r"\.(\d+)$", lambda m: f".{int(m[1]) + 1}", vgg.torch_key(p)),
    densenet: lambda p: densenet.torch_key(p).removeprefix("features."),
    mobilenet: lambda p: mobilenet.torch_key(p).replace(".conv.", ".convs."),
    efficientnet: lambda p: efficientnet.torch_key(p).replace("_blocks.", "blocks."),
}


@pytest.mark.parametrize("name", ARCHS)
def test_torch_keys_and_shapes_are_the_originals(name):
  """rajax's key map names exactly the original's state dict (tests/reference/architectures.json,
  recorded from torch; num_batches_tracked is ignored), one Flax leaf per torch tensor, with the
  transposed shapes. Negative control: a plausible slip in the map gives other keys."""
  fam = FAMILIES[name]
  original = {k: _torch_layout(shape) for k, shape, _ in seeded.entry(name)["keys"]
              if not k.endswith("num_batches_tracked")}
  flat = traverse_util.flatten_dict(_template(_model(name)))
  got = _keys_of(name, fam.torch_key)
  assert len(got) == len(flat)  # one to one
  assert got == original
  assert set(_keys_of(name, _OFF_KEY_MAPS[fam])) != set(original)


def test_torch_key_examples_and_errors():
  assert resnet.torch_key("layer1_0/downsample_conv") == "layer1.0.downsample.0"
  assert resnet.torch_key("layer3_5/downsample_bn") == "layer3.5.downsample.1"
  assert resnet.torch_key("fc") == "fc"
  assert vgg.torch_key("features_40") == "features.40" and vgg.torch_key("classifier_6") == "classifier.6"
  assert densenet.torch_key("denseblock2/denselayer3/conv2") == "features.denseblock2.denselayer3.conv2"
  assert densenet.torch_key("transition1/norm") == "features.transition1.norm"
  assert densenet.torch_key("classifier") == "classifier"
  assert mobilenet.torch_key("features_0/conv") == "features.0.0"
  assert mobilenet.torch_key("features_1/conv_0/bn") == "features.1.conv.0.1"
  assert mobilenet.torch_key("features_2/conv_3") == "features.2.conv.3"
  assert mobilenet.torch_key("features_18/bn") == "features.18.1"
  assert mobilenet.torch_key("classifier_1") == "classifier.1"
  assert efficientnet.torch_key("blocks_15/project_conv") == "_blocks.15._project_conv"
  assert efficientnet.torch_key("bn1") == "_bn1" and efficientnet.torch_key("fc") == "_fc"
  for fam in (resnet, vgg, densenet, mobilenet, efficientnet):
    with pytest.raises(ValueError, match="nonsense"):
      fam.torch_key("nonsense/conv")


def test_densenet_accepts_old_style_keys():
  """torchvision's DenseNet checkpoints from before module names lost their dots ('denselayer1.norm.1.weight')
  load to the same variables as the current layout (whose outputs the fixture test pins to torch's)."""
  name = "densenet121"
  sd = seeded.state_dict(name)
  template = _template(_model(name))
  old = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v for k, v in sd.items()}
  assert "features.denseblock1.denselayer1.norm.1.weight" in old
  assert "features.denseblock1.denselayer1.conv.2.weight" in old
  assert "features.denseblock1.denselayer1.norm1.weight" not in old
  assert densenet.rename_torch_keys(old).keys() == sd.keys()
  want = traverse_util.flatten_dict(convert.from_torch(sd, template, densenet.torch_key, source="new-style"))
  got = traverse_util.flatten_dict(convert.from_torch(densenet.rename_torch_keys(old), template,
                                                      densenet.torch_key, source="old-style"))
  assert got.keys() == want.keys()
  for path, val in want.items():
    np.testing.assert_array_equal(got[path], val)
  # Without the renaming, the old layout is refused, naming the keys.
  with pytest.raises(rajax.weights.WeightsError, match="norm.1.weight"):
    convert.from_torch(old, template, densenet.torch_key, source="old-style")
  # The new layout and other families pass through unchanged.
  assert densenet.rename_torch_keys(sd).keys() == sd.keys()
  for fam in (resnet, vgg, mobilenet, efficientnet):
    assert fam.rename_torch_keys({"a.b": 1}) == {"a.b": 1}


def test_depthwise_kernels_convert():
  """torchvision's depthwise kernel (C, 1, kh, kw) becomes Flax's (kh, kw, 1, C): element [i, j, 0, c]
  is torch's [c, 0, i, j] (the fixture test pins the outputs)."""
  name = "mobilenet_v2"
  sd = seeded.state_dict(name)
  w = sd["features.1.conv.0.0.weight"]
  assert w.shape == (32, 1, 3, 3)
  got = convert.from_torch(sd, _template(_model(name)), mobilenet.torch_key, source="seeded")
  k = got["params"]["features_1"]["conv_0"]["conv"]["kernel"]
  assert k.shape == (3, 3, 1, 32)
  for c in (0, 7, 31):
    for i in range(3):
      for j in range(3):
        assert k[i, j, 0, c] == w[c, 0, i, j], (c, i, j)
  assert not np.array_equal(k[:, :, 0, :], w[:, 0].reshape(3, 3, 32))  # a reshape is not the transpose


# --------------------------------------------------------------------------- building blocks


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 7), (7, 7), (13, 9), (14, 21), (20, 6)])
def test_adaptive_avg_pool_bins(size):
  h, w = size
  x = np.random.default_rng(0).standard_normal((2, h, w, 3)).astype(np.float32)
  want = np.zeros((2, 7, 7, 3), np.float32)
  for i in range(7):
    for j in range(7):
      hs, he = (i * h) // 7, -((-(i + 1) * h) // 7)
      ws, we = (j * w) // 7, -((-(j + 1) * w) // 7)
      want[:, i, j] = x[:, hs:he, ws:we].mean(axis=(1, 2))
  np.testing.assert_allclose(vgg.adaptive_avg_pool(jnp.asarray(x), (7, 7)), want, rtol=1e-6, atol=1e-6)


def test_tf_same_padding():
  # Even sizes with stride 2: the extra pixel goes after (bottom/right).
  assert efficientnet.same_pads(224, 3, 2) == (0, 1)
  assert efficientnet.same_pads(56, 5, 2) == (1, 2)
  # Odd sizes with stride 2 and stride 1 pad symmetrically.
  assert efficientnet.same_pads(57, 3, 2) == (1, 1)
  assert efficientnet.same_pads(57, 5, 1) == (2, 2)
  assert efficientnet.same_pads(7, 1, 1) == (0, 0)


def test_lite_static_padding_is_that_of_image_size():
  # Static pads (computed for 224) differ from TF SAME on an odd input; dynamic ones follow the input.
  x = jax.ShapeDtypeStruct((1, 57, 57, 3), jnp.float32)
  static = _model("efficientnet_lite0")
  dynamic = _model("efficientnet_lite0", image_size=None)
  _, fs = jax.eval_shape(functools.partial(static.apply, features=True), _template(static), x)
  _, fd = jax.eval_shape(functools.partial(dynamic.apply, features=True), _template(static), x)
  assert fs["stem"].shape[1:3] == (28, 28)  # pads (0, 1) as for 224
  assert fd["stem"].shape[1:3] == (29, 29)  # pads (1, 1), TF SAME on 57
  assert fd["head"].shape[1:3] == (2, 2)


# --------------------------------------------------------------------------- bfloat16


def _random_variables(template, seed=0):
  """Plausible random weights (He-scaled kernels, BN statistics near identity) without an init pass."""
  rng = np.random.default_rng(seed)
  out = {}
  for path, s in traverse_util.flatten_dict(template).items():
    leaf = path[-1]
    if leaf == "kernel":
      fan_in = int(np.prod(s.shape[:-1]))
      v = rng.standard_normal(s.shape) * np.sqrt(2.0 / fan_in)
    elif leaf in ("scale", "var"):
      v = rng.uniform(0.5, 1.5, s.shape)
    else:
      v = 0.1 * rng.standard_normal(s.shape)
    out[path] = jnp.asarray(v, jnp.float32)
  return traverse_util.unflatten_dict(out)


def _eqns(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          yield from _eqns(sub)


@pytest.mark.parametrize("family", list(SMALL))
def test_bfloat16_compute_dtypes(family):
  model = SMALL[family](num_classes=10, dtype="bfloat16")
  variables = _template(model)
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32  # parameters stay float32
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  closed = jax.make_jaxpr(functools.partial(model.apply, features=True))(variables, x)
  products = [e for e in _eqns(closed.jaxpr) if e.primitive.name in ("conv_general_dilated", "dot_general")]
  assert len(products) >= 5  # on CPU 1x1 convolutions are matrix products (layers.Conv)
  for eqn in products:  # every convolution and matrix product runs in bfloat16
    assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16] * 2, eqn
  assert closed.out_avals[0].dtype == jnp.float32  # the logits


@pytest.mark.parametrize("family", ["vgg", "densenet", "efficientnet"])
def test_bfloat16_close_to_float32(family):
  f32 = SMALL[family](num_classes=10)
  bf16 = SMALL[family](num_classes=10, dtype="bfloat16")
  variables = _random_variables(_template(f32))
  x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  want, _ = _run(f32, variables, x)
  got, feats = _run(bf16, variables, x)
  assert got.dtype == jnp.float32 and feats["logits"].dtype == jnp.float32
  assert np.all(np.isfinite(got))
  assert np.std(np.asarray(want)) > 0
  assert _rel_err(got, want) < 0.1, _rel_err(got, want)
  assert np.corrcoef(np.ravel(got), np.ravel(want))[0, 1] > 0.99


# --------------------------------------------------------------------------- against PyTorch, through fixtures

RECOGNIZER_ENTRIES = [n for n, e in seeded.manifest()["entries"].items() if e["kind"] == "recognizer"]
_TOL = 1e-4  # max |rajax - torch| / max |torch|, per output (float32 against torch's float64)


def _fixture_errors(logits, feats, want):
  """Relative error of every recorded output (features are of the first photo only)."""
  errs = {}
  for k, v in want.items():
    got = np.asarray(logits if k == "logits" else feats[k][: v.shape[0]])
    assert got.shape == v.shape, (k, got.shape, v.shape)
    errs[k] = _rel_err(got, v)
  return errs


def _same_shaped_modules(template):
  """Two Flax module paths whose leaves have the same names and shapes (the first such pair)."""
  modules = {}
  for (coll, *module, leaf), v in traverse_util.flatten_dict(template).items():
    modules.setdefault("/".join(module), []).append((coll, leaf, tuple(v.shape)))
  seen = {}
  for path, leaves in modules.items():
    sig = tuple(sorted(leaves))
    if sig in seen and any(leaf == "kernel" for _, leaf, _ in sig):
      return seen[sig], path
    seen.setdefault(sig, path)
  raise AssertionError("no two same-shaped modules")


@pytest.mark.parametrize("entry", RECOGNIZER_ENTRIES)
def test_seeded_torch_weights_give_torchs_outputs(entry, tmp_path):
  """A safetensors file with the original's keys and seeded values, loaded by rajax.recognizer, gives
  torch's logits (both photos) and named features (the first) within 1e-4 of each output's maximum.

  The file goes through the public path (reader, key map, layout conversion, input normalisation),
  so a wrong key, transpose, padding, pooling or BatchNorm rule shows. Negative controls, with the
  same compiled program: a key map that swaps two same-shaped layers (a one-to-one map the loader
  cannot refuse) and BatchNorm statistics left at identity both miss the fixture by far.
  """
  spec = seeded.entry(entry)
  arch = spec["arch"]
  fam = FAMILIES[arch]
  sd = seeded.state_dict(entry)
  assert seeded.digest(sd) == spec["sha256"], "NumPy did not regenerate the weights torch held"
  path = tmp_path / f"{entry}.safetensors"
  st_np.save_file(sd, str(path))
  try:
    rec = rajax.recognizer(arch, str(path), **spec["options"])
  finally:
    path.unlink()  # up to 0.5 GB (VGG)
  mean, std = spec["normalisation"]
  np.testing.assert_allclose(rec.mean, mean)
  np.testing.assert_allclose(rec.std, std)
  x = jnp.asarray(seeded.photos(entry), jnp.float32) / 255.0
  run = jax.jit(lambda r, x: r(x, features=True)).lower(rec, x).compile(compiler_options=_FAST_COMPILE)
  want = seeded.outputs(entry)
  errs = _fixture_errors(*run(rec, x), want)
  assert max(errs.values()) < _TOL, errs

  template = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), rec.variables)
  a, b = _same_shaped_modules(template)
  swap = {a: b, b: a}
  swapped = convert.from_torch(fam.rename_torch_keys(sd), template, lambda p: fam.torch_key(swap.get(p, p)),
                               source="swapped")
  del sd
  errs = _fixture_errors(*run(dataclasses.replace(rec, variables=swapped), x), want)
  assert max(errs.values()) > 100 * _TOL, (a, b, errs)
  del swapped
  if "batch_stats" in rec.variables:
    stats = traverse_util.flatten_dict(rec.variables["batch_stats"])
    identity = {k: (np.zeros if k[-1] == "mean" else np.ones)(v.shape, np.float32) for k, v in stats.items()}
    variables = {**rec.variables, "batch_stats": traverse_util.unflatten_dict(identity)}
    errs = _fixture_errors(*run(dataclasses.replace(rec, variables=variables), x), want)
    assert max(errs.values()) > 100 * _TOL, errs


def test_adaptive_avg_pool_matches_torch():
  torch = pytest.importorskip("torch")
  for h, w in [(3, 2), (9, 11), (14, 14), (16, 23)]:
    x = np.random.default_rng(0).standard_normal((2, h, w, 4)).astype(np.float32)
    want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(np.transpose(x, (0, 3, 1, 2))), (7, 7))
    np.testing.assert_allclose(vgg.adaptive_avg_pool(jnp.asarray(x), (7, 7)),
                               np.transpose(want.numpy(), (0, 2, 3, 1)), rtol=1e-6, atol=1e-6)
