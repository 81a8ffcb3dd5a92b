"""The evaluation suite with detectors: the detection table's every cell recomputed outside the suite.

The detector is tests/toy_detector.py (random weights; its top-8 cells are its detections), the
processors are tiny denoising runs saved with random weights: one trained (by its config) with a
classifier as R, one with the toy detector, one plain. Each cell is recomputed from the run's
`forward`, the detector and rajax.tasks.detection (pseudo_targets, Evaluator) on the images the
detection pipeline makes, and counted by hand where it is a count.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import numpy_metrics
import rajax
import seeded_lpips
import toy_detector
from rajax import config as config_lib
from rajax import evaluate, networks, runs
from rajax import weights as weights_lib
from rajax.data import detection as det_data
from rajax.data.pipeline import Degradation
from rajax.detection import BoxTargets, Detections, zoo
from rajax.evaluate import detection as detection_eval
from rajax.models import lpips
from rajax.tasks import detection as det_task

SIZE = (32, 32)
PHOTOS = ("chelsea", "coffee", "rocket")
THRESHOLD = 0.5
E = ml_collections.ConfigDict


@pytest.fixture(autouse=True)
def _toy_in_the_zoo(monkeypatch):
  monkeypatch.setattr(zoo, "_FAMILIES", (*zoo._FAMILIES, "toy_detector"))


def _save_run(workdir: pathlib.Path, mode: str, recognizer: str, seed: int) -> pathlib.Path:
  """A finished denoising run (config.json + processor.msgpack): random P weights, R named in its config."""
  c = config_lib.base(task="denoise", method=mode, recognizer=recognizer)
  c.processor.update(dict(blocks=1, channels=8, input_skip=True))
  c.recognizer.weights = "random"
  c.recognizer.num_classes = 3 if recognizer == "toy_detector" else 10
  if recognizer == "resnet18":
    c.recognizer.width = 4
  net = networks.module(c, "processor")
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(c.to_json_best_effort(indent=2))
  variables = jax.device_get(jax.jit(lambda k: net.init(k, jnp.zeros((1, 8, 8, 3)), train=False))(jax.random.key(seed)))
  tail = variables["params"]["tail"]
  tail["kernel"] = 0.3 * np.random.default_rng(seed).standard_normal(tail["kernel"].shape, np.float32)
  weights_lib.save(workdir / "processor.msgpack", variables)
  return workdir


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("detruns")
  out = {"plain": _save_run(root / "plain", "plain", "toy_detector", 0),
         "ra_cls": _save_run(root / "ra_cls", "ra", "resnet18", 1),
         "ra_det": _save_run(root / "ra_det", "ra", "toy_detector", 2)}
  return out


def _config(run_dirs, **det) -> ml_collections.ConfigDict:
  c = evaluate.base_config(task="denoise")
  c.data.noise = "host"
  c.labels = "recognizer"
  c.batch_size = 2                      # 3 photos: the last batch is padded
  c.mesh.data = 2
  for name, path in run_dirs.items():
    c.processors[name] = str(path)
  c.targets.toy = evaluate.detector("toy_detector", "random", num_classes=3)
  c.targets.toy2 = evaluate.detector("toy_detector", "random", num_classes=3)
  c.targets.toy2.seed = 7
  c.targets.resnet18 = evaluate.zoo("resnet18", "random", num_classes=10, width=4)
  c.evals.detection = E(dict(type="detection", processors=tuple(run_dirs), targets=("toy", "toy2"),
                             data=E(dict(source="photos", photos=PHOTOS, size=SIZE, max_boxes=8)),
                             score_threshold=THRESHOLD, metrics=("voc07_map11", "coco_map"), figures=1, **det))
  return c


def _images(config):
  """(clean, degraded) float images [N, H, W, 3] as the detection pipeline makes them, and their mask."""
  src = detection_eval.PhotoList(PHOTOS)
  spec = det_data.DetectionSpec(size=SIZE, max_boxes=8)
  deg = Degradation(task="denoise", sigma=config.degrade.sigma, noise="host")
  batches = list(det_data.detection_eval_dataset(src, spec, deg, global_batch=4, seed=config.seed, threads=1))
  b = {k: np.concatenate([x[k] for x in batches]) for k in ("target", "input", "mask", "image_size")}
  keep = b["mask"] > 0
  return b["target"][keep].astype(np.float32) / 255.0, np.asarray(b["input"][keep], np.float32), b


_VIEWS = {}


def _views(config, run_dirs) -> dict:
  """What the detectors see per row: clean, degraded input, each run's "machine" images (computed once)."""
  key = tuple(sorted((k, str(v)) for k, v in run_dirs.items()))
  if key not in _VIEWS:
    y, x, _ = _images(config)
    views = {"clean": y, "input": x}
    for name, path in run_dirs.items():
      run = runs.load(path)
      views[name] = np.asarray(jax.jit(lambda v, f, x: run.forward(x, v, f)["machine"])(run.variables, run.frozen, x))
    _VIEWS[key] = views
  return _VIEWS[key]


def _expected(config, run_dirs, *, row: str, target: str, targets_from: str = "clean"):
  """(VOC07 mAP, COCO mAP, recovered per image) of `target`'s detections on `row`, computed here."""
  views = _views(config, run_dirs)
  y = views["clean"]
  t = config.targets[target]
  det = rajax.recognizer("toy_detector", "random", num_classes=3, seed=t.get("seed", config.seed))
  dets = det(jnp.asarray(views[row]))
  ref = det(jnp.asarray(views[targets_from]))
  tgt, _ = det_task.pseudo_targets(ref, score_threshold=THRESHOLD, max_boxes=8)
  ev = det_task.Evaluator.for_detector(det)
  ev.add(dets, tgt)
  res = ev.result()
  # recovered by hand: a target box counts when a detection scoring >= THRESHOLD of its class overlaps it at IoU > 0.5
  d = jax.device_get(dets)
  tg = jax.device_get(tgt)
  found, per_box = [], []
  for i in range(len(y)):
    n = 0
    for box, lab, ok in zip(tg.boxes[i], tg.labels[i], tg.valid[i]):
      if not ok:
        continue
      hit = any(dv and ds >= THRESHOLD and dl == lab and _iou(box, db) > 0.5
                for db, ds, dl, dv in zip(d.boxes[i], d.scores[i], d.labels[i], d.valid[i]))
      n += hit
      per_box.append(hit)
    found.append(n)
  return res["voc07_map11"], res["coco_map"], np.array(found), int(np.sum(tg.valid)), per_box


def _iou(a, b) -> float:
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
  return w * h / union if union > 0 else 0.0


def test_detection_table_cells_equal_map_recomputed_from_each_run_and_detector(run_dirs, tmp_path):
  config = _config(run_dirs)
  results = evaluate.run(config, tmp_path)
  table = results["detection"]
  rows = {r["view"]: r for r in table.rows}
  assert list(rows) == ["input", "plain", "ra_cls", "ra_det", "clean"]
  # rows name the model each processor was trained with: Table 4 (a classifier) next to Table 8 (a detector)
  assert (rows["ra_cls"]["loss model"], rows["ra_det"]["loss model"], rows["plain"]["loss model"]) == (
      "resnet18", "toy_detector", "none")
  recovered_cells, boxes_by_hand = {}, {}
  for view in rows:
    for t in ("toy", "toy2"):
      voc, coco, found, total, per_box = _expected(config, run_dirs, row=view, target=t)
      boxes_by_hand[(view, t)] = per_box
      assert total > 0, "the pseudo-targets must not be empty for the check to mean anything"
      np.testing.assert_allclose(rows[view][f"{t} VOC07 mAP"], voc, rtol=1e-6, err_msg=f"{view} {t}")
      np.testing.assert_allclose(rows[view][f"{t} COCO mAP"], coco, rtol=1e-6, err_msg=f"{view} {t}")
      np.testing.assert_allclose(rows[view][f"{t} recovered"], found.sum() / total, rtol=1e-6)
      recovered_cells[(view, t)] = found
  for t in ("toy", "toy2"):
    assert rows["clean"][f"{t} VOC07 mAP"] == 1.0 and rows["clean"][f"{t} recovered"] == 1.0
    assert rows["input"][f"{t} VOC07 mAP"] < 1.0, "the degraded input must differ from the clean image"
    for v in ("ra_cls", "ra_det"):   # the sign test per image, by hand
      a, b = recovered_cells[("plain", t)], recovered_cells[(v, t)]
      g, l = int(np.sum(b > a)), int(np.sum(a > b))
      assert rows[v][f"{t} vs plain"].startswith(f"+{g}/-{l}, p = ")
      assert table.extra["paired_vs_plain"][v][t]["gained"] == g
      # per box: by hand, boxes found by one row and not the other
      bp, bv = boxes_by_hand[("plain", t)], boxes_by_hand[(v, t)]
      gb, lb = sum(x and not y for x, y in zip(bv, bp)), sum(y and not x for x, y in zip(bv, bp))
      assert rows[v][f"{t} boxes vs plain"].startswith(f"+{gb}/-{lb}, p = ")
  # the side table and the figure
  side = json.loads((tmp_path / "detection_per_class.json").read_text())
  assert side["rows"] and all(0.0 <= r["clean"] <= 1.0 for r in side["rows"])
  assert (tmp_path / "detection_0.png").stat().st_size > 1000
  assert "detection" in (tmp_path / "report.md").read_text()
  # negative control: the same cells against targets from the degraded input differ, so the check above
  # would catch an evaluator that scored against the wrong image
  voc_wrong = _expected(config, run_dirs, row="ra_det", target="toy", targets_from="input")[0]
  voc_right = _expected(config, run_dirs, row="ra_det", target="toy")[0]
  assert abs(voc_wrong - voc_right) > 1e-3 and abs(rows["ra_det"]["toy VOC07 mAP"] - voc_wrong) > 1e-3
  # a rerun reads every record from the cache
  again = evaluate.run(config, tmp_path)
  assert again.stats["computed"] == 0 and again["detection"].rows == table.rows


def test_quality_cells_equal_numpy_over_each_images_real_pixels_and_lpips_when_configured(run_dirs, tmp_path):
  """PSNR and SSIM of every row: numpy_metrics on each image cropped to its real pixels (the canvas without
  its padding) against the clean one, averaged; with config.lpips.backbone set, an LPIPS column:
  rajax.models.lpips on the canvas whose padding is the clean image's, in records of their own."""
  config = _config(run_dirs)
  config.evals.detection.figures = 0
  table = evaluate.run(config, tmp_path)["detection"]
  assert "LPIPS" not in table.columns and table.columns[2:4] == ["PSNR", "SSIM"]
  assert table.formats["PSNR"] == "db" and table.formats["toy VOC07 mAP"] == "pct"
  rows = {r["view"]: r for r in table.rows}
  clean, x, b = _images(config)
  sizes = b["image_size"][b["mask"] > 0]
  assert any(tuple(s) != SIZE for s in sizes), "an image must leave padding, or the masking would go untested"
  shown = {"input": x}
  for name, path in run_dirs.items():
    run = runs.load(path)
    shown[name] = np.asarray(jax.jit(lambda v, f, x: run.forward(x, v, f)["human"])(run.variables, run.frozen, x))
  crop = lambda a, i: a[i:i + 1, :sizes[i][0], :sizes[i][1]]
  for v, img in shown.items():
    psnr = [numpy_metrics.psnr(crop(img, i), crop(clean, i))[0] for i in range(len(PHOTOS))]
    ssim = [numpy_metrics.ssim(crop(img, i), crop(clean, i))[0] for i in range(len(PHOTOS))]
    np.testing.assert_allclose(rows[v]["PSNR"], np.mean(psnr), rtol=1e-5, err_msg=v)
    np.testing.assert_allclose(rows[v]["SSIM"], np.mean(ssim), rtol=1e-5, err_msg=v)
  assert rows["clean"]["PSNR"] == float("inf") and rows["clean"]["SSIM"] == pytest.approx(1.0, abs=1e-6)
  # negative control: PSNR over the whole canvas, padding included, is another number
  assert abs(np.mean(numpy_metrics.psnr(shown["plain"], clean)) - rows["plain"]["PSNR"]) > 1e-2

  config.lpips = E(dict(net="alex", backbone=str(seeded_lpips.backbone_file(tmp_path / "lpips"))))
  again = evaluate.run(config, tmp_path)
  assert again.stats["computed"] == 5, "the five rows' quality records are recomputed with LPIPS, nothing else"
  table = again["detection"]
  assert table.columns[2:5] == ["PSNR", "SSIM", "LPIPS"]
  with_lpips = {r["view"]: r for r in table.rows}
  distance = lpips.lpips_fn("alex", backbone_weights=config.lpips.backbone)
  for v, img in shown.items():
    want = seeded_lpips.canvas_lpips(distance, img, clean, sizes)
    np.testing.assert_allclose(with_lpips[v]["LPIPS"], want, rtol=1e-4, err_msg=v)
    assert with_lpips[v]["LPIPS"] > 0 and with_lpips[v]["toy COCO mAP"] == rows[v]["toy COCO mAP"]
  assert with_lpips["clean"]["LPIPS"] == 0.0
  # negative control: LPIPS against the degraded input instead of the clean image differs
  assert abs(seeded_lpips.canvas_lpips(distance, shown["plain"], x, sizes) - with_lpips["plain"]["LPIPS"]) > 1e-4


@pytest.mark.heavy   # 10-25 s of a 2-core CI; `python -m pytest -m heavy` runs it
def test_a_processor_trained_with_a_detector_is_evaluated_by_classifiers_table_12(run_dirs, tmp_path):
  """The accuracy evaluator takes runs trained with a detector; its default targets are the classifiers."""
  c = _config(run_dirs)
  c.data.source = "photos"
  c.data.photos.short_side = 40
  c.data.photos.grid = 1
  c.data.resize = 0
  c.data.crop = 32
  c.evals = E(dict(accuracy=E(dict(type="accuracy", processors=("plain", "ra_det")))))
  table = evaluate.run(c, tmp_path)["accuracy"]
  assert [col for col in table.columns if col.endswith("top-1")] == ["resnet18 top-1"]   # no detector column
  rec = rajax.recognizer("resnet18", "random", num_classes=10, width=4)
  ctx_cfg = c
  from rajax import data as data_lib
  source = data_lib.make_source(ctx_cfg.data, ctx_cfg.data.split)
  deg = Degradation(task="denoise", sigma=c.degrade.sigma, noise="host")
  batches = list(data_lib.eval_dataset(source, deg, resize=0, crop=32, global_batch=2, seed=c.seed, threads=1))
  keep = np.concatenate([b["mask"] for b in batches]) > 0
  x = np.concatenate([b["input"] for b in batches])[keep].astype(np.float32)
  y = np.concatenate([b["target"] for b in batches])[keep].astype(np.float32) / 255.0
  labels = np.argmax(rec(jnp.asarray(y)), -1)
  out = runs.load(run_dirs["ra_det"]).forward(jnp.asarray(x))["machine"]
  expected = float(np.mean(np.argmax(rec(out), -1) == labels))
  row = next(r for r in table.rows if r["view"] == "ra_det")
  np.testing.assert_allclose(row["resnet18 top-1"], expected, rtol=1e-6)


def test_dataset_boxes_are_the_targets_when_the_data_has_them(run_dirs, tmp_path, monkeypatch):
  """With annotated data (labels 'auto' -> 'dataset'), cells are mAP against the data's boxes."""
  boxes = {0: [[2.0, 2.0, 14.0, 12.0], [10.0, 4.0, 30.0, 20.0]], 1: [[0.0, 0.0, 20.0, 20.0]], 2: [[4.0, 6.0, 24.0, 28.0]]}
  classes = {0: [0, 1], 1: [1], 2: [0]}   # dataset classes 0..1 -> labels 1..2 (contiguous, 0 = background)
  records = []
  for i, name in enumerate(PHOTOS):
    img = np.asarray(detection_eval.PhotoList([name])[0]["image"])
    from PIL import Image
    img = np.asarray(Image.fromarray(img).resize((32, 32)))
    records.append({"image": img, "boxes": np.array(boxes[i], np.float32), "classes": np.array(classes[i]),
                    "difficult": np.zeros(len(boxes[i]), bool), "crowd": np.zeros(len(boxes[i]), bool), "id": i})
  source = det_data.InMemoryDetection(records, ("a", "b"))
  monkeypatch.setattr(detection_eval, "make_source", lambda d: source)
  c = _config({"plain": run_dirs["plain"]})
  c.evals.detection.targets = ("toy", "given")
  c.evals.detection.figures = 0
  det = rajax.recognizer("toy_detector", "random", num_classes=3, seed=c.seed)
  # a Detector object given to evaluate.run is a target like a configured one
  table = evaluate.run(c, tmp_path, targets={"given": det})["detection"]
  spec = det_data.DetectionSpec(size=SIZE, max_boxes=8)
  batches = list(det_data.detection_eval_dataset(source, spec, None, global_batch=4, seed=0, threads=1))
  y = batches[0]["target"][:3].astype(np.float32) / 255.0
  gt = BoxTargets(*(batches[0][k][:3] for k in ("boxes", "labels", "valid", "difficult")))
  ev = det_task.Evaluator.for_detector(det)
  ev.add(det(jnp.asarray(y)), gt)
  clean = next(r for r in table.rows if r["view"] == "clean")
  np.testing.assert_allclose(clean["toy VOC07 mAP"], ev.result()["voc07_map11"], rtol=1e-6)
  assert all(r["toy VOC07 mAP"] == r["given VOC07 mAP"] for r in table.rows)
  assert clean["toy VOC07 mAP"] < 1.0   # real boxes: the clean row is no longer 100% by construction
  assert "dataset's boxes" in " ".join(table.notes)


def test_bad_detection_configs_are_refused_naming_the_fix(run_dirs, tmp_path):
  c = _config(run_dirs)
  c.evals.detection.targets = ("resnet18",)
  with pytest.raises(evaluate.EvalError, match="not a detector"):
    evaluate.run(c, tmp_path / "a")
  c = _config(run_dirs)
  c.evals.detection.labels = "dataset"
  with pytest.raises(evaluate.EvalError, match="has no boxes"):
    evaluate.run(c, tmp_path / "b")
  c = _config(run_dirs)
  c.evals.detection.metrics = ("map",)
  with pytest.raises(evaluate.EvalError, match="metrics: unknown"):
    evaluate.validate(c)   # refused before any evaluator runs
  c = _config(run_dirs)
  c.evals.detection.data.shape = (32, 32)
  with pytest.raises(evaluate.EvalError, match="Unknown detection data field.*shape"):
    evaluate.validate(c)


def test_recovered_counts_only_confident_same_class_overlaps():
  """By hand: one target box per image; image 0's detection overlaps at IoU 0.81 with its class, image
  1's has the wrong class, image 2's scores under the threshold."""
  t = BoxTargets(np.array([[[0, 0, 10, 10]]] * 3, np.float32), np.array([[1], [1], [1]], np.int32),
                 np.ones((3, 1), bool), np.zeros((3, 1), bool))
  d = Detections(np.array([[[0, 0, 9, 9]]] * 3, np.float32), np.array([[0.9], [0.9], [0.4]], np.float32),
                 np.array([[1], [2], [1]], np.int32), np.ones((3, 1), bool))
  np.testing.assert_array_equal(detection_eval.recovered(d, t, 0.5), [1, 0, 0])
  np.testing.assert_array_equal(detection_eval.recovered(d, t, 0.3), [1, 0, 1])
