"""The evaluation suite with segmenters: the segmentation table's every cell recomputed outside the suite.

The segmenters are tests/toy_segmenter.py (random weights, 3 classes), the processors tiny denoising
runs saved with random weights: one trained (by its config) with a classifier as R, one with the
toy segmenter, one plain. Each cell is recomputed here from the photos (resized into the canvas and
padded by hand), the run's `forward`, the segmenter's argmax and a NumPy confusion matrix
(np.bincount), with the sign test counted by hand.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

import numpy_metrics
import rajax
import seeded_lpips
import toy_segmenter  # noqa: F401  (the family module the zoo imports)
from rajax import config as config_lib
from rajax import evaluate, networks, runs
from rajax import weights as weights_lib
from rajax.data import photos
from rajax.data import segmentation as seg_data
from rajax.data.pipeline import Degradation
from rajax.evaluate import segmentation as segmentation_eval
from rajax.evaluate import targets as targets_lib
from rajax.models import lpips
from rajax.segmentation import zoo

SIZE = (32, 32)
PHOTOS = ("chelsea", "coffee", "rocket")
K = 3
E = ml_collections.ConfigDict


@pytest.fixture(autouse=True)
def _toy_in_the_zoo(monkeypatch):
  monkeypatch.setattr(zoo, "_FAMILIES", (*zoo._FAMILIES, "toy_segmenter"))


def _save_run(workdir: pathlib.Path, mode: str, recognizer: str, seed: int) -> pathlib.Path:
  """A finished denoising run (config.json + processor.msgpack): random P weights, R named in its config."""
  c = config_lib.base(task="denoise", method=mode, recognizer=recognizer)
  c.processor.update(dict(blocks=1, channels=8, input_skip=True))
  c.recognizer.weights = "random"
  c.recognizer.num_classes = K if recognizer == "toy_segmenter" else 10
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
  root = tmp_path_factory.mktemp("segruns")
  return {"plain": _save_run(root / "plain", "plain", "toy_segmenter", 0),
          "ra_cls": _save_run(root / "ra_cls", "ra", "resnet18", 1),
          "ra_seg": _save_run(root / "ra_seg", "ra", "toy_segmenter", 2)}


def _config(run_dirs, **seg) -> ml_collections.ConfigDict:
  c = evaluate.base_config(task="denoise")
  c.data.noise = "host"
  c.labels = "recognizer"
  c.batch_size = 2                      # 3 photos: the last batch is padded
  c.mesh.data = 2
  for name, path in run_dirs.items():
    c.processors[name] = str(path)
  c.targets.toy = evaluate.segmenter("toy_segmenter", "random", num_classes=K)
  c.targets.toy2 = evaluate.segmenter("toy_segmenter_noaux", "random", num_classes=K)
  c.targets.toy2.seed = 7
  c.targets.resnet18 = evaluate.zoo("resnet18", "random", num_classes=10, width=4)
  c.evals.segmentation = E(dict(dict(type="segmentation", processors=tuple(run_dirs),
                                     data=E(dict(source="photos", photos=PHOTOS, size=SIZE)), figures=1,
                                     figure_processors=("plain", "ra_seg")), **seg))
  return c


def _canvas(name: str) -> tuple[np.ndarray, tuple[int, int]]:
  """Photo `name` resized by hand (bilinear, aspect kept, floor sizes) into the top left of a SIZE canvas."""
  img = photos.photo(name)
  h, w = img.shape[:2]
  s = min(SIZE[0] / h, SIZE[1] / w)
  nh, nw = int(np.floor(h * s)), int(np.floor(w * s))
  out = np.zeros((*SIZE, 3), np.uint8)
  out[:nh, :nw] = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
  return out, (nh, nw)


_VIEWS = {}


def _views(config, run_dirs) -> tuple[dict, list]:
  """What the segmenters see per row (clean, degraded input, each run's "machine" images), and the
  real (height, width) of each photo on the canvas; computed once."""
  key = tuple(sorted((k, str(v)) for k, v in run_dirs.items()))
  if key not in _VIEWS:
    canvases = [_canvas(n) for n in PHOTOS]
    y8 = np.stack([c for c, _ in canvases])
    deg = Degradation(task="denoise", sigma=config.degrade.sigma, noise="host")
    x = np.stack([deg(y8[i], np.random.default_rng([config.seed, i])) for i in range(len(PHOTOS))]).astype(np.float32)
    views = {"clean": y8.astype(np.float32) / 255.0, "input": x}
    for name, path in run_dirs.items():
      run = runs.load(path)
      views[name] = np.asarray(jax.jit(lambda v, f, x: run.forward(x, v, f)["machine"])(run.variables, run.frozen, x))
    _VIEWS[key] = (views, [s for _, s in canvases])
  return _VIEWS[key]


def _np_matrix(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
  ok = target < K
  return np.bincount(target[ok].astype(np.int64) * K + pred[ok], minlength=K * K).reshape(K, K)


def _np_scores(m: np.ndarray) -> tuple[float, float, np.ndarray]:
  tp = np.diag(m).astype(np.float64)
  union = m.sum(0) + m.sum(1) - tp
  iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
  return float(np.nanmean(iou)), float(tp.sum() / m.sum()), iou


_PREDICTIONS = {}


def _argmax(config, run_dirs, target: str) -> dict:
  """{view: the argmax label maps [N, H, W] of segmenter `target` on that view}, one call for all views."""
  key = (target, tuple(sorted((k, str(v)) for k, v in run_dirs.items())))
  if key not in _PREDICTIONS:
    views, _ = _views(config, run_dirs)
    t = config.targets[target]
    seg = rajax.recognizer(t.name, "random", num_classes=K, seed=t.get("seed", config.seed))
    names = list(views)
    pred = np.asarray(jnp.argmax(seg(jnp.asarray(np.concatenate([views[v] for v in names]))), -1))
    _PREDICTIONS[key] = dict(zip(names, np.split(pred, len(names))))
  return _PREDICTIONS[key]


def _expected(config, run_dirs, *, row: str, target: str, targets_from: str = "clean"):
  """(mIoU, pixel accuracy, per-class IoU, per-image mIoU) of `target`'s argmax on `row`, by NumPy."""
  _, sizes = _views(config, run_dirs)
  preds = _argmax(config, run_dirs, target)
  pred, ref = preds[row], preds[targets_from]
  total, per_image = np.zeros((K, K), np.int64), []
  for i, (h, w) in enumerate(sizes):
    m = _np_matrix(pred[i, :h, :w], ref[i, :h, :w])   # padding is never scored
    total += m
    per_image.append(_np_scores(m)[0])
  miou, acc, iou = _np_scores(total)
  return miou, acc, iou, np.array(per_image), total.sum(1)


def test_segmentation_table_cells_equal_miou_recomputed_from_each_run_and_segmenter(run_dirs, tmp_path):
  config = _config(run_dirs)
  results = evaluate.run(config, tmp_path)
  table = results["segmentation"]
  rows = {r["view"]: r for r in table.rows}
  assert list(rows) == ["input", "plain", "ra_cls", "ra_seg", "clean"]
  assert (rows["ra_cls"]["loss model"], rows["ra_seg"]["loss model"], rows["plain"]["loss model"]) == (
      "resnet18", "toy_segmenter", "none")
  # the default targets are the segmenters only, not the classifier
  assert [c for c in table.columns if c.endswith("mIoU")] == ["toy mIoU", "toy2 mIoU"]
  side_rows = json.loads((tmp_path / "segmentation_per_class.json").read_text())["rows"]
  side = {(r["segmenter"], r["class"]): r for r in side_rows}
  assert side, "the per-class table must hold rows"
  per_image = {}
  for view in rows:
    for t in ("toy", "toy2"):
      miou, acc, iou, images, pixels = _expected(config, run_dirs, row=view, target=t)
      per_image[(view, t)] = images
      np.testing.assert_allclose(rows[view][f"{t} mIoU"], miou, rtol=1e-9, err_msg=f"{view} {t}")
      np.testing.assert_allclose(rows[view][f"{t} pixel acc"], acc, rtol=1e-9, err_msg=f"{view} {t}")
      for c, name in enumerate(("background", "class1", "class2")):   # the classes with target pixels
        assert ((t, name) in side) == (pixels[c] > 0)
        if pixels[c]:
          assert side[(t, name)]["pixels"] == pixels[c]
          np.testing.assert_allclose(side[(t, name)][view], iou[c], rtol=1e-9)
  for t in ("toy", "toy2"):
    assert rows["clean"][f"{t} mIoU"] == 1.0 and rows["clean"][f"{t} pixel acc"] == 1.0
    assert rows["input"][f"{t} mIoU"] < 1.0, "the degraded input must differ from the clean image"
    for v in ("ra_cls", "ra_seg"):   # the sign test per image, by hand
      a, b = per_image[("plain", t)], per_image[(v, t)]
      g, l = int(np.sum(b > a)), int(np.sum(a > b))
      assert rows[v][f"{t} vs plain"].startswith(f"+{g}/-{l}, p = ")
      assert (table.extra["paired_vs_plain"][v][t]["gained"], table.extra["paired_vs_plain"][v][t]["lost"]) == (g, l)
  # PSNR over each photo's real pixels, by hand
  views, sizes = _views(config, run_dirs)
  psnr = [10 * np.log10(1.0 / np.mean((views["plain"][i, :h, :w] - views["clean"][i, :h, :w]) ** 2))
          for i, (h, w) in enumerate(sizes)]
  np.testing.assert_allclose(rows["plain"]["PSNR"], np.mean(psnr), rtol=1e-4)
  assert sizes[0] != SIZE, "chelsea must not fill the canvas, or padding would go untested"
  # the figure and the report
  assert table.figures == ["segmentation_0.png"] and (tmp_path / "segmentation_0.png").stat().st_size > 1000
  assert "segmentation" in (tmp_path / "report.md").read_text()
  # negative control: the same cell against targets from the degraded input differs, so the checks above
  # would catch an evaluator that scored against the wrong image
  wrong = _expected(config, run_dirs, row="ra_seg", target="toy", targets_from="input")[0]
  right = _expected(config, run_dirs, row="ra_seg", target="toy")[0]
  assert abs(wrong - right) > 1e-3 and abs(rows["ra_seg"]["toy mIoU"] - wrong) > 1e-3
  # a rerun reads every record from the cache
  again = evaluate.run(config, tmp_path)
  assert again.stats["computed"] == 0 and again["segmentation"].rows == table.rows


_SHOWN = {}


def _shown(config, run_dirs) -> dict:
  """What a person is shown per row (each run's "human" images; the input and the clean image as they are)."""
  key = tuple(sorted((k, str(v)) for k, v in run_dirs.items()))
  if key not in _SHOWN:
    views, _ = _views(config, run_dirs)
    out = {"clean": views["clean"], "input": views["input"]}
    for name, path in run_dirs.items():
      run = runs.load(path)
      out[name] = np.asarray(jax.jit(lambda v, f, x: run.forward(x, v, f)["human"])(run.variables, run.frozen,
                                                                                    views["input"]))
    _SHOWN[key] = out
  return _SHOWN[key]


def test_quality_cells_equal_numpy_over_each_images_real_pixels_and_lpips_when_configured(run_dirs, tmp_path):
  """PSNR and SSIM of every row: numpy_metrics on each photo cropped to its real pixels, averaged; with
  config.lpips.backbone set, an LPIPS column: rajax.models.lpips on the canvas whose padding is the
  clean image's; records with LPIPS are other cache records than those without."""
  config = _config(run_dirs, figures=0)
  table = evaluate.run(config, tmp_path)["segmentation"]
  assert "LPIPS" not in table.columns and table.columns[2:4] == ["PSNR", "SSIM"]
  rows = {r["view"]: r for r in table.rows}
  shown, (_, sizes) = _shown(config, run_dirs), _views(config, run_dirs)
  clean = shown["clean"]
  crop = lambda a, i: a[i:i + 1, :sizes[i][0], :sizes[i][1]]
  for v in ("input", "plain", "ra_cls", "ra_seg"):
    psnr = [numpy_metrics.psnr(crop(shown[v], i), crop(clean, i))[0] for i in range(len(PHOTOS))]
    ssim = [numpy_metrics.ssim(crop(shown[v], i), crop(clean, i))[0] for i in range(len(PHOTOS))]
    np.testing.assert_allclose(rows[v]["PSNR"], np.mean(psnr), rtol=1e-5, err_msg=v)
    np.testing.assert_allclose(rows[v]["SSIM"], np.mean(ssim), rtol=1e-5, err_msg=v)
  assert rows["clean"]["PSNR"] == float("inf") and rows["clean"]["SSIM"] == pytest.approx(1.0, abs=1e-6)
  # negative control: the SSIM of the whole canvas, padding included, is another number
  canvas = np.mean(numpy_metrics.ssim(shown["plain"], clean))
  assert abs(canvas - rows["plain"]["SSIM"]) > 1e-3

  config.lpips = E(dict(net="alex", backbone=str(seeded_lpips.backbone_file(tmp_path / "lpips"))))
  again = evaluate.run(config, tmp_path)
  assert again.stats["computed"] == 5, "the five rows' quality records are recomputed with LPIPS, nothing else"
  table = again["segmentation"]
  assert table.columns[2:5] == ["PSNR", "SSIM", "LPIPS"]
  with_lpips = {r["view"]: r for r in table.rows}
  distance = lpips.lpips_fn("alex", backbone_weights=config.lpips.backbone)
  for v in ("input", "plain", "ra_cls", "ra_seg"):
    want = seeded_lpips.canvas_lpips(distance, shown[v], clean, sizes)
    np.testing.assert_allclose(with_lpips[v]["LPIPS"], want, rtol=1e-4, err_msg=v)
    assert with_lpips[v]["LPIPS"] > 0
    for k in ("PSNR", "SSIM", "toy mIoU"):
      assert with_lpips[v][k] == rows[v][k]
  assert with_lpips["clean"]["LPIPS"] == 0.0
  # negative control: LPIPS of the canvases as they are (the processor's output in the padding) differs
  assert abs(np.mean(np.asarray(distance(shown["plain"], clean))) - with_lpips["plain"]["LPIPS"]) > 1e-4
  assert "LPIPS over its canvas" in " ".join(table.notes)


def _labelled_records():
  """Three photos at 32 x 32 with label maps of the 3 classes by hand (255: ignored pixels)."""
  records = []
  for i, name in enumerate(PHOTOS):
    img = np.asarray(Image.fromarray(photos.photo(name)).resize((32, 24), Image.BILINEAR))
    label = np.zeros((24, 32), np.uint8)
    label[:, 10 + i:] = 1
    label[12:, 20:] = 2
    label[:3, :3] = 255
    records.append({"image": img, "label_map": label, "id": i})
  return records


def test_dataset_label_maps_are_the_targets_when_the_data_has_them(run_dirs, tmp_path, monkeypatch):
  """With labelled data (labels 'auto' -> 'dataset'), cells are mIoU against the data's label maps;
  a Segmenter object given to evaluate.run is a target like a configured one."""
  records = _labelled_records()
  source = seg_data.InMemorySegmentation(records, ("background", "a", "b"))
  monkeypatch.setattr(segmentation_eval, "make_source", lambda d: source)
  c = _config({"plain": run_dirs["plain"]})
  c.evals.segmentation.update(dict(targets=("toy", "given"), figures=0, paired_metric="pixel_accuracy"))
  c.evals.segmentation.data = E(dict(source="tfds", split="custom", size=SIZE))
  seg = rajax.recognizer("toy_segmenter", "random", num_classes=K, seed=c.seed)
  table = evaluate.run(c, tmp_path, targets={"given": seg})["segmentation"]
  clean = np.stack([np.pad(r["image"], ((0, 8), (0, 0), (0, 0))) for r in records]).astype(np.float32) / 255.0
  pred = np.asarray(jnp.argmax(seg(jnp.asarray(clean)), -1))
  m = sum(_np_matrix(pred[i, :24], r["label_map"]) for i, r in enumerate(records))
  miou, acc, _ = _np_scores(m)
  row = next(r for r in table.rows if r["view"] == "clean")
  np.testing.assert_allclose(row["toy mIoU"], miou, rtol=1e-9)
  np.testing.assert_allclose(row["toy pixel acc"], acc, rtol=1e-9)
  assert all(r["toy mIoU"] == r["given mIoU"] for r in table.rows)
  assert row["toy mIoU"] < 1.0   # real label maps: the clean row is no longer 100% by construction
  assert "label maps" in " ".join(table.notes) and "pixel accuracy" in " ".join(table.notes)
  assert not (tmp_path / "segmentation_0.png").exists()   # figures=0: none drawn
  # a segmenter of another class count is refused against the dataset's label maps
  c.targets.toy = evaluate.segmenter("toy_segmenter", "random", num_classes=4)
  with pytest.raises(evaluate.EvalError, match="has 4 classes but the data"):
    evaluate.run(c, tmp_path / "b", targets={"given": seg})


def test_segmenter_names_resolve_to_the_segmentation_task():
  assert targets_lib.task_of(evaluate.segmenter("toy_segmenter")) == "segmentation"
  assert targets_lib.task_of(E(dict(kind="zoo", name="selfie"))) == "segmentation"   # by the zoo, without `task`
  assert targets_lib.task_of(E(dict(kind="zoo", name="hrnet_w48"))) == "segmentation"
  assert targets_lib.task_of(E(dict(kind="zoo", name="deeplabv3_resnet50"))) == "segmentation"
  assert targets_lib.task_of(evaluate.zoo("resnet18")) == "classification"
  assert targets_lib.task_of(evaluate.detector("nanodet")) == "detection"
  seg = rajax.recognizer("toy_segmenter", "random", num_classes=K)
  assert targets_lib.object_task(targets_lib.wrap("s", seg)) == "segmentation"
  t = evaluate.segmenter("hrnet_w48", "w.pth", num_classes=19)
  assert (t.num_classes, t.weights, t.task) == (19, "w.pth", "segmentation")


def test_the_segmenter_a_run_trained_is_a_target_column(run_dirs, tmp_path):
  """run_target of a run that trained a segmenter (ra_joint): its task is the segmenter's (default
  targets pick it up), and its column is that run's trained segmenter, not the zoo's initialisation."""
  c = config_lib.base(task="denoise", method="ra_joint", recognizer="toy_segmenter")
  c.processor.update(dict(blocks=1, channels=8, input_skip=True))
  c.recognizer.weights = "random"
  c.recognizer.num_classes = K
  run = tmp_path / "joint"
  run.mkdir()
  (run / "config.json").write_text(c.to_json_best_effort(indent=2))
  weights_lib.save(run / "processor.msgpack", weights_lib.load(run_dirs["plain"] / "processor.msgpack",
                                                               runs.load(run_dirs["plain"]).variables["processor"]))
  trained = rajax.recognizer("toy_segmenter", "random", num_classes=K, seed=11)   # stands for the trained weights
  weights_lib.save(run / "recognizer.msgpack", trained.variables)
  assert targets_lib.task_of(evaluate.run_target(str(run))) == "segmentation"
  cfg = _config({"plain": run_dirs["plain"]}, figures=0)
  cfg.targets = E(dict(joint=evaluate.run_target(str(run)), resnet18=evaluate.zoo("resnet18", "random", width=4)))
  table = evaluate.run(cfg, tmp_path / "eval")["segmentation"]
  assert [col for col in table.columns if col.endswith("mIoU")] == ["joint mIoU"]
  views, sizes = _views(cfg, run_dirs)

  def miou(seg):
    pred = np.asarray(jnp.argmax(seg(jnp.asarray(views["plain"])), -1))
    ref = np.asarray(jnp.argmax(seg(jnp.asarray(views["clean"])), -1))
    return _np_scores(sum(_np_matrix(pred[i, :h, :w], ref[i, :h, :w]) for i, (h, w) in enumerate(sizes)))[0]

  row = next(r for r in table.rows if r["view"] == "plain")
  np.testing.assert_allclose(row["joint mIoU"], miou(trained), rtol=1e-9)
  # negative control: the configured architecture's own initialisation would give another cell
  assert abs(row["joint mIoU"] - miou(rajax.recognizer("toy_segmenter", "random", num_classes=K))) > 1e-3


def test_bad_segmentation_configs_are_refused_naming_the_fix(run_dirs, tmp_path):
  c = _config(run_dirs)
  c.evals.segmentation.targets = ("resnet18",)
  with pytest.raises(evaluate.EvalError, match="not a segmenter"):
    evaluate.run(c, tmp_path / "a")
  c = _config(run_dirs)
  c.evals.segmentation.labels = "dataset"
  with pytest.raises(evaluate.EvalError, match="has no label maps"):
    evaluate.run(c, tmp_path / "b")
  c = _config(run_dirs)
  c.task = "sr"   # denoising processors on x4 inputs: their outputs are not the canvas's size
  with pytest.raises(evaluate.EvalError, match="trained for denoise, the evaluation degrades by sr x4"):
    evaluate.run(c, tmp_path / "c")
  c = _config(run_dirs)
  c.evals.segmentation.data.photos = ()
  with pytest.raises(evaluate.EvalError, match="data.photos is empty"):
    evaluate.run(c, tmp_path / "d")
  c = _config(run_dirs)
  c.evals.segmentation.paired_metric = "dice"
  with pytest.raises(evaluate.EvalError, match="paired_metric"):
    evaluate.validate(c)   # refused before any evaluator runs
  c = _config(run_dirs)
  c.evals.segmentation.data.shape = (32, 32)
  with pytest.raises(evaluate.EvalError, match="Unknown segmentation data field.*shape"):
    evaluate.validate(c)


def test_fit_to_canvas_keeps_the_aspect_ratio_and_floors_the_size():
  img = np.zeros((300, 451, 3), np.uint8)
  assert segmentation_eval.fit_to_canvas(img, (32, 32)).shape == (21, 32, 3)   # floor(300 * 32 / 451) = 21
  assert segmentation_eval.fit_to_canvas(img, (300, 600)).shape == (300, 451, 3)
  per = segmentation_eval.per_image_scores(np.array([[[2, 0], [1, 1]], [[0, 0], [0, 0]]]))
  np.testing.assert_allclose(per["miou"][0], (2 / 3 + 1 / 2) / 2)   # IoU 2/3 and 1/2, by hand
  assert np.isnan(per["miou"][1])                                    # no labelled pixel: no score


ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_segmentation_eval_configs_name_the_paper_setting_and_validate(run_dirs):
  """configs/eval/cityscapes.py (Appendix G, Table 18) and photos_segmentation.py (selfie, meet on the
  test photos) build, their evaluators are segmentation ones whose sections validate, and with their
  processors pointing at finished runs the whole config validates."""
  cs = config_lib.load(f"{ROOT / 'configs/eval/cityscapes.py'}:task=sr,runs=R,imagenet_runs=I,weights=W")
  assert dict(cs.processors) == {"cs_plain": "R/cs_sr_plain", "cs_ra": "R/cs_sr_ra", "in_plain": "I/sr_plain",
                                 "in_ra": "I/sr_ra"}
  hrnet = cs.targets.hrnet_w48
  assert (hrnet.name, hrnet.weights, hrnet.num_classes, targets_lib.task_of(hrnet)) == (
      "hrnet_w48", "W/hrnet_w48_cityscapes.pth", 19, "segmentation")
  for name in ("appendix_g", "table18"):
    ev = cs.evals[name]
    assert ev.type == "segmentation" and ev.labels == "dataset" and ev.targets == ("hrnet_w48",)
    assert ev.data.split == "cityscapes:validation" and tuple(ev.data.size) == (1024, 2048)
    assert segmentation_eval.problems(ev, name) == []
  assert "table18" not in config_lib.load(f"{ROOT / 'configs/eval/cityscapes.py'}:imagenet_runs=").evals
  ph = config_lib.load(f"{ROOT / 'configs/eval/photos_segmentation.py'}:runs=D,task=denoise,modes=plain,ra")
  ev = ph.evals.segmentation
  assert ev.data.photos == photos.TEST and ev.labels == "recognizer" and ev.targets == ("selfie", "meet")
  assert [targets_lib.task_of(ph.targets[t]) for t in ev.targets] == ["segmentation"] * 2
  assert dict(ph.processors) == {"plain": "D/denoise/plain", "ra": "D/denoise/ra"}
  ph.processors.plain, ph.processors.ra = str(run_dirs["plain"]), str(run_dirs["ra_seg"])
  evaluate.validate(ph)
  with pytest.raises(config_lib.ConfigError, match="segmenters="):
    config_lib.load(f"{ROOT / 'configs/eval/photos_segmentation.py'}:segmenters=deeplab")
