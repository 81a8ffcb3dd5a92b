"""rajax.models.lpips computes what the `lpips` package (0.1.4) computes, from weights in files.

tests/reference/lpips.npz (tests/reference/make_lpips.py) holds three pairs of photo crops and the
package's float64 distances for alex, vgg and squeeze, with the package's real lin layers and
backbones whose values tests/seeded_state_dict.py draws; the tests draw the same values, write
them as a torchvision-style .pth file (plus a classifier tensor LPIPS must ignore) and load it
through `lpips_fn(backbone_weights=...)`, the path a user's torchvision checkpoint takes.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest

import seeded_state_dict
import torch_file
from rajax.models import lpips
from rajax.weights import WeightsError

FIXTURE = pathlib.Path(__file__).resolve().parent / "reference" / "lpips.npz"


@pytest.fixture(scope="module")
def ref():
  with np.load(FIXTURE) as data:
    return {k: data[k] for k in data.files}


def _seeded_backbone(ref, net: str) -> dict[str, np.ndarray]:
  sd = seeded_state_dict.values(f"lpips-{net}", json.loads(str(ref[f"{net}/keys"])))
  assert seeded_state_dict.digest(sd) == str(ref[f"{net}/digest"]), "the seeded weights differ from the fixture's"
  return sd


@pytest.fixture(scope="module")
def backbone_file(ref, tmp_path_factory):
  """net -> a .pth file with the seeded `features` and a classifier tensor, as torchvision's files hold."""
  files = {}

  def get(net: str) -> pathlib.Path:
    if net not in files:
      sd = dict(_seeded_backbone(ref, net))
      sd["classifier.1.weight"] = np.ones((10, 4), np.float32)
      files[net] = torch_file.save(tmp_path_factory.mktemp(net) / lpips.BACKBONE_FILES[net], sd)
    return files[net]

  return get


@pytest.mark.parametrize("net", ["alex", "squeeze", "vgg"])
def test_distances_equal_the_lpips_package(net, ref, backbone_file):
  d = lpips.lpips_fn(net, backbone_weights=backbone_file(net))
  got = np.asarray(d(ref["x"], ref["y"]))
  assert got.shape == (3,) and got.dtype == np.float32
  np.testing.assert_allclose(got, ref[f"{net}/distance"], rtol=1e-4, atol=0)
  # identical images: exactly zero (same shapes, so the same compiled program)
  np.testing.assert_array_equal(np.asarray(d(ref["x"], ref["x"])), np.zeros(3, np.float32))


def test_per_tap_terms_equal_the_lpips_package(ref, backbone_file):
  variables = lpips.load_variables(net="squeeze", backbone_weights=backbone_file("squeeze"))
  total, terms = lpips.LPIPS("squeeze").apply(variables, ref["x"][:1], ref["y"][:1], per_tap=True)
  assert terms.shape == (1, 7)
  np.testing.assert_allclose(np.asarray(terms), ref["squeeze/per_tap"][:1], rtol=1e-4, atol=1e-9)
  np.testing.assert_allclose(np.asarray(total), ref["squeeze/distance"][:1], rtol=1e-4)


def test_missing_backbone_names_the_torchvision_file(tmp_path, monkeypatch):
  monkeypatch.setenv("TORCH_HOME", str(tmp_path))
  for net, name in lpips.BACKBONE_FILES.items():
    with pytest.raises(WeightsError, match="backbone_weights=PATH") as e:
      lpips.lpips_fn(net)
    assert name in str(e.value) and f"https://download.pytorch.org/models/{name}" in str(e.value)
    assert str(tmp_path / "hub" / "checkpoints" / name) in str(e.value)
  with pytest.raises(WeightsError, match="vgg16-397923af.pth"):
    lpips.lpips_fn("vgg", backbone_weights=tmp_path / "nowhere.pth")


def test_backbone_found_in_the_torch_hub_cache(ref, backbone_file, tmp_path, monkeypatch):
  hub = tmp_path / "hub" / "checkpoints"
  hub.mkdir(parents=True)
  shutil.copy(backbone_file("alex"), hub / "alexnet-owt-7be5be79.pth")
  monkeypatch.setenv("TORCH_HOME", str(tmp_path))
  assert lpips.backbone_weights_path("alex") == hub / "alexnet-owt-7be5be79.pth"
  variables = lpips.load_variables(net="alex")
  kernel = variables["params"]["net"]["features_3"]["kernel"]   # torch OIHW -> Flax HWIO
  np.testing.assert_array_equal(kernel, _seeded_backbone(ref, "alex")["features.3.weight"].transpose(2, 3, 1, 0))


def test_backbone_of_another_network_is_refused(backbone_file):
  with pytest.raises(WeightsError, match=r"missing keys \(48\): features\.10\.expand1x1\.bias") as e:
    lpips.load_variables(net="squeeze", backbone_weights=backbone_file("alex"))
  assert "unexpected keys (8): features.10.bias" in str(e.value) and "classifier" not in str(e.value)


def test_lin_weights_read_from_the_lpips_wheel(ref, backbone_file):
  for net, taps in lpips.TAPS.items():
    lin = lpips.read_lin_weights(net)
    assert list(lin) == [f"lin{k}.model.1.weight" for k in range(len(taps))]
    for k, w in enumerate(lin.values()):
      np.testing.assert_array_equal(w, ref[f"{net}/lin{k}"])
  params = lpips.load_variables(net="alex", backbone_weights=backbone_file("alex"))["params"]
  for k in range(5):   # torch's [1, C, 1, 1] 1x1 convolution -> Flax's [1, 1, C, 1] kernel
    np.testing.assert_array_equal(params[f"lin{k}"]["kernel"][0, 0, :, 0], ref[f"alex/lin{k}"][0, :, 0, 0])


def test_lin_weights_are_checked(tmp_path, monkeypatch):
  monkeypatch.setitem(lpips.LIN_SHA256, "alex", "0" * 64)
  with pytest.raises(WeightsError, match="not the pinned"):
    lpips.read_lin_weights("alex")
  monkeypatch.undo()
  with pytest.raises(WeightsError, match=r"lin5\.model\.1\.weight"):   # alex's file holds five taps, squeeze seven
    lpips.read_lin_weights("squeeze", path=lpips.lin_weights_path("alex"))
  monkeypatch.setattr(lpips, "LIN_PACKAGE", "no_such_lpips_package")
  with pytest.raises(WeightsError, match=r"pip install --no-deps lpips==0\.1\.4"):
    lpips.read_lin_weights("vgg")


def test_bad_inputs_are_refused(ref, backbone_file):
  d = lpips.lpips_fn("alex", backbone_weights=backbone_file("alex"))
  x = ref["x"]
  with pytest.raises(ValueError, match="at least 31x31"):
    d(x[:, :30, :40], x[:, :30, :40])
  with pytest.raises(ValueError, match="one shape"):
    d(x, x[:, :, :64])
  with pytest.raises(ValueError, match="NHWC"):
    d(np.moveaxis(x, -1, 1), np.moveaxis(x, -1, 1))
  with pytest.raises(ValueError, match="Unknown LPIPS network"):
    lpips.lpips_fn("resnet")


def test_min_size_is_the_smallest_that_keeps_every_tap():
  for net in lpips.NETS:
    m = lpips.min_size(net)
    assert min(lpips._tap_sizes(net, m)) == 1 and min(lpips._tap_sizes(net, m - 1)) == 0


def test_unit_normalisation_has_finite_gradients_at_zero_features():
  import jax
  import jax.numpy as jnp
  f = jnp.zeros((1, 2, 2, 8)).at[0, 0, 0].set(jnp.arange(8.0))
  np.testing.assert_allclose(lpips._unit(f)[0, 0, 0], np.arange(8.0) / (np.sqrt(140.0) + 1e-10), rtol=1e-6)
  assert float(jnp.abs(lpips._unit(f)[0, 1]).max()) == 0.0
  g = jax.grad(lambda f: jnp.sum(lpips._unit(f) * jnp.arange(8.0)))(f)
  assert bool(jnp.all(jnp.isfinite(g)))
