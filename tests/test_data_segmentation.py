"""Segmentation data: `prepare voc_seg` (with SBD's train_aug), `prepare cityscapes`, and the static-shape pipelines.

The archives are tiny fakes in the official layouts (a VOC 2012 tar with palette PNGs, SBD's
benchmark.tgz with .mat files, Cityscapes' two zips) made of real photos (rajax.data.photos). Their
label maps are computed from the decoded photos themselves (`_derived`), so every crop, flip and
pad can be checked pixel by pixel against the image it travels with.
"""

import io
import itertools
import pickle
import re
import tarfile
import zipfile

import ml_collections
import numpy as np
import pytest
import scipy.io
from PIL import Image

import rajax.data as rd
from rajax import degrade as D
from rajax.data import prepare, segmentation as seg
from rajax.data.photos import photo
from rajax.data.segmentation import InMemorySegmentation, SegmentationSpec


def _small(name, w, h):
  return np.asarray(Image.fromarray(photo(name)).resize((w, h), Image.BICUBIC))


PHOTOS = {"astronaut": _small("astronaut", 40, 30), "chelsea": _small("chelsea", 30, 45),
          "coffee": _small("coffee", 50, 26), "rocket": _small("rocket", 32, 24)}


def _jpeg(img):
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=95)
  return buf.getvalue()


JPEGS = {k: _jpeg(v) for k, v in PHOTOS.items()}
DECODED = {k: rd.decode_image(v) for k, v in JPEGS.items()}


def _derived(img, boundary=True):
  """A label map computed from the pixels: 16 classes by the red and green quarter, 255 where blue > 200."""
  img = np.asarray(img)
  label = (img[..., 0] // 64) * 4 + img[..., 1] // 64
  if boundary:
    label = np.where(img[..., 2] > 200, 255, label)
  return label.astype(np.uint8)


def _palette_png(label):
  im = Image.fromarray(label, mode="P")
  im.putpalette([(i * 37) % 256 for i in range(768)])
  buf = io.BytesIO()
  im.save(buf, format="PNG")
  return buf.getvalue()


def _png(arr, mode=None):
  buf = io.BytesIO()
  Image.fromarray(arr, mode=mode).save(buf, format="PNG")
  return buf.getvalue()


def _take(ds, n):
  return list(itertools.islice(iter(ds), n))


def _examples(batches):
  out = {}
  for b in batches:
    for j in range(len(b["id"])):
      if b.get("mask", np.ones(len(b["id"])))[j]:
        out[int(b["id"][j])] = {k: v[j] for k, v in b.items()}
  return out


def _tar(path, files, mode="w"):
  with tarfile.open(path, mode) as tar:
    for name, data in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def _mat(label):
  buf = io.BytesIO()
  scipy.io.savemat(buf, {"GTcls": {"Segmentation": label, "Boundaries": np.zeros((1, 1)),
                                   "CategoriesPresent": np.unique(label).astype(np.uint8)}})
  return buf.getvalue()


# --------------------------------------------------------------------------- fake VOC 2012 + SBD

VOC_IDS = {"2007_000032": "astronaut", "2007_000039": "chelsea", "2008_000002": "coffee", "2009_000005": "rocket"}
VOC_TRAIN, VOC_VAL = ["2007_000032", "2007_000039"], ["2008_000002"]
# SBD: its own lists (2009_000005 only in SBD; 2007_000039 also in VOC train; 2008_000002 is VOC val, so out).
SBD_TRAIN, SBD_VAL = ["2007_000039", "2009_000005"], ["2008_000002"]


def _voc_label(image_id):
  return _derived(DECODED[VOC_IDS[image_id]])


def _sbd_label(image_id):
  """SBD's maps have no 255 boundaries; 2007_000039's differs from VOC's, to see which one is kept."""
  return np.minimum(_derived(DECODED[VOC_IDS[image_id]], boundary=False) + 1, 20).astype(np.uint8)


def _voc_tar(path, ids=tuple(VOC_IDS), train=VOC_TRAIN, val=VOC_VAL, label=None):
  files = {}
  for image_id in ids:
    files[f"VOCdevkit/VOC2012/JPEGImages/{image_id}.jpg"] = JPEGS[VOC_IDS[image_id]]
    if image_id in train + val:
      files[f"VOCdevkit/VOC2012/SegmentationClass/{image_id}.png"] = _palette_png(
          label(image_id) if label else _voc_label(image_id))
  files["VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt"] = "".join(f"{i}\n" for i in train).encode()
  files["VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"] = "".join(f"{i}\n" for i in val).encode()
  _tar(path, files)


def _sbd_tgz(path):
  files = {f"benchmark_RELEASE/dataset/cls/{i}.mat": _mat(_sbd_label(i)) for i in SBD_TRAIN + SBD_VAL}
  files["benchmark_RELEASE/dataset/train.txt"] = "".join(f"{i}\n" for i in SBD_TRAIN).encode()
  files["benchmark_RELEASE/dataset/val.txt"] = "".join(f"{i}\n" for i in SBD_VAL).encode()
  _tar(path, files, mode="w:gz")


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
  manual = tmp_path_factory.mktemp("voc_seg_manual")
  _voc_tar(manual / "VOCtrainval_11-May-2012.tar")
  _sbd_tgz(manual / "benchmark.tgz")
  data_dir = tmp_path_factory.mktemp("voc_seg_tfds")
  assert prepare.cli(["voc_seg", "--manual_dir", str(manual), "--data_dir", str(data_dir)]) == 0
  return str(data_dir)


def _label(record):
  return seg.decode_label_map(record["label_map"])


def test_prepare_voc_seg_keeps_palette_indices_and_makes_train_aug_as_deeplab(voc):
  for split, ids in (("train", VOC_TRAIN), ("validation", VOC_VAL)):
    src = seg.segmentation_source(f"voc_seg:{split}", data_dir=voc)
    assert len(src) == len(ids) and src.classes == seg.VOC_SEG_CLASSES and len(src.classes) == 21
    by_id = {r["id"]: r for r in (src[k] for k in range(len(src)))}   # TFDS stores a split shuffled by key
    assert sorted(by_id) == sorted(int(i.replace("_", "")) for i in ids)
    for image_id in ids:
      r = by_id[int(image_id.replace("_", ""))]
      assert r["image"] == JPEGS[VOC_IDS[image_id]]        # the JPEG byte for byte
      np.testing.assert_array_equal(_label(r), _voc_label(image_id))   # the palette indices, 255 kept
  # train_aug: VOC train + SBD train + SBD val - VOC val; VOC's maps where VOC train has them, else SBD's.
  aug = seg.segmentation_source("voc_seg:train_aug", data_dir=voc)
  got = {r["id"]: _label(r) for r in (aug[k] for k in range(len(aug)))}
  assert sorted(got) == [2007000032, 2007000039, 2009000005]
  np.testing.assert_array_equal(got[2007000039], _voc_label("2007_000039"))
  np.testing.assert_array_equal(got[2009000005], _sbd_label("2009_000005"))
  assert not np.array_equal(_voc_label("2007_000039"), _sbd_label("2007_000039"))  # the choice is visible
  assert 255 in got[2007000032] and 255 not in got[2009000005]


def test_prepare_voc_seg_without_sbd_and_bad_archives(tmp_path, capsys):
  def run(manual):
    return prepare.cli(["voc_seg", "--manual_dir", str(manual), "--data_dir", str(tmp_path / "d" / manual.name)])

  plain = tmp_path / "plain"
  plain.mkdir()
  _voc_tar(plain / "VOCtrainval_11-May-2012.tar")
  assert run(plain) == 0
  with pytest.raises(rd.DataError, match="train_aug"):
    seg.segmentation_source("voc_seg:train_aug", data_dir=str(tmp_path / "d" / "plain"))
  cases = {
      "beyond": (dict(label=lambda i: np.full_like(_voc_label(i), 21)), "label id 21 is beyond the dataset's 21 classes"),
      "size": (dict(label=lambda i: _voc_label(i)[:-1]), "the label maps do not belong to the images"),
      "missing": (dict(ids=("2007_000032", "2008_000002")), "2007_000039 is listed"),
  }
  for name, (kwargs, message) in cases.items():
    (tmp_path / name).mkdir()
    _voc_tar(tmp_path / name / "VOCtrainval_11-May-2012.tar", **kwargs)
    assert run(tmp_path / name) == 2
    assert message in capsys.readouterr().err
  # SBD extracted (benchmark_RELEASE/dataset/...) gives the same train_aug as the archive.
  folder = tmp_path / "extracted"
  folder.mkdir()
  _voc_tar(folder / "VOCtrainval_11-May-2012.tar")
  _sbd_tgz(tmp_path / "sbd.tgz")
  with tarfile.open(tmp_path / "sbd.tgz") as tar:
    tar.extractall(folder, filter="data")
  assert run(folder) == 0
  aug = seg.segmentation_source("voc_seg:train_aug", data_dir=str(tmp_path / "d" / "extracted"))
  got = {r["id"]: _label(r) for r in (aug[k] for k in range(len(aug)))}
  assert sorted(got) == [2007000032, 2007000039, 2009000005]
  np.testing.assert_array_equal(got[2009000005], _sbd_label("2009_000005"))
  (folder / "benchmark_RELEASE/dataset/cls/2009_000005.mat").write_bytes(b"MATLAB 5.0 but not really")
  assert prepare.cli(["voc_seg", "--manual_dir", str(folder), "--data_dir", str(tmp_path / "d2")]) == 2
  assert "is not an SBD class label file" in capsys.readouterr().err
  (folder / "benchmark_RELEASE/dataset/cls/2009_000005.mat").unlink()
  assert prepare.cli(["voc_seg", "--manual_dir", str(folder), "--data_dir", str(tmp_path / "d3")]) == 2
  assert "dataset/cls/2009_000005.mat is missing" in capsys.readouterr().err
  (tmp_path / "nolists").mkdir()
  _tar(tmp_path / "nolists" / "VOCtrainval_11-May-2012.tar", {"VOCdevkit/VOC2012/JPEGImages/a.jpg": JPEGS["rocket"]})
  assert run(tmp_path / "nolists") == 2 and "ImageSets/Segmentation/train.txt" in capsys.readouterr().err


# --------------------------------------------------------------------------- fake Cityscapes

# The official table by hand (cityscapesscripts/helpers/labels.py): the ids with a train id; all others -> 255.
TRAIN_IDS_BY_HAND = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                     26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITY = {("train", "aachen_000000_000019"): "astronaut", ("train", "bochum_000000_000313"): "coffee",
        ("val", "frankfurt_000000_000294"): "rocket"}


def _city_label_ids(name):
  """Every id 0..33 at least once, in a pattern computed from the photo."""
  h, w = PHOTOS[name].shape[:2]
  return ((_derived(DECODED[name], boundary=False).astype(int) * 7 + np.arange(w)[None]) % 34).astype(np.uint8)


def _city_zips(root, label_ids=_city_label_ids, skip_label=()):
  root.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(root / "leftImg8bit_trainvaltest.zip", "w") as z:
    for (split, stem), name in CITY.items():
      z.writestr(f"leftImg8bit/{split}/{stem.split('_')[0]}/{stem}_leftImg8bit.png", _png(PHOTOS[name]))
    z.writestr("license.txt", b"fake")
  with zipfile.ZipFile(root / "gtFine_trainvaltest.zip", "w") as z:
    for (split, stem), name in CITY.items():
      if stem not in skip_label:
        folder = f"gtFine/{split}/{stem.split('_')[0]}/{stem}"
        z.writestr(f"{folder}_gtFine_labelIds.png", _png(label_ids(name)))
        z.writestr(f"{folder}_gtFine_color.png", _png(PHOTOS[name]))
  return root


def test_cityscapes_train_ids_equal_the_official_table_by_hand():
  ids = np.arange(34, dtype=np.uint8).reshape(2, 17)
  want = np.array([TRAIN_IDS_BY_HAND.get(i, 255) for i in range(34)]).reshape(2, 17)
  np.testing.assert_array_equal(seg.cityscapes_train_ids(ids), want)
  assert seg.CITYSCAPES_CLASSES[0] == "road" and seg.CITYSCAPES_CLASSES[18] == "bicycle"
  assert len(seg.CITYSCAPES_CLASSES) == 19 and seg.CITYSCAPES_CLASSES[11] == "person"
  with pytest.raises(rd.DataError, match=r"label ids \[34\] are not Cityscapes ids"):
    seg.cityscapes_train_ids(np.array([[33, 34]], np.uint8))


def test_prepare_cityscapes_maps_label_id_pngs_to_train_ids(tmp_path, capsys):
  manual = _city_zips(tmp_path / "city")
  data_dir = tmp_path / "city_tfds"
  assert prepare.cli(["cityscapes", "--manual_dir", str(manual), "--data_dir", str(data_dir)]) == 0
  train = seg.segmentation_source("cityscapes:train", data_dir=str(data_dir))
  assert len(train) == 2 and train.classes == seg.CITYSCAPES_CLASSES
  table = np.array([TRAIN_IDS_BY_HAND.get(i, 255) for i in range(256)])
  seen = []
  for k in range(2):
    r = train[k]
    img = rd.decode_image(r["image"])
    name = next(n for n in ("astronaut", "coffee") if np.array_equal(img, PHOTOS[n]))  # the PNG as found
    np.testing.assert_array_equal(_label(r), table[_city_label_ids(name)])
    seen.append(name)
    assert r["id"] == k
  assert sorted(seen) == ["astronaut", "coffee"]
  val = seg.segmentation_source("cityscapes:validation", data_dir=str(data_dir))
  np.testing.assert_array_equal(_label(val[0]), table[_city_label_ids("rocket")])
  # Bad archives: an id that is not Cityscapes', a label of another size, a missing label map.
  for name, kwargs, message in (
      ("beyond", dict(label_ids=lambda n: np.full(PHOTOS[n].shape[:2], 40, np.uint8)), "are not Cityscapes ids"),
      ("size", dict(label_ids=lambda n: _city_label_ids(n)[:, :-2]), "do not belong to the images"),
      ("rgb", dict(label_ids=lambda n: PHOTOS[n]), "not a map of class indices"),
      ("missing", dict(skip_label=("bochum_000000_000313",)), "has no gtFine/train/bochum/bochum_000000_000313")):
    bad = _city_zips(tmp_path / name, **kwargs)
    assert prepare.cli(["cityscapes", "--manual_dir", str(bad), "--data_dir", str(tmp_path / f"{name}_tfds")]) == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- geometry by hand


def test_nearest_resize_keeps_only_the_label_values_present():
  label = _derived(DECODED["chelsea"])   # 30 x 45
  label[::7, ::5] = 255
  values = set(np.unique(label).tolist())
  assert 255 in values and len(values) > 4
  img = DECODED["chelsea"]
  for short in (13, 29, 47, 61):
    out_img, out_label = seg.resize_pair(img, label, short)
    assert min(out_label.shape) == short and out_label.shape == out_img.shape[:2]
    assert set(np.unique(out_label).tolist()) <= values
    # The image: Pillow's bilinear resize (the classification pipelines' resize).
    np.testing.assert_array_equal(out_img, rd.resize_short_side(img, short))
  # Negative control: a bilinear resize of the same map invents values between the classes.
  smooth = np.asarray(Image.fromarray(label, mode="L").resize((20, 30), Image.BILINEAR))
  assert not set(np.unique(smooth).tolist()) <= values


def _spec(**kw):
  return SegmentationSpec(**{"size": (32, 32), **kw})


def _records(names=("astronaut", "chelsea", "coffee", "rocket"), label=None):
  return InMemorySegmentation([{"image": PHOTOS[n], "label_map": label(PHOTOS[n]) if label else _derived(PHOTOS[n]),
                                "id": k} for k, n in enumerate(names)], classes=[f"c{i}" for i in range(16)])


def _train(source, spec, degradation=None, batch=2, seed=0, **kw):
  return seg.segmentation_train_dataset(source, spec, degradation, global_batch=batch, seed=seed, threads=2, **kw)


def _eval(source, spec, degradation=None, batch=2, seed=0, **kw):
  return seg.segmentation_eval_dataset(source, spec, degradation, global_batch=batch, seed=seed, threads=2, **kw)


def _check_aligned(ex):
  """The labels are _derived(target) on the real pixels and 255 on the padding, which is black."""
  h, w = ex["image_size"]
  np.testing.assert_array_equal(ex["label_map"][:h, :w], _derived(ex["target"][:h, :w]))
  assert (ex["label_map"][h:] == 255).all() and (ex["label_map"][:, w:] == 255).all()
  assert not ex["target"][h:].any() and not ex["target"][:, w:].any()


def test_training_crop_flip_and_padding_keep_image_and_labels_aligned():
  src = _records()
  seen_flip = set()
  for flip in (0.0, 1.0, 0.5):
    for b in _take(_train(src, _spec(flip=flip), batch=2, seed=1), 4):
      assert b["target"].shape == (2, 32, 32, 3) and b["label_map"].shape == (2, 32, 32)
      assert b["target"].dtype == np.uint8 and b["label_map"].dtype == np.int32
      for e in _examples([b]).values():
        _check_aligned(e)
        # The crop is a window of the photo, mirrored or not: find it.
        img = PHOTOS[("astronaut", "chelsea", "coffee", "rocket")[int(e["id"])]]
        h, w = e["image_size"]
        found = set()
        for mirrored, ref in ((False, img), (True, img[:, ::-1])):
          for top in range(ref.shape[0] - h + 1):
            for left in range(ref.shape[1] - w + 1):
              if np.array_equal(ref[top:top + h, left:left + w], e["target"][:h, :w]):
                found.add(mirrored)
        assert found, "the crop is not a window of its photo"
        if flip in (0.0, 1.0):
          assert found == {bool(flip)} or len(found) == 2
        seen_flip |= found if len(found) == 1 else set()
  assert seen_flip == {True, False}
  # Images smaller than the crop (chelsea is 30 wide, rocket 32 x 24): padded with 0 / 255.
  ex = _examples(_take(_train(_records(("chelsea", "rocket")), _spec(flip=0.0)), 1))
  assert tuple(ex[0]["image_size"]) == (32, 30) and tuple(ex[1]["image_size"]) == (24, 32)
  assert (ex[1]["label_map"][24:] == 255).all() and (ex[0]["label_map"][:, 30:] == 255).all()


def test_negative_control_a_flip_that_forgets_the_labels_fails(monkeypatch):
  real = seg.resize_pair

  def flip_only_image(img, label, short):
    img, label = real(img, label, short)
    return img[:, ::-1], label    # flips the image once more: the pair no longer matches
  monkeypatch.setattr(seg, "resize_pair", flip_only_image)
  ex = _examples(_take(_train(_records(("astronaut",)), _spec(size=(16, 16), flip=0.0), batch=1), 1))[0]
  with pytest.raises(AssertionError):
    _check_aligned(ex)


def test_training_scale_resizes_image_bilinear_and_labels_nearest_at_the_same_window():
  # astronaut 40 x 30, short side 30 * 2 = 60 exactly (scale_range (2, 2)): the crop is a window of the
  # bilinear-resized photo, and its labels the same window of the NEAREST-resized map.
  img, label = PHOTOS["astronaut"], _derived(PHOTOS["astronaut"])
  big_img = np.asarray(Image.fromarray(img).resize((80, 60), Image.BILINEAR))
  big_label = np.asarray(Image.fromarray(label, mode="L").resize((80, 60), Image.NEAREST))
  for b in _take(_train(_records(("astronaut",)), _spec(scale_range=(2.0, 2.0), flip=0.5), batch=1, seed=4), 4):
    t, lab = b["target"][0], b["label_map"][0]
    hits = [(m, top, left) for m, (ri, rl) in ((False, (big_img, big_label)), (True, (big_img[:, ::-1], big_label[:, ::-1])))
            for top in range(60 - 32 + 1) for left in range(80 - 32 + 1)
            if np.array_equal(ri[top:top + 32, left:left + 32], t)]
    assert hits
    m, top, left = hits[0]
    rl = big_label[:, ::-1] if m else big_label
    np.testing.assert_array_equal(lab, rl[top:top + 32, left:left + 32])
  # Random scales draw integer short sides in [lo * base, hi * base].
  # rocket is 32 x 24: short side 5..15, so the real rows of an 8 x 8 crop are min(short, 8).
  batches = _take(_train(_records(("rocket",)), _spec(size=(8, 8), resize=10, scale_range=(0.5, 1.5)), batch=1,
                         seed=2), 16)
  rows = {int(b["image_size"][0, 0]) for b in batches}
  assert rows <= {5, 6, 7, 8} and len(rows) > 1


def test_eval_pads_the_whole_resized_image_and_scores_every_labelled_pixel(voc):
  src = seg.segmentation_source("voc_seg:train+validation", data_dir=voc)
  ex = _examples(_take(_eval(src, _spec(size=(48, 56))), 2))
  assert sorted(ex) == [2007000032, 2007000039, 2008000002]
  for image_id in ("2007_000032", "2007_000039", "2008_000002"):
    e = ex[int(image_id.replace("_", ""))]
    name = VOC_IDS[image_id]
    h, w = DECODED[name].shape[:2]
    assert tuple(e["image_size"]) == (h, w) and e["mask"] == 1
    np.testing.assert_array_equal(e["target"][:h, :w], DECODED[name])
    np.testing.assert_array_equal(e["label_map"][:h, :w], _voc_label(image_id))
    assert (e["label_map"][h:] == 255).all() and (e["label_map"][:, w:] == 255).all()
  # eval_resize: short side 20 -> astronaut 26 x 20 (int(20 * 40 / 30)), bilinear / nearest.
  e = _examples(_take(_eval(seg.segmentation_source("voc_seg:train", data_dir=voc), _spec(eval_resize=20)), 1))
  e = e[2007000032]
  assert tuple(e["image_size"]) == (20, 26)
  np.testing.assert_array_equal(e["target"][:20, :26], rd.resize_short_side(DECODED["astronaut"], 20))
  np.testing.assert_array_equal(e["label_map"][:20, :26], np.asarray(
      Image.fromarray(_voc_label("2007_000032"), mode="L").resize((26, 20), Image.NEAREST)))
  with pytest.raises(rd.DataError, match="larger than the 32x32 evaluation canvas"):
    _take(_eval(src, _spec()), 2)   # coffee is 50 wide
  # eval_size: a canvas of its own (training keeps its crop size).
  b = _take(_eval(src, _spec(size=(16, 16), eval_size=(48, 56))), 1)[0]
  assert b["target"].shape == (2, 48, 56, 3) and b["label_map"].shape == (2, 48, 56)
  assert _take(_train(src, _spec(size=(16, 16), eval_size=(48, 56))), 1)[0]["label_map"].shape == (2, 16, 16)


# --------------------------------------------------------------------------- determinism, degradations, configs


def test_training_batches_are_deterministic_per_seed_and_resume_exactly():
  src = _records()
  make = lambda seed=5: _train(src, _spec(scale_range=(0.75, 1.5)), rd.Degradation("jpeg"), batch=2, seed=seed)
  a, b = _take(make(), 4), _take(make(), 4)
  for x, y in zip(a, b):
    assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
  it = iter(make())
  next(it)
  state = it.get_state()
  want = [next(it) for _ in range(3)]
  it2 = iter(make())
  it2.set_state(state)
  for x in want:
    y = next(it2)
    assert all(np.array_equal(x[k], y[k]) for k in x)
  other = _take(make(6), 4)
  assert any(not np.array_equal(x["target"], y["target"]) for x, y in zip(a, other))


def test_degraded_inputs_and_a_run_config(voc):
  cfg = ml_collections.ConfigDict(dict(
      seed=0, task="sr", degrade=dict(scale=4),
      data=dict(source="tfds", data_dir=voc, name="voc_seg", train_split="train_aug", eval_split="validation",
                batch_size=3, eval_batch_size=2, num_eval_examples=-1, workers=0, threads=2, noise="host",
                segmentation=dict(size=(24, 24), flip=0.5))))
  train = _take(seg.segmentation_pipeline(cfg, "train"), 1)[0]
  assert sorted(train["id"].tolist()) == [2007000032, 2007000039, 2009000005]
  assert train["input"].shape == (3, 6, 6, 3) and train["label_map"].shape == (3, 24, 24)
  for x, y in zip(train["input"], train["target"]):
    np.testing.assert_array_equal(x, D.bicubic_down(y, 4))
  cfg.data.segmentation.size = (28, 52)
  test = _take(seg.segmentation_pipeline(cfg, "eval"), 3)
  assert len(test) == 1 and test[0]["mask"].tolist() == [1, 0]
  assert {k: v.dtype.name for k, v in test[0].items()} == {
      "input": "uint8", "target": "uint8", "label_map": "int32", "image_size": "int32", "id": "int32", "mask": "float32"}
  assert (test[0]["label_map"][1] == 255).all()    # batch padding: nothing to score
  np.testing.assert_array_equal(test[0]["input"][0], D.bicubic_down(test[0]["target"][0], 4))
  # Device noise: indices instead of inputs; SR needs a size divisible by the scale.
  b = _take(_train(_records(), _spec(), rd.Degradation("denoise", noise="device"), batch=2), 2)
  assert "input" not in b[0] and sorted(np.concatenate([x["index"] for x in b]).tolist()) == [0, 1, 2, 3]
  with pytest.raises(rd.DataError, match="not divisible by the SR scale 4"):
    _train(_records(), _spec(size=(30, 32)), rd.Degradation("sr", scale=4))


def test_photos_without_labels_are_ignored_everywhere_and_sharding_splits_the_batches():
  src = seg.SegmentationPhotos("test", names=("chelsea", "coffee"), repeats=2)
  b = _take(_train(src, _spec(size=(40, 40), resize=48), batch=4), 1)[0]
  assert (b["label_map"] == 255).all() and sorted(b["id"].tolist()) == [0, 0, 1, 1]
  # Two hosts read disjoint halves of each global batch; together they make the one-host batch.
  whole = _take(_train(_records(), _spec(), batch=4, seed=3), 2)
  parts = [_take(_train(_records(), _spec(), batch=4, seed=3, process_index=p, process_count=2), 2) for p in (0, 1)]
  for k in range(2):
    for key in whole[k]:
      np.testing.assert_array_equal(whole[k][key], np.concatenate([parts[0][k][key], parts[1][k][key]]))
  ev = [_take(_eval(_records(), _spec(size=(48, 56)), batch=2, process_index=p, process_count=2), 2) for p in (0, 1)]
  assert sorted(int(i) for p in ev for b in p for i, m in zip(b["id"], b["mask"]) if m) == [0, 1, 2, 3]


# --------------------------------------------------------------------------- bad input


def test_bad_label_maps_are_errors_that_name_the_problem():
  cases = [
      (lambda img: _derived(img)[:-1], "the label map is 40x29 (WxH) but the image is 40x30"),
      (lambda img: np.full(img.shape[:2], 16, np.uint8), "label id 16 is beyond the dataset's 16 classes"),
      (lambda img: _png(img), "is a RGB image, not a map of class indices"),
      (lambda img: img[..., 0].astype(np.float32), "must be an integer array"),
  ]
  for label, message in cases:
    src = _records(("astronaut",), label=label)
    with pytest.raises(rd.DataError, match=re.escape(message)):
      _take(_eval(src, _spec(size=(32, 48)), batch=1), 1)
    with pytest.raises(rd.DataError, match=re.escape(message)):
      _take(_train(src, _spec(), batch=1), 1)
  # 255 is the ignore label, allowed with any class count; unreadable images are masked in evaluation.
  ok = _records(("astronaut",), label=lambda img: np.full(img.shape[:2], 255, np.uint8))
  assert (_take(_eval(ok, _spec(size=(32, 48)), batch=1), 1)[0]["label_map"] == 255).all()
  broken = InMemorySegmentation([{"image": b"<html>not an image</html>", "label_map": np.zeros((2, 2), np.uint8),
                                  "id": 9}], classes=("a",))
  e = _take(_eval(broken, _spec(), batch=1), 1)[0]
  assert e["mask"].tolist() == [0] and e["id"].tolist() == [9] and (e["label_map"] == 255).all()
  for kwargs, message in ((dict(size=(4, 64)), "each >= 8"), (dict(scale_range=(2.0, 1.0)), "0 < lo <= hi"),
                          (dict(flip=1.5), "probability"), (dict(resize=-1), "resize"),
                          (dict(eval_size=(64,)), "eval_size")):
    with pytest.raises(rd.DataError, match=message):
      SegmentationSpec(**kwargs)
  with pytest.raises(rd.DataError, match="Unknown segmentation data field"):
    SegmentationSpec.from_config({"crop": 32})
  with pytest.raises(rd.DataError, match="Unknown segmentation dataset"):
    seg.segmentation_source("voc/2012:train", data_dir="/nonexistent")


def test_sources_and_examples_pickle_for_grain_worker_processes(voc):
  src = seg.segmentation_source("voc_seg:train+validation", data_dir=voc)
  example = seg.SegmentationEvalExample(src, seg._transform(src, _spec(size=(48, 56)), None), None, 0, np.arange(3))
  copy = pickle.loads(pickle.dumps(example))
  for position in (0, 2):
    a, b = example(position), copy(position)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("degradation", [rd.Degradation("jpeg", quality=10), rd.Degradation("denoise", noise="host")],
                         ids=["jpeg", "noise"])
def test_eval_inputs_equal_the_classification_pipelines_for_the_same_canvas(degradation):
  batches = _take(_eval(_records(), _spec(size=(56, 56)), degradation, seed=11), 2)
  targets = np.concatenate([b["target"] for b in batches])
  inputs = np.concatenate([b["input"] for b in batches])
  # The classification pipeline on the same canvases (no resize, a full-size centre crop), same seed.
  cls_src = [{"image": t, "label": 0} for t in targets]
  cls = _take(rd.eval_dataset(cls_src, degradation, resize=0, crop=56, global_batch=4, seed=11, threads=2), 1)[0]
  np.testing.assert_array_equal(inputs, cls["input"])
  if degradation.task == "denoise":   # the noise depends on the seed (JPEG has no randomness)
    other = _take(_eval(_records(), _spec(size=(56, 56)), degradation, seed=12), 2)
    assert not np.array_equal(inputs, np.concatenate([b["input"] for b in other]))
