"""Data: sources, decoding, torchvision-style resizing and cropping, the grain train/eval pipelines, TFDS."""

import io
import itertools

import numpy as np
import pytest
from PIL import Image

import rajax.data as rd
from rajax import degrade as D
from rajax.data import DataError, Degradation, SyntheticImages


class IndexedImages:
  """n deterministic random images of varying sizes whose label is their index (to identify examples)."""

  def __init__(self, n, h=24, w=28):
    self.n, self.h, self.w = n, h, w

  def __len__(self):
    return self.n

  def image(self, i):
    rng = np.random.default_rng([99, i])
    return rng.integers(0, 256, (self.h + 4 * (i % 3), self.w, 3), dtype=np.uint8)

  def __getitem__(self, i):
    if not 0 <= i < self.n:
      raise IndexError(i)
    return {"image": self.image(i), "label": i}


def _coords(h, w):
  """An image whose pixel (y, x) holds (y, x, 7): crops can be located from their pixels."""
  yy, xx = np.mgrid[0:h, 0:w]
  return np.stack([yy, xx, np.full_like(yy, 7)], axis=-1).astype(np.uint8)


def _is_window(crop, img):
  """True if `crop` is a sub-window of `img`, possibly mirrored left-right."""
  ch, cw = crop.shape[:2]
  for flipped in (crop, crop[:, ::-1]):
    for top in range(img.shape[0] - ch + 1):
      for left in range(img.shape[1] - cw + 1):
        if np.array_equal(img[top:top + ch, left:left + cw], flipped):
          return True
  return False


def _take(ds, n):
  return list(itertools.islice(iter(ds), n))


def _equal_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


# --------------------------------------------------------------------------- SyntheticImages


def test_synthetic_deterministic_per_seed_and_index():
  a = SyntheticImages(size=6, image_size=32, num_classes=4, seed=1)
  b = SyntheticImages(size=20, image_size=32, num_classes=4, seed=1)  # size does not matter
  for i in range(6):
    np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
    assert a[i]["label"] == b[i]["label"]
  # Read in another order from a fresh source: image i does not depend on what was read before it.
  backwards = SyntheticImages(size=6, image_size=32, num_classes=4, seed=1)
  for i in reversed(range(6)):
    np.testing.assert_array_equal(backwards[i]["image"], a[i]["image"])
  c = SyntheticImages(size=6, image_size=32, num_classes=4, seed=2)
  assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_synthetic_images_differ_and_labels_in_range():
  src = SyntheticImages(size=40, image_size=24, num_classes=5, seed=0)
  assert len(src) == 40
  images = [src[i]["image"] for i in range(len(src))]
  labels = [src[i]["label"] for i in range(len(src))]
  for img in images:
    assert img.shape == (24, 24, 3) and img.dtype == np.uint8
    assert img.std() > 5  # not flat
  for i in range(len(images)):
    for j in range(i + 1, len(images)):
      assert not np.array_equal(images[i], images[j]), (i, j)
  assert all(isinstance(l, int) and 0 <= l < 5 for l in labels)
  assert len(set(labels)) > 1


@pytest.mark.parametrize("index", [-1, 5, 100])
def test_synthetic_index_error(index):
  with pytest.raises(IndexError):
    SyntheticImages(size=5, image_size=16)[index]


@pytest.mark.parametrize("kwargs", [dict(size=0), dict(size=3, image_size=4), dict(size=3, num_classes=0)])
def test_synthetic_bad_config(kwargs):
  with pytest.raises(DataError):
    SyntheticImages(**kwargs)


# --------------------------------------------------------------------------- decode_image


def _encode(arr, fmt, **kw):
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format=fmt, **kw)
  return buf.getvalue()


def test_decode_png_bytes():
  img = IndexedImages(1).image(0)
  out = rd.decode_image(_encode(img, "PNG"))
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, img)
  np.testing.assert_array_equal(rd.decode_image(np.bytes_(_encode(img, "PNG"))), img)
  np.testing.assert_array_equal(rd.decode_image(bytearray(_encode(img, "PNG"))), img)


def test_decode_jpeg_bytes():
  img = SyntheticImages(size=1, image_size=32)[0]["image"]
  data = _encode(img, "JPEG", quality=80)
  out = rd.decode_image(data)
  assert out.shape == (32, 32, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
  assert np.abs(out.astype(int) - img).mean() < 10


def test_decode_grayscale():
  gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
  want = np.repeat(gray[..., None], 3, axis=-1)
  np.testing.assert_array_equal(rd.decode_image(gray), want)
  np.testing.assert_array_equal(rd.decode_image(gray[..., None]), want)
  np.testing.assert_array_equal(rd.decode_image(_encode(gray, "PNG")), want)


def test_decode_rgba():
  rng = np.random.default_rng(0)
  rgba = rng.integers(0, 256, (8, 9, 4), dtype=np.uint8)
  np.testing.assert_array_equal(rd.decode_image(rgba), rgba[..., :3])
  out = rd.decode_image(_encode(rgba, "PNG"))
  assert out.shape == (8, 9, 3)
  np.testing.assert_array_equal(out, rgba[..., :3])


def test_decode_array_passthrough_and_errors():
  img = IndexedImages(1).image(0)
  np.testing.assert_array_equal(rd.decode_image(img), img)
  with pytest.raises(DataError, match="uint8"):
    rd.decode_image(img.astype(np.float32))
  with pytest.raises(DataError):
    rd.decode_image(np.zeros((4, 4, 2), np.uint8))
  with pytest.raises(DataError):
    rd.decode_image(np.zeros((2, 4, 4, 3), np.uint8))


# --------------------------------------------------------------------------- resize / crops


@pytest.mark.parametrize("hw,size,want", [
    ((37, 50), 20, (20, 27)),   # int(20 * 50 / 37) = 27
    ((50, 37), 20, (27, 20)),
    ((30, 49), 20, (20, 32)),   # int(32.67) = 32: truncated, not rounded
    ((49, 30), 20, (32, 20)),
    ((24, 24), 40, (40, 40)),   # upscaling
    ((16, 64), 8, (8, 32)),
])
def test_resize_short_side_torchvision_semantics(hw, size, want):
  img = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
  out = rd.resize_short_side(img, size)
  assert out.shape == (*want, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, np.asarray(Image.fromarray(img).resize(want[::-1], Image.BILINEAR)))


def test_resize_short_side_noops():
  img = np.random.default_rng(0).integers(0, 256, (20, 33, 3), dtype=np.uint8)
  np.testing.assert_array_equal(rd.resize_short_side(img, 0), img)
  np.testing.assert_array_equal(rd.resize_short_side(img, 20), img)


@pytest.mark.parametrize("hw,crop,top,left", [
    ((11, 10), 4, 4, 3),    # round(3.5) = 4, round(3.0) = 3
    ((9, 12), 4, 2, 4),     # round(2.5) = 2 (Python / torchvision rounding)
    ((8, 8), 8, 0, 0),
    ((20, 13), 6, 7, 4),    # round(7.0) = 7, round(3.5) = 4
])
def test_center_crop_offsets(hw, crop, top, left):
  img = _coords(*hw)
  out = rd.center_crop(img, crop)
  assert out.shape == (crop, crop, 3)
  np.testing.assert_array_equal(out, img[top:top + crop, left:left + crop])
  assert out[0, 0, 0] == top and out[0, 0, 1] == left


def test_crops_too_small():
  img = _coords(10, 20)
  with pytest.raises(DataError, match="smaller"):
    rd.center_crop(img, 12)
  with pytest.raises(DataError, match="smaller"):
    rd.random_crop_flip(img, 12, np.random.default_rng(0))


def test_random_crop_flip_windows():
  img = _coords(10, 12)
  crop = 8
  rng = np.random.default_rng(0)
  offsets, flips = set(), set()
  for _ in range(300):
    out = rd.random_crop_flip(img, crop, rng)
    assert out.shape == (crop, crop, 3) and out.flags["C_CONTIGUOUS"]
    top, left = int(out[0, 0, 0]), int(out[0, :, 1].min())
    np.testing.assert_array_equal(out[:, :, 0], np.arange(top, top + crop)[:, None].repeat(crop, 1))
    cols = out[0, :, 1].astype(int)
    if cols[0] < cols[-1]:
      np.testing.assert_array_equal(out, img[top:top + crop, left:left + crop])
      flips.add(False)
    else:
      np.testing.assert_array_equal(out, img[top:top + crop, left:left + crop][:, ::-1])
      flips.add(True)
    offsets.add((top, left))
  assert flips == {False, True}
  assert offsets == {(t, l) for t in range(3) for l in range(5)}  # every placement, extremes included
  a = rd.random_crop_flip(img, crop, np.random.default_rng(5))
  b = rd.random_crop_flip(img, crop, np.random.default_rng(5))
  np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- train_dataset


def _train(source, task="sr", *, batch=4, seed=0, resize=0, crop=16, scale=4, sigma=0.1, quality=10, **kw):
  deg = Degradation(task, scale=scale, sigma=sigma, quality=quality)
  return rd.train_dataset(source, deg, resize=resize, crop=crop, global_batch=batch, seed=seed, **kw)


def _pil_bicubic_down(img, scale):
  """Pillow's bicubic resize (antialiased: the filter widens with the scale) to 1/scale of the size."""
  return np.asarray(Image.fromarray(img).resize((img.shape[1] // scale, img.shape[0] // scale), Image.BICUBIC))


def _pil_jpeg(img, quality, subsampling="4:2:0"):
  """A Pillow JPEG encode at `quality` with chroma `subsampling`, decoded again."""
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=quality, subsampling=subsampling)
  return np.asarray(Image.open(buf).convert("RGB"))


def _clipped_noise_moments(clean, sigma):
  """E[r^2] and E[r^4] of r = clip(y + sigma * N, 0, 1) - y for each pixel y of `clean`, exactly (float64).

  With a = -y / sigma and b = (1 - y) / sigma, r = sigma * clip(N, a, b), and
  E[clip(N, a, b)^k] = int_a^b n^k phi(n) dn + a^k Phi(a) + b^k (1 - Phi(b)) for k = 2, 4, where
  int_a^b n^2 phi = [Phi - n phi]_a^b and int_a^b n^4 phi = [3 Phi - (n^3 + 3 n) phi]_a^b.
  """
  from scipy.special import ndtr
  y = np.asarray(clean, np.float64)
  a, b = -y / sigma, (1 - y) / sigma
  pdf = lambda n: np.exp(-n * n / 2) / np.sqrt(2 * np.pi)
  inner2 = (ndtr(b) - b * pdf(b)) - (ndtr(a) - a * pdf(a))
  inner4 = (3 * ndtr(b) - (b ** 3 + 3 * b) * pdf(b)) - (3 * ndtr(a) - (a ** 3 + 3 * a) * pdf(a))
  tails = lambda k: a ** k * ndtr(a) + b ** k * (1 - ndtr(b))
  return sigma ** 2 * (inner2 + tails(2)), sigma ** 4 * (inner4 + tails(4))


def _noise_z(noisy, clean, sigma):
  """How many standard errors the mean squared residual noisy - clean lies from its exact expectation for
  Gaussian noise of `sigma` clipped to [0, 1] (pixels independent)."""
  m2, m4 = _clipped_noise_moments(clean, sigma)
  r2 = (np.asarray(noisy, np.float64) - clean) ** 2
  return (r2.mean() - m2.mean()) / np.sqrt((m4 - m2 ** 2).sum() / r2.size ** 2)


@pytest.mark.parametrize("task,params,in_shape,in_dtype", [
    ("sr", dict(scale=2), (4, 8, 8, 3), np.uint8),
    ("denoise", dict(sigma=0.2), (4, 16, 16, 3), np.float32),
    ("jpeg", dict(quality=35), (4, 16, 16, 3), np.uint8),
])
def test_train_batches_per_task(task, params, in_shape, in_dtype):
  """The target is a (possibly mirrored) crop of the resized image, the input its degradation with the
  given, non-default parameter: Pillow's bicubic x2 down, Pillow's JPEG at quality 35 with 4:2:0, or
  Gaussian noise of sigma 0.2 (its strength against the exact expectation; the draw itself is checked in
  test_train_noise_is_sigma_times_one_normal_draw). References with the default parameter, another
  filter or another subsampling are rejected."""
  src = IndexedImages(8)
  batches = _take(_train(src, task, resize=20, **params), 2)
  for batch in batches:
    assert set(batch) == {"input", "target", "label"}
    assert batch["input"].shape == in_shape and batch["input"].dtype == in_dtype
    assert batch["target"].shape == (4, 16, 16, 3) and batch["target"].dtype == np.uint8
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
    for x, y, label in zip(batch["input"], batch["target"], batch["label"]):
      assert _is_window(y, rd.resize_short_side(src.image(int(label)), 20))
      if task == "sr":
        np.testing.assert_array_equal(x, _pil_bicubic_down(y, 2))
        assert not np.array_equal(x, np.asarray(Image.fromarray(y).resize((8, 8), Image.BILINEAR)))
      elif task == "jpeg":
        np.testing.assert_array_equal(x, _pil_jpeg(y, 35))
        for wrong in (_pil_jpeg(y, 10), _pil_jpeg(y, 35, subsampling="4:4:4")):
          assert not np.array_equal(x, wrong)
  if task == "denoise":
    noisy = np.concatenate([b["input"] for b in batches])
    clean = np.concatenate([b["target"] for b in batches]) / 255.0
    assert noisy.min() >= 0 and noisy.max() <= 1
    assert abs(_noise_z(noisy, clean, 0.2)) < 4.5
    assert abs(_noise_z(noisy, clean, 0.1)) > 4.5   # the default sigma would be told apart
  labels = np.concatenate([b["label"] for b in batches])
  assert sorted(labels.tolist()) == list(range(8))


def test_train_noise_is_sigma_times_one_normal_draw():
  """Host noise in training: pipelines that differ only in sigma (0.05 and 0.2) give the same crops and
  residuals in the ratio 0.2 / 0.05 wherever neither is clipped, and each residual's mean square matches
  the exact expectation for its sigma (clipping included) within 4.5 standard errors. The pipeline with
  the default sigma 0.1 is rejected by both expectations, and a residual ratio check with the noise
  drawn again (another draw) fails."""
  src = IndexedImages(8, h=20, w=20)
  runs = {sigma: _take(_train(src, "denoise", batch=4, seed=3, sigma=sigma), 4) for sigma in (0.05, 0.1, 0.2)}
  stack = lambda sigma, key: np.concatenate([b[key] for b in runs[sigma]])
  clean = stack(0.05, "target") / 255.0
  for sigma in (0.1, 0.2):
    np.testing.assert_array_equal(stack(sigma, "target"), stack(0.05, "target"))
    np.testing.assert_array_equal(stack(sigma, "label"), stack(0.05, "label"))
  small, large = stack(0.05, "input") - clean, stack(0.2, "input") - clean
  free = (stack(0.2, "input") > 0) & (stack(0.2, "input") < 1) & (stack(0.05, "input") > 0) & (stack(0.05, "input") < 1)
  assert free.mean() > 0.5
  np.testing.assert_allclose(large[free], 4 * small[free], rtol=0, atol=1e-6)
  for sigma in (0.05, 0.2):
    assert abs(_noise_z(stack(sigma, "input"), clean, sigma)) < 4.5, sigma
    assert abs(_noise_z(stack(0.1, "input"), clean, sigma)) > 4.5, sigma   # sigma ignored: rejected
  # Negative control: another draw of the same strength does not pass the ratio check.
  other = np.clip(clean + 0.2 * np.random.default_rng(0).standard_normal(clean.shape), 0, 1) - clean
  assert not np.allclose(other[free], 4 * small[free], rtol=0, atol=1e-6)


def test_train_synthetic_source():
  src = SyntheticImages(size=6, image_size=24, num_classes=3, seed=0)
  batch = _take(_train(src, "sr", batch=2, crop=16), 1)[0]
  assert batch["input"].shape == (2, 4, 4, 3) and batch["target"].shape == (2, 16, 16, 3)
  assert all(0 <= l < 3 for l in batch["label"])


def test_train_deterministic_for_seed():
  src = IndexedImages(8)
  a = _take(_train(src, "denoise", seed=3), 5)
  b = _take(_train(src, "denoise", seed=3), 5)
  _equal_batches(a, b)
  c = _take(_train(src, "denoise", seed=4), 5)
  assert any(not np.array_equal(x["label"], y["label"]) for x, y in zip(a, c))
  assert not np.array_equal(a[0]["input"], c[0]["input"])


def test_train_epochs_reshuffled():
  n, b = 8, 2
  batches = _take(_train(IndexedImages(n), "sr", batch=b, seed=0), 3 * n // b)
  labels = np.concatenate([x["label"] for x in batches]).tolist()
  epochs = [labels[i * n:(i + 1) * n] for i in range(3)]
  for e in epochs:
    assert sorted(e) == list(range(n))  # every example exactly once per epoch
  assert epochs[0] != list(range(n))  # shuffled
  assert epochs[0] != epochs[1] and epochs[1] != epochs[2]  # reshuffled every epoch


def test_train_random_crops_change_across_epochs():
  n = 4
  batches = _take(_train(IndexedImages(n, h=40, w=40), "sr", batch=4, seed=0, crop=16), 2)
  first = {int(l): t for l, t in zip(batches[0]["label"], batches[0]["target"])}
  second = {int(l): t for l, t in zip(batches[1]["label"], batches[1]["target"])}
  assert any(not np.array_equal(first[i], second[i]) for i in range(n))


def test_train_iterator_checkpoint():
  ds = _train(IndexedImages(8), "denoise", batch=2, seed=1)
  it = iter(ds)
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(6)]  # crosses the epoch boundary
  it2 = iter(_train(IndexedImages(8), "denoise", batch=2, seed=1))
  it2.set_state(state)
  got = [next(it2) for _ in range(6)]
  _equal_batches(want, got)
  # The restored iterator did not restart from the beginning.
  fresh = _take(_train(IndexedImages(8), "denoise", batch=2, seed=1), 1)[0]
  assert not np.array_equal(got[0]["input"], fresh["input"])


def test_train_per_host_slices():
  n, gb = 12, 4
  src = IndexedImages(n)
  seen = []
  for host in range(2):
    batches = _take(_train(src, "sr", batch=gb, seed=0, process_index=host, process_count=2), 3)
    assert all(b["label"].shape == (gb // 2,) for b in batches)
    labels = np.concatenate([b["label"] for b in batches]).tolist()  # one epoch of this host's share
    assert len(set(labels)) == len(labels) == n // 2
    seen.append(set(labels))
  assert seen[0].isdisjoint(seen[1])
  assert seen[0] | seen[1] == set(range(n))


def test_train_errors():
  with pytest.raises(ValueError, match="divisible"):
    _train(IndexedImages(8), batch=3, process_count=2)
  with pytest.raises(DataError):
    _train(IndexedImages(3), batch=4)


# --------------------------------------------------------------------------- eval_dataset


def _eval(source, task="sr", *, batch=4, seed=0, resize=0, crop=16, scale=4, sigma=0.1, quality=10, **kw):
  deg = Degradation(task, scale=scale, sigma=sigma, quality=quality)
  return rd.eval_dataset(source, deg, resize=resize, crop=crop, global_batch=batch, seed=seed, **kw)


def _stack(batches):
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


@pytest.mark.parametrize("n,batch,padding", [(10, 4, 2), (8, 4, 0), (3, 4, 1), (1, 2, 1)])
def test_eval_pads_full_batches(n, batch, padding):
  src = IndexedImages(n)
  batches = list(_eval(src, "sr", batch=batch))
  assert len(batches) == -(-n // batch)
  for b in batches:
    assert set(b) == {"input", "target", "label", "mask"}
    assert b["mask"].shape == (batch,) and b["mask"].dtype == np.float32
    assert b["input"].shape == (batch, 4, 4, 3) and b["target"].shape == (batch, 16, 16, 3)
  allb = _stack(batches)
  assert allb["mask"].tolist() == [1.0] * n + [0.0] * padding
  assert allb["label"][:n].tolist() == list(range(n))
  for i in range(n):
    np.testing.assert_array_equal(allb["target"][i], rd.center_crop(src.image(i), 16))
    np.testing.assert_array_equal(allb["input"][i], _pil_bicubic_down(allb["target"][i], 4))


def test_eval_num_examples():
  batches = list(_eval(IndexedImages(10), "jpeg", batch=4, num_examples=7, quality=60))
  allb = _stack(batches)
  assert len(batches) == 2
  assert allb["mask"].tolist() == [1.0] * 7 + [0.0]
  assert allb["label"][:7].tolist() == list(range(7))
  assert allb["input"].dtype == np.uint8
  for x, y in zip(allb["input"][:7], allb["target"][:7]):  # Pillow's JPEG at the given quality, 4:2:0
    np.testing.assert_array_equal(x, _pil_jpeg(y, 60))
    assert not np.array_equal(x, _pil_jpeg(y, 10))


def test_eval_resize_then_center_crop():
  src = IndexedImages(2, h=30, w=40)
  allb = _stack(list(_eval(src, "sr", batch=2, resize=20, crop=16)))
  for i in range(2):
    np.testing.assert_array_equal(allb["target"][i], rd.center_crop(rd.resize_short_side(src.image(i), 20), 16))


def _host_eval_noisy(target, *, sigma, seed, index):
  """Evaluation example `index`'s noisy input by the pipeline's rule, in float64: clip(y + sigma * n, 0, 1)
  with n = np.random.default_rng([seed, index]).standard_normal(y.shape, dtype=float32)."""
  n = np.random.default_rng([seed, index]).standard_normal(target.shape, dtype=np.float32)
  return np.clip(np.asarray(target, np.float64) / 255.0 + sigma * np.asarray(n, np.float64), 0.0, 1.0)


@pytest.mark.parametrize("sigma", [0.05, 0.2])
def test_eval_host_noise_is_sigma_times_the_examples_normal_draw(sigma):
  """Evaluation example i's input is clip(y + sigma * n_i, 0, 1), n_i drawn from default_rng([seed, i]), to
  float32 rounding; references with the default sigma 0.1, another seed or a neighbour's draw are rejected."""
  allb = _stack(list(_eval(IndexedImages(6), "denoise", batch=4, seed=5, sigma=sigma)))
  assert allb["input"].dtype == np.float32
  close = lambda i, want: np.allclose(allb["input"][i], want, rtol=0, atol=3e-7)
  for i in range(6):
    y = allb["target"][i]
    assert close(i, _host_eval_noisy(y, sigma=sigma, seed=5, index=i)), i
    assert not close(i, _host_eval_noisy(y, sigma=0.1, seed=5, index=i))
    assert not close(i, _host_eval_noisy(y, sigma=sigma, seed=6, index=i))
    assert not close(i, _host_eval_noisy(y, sigma=sigma, seed=5, index=i + 1))


def test_eval_repeatable_noise():
  ds = _eval(IndexedImages(6), "denoise", batch=4, seed=5)
  a, b = list(ds), list(ds)
  _equal_batches(a, b)
  allb = _stack(a)
  assert allb["input"].dtype == np.float32
  for i in range(6):
    assert not np.allclose(allb["input"][i], allb["target"][i] / 255.0, atol=1e-3)  # noisy
  # A fresh dataset object with the same seed draws the same noise.
  _equal_batches(a, list(_eval(IndexedImages(6), "denoise", batch=4, seed=5)))
  # Another seed gives other noise.
  other = _stack(list(_eval(IndexedImages(6), "denoise", batch=4, seed=6)))
  assert not np.array_equal(other["input"][:6], allb["input"][:6])
  # Different examples get different noise draws (not one shared pattern).
  r0 = allb["input"][0] - allb["target"][0] / 255.0
  r1 = allb["input"][1] - allb["target"][1] / 255.0
  assert not np.allclose(r0, r1, atol=1e-3)


@pytest.mark.parametrize("n,gb", [(10, 4), (9, 4), (8, 4), (3, 4)])
def test_eval_two_hosts_cover_everything_once(n, gb):
  src = IndexedImages(n)
  one_host = _stack(list(_eval(src, "denoise", batch=gb, seed=1)))
  by_label = {int(l): x for l, x, m in zip(one_host["label"], one_host["input"], one_host["mask"]) if m > 0}
  seen, lengths = [], []
  for host in range(2):
    batches = list(_eval(src, "denoise", batch=gb, seed=1, process_index=host, process_count=2))
    lengths.append(len(batches))
    allb = _stack(batches)
    assert allb["mask"].shape[0] == len(batches) * gb // 2
    for label, x, m in zip(allb["label"], allb["input"], allb["mask"]):
      if m > 0:
        seen.append(int(label))
        # Same example, same noise, whatever the number of hosts.
        np.testing.assert_array_equal(x, by_label[int(label)])
  assert lengths[0] == lengths[1]  # every host runs the same number of steps
  assert sorted(seen) == list(range(n))


# --------------------------------------------------------------------------- noise drawn on the device


def _device_stage_input(batch, seed, sigma=0.1):
  return np.asarray(D.DeviceNoise(sigma=sigma, seed=seed)(batch)["input"])


def _device_noisy(target, *, sigma, seed, index):
  """The documented device rule, with the clip and the sum in float64: clip(y + sigma * n, 0, 1) where
  n = jax.random.normal(jax.random.fold_in(jax.random.key(seed), index), y.shape)."""
  import jax
  n = jax.random.normal(jax.random.fold_in(jax.random.key(seed), int(index)), target.shape)
  return np.clip(np.asarray(target, np.float64) / 255.0 + sigma * np.asarray(n, np.float64), 0.0, 1.0)


def test_train_device_noise_ships_clean_crops_and_stream_indices():
  n, b = 8, 4
  src = IndexedImages(n)
  host = _take(_train(src, "denoise", batch=b, seed=2, resize=20), 3 * n // b)
  dev_ds = rd.train_dataset(src, Degradation("denoise", sigma=0.1, noise="device"), resize=20, crop=16,
                            global_batch=b, seed=2)
  dev = _take(dev_ds, 3 * n // b)
  for h, d in zip(host, dev):
    assert set(d) == {"target", "label", "index"}
    assert d["target"].dtype == np.uint8 and d["index"].dtype == np.int32 and d["index"].shape == (b,)
    # The same examples, crops and flips as with the noise drawn on the host: only the input moved.
    np.testing.assert_array_equal(d["target"], h["target"])
    np.testing.assert_array_equal(d["label"], h["label"])
  # The index is the position in the endless shuffled stream: unique per (epoch, position), so an
  # example gets fresh noise every epoch.
  assert np.concatenate([d["index"] for d in dev]).tolist() == list(range(3 * n))
  # The step's stage (sigma 0.2 here) adds sigma times example b's normal draw from
  # fold_in(key(seed), index[b]), to float32 rounding; the default sigma, another seed or the
  # neighbouring index are rejected.
  stage = Degradation("denoise", sigma=0.2, noise="device").device_stage(2)
  for d in dev[:2]:
    noisy = np.asarray(stage(d)["input"])
    assert noisy.dtype == np.float32 and noisy.shape == (b, 16, 16, 3)
    for k, (target, index) in enumerate(zip(d["target"], d["index"])):
      close = lambda want: np.allclose(noisy[k], want, rtol=0, atol=3e-7)
      assert close(_device_noisy(target, sigma=0.2, seed=2, index=index))
      assert not close(_device_noisy(target, sigma=0.1, seed=2, index=index))
      assert not close(_device_noisy(target, sigma=0.2, seed=3, index=index))
      assert not close(_device_noisy(target, sigma=0.2, seed=2, index=index + 1))


def test_train_device_noise_indices_global_across_hosts_and_resume():
  n, gb = 12, 4
  src = IndexedImages(n)
  deg = Degradation("denoise", noise="device")
  one = _take(rd.train_dataset(src, deg, resize=0, crop=16, global_batch=gb, seed=0), 3)
  by_index = {int(i): int(l) for d in one for i, l in zip(d["index"], d["label"])}
  for host in range(2):
    for d in _take(rd.train_dataset(src, deg, resize=0, crop=16, global_batch=gb, seed=0, process_index=host,
                                    process_count=2), 3):
      for i, l in zip(d["index"], d["label"]):  # the same example under the same index, whatever the host count
        assert by_index[int(i)] == int(l)
  it = iter(rd.train_dataset(src, deg, resize=0, crop=16, global_batch=gb, seed=0))
  next(it)
  state = it.get_state()
  want = [next(it) for _ in range(4)]
  it2 = iter(rd.train_dataset(src, deg, resize=0, crop=16, global_batch=gb, seed=0))
  it2.set_state(state)
  _equal_batches(want, [next(it2) for _ in range(4)])


def test_eval_device_noise_per_example_index():
  src = IndexedImages(6)
  deg = Degradation("denoise", sigma=0.1, noise="device")
  batches = list(rd.eval_dataset(src, deg, resize=0, crop=16, global_batch=4, seed=5))
  allb = _stack(batches)
  assert set(allb) == {"target", "label", "mask", "index"}
  assert allb["index"].tolist() == [0, 1, 2, 3, 4, 5, 0, 0]  # padding: index 0, mask 0
  assert allb["mask"].tolist() == [1.0] * 6 + [0.0] * 2
  host = _stack(list(_eval(src, "denoise", batch=4, seed=5)))
  np.testing.assert_array_equal(allb["target"], host["target"])
  # The device stage draws example i's noise from (seed, i): the same in any batch and for any host count.
  inputs = np.concatenate([_device_stage_input(b, seed=5) for b in batches])
  for host_index in range(2):
    for b in rd.eval_dataset(src, deg, resize=0, crop=16, global_batch=4, seed=5, process_index=host_index,
                             process_count=2, threads=1):
      got = _device_stage_input(b, seed=5)
      for k in np.flatnonzero(b["mask"]):
        np.testing.assert_array_equal(got[k], inputs[int(b["index"][k])])
  single = rd.eval_dataset(src, deg, resize=0, crop=16, global_batch=1, seed=5, num_examples=3)
  for b in single:
    np.testing.assert_array_equal(_device_stage_input(b, seed=5)[0], inputs[int(b["index"][0])])
  assert not np.array_equal(_device_stage_input(batches[0], seed=6), inputs[:4])


def test_degradation_noise_place():
  assert Degradation("denoise").noise == "host" and not Degradation("denoise").on_device
  assert Degradation("denoise").device_stage(0) is None
  assert Degradation("sr", noise="device").device_stage(0) is None  # nothing to draw for SR
  assert Degradation("denoise", sigma=0.2, noise="device").device_stage(7) == D.DeviceNoise(sigma=0.2, seed=7)
  with pytest.raises(DataError, match="noise"):
    Degradation("denoise", noise="gpu")


def test_eval_empty():
  with pytest.raises(DataError, match="empty"):
    _eval(IndexedImages(5), num_examples=0)


# --------------------------------------------------------------------------- make_source


def test_make_source_synthetic_train_eval_disjoint():
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(
      source="synthetic", train_split="train", name="", data_dir="",
      synthetic=dict(train_size=5, eval_size=3, image_size=16, num_classes=4, seed=0)))
  train = rd.make_source(cfg, "train")
  val = rd.make_source(cfg, "validation")
  assert len(train) == 5 and len(val) == 3
  assert not np.array_equal(train[0]["image"], val[0]["image"])
  cfg.source = "nope"
  with pytest.raises(DataError, match="nope"):
    rd.make_source(cfg, "train")


# --------------------------------------------------------------------------- TFDS


N_TFDS = 6


def _tfds_image(i):
  rng = np.random.default_rng([7, i])
  return rng.integers(0, 256, (20 + 2 * i, 24, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  tfds = pytest.importorskip("tensorflow_datasets")

  class RajaxTinyImages(tfds.core.GeneratorBasedBuilder):
    """Six PNG images of different heights, labelled with their index."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
              "label": tfds.features.ClassLabel(num_classes=N_TFDS),
          }))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(N_TFDS):
        yield i, {"image": Image.fromarray(_tfds_image(i)), "label": i}

  data_dir = tmp_path_factory.mktemp("tfds")
  RajaxTinyImages(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return data_dir


def test_tfds_source_bytes(tfds_dir):
  src = rd.tfds_source("rajax_tiny_images", split="train", data_dir=str(tfds_dir))
  assert len(src) == N_TFDS
  labels = []
  for i in range(N_TFDS):
    ex = src[i]
    assert isinstance(ex["image"], bytes)  # left encoded for the host workers
    assert ex["image"][:8] == b"\x89PNG\r\n\x1a\n"
    label = int(ex["label"])
    labels.append(label)
    np.testing.assert_array_equal(rd.decode_image(ex["image"]), _tfds_image(label))
  assert sorted(labels) == list(range(N_TFDS))


def test_tfds_source_feeds_pipelines(tfds_dir):
  src = rd.tfds_source("rajax_tiny_images", split="train", data_dir=str(tfds_dir))
  batches = _take(_train(src, "sr", batch=3, crop=16), 2)
  for b in batches:
    assert b["input"].shape == (3, 4, 4, 3) and b["input"].dtype == np.uint8
    assert b["target"].shape == (3, 16, 16, 3)
    for y, label in zip(b["target"], b["label"]):
      assert _is_window(y, _tfds_image(int(label)))
  assert sorted(np.concatenate([b["label"] for b in batches]).tolist()) == list(range(N_TFDS))
  ev = _stack(list(_eval(src, "jpeg", batch=4, crop=16)))
  assert ev["mask"].tolist() == [1.0] * N_TFDS + [0.0] * 2
  for y, label in zip(ev["target"][:N_TFDS], ev["label"][:N_TFDS]):
    np.testing.assert_array_equal(y, rd.center_crop(_tfds_image(int(label)), 16))


def test_tfds_missing_dataset(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(DataError) as e:
    rd.tfds_source("rajax_no_such_dataset", split="train", data_dir=str(tmp_path))
  msg = str(e.value)
  assert "rajax_no_such_dataset" in msg and str(tmp_path) in msg


def test_tfds_missing_data_dir(tfds_dir, tmp_path):
  with pytest.raises(DataError) as e:
    rd.tfds_source("rajax_tiny_images", split="train", data_dir=str(tmp_path / "elsewhere"))
  msg = str(e.value)
  assert "rajax_tiny_images" in msg and str(tmp_path / "elsewhere") in msg


# --------------------------------------------------------------------------- bad data


def _enc(img, fmt, **kw):
  im = img if isinstance(img, Image.Image) else Image.fromarray(img)
  buf = io.BytesIO()
  im.save(buf, format=fmt, **kw)
  return buf.getvalue()


def _jpeg_bytes(img, quality=90):
  return _enc(img, "JPEG", quality=quality)


def _photo(h=40, w=48):
  from skimage import data
  return np.asarray(Image.fromarray(data.chelsea()).resize((w, h), Image.BICUBIC))


class ListSource:
  def __init__(self, images):
    self.images = images

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    return {"image": self.images[i], "label": i}


def _bad_images():
  photo = _photo()
  good = _jpeg_bytes(photo)
  return {
      "truncated": good[: len(good) // 2],
      "garbage": b"\xff\xd8\xff\xe0 this is not a JPEG at all" * 3,
      "empty": b"",
      "html": b"<html><body>404 not found</body></html>",
  }


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "html"])
def test_decode_unreadable_raises_data_error(kind):
  with pytest.raises(DataError, match="Cannot decode image"):
    rd.decode_image(_bad_images()[kind])


def test_decode_converts_cmyk_grayscale_png_in_jpeg():
  rd.reset_bad_data_counts()
  photo = _photo()
  cmyk = _jpeg_bytes(Image.fromarray(photo).convert("CMYK"))
  gray = _jpeg_bytes(Image.fromarray(photo).convert("L"))
  png = _enc(photo, "PNG")          # PNG bytes where a JPEG is expected
  pal = _enc(Image.fromarray(photo).convert("P"), "PNG")
  for data in (cmyk, gray, png, pal):
    out = rd.decode_image(data)
    assert out.shape == photo.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(rd.decode_image(png), photo)
  np.testing.assert_array_equal(rd.decode_image(cmyk),
                                np.asarray(Image.open(io.BytesIO(cmyk)).convert("RGB")))
  g = rd.decode_image(gray)
  np.testing.assert_array_equal(g[..., 0], g[..., 1])
  assert np.abs(rd.decode_image(cmyk).astype(int) - photo).mean() < 8  # colours survive the CMYK trip
  counts = rd.bad_data_counts()
  assert counts["converted_cmyk"] == 3 and counts["converted_grayscale"] == 2 and counts["converted_p"] == 1
  assert counts["decoded_png"] == 3


def _mixed_source():
  """Good photos mixed with every kind of bad file; label = position."""
  photo = _photo()
  bad = _bad_images()
  images = [
      _jpeg_bytes(photo),                                              # 0 good
      bad["truncated"],                                                # 1 skipped
      _jpeg_bytes(Image.fromarray(photo).convert("CMYK")),             # 2 converted
      bad["garbage"],                                                  # 3 skipped
      _jpeg_bytes(Image.fromarray(photo).convert("L")),                # 4 converted
      _enc(photo, "PNG"),                                              # 5 PNG in a JPEG dataset
      _jpeg_bytes(photo[:10, :12]),                                    # 6 smaller than the crop
      bad["empty"],                                                    # 7 skipped
  ]
  return ListSource(images)


def test_train_skips_unreadable_and_counts(caplog):
  rd.reset_bad_data_counts()
  src = _mixed_source()
  with caplog.at_level("WARNING", logger="rajax.data"):
    batches = _take(_train(src, "sr", batch=5, crop=16, resize=20), 2)  # 2 epochs' worth of good images
  labels = np.concatenate([b["label"] for b in batches]).tolist()
  assert sorted(labels) == sorted([0, 2, 4, 5, 6] * 2)
  for b in batches:
    assert b["target"].shape == (5, 16, 16, 3)
  counts = rd.bad_data_counts()
  assert counts["skipped_unreadable"] >= 6  # 3 bad files per epoch
  assert counts["converted_cmyk"] >= 2 and counts["converted_grayscale"] >= 2
  assert "upscaled_smaller_than_crop" not in counts  # resize=20 already makes it big enough
  text = caplog.text
  assert "skipped_unreadable: 1 image(s) so far" in text and "converted_cmyk" in text
  assert "Cannot decode image" in text


def test_small_images_upscaled_to_the_crop():
  rd.reset_bad_data_counts()
  src = _mixed_source()
  ev = _stack(list(_eval(src, "sr", batch=4, crop=32, resize=0)))
  assert ev["target"].shape == (8, 32, 32, 3)
  small = rd.decode_image(src.images[6])
  np.testing.assert_array_equal(ev["target"][6], rd.center_crop(rd.resize_short_side(small, 32), 32))
  assert rd.bad_data_counts()["upscaled_smaller_than_crop"] == 1


def test_eval_masks_unreadable_images():
  rd.reset_bad_data_counts()
  src = _mixed_source()
  ev = _stack(list(_eval(src, "jpeg", batch=4, crop=16, resize=20)))
  assert ev["label"].tolist() == list(range(8))  # positions unchanged
  assert ev["mask"].tolist() == [1, 0, 1, 0, 1, 1, 1, 0]
  assert not ev["target"][[1, 3, 7]].any()
  assert rd.bad_data_counts()["skipped_unreadable"] == 3


def test_all_unreadable_stops_with_clear_error():
  src = ListSource([b"not an image"] * 8)
  rd.reset_bad_data_counts()
  with pytest.raises(DataError, match="could not be decoded"):
    _take(_train(src, "sr", batch=2, crop=16), 1)


# --------------------------------------------------------------------------- decode fast path


def test_fast_decode_identical_when_draft_cannot_reduce():
  photo = _photo(120, 160)
  data = _jpeg_bytes(photo)
  exact = rd.decode_image(data)
  np.testing.assert_array_equal(rd.decode_image(data, draft_short_side=0), exact)
  # Short side 120 < 2 * 64: no DCT reduction possible, so draft mode is exact.
  np.testing.assert_array_equal(rd.decode_image(data, draft_short_side=64), exact)
  # Short side 120 >= 2 * 40: draft decodes at half size; close to, but not the same as, a resize.
  fast = rd.decode_image(data, draft_short_side=40)
  assert fast.shape == (60, 80, 3)
  ref = rd.resize_short_side(exact, 60)
  assert not np.array_equal(fast, ref)
  assert np.abs(fast.astype(int) - ref).mean() < 6


def test_pipelines_exact_by_default():
  """The default pipelines decode fully: fast_decode=False gives the exact Resize+CenterCrop."""
  photo = _photo(120, 160)
  src = ListSource([_jpeg_bytes(photo)])
  exact = rd.center_crop(rd.resize_short_side(rd.decode_image(src.images[0]), 64), 56)
  ev = _stack(list(_eval(src, "sr", batch=1, crop=56, resize=64)))
  np.testing.assert_array_equal(ev["target"][0], exact)
  fast = _stack(list(_eval(src, "sr", batch=1, crop=56, resize=64, fast_decode=True)))
  np.testing.assert_array_equal(fast["target"][0], exact)  # 120 < 2 * 64: no reduction, still exact
  # 120 >= 2 * 20: fast_decode reduces in the DCT and differs from the exact pipeline.
  exact = rd.center_crop(rd.resize_short_side(rd.decode_image(src.images[0]), 20), 16)
  np.testing.assert_array_equal(_stack(list(_eval(src, "sr", batch=1, crop=16, resize=20)))["target"][0], exact)
  fast = _stack(list(_eval(src, "sr", batch=1, crop=16, resize=20, fast_decode=True)))
  assert not np.array_equal(fast["target"][0], exact)


# --------------------------------------------------------------------------- corruption stage, workers


def test_degradation_corrupt_stage_per_index():
  src = SyntheticImages(size=5, image_size=40, seed=2)
  deg = Degradation("corrupt", corruption="gaussian_noise", severity=3)
  ev = _stack(list(rd.eval_dataset(src, deg, resize=0, crop=32, global_batch=2, seed=9)))
  for i in range(5):
    seed = int(np.random.default_rng([9, i]).integers(0, 2**32))
    np.testing.assert_array_equal(ev["input"][i], D.corrupt(ev["target"][i], "gaussian_noise", 3, seed))
  with pytest.raises(DataError, match="corruption"):
    Degradation("corrupt", corruption="rain")
  with pytest.raises(DataError, match="deblur"):
    Degradation("deblur")


def test_eval_same_for_any_worker_and_thread_count():
  src = SyntheticImages(size=7, image_size=24, seed=3)
  deg = Degradation("denoise", sigma=0.1)
  kw = dict(resize=0, crop=16, global_batch=2, seed=4)
  base = list(rd.eval_dataset(src, deg, threads=1, **kw))
  _equal_batches(base, list(rd.eval_dataset(src, deg, threads=8, **kw)))
  _equal_batches(base, list(rd.eval_dataset(src, deg, workers=2, threads=2, **kw)))


def test_train_workers_resume_same_order():
  src = SyntheticImages(size=12, image_size=24, seed=3)
  deg = Degradation("denoise", sigma=0.1)
  kw = dict(resize=0, crop=16, global_batch=4, seed=4, workers=1, threads=1)
  it = iter(rd.train_dataset(src, deg, **kw))
  for _ in range(2):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(4)]
  it2 = iter(rd.train_dataset(src, deg, **kw))
  it2.set_state(state)
  _equal_batches(want, [next(it2) for _ in range(4)])


def test_fused_decode_resize_equals_reference():
  """The pipeline's decode+resize (PIL all the way) gives decode_image + resize_short_side exactly."""
  from skimage import data
  from rajax.data import pipeline
  for name, hw in (("astronaut", (375, 500)), ("chelsea", (500, 375)), ("coffee", (333, 257)), ("rocket", (256, 300))):
    img = np.asarray(Image.fromarray(getattr(data, name)()).resize(hw[::-1], Image.BICUBIC))
    for fmt in ("JPEG", "PNG"):
      encoded = _enc(img, fmt)
      for resize in (0, 256, 100):
        want = rd.resize_short_side(rd.decode_image(encoded), resize)
        np.testing.assert_array_equal(pipeline._prepare(encoded, resize, 64, False), want)


# --------------------------------------------------------------------------- benchmark


def test_bench_cli_prints_stages_and_pipeline_rates(capsys):
  from rajax.data import bench
  assert bench.cli(["--config", "configs/imagenet.py", "--source", "photos", "--seconds", "0.3",
                    "--workers", "0", "--tasks", "sr,denoise,jpeg", "--threads", "1", "--images", "8",
                    "--config.data.batch_size=4"]) == 0
  out = capsys.readouterr().out
  for row in ("decode (PIL, full size)", "Resize(256) bilinear", "RandomCrop(224) + flip", "SR: bicubic down x4",
              "denoise, host: NumPy Gaussian noise sigma 0.1", "JPEG q10 round trip",
              "whole example: decode+resize+crop+SR x4", "whole example: decode+resize+crop (denoise, device noise)",
              "whole example: decode+resize+crop+noise (denoise, host noise)",
              "whole example: decode+resize+crop+JPEG q10", "device noise: jitted on cpu"):
    assert row in out, row
  rates = {}
  for line in out[out.index("pipeline (train_dataset)"):].splitlines()[1:]:
    if line.startswith(("sr ", "denoise, ", "jpeg ")):
      label, (workers, rate, per_core, kb) = line[:30].strip(), line[30:].split()
      rates[label] = (float(rate), float(kb))
  assert list(rates) == ["sr", "denoise, device noise", "denoise, host noise", "jpeg"]  # the config's place first
  assert all(rate > 0 for rate, _ in rates.values())
  # Bytes shipped per example: the device-noise pipeline sends the uint8 crop (+ label and index), the host-noise
  # one the float32 noisy image as well (4x the crop).
  crop = 224 * 224 * 3
  assert rates["denoise, device noise"][1] == pytest.approx((crop + 8) / 1024, abs=1)
  assert rates["denoise, host noise"][1] == pytest.approx((5 * crop + 4) / 1024, abs=1)
  assert rates["sr"][1] == pytest.approx((crop + 56 * 56 * 3 + 4) / 1024, abs=1)


def test_bench_photo_jpegs_are_imagenet_sized():
  from rajax.data import bench
  src = bench.PhotoJpegs(size=4)
  shapes = {rd.decode_image(src[i]["image"]).shape for i in range(4)}
  assert shapes == {(375, 500, 3), (500, 375, 3)}
