"""Degradations: Pillow bicubic downscaling, Pillow JPEG round trips, Gaussian noise (host and device), dispatch, errors."""

import io
import pathlib

import numpy as np
import pytest
from PIL import Image

from rajax import degrade as D
from rajax.data import SyntheticImages


def _photo(h=96, w=128, seed=0):
  """A photo-like uint8 image: smooth gradients, sharp shapes and fine noise."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  img = np.stack([
      255 * xx / w,
      255 * (0.5 + 0.5 * np.sin(yy / 7.0 + xx / 11.0)),
      255 * yy / h,
  ], axis=-1)
  for _ in range(6):
    y0, x0 = rng.integers(0, h), rng.integers(0, w)
    y1, x1 = y0 + rng.integers(1, h // 2 + 2), x0 + rng.integers(1, w // 2 + 2)
    img[y0:y1, x0:x1] = rng.integers(0, 256, 3)
  img += rng.normal(0, 6, img.shape)
  return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(params=["gradients", "synthetic"])
def photo(request):
  if request.param == "gradients":
    return _photo()
  return SyntheticImages(size=2, image_size=96, seed=5)[1]["image"]


# --------------------------------------------------------------------------- bicubic_down


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_bicubic_down_matches_pillow(photo, scale):
  h, w = photo.shape[:2]
  out = D.bicubic_down(photo, scale)
  assert out.shape == (h // scale, w // scale, 3)
  assert out.dtype == np.uint8
  want = np.asarray(Image.fromarray(photo).resize((w // scale, h // scale), Image.BICUBIC))
  np.testing.assert_array_equal(out, want)
  # Antialiased bicubic, not plain subsampling or another filter.
  assert not np.array_equal(out, photo[::scale, ::scale])
  other = np.asarray(Image.fromarray(photo).resize((w // scale, h // scale), Image.BILINEAR))
  assert not np.array_equal(out, other)


def test_bicubic_down_non_square_orientation():
  img = _photo(h=40, w=24)
  out = D.bicubic_down(img, 4)
  assert out.shape == (10, 6, 3)  # (H/s, W/s), not transposed
  np.testing.assert_array_equal(out, np.asarray(Image.fromarray(img).resize((6, 10), Image.BICUBIC)))


def test_bicubic_down_scale_1_is_identity():
  img = _photo(h=16, w=16)
  np.testing.assert_array_equal(D.bicubic_down(img, 1), img)


@pytest.mark.parametrize("shape,scale", [((30, 32, 3), 4), ((32, 30, 3), 4), ((9, 9, 3), 2)])
def test_bicubic_down_not_divisible(shape, scale):
  with pytest.raises(ValueError, match="divisible"):
    D.bicubic_down(np.zeros(shape, np.uint8), scale)


def test_bicubic_down_bad_scale():
  with pytest.raises(ValueError):
    D.bicubic_down(np.zeros((8, 8, 3), np.uint8), 0)


# --------------------------------------------------------------------------- jpeg


def _pillow_jpeg(img, quality, subsampling=2):
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=quality, subsampling=subsampling)
  return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


@pytest.mark.parametrize("quality", [1, 10, 50, 95])
def test_jpeg_matches_pillow(photo, quality):
  out = D.jpeg(photo, quality)
  assert out.shape == photo.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(out, _pillow_jpeg(photo, quality))
  assert not np.array_equal(out, photo)


def test_jpeg_uses_420_subsampling_and_quality():
  img = _photo()
  out = D.jpeg(img, 30)
  assert not np.array_equal(out, _pillow_jpeg(img, 30, subsampling=0))  # 4:4:4 differs
  assert not np.array_equal(out, _pillow_jpeg(img, 31))
  # Lower quality -> larger error.
  err = lambda q: np.abs(D.jpeg(img, q).astype(np.float64) - img).mean()
  assert err(5) > err(30) > err(90)


@pytest.mark.parametrize("quality", [0, 96, 100, -3])
def test_jpeg_bad_quality(quality):
  with pytest.raises(ValueError, match="quality"):
    D.jpeg(_photo(h=16, w=16), quality)


# --------------------------------------------------------------------------- gaussian_noise


@pytest.mark.parametrize("sigma", [0.05, 0.1, 0.5])
def test_gaussian_noise_formula(sigma):
  img = _photo(h=32, w=40)
  out = D.gaussian_noise(img, sigma, np.random.default_rng(123))
  assert out.shape == img.shape and out.dtype == np.float32
  n = np.random.default_rng(123).standard_normal(img.shape, dtype=np.float32)
  want = np.clip(img.astype(np.float32) / 255.0 + np.float32(sigma) * n, 0.0, 1.0)
  np.testing.assert_array_equal(out, want)
  assert out.min() >= 0.0 and out.max() <= 1.0
  # It is noisy: the residual has roughly the right spread (clipping only shrinks it).
  resid = out - img.astype(np.float32) / 255.0
  assert 0.5 * sigma < resid.std() <= 1.05 * sigma


def test_gaussian_noise_clips():
  img = np.zeros((16, 16, 3), np.uint8)
  img[:8] = 255
  out = D.gaussian_noise(img, 0.3, np.random.default_rng(0))
  assert out.min() == 0.0 and out.max() == 1.0
  assert np.mean(out[8:] == 0.0) > 0.3 and np.mean(out[:8] == 1.0) > 0.3


def test_gaussian_noise_deterministic_and_consumes_rng():
  img = _photo(h=16, w=16)
  a = D.gaussian_noise(img, 0.1, np.random.default_rng(7))
  b = D.gaussian_noise(img, 0.1, np.random.default_rng(7))
  np.testing.assert_array_equal(a, b)
  c = D.gaussian_noise(img, 0.1, np.random.default_rng(8))
  assert not np.array_equal(a, c)
  rng = np.random.default_rng(7)
  first = D.gaussian_noise(img, 0.1, rng)
  second = D.gaussian_noise(img, 0.1, rng)
  np.testing.assert_array_equal(first, a)
  assert not np.array_equal(first, second)  # the generator advanced


def test_gaussian_noise_sigma_zero_is_rescale():
  img = _photo(h=16, w=16)
  out = D.gaussian_noise(img, 0.0, np.random.default_rng(0))
  np.testing.assert_allclose(out, img.astype(np.float32) / 255.0, rtol=0, atol=1e-7)


def test_gaussian_noise_negative_sigma():
  with pytest.raises(ValueError, match="sigma"):
    D.gaussian_noise(_photo(h=8, w=8), -0.1, np.random.default_rng(0))


# --------------------------------------------------------------------------- gaussian_noise_device


def _device_noise(target, index, sigma=0.1, seed=0):
  """gaussian_noise_device jitted, as the steps run it."""
  import jax
  return np.asarray(jax.jit(lambda t, i: D.gaussian_noise_device(t, i, sigma=sigma, seed=seed))(target, index))


def _batch_of_photos(n, h=24, w=32):
  return np.stack([_photo(h=h, w=w, seed=s) for s in range(n)])


@pytest.mark.parametrize("sigma", [0.05, 0.1, 0.5])
def test_gaussian_noise_device_formula(sigma):
  import jax
  imgs = _batch_of_photos(3)
  index = np.array([7, 0, 123456], np.int32)
  out = _device_noise(imgs, index, sigma=sigma, seed=11)
  assert out.shape == imgs.shape and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0
  for img, i, got in zip(imgs, index, out):
    n = np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(11), int(i)), img.shape, np.float32))
    want = np.clip(img.astype(np.float32) / 255.0 + np.float32(sigma) * n, 0.0, 1.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # XLA may round y / 255 differently by 1 ulp
    resid = got - img.astype(np.float32) / 255.0
    assert 0.5 * sigma < resid.std() <= 1.05 * sigma
  # One image with a scalar index: the same values, unjitted.
  np.testing.assert_allclose(np.asarray(D.gaussian_noise_device(imgs[2], 123456, sigma=sigma, seed=11)), out[2],
                             rtol=0, atol=1e-6)
  # sigma 0 is the rescaled clean image.
  np.testing.assert_allclose(_device_noise(imgs, index, sigma=0.0), imgs.astype(np.float32) / 255.0, rtol=0, atol=1e-7)


def test_gaussian_noise_device_depends_only_on_seed_and_index():
  imgs = _batch_of_photos(8)
  index = np.arange(100, 108, dtype=np.int32)
  out = _device_noise(imgs, index)
  # The same example in another position, in a smaller or larger batch: the same bits.
  perm = np.array([5, 2, 7, 0, 1, 6, 3, 4])
  np.testing.assert_array_equal(_device_noise(imgs[perm], index[perm]), out[perm])
  np.testing.assert_array_equal(_device_noise(imgs[3:5], index[3:5]), out[3:5])
  big = np.concatenate([imgs, imgs[::-1]])
  np.testing.assert_array_equal(_device_noise(big, np.concatenate([index, index[::-1]]))[:8], out)
  # Other indices or another seed give other noise; different examples never share one pattern.
  assert not np.array_equal(_device_noise(imgs, index + 1), out)
  assert not np.array_equal(_device_noise(imgs, index, seed=1), out)
  same = np.repeat(imgs[:1], 8, axis=0)
  resid = _device_noise(same, index) - same.astype(np.float32) / 255.0
  assert not np.allclose(resid[0], resid[1], atol=1e-3)


def test_gaussian_noise_device_same_on_eight_sharded_devices():
  import jax
  from rajax import sharding
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (fake CPU) devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
  imgs = _batch_of_photos(16, h=16, w=16)
  index = (np.arange(16, dtype=np.int32) * 977) % 5000
  one = _device_noise(imgs, index)
  for n in (8, 4, 2):
    mesh = sharding.make_mesh(n)
    bat = sharding.batch_sharded(mesh)
    fn = jax.jit(lambda t, i: D.gaussian_noise_device(t, i, sigma=0.1, seed=0), in_shardings=(bat, bat),
                 out_shardings=bat)
    got = fn(jax.device_put(imgs, bat), jax.device_put(index, bat))
    assert len(got.sharding.device_set) == n
    np.testing.assert_array_equal(np.asarray(got), one)


def test_device_noise_stage():
  import jax
  imgs = _batch_of_photos(4)
  batch = {"target": imgs, "index": np.arange(4, dtype=np.int32), "label": np.zeros(4, np.int32)}
  stage = D.DeviceNoise(sigma=0.1, seed=3)
  out = jax.jit(stage)(batch)
  assert set(out) == {"input", "target", "index", "label"}
  np.testing.assert_array_equal(np.asarray(out["input"]), _device_noise(imgs, batch["index"], seed=3))
  np.testing.assert_array_equal(np.asarray(out["target"]), imgs)
  # A batch whose noise was drawn on the host passes unchanged.
  host = {"input": np.zeros((4, 24, 32, 3), np.float32), "target": imgs}
  assert stage(host) is host
  with pytest.raises(ValueError, match="index"):
    stage({"target": imgs})
  assert hash(stage) == hash(D.DeviceNoise(sigma=0.1, seed=3))  # usable as a cache key


def test_gaussian_noise_device_errors():
  imgs = _batch_of_photos(2)
  with pytest.raises(ValueError, match="sigma"):
    D.gaussian_noise_device(imgs, np.arange(2), sigma=-0.1, seed=0)
  with pytest.raises(ValueError, match="uint8 RGB"):
    D.gaussian_noise_device(imgs.astype(np.float32), np.arange(2), sigma=0.1, seed=0)
  with pytest.raises(ValueError, match="one integer index per image"):
    D.gaussian_noise_device(imgs, np.arange(3), sigma=0.1, seed=0)
  with pytest.raises(ValueError, match="one integer index per image"):
    D.gaussian_noise_device(imgs, np.zeros(2, np.float32), sigma=0.1, seed=0)


# --------------------------------------------------------------------------- degrade()


def test_degrade_dispatch():
  img = _photo(h=32, w=48)
  sr = D.degrade("sr", img, rng=np.random.default_rng(0), scale=4)
  np.testing.assert_array_equal(sr, D.bicubic_down(img, 4))
  assert sr.shape == (8, 12, 3) and sr.dtype == np.uint8
  sr2 = D.degrade("sr", img, rng=np.random.default_rng(0), scale=2)
  assert sr2.shape == (16, 24, 3)

  dn = D.degrade("denoise", img, rng=np.random.default_rng(3), sigma=0.2)
  np.testing.assert_array_equal(dn, D.gaussian_noise(img, 0.2, np.random.default_rng(3)))
  assert dn.dtype == np.float32 and dn.shape == img.shape

  jp = D.degrade("jpeg", img, rng=np.random.default_rng(0), quality=20)
  np.testing.assert_array_equal(jp, D.jpeg(img, 20))
  assert jp.dtype == np.uint8 and jp.shape == img.shape


def test_degrade_defaults():
  img = _photo(h=32, w=32)
  np.testing.assert_array_equal(D.degrade("sr", img, rng=np.random.default_rng(0)), D.bicubic_down(img, 4))
  np.testing.assert_array_equal(D.degrade("jpeg", img, rng=np.random.default_rng(0)), D.jpeg(img, 10))
  np.testing.assert_array_equal(D.degrade("denoise", img, rng=np.random.default_rng(1)),
                                D.gaussian_noise(img, 0.1, np.random.default_rng(1)))


def test_degrade_unknown_task():
  with pytest.raises(ValueError) as e:
    D.degrade("deblur", _photo(h=8, w=8), rng=np.random.default_rng(0))
  msg = str(e.value)
  assert "deblur" in msg
  for task in ("sr", "denoise", "jpeg"):
    assert task in msg


@pytest.mark.parametrize("fn", [
    lambda im: D.bicubic_down(im, 2),
    lambda im: D.jpeg(im, 10),
    lambda im: D.gaussian_noise(im, 0.1, np.random.default_rng(0)),
], ids=["bicubic_down", "jpeg", "gaussian_noise"])
@pytest.mark.parametrize("bad", [
    np.zeros((8, 8, 3), np.float32),
    np.zeros((8, 8, 3), np.uint16),
    np.zeros((8, 8), np.uint8),
    np.zeros((8, 8, 4), np.uint8),
    np.zeros((1, 8, 8, 3), np.uint8),
], ids=["float32", "uint16", "gray", "rgba", "batched"])
def test_rejects_non_uint8_rgb(fn, bad):
  with pytest.raises(ValueError, match="uint8 RGB"):
    fn(bad)


def test_rejects_non_array():
  with pytest.raises(ValueError, match="uint8 RGB"):
    D.jpeg(Image.fromarray(np.zeros((8, 8, 3), np.uint8)), 10)


# --------------------------------------------------------------------------- real photos


def _real(name, size=None):
  from skimage import data
  img = np.ascontiguousarray(getattr(data, name)())
  if size:
    img = np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC))
  return img


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "rocket"])
def test_bicubic_down_and_jpeg_byte_equal_on_real_photos(name):
  img = _real(name)
  h, w = img.shape[0] // 4 * 4, img.shape[1] // 4 * 4
  img = np.ascontiguousarray(img[:h, :w])
  want = np.asarray(Image.fromarray(img).resize((w // 4, h // 4), Image.BICUBIC))
  np.testing.assert_array_equal(D.bicubic_down(img, 4), want)
  np.testing.assert_array_equal(D.jpeg(img, 10), _pillow_jpeg(img, 10))


# --------------------------------------------------------------------------- corrupt (ImageNet-C)


# Corruptions that use no randomness: the seed must not matter.
_DETERMINISTIC = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression",
                  "gaussian_blur", "saturate"}


@pytest.fixture(scope="module")
def small_photo():
  return _real("chelsea", (48, 40))  # 40 rows x 48 columns: non-square catches transposes


def test_corruption_names_are_the_benchmark_list():
  import imagecorruptions
  assert D.CORRUPTIONS == tuple(imagecorruptions.get_corruption_names("all"))
  assert len(D.CORRUPTIONS) == 19


@pytest.mark.parametrize("name", D.CORRUPTIONS)
def test_corrupt_every_corruption(small_photo, name):
  import imagecorruptions
  severity = 3
  out = D.corrupt(small_photo, name, severity, seed=11)
  assert out.shape == small_photo.shape and out.dtype == np.uint8
  assert not np.array_equal(out, small_photo)
  # Reproducible under the seed.
  np.testing.assert_array_equal(D.corrupt(small_photo, name, severity, seed=11), out)
  # It is the package's corruption, with NumPy's global generator seeded by `seed`.
  kwargs = {"seed": 11} if name in ("impulse_noise", "glass_blur") else {}
  np.random.seed(11)
  np.testing.assert_array_equal(imagecorruptions.corrupt(small_photo, severity, name, **kwargs), out)
  if name in _DETERMINISTIC:
    np.testing.assert_array_equal(D.corrupt(small_photo, name, severity, seed=12), out)
  else:
    assert not np.array_equal(D.corrupt(small_photo, name, severity, seed=12), out)


@pytest.mark.parametrize("name", ["gaussian_noise", "contrast", "pixelate"])
def test_corrupt_severity_increases_damage(small_photo, name):
  err = [np.abs(D.corrupt(small_photo, name, s, seed=0).astype(float) - small_photo).mean() for s in range(1, 6)]
  assert err == sorted(err) and err[0] < err[-1]


def test_corrupt_leaves_global_numpy_rng_alone(small_photo):
  np.random.seed(123)
  before = np.random.random(3)
  np.random.seed(123)
  D.corrupt(small_photo, "gaussian_noise", 2, seed=5)
  np.testing.assert_array_equal(np.random.random(3), before)


def test_corrupt_thread_safe(small_photo):
  """Threads corrupting concurrently, while another thread stirs np.random, get the serial results."""
  import concurrent.futures
  import threading
  names = ["gaussian_noise", "shot_noise", "speckle_noise", "spatter", "snow", "motion_blur"]
  want = {(n, s): D.corrupt(small_photo, n, 2, seed=s) for n in names for s in range(3)}
  stop = threading.Event()

  def stir():  # other code using (and reseeding) NumPy's global generator at the same time
    while not stop.is_set():
      np.random.seed(0)
      np.random.random(100)

  stirrer = threading.Thread(target=stir)
  stirrer.start()
  try:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
      got = dict(zip(want, pool.map(lambda k: D.corrupt(small_photo, k[0], 2, seed=k[1]), want)))
  finally:
    stop.set()
    stirrer.join()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=str(k))


def test_corrupt_errors(small_photo):
  with pytest.raises(ValueError, match="Unknown corruption 'rain'"):
    D.corrupt(small_photo, "rain", 3, seed=0)
  for bad in (0, 6, 2.0, True):
    with pytest.raises(ValueError, match="severity"):
      D.corrupt(small_photo, "fog", bad, seed=0)
  for bad in (-1, 2**32, 1.5):
    with pytest.raises(ValueError, match="seed"):
      D.corrupt(small_photo, "fog", 3, seed=bad)
  with pytest.raises(ValueError, match="at least 32x32"):
    D.corrupt(small_photo[:20], "fog", 3, seed=0)
  with pytest.raises(ValueError, match="uint8 RGB"):
    D.corrupt(small_photo.astype(np.float32), "fog", 3, seed=0)


def test_degrade_corrupt_draws_seed_from_rng(small_photo):
  a = D.degrade("corrupt", small_photo, rng=np.random.default_rng(4), corruption="shot_noise", severity=2)
  seed = int(np.random.default_rng(4).integers(0, 2**32))
  np.testing.assert_array_equal(a, D.corrupt(small_photo, "shot_noise", 2, seed))


def test_torch_kernel_gives_torchs_no_antialias_bicubic_lr_images():
  """D.bicubic_down_torch equals torch's interpolate + 8-bit quantize (tests/reference/
  make_torch_bicubic.py) on every pixel, at x2, x4 and x8; Pillow's antialiased kernel does not."""
  ref = np.load(pathlib.Path(__file__).parent / "reference" / "torch_bicubic.npz")
  for scale in (2, 4, 8):
    want = ref[f"lr_x{scale}"]
    got = np.stack([D.bicubic_down_torch(img, scale) for img in ref["hr"]])
    diff = np.abs(got.astype(int) - want)
    assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3, (scale, diff.max(), np.mean(diff > 0))
    pil = np.stack([D.bicubic_down(img, scale) for img in ref["hr"]])
    assert np.abs(pil.astype(int) - want).max() > 20   # negative control: antialiasing changes them
  cfg = D.degrade("sr", ref["hr"][0], rng=np.random.default_rng(0), scale=4, kernel="torch")
  np.testing.assert_array_equal(cfg, D.bicubic_down_torch(ref["hr"][0], 4))
  with pytest.raises(ValueError, match="kernel"):
    D.degrade("sr", ref["hr"][0], rng=np.random.default_rng(0), scale=4, kernel="lanczos")
