"""rajax.codecs: pinned, deterministic codecs whose bit counts are their files' sizes, on the host and
inside jitted (and sharded) programs; rajax.degrade.jpeg unchanged."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from PIL import Image

from rajax import codecs, degrade

H, W = 48, 64


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
  """Four small real photos [4, 48, 64, 3] (scikit-image's chelsea, astronaut, coffee, rocket)."""
  from skimage import data

  return np.stack([np.asarray(Image.fromarray(getattr(data, n)()).resize((W, H), Image.BICUBIC))
                   for n in ("chelsea", "astronaut", "coffee", "rocket")])


def _by_rate(codec: codecs.Codec, qualities) -> list[int]:
  """Qualities from the lowest rate to the highest."""
  return sorted(qualities, reverse=not codec.higher_is_more_bits)


def test_records():
  assert codecs.NAMES == ("jpeg", "webp", "avif", "hevc")
  for name in codecs.NAMES:
    c = codecs.get(name)
    assert c.name == name and c.lo < c.hi and len(c.sweep) == 5 and len(set(c.sweep)) == 5
    assert all(c.lo <= q <= c.hi for q in c.sweep)
    assert list(c.sweep) == _by_rate(c, c.sweep)  # ordered from the lowest rate to the highest
    low, high = _by_rate(c, (c.lo, c.hi))
    assert c.normalise(low) == 0.0 and c.normalise(high) == 1.0
    values = [c.normalise(q) for q in c.sweep]
    assert values == sorted(values) and all(0 < v < 1 for v in values)
    traced = jax.jit(c.normalise)(jnp.asarray(c.sweep, jnp.int32))
    np.testing.assert_allclose(np.asarray(traced), values, rtol=1e-6)
    np.testing.assert_allclose(c.normalise(np.asarray(c.sweep)), values, rtol=1e-6)
  assert not codecs.get("hevc").higher_is_more_bits and codecs.get("hevc").axis == "qp"
  assert codecs.get("hevc").sweep == (41, 37, 34, 31, 28)  # the paper's BPG QPs


@pytest.mark.parametrize("name", codecs.NAMES)
def test_deterministic_and_bits_are_the_file_size(name, photos, tmp_path):
  c = codecs.get(name)
  qs = np.asarray([c.sweep[i % 5] for i in range(len(photos))])
  files = [c.encode(img, int(q)) for img, q in zip(photos, qs)]
  assert files == [c.encode(img, int(q)) for img, q in zip(photos, qs)]
  for i, data in enumerate(files):  # the bits are the size of the file a reader opens
    path = tmp_path / f"{i}.{name}"
    path.write_bytes(data)
    decoded, bits = codecs.roundtrip(name, photos[i], int(qs[i]))
    assert bits == 8 * path.stat().st_size
    if name == "hevc":
      import pillow_heif
      independent = np.asarray(pillow_heif.open_heif(str(path)).to_pillow().convert("RGB"))
    else:
      with Image.open(path) as im:
        assert im.format == name.upper()
        independent = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(decoded, independent)
  serial = codecs.roundtrip_batch(name, photos, qs, threads=1)
  threaded = codecs.roundtrip_batch(name, photos, qs, threads=4)
  for out in (serial, threaded):  # in input order, whatever the threads
    assert out[0].shape == photos.shape and out[0].dtype == np.uint8 and out[1].dtype == np.int64
    np.testing.assert_array_equal(out[1], [8 * len(f) for f in files])
    for i in range(len(photos)):
      np.testing.assert_array_equal(out[0][i], c.decode(files[i]))


@pytest.mark.parametrize("name", codecs.NAMES)
def test_bits_grow_and_error_shrinks_with_rate(name, photos):
  c = codecs.get(name)
  bits, errors = [], []
  for q in c.sweep:
    decoded, b = codecs.roundtrip_batch(name, photos[:2], q)
    bits.append(b)
    errors.append(np.mean((decoded.astype(np.float64) - photos[:2]) ** 2, axis=(1, 2, 3)))
  bits, errors = np.asarray(bits), np.asarray(errors)
  assert np.all(np.diff(bits, axis=0) > 0), bits
  assert np.all(np.diff(errors, axis=0) < 0), errors
  rate = codecs.bpp(bits, H, W)
  assert 0.05 < rate.min() and rate.max() < 8.0  # photographic rates, not headers only or raw pixels


@pytest.mark.parametrize("name", codecs.NAMES)
def test_odd_sizes(name):
  img = np.random.default_rng(0).integers(0, 256, (13, 17, 3), dtype=np.uint8)
  c = codecs.get(name)
  decoded, bits = codecs.roundtrip(name, img[:, ::-1], c.sweep[-1])  # a non-contiguous view too
  assert decoded.shape == (13, 17, 3) and decoded.dtype == np.uint8 and bits > 0


def test_hevc_qp_is_bpgs():
  """QP q is x265's qp q + 1 (BPG's x265 front end), which x265 codes as an intra slice at q - 2."""
  import pillow_heif

  img = np.asarray(Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8))
                   .resize((40, 32), Image.BICUBIC))
  buf = io.BytesIO()
  pillow_heif.from_bytes("RGB", (40, 32), img.tobytes()).save(
      buf, format="HEIF", chroma=420, tile_size=0,
      enc_params={"x265:qp": "32", "x265:ipratio": "1", "preset": "slow", "tune": "ssim"})
  assert codecs.get("hevc").encode(img, 34) == buf.getvalue()


def test_errors(photos):
  with pytest.raises(ValueError, match="Unknown codec 'bpg'; one of jpeg, webp, avif, hevc"):
    codecs.get("bpg")
  with pytest.raises(ValueError, match=r"hevc qp 51 is out of range: it must be in \[0, 50\] \(lower = more bits"):
    codecs.roundtrip("hevc", photos[0], 51)
  with pytest.raises(ValueError, match=r"jpeg quality 0 is out of range: it must be in \[1, 95\] \(higher"):
    codecs.get("jpeg").encode(photos[0], 0)
  with pytest.raises(ValueError, match="webp quality must be an integer"):
    codecs.get("webp").encode(photos[0], 50.0)
  with pytest.raises(ValueError, match="avif quality must be an integer"):
    codecs.get("avif").normalise(True)
  with pytest.raises(ValueError, match=r"expects a uint8 RGB image shaped \[H, W, 3\], got ndarray float32"):
    codecs.get("jpeg").encode(photos[0].astype(np.float32), 50)
  with pytest.raises(ValueError, match=r"roundtrip_batch expects uint8 RGB images shaped \[N, H, W, 3\]"):
    codecs.roundtrip_batch("jpeg", photos[0], 50)
  with pytest.raises(ValueError, match=r"one quality for the batch or one per image \(4\), got an array shaped \(3,\)"):
    codecs.roundtrip_batch("jpeg", photos, [10, 20, 30])
  with pytest.raises(ValueError, match="jpeg quality 96 is out of range"):
    codecs.roundtrip_batch("jpeg", photos, [10, 20, 96, 30])
  with pytest.raises(ValueError, match="threads must be a positive integer"):
    codecs.roundtrip_batch("jpeg", photos, 10, threads=0)
  with pytest.raises(ValueError, match="hevc.decode could not decode 5 bytes as hevc"):
    codecs.get("hevc").decode(b"hello")
  with pytest.raises(ValueError, match="bpp needs a positive image size"):
    codecs.bpp(100, 0, 4)
  with pytest.raises(ValueError, match=r"roundtrip_jax expects float RGB images in \[0, 1\]"):
    codecs.roundtrip_jax("jpeg", jnp.asarray(photos), 50)
  with pytest.raises(ValueError, match="hevc qp 60 is out of range"):
    codecs.roundtrip_jax("hevc", jnp.zeros((2, 8, 8, 3)), 60)
  with pytest.raises(ValueError, match=r"one qp for the batch or one per image \(2\), got shape \(3,\)"):
    codecs.roundtrip_jax("hevc", jnp.zeros((2, 8, 8, 3)), jnp.asarray([30, 31, 32]))


def test_degrade_jpeg_unchanged(photos):
  for q in (5, 37, 95):
    buf = io.BytesIO()
    Image.fromarray(photos[1]).save(buf, format="JPEG", quality=q, subsampling=2)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
      direct = np.asarray(im.convert("RGB"))
    out = degrade.jpeg(photos[1], q)
    assert out.dtype == np.uint8 and out.shape == photos[1].shape
    np.testing.assert_array_equal(out, direct)
    np.testing.assert_array_equal(out, codecs.roundtrip("jpeg", photos[1], q)[0])
  with pytest.raises(ValueError, match=r"jpeg quality must be in \[1, 95\], got 96"):
    degrade.jpeg(photos[1], 96)


def test_quantize_uint8():
  x = np.concatenate([np.linspace(-0.1, 1.1, 997, dtype=np.float32),
                      (np.arange(256, dtype=np.float32) + 0.5) / np.float32(255)])
  expected = np.round(np.clip(x, 0, 1) * np.float32(255)).astype(np.uint8)  # NumPy rounds half to even too
  np.testing.assert_array_equal(np.asarray(jax.jit(codecs.quantize_uint8)(jnp.asarray(x))), expected)


@pytest.fixture(scope="module")
def hevc_jit():
  return jax.jit(lambda x, q: codecs.roundtrip_jax("hevc", x, q))


def _check_against_host(out, x, qs):
  x_hat, rate = (np.asarray(o) for o in out)
  u8 = np.round(np.clip(x, 0, 1) * np.float32(255)).astype(np.uint8)
  decoded, bits = codecs.roundtrip_batch("hevc", u8, qs)
  assert x_hat.dtype == np.float32 and rate.dtype == np.float32 and rate.shape == (len(x),)
  np.testing.assert_array_equal(np.round(x_hat * 255).astype(np.uint8), decoded)
  np.testing.assert_allclose(x_hat, decoded / np.float32(255), rtol=0, atol=1e-7)
  np.testing.assert_allclose(rate, bits / (x.shape[1] * x.shape[2]), rtol=1e-6)


def test_roundtrip_jax_under_jit(photos, hevc_jit):
  x = photos.astype(np.float32) / 255 + np.float32(0.3 / 255)  # off the 8-bit grid: quantised in the graph
  x[0, :2] = 1.5  # clipped
  qs = np.asarray([41, 34, 28, 37], np.int32)
  _check_against_host(hevc_jit(x, qs), x, qs)  # per-image qualities, traced
  _check_against_host(hevc_jit(x, np.int32(31)), x, np.full(4, 31))  # one for the batch
  vmapped = jax.jit(jax.vmap(lambda xi, qi: codecs.roundtrip_jax("hevc", xi[None], qi)))(x, qs)
  _check_against_host((vmapped[0][:, 0], vmapped[1][:, 0]), x, qs)
  jpeg = jax.jit(lambda x: codecs.roundtrip_jax("jpeg", x, 30))(x)
  u8 = np.round(np.clip(x, 0, 1) * np.float32(255)).astype(np.uint8)
  np.testing.assert_array_equal(np.round(np.asarray(jpeg[0]) * 255).astype(np.uint8),
                                np.stack([degrade.jpeg(u, 30) for u in u8]))


def test_roundtrip_jax_has_zero_gradient(photos):
  x = jnp.asarray(photos[:2], jnp.float32) / 255

  def through_codec(x):
    x_hat, rate = codecs.roundtrip_jax("webp", x, 50)
    return jnp.sum(x_hat) + jnp.sum(rate)

  def around_codec(x):
    x_hat, _ = codecs.roundtrip_jax("webp", x, 50)
    return jnp.sum(x_hat * x)

  assert not np.any(np.asarray(jax.jit(jax.grad(through_codec))(x)))
  x_hat = codecs.roundtrip_jax("webp", x, 50)[0]
  np.testing.assert_array_equal(np.asarray(jax.jit(jax.grad(around_codec))(x)), np.asarray(x_hat))


def test_roundtrip_jax_sharded(photos, hevc_jit):
  assert jax.device_count() == 8
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
  x = np.concatenate([photos, photos[:, ::-1]]).astype(np.float32) / 255
  qs = np.asarray([41, 37, 34, 31, 28, 41, 37, 34], np.int32)
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))
  q_s = jax.device_put(qs, NamedSharding(mesh, P("data")))
  _check_against_host(hevc_jit(xs, q_s), x, qs)  # directly: one callback with the gathered batch
  per_device = jax.jit(jax.shard_map(lambda x, q: codecs.roundtrip_jax("hevc", x, q), mesh=mesh,
                                     in_specs=(P("data"), P("data")), out_specs=(P("data"), P("data"))))
  out = per_device(xs, q_s)
  batch = NamedSharding(mesh, P("data"))
  assert out[0].sharding.is_equivalent_to(batch, 4) and out[1].sharding.is_equivalent_to(batch, 1)  # stays per device
  _check_against_host(out, x, qs)


def test_roundtrip_jax_codes_per_device_under_a_mesh(photos, monkeypatch):
  """Under jax.set_mesh (as the trainer and the evaluation set it) each device sends its own shard to the
  host; without a mesh the whole batch goes in one call. The results are the same."""
  from rajax import sharding
  from rajax.codecs import device as device_lib
  calls = []
  real = device_lib.roundtrip_batch

  def counted(name, imgs, qualities, **kw):
    calls.append(len(imgs))
    return real(name, imgs, qualities, **kw)

  monkeypatch.setattr(device_lib, "roundtrip_batch", counted)
  x = np.concatenate([photos, photos[:, ::-1]]).astype(np.float32) / 255
  qs = np.asarray([10, 20, 30, 40, 50, 60, 70, 80], np.int32)
  code = lambda x, q: codecs.roundtrip_jax("jpeg", x, q)
  alone = jax.block_until_ready(jax.jit(code)(x, qs))
  assert calls == [8]
  mesh = sharding.make_mesh(-1)
  calls.clear()
  with jax.set_mesh(mesh):
    xs = jax.device_put(x, sharding.batch_sharded(mesh))
    qd = jax.device_put(qs, sharding.batch_sharded(mesh))
    out = jax.block_until_ready(jax.jit(code)(xs, qd))
  assert sorted(calls) == [1] * 8
  for a, b in zip(alone, out):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  decoded, bits = real("jpeg", np.asarray(codecs.quantize_uint8(x)), qs)
  np.testing.assert_array_equal(np.round(np.asarray(out[0]) * 255).astype(np.uint8), decoded)
  np.testing.assert_allclose(np.asarray(out[1]), bits / (x.shape[1] * x.shape[2]), rtol=1e-6)
