"""The degradations evaluator with detection and segmentation targets: every side-table cell recomputed here.

Processors are tiny random denoising runs (tests/test_evaluate_segmentation's kind), the detector
tests/toy_detector.py and the segmenter tests/toy_segmenter.py (random weights). For each degradation
the whole photos are resized into the canvas by hand, degraded by that one family with the
example's seeded rng, passed through each run's `forward`, and scored: the segmenter's argmax against
its argmax on the clean canvas (NumPy confusion matrices), the detector's detections against its own
confident detections on the clean canvas. The mean rows pool the images of every degradation of a set.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import numpy_metrics
from test_evaluate_segmentation import SIZE, _canvas, _save_run  # the same photos and runs
import rajax
import toy_detector  # noqa: F401  (the family modules the zoo imports)
import toy_segmenter  # noqa: F401
from rajax import evaluate, metrics, runs
from rajax.data.pipeline import Degradation
from rajax.detection import zoo
from rajax.evaluate import EvalError
from rajax.evaluate import degradations as degradations_eval
from rajax.evaluate import detection as detection_eval
from rajax.tasks import detection as det_task

E = ml_collections.ConfigDict
PHOTOS = ("chelsea", "coffee", "rocket")
K = 3
SEEN, UNSEEN = (("gaussian_noise", 3),), (("low_light", 2),)
THRESHOLD = 0.5


@pytest.fixture(autouse=True)
def _toys_in_the_zoo(monkeypatch):
  monkeypatch.setattr(zoo, "_FAMILIES", (*zoo._FAMILIES, "toy_detector", "toy_segmenter"))


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("degruns")
  return {"plain": _save_run(root / "plain", "plain", "resnet18", 0), "ra": _save_run(root / "ra", "ra", "resnet18", 1)}


def _config(run_dirs) -> ml_collections.ConfigDict:
  c = evaluate.base_config(task="mixture")
  c.degrade.families = SEEN
  c.labels = "recognizer"
  c.batch_size = 2                      # 3 photos: the last batch is padded
  c.mesh.data = 2
  c.data.update(dict(source="photos", split="test", resize=0, crop=32, threads=2))
  c.data.photos.update(dict(short_side=32, grid=1, eval_scales=(1.0,), names=PHOTOS))
  for name, path in run_dirs.items():
    c.processors[name] = str(path)
  c.targets.resnet18 = evaluate.zoo("resnet18", "random", num_classes=10, width=4)
  c.targets.toy_det = evaluate.detector("toy_detector", "random", num_classes=K)
  c.targets.toy_seg = evaluate.segmenter("toy_segmenter", "random", num_classes=K)
  data = dict(source="photos", photos=PHOTOS, size=SIZE)
  c.evals.degradations = E(dict(
      type="degradations", seen=SEEN, unseen=UNSEEN, reference="ra", targets=("resnet18",),
      detection=E(dict(targets=("toy_det",), labels="recognizer", score_threshold=THRESHOLD,
                       data=E(dict(data, max_boxes=8)))),
      segmentation=E(dict(targets=("toy_seg",), labels="recognizer", data=E(data)))))
  return c


def _views(config, run_dirs, family) -> tuple[dict, list]:
  """{view: float images [N, H, W, 3]} (clean, the input degraded by `family` alone, each run's output)."""
  canvases = [_canvas(n) for n in PHOTOS]
  y8 = np.stack([c for c, _ in canvases])
  deg = Degradation(task="mixture", families=(family,))
  x = np.stack([deg(y8[i], np.random.default_rng([config.seed, i])) for i in range(len(PHOTOS))])
  x = x.astype(np.float32) / (255.0 if x.dtype == np.uint8 else 1.0)   # the families give 8-bit images
  views = {"clean": y8.astype(np.float32) / 255.0, "input": x}
  for name, path in run_dirs.items():
    run = runs.load(path)
    views[name] = np.asarray(jax.jit(lambda v, f, x: run.forward(x, v, f)["machine"])(run.variables, run.frozen, x))
  return views, [s for _, s in canvases]


def _np_matrix(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
  return np.bincount(target.astype(np.int64).ravel() * K + pred.ravel(), minlength=K * K).reshape(K, K)


def _np_miou(m: np.ndarray) -> float:
  tp = np.diag(m).astype(np.float64)
  union = m.sum(0) + m.sum(1) - tp
  return float(np.nanmean(np.where(union > 0, tp / np.maximum(union, 1), np.nan)))


def _expected(config, run_dirs) -> dict:
  """{(degradation or "mean (set)", view): cells} recomputed here, and the per-image paired values."""
  det = rajax.recognizer("toy_detector", "random", num_classes=K, seed=config.seed)
  seg = rajax.recognizer("toy_segmenter", "random", num_classes=K, seed=config.seed)
  per: dict = {}
  for group, families in (("seen", SEEN), ("unseen", UNSEEN)):
    for family in families:
      views, sizes = _views(config, run_dirs, family)
      boxes_ref, _ = det_task.pseudo_targets(det(jnp.asarray(views["clean"])), score_threshold=THRESHOLD, max_boxes=8)
      seg_ref = np.asarray(jnp.argmax(seg(jnp.asarray(views["clean"])), -1))
      for v in ("input", *run_dirs):
        dets = det(jnp.asarray(views[v]))
        pred = np.asarray(jnp.argmax(seg(jnp.asarray(views[v])), -1))
        matrices = [_np_matrix(pred[i, :h, :w], seg_ref[i, :h, :w]) for i, (h, w) in enumerate(sizes)]
        crop = lambda a, i: a[i:i + 1, :sizes[i][0], :sizes[i][1]]
        cell = {"psnr": [numpy_metrics.psnr(crop(views[v], i), crop(views["clean"], i))[0] for i in range(len(PHOTOS))],
                "ssim": [numpy_metrics.ssim(crop(views[v], i), crop(views["clean"], i))[0] for i in range(len(PHOTOS))],
                "dets": dets, "targets": boxes_ref, "matrices": matrices,
                "found": detection_eval.recovered(dets, boxes_ref, THRESHOLD)}
        per.setdefault((group, v), []).append((f"{family[0]} {family[1]}", cell))
  out = {}
  for (group, v), items in per.items():
    for deg, cells in [(d, [c]) for d, c in items] + [(f"mean ({group})", [c for _, c in items])]:
      ev = det_task.Evaluator.for_detector(det, coco=False)
      for c in cells:
        ev.add(c["dets"], c["targets"])
      found = np.concatenate([c["found"] for c in cells])
      total = sum(int(np.sum(np.asarray(c["targets"].valid))) for c in cells)
      out[(deg, v)] = {"PSNR": np.mean([p for c in cells for p in c["psnr"]]),
                       "SSIM": np.mean([p for c in cells for p in c["ssim"]]),
                       "toy_det VOC07 mAP": ev.result()["voc07_map11"], "toy_det recovered": found.sum() / total,
                       "toy_seg mIoU": _np_miou(sum(m for c in cells for m in c["matrices"])),
                       "found": found, "miou": np.array([_np_miou(m) for c in cells for m in c["matrices"]])}
  return out


def test_detection_and_segmentation_side_tables_recomputed_per_degradation_and_pooled(run_dirs, tmp_path):
  config = _config(run_dirs)
  results = evaluate.run(config, tmp_path)
  main = results["degradations"]
  expected = _expected(config, run_dirs)
  # the main table keeps its classification columns; the side tables are written next to it
  assert "resnet18 top-1" in main.columns and "Detection: degradations_detection.md." in main.notes
  for kind in ("detection", "segmentation"):
    assert (tmp_path / f"degradations_{kind}.md").is_file()
  det_rows = {(r["degradation"], r["view"]): r for r in main.extra["detection"]["rows"]}
  seg_rows = {(r["degradation"], r["view"]): r for r in main.extra["segmentation"]["rows"]}
  assert set(det_rows) == set(seg_rows) == set(expected)
  assert {d for d, _ in expected} == {"gaussian_noise 3", "low_light 2", "mean (seen)", "mean (unseen)"}
  for key, want in expected.items():
    for rows, cols in ((det_rows, ("toy_det VOC07 mAP", "toy_det recovered")), (seg_rows, ("toy_seg mIoU",))):
      row = rows[key]
      np.testing.assert_allclose(row["PSNR"], want["PSNR"], rtol=1e-4, err_msg=str(key))
      np.testing.assert_allclose(row["SSIM"], want["SSIM"], rtol=1e-3, atol=1e-4, err_msg=str(key))
      for col in cols:
        np.testing.assert_allclose(row[col], want[col], rtol=1e-5, atol=1e-7, err_msg=f"{key} {col}")
    deg, v = key
    if v != "ra":   # the paired sign tests against the reference, per image
      a, b = expected[(deg, "ra")]["found"], want["found"]
      assert main.extra["detection"]["paired"][deg][v]["toy_det"] == metrics.paired_test(a > b, b > a)
      a, b = expected[(deg, "ra")]["miou"], want["miou"]
      ok = np.isfinite(a) & np.isfinite(b)
      assert main.extra["segmentation"]["paired"][deg][v]["toy_seg"] == metrics.paired_test(a[ok] > b[ok], b[ok] > a[ok])
  # the degradations differ, so do their rows (a check that each family is applied)
  assert det_rows[("gaussian_noise 3", "input")]["PSNR"] != det_rows[("low_light 2", "input")]["PSNR"]


def test_dense_sub_sections_are_checked_before_anything_runs(run_dirs, tmp_path):
  config = _config(run_dirs)
  config.evals.degradations.detection.targets = ()
  config.evals.degradations.segmentation.data.size = (4, 4)
  with pytest.raises(EvalError, match=r"degradations.detection.targets is empty(.|\n)*"
                                      r"degradations.segmentation.data.size=\(4, 4\) must be"):
    evaluate.run(config, tmp_path)
  assert degradations_eval.problems(_config(run_dirs).evals.degradations, "degradations") == []
