"""python -m rajax.data.prepare end to end: small fake archives of real photos -> ArrayRecord -> tfds.data_source."""

import io
import os
import pathlib
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

import tensorflow_datasets as tfds

import rajax.data as rd
from rajax.data import builders, prepare
from rajax.data.classes import imagenet_wnids

ROOT = pathlib.Path(__file__).resolve().parents[1]
WNIDS = list(imagenet_wnids())


def _photos():
  from skimage import data
  names = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field"]
  return [np.asarray(Image.fromarray(getattr(data, n)()).resize((40 + 8 * i, 32 + 4 * i), Image.BICUBIC))
          for i, n in enumerate(names)]


PHOTOS = _photos()


def _jpeg(img, mode="RGB"):
  buf = io.BytesIO()
  Image.fromarray(img).convert(mode).save(buf, format="JPEG", quality=90)
  return buf.getvalue()


def _png(img):
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="PNG")
  return buf.getvalue()


GARBAGE = b"<html>this is an error page, not an image</html>"


def _tar(path, files, mode="w"):
  """Writes a tar (uncompressed; mode "w:gz" gzipped) with `files` {member name: bytes}."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with tarfile.open(path, mode) as tar:
    for name, data in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def _tar_bytes(files):
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w") as tar:
    for name, data in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return buf.getvalue()


def _read_all(src):
  return [src[i] for i in range(len(src))]


def _name(x):
  return x.decode() if isinstance(x, bytes) else str(x)


# --------------------------------------------------------------------------- imagenet2012


def _tfds_validation_labels():
  path = pathlib.Path(os.fspath(tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt")))
  return path.read_text().split()


def test_wnids_are_the_sorted_ilsvrc_classes():
  assert len(WNIDS) == 1000 and len(set(WNIDS)) == 1000
  assert WNIDS == sorted(WNIDS)
  assert WNIDS[0] == "n01440764" and WNIDS[-1] == "n15075141"
  assert set(_tfds_validation_labels()) == set(WNIDS)


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
  manual = tmp_path_factory.mktemp("imagenet_manual")
  classes = {WNIDS[0]: [0, 1, 2], WNIDS[7]: [3, 4], WNIDS[999]: [5]}
  outer = {}
  for wnid, idx in classes.items():
    inner = {f"{wnid}_{i}.JPEG": _jpeg(PHOTOS[i]) for i in idx}
    if wnid == WNIDS[0]:
      inner[f"{wnid}_cmyk.JPEG"] = _jpeg(PHOTOS[0], "CMYK")
      inner[f"{wnid}_png.JPEG"] = _png(PHOTOS[1])          # a PNG file named .JPEG, as in the real data
      inner[f"{wnid}_broken.JPEG"] = GARBAGE                # skipped
    outer[f"{wnid}.tar"] = _tar_bytes(inner)
  _tar(manual / "ILSVRC2012_img_train.tar", outer)
  val = {f"ILSVRC2012_val_{k:08d}.JPEG": _jpeg(PHOTOS[k % 6]) for k in (1, 2, 3, 50000)}
  _tar(manual / "ILSVRC2012_img_val.tar", val)
  data_dir = tmp_path_factory.mktemp("imagenet_tfds")
  # The command line entry point, in a fresh interpreter, as a user runs it.
  out = subprocess.run(
      [sys.executable, "-m", "rajax.data.prepare", "imagenet2012", "--manual_dir", str(manual),
       "--data_dir", str(data_dir)], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert out.returncode == 0, out.stdout + out.stderr
  return manual, data_dir, classes, out


def test_imagenet2012_train(imagenet):
  manual, data_dir, classes, out = imagenet
  src = tfds.data_source("imagenet2012:5.1.0", data_dir=str(data_dir), split="train",
                         decoders={"image": tfds.decode.SkipDecoding()})
  examples = _read_all(src)
  assert len(examples) == 6 + 2  # 6 photos + CMYK + PNG; the garbage file was skipped
  by_name = {_name(ex["file_name"]): ex for ex in examples}
  for wnid, idx in classes.items():
    for i in idx:
      ex = by_name[f"{wnid}_{i}.JPEG"]
      assert int(ex["label"]) == WNIDS.index(wnid)
      assert ex["image"] == _jpeg(PHOTOS[i])  # stored byte for byte
  assert f"{WNIDS[0]}_broken.JPEG" not in by_name
  # Converted when read: CMYK and PNG-in-JPEG decode to RGB.
  cmyk = rd.decode_image(by_name[f"{WNIDS[0]}_cmyk.JPEG"]["image"])
  assert cmyk.shape == PHOTOS[0].shape
  np.testing.assert_array_equal(rd.decode_image(by_name[f"{WNIDS[0]}_png.JPEG"]["image"]), PHOTOS[1])
  # The skip is reported with a count.
  assert "skipped_unreadable: 1" in out.stderr and f"{WNIDS[0]}_broken.JPEG" in out.stderr
  assert "train: 8" in out.stdout


def test_imagenet2012_validation_labels(imagenet):
  _, data_dir, _, _ = imagenet
  truth = _tfds_validation_labels()
  src = rd.tfds_source("imagenet2012", split="validation", data_dir=str(data_dir))
  examples = _read_all(src)
  assert len(examples) == 4
  for ex in examples:
    name = _name(ex["file_name"])
    k = int(name[len("ILSVRC2012_val_"):-len(".JPEG")])
    assert int(ex["label"]) == WNIDS.index(truth[k - 1])
    np.testing.assert_array_equal(rd.decode_image(ex["image"]), rd.decode_image(_jpeg(PHOTOS[k % 6])))
  # Same name, version and features as TFDS's imagenet2012: its own builder code reads these files.
  registered = tfds.data_source("imagenet2012", data_dir=str(data_dir), split="validation",
                                decoders={"image": tfds.decode.SkipDecoding()})
  assert _names_labels(registered) == _names_labels(src)


def test_imagenet2012_loc_val_solution_overrides(tmp_path):
  (tmp_path / "LOC_val_solution.csv").write_text(
      "ImageId,PredictionString\nILSVRC2012_val_00000002,n01440764 1 2 3 4 n01440764 5 6 7 8\n")
  assert builders.imagenet_validation_labels(tmp_path) == {"ILSVRC2012_val_00000002.JPEG": "n01440764"}


def test_imagenet2012_feeds_the_pipelines(imagenet):
  _, data_dir, _, _ = imagenet
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(source="tfds", name="imagenet2012", data_dir=str(data_dir),
                                       train_split="train"))
  src = rd.make_source(cfg, "train")
  batch = next(iter(rd.train_dataset(src, rd.Degradation("sr"), resize=32, crop=32, global_batch=4, seed=0)))
  assert batch["input"].shape == (4, 8, 8, 3) and batch["target"].shape == (4, 32, 32, 3)


def test_imagenet2012_missing_archives(tmp_path, capsys):
  (tmp_path / "m").mkdir()
  assert prepare.cli(["imagenet2012", "--manual_dir", str(tmp_path / "m"), "--data_dir", str(tmp_path / "d")]) == 2
  err = capsys.readouterr().err
  assert "ILSVRC2012_img_train.tar" in err and "ILSVRC2012_img_val.tar" in err


def test_imagenet2012_wrong_tar(tmp_path, capsys):
  _tar(tmp_path / "m" / "ILSVRC2012_img_train.tar", {"cat.jpg": _jpeg(PHOTOS[0])})
  assert prepare.cli(["imagenet2012", "--manual_dir", str(tmp_path / "m"), "--data_dir", str(tmp_path / "d")]) == 2
  assert "is not a <wnid>.tar" in capsys.readouterr().err


# --------------------------------------------------------------------------- imagenet_c


@pytest.fixture(scope="module")
def imagenet_c(tmp_path_factory):
  manual = tmp_path_factory.mktemp("imagenet_c_manual")
  a, b = WNIDS[3], WNIDS[500]
  # gaussian_noise severity 1 in the released tar layout; class a has 4 files, class b 3.
  files = {}
  for k in (11, 2, 30, 4):
    files[f"gaussian_noise/1/{a}/ILSVRC2012_val_{k:08d}.JPEG"] = _jpeg(PHOTOS[k % 6])
  for k in (7, 5, 9):
    files[f"gaussian_noise/1/{b}/ILSVRC2012_val_{k:08d}.JPEG"] = _jpeg(PHOTOS[k % 6])
  _tar(manual / "noise.tar", files)
  # fog severity 3 extracted as folders.
  for k in (1, 8):
    path = manual / "fog" / "3" / a / f"ILSVRC2012_val_{k:08d}.JPEG"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_jpeg(PHOTOS[k % 6]))
  data_dir = tmp_path_factory.mktemp("imagenet_c_tfds")
  assert prepare.cli(["imagenet_c", "--manual_dir", str(manual), "--data_dir", str(data_dir)]) == 0
  return manual, data_dir, a, b


def _names_labels(src):
  return sorted((_name(ex["file_name"]), int(ex["label"])) for ex in _read_all(src))


def test_imagenet_c_paper_split(imagenet_c):
  _, data_dir, a, b = imagenet_c
  la, lb = WNIDS.index(a), WNIDS.index(b)
  read = lambda split: _names_labels(tfds.data_source("imagenet_c/gaussian_noise_1:1.0.0", data_dir=str(data_dir),
                                                      split=split, decoders={"image": tfds.decode.SkipDecoding()}))
  v = lambda k: f"ILSVRC2012_val_{k:08d}.JPEG"
  # Per class, files sorted by name: the first half (n // 2) is train, the rest test.
  assert read("train") == sorted([(v(2), la), (v(4), la), (v(5), lb)])
  assert read("test") == sorted([(v(11), la), (v(30), la), (v(7), lb), (v(9), lb)])
  fog = rd.tfds_source("imagenet_c/fog_3", split="test", data_dir=str(data_dir))
  assert _names_labels(fog) == [(v(8), la)]
  ex = fog[0]
  assert ex["image"] == _jpeg(PHOTOS[8 % 6])
  # Only the configs found in manual_dir were written.
  assert sorted(p.name for p in (data_dir / "imagenet_c").iterdir() if not p.name.startswith(".")) == [
      "fog_3", "gaussian_noise_1"]


def test_imagenet_c_config_errors(imagenet_c, tmp_path, capsys):
  manual, _, _, _ = imagenet_c
  assert prepare.cli(["imagenet_c", "--manual_dir", str(manual), "--data_dir", str(tmp_path), "--configs", "rain_3"]) == 2
  assert "Unknown imagenet_c config(s) rain_3" in capsys.readouterr().err
  assert prepare.cli(["imagenet_c", "--manual_dir", str(manual), "--data_dir", str(tmp_path), "--configs", "snow_2"]) == 2
  assert "no files for snow severity 2" in capsys.readouterr().err


# --------------------------------------------------------------------------- voc


def _voc_xml(w, h, objects):
  objs = "".join(
      f"<object><name>{name}</name><pose>{pose}</pose><truncated>{int(tr)}</truncated>"
      f"<difficult>{int(di)}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
      f"<ymax>{y1}</ymax></bndbox></object>"
      for name, pose, tr, di, (x0, y0, x1, y1) in objects)
  return (f"<annotation><folder>VOC</folder><size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
          f"{objs}</annotation>").encode()


VOC_IMAGES = {
    "000005": (0, [("chair", "Rear", 0, 0, (4, 6, 20, 30)), ("person", "Left", 1, 1, (1, 2, 40, 32))]),
    "000007": (1, [("car", "Unspecified", 1, 0, (10, 5, 30, 20))]),
    "000009": (2, [("horse", "Frontal", 0, 0, (0, 0, 56, 40)), ("horse", "Right", 0, 1, (3, 3, 9, 9))]),
    "000012": (3, [("tvmonitor", "Unspecified", 0, 0, (2, 2, 8, 8))]),
}


def _voc_files(year, ids, sets):
  files = {}
  for image_id in ids:
    idx, objects = VOC_IMAGES[image_id]
    h, w = PHOTOS[idx].shape[:2]
    files[f"VOCdevkit/VOC{year}/JPEGImages/{image_id}.jpg"] = _jpeg(PHOTOS[idx])
    files[f"VOCdevkit/VOC{year}/Annotations/{image_id}.xml"] = _voc_xml(w, h, objects)
  for set_name, members in sets.items():
    files[f"VOCdevkit/VOC{year}/ImageSets/Main/{set_name}.txt"] = "".join(f"{i}\n" for i in members).encode()
  return files


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
  manual = tmp_path_factory.mktemp("voc_manual")
  _tar(manual / "VOCtrainval_06-Nov-2007.tar",
       _voc_files("2007", ["000005", "000007", "000009"], {"train": ["000005", "000009"], "val": ["000007"],
                                                         "trainval": ["000005", "000007", "000009"]}))
  _tar(manual / "VOCtest_06-Nov-2007.tar", _voc_files("2007", ["000012"], {"test": ["000012"]}))
  for rel, data in _voc_files("2012", ["000005", "000012"], {"train": ["000012"], "val": ["000005"]}).items():
    (manual / rel).parent.mkdir(parents=True, exist_ok=True)
    (manual / rel).write_bytes(data)  # 2012 as an extracted VOCdevkit folder
  data_dir = tmp_path_factory.mktemp("voc_tfds")
  assert prepare.cli(["voc", "--manual_dir", str(manual), "--data_dir", str(data_dir)]) == 0
  return data_dir


def _check_voc_example(ex, image_id):
  idx, objects = VOC_IMAGES[image_id]
  h, w = PHOTOS[idx].shape[:2]
  assert _name(ex["image/filename"]) == f"{image_id}.jpg"
  np.testing.assert_array_equal(rd.decode_image(ex["image"]), rd.decode_image(_jpeg(PHOTOS[idx])))
  objs = ex["objects"]
  assert [builders.VOC_LABELS[int(l)] for l in objs["label"]] == [o[0] for o in objects]
  assert [builders.VOC_POSES[int(p)] for p in objs["pose"]] == [o[1].lower() for o in objects]
  assert [bool(t) for t in objs["is_truncated"]] == [bool(o[2]) for o in objects]
  assert [bool(d) for d in objs["is_difficult"]] == [bool(o[3]) for o in objects]
  for box, o in zip(objs["bbox"], objects):
    x0, y0, x1, y1 = o[4]
    np.testing.assert_allclose(np.asarray(box), [y0 / h, x0 / w, min(y1 / h, 1), min(x1 / w, 1)], rtol=1e-6)
  assert sorted(builders.VOC_LABELS[int(l)] for l in ex["labels"]) == sorted({o[0] for o in objects})
  assert sorted(builders.VOC_LABELS[int(l)] for l in ex["labels_no_difficult"]) == sorted(
      {o[0] for o in objects if not o[3]})


def test_voc_2007_splits_boxes_flags(voc):
  read = lambda split: tfds.data_source("voc/2007:5.0.0", data_dir=str(voc), split=split,
                                        decoders={"image": tfds.decode.SkipDecoding()})
  for split, ids in (("train", ["000005", "000009"]), ("validation", ["000007"]), ("test", ["000012"])):
    src = read(split)
    got = {_name(ex["image/filename"])[:-4]: ex for ex in _read_all(src)}
    assert sorted(got) == ids
    for image_id, ex in got.items():
      _check_voc_example(ex, image_id)


def test_voc_2012_from_folder(voc):
  for split, ids in (("train", ["000012"]), ("validation", ["000005"])):
    src = rd.tfds_source("voc/2012", split=split, data_dir=str(voc))
    got = _read_all(src)
    assert [_name(ex["image/filename"])[:-4] for ex in got] == ids
    _check_voc_example(got[0], ids[0])


def test_voc_class_lists_match_tfds():
  from tensorflow_datasets.object_detection import voc as tfds_voc
  assert builders.VOC_LABELS == tuple(tfds_voc._VOC_LABELS)
  assert builders.VOC_POSES == tuple(tfds_voc._VOC_POSES)


def test_voc_bad_annotation():
  with pytest.raises(rd.DataError, match="malformed VOC annotation"):
    builders.voc_objects(b"<annotation><size></size>", "Annotations/x.xml")
  with pytest.raises(rd.DataError, match="unknown VOC class 'unicorn'"):
    builders.voc_objects(_voc_xml(10, 10, [("unicorn", "Left", 0, 0, (1, 1, 2, 2))]), "x.xml")


# --------------------------------------------------------------------------- folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  manual = tmp_path_factory.mktemp("folder_manual")
  layout = {"train": {"cats": [0, 1], "dogs": [2, 3]}, "val": {"cats": [4], "dogs": [5]}}
  for split, classes in layout.items():
    for cls, idx in classes.items():
      for i in idx:
        path = manual / split / cls / f"img{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_jpeg(PHOTOS[i]))
  (manual / "train" / "dogs" / "notes.txt").write_text("not an image")
  (manual / "train" / "dogs" / "broken.jpg").write_bytes(GARBAGE)
  (manual / "train" / "cats" / "gray.png").write_bytes(_png(PHOTOS[0][..., 0]))
  data_dir = tmp_path_factory.mktemp("folder_tfds")
  assert prepare.cli(["folder", "--manual_dir", str(manual), "--data_dir", str(data_dir), "--name", "my_pets"]) == 0
  return data_dir


def test_folder_dataset(folder, caplog):
  train = tfds.data_source("my_pets:1.0.0", data_dir=str(folder), split="train",
                           decoders={"image": tfds.decode.SkipDecoding()})
  got = sorted((_name(ex["file_name"]), int(ex["label"])) for ex in _read_all(train))
  assert got == [("cats/gray.png", 0), ("cats/img0.jpg", 0), ("cats/img1.jpg", 0),
                 ("dogs/img2.jpg", 1), ("dogs/img3.jpg", 1)]
  val = rd.tfds_source("my_pets", split="validation", data_dir=str(folder))
  assert sorted((_name(ex["file_name"]), int(ex["label"])) for ex in _read_all(val)) == [
      ("cats/img4.jpg", 0), ("dogs/img5.jpg", 1)]
  gray = [ex for ex in _read_all(train) if _name(ex["file_name"]) == "cats/gray.png"][0]
  out = rd.decode_image(gray["image"])
  np.testing.assert_array_equal(out, np.repeat(PHOTOS[0][..., :1], 3, axis=-1))


def test_folder_flat_layout_and_rerun(tmp_path, capsys):
  manual = tmp_path / "m"
  for cls, i in (("a", 0), ("b", 1)):
    (manual / cls).mkdir(parents=True)
    (manual / cls / f"{i}.jpg").write_bytes(_jpeg(PHOTOS[i]))
  args = ["folder", "--manual_dir", str(manual), "--data_dir", str(tmp_path / "d")]
  assert prepare.cli(args) == 0
  src = rd.tfds_source("folder", split="train", data_dir=str(tmp_path / "d"))
  assert len(src) == 2
  assert prepare.cli(args) == 0
  assert "already prepared" in capsys.readouterr().out
  assert prepare.cli(args[:-2] + ["--data_dir", str(tmp_path / "e"), "--name", "Bad-Name"]) == 2
  assert "lower_snake_case" in capsys.readouterr().err


def test_prepare_unknown_manual_dir(tmp_path, capsys):
  assert prepare.cli(["voc", "--manual_dir", str(tmp_path / "nope"), "--data_dir", str(tmp_path)]) == 2
  assert "is not a directory or is empty" in capsys.readouterr().err


def _tgz(path, files):
  """Writes a gzipped tar with `files` {member name: bytes}."""
  _tar(path, files, mode="w:gz")


def test_cub200_from_the_official_archive(tmp_path):
  """CUB_200_2011.tgz with its four lists: the split and labels come from the lists (ids minus one),
  not from the folder names; a listed image missing from the archive is counted, not fatal."""
  images = {1: ("001.Albatross/a_1.jpg", 1, "1"), 2: ("001.Albatross/a_2.jpg", 1, "0"),
            3: ("200.Wren/w_3.jpg", 200, "1"), 4: ("200.Wren/w_4.jpg", 200, "0"), 5: ("200.Wren/gone.jpg", 200, "1")}
  root = "CUB_200_2011"
  files = {f"{root}/classes.txt": "\n".join(f"{i} {i:03d}.C{i}" for i in range(1, 201)).encode(),
           f"{root}/images.txt": "\n".join(f"{i} {v[0]}" for i, v in images.items()).encode(),
           f"{root}/image_class_labels.txt": "\n".join(f"{i} {v[1]}" for i, v in images.items()).encode(),
           f"{root}/train_test_split.txt": "\n".join(f"{i} {v[2]}" for i, v in images.items()).encode()}
  files.update({f"{root}/images/{v[0]}": _jpeg(PHOTOS[i]) for i, v in images.items() if "gone" not in v[0]})
  _tgz(tmp_path / "m" / "CUB_200_2011.tgz", files)
  assert prepare.cli(["cub200", "--manual_dir", str(tmp_path / "m"), "--data_dir", str(tmp_path / "d")]) == 0
  got = {split: sorted((_name(ex["file_name"]), int(ex["label"]))
                       for ex in _read_all(rd.tfds_source("cub200", split=split, data_dir=str(tmp_path / "d"))))
         for split in ("train", "test")}
  assert got == {"train": [("001.Albatross/a_1.jpg", 0), ("200.Wren/w_3.jpg", 199)],
                 "test": [("001.Albatross/a_2.jpg", 0), ("200.Wren/w_4.jpg", 199)]}
  ex = [e for e in _read_all(rd.tfds_source("cub200", split="test", data_dir=str(tmp_path / "d")))
        if _name(e["file_name"]) == "200.Wren/w_4.jpg"][0]
  np.testing.assert_array_equal(rd.decode_image(ex["image"]), rd.decode_image(_jpeg(PHOTOS[4])))


def _cars_annos(rows):
  """A cars_*_annos.mat: a 1 x N struct array 'annotations' with fields fname and class."""
  from scipy import io as sio
  ann = np.zeros((1, len(rows)), dtype=[("fname", "O"), ("class", "O")])
  for k, (fname, cls) in enumerate(rows):
    ann[0, k] = (fname, np.array([[cls]], np.uint8))
  buf = io.BytesIO()
  sio.savemat(buf, {"annotations": ann})
  return buf.getvalue()


def test_stanford_cars_from_the_devkit_files(tmp_path, capsys):
  """The devkit's train annotations and the labelled test annotations give the labels (class - 1)."""
  manual = tmp_path / "m"
  _tgz(manual / "car_devkit.tgz", {"devkit/cars_train_annos.mat": _cars_annos([("00001.jpg", 1), ("00002.jpg", 196)]),
                                    "devkit/cars_meta.mat": b""})
  _tgz(manual / "cars_train.tgz", {"cars_train/00001.jpg": _jpeg(PHOTOS[0]), "cars_train/00002.jpg": _jpeg(PHOTOS[1])})
  _tgz(manual / "cars_test.tgz", {"cars_test/00001.jpg": _jpeg(PHOTOS[2])})
  (manual / "cars_test_annos_withlabels.mat").write_bytes(_cars_annos([("00001.jpg", 7)]))
  assert prepare.cli(["stanford_cars", "--manual_dir", str(manual), "--data_dir", str(tmp_path / "d")]) == 0
  got = {split: sorted((_name(ex["file_name"]), int(ex["label"])) for ex in
                       _read_all(rd.tfds_source("stanford_cars", split=split, data_dir=str(tmp_path / "d"))))
         for split in ("train", "test")}
  assert got == {"train": [("00001.jpg", 0), ("00002.jpg", 195)], "test": [("00001.jpg", 6)]}
  (manual / "cars_test_annos_withlabels.mat").unlink()
  assert prepare.cli(["stanford_cars", "--manual_dir", str(manual), "--data_dir", str(tmp_path / "e")]) == 2
  assert "cars_test_annos_withlabels.mat" in capsys.readouterr().err
