"""EDSR and SwinIR processors against their official PyTorch code, through the real checkpoint reader.

tests/reference/make_sr_processors.py built the official models with small settings and seeded
weights, saved their state dicts as the official code does (tests/reference/sr_processors/) and
recorded their outputs on one fixed input (tests/reference/sr_processors.npz; SwinIR's x3, x4 and x8
in sr_processors_swinir.npz), each processor at x2, x3, x4 and x8. Here rajax reads those files without torch, as
`rajax.networks.load_variables` does for config.init_processor, and must reproduce torch's outputs
to 1e-5 of their largest magnitude. SwinIR's state dicts are .npz files (see the fixture script),
wrapped under "params" here as in the official files and read through the same unwrapping and
conversion; written as a torch .pth (tests/torch_file.py), they load through load_variables alike.
The full-size EDSR-baseline and SwinIR-M are pinned by their official state dict layouts
(tests/reference/sr_layouts.json: every key and shape, no weights), read through the same converter.
"""

import json

import functools
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from rajax import config as config_lib
from rajax import networks
from rajax.models import PROCESSORS, layers, processor, swinir
from rajax.models.edsr import EDSR
from rajax import weights as rweights
from rajax.weights import WeightsError, convert

import torch_file

REF = pathlib.Path(__file__).resolve().parent / "reference"
FILES = REF / "sr_processors"
# setting -> the EDSR options the fixture script used (blocks=2, channels=8 throughout)
EDSR_SETTINGS = {"edsr_x2": dict(scale=2, res_scale=1.0), "edsr_x3": dict(scale=3, res_scale=0.1),
                 "edsr_x4": dict(scale=4, res_scale=1.0), "edsr_x8": dict(scale=8, res_scale=1.0)}
# settings the fixture script recorded on the input's top left 6 x 6
EDSR_SMALL_INPUT = ("edsr_x8",)


@pytest.fixture(scope="module")
def ref():
  with np.load(REF / "sr_processors.npz") as f, np.load(REF / "sr_processors_swinir.npz") as g:
    return {**dict(f), **dict(g)}


def _edsr(name: str, **overrides) -> EDSR:
  return processor("edsr", blocks=2, channels=8, **{**EDSR_SETTINGS[name], **overrides})


def _load(net, path: pathlib.Path, size: int = 12) -> dict:
  return networks.load_variables(net, str(path), (size, size, 3), what=f"the processor ({path.name})")


def _error(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, (got.shape, want.shape)
  return float(np.abs(got - want).max() / np.abs(want).max())


def _close(got, want, tol=1e-5):
  err = _error(got, want)
  assert err < tol, f"max error {err:.3g} of max |output|"


def _edsr_input(ref, name: str) -> np.ndarray:
  return ref["edsr_input"][:, :6, :6] if name in EDSR_SMALL_INPUT else ref["edsr_input"]


@pytest.mark.parametrize("name", sorted(EDSR_SETTINGS))
def test_edsr_matches_official_torch(ref, name):
  net = _edsr(name)
  variables = _load(net, FILES / f"{name}.pt")
  assert variables["batch_stats"] == {}
  x = _edsr_input(ref, name)
  y = net.apply(variables, x)
  assert y.dtype == jnp.float32 and y.shape == (2, x.shape[1] * net.scale, x.shape[2] * net.scale, 3)
  _close(y, ref[name])


@pytest.mark.parametrize("name, stages", [("edsr_x4", ("up_0", "up_1")), ("edsr_x8", ("up_0", "up_2"))])
def test_edsr_upsampler_stages_in_other_order_fail(ref, name, stages):
  """Negative control: the x4/x8 upsampler's conv stages, of equal shapes, swapped give another output."""
  net = _edsr(name)
  v = _load(net, FILES / f"{name}.pt")
  a, b = stages
  swapped = {**v, "params": {**v["params"], a: v["params"][b], b: v["params"][a]}}
  assert _error(net.apply(swapped, _edsr_input(ref, name)), ref[name]) > 1e-2


def test_edsr_reads_basicsr_layout(ref):
  net = _edsr("edsr_x4")
  official = _load(net, FILES / "edsr_x4.pt")
  basicsr = _load(net, FILES / "edsr_x4_basicsr.pth")
  jax.tree.map(np.testing.assert_array_equal, official, basicsr)
  _close(net.apply(basicsr, ref["edsr_input"]), ref["edsr_x4"])


def test_edsr_from_config_init_processor(ref):
  c = config_lib.base(task="sr", method="plain")
  c.processor = ml_collections.ConfigDict(dict(name="edsr", blocks=2, channels=8, res_scale=0.1))
  c.degrade.scale = 3
  c.data.crop = 36
  c.init_processor = str(FILES / "edsr_x3.pt")
  net = networks.module(c, "processor")
  assert isinstance(net, EDSR) and net.scale == 3
  variables = networks.load_variables(net, c.init_processor, networks.input_shape(c), what="P")
  _close(net.apply(variables, ref["edsr_input"]), ref["edsr_x3"])


def test_config_allows_x3_for_processors_that_have_it():
  c = config_lib.base(task="sr", method="plain")
  c.degrade.scale, c.data.crop = 3, 222
  with pytest.raises(config_lib.ConfigError, match=r"must be one of 2, 4, 8 for SR with processor 'srresnet'"):
    config_lib.validate(c)
  for name in ("edsr", "swinir"):
    c.processor = ml_collections.ConfigDict(dict(name=name))
    config_lib.validate(c)


@pytest.mark.parametrize("file, model, expect", [
    ("edsr_x2.pt", "edsr_x4", ["missing keys", "tail.0.2.weight", "tail.0.2.bias"]),   # x2 file, x4 model
    ("edsr_x3.pt", "edsr_x2", ["wrong shapes", "tail.0.0.weight", "(72, 8, 3, 3)"]),   # x3 file, x2 model
    ("edsr_x4_basicsr.pth", "edsr_x2", ["unexpected keys", "tail.0.2.weight"]),
    ("edsr_x8.pt", "edsr_x4", ["unexpected keys", "tail.0.4.weight", "tail.0.4.bias"]),   # x8 file, x4 model
    ("edsr_x4.pt", "edsr_x8", ["missing keys", "tail.0.4.weight"]),                     # x4 file, x8 model
    ("edsr_x8.pt", "edsr_x3", ["wrong shapes", "tail.0.0.weight", "(32, 8, 3, 3)", "unexpected keys"]),
])
def test_edsr_wrong_scale_names_the_keys(file, model, expect):
  with pytest.raises(WeightsError) as e:
    _load(_edsr(model), FILES / file)
  for s in expect:
    assert s in str(e.value)


def test_edsr_other_architecture_names_the_keys():
  with pytest.raises(WeightsError) as e:
    _load(_edsr("edsr_x2"), REF / "tensors_zip.pth")
  msg = str(e.value)
  assert "missing keys" in msg and "head.0.weight" in msg
  assert "unexpected keys" in msg and "param.weight" in msg


def test_edsr_refuses_other_mean_shift():
  with pytest.raises(WeightsError, match=r"rgb_range about 255"):
    _load(_edsr("edsr_x2", rgb_range=1.0), FILES / "edsr_x2.pt")


def test_edsr_without_torch_map_for_other_processors():
  net = processor("srresnet", scale=2, blocks=1, channels=8)
  with pytest.raises(WeightsError, match="no torch key map"):
    _load(net, FILES / "edsr_x2.pt")


def test_pixel_shuffle_is_torchs():
  rng = np.random.default_rng(3)
  for r in (2, 3):
    x = rng.standard_normal((2, 3, 4, 5 * r * r)).astype(np.float32)
    want = np.zeros((2, 3 * r, 4 * r, 5), np.float32)
    for c in range(5):  # torch: out[c, h*r + i, w*r + j] = in[c*r*r + i*r + j, h, w]
      for i in range(r):
        for j in range(r):
          want[:, i::r, j::r, c] = x[..., c * r * r + i * r + j]
    np.testing.assert_array_equal(layers.pixel_shuffle(jnp.asarray(x), r), want)
  with pytest.raises(ValueError, match="divisible by 4"):
    layers.pixel_shuffle(jnp.zeros((1, 2, 2, 6)), 2)


def test_edsr_jit_and_input_gradient(ref):
  net = _edsr("edsr_x2")
  variables = _load(net, FILES / "edsr_x2.pt")
  x = jnp.asarray(ref["edsr_input"][:1, :8, :8])

  @jax.jit
  def value_and_grad(v, x):
    return jax.value_and_grad(lambda x: jnp.mean(net.apply(v, x) ** 2))(x)

  loss, g = value_and_grad(variables, x)
  assert np.isfinite(loss) and g.shape == x.shape and np.all(np.isfinite(g)) and np.abs(g).max() > 0


def test_edsr_options_and_registry():
  assert PROCESSORS["edsr"] is EDSR
  with pytest.raises(ValueError, match="scale must be one of"):
    processor("edsr", scale=5)
  with pytest.raises(ValueError, match="rgb_range must be positive"):
    processor("edsr", rgb_range=0.0)
  with pytest.raises(ValueError, match="NHWC"):
    _edsr("edsr_x2").init(jax.random.key(0), jnp.zeros((1, 3, 8, 8)))
  net = processor("edsr", scale=8, blocks=1, channels=4, dtype="bfloat16")
  y, params = net.init_with_output(jax.random.key(0), jnp.zeros((1, 2, 2, 3)))
  assert y.shape == (1, 16, 16, 3) and y.dtype == jnp.float32
  assert sorted(params["params"]) == ["body_0", "body_conv", "head", "tail", "up_0", "up_1", "up_2"]
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


# SwinIR: the official network_swinir.py at x2, x3, x4 and x8 (upsampler="pixelshuffle",
# resi_connection="1conv")
SWINIR = dict(scale=2, embed_dim=12, depths=(2, 2), num_heads=(2, 2), window_size=4, img_size=8, mlp_ratio=2)


@functools.cache
def _swinir_npz(scale: int) -> dict:
  """The fixture's SwinIR state dict at `scale`, as stored: {torch key: array}."""
  with np.load(FILES / f"swinir_x{scale}_state_dict.npz") as f:
    return dict(f)


@pytest.fixture(scope="module")
def swinir_state_dict():
  return convert.state_dict_of({"params": _swinir_npz(2)}, source="swinir_x2")  # as the official files wrap it


def _swinir_variables(net, state_dict, size=8):
  template = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
  return convert.from_torch(net.rename_torch_keys(state_dict), template, net.torch_key,
                            source=f"swinir_x{net.scale}")


def test_swinir_matches_official_torch(ref, swinir_state_dict):
  net = processor("swinir", **SWINIR)
  variables = _swinir_variables(net, swinir_state_dict)
  _close(net.apply(variables, ref["swinir_input"]), ref["swinir_x2"])
  # 6x7 is reflect-padded to 8x8, as the official forward does, and the output cropped to 12x14
  _close(net.apply(variables, ref["swinir_input"][:, :6, :7]), ref["swinir_x2_6x7"])


@pytest.mark.parametrize("scale", [3, 4, 8])
def test_swinir_other_scales_match_official_torch(ref, scale):
  """x3 (one conv to 9 x 64 channels, pixel shuffle 3) and x4, x8 (two and three x2 stages)."""
  net = processor("swinir", **{**SWINIR, "scale": scale})
  sd = convert.state_dict_of({"params": _swinir_npz(scale)}, source=f"swinir_x{scale}")
  y = net.apply(_swinir_variables(net, sd), ref["swinir_input"])
  assert y.shape == (2, 8 * scale, 8 * scale, 3) and y.dtype == jnp.float32
  _close(y, ref[f"swinir_x{scale}"])


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_swinir_reads_pth_checkpoint(ref, tmp_path, scale):
  """{"params": state_dict} as a torch zip .pth, read by load_variables (the config.init_processor path)."""
  name = f"swinir_x{scale}"
  path = torch_file.save(tmp_path / f"{name}.pth", {"params": _swinir_npz(scale)})
  net = processor("swinir", **{**SWINIR, "scale": scale})
  variables = _load(net, path, size=8)
  assert variables["batch_stats"] == {}
  sd = convert.state_dict_of({"params": _swinir_npz(scale)}, source=name)
  jax.tree.map(np.testing.assert_array_equal, variables["params"], _swinir_variables(net, sd)["params"])
  _close(net.apply(variables, ref["swinir_input"]), ref[name])
  if scale == 2:
    _close(net.apply(variables, ref["swinir_input"][:, :6, :7]), ref["swinir_x2_6x7"])


def test_swinir_pth_of_other_scale_names_the_keys(tmp_path):
  path = torch_file.save(tmp_path / "swinir_x3.pth", {"params": _swinir_npz(3)})
  with pytest.raises(WeightsError) as e:  # an x3 file (one 64 -> 576 conv) read by an x4 model
    _load(processor("swinir", **{**SWINIR, "scale": 4}), path, size=8)
  assert "upsample.0.weight" in str(e.value) and "upsample.2.weight" in str(e.value)


def test_swinir_shift_mask_and_index_are_the_official_buffers(swinir_state_dict):
  sd = swinir_state_dict
  np.testing.assert_array_equal(swinir.shift_mask(8, 8, 4, 2), sd["layers.0.residual_group.blocks.1.attn_mask"])
  np.testing.assert_array_equal(swinir.relative_position_index(4),
                                sd["layers.1.residual_group.blocks.0.attn.relative_position_index"])


def test_swinir_wrong_settings_name_the_keys(swinir_state_dict):
  with pytest.raises(WeightsError, match=r"relative_position_index.*window_size"):
    _swinir_variables(processor("swinir", **{**SWINIR, "window_size": 2}), swinir_state_dict)
  with pytest.raises(WeightsError) as e:
    _swinir_variables(processor("swinir", **{**SWINIR, "scale": 4}), swinir_state_dict)
  assert "missing keys" in str(e.value) and "upsample.2.weight" in str(e.value)
  with pytest.raises(WeightsError) as e:
    _swinir_variables(processor("swinir", **{**SWINIR, "depths": (2,), "num_heads": (2,)}), swinir_state_dict)
  assert "unexpected keys" in str(e.value) and "layers.1.conv.weight" in str(e.value)
  with pytest.raises(WeightsError) as e:  # an EDSR file is no SwinIR
    _load(processor("swinir", **SWINIR), FILES / "edsr_x2.pt", size=8)
  assert "conv_first.weight" in str(e.value) and "head.0.weight" in str(e.value)


def test_swinir_jit_input_gradient_and_options(swinir_state_dict):
  net = processor("swinir", **SWINIR)
  variables = _swinir_variables(net, swinir_state_dict)
  x = jnp.asarray(np.random.default_rng(5).random((1, 8, 8, 3), np.float32))

  @jax.jit
  def value_and_grad(v, x):
    return jax.value_and_grad(lambda x: jnp.mean(net.apply(v, x) ** 2))(x)

  loss, g = value_and_grad(variables, x)
  assert np.isfinite(loss) and np.all(np.isfinite(g)) and np.abs(g).max() > 0
  assert PROCESSORS["swinir"] is swinir.SwinIR
  with pytest.raises(ValueError, match="scale must be one of"):
    processor("swinir", scale=1)
  with pytest.raises(ValueError, match="one num_heads entry per RSTB"):
    processor("swinir", depths=(2, 2), num_heads=(2,))
  with pytest.raises(ValueError, match="divisible"):
    processor("swinir", embed_dim=10, depths=(2,), num_heads=(3,))
  with pytest.raises(ValueError, match="reflect-pads"):
    net.init(jax.random.key(0), jnp.zeros((1, 2, 8, 3)))


def test_swinir_upsampler_stages_in_other_order_fail(ref):
  """Negative control: x8's three 64 -> 256 conv stages, taken in another order, give another output."""
  net = processor("swinir", **{**SWINIR, "scale": 8})
  v = _swinir_variables(net, convert.state_dict_of({"params": _swinir_npz(8)}, source="swinir_x8"))
  p = v["params"]
  swapped = {**v, "params": {**p, "up_0": p["up_2"], "up_2": p["up_0"]}}
  assert _error(net.apply(swapped, ref["swinir_input"]), ref["swinir_x8"]) > 1e-2


# The full-size models: the official state dict layouts of EDSR-baseline and SwinIR-M at every scale

@functools.cache
def _layouts() -> dict:
  return json.loads((REF / "sr_layouts.json").read_text())


def _full_size(name: str):
  """rajax's processor for layout `name`, from the official constructor options the fixture recorded."""
  o = _layouts()[name]["options"]
  if name.startswith("edsr"):
    return processor("edsr", scale=o["scale"], blocks=o["n_resblocks"], channels=o["n_feats"],
                     res_scale=o["res_scale"], rgb_range=float(o["rgb_range"]))
  assert (o["upsampler"], o["resi_connection"], o["in_chans"]) == ("pixelshuffle", "1conv", 3)
  return processor("swinir", scale=o["upscale"], embed_dim=o["embed_dim"], depths=tuple(o["depths"]),
                   num_heads=tuple(o["num_heads"]), window_size=o["window_size"], mlp_ratio=o["mlp_ratio"],
                   img_size=o["img_size"], img_range=o["img_range"])


def _layout_state_dict(name: str) -> dict:
  """A state dict of layout `name`: zeros, except the tensors the reader checks for their values: EDSR's
  MeanShift convs (the official ones of the x2 fixture file, also rgb_range 255) and SwinIR's relative
  position indices (rajax's, which test_swinir_shift_mask_and_index_are_the_official_buffers pins)."""
  o = _layouts()[name]["options"]
  sd = {k: np.zeros(shape, np.float32) for k, shape in _layouts()[name]["keys"]}
  for k in sd:
    if k.startswith(("sub_mean.", "add_mean.")):
      assert o["rgb_range"] == 255
      sd[k] = rweights.read_state_dict(FILES / "edsr_x2.pt")[k]
    if k.endswith(".relative_position_index"):
      sd[k] = swinir.relative_position_index(o["window_size"])
  return sd


def _read_layout(net, name: str, size: int) -> dict:
  """`name`'s state dict as the official file holds it (SwinIR's under "params"), read as
  rajax.weights.load reads a torch file: unwrapped, renamed, converted against net's template."""
  sd = _layout_state_dict(name)
  obj = {"params": sd} if name.startswith("swinir") else sd
  template = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
  state_dict = net.rename_torch_keys(convert.state_dict_of(obj, source=name))
  return convert.from_torch(state_dict, template, net.torch_key, source=name), template


LAYOUTS = [f"{a}_x{s}" for a in ("edsr_baseline", "swinir_m") for s in (2, 3, 4, 8)]


@pytest.mark.parametrize("name", LAYOUTS)
def test_full_size_official_layout_reads_into_rajax(name):
  """Every official key lands on one rajax parameter of its shape (the converter refuses missing,
  unexpected and misshapen keys); SwinIR's attn_mask and index buffers are the ones it recomputes."""
  net = _full_size(name)
  variables, template = _read_layout(net, name, size=8)
  got = {k: np.shape(a) for k, a in traverse_util.flatten_dict(variables["params"], sep="/").items()}
  assert got == {k: t.shape for k, t in traverse_util.flatten_dict(template["params"], sep="/").items()}
  n_official = sum(int(np.prod(s)) for k, s in _layouts()[name]["keys"]
                   if not k.endswith(("attn_mask", "relative_position_index", "sub_mean.weight", "sub_mean.bias",
                                      "add_mean.weight", "add_mean.bias")))
  assert sum(int(np.prod(s)) for s in got.values()) == n_official


@pytest.mark.parametrize("name, other", [("edsr_baseline_x3", 4), ("edsr_baseline_x8", 2), ("swinir_m_x4", 8),
                                         ("swinir_m_x3", 2)])
def test_full_size_layout_of_other_scale_names_the_keys(name, other):
  """Negative control: a layout read by the model of another scale (another upsampler) is refused."""
  net = _full_size(name).clone(scale=other)
  with pytest.raises(WeightsError) as e:
    _read_layout(net, name, size=8)
  assert ("tail.0." if name.startswith("edsr") else "upsample.") in str(e.value)
