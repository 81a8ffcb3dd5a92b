"""Detection data: `prepare coco`, and VOC / COCO / photos through the static-shape detection pipelines.

The archives are tiny fakes in the official formats (VOC tars with XML annotations, COCO zips with
instances JSON), made of real photos (rajax.data.photos) and hand-written boxes; every expected box
below is computed by hand from those numbers (canvas 64 x 64).
"""

import io
import itertools
import json
import tarfile
import zipfile

import ml_collections
import numpy as np
import pytest
from PIL import Image

import tensorflow_datasets as tfds

import rajax.data as rd
from rajax import degrade as D
from rajax.data import builders, detection as det, photos, prepare
from rajax.data.detection import DetectionSpec, InMemoryDetection
from rajax.data.photos import photo

CANVAS = (64, 64)
ATOL = 1e-4  # TFDS stores boxes as float32 fractions of the image size


def _small(name, w, h):
  return np.asarray(Image.fromarray(photo(name)).resize((w, h), Image.BICUBIC))


PHOTOS = {"astronaut": _small("astronaut", 80, 60), "chelsea": _small("chelsea", 60, 90),
          "coffee": _small("coffee", 100, 50), "rocket": _small("rocket", 64, 48)}


def _jpeg(img):
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=95)
  return buf.getvalue()


JPEGS = {k: _jpeg(v) for k, v in PHOTOS.items()}


def _decoded(name):
  return rd.decode_image(JPEGS[name])


def _take(ds, n):
  return list(itertools.islice(iter(ds), n))


def _examples(batches):
  """Batches -> {id: {key: value}} of their real examples."""
  out = {}
  for b in batches:
    for j in range(len(b["id"])):
      if b.get("mask", np.ones(len(b["id"])))[j]:
        out[int(b["id"][j])] = {k: v[j] for k, v in b.items()}
  return out


def _boxes(ex):
  return ex["boxes"][ex["valid"]]


# --------------------------------------------------------------------------- fake VOC


def _voc_xml(image_id, w, h, objects):
  objs = "".join(
      f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{int(di)}</difficult>"
      f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
      for name, di, (x0, y0, x1, y1) in objects)
  return (f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename><source><database>The VOC2007 "
          f"Database</database></source><size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
          f"<segmented>0</segmented>{objs}</annotation>").encode()


# id -> (photo, objects (class, difficult, 1-based xmin, ymin, xmax, ymax)); the hand-computed
# expectations are in VOC_EXPECTED.
VOC = {
    "000005": ("astronaut", [("person", 0, (11, 6, 50, 31)), ("chair", 1, (61, 41, 80, 60))]),
    "000007": ("chelsea", [("cat", 0, (1, 1, 60, 90)), ("dog", 0, (5, 10, 20, 30))]),
    "000009": ("coffee", [("diningtable", 0, (1, 21, 100, 50)), ("bottle", 1, (41, 1, 60, 25))]),
    "000012": ("rocket", [("aeroplane", 0, (17, 9, 48, 40))]),
    "2008_000002": ("rocket", [("train", 0, (3, 3, 30, 20))]),
    "2012_000010": ("chelsea", [("dog", 0, (2, 2, 30, 40))]),
}
# id -> (content (h, w), boxes x1y1x2y2 on the 64x64 canvas, the same flipped, contiguous labels, difficult).
# 000005: 80x60 -> scale min(64/60, 64/80) = 0.8 -> 64x48; 0-based corners (10, 5, 50, 31), (60, 40, 80, 60).
# 000007: 60x90 -> scale 64/90 -> 42 (= floor(42.67)) x 64, ratios 0.7 and 64/90.
# 000009: 100x50 -> scale 0.64 -> 64x32.
VOC_EXPECTED = {
    5: ((48, 64), [(8, 4, 40, 24.8), (48, 32, 64, 48)], [(24, 4, 56, 24.8), (0, 32, 16, 48)], [15, 9], [0, 1]),
    7: ((64, 42), [(0, 0, 42, 64), (2.8, 9 * 64 / 90, 14, 30 * 64 / 90)],
        [(0, 0, 42, 64), (28, 9 * 64 / 90, 39.2, 30 * 64 / 90)], [8, 12], [0, 0]),
    9: ((32, 64), [(0, 12.8, 64, 32), (25.6, 0, 38.4, 16)], [(0, 12.8, 64, 32), (25.6, 0, 38.4, 16)], [11, 5], [0, 1]),
    12: ((48, 64), [(16, 8, 48, 40)], [(16, 8, 48, 40)], [1], [0]),   # 64x48: scale 1
}


def _tar(path, files):
  with tarfile.open(path, "w") as tar:
    for name, data in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def _voc_files(year, ids, sets):
  files = {}
  for image_id in ids:
    name, objects = VOC[image_id]
    h, w = PHOTOS[name].shape[:2]
    files[f"VOCdevkit/VOC{year}/JPEGImages/{image_id}.jpg"] = JPEGS[name]
    files[f"VOCdevkit/VOC{year}/Annotations/{image_id}.xml"] = _voc_xml(image_id, w, h, objects)
  for set_name, members in sets.items():
    files[f"VOCdevkit/VOC{year}/ImageSets/Main/{set_name}.txt"] = "".join(f"{i}\n" for i in members).encode()
  return files


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
  manual = tmp_path_factory.mktemp("voc_manual")
  _tar(manual / "VOCtrainval_06-Nov-2007.tar",
       _voc_files("2007", ["000005", "000007", "000009"], {"train": ["000005", "000009"], "val": ["000007"]}))
  _tar(manual / "VOCtest_06-Nov-2007.tar", _voc_files("2007", ["000012"], {"test": ["000012"]}))
  _tar(manual / "VOCtrainval_11-May-2012.tar", _voc_files("2012", ["2008_000002", "2012_000010"],
                                                            {"train": ["2008_000002"], "val": ["2012_000010"]}))
  data_dir = tmp_path_factory.mktemp("voc_tfds")
  assert prepare.cli(["voc", "--manual_dir", str(manual), "--data_dir", str(data_dir)]) == 0
  return str(data_dir)


def _voc_trainval(voc):
  return det.detection_source("voc/2007:train+validation", data_dir=voc)


def _eval(source, spec=None, degradation=None, batch=2, seed=0, threads=2, **kw):
  return det.detection_eval_dataset(source, spec or DetectionSpec(size=CANVAS, max_boxes=4), degradation,
                                    global_batch=batch, seed=seed, threads=threads, **kw)


def _train(source, spec=None, degradation=None, batch=3, seed=0, threads=2, **kw):
  return det.detection_train_dataset(source, spec or DetectionSpec(size=CANVAS, max_boxes=4), degradation,
                                     global_batch=batch, seed=seed, threads=threads, **kw)


def _check_voc(ex, image_id, flipped):
  size, boxes, fboxes, labels, difficult = VOC_EXPECTED[image_id]
  assert tuple(ex["image_size"]) == size
  np.testing.assert_allclose(_boxes(ex), fboxes if flipped else boxes, atol=ATOL, rtol=0)
  assert ex["labels"][ex["valid"]].tolist() == labels
  assert ex["difficult"][ex["valid"]].tolist() == [bool(d) for d in difficult]


def test_voc_eval_boxes_image_and_padding_equal_hand_computed_values(voc):
  ex = _examples(_take(_eval(_voc_trainval(voc)), 2))
  assert sorted(ex) == [5, 7, 9]
  for image_id, name in ((5, "astronaut"), (7, "chelsea"), (9, "coffee")):
    e = ex[image_id]
    _check_voc(e, image_id, flipped=False)
    # Padding: N = 4 slots, the real boxes first; padding slots are zeros.
    n = len(VOC_EXPECTED[image_id][1])
    assert e["valid"].tolist() == [True] * n + [False] * (4 - n)
    assert not e["boxes"][n:].any() and not e["labels"][n:].any() and not e["difficult"][n:].any()
    # The image: Pillow's bilinear resize of the decoded JPEG at the top left, zeros elsewhere.
    h, w = e["image_size"]
    want = np.asarray(Image.fromarray(_decoded(name)).resize((w, h), Image.BILINEAR))
    assert e["target"].shape == (64, 64, 3)
    np.testing.assert_array_equal(e["target"][:h, :w], want)
    assert not e["target"][h:].any() and not e["target"][:, w:].any()
    assert e["mask"] == 1


def test_voc_training_flip_moves_boxes_with_the_pixels(voc):
  src = _voc_trainval(voc)
  plain = _examples(_take(_train(src, DetectionSpec(size=CANVAS, max_boxes=4, flip=0.0)), 1))
  flipped = _examples(_take(_train(src, DetectionSpec(size=CANVAS, max_boxes=4, flip=1.0)), 1))
  assert sorted(plain) == sorted(flipped) == [5, 7, 9]
  for image_id in plain:
    _check_voc(plain[image_id], image_id, flipped=False)
    _check_voc(flipped[image_id], image_id, flipped=True)
    h, w = plain[image_id]["image_size"]
    np.testing.assert_array_equal(flipped[image_id]["target"][:h, :w], plain[image_id]["target"][:h, :w][:, ::-1])
    assert not flipped[image_id]["target"][:, w:].any()  # the padding stays at the right
  # flip = 0.5: every example is one of the two, and its boxes agree with its pixels.
  seen = set()
  for b in _take(_train(src, DetectionSpec(size=CANVAS, max_boxes=4, flip=0.5), seed=3), 6):
    for image_id, e in _examples([b]).items():
      h, w = e["image_size"]
      is_flipped = not np.array_equal(e["target"][:h, :w], plain[image_id]["target"][:h, :w])
      _check_voc(e, image_id, flipped=is_flipped)
      seen.add(is_flipped)
  assert seen == {True, False}


def test_negative_control_a_flip_that_forgets_the_boxes_fails(voc, monkeypatch):
  monkeypatch.setattr(det, "flip_boxes", lambda boxes, width: boxes)
  broken = _examples(_take(_train(_voc_trainval(voc), DetectionSpec(size=CANVAS, max_boxes=4, flip=1.0)), 1))
  with pytest.raises(AssertionError):
    _check_voc(broken[5], 5, flipped=True)


def test_negative_control_resizing_boxes_by_the_canvas_instead_of_the_content_fails():
  # 000007's content is 42 wide, not 64: a box scaled by 64/60 misses the hand value.
  wrong = det.resize_boxes(np.array([[4, 9, 20, 30]], np.float32), (90, 60), (64, 64))
  with pytest.raises(AssertionError):
    np.testing.assert_allclose(wrong, [VOC_EXPECTED[7][1][1]], atol=ATOL)


def test_voc_difficult_kept_flagged_or_dropped_in_training(voc):
  src = _voc_trainval(voc)
  kept = _examples(_take(_train(src, DetectionSpec(size=CANVAS, max_boxes=4, flip=0.0)), 1))
  assert kept[5]["difficult"][kept[5]["valid"]].tolist() == [False, True]
  dropped = _examples(_take(_train(src, DetectionSpec(size=CANVAS, max_boxes=4, flip=0.0, drop_difficult=True)), 1))
  np.testing.assert_allclose(_boxes(dropped[5]), VOC_EXPECTED[5][1][:1], atol=ATOL)
  np.testing.assert_allclose(_boxes(dropped[9]), VOC_EXPECTED[9][1][:1], atol=ATOL)
  assert dropped[7]["valid"].sum() == 2 and not dropped[5]["difficult"].any()
  # Evaluation keeps difficult boxes whatever the training setting (VOC07 mAP ignores them).
  ev = _examples(_take(_eval(src, DetectionSpec(size=CANVAS, max_boxes=4, drop_difficult=True)), 2))
  assert ev[5]["difficult"][ev[5]["valid"]].tolist() == [False, True]


def test_voc_label_spaces_and_one_based_coordinates(voc):
  src = _voc_trainval(voc)
  zero = _examples(_take(_eval(src, DetectionSpec(size=CANVAS, max_boxes=4, label_space="zero_based")), 2))
  assert zero[5]["labels"][:2].tolist() == [14, 8]  # person, chair in VOC's alphabetical order
  space = det.label_space("voc", "contiguous")
  assert space.num_classes == 21 and space.class_names[0] == "__background__" and space.class_names[15] == "person"
  assert det.label_space("voc", "zero_based").num_classes == 20
  with pytest.raises(rd.DataError, match="category_id"):
    det.label_space("voc", "category_id")
  with pytest.raises(rd.DataError, match="category_id"):
    _eval(src, DetectionSpec(size=CANVAS, label_space="category_id"))
  # voc_one_based=False keeps the annotation's numbers: person (11, 6, 50, 31) * 0.8.
  raw = det.detection_source("voc/2007:train", data_dir=voc, voc_one_based=False)
  e = _examples(_take(_eval(raw, DetectionSpec(size=CANVAS, max_boxes=4)), 1))[5]
  np.testing.assert_allclose(_boxes(e)[0], (8.8, 4.8, 40, 24.8), atol=ATOL)


def test_voc0712_trainval_for_training_and_voc07_test_from_a_run_config(voc):
  cfg = ml_collections.ConfigDict(dict(
      seed=0, task="sr", degrade=dict(scale=4),
      data=dict(source="tfds", data_dir=voc, name="", train_split=det.VOC0712_TRAIN, eval_split=det.VOC07_TEST,
                batch_size=5, eval_batch_size=2, num_eval_examples=-1, workers=0, threads=2, noise="host",
                detection=dict(size=CANVAS, max_boxes=4, flip=0.0))))
  train = _take(det.detection_pipeline(cfg, "train"), 1)  # one epoch: 5 images
  assert sorted(_examples(train)) == [5, 7, 9, 2008000002, 2012000010]
  assert train[0]["input"].shape == (5, 16, 16, 3) and train[0]["target"].shape == (5, 64, 64, 3)
  e = _examples(_take(_eval(det.detection_source(det.VOC0712_TRAIN, data_dir=voc)), 3))[2008000002]
  np.testing.assert_allclose(_boxes(e), [(2, 2, 30, 20)], atol=ATOL)  # 64x48: no resize
  test = _take(det.detection_pipeline(cfg, "eval"), 5)
  assert len(test) == 1 and test[0]["mask"].tolist() == [1, 0]
  _check_voc(_examples(test)[12], 12, flipped=False)
  assert set(test[0]) == {"input", "target", "boxes", "labels", "valid", "difficult", "image_size", "id", "mask"}
  assert {k: v.dtype.name for k, v in test[0].items()} == {
      "input": "uint8", "target": "uint8", "boxes": "float32", "labels": "int32", "valid": "bool",
      "difficult": "bool", "image_size": "int32", "id": "int32", "mask": "float32"}
  t = det.box_targets(test[0])
  assert t.boxes.shape == (2, 4, 4) and t.valid.shape == (2, 4)


# --------------------------------------------------------------------------- fake COCO


def _categories(ids=builders.COCO_CATEGORY_IDS, names=builders.COCO_LABELS):
  return [{"supercategory": "thing", "id": i, "name": n} for i, n in zip(ids, names)]


COCO_IMAGES = {  # split -> [(image id, photo, [(category id, iscrowd, (x, y, w, h))])]
    "train2017": [(42, "chelsea", [(17, 0, (0.5, 1.25, 50.0, 80.5)), (1, 1, (10, 20, 30, 40))]),
                  (7, "astronaut", [(18, 0, (12.3, 4.7, 20.1, 30.2))])],
    "val2017": [(139, "coffee", [(47, 0, (40.0, 0.0, 20.0, 25.0)), (67, 0, (0, 20, 100, 30)), (1, 1, (1, 1, 10, 10))]),
                (285, "rocket", [])],
}


def _instances(split, images=None, categories=None, bbox=None):
  doc = {"info": {}, "licenses": [], "images": [], "annotations": [], "categories": categories or _categories()}
  ann_id = 1000
  for image_id, name, anns in images or COCO_IMAGES[split]:
    h, w = PHOTOS[name].shape[:2]
    doc["images"].append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": w, "height": h})
    for category, crowd, box in anns:
      ann_id += 1
      box = bbox or box
      doc["annotations"].append({"id": ann_id, "image_id": image_id, "category_id": category, "iscrowd": crowd,
                                 "bbox": list(box), "area": box[2] * box[3], "segmentation": []})
  return json.dumps(doc).encode()


def _zip(path, files):
  with zipfile.ZipFile(path, "w") as z:
    for name, data in files.items():
      z.writestr(name, data)


def _coco_manual(root, splits=("train2017", "val2017"), annotations=True, **instances_kw):
  root.mkdir(parents=True, exist_ok=True)
  for split in splits:
    _zip(root / f"{split}.zip", {f"{split}/{image_id:012d}.jpg": JPEGS[name] for image_id, name, _ in COCO_IMAGES[split]})
  if annotations:
    _zip(root / "annotations_trainval2017.zip",
         {f"annotations/instances_{s}.json": _instances(s, **instances_kw) for s in ("train2017", "val2017")})
  return root


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
  manual = _coco_manual(tmp_path_factory.mktemp("coco_manual"))
  data_dir = tmp_path_factory.mktemp("coco_tfds")
  assert prepare.cli(["coco", "--manual_dir", str(manual), "--data_dir", str(data_dir)]) == 0
  return str(data_dir)


def test_coco_prepared_with_tfds_features_corners_crowd_and_ids(coco):
  src = tfds.data_source("coco/2017:1.1.0", data_dir=coco, split="validation",
                         decoders={"image": tfds.decode.SkipDecoding()})
  got = {int(src[i]["image/id"]): src[i] for i in range(len(src))}
  assert sorted(got) == [139, 285]  # the image without annotations is kept
  ex = got[139]
  assert ex["image"] == JPEGS["coffee"] and ex["image/filename"] in (b"000000000139.jpg", "000000000139.jpg")
  obj = ex["objects"]
  # (x, y, w, h) -> normalised (ymin, xmin, ymax, xmax) of the corners, image 100 x 50.
  np.testing.assert_allclose(obj["bbox"], [(0, 0.4, 0.5, 0.6), (0.4, 0, 1, 1), (0.02, 0.01, 0.22, 0.11)], atol=1e-6)
  assert np.asarray(obj["label"]).tolist() == [41, 60, 0]  # cup (id 47), dining table (67), person (1)
  assert [builders.COCO_LABELS[k] for k in obj["label"]] == ["cup", "dining table", "person"]
  assert np.asarray(obj["is_crowd"]).tolist() == [False, False, True]
  assert np.asarray(obj["area"]).tolist() == [500, 3000, 100] and np.asarray(obj["id"]).tolist() == [1001, 1002, 1003]
  assert len(got[285]["objects"]["label"]) == 0
  assert sorted(ex) == ["image", "image/filename", "image/id", "objects"]
  assert sorted(obj) == ["area", "bbox", "id", "is_crowd", "label"]


def test_coco_label_spaces_match_torchvision_layout(coco):
  assert len(builders.COCO_CATEGORY_IDS) == 80 and len(builders.COCO_LABELS) == 80
  missing = sorted(set(range(1, 91)) - set(builders.COCO_CATEGORY_IDS))
  assert missing == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]
  full = det.label_space("coco", "category_id")
  assert full.num_classes == 91 and full.class_names[0] == "__background__"
  assert (full.class_names[1], full.class_names[18], full.class_names[47], full.class_names[67], full.class_names[90]) == (
      "person", "dog", "cup", "dining table", "toothbrush")
  assert full.class_names[12] == full.class_names[83] == "N/A"
  assert det.label_space("coco", "contiguous").num_classes == 81
  src = det.detection_source("coco/2017:validation", data_dir=coco)
  for space, want in (("category_id", [47, 67, 1]), ("contiguous", [42, 61, 1]), ("zero_based", [41, 60, 0])):
    e = _examples(_take(_eval(src, DetectionSpec(size=CANVAS, max_boxes=4, label_space=space)), 1))[139]
    assert e["labels"][e["valid"]].tolist() == want


def test_coco_boxes_crowd_and_empty_images_in_eval_and_training(coco):
  val = det.detection_source("validation", data_dir=coco, default_name="coco/2017")
  ev = _examples(_take(_eval(val), 1))
  # 100 x 50 -> scale 0.64 -> 64 x 32.
  e = ev[139]
  assert tuple(e["image_size"]) == (32, 64)
  np.testing.assert_allclose(_boxes(e), [(25.6, 0, 38.4, 16), (0, 12.8, 64, 32), (0.64, 0.64, 7.04, 7.04)], atol=ATOL)
  assert e["difficult"][e["valid"]].tolist() == [False, False, True]  # the crowd box, flagged
  assert not ev[285]["valid"].any() and tuple(ev[285]["image_size"]) == (48, 64)
  # Training drops crowd boxes (torchvision's reference) unless asked, and skips images without boxes.
  train = _examples(_take(_train(val, DetectionSpec(size=CANVAS, max_boxes=4, flip=0.0), batch=1), 3))
  assert sorted(train) == [139]
  np.testing.assert_allclose(_boxes(train[139]), [(25.6, 0, 38.4, 16), (0, 12.8, 64, 32)], atol=ATOL)
  keep = DetectionSpec(size=CANVAS, max_boxes=4, flip=0.0, drop_crowd=False, empty="keep")
  train = _examples(_take(_train(val, keep, batch=2), 1))
  assert sorted(train) == [139, 285] and train[139]["valid"].sum() == 3 and not train[285]["valid"].any()
  with pytest.raises(rd.DataError, match="no boxes left"):
    _take(_train(val, DetectionSpec(size=CANVAS, max_boxes=4, empty="error"), batch=2), 2)
  # train2017: chelsea 60 x 90 -> 42 x 64: cat (0.5, 1.25, 50.5, 81.75) * (0.7, 64/90).
  tr = _examples(_take(_eval(det.detection_source("coco/2017:train", data_dir=coco)), 1))
  np.testing.assert_allclose(_boxes(tr[42])[0], (0.35, 1.25 * 64 / 90, 35.35, 81.75 * 64 / 90), atol=ATOL)
  np.testing.assert_allclose(_boxes(tr[7]), [(12.3 * 0.8, 4.7 * 0.8, 32.4 * 0.8, 34.9 * 0.8)], atol=ATOL)


def test_prepare_coco_missing_zips_and_wrong_contents(tmp_path, capsys):
  def fails(manual, *messages):
    assert prepare.cli(["coco", "--manual_dir", str(manual), "--data_dir", str(tmp_path / "d" / manual.name)]) == 2
    err = capsys.readouterr().err
    for m in messages:
      assert m in err, err

  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "readme.txt").write_text("nothing here")
  fails(tmp_path / "empty", "train2017.zip", "val2017.zip", "annotations_trainval2017.zip")
  fails(_coco_manual(tmp_path / "no_ann", splits=("val2017",), annotations=False), "annotations_trainval2017.zip",
        "not found")
  wrong = _coco_manual(tmp_path / "wrong_ann", splits=("val2017",), annotations=False)
  _zip(wrong / "annotations_trainval2017.zip", {"annotations/captions_val2017.json": b"{}"})
  fails(wrong, "has no annotations/instances_val2017.json")
  fails(_coco_manual(tmp_path / "cats", splits=("val2017",),
                     categories=_categories(builders.COCO_CATEGORY_IDS[:79], builders.COCO_LABELS[:79])),
        "80 detection categories")
  fails(_coco_manual(tmp_path / "outside", splits=("val2017",), bbox=(90, 0, 20, 10)), "lies outside the 100x50 image")
  fails(_coco_manual(tmp_path / "negative", splits=("val2017",), bbox=(10, 0, -5, 10)), "w and h must be >= 0")
  missing = _coco_manual(tmp_path / "missing", splits=("val2017",))
  _zip(missing / "val2017.zip", {"val2017/000000000139.jpg": JPEGS["coffee"]})
  fails(missing, "has no val2017/000000000285.jpg")
  swapped = _coco_manual(tmp_path / "swapped", splits=("val2017",))
  _zip(swapped / "val2017.zip", {"val2017/000000000139.jpg": JPEGS["rocket"], "val2017/000000000285.jpg": JPEGS["rocket"]})
  fails(swapped, "do not belong together")


# --------------------------------------------------------------------------- determinism, resume


def test_training_batches_are_deterministic_and_resume_exactly(voc):
  src = det.detection_source(det.VOC0712_TRAIN, data_dir=voc)
  make = lambda: _train(src, DetectionSpec(size=CANVAS, max_boxes=4), rd.Degradation("jpeg"), batch=2, seed=5)
  a, b = _take(make(), 5), _take(make(), 5)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  it = iter(make())
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(3)]  # crosses an epoch boundary (5 images, batches of 2)
  it2 = iter(make())
  it2.set_state(state)
  got = [next(it2) for _ in range(3)]
  for x, y in zip(want, got):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not all(np.array_equal(x["id"], y["id"]) for x, y in zip(a[:3], got))  # not restarted from the start
  other = _take(_train(src, DetectionSpec(size=CANVAS, max_boxes=4), rd.Degradation("jpeg"), batch=2, seed=6), 4)
  assert any(not np.array_equal(x["target"], y["target"]) for x, y in zip(a, other))


# --------------------------------------------------------------------------- degraded inputs


@pytest.mark.parametrize("degradation", [rd.Degradation("sr", scale=4), rd.Degradation("jpeg", quality=10),
                                         rd.Degradation("denoise", sigma=0.1, noise="host")], ids=["sr", "jpeg", "noise"])
def test_eval_inputs_equal_the_classification_pipelines_for_the_same_image(voc, degradation):
  src = _voc_trainval(voc)
  batches = _take(_eval(src, DetectionSpec(size=CANVAS, max_boxes=4), degradation, seed=11), 2)
  targets = np.concatenate([b["target"] for b in batches])[:3]
  inputs = np.concatenate([b["input"] for b in batches])[:3]
  # The classification pipeline on the same canvases (no resize, a full-size centre crop).
  cls_src = [{"image": t, "label": 0} for t in targets]
  cls = _take(rd.eval_dataset(cls_src, degradation, resize=0, crop=64, global_batch=3, seed=11, threads=2), 1)[0]
  np.testing.assert_array_equal(inputs, cls["input"])
  np.testing.assert_array_equal(targets, cls["target"])
  if degradation.task == "sr":
    assert inputs.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(inputs[0], D.bicubic_down(targets[0], 4))


def test_training_inputs_are_degraded_targets_and_device_noise_gives_indices(voc):
  src = _voc_trainval(voc)
  b = _take(_train(src, DetectionSpec(size=CANVAS, max_boxes=4), rd.Degradation("sr", scale=4)), 1)[0]
  for x, y in zip(b["input"], b["target"]):
    np.testing.assert_array_equal(x, D.bicubic_down(y, 4))
  b = _take(_train(src, DetectionSpec(size=CANVAS, max_boxes=4), rd.Degradation("jpeg", quality=10)), 1)[0]
  np.testing.assert_array_equal(b["input"][0], D.jpeg(b["target"][0], 10))
  b = _take(_train(src, DetectionSpec(size=CANVAS, max_boxes=4), rd.Degradation("denoise", noise="device")), 2)
  assert "input" not in b[0] and sorted(np.concatenate([x["index"] for x in b]).tolist()) == list(range(6))
  with pytest.raises(rd.DataError, match="not divisible by the SR scale 4"):
    _train(src, DetectionSpec(size=(64, 66)), rd.Degradation("sr", scale=4))


# --------------------------------------------------------------------------- photos without boxes


def test_photos_source_has_no_boxes_and_keeps_the_classification_pool():
  src = det.DetectionPhotos("test", names=("chelsea", "coffee"))
  b = _take(_eval(src, DetectionSpec(size=(96, 128), max_boxes=3), rd.Degradation("sr", scale=4)), 1)[0]
  assert not b["valid"].any() and b["input"].shape == (2, 24, 32, 3) and b["id"].tolist() == [0, 1]
  # chelsea 451 x 300 -> scale min(96/300, 128/451) = 128/451 -> 85 x 128.
  assert b["image_size"].tolist() == [[85, 128], [85, 128]]
  want = np.asarray(Image.fromarray(photo("chelsea")).resize((128, 85), Image.BILINEAR))
  np.testing.assert_array_equal(b["target"][0][:85], want)
  # Training keeps photos without boxes (their targets come from a detector), with flips.
  t = _take(_train(det.DetectionPhotos("test", names=("chelsea", "coffee"), repeats=2),
                   DetectionSpec(size=(96, 128), max_boxes=3), batch=4), 1)[0]
  assert sorted(t["id"].tolist()) == [0, 0, 1, 1] and not t["valid"].any()
  assert det.DetectionPhotos("test").photo_names == photos.TEST and len(det.DetectionPhotos("train")) == 23


# --------------------------------------------------------------------------- bad input


def _records(*boxes_list, size=(30, 40)):
  img = np.asarray(Image.fromarray(PHOTOS["astronaut"]).resize((size[1], size[0])))
  return [{"image": img, "boxes": np.asarray(b, np.float32).reshape(-1, 4), "classes": np.zeros(len(b), int), "id": i}
          for i, b in enumerate(boxes_list)]


def test_bad_boxes_are_errors_that_name_the_example():
  spec = DetectionSpec(size=CANVAS, max_boxes=2)
  cases = [([[0, 0, 100, 10]], "lies outside the 40x30 image"),
           ([[20, 5, 10, 15]], "x2 < x1"),
           ([[np.nan, 0, 5, 5]], "not finite")]
  for boxes, message in cases:
    src = InMemoryDetection(_records(boxes), classes=("thing",))
    with pytest.raises(rd.DataError, match=message):
      _take(_eval(src, spec, batch=1), 1)
    with pytest.raises(rd.DataError, match=message):
      _take(_train(src, spec, batch=1), 1)
  bad_class = [{**_records([[0, 0, 5, 5]])[0], "classes": np.array([3])}]
  with pytest.raises(rd.DataError, match="class 3 is not one of"):
    _take(_eval(InMemoryDetection(bad_class, classes=("a", "b")), spec, batch=1), 1)
  # Within BOX_TOLERANCE: clipped. Zero-area boxes: dropped.
  src = InMemoryDetection(_records([[-0.5, 0, 40.5, 30], [5, 5, 5, 9]]), classes=("thing",))
  e = _take(_eval(src, spec, batch=1), 1)[0]
  assert e["valid"].tolist() == [[True, False]]
  np.testing.assert_allclose(e["boxes"][0, 0], (0, 0, 64, 48), atol=ATOL)   # 40x30 -> x1.6


def test_too_many_boxes_empty_images_and_bad_settings(monkeypatch):
  three = InMemoryDetection(_records([[0, 0, 4, 4], [4, 4, 8, 8], [8, 8, 12, 12]]), classes=("thing",))
  with pytest.raises(rd.DataError, match="more than detection.max_boxes=2"):
    _take(_eval(three, DetectionSpec(size=CANVAS, max_boxes=2), batch=1), 1)
  t = _take(_train(three, DetectionSpec(size=CANVAS, max_boxes=2, flip=0.0), batch=1), 1)[0]
  np.testing.assert_allclose(t["boxes"][0], [(0, 0, 6.4, 6.4), (6.4, 6.4, 12.8, 12.8)], atol=ATOL)
  # Images without boxes: skipped in training (the batch fills from the others), an error on request.
  mixed = InMemoryDetection(_records([], [[0, 0, 4, 4]], [], [[4, 4, 8, 8]]), classes=("thing",))
  ids = np.concatenate([b["id"] for b in _take(_train(mixed, DetectionSpec(size=CANVAS, max_boxes=2), batch=2), 3)])
  assert set(ids.tolist()) == {1, 3}
  # A source without any boxes stops training with an error instead of spinning (after 200 images; 20 here).
  monkeypatch.setattr(det, "_MIN_EMPTY_BEFORE_GIVING_UP", 20)
  det._EMPTY.clear()
  none = InMemoryDetection(_records([], [], []), classes=("thing",))
  with pytest.raises(rd.DataError, match="had no boxes left"):
    _take(_train(none, DetectionSpec(size=(16, 16), max_boxes=1), batch=2, threads=1), 1)
  det._EMPTY.clear()
  # Unreadable images are masked out in evaluation.
  broken = InMemoryDetection([{**_records([[0, 0, 4, 4]])[0], "image": b"<html>not an image</html>", "id": 77}],
                             classes=("thing",))
  e = _take(_eval(broken, DetectionSpec(size=CANVAS, max_boxes=2), batch=1), 1)[0]
  assert e["mask"].tolist() == [0] and not e["valid"].any() and e["id"].tolist() == [77]
  for kwargs, message in ((dict(size=(4, 64)), "each >= 8"), (dict(label_space="coco91"), "label_space"),
                          (dict(empty="drop"), "empty"), (dict(flip=2.0), "probability"), (dict(max_boxes=0), "max_boxes")):
    with pytest.raises(rd.DataError, match=message):
      DetectionSpec(**kwargs)
  with pytest.raises(rd.DataError, match="Unknown detection data field"):
    DetectionSpec.from_config({"sise": (64, 64)})
  with pytest.raises(rd.DataError, match="not a split name"):
    det.parse_splits("voc/2007:5.0.0")
  assert det.parse_splits("voc/2007:5.0.0:test,train", "coco/2017") == [("voc/2007:5.0.0", "test"), ("coco/2017", "train")]
  with pytest.raises(rd.DataError, match="prepared voc or coco"):
    det.dataset_of("imagenet2012")


def test_torchvision_scale_rule_by_hand():
  # torchvision's GeneralizedRCNNTransform(800, 1333) on a 375 x 500 VOC image: 800 / 375 -> 800 x 1066.
  s = det.resize_scale(375, 500, size=(1333, 1333), min_size=800, max_size=1333)
  assert s == 800 / 375 and det.resized_size(375, 500, s, (1333, 1333)) == (800, 1066)
  # A long image: the long side binds, 1333 / 1000.
  s = det.resize_scale(300, 1000, size=(1333, 1333), min_size=800, max_size=1333)
  assert s == 1333 / 1000 and det.resized_size(300, 1000, s, (1333, 1333)) == (399, 1333)
  # The canvas binds when smaller: 512 x 512 canvas, the image fits.
  assert det.resized_size(375, 500, det.resize_scale(375, 500, size=(512, 512), min_size=800, max_size=1333),
                          (512, 512)) == (384, 512)
  np.testing.assert_array_equal(det.flip_boxes(np.array([[1, 2, 5, 7]], np.float32), 10), [[5, 2, 9, 7]])


def test_sources_and_transforms_pickle_for_grain_worker_processes(voc):
  # grain's worker processes (data.workers > 0) receive the pipeline pickled: the copies must work alike.
  import pickle
  src = det.detection_source(det.VOC0712_TRAIN, data_dir=voc)
  spec = DetectionSpec(size=CANVAS, max_boxes=4)
  example = det.DetectionEvalExample(src, det._transform(src, spec, rd.Degradation("sr")), 0, np.arange(5))
  copy = pickle.loads(pickle.dumps(example))
  for position in (0, 4):
    a, b = example(position), copy(position)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  photos_copy = pickle.loads(pickle.dumps(det.DetectionPhotos("test", names=("coffee",))))
  np.testing.assert_array_equal(photos_copy[0]["image"], photo("coffee"))
