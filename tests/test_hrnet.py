"""HRNet-W48 (rajax.segmentation.hrnet) against the official HRNet-Semantic-Segmentation layout.

`official_shapes` lists the state-dict keys and shapes that seg_hrnet.py's HighResolutionNet
gives under a config, written here from the official code (its _make_layer, _make_transition_layer,
_make_stage, HighResolutionModule._make_branches / _make_fuse_layers and last_layer), independently
of rajax's Flax module. The official checkpoints hold those keys with the training wrapper's
"model." prefix and the loss's class weights. Seeded NumPy arrays with exactly those names and
shapes load; a reduced-width network's forward pass equals a NumPy reference written from the
torch code (NCHW, torch's bilinear rule with align_corners=False).
"""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from rajax import weights as weights_lib
from rajax.segmentation import hrnet, zoo
from rajax.weights import convert

W48 = dict(stem_width=64, stage1_blocks=4, widths=(48, 96, 192, 384), modules=(1, 4, 3), blocks=4)
SMALL = dict(stem_width=4, stage1_blocks=2, widths=(4, 6, 8, 10), modules=(1, 1, 1), blocks=1)


def official_shapes(*, stem_width, stage1_blocks, widths, modules, blocks, num_classes=19):
  """{key: torch shape} of seg_hrnet.HighResolutionNet's state dict under the config (torch's order)."""
  out = {}

  def conv(name, cin, cout, k, bias=False):
    out[f"{name}.weight"] = (cout, cin, k, k)
    if bias:
      out[f"{name}.bias"] = (cout,)

  def bn(name, c):
    for leaf in ("weight", "bias", "running_mean", "running_var"):
      out[f"{name}.{leaf}"] = (c,)
    out[f"{name}.num_batches_tracked"] = ()

  conv("conv1", 3, 64, 3); bn("bn1", 64); conv("conv2", 64, 64, 3); bn("bn2", 64)
  inplanes = 64
  for b in range(stage1_blocks):               # _make_layer(Bottleneck, 64, stem_width, stage1_blocks)
    p = f"layer1.{b}"
    conv(f"{p}.conv1", inplanes, stem_width, 1); bn(f"{p}.bn1", stem_width)
    conv(f"{p}.conv2", stem_width, stem_width, 3); bn(f"{p}.bn2", stem_width)
    conv(f"{p}.conv3", stem_width, 4 * stem_width, 1); bn(f"{p}.bn3", 4 * stem_width)
    if inplanes != 4 * stem_width:
      conv(f"{p}.downsample.0", inplanes, 4 * stem_width, 1); bn(f"{p}.downsample.1", 4 * stem_width)
    inplanes = 4 * stem_width
  pre = [4 * stem_width]
  for stage, n in zip((2, 3, 4), (2, 3, 4)):
    cur = list(widths[:n])
    t = f"transition{stage - 1}"
    for i in range(n):                         # _make_transition_layer(pre, cur)
      if i < len(pre):
        if cur[i] != pre[i]:
          conv(f"{t}.{i}.0", pre[i], cur[i], 3); bn(f"{t}.{i}.1", cur[i])
      else:
        for j in range(i + 1 - len(pre)):
          cin = pre[-1]
          cout = cur[i] if j == i - len(pre) else cin
          conv(f"{t}.{i}.{j}.0", cin, cout, 3); bn(f"{t}.{i}.{j}.1", cout)
    for m in range(modules[stage - 2]):        # HighResolutionModule(n, BasicBlock, [blocks] * n, cur, cur)
      p = f"stage{stage}.{m}"
      for i in range(n):
        for b in range(blocks):
          q = f"{p}.branches.{i}.{b}"
          conv(f"{q}.conv1", cur[i], cur[i], 3); bn(f"{q}.bn1", cur[i])
          conv(f"{q}.conv2", cur[i], cur[i], 3); bn(f"{q}.bn2", cur[i])
      for i in range(n):
        for j in range(n):
          f = f"{p}.fuse_layers.{i}.{j}"
          if j > i:
            conv(f"{f}.0", cur[j], cur[i], 1); bn(f"{f}.1", cur[i])
          elif j < i:
            for k in range(i - j):
              cout = cur[i] if k == i - j - 1 else cur[j]
              conv(f"{f}.{k}.0", cur[j], cout, 3); bn(f"{f}.{k}.1", cout)
    pre = cur
  last = sum(pre)
  conv("last_layer.0", last, last, 1, bias=True); bn("last_layer.1", last)
  conv("last_layer.3", last, num_classes, 1, bias=True)
  return out


def seeded_state_dict(shapes, seed=0):
  """Plausible seeded values: He-uniform convs, BatchNorm away from the identity."""
  rng = np.random.default_rng(seed)
  sd = {}
  for k, shape in shapes.items():
    if k.endswith("num_batches_tracked"):
      sd[k] = np.asarray(7, np.int64)
    elif len(shape) == 4:
      b = np.sqrt(6 / np.prod(shape[1:]))
      sd[k] = rng.uniform(-b, b, shape).astype(np.float32)
    elif k.endswith("running_var") or (k.endswith(".weight") and len(shape) == 1):
      sd[k] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      sd[k] = rng.uniform(-0.3, 0.3, shape).astype(np.float32)
  return sd


def official_checkpoint(sd, num_classes=19):
  """As the official training saves it: FullModel's "model." prefix and the loss's class weights."""
  return {**{f"model.{k}": v for k, v in sd.items()}, "loss.criterion.weight": np.ones(num_classes, np.float32)}


def _template(cfg, num_classes=19):
  module = hrnet.HRNet(num_classes=num_classes, **cfg)
  return module, jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))


def test_the_official_w48_checkpoint_layout_loads_by_name():
  shapes = official_shapes(**W48)
  # HRNetV2-W48 for Cityscapes: 65.9M parameters (the HRNet paper's table), 720 channels into the head.
  params = sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith("num_batches_tracked"))
  running = sum(int(np.prod(s)) for k, s in shapes.items() if "running_" in k)
  assert abs((params - running) / 1e6 - 65.9) < 0.05
  assert shapes["last_layer.0.weight"] == (720, 720, 1, 1) and shapes["last_layer.3.weight"] == (19, 720, 1, 1)
  sd = seeded_state_dict(shapes)
  module, template = _template(W48)
  variables = convert.from_torch(hrnet.rename_torch_keys(official_checkpoint(sd)), template, hrnet.torch_key,
                                 source="seeded official checkpoint")
  flat = jax.tree_util.tree_flatten_with_path(variables)[0]
  assert len(flat) == len(jax.tree.leaves(template)) == sum(1 for k in shapes if not k.endswith("num_batches_tracked"))
  # Values land where their names say: a conv kernel (OIHW -> HWIO), BatchNorm statistics, a head bias.
  name = "stage4.2.fuse_layers.3.0.2.0"
  np.testing.assert_array_equal(variables["params"][name]["kernel"], sd[f"{name}.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["batch_stats"]["stage3.3.branches.2.3.bn2"]["var"],
                                sd["stage3.3.branches.2.3.bn2.running_var"])
  np.testing.assert_array_equal(variables["params"]["last_layer.3"]["bias"], sd["last_layer.3.bias"])
  # Negative controls: a key missing, and the checkpoint of another architecture (a reduced width).
  broken = dict(sd)
  del broken["transition3.3.0.1.running_mean"]
  with pytest.raises(weights_lib.WeightsError, match=r"transition3\.3\.0\.1\.running_mean"):
    convert.from_torch(broken, template, hrnet.torch_key, source="broken")
  with pytest.raises(weights_lib.WeightsError, match="last_layer.0.weight"):
    convert.from_torch(seeded_state_dict(official_shapes(**{**W48, "widths": (32, 64, 128, 256)})), template,
                       hrnet.torch_key, source="hrnet_w32")


@pytest.mark.parametrize("cfg", [
    SMALL,
    {**SMALL, "stem_width": 16, "widths": (64, 6, 8, 10)},    # no layer1 downsample, no transition1.0 conv
    {**SMALL, "modules": (2, 1, 3), "blocks": 2, "stage1_blocks": 3},
], ids=["small", "no_downsample", "more_modules"])
def test_the_variables_are_exactly_the_official_keys_and_shapes(cfg):
  leaf_names = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean", "var": "running_var"}
  _, template = _template(cfg, num_classes=5)
  got = {}
  for path, spec in jax.tree_util.tree_flatten_with_path(template)[0]:
    _, module, leaf = (p.key for p in path)
    shape = spec.shape
    got[f"{module}.{leaf_names[leaf]}"] = (shape[3], shape[2], shape[0], shape[1]) if leaf == "kernel" else shape
  want = {k: v for k, v in official_shapes(**cfg, num_classes=5).items() if not k.endswith("num_batches_tracked")}
  assert got == want


# ----------------------------------------------------------------------------------------------
# A NumPy reference of seg_hrnet.py's forward (NCHW, torch's operators)

def _np_conv(x, w, b=None, stride=1):
  n, c, h, wd = x.shape
  o, _, k, _ = w.shape
  p = k // 2
  xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
  oh, ow = (h + 2 * p - k) // stride + 1, (wd + 2 * p - k) // stride + 1
  out = np.zeros((n, o, oh, ow))
  for i in range(k):
    for j in range(k):
      patch = xp[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
      out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
  return out if b is None else out + b[None, :, None, None]


def _np_bn(x, sd, name):
  g, b = sd[f"{name}.weight"], sd[f"{name}.bias"]
  m, v = sd[f"{name}.running_mean"], sd[f"{name}.running_var"]
  return (x - m[None, :, None, None]) / np.sqrt(v[None, :, None, None] + 1e-5) * g[None, :, None, None] + b[None, :, None, None]


def _np_upsample(x, size, align_corners=False):
  """torch F.interpolate(mode="bilinear"): align_corners=False samples (dst + 0.5) * in / out - 0.5, clamped at
  0; align_corners=True dst * (in - 1) / (out - 1)."""
  def axis(n_in, n_out):
    if align_corners:
      src = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
      src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, src - lo
  (ylo, yhi, fy), (xlo, xhi, fx) = axis(x.shape[2], size[0]), axis(x.shape[3], size[1])
  rows = x[:, :, ylo] * (1 - fy)[None, None, :, None] + x[:, :, yhi] * fy[None, None, :, None]
  return rows[..., xlo] * (1 - fx) + rows[..., xhi] * fx


def numpy_hrnet(sd, img, *, stem_width, stage1_blocks, widths, modules, blocks, align_corners=False):
  up = lambda v, size: _np_upsample(v, size, align_corners)
  relu = lambda v: np.maximum(v, 0)
  cbr = lambda x, c, b, s=1, act=True: (relu if act else (lambda v: v))(_np_bn(_np_conv(x, sd[f"{c}.weight"], stride=s), sd, b))
  x = (img - np.array(hrnet.IMAGENET_MEAN)) / np.array(hrnet.IMAGENET_STD)
  x = np.transpose(x, (0, 3, 1, 2)).astype(np.float64)
  x = cbr(cbr(x, "conv1", "bn1", 2), "conv2", "bn2", 2)
  for b in range(stage1_blocks):
    p = f"layer1.{b}"
    y = cbr(cbr(x, f"{p}.conv1", f"{p}.bn1"), f"{p}.conv2", f"{p}.bn2")
    y = cbr(y, f"{p}.conv3", f"{p}.bn3", act=False)
    r = cbr(x, f"{p}.downsample.0", f"{p}.downsample.1", act=False) if f"{p}.downsample.0.weight" in sd else x
    x = relu(y + r)
  xs = [cbr(x, "transition1.0.0", "transition1.0.1"), cbr(x, "transition1.1.0.0", "transition1.1.0.1", 2)]
  for stage, n in zip((2, 3, 4), (2, 3, 4)):
    if stage > 2:
      t = f"transition{stage - 1}.{n - 1}.0"
      xs.append(cbr(xs[-1], f"{t}.0", f"{t}.1", 2))
    for m in range(modules[stage - 2]):
      p = f"stage{stage}.{m}"
      for i in range(n):
        for b in range(blocks):
          q = f"{p}.branches.{i}.{b}"
          xs[i] = relu(cbr(cbr(xs[i], f"{q}.conv1", f"{q}.bn1"), f"{q}.conv2", f"{q}.bn2", act=False) + xs[i])
      fused = []
      for i in range(n):
        y = 0
        for j in range(n):
          f = f"{p}.fuse_layers.{i}.{j}"
          if j == i:
            y = y + xs[j]
          elif j > i:
            y = y + up(cbr(xs[j], f"{f}.0", f"{f}.1", act=False), xs[i].shape[2:])
          else:
            z = xs[j]
            for k in range(i - j):
              z = cbr(z, f"{f}.{k}.0", f"{f}.{k}.1", 2, act=k < i - j - 1)
            y = y + z
        fused.append(relu(y))
      xs = fused
  head = np.concatenate([xs[0]] + [up(v, xs[0].shape[2:]) for v in xs[1:]], axis=1)
  y = relu(_np_bn(_np_conv(head, sd["last_layer.0.weight"], sd["last_layer.0.bias"]), sd, "last_layer.1"))
  logits = _np_conv(y, sd["last_layer.3.weight"], sd["last_layer.3.bias"])
  return np.transpose(up(logits, img.shape[1:3]), (0, 2, 3, 1))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  """A reduced HRNet built from an official-layout checkpoint file (.safetensors) of seeded values."""
  from safetensors.numpy import save_file
  sd = seeded_state_dict(official_shapes(**SMALL, num_classes=3), seed=1)
  path = tmp_path_factory.mktemp("hrnet") / "hrnet_small.safetensors"
  save_file(official_checkpoint(sd, num_classes=3), str(path))
  return sd, zoo.build("hrnet_w48", weights=str(path), num_classes=3, **SMALL)


def test_a_reduced_width_forward_equals_a_numpy_reference_of_the_official_code(small):
  sd, seg = small
  img = np.random.default_rng(2).uniform(size=(2, 44, 52, 3)).astype(np.float32)   # strides 4-32 do not divide it
  got = np.asarray(jax.jit(lambda s, x: s(x))(seg, jnp.asarray(img)))
  want = numpy_hrnet(sd, img.astype(np.float64), **SMALL)
  assert got.shape == (2, 44, 52, 3) and want.shape == got.shape
  scale = np.abs(want).max()
  np.testing.assert_allclose(got, want, atol=2e-4 * scale)
  # Negative control: the same network with align_corners=True resizes (other HRNet configs) is another function.
  other = numpy_hrnet(sd, img.astype(np.float64), **SMALL, align_corners=True)
  assert np.abs(other - want).max() > 50 * 2e-4 * scale


def test_features_and_training_mode_shapes(small):
  _, seg = small
  x = jax.ShapeDtypeStruct((2, 32, 40, 3), jnp.float32)
  feats = jax.eval_shape(seg.features, x)
  assert {k: v.shape for k, v in feats.items()} == {
      "branch0": (2, 8, 10, 4), "branch1": (2, 4, 5, 6), "branch2": (2, 2, 3, 8), "branch3": (2, 1, 2, 10),
      "head": (2, 8, 10, 28)}
  heads, stats = jax.eval_shape(lambda s, x: s.heads(x, train=True), seg, x)
  assert heads["out"].shape == (2, 32, 40, 3)
  assert jax.tree.map(lambda a: a.shape, stats) == jax.tree.map(lambda a: a.shape, seg.variables["batch_stats"])


@pytest.mark.heavy   # ~15 s of compilation on a 2-core CI; `python -m pytest -m heavy` runs it
def test_training_mode_updates_statistics_and_gradients_are_finite(small):
  _, seg = small
  x = jnp.asarray(np.random.default_rng(3).uniform(size=(2, 32, 40, 3)), jnp.float32)

  def loss(v, x):
    heads, stats = seg.heads(x, variables=v, train=True)
    return jnp.mean(jax.nn.log_softmax(heads["out"])[..., 0]), stats

  (value, stats), (gv, gx) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(seg.variables, x)
  assert np.isfinite(float(value)) and np.isfinite(np.asarray(gx)).all() and float(jnp.abs(gx).max()) > 0
  leaves = jax.tree.leaves(gv["params"])
  assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
  assert sum(float(jnp.abs(g).max()) > 0 for g in leaves) > 0.9 * len(leaves)
  # Running statistics move by momentum 0.1 towards the batch's: mean_new = 0.9 mean + 0.1 batch mean.
  old, new = seg.variables["batch_stats"]["bn1"]["mean"], stats["bn1"]["mean"]
  assert float(jnp.abs(new - old).max()) > 0
  conv1 = jax.lax.conv_general_dilated(
      (x - jnp.asarray(hrnet.IMAGENET_MEAN)) / jnp.asarray(hrnet.IMAGENET_STD), seg.variables["params"]["conv1"]["kernel"],
      (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(np.asarray(new), np.asarray(0.9 * old + 0.1 * conv1.mean((0, 1, 2))), atol=1e-5)


def test_zoo_and_bad_arguments():
  assert "hrnet_w48" in zoo.available()
  with pytest.raises(ValueError, match=r"no weights that ship with rajax.*official"):
    zoo.build("hrnet_w48")
  with pytest.raises(ValueError, match="Unknown options"):
    zoo.build("hrnet_w48", weights="random", width=32)
  seg = zoo.build("hrnet_w48", weights="random", **SMALL)
  assert seg.num_classes == 19 and seg.class_names[11] == "person" and seg.task == "segmentation"
  kernel = np.asarray(seg.variables["params"]["last_layer.3"]["kernel"])
  assert kernel.shape == (1, 1, 28, 19) and 0.0008 < kernel.std() < 0.0012      # the official N(0, 0.001^2)
  assert (np.asarray(seg.variables["params"]["bn1"]["scale"]) == 1).all()
