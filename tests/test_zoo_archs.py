"""The recognizer zoo's architectures: ResNets, VGG16(-BN), DenseNet-121, MobileNetV2, EfficientNet-Lite0.

Without torch: named feature shapes, the torch key maps, bfloat16 compute, adaptive pooling and
TF 'SAME' padding rules. With torch (skipped where it is not installed): every architecture against
its PyTorch original with random weights and random BatchNorm statistics, through the same
state-dict conversion that loads real checkpoints.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

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


@pytest.mark.parametrize("family", list(SMALL))
def test_train_mode_updates_batch_stats_and_needs_dropout_rng(family):
  model = SMALL[family](num_classes=10)
  variables = _template(model)
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  assert jax.eval_shape(model.apply, variables, x).shape == (2, 10)  # logits alone without features
  logits, updates = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"]),
      variables, x)
  assert logits.shape == (2, 10)
  assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])


@pytest.mark.parametrize("name", ["vgg16", "densenet121", "mobilenet_v2", "efficientnet_lite0"])
def test_rejects_nchw(name):
  model = _model(name, num_classes=10)
  with pytest.raises(ValueError, match="NHWC"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 3, 64, 64)))


# --------------------------------------------------------------------------- torch key maps

_LEAF_KIND = {("params", "kernel"): "weight", ("params", "bias"): "bias", ("params", "scale"): "weight",
              ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


def _torch_names(name, variables):
  fam = FAMILIES[name]
  names = {}
  for (coll, *module, leaf) in traverse_util.flatten_dict(variables):
    names[(coll, *module, leaf)] = f"{fam.torch_key('/'.join(module))}.{_LEAF_KIND[coll, leaf]}"
  return names


@pytest.mark.parametrize("name", ARCHS)
def test_torch_keys_are_one_to_one(name):
  names = _torch_names(name, _template(_model(name)))
  assert len(set(names.values())) == len(names)
  for key in names.values():
    assert re.fullmatch(r"[A-Za-z_][\w]*(\.\w+)*", key), key


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


def _fake_torch_state_dict(name, variables, seed=0):
  """A torch-layout state dict of random values, and the Flax leaves its conversion must give."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(variables)
  sd, flax_vals = {}, {}
  for path, key in _torch_names(name, variables).items():
    shape = flat[path].shape
    val = rng.standard_normal(shape).astype(np.float32)
    flax_vals[path] = val
    if len(shape) == 4:
      val = np.transpose(val, (3, 2, 0, 1))
    elif len(shape) == 2:
      val = val.T
    sd[key] = val
    if key.endswith("running_var"):
      sd[key[:-len("running_var")] + "num_batches_tracked"] = np.array(3)
  return sd, flax_vals


def test_densenet_accepts_old_style_keys():
  name = "densenet121"
  variables = _template(_model(name))
  sd, want = _fake_torch_state_dict(name, variables)
  old = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v for k, v in sd.items()}
  assert "features.denseblock1.denselayer1.norm.1.weight" in old
  assert "features.denseblock1.denselayer1.norm1.weight" not in old
  assert densenet.rename_torch_keys(old).keys() == sd.keys()
  got = traverse_util.flatten_dict(convert.from_torch(densenet.rename_torch_keys(old), variables,
                                                      densenet.torch_key, source="old-style"))
  assert got.keys() == want.keys()
  for path, val in want.items():
    np.testing.assert_array_equal(got[path], val)
  # The new layout and other families pass through unchanged.
  assert densenet.rename_torch_keys(sd).keys() == sd.keys()
  for fam in (resnet, vgg, mobilenet, efficientnet):
    assert fam.rename_torch_keys({"a.b": 1}) == {"a.b": 1}


def test_depthwise_kernels_convert():
  name = "mobilenet_v2"
  variables = _template(_model(name))
  sd, want = _fake_torch_state_dict(name, variables)
  assert sd["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)
  got = traverse_util.flatten_dict(convert.from_torch(sd, variables, mobilenet.torch_key, source="fake"))
  np.testing.assert_array_equal(got["params", "features_1", "conv_0", "conv", "kernel"],
                                want["params", "features_1", "conv_0", "conv", "kernel"])


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


# --------------------------------------------------------------------------- against PyTorch


def _torch():
  return pytest.importorskip("torch")


def _torch_original(name, **kwargs):
  torch = _torch()
  if name == "efficientnet_lite0":
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    return lite.EfficientNet.from_name("efficientnet-lite0", **kwargs)
  tv = pytest.importorskip("torchvision")
  del torch
  return getattr(tv.models, name)(weights=None, **kwargs)


def _randomise(model, seed=0):
  """Random weights everywhere, and BatchNorm statistics/affines far enough from identity to matter."""
  torch = _torch()
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
        m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
        m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=gen))
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
      elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
  return model.eval()


def _vgg_stage_end(model, stage):
  """Index in `features` of the module just before the stage-th max pool."""
  ends = [i - 1 for i, m in enumerate(model.features) if type(m).__name__ == "MaxPool2d"]
  return f"features.{ends[stage - 1]}"


# arch -> {feature name: torch module whose output it is (a callable gets the torch model)}
TORCH_FEATURES = {
    **{n: {"stem": "relu", "layer2": "layer2", "layer4": "layer4"}
       for n in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")},
    **{n: {"stage2": lambda m: _vgg_stage_end(m, 2), "stage5": lambda m: _vgg_stage_end(m, 5),
           "pool": "avgpool", "fc7": "classifier.4"} for n in ("vgg16", "vgg16_bn")},
    "densenet121": {"stem": "features.relu0", "block2": "features.denseblock2", "block4": "features.denseblock4"},
    "mobilenet_v2": {"stem": "features.0", "stage3": "features.6", "head": "features.18"},
    "efficientnet_lite0": {"stage1": "_blocks.0", "stage3": "_blocks.4", "stage4": "_blocks.10"},
}


def _torch_forward(model, x, feature_modules):
  torch = _torch()
  got, hooks = {}, []
  modules = dict(model.named_modules())
  for feat, mod in feature_modules.items():
    mod = mod(model) if callable(mod) else mod
    hooks.append(modules[mod].register_forward_hook(
        lambda _m, _i, out, feat=feat: got.__setitem__(feat, out.detach().clone())))
  with torch.no_grad():
    logits = model(torch.from_numpy(np.transpose(x, (0, 3, 1, 2))))
  for h in hooks:
    h.remove()
  feats = {k: np.transpose(v.numpy(), (0, 2, 3, 1)) if v.ndim == 4 else v.numpy() for k, v in got.items()}
  return logits.numpy(), feats


def _compare_with_torch(name, x, *, torch_kwargs=None, flax_kwargs=None, tol=1e-4):
  torch = _torch()
  torch.manual_seed(0)
  torch.set_num_threads(2)
  tmodel = _randomise(_torch_original(name, **(torch_kwargs or {})))
  sd = {k: v.numpy() for k, v in tmodel.state_dict().items()}
  fam = FAMILIES[name]
  model = _model(name, **(flax_kwargs or {}))
  variables = convert.from_torch(fam.rename_torch_keys(sd), _template(model), fam.torch_key,
                                 source=f"torch {name}")
  del sd
  want_logits, want_feats = _torch_forward(tmodel, x, TORCH_FEATURES[name])
  del tmodel
  logits, feats = _run(model, variables, jnp.asarray(x))
  assert np.std(want_logits) > 0
  errs = {"logits": _rel_err(logits, want_logits)}
  for k, v in want_feats.items():
    assert feats[k].shape == v.shape, (k, feats[k].shape, v.shape)
    errs[k] = _rel_err(feats[k], v)
  assert max(errs.values()) < tol, errs
  return errs


def _input(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("name", ARCHS)
def test_matches_torch(name):
  _torch()
  # Odd sizes along the way (40x56 -> 20x28 -> 10x14 -> 5x7 -> 3x4 -> 2x2): floor/ceil rules of pools
  # and stride-2 padding. VGG: 3x2 after the five pools, so overlapping adaptive-pool bins.
  _compare_with_torch(name, _input((1, 100, 70, 3) if name.startswith("vgg") else (2, 40, 56, 3)))


def test_lite0_dynamic_padding_matches_torch():
  # image_size=None: TF SAME pads from each layer's actual input size (the port's dynamic padding).
  _torch()
  _compare_with_torch("efficientnet_lite0", _input((1, 57, 75, 3)), torch_kwargs=dict(image_size=None),
                      flax_kwargs=dict(image_size=None))


def test_adaptive_avg_pool_matches_torch():
  torch = _torch()
  for h, w in [(3, 2), (9, 11), (14, 14), (16, 23)]:
    x = _input((2, h, w, 4))
    want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(np.transpose(x, (0, 3, 1, 2))), (7, 7))
    np.testing.assert_allclose(vgg.adaptive_avg_pool(jnp.asarray(x), (7, 7)),
                               np.transpose(want.numpy(), (0, 2, 3, 1)), rtol=1e-6, atol=1e-6)
