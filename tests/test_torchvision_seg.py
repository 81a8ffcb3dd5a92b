"""rajax's torchvision segmenters against torchvision's, on the same seeded weights.

tests/reference/make_segmenters.py ran torchvision 0.29.1 once (see its docstring) and recorded,
for two photos, each model's head logits before upsampling and (MobileNetV3 entries) the upsampled
outputs, plus a training-mode forward and the running statistics it leaves. The weights are drawn
from the entry name and each torch key by tests/seeded_state_dict.py and written as a checkpoint
that `build` reads, so the comparisons also check the torch-key map. By default: the MobileNetV3
entries, fcn_resnet50 (the dilated ResNet), LR-ASPP's training mode and input gradient, and the
checkpoint checks; DeepLabV3-ResNet-50/101, the second program of each other check and the
training step with the segmentation task's loss are heavy.
"""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seeded_state_dict
import rajax
from rajax.segmentation import torchvision_seg as ts
from rajax.segmentation import zoo
from rajax.segmentation.segmenter import Segmenter
from rajax.weights import WeightsError

FIXTURE = pathlib.Path(__file__).resolve().parent / "reference" / "segmenters.npz"
RULES = {
    "resnet": [[r"backbone\.layer\d+\.\d+\.bn3\.weight", 0.1, 0.3]],
    "mobilenet": [[r"backbone\..*\.(bias|running_mean)", -0.05, 0.05],
                  [r"backbone\.\d+\.block\.\d+\.1\.weight", 0.6, 1.0]],
}
# fixture entry -> (zoo name, build options, rules)
ENTRIES = {
    "lraspp": ("lraspp_mobilenet_v3_large", {}, "mobilenet"),
    "deeplabv3_mobilenet": ("deeplabv3_mobilenet_v3_large", {}, "mobilenet"),
    "deeplabv3_rates": ("deeplabv3_mobilenet_v3_large", dict(num_classes=5, atrous_rates=(1, 2, 3)), "mobilenet"),
    "deeplabv3_resnet50": ("deeplabv3_resnet50", {}, "resnet"),
    "fcn_resnet50": ("fcn_resnet50", {}, "resnet"),
    "deeplabv3_resnet101": ("deeplabv3_resnet101", {}, "resnet"),
}


@functools.lru_cache(maxsize=None)
def fixture() -> dict:
  with np.load(FIXTURE) as f:
    return {k: f[k] for k in f.files}


def rec(entry: str) -> dict:
  p = f"{entry}/"
  return {k[len(p):]: v for k, v in fixture().items() if k.startswith(p)}


def photos(n: int = 2) -> jnp.ndarray:
  return jnp.asarray(fixture()["photos"][:n], jnp.float32) / 255.0


@functools.lru_cache(maxsize=None)
def state_dict(entry: str) -> dict:
  keys = json.loads(str(rec(entry)["keys"]))
  return seeded_state_dict.values(entry, keys, RULES[ENTRIES[entry][2]])


def write(path: pathlib.Path, sd: dict) -> pathlib.Path:
  from safetensors.numpy import save_file
  save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path))
  return path


@functools.lru_cache(maxsize=None)
def segmenter(entry: str, tmp: str) -> Segmenter:
  name, opts, _ = ENTRIES[entry]
  return zoo.build(name, str(write(pathlib.Path(tmp) / f"{entry}.safetensors", state_dict(entry))), **opts)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("segmenters"))


@jax.jit
def _eval(seg, x):
  """The heads' logits before and after upsampling (Segmenter.heads is model.upsample of model.run)."""
  out, _, _ = seg.model.run(seg.variables, x)
  return out, seg.model.upsample(out, x.shape[1:3])


@jax.jit
def _train(seg, x):
  out, _, stats = seg.model.run(seg.variables, x, train=True)
  return out, stats


def _close(got, want, rel=1e-4):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape
  scale = float(np.abs(want).max())
  np.testing.assert_allclose(got, want, rtol=0, atol=rel * scale + 1e-6)


def check_entry(entry: str, tmp: str):
  r = rec(entry)
  n = r["out_lo"].shape[0]
  seg = segmenter(entry, tmp)
  lo, full = jax.device_get(_eval(seg, photos(n)))
  _close(lo["out"], r["out_lo"])
  assert ("aux" in lo) == ("aux_lo" in r)
  if "aux_lo" in r:
    _close(lo["aux"], r["aux_lo"])
  for k in ("out", "aux"):
    if k in r:
      _close(full[k], r[k])
  assert full["out"].shape == (n, 80, 106, seg.num_classes) and full["out"].dtype == np.float32
  return seg, lo


@pytest.mark.parametrize("entry", ["lraspp", "deeplabv3_mobilenet", "deeplabv3_rates", "fcn_resnet50",
                                   pytest.param("deeplabv3_resnet50", marks=pytest.mark.heavy),
                                   pytest.param("deeplabv3_resnet101", marks=pytest.mark.heavy)])
def test_segmenters_equal_torchvision(entry, tmp):
  check_entry(entry, tmp)


def test_swapped_aspp_branches_are_caught(tmp):
  """Negative control: swapping the weights of two ASPP branches (rates 1 and 2) changes the logits."""
  r = rec("deeplabv3_rates")
  seg = segmenter("deeplabv3_rates", tmp)
  p = seg.variables["params"]["classifier"]["aspp"]
  swapped = {**p, "convs_1": p["convs_2"], "convs_2": p["convs_1"]}
  params = {**seg.variables["params"], "classifier": {**seg.variables["params"]["classifier"], "aspp": swapped}}
  lo, _ = jax.device_get(_eval(seg.replace(variables={**seg.variables, "params": params}), photos()))
  assert np.abs(lo["out"] - r["out_lo"]).max() > 1e-2 * np.abs(r["out_lo"]).max()


# Values per channel that each recorded BatchNorm normalises in the training-mode forward (2 photos).
_HIGH, _LOW, _STEM = 2 * 5 * 7, 2 * 10 * 14, 2 * 40 * 53
COUNTS = {
    "lraspp": {"backbone.0.1": _STEM, "classifier.cbr.1": _HIGH},
    "deeplabv3_mobilenet": {"backbone.0.1": _STEM, **{f"classifier.0.convs.{i}.1": _HIGH for i in range(4)},
                            "classifier.0.convs.4.2": 2, "classifier.0.project.1": _HIGH, "classifier.2": _HIGH,
                            "aux_classifier.1": _LOW},
}


@pytest.mark.parametrize("entry", ["lraspp", pytest.param("deeplabv3_mobilenet", marks=pytest.mark.heavy)])
def test_training_mode_batch_statistics_equal_torchvision(entry, tmp):
  r = rec(entry)
  seg = segmenter(entry, tmp)
  out, stats = jax.device_get(_train(seg, photos()))
  _close(out["out"], r["train_out_lo"])
  if "train_aux_lo" in r:
    _close(out["aux"], r["train_aux_lo"])
  key = ts.torch_key_fn(seg.model.cfg)
  from flax import traverse_util
  flat = traverse_util.flatten_dict(stats)
  got = {f"{key('/'.join(k[:-1]))}.{ {'mean': 'running_mean', 'var': 'running_var'}[k[-1]]}": v for k, v in flat.items()}
  names = [k[len("stats/"):] for k in r if k.startswith("stats/")]
  assert names and all(n in got for n in names)
  sd = state_dict(entry)
  for n in names:
    want = r[f"stats/{n}"]
    if n.endswith("running_var"):
      # torch averages the unbiased batch variance, Flax the biased one: undo Bessel's correction
      # on torch's new term, (new - (1 - m) old) (count - 1) / count, count the values per channel.
      layer = n[:-len(".running_var")]
      m, count = (0.01 if n.startswith("backbone.") else 0.1), COUNTS[entry][layer]
      old = sd[n]
      want = (1 - m) * old + (want - (1 - m) * old) * (count - 1) / count
    np.testing.assert_allclose(got[n], want, rtol=1e-4, atol=1e-5, err_msg=n)
  # negative control: the eval-mode logits (running statistics) differ from the training-mode ones
  assert np.abs(np.asarray(_eval(seg, photos())[0]["out"]) - r["train_out_lo"]).max() > 1e-3


@jax.jit
def _loss_and_grad(seg, x):
  def f(x):
    heads, _ = seg.heads(x)
    loss = jnp.mean(jax.nn.log_softmax(heads["out"])[..., 15])
    return loss + (0.4 * jnp.mean(jax.nn.log_softmax(heads["aux"])[..., 15]) if "aux" in heads else 0.0)
  return jax.value_and_grad(f)(x)


@pytest.mark.parametrize("entry", ["lraspp", pytest.param("deeplabv3_mobilenet", marks=pytest.mark.heavy)])
def test_jit_and_input_gradient_are_finite(entry, tmp):
  seg = segmenter(entry, tmp)
  loss, grad = _loss_and_grad(seg, photos(1))
  assert np.isfinite(float(loss))
  grad = np.asarray(grad)
  assert grad.shape == (1, 80, 106, 3) and np.isfinite(grad).all() and np.abs(grad).max() > 0


@pytest.mark.heavy
def test_the_rates_matter(tmp):
  """Negative control: the same weights with torchvision's default rates (12/24/36, all in the
  padding of a 5x7 map) give other logits."""
  r = rec("deeplabv3_rates")
  seg = segmenter("deeplabv3_rates", tmp)
  other = seg.replace(model=ts.TorchvisionSegmenter(
      ts.Config(**{**seg.model.cfg.__dict__, "atrous_rates": (12, 24, 36)}), class_names=seg.class_names))
  lo, _ = jax.device_get(_eval(other, photos()))
  assert np.abs(lo["out"] - r["out_lo"]).max() > 1e-2 * np.abs(r["out_lo"]).max()


@pytest.mark.heavy
def test_dropout_runs_only_with_an_rng(tmp):
  seg = segmenter("deeplabv3_rates", tmp)
  x = photos(1)
  heads = jax.jit(lambda s, x, rng: s.heads(x, train=True, rng=rng)[0])
  a, b = heads(seg, x, None), heads(seg, x, None)
  c = heads(seg, x, jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(a["out"]), np.asarray(b["out"]))
  assert np.abs(np.asarray(a["out"]) - np.asarray(c["out"])).max() > 1e-3


def test_aux_head_follows_the_checkpoint(tmp):
  """With aux keys: aux head by default, dropped with aux_loss=False (same main logits); without
  them: no aux head, and aux_loss=True names the missing keys."""
  sd = state_dict("deeplabv3_mobilenet")
  with_aux = segmenter("deeplabv3_mobilenet", tmp)
  assert with_aux.model.cfg.aux_loss
  dropped = zoo.build("deeplabv3_mobilenet_v3_large", str(pathlib.Path(tmp) / "deeplabv3_mobilenet.safetensors"),
                      aux_loss=False)
  no_aux_path = write(pathlib.Path(tmp) / "no_aux.safetensors",
                      {k: v for k, v in sd.items() if not k.startswith("aux_classifier.")})
  plain = zoo.build("deeplabv3_mobilenet_v3_large", str(no_aux_path))
  main = {c: {k: v for k, v in tree.items() if k != "aux_classifier"} for c, tree in with_aux.variables.items()}
  for seg in (dropped, plain):
    assert not seg.model.cfg.aux_loss and "aux_classifier" not in seg.variables["params"]
    # the variables whose outputs test_segmenters_equal_torchvision checks, less the aux head's
    jax.tree.map(np.testing.assert_array_equal, seg.variables, main)
  with pytest.raises(WeightsError, match=r"missing keys.*aux_classifier\.0\.weight"):
    zoo.build("deeplabv3_mobilenet_v3_large", str(no_aux_path), aux_loss=True)


def test_pth_checkpoint_through_the_safe_reader(tmp):
  """A torch zip-format .pth (written by tests/torch_file.py) loads as the safetensors file does."""
  import torch_file
  path = torch_file.save(pathlib.Path(tmp) / "lraspp.pth", state_dict("lraspp"))
  seg = rajax.recognizer("lraspp_mobilenet_v3_large", weights=str(path))
  assert isinstance(seg, Segmenter) and seg.class_names == ts.VOC_CATEGORIES and seg.num_classes == 21
  ref = segmenter("lraspp", tmp)
  for a, b in zip(jax.tree.leaves(seg.variables), jax.tree.leaves(ref.variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_checkpoint_of_another_architecture_is_refused(tmp):
  lraspp = str(pathlib.Path(tmp) / "lraspp.safetensors")
  segmenter("lraspp", tmp)  # writes it
  with pytest.raises(WeightsError) as e:
    zoo.build("deeplabv3_mobilenet_v3_large", lraspp)
  msg = str(e.value)
  assert "missing keys" in msg and "classifier.0.convs.0.0.weight" in msg
  assert "unexpected keys" in msg and "classifier.cbr.0.weight" in msg
  assert "deeplabv3_mobilenet_v3_large reads torchvision" in msg
  # the same backbone keys with another head width: a shape error naming the key
  with pytest.raises(WeightsError, match=r"wrong shapes.*classifier\.low_classifier\.weight"):
    zoo.build("lraspp_mobilenet_v3_large", lraspp, num_classes=5)
  # a ResNet-50 segmentation key set into a MobileNetV3 model: every backbone key unexpected
  rn = {k: np.zeros(s, np.float32) for k, s, _ in json.loads(str(rec("deeplabv3_resnet50")["keys"]))
        if not k.endswith("num_batches_tracked") and k.startswith(("backbone.conv1", "backbone.layer1.0.conv1"))}
  with pytest.raises(WeightsError, match=r"unexpected keys.*backbone\.conv1\.weight"):
    zoo.build("lraspp_mobilenet_v3_large", str(write(pathlib.Path(tmp) / "rn.safetensors", rn)))


def test_layouts_match_torchvision_keys():
  """Every torch key of each fixture entry is claimed by exactly one rajax variable (random build)."""
  from flax import traverse_util
  for entry in ("deeplabv3_resnet50", "fcn_resnet50", "deeplabv3_resnet101", "lraspp", "deeplabv3_rates"):
    name, opts, _ = ENTRIES[entry]
    cfg_opts = {**ts.ARCHS[name], **{k: v for k, v in opts.items() if k != "num_classes"}}
    cfg = ts.Config(num_classes=opts.get("num_classes", 21), aux_loss=entry not in ("lraspp", "deeplabv3_rates"),
                    **cfg_opts)
    model = ts.TorchvisionSegmenter(cfg)
    template = jax.eval_shape(lambda: model.init(jax.random.key(0)))
    key = ts.torch_key_fn(cfg)
    leaf = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean", "var": "running_var"}
    ours = {}
    for path, spec in traverse_util.flatten_dict(template).items():
      ours[f"{key('/'.join(path[1:-1]))}.{leaf[path[-1]]}"] = spec.shape
    theirs = {k: tuple(s) for k, s, _ in json.loads(str(rec(entry)["keys"])) if not k.endswith("num_batches_tracked")}
    assert set(ours) == set(theirs), (entry, sorted(set(ours) ^ set(theirs))[:5])


def test_zoo_and_recognizer_list_the_segmenters():
  from rajax.models import recognizers
  assert set(ts.ARCHS) <= set(zoo.available())
  assert set(ts.ARCHS) <= set(recognizers.available(task="segmentation"))
  with pytest.raises(ValueError, match="no auxiliary head"):
    zoo.build("lraspp_mobilenet_v3_large", aux_loss=True)
  with pytest.raises(ValueError, match="Unknown options"):
    zoo.build("fcn_resnet50", rates=(1, 2))


def test_msgpack_variables_round_trip(tmp):
  """rajax's own .msgpack variables load back, with the aux head found in them or dropped."""
  from rajax import weights
  seg = segmenter("deeplabv3_mobilenet", tmp)
  path = weights.save(pathlib.Path(tmp) / "dl.msgpack", seg.variables)
  again = zoo.build("deeplabv3_mobilenet_v3_large", str(path))
  assert again.model == seg.model
  jax.tree.map(np.testing.assert_array_equal, again.variables, seg.variables)
  no_aux = zoo.build("deeplabv3_mobilenet_v3_large", str(path), aux_loss=False)
  assert "aux_classifier" not in no_aux.variables["params"] and not no_aux.model.cfg.aux_loss
  with pytest.raises(WeightsError, match="num_classes=5"):
    zoo.build("deeplabv3_mobilenet_v3_large", str(path), num_classes=5)
  with pytest.raises(WeightsError, match="No weights file"):
    zoo.build("deeplabv3_mobilenet_v3_large", str(pathlib.Path(tmp) / "absent.msgpack"))


@pytest.mark.heavy  # ~50 s on CPU: the parameter gradient of the dilated depthwise convolutions
def test_as_a_trainable_task_network(tmp):
  """The segmentation task's loss in training mode: finite, with a parameter gradient in the
  backbone and the head, and updated running statistics for every BatchNorm."""
  from rajax.tasks import segmentation as task
  seg = segmenter("deeplabv3_rates", tmp)
  x = photos(1)
  targets = jnp.asarray(np.where(np.arange(106)[None, None, :] < 50, 1, 3).repeat(80, axis=1).astype(np.int32))
  targets = targets.at[0, :5].set(255)

  @jax.jit
  def step(seg, x, targets):
    def f(params):
      total, terms, _, stats = task.loss(seg, x, targets, variables={**seg.variables, "params": params}, train=True,
                                         rng=jax.random.key(0))
      return jnp.mean(total), stats
    return jax.value_and_grad(f, has_aux=True)(seg.variables["params"])

  (loss, stats), grads = step(seg, x, targets)
  assert np.isfinite(float(loss)) and float(loss) > 0
  for part in (grads["backbone"]["features_1"], grads["classifier"]["aspp"]["convs_1"]):
    leaves = [np.asarray(g) for g in jax.tree.leaves(part)]
    assert all(np.isfinite(g).all() for g in leaves) and max(np.abs(g).max() for g in leaves) > 0
  assert jax.tree.structure(stats) == jax.tree.structure(seg.variables["batch_stats"])
  before = np.asarray(seg.variables["batch_stats"]["classifier"]["block"]["bn"]["mean"])
  assert np.abs(np.asarray(stats["classifier"]["block"]["bn"]["mean"]) - before).max() > 0


@pytest.mark.parametrize("d,k,pad", [(2, 5, 4), (3, 3, 3), (2, 3, 1)])
def test_dilated_depthwise_shifts_equal_the_grouped_convolution(d, k, pad):
  """The CPU path of a dilated depthwise convolution (shifted slices) against XLA's grouped
  convolution with rhs_dilation: outputs and both gradients."""
  from rajax.models import layers
  x = jax.random.normal(jax.random.key(0), (2, 9, 11, 6))
  got = {}
  for impl in ("conv", "shifts"):
    m = layers.DepthwiseConv(6, k, padding=((pad, pad), (pad, pad)), dilation=d, impl=impl)
    v = m.init(jax.random.key(1), x)
    loss = lambda x, v, m=m: jnp.sum(jnp.sin(m.apply(v, x)))
    got[impl] = jax.jit(lambda x, v, m=m, loss=loss: (m.apply(v, x), jax.grad(loss, argnums=(0, 1))(x, v)))(x, v)
  np.testing.assert_allclose(got["shifts"][0], got["conv"][0], atol=1e-5)
  for a, b in zip(jax.tree.leaves(got["shifts"][1]), jax.tree.leaves(got["conv"][1])):
    np.testing.assert_allclose(a, b, atol=1e-4)
  # negative control: without the dilation the same kernel gives another map
  plain = layers.DepthwiseConv(6, k, padding=((pad, pad), (pad, pad)), impl="conv")
  other = plain.apply(m.init(jax.random.key(1), x), x)
  assert other.shape != got["conv"][0].shape or np.abs(np.asarray(other - got["conv"][0])).max() > 1e-2
