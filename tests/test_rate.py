"""The rate-accuracy evaluator (rajax.evaluate.rate) and coded views: every cell recomputed on the host
from the real codec's files, NPP's P at the target codec's own quality axis, BD-rates from the curves."""

import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn

import rajax
import toy_detector  # noqa: F401 - registers the toy detector family
from rajax import codecs, evaluate, metrics, networks, runs
from rajax import config as config_lib
from rajax import weights as weights_lib
from rajax.detection import zoo
from rajax.evaluate import context as context_lib
from rajax.evaluate import detection as detection_eval
from rajax.evaluate import rate as rate_lib
from rajax.tasks import detection as det_task

E = ml_collections.ConfigDict
CROP = 32
SWEEPS = {"jpeg": (10, 30, 50, 75), "webp": (5, 25, 50, 85)}
CLASSES = 12


class _Linear(nn.Module):
  """A linear classifier on raw pixels: its top-1 moves with small changes of the image."""

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    logits = nn.Dense(CLASSES, kernel_init=nn.initializers.normal(0.05))(x.reshape(x.shape[0], -1))
    return (logits, {}) if features else logits


@pytest.fixture(scope="module")
def linear():
  module = _Linear()
  return rajax.Recognizer("linear", module, module.init(jax.random.key(3), jnp.zeros((1, CROP, CROP, 3))))


def _npp_config(proxy: str) -> ml_collections.ConfigDict:
  c = config_lib.base(task="codec", method="npp", recognizer="resnet18")
  c.processor = E(dict(name="npp", adaptive=True, channels=(4, 4, 8, 8, 8)))
  c.codec.update(dict(N=8, M=12))
  c.recognizer.update(dict(num_classes=10, width=4))
  c.recognizer.weights = "random"
  c.data.update(dict(source="synthetic", crop=CROP, resize=0))
  c.method.update(dict(codec="jpeg", pairs=((30, 2.0), (75, 0.5)), quality=30, codec_weights=proxy))
  return c


@pytest.fixture(scope="module")
def npp_run(tmp_path_factory):
  """A finished NPP run: a tiny adaptive P whose quality layers matter (random last layers, so each
  quality gives another P) and whose output is near its input (the 1x1 branch passes x through)."""
  root = tmp_path_factory.mktemp("npp")
  c = _npp_config(str(root / "codec.msgpack"))
  net = networks.module(c, "processor")
  variables = jax.device_get(jax.jit(lambda k: net.init(k, jnp.zeros((1, CROP, CROP, 3)), **net.init_kwargs(1)))(
      jax.random.key(0)))
  rng = np.random.default_rng(0)
  p = variables["params"]
  for name in list(p):
    if name.startswith("scale_"):
      p[name]["fc2"]["kernel"] = rng.uniform(0.0, 2.0, p[name]["fc2"]["kernel"].shape).astype(np.float32)
  p["branch_conv1"]["kernel"] = np.eye(3, dtype=np.float32).reshape(1, 1, 3, 3)
  p["branch_conv2"]["kernel"] = np.eye(3, dtype=np.float32).reshape(1, 1, 3, 3)
  for conv in ("branch_conv1", "branch_conv2"):
    p[conv]["bias"] = np.zeros(3, np.float32)
  p["head_out"]["kernel"] = 0.05 * rng.standard_normal(p["head_out"]["kernel"].shape).astype(np.float32)
  run = root / "npp"
  run.mkdir()
  (run / "config.json").write_text(c.to_json_best_effort(indent=2))
  weights_lib.save(run / "processor.msgpack", variables)
  return run


def _config(npp_run: pathlib.Path, *, detection: bool = False) -> ml_collections.ConfigDict:
  c = evaluate.base_config(task="codec")
  c.labels = "recognizer"
  c.data.update(dict(source="photos", split="test", resize=0, crop=CROP, threads=2))
  c.data.photos.update(dict(short_side=CROP, grid=1, eval_scales=(1.5,), names=("chelsea", "coffee", "rocket")))
  c.batch_size = 8   # 3 photos x 1 crop x 2 (mirror) = 6 crops, padded to a batch over the 8 devices
  c.processors.npp = str(npp_run)
  c.evals.rate = E(dict(type="rate_accuracy", processors=("npp",), codecs=E({k: v for k, v in SWEEPS.items()}),
                        targets=("linear",)))
  if detection:
    c.targets.toy = evaluate.detector("toy_detector", "random", num_classes=3)
    c.evals.rate_det = E(dict(type="rate_accuracy", processors=("npp",), codecs=("jpeg",), targets=(),
                              detection=E(dict(targets=("toy",), labels="recognizer", score_threshold=0.5,
                                               data=E(dict(source="photos", photos=("chelsea", "coffee"),
                                                           size=(32, 32), max_boxes=8, batch_size=8))))))
  return c


def _crops(config) -> np.ndarray:
  """The evaluation's clean crops, uint8 [N, H, W, 3], in example order."""
  ctx = context_lib.Context(config, "/tmp/unused")
  out = []
  for batch, rows in ctx.batches(ctx.main):
    out.append(np.asarray(batch["target"])[rows >= 0])
  return np.concatenate(out)


def _p(run_dir, x: np.ndarray, codec: str, q: int) -> np.ndarray:
  """NPP's P on float images at `codec`'s normalised quality `q`, as the 8-bit image the codec reads."""
  run = runs.load(run_dir)
  v = run.variables["processor"]
  qn = jnp.full((len(x),), codecs.get(codec).normalise(q), jnp.float32)
  pre = run.modules["processor"].apply(v, jnp.asarray(x), train=False, quality=qn)
  return np.asarray(codecs.quantize_uint8(pre))


def _psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  mse = np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2, axis=(1, 2, 3))
  return 10 * np.log10(1.0 / mse)


def test_coded_view_names_round_trip_and_refuse_bad_codecs():
  assert context_lib.coded_view("npp", "jpeg", 30) == "npp+jpeg@30"
  assert context_lib.parse_coded("npp+jpeg@30") == ("npp", "jpeg", 30)
  assert context_lib.parse_coded("clean+hevc@41") == ("clean", "hevc", 41)
  for plain in ("clean", "input", "ra", "ra_lam1e-3"):
    assert context_lib.parse_coded(plain) is None
  with pytest.raises(ValueError, match="out of range"):
    context_lib.coded_view("clean", "jpeg", 99)
  with pytest.raises(ValueError, match="Unknown codec"):
    context_lib.coded_view("clean", "png", 3)


def test_a_saved_network_section_replaces_the_default_architecture(npp_run):
  config = runs.read_config(npp_run)
  assert config.processor.name == "npp" and "blocks" not in config.processor
  assert tuple(config.processor.channels) == (4, 4, 8, 8, 8)


def test_rate_table_cells_equal_the_real_codec_on_the_host(npp_run, linear, tmp_path):
  config = _config(npp_run)
  tables = evaluate.run(config, tmp_path, targets={"linear": linear})
  table = tables["rate"]
  crops = _crops(config)
  assert len(crops) == 6
  h, w = crops.shape[1:3]
  predict = jax.jit(lambda x: jnp.argmax(linear(x), -1))
  labels = np.asarray(predict(jnp.asarray(crops, jnp.float32) / 255))
  rows = {(r["codec"], r["processing"], r["quality"]): r for r in table.rows}
  assert len(rows) == 2 * sum(len(q) for q in SWEEPS.values())
  for codec, qualities in SWEEPS.items():
    for q in qualities:
      for processing in ("codec alone", "npp"):
        coded = crops if processing == "codec alone" else _p(npp_run, crops / 255.0, codec, q)
        decoded, bits = codecs.roundtrip_batch(codec, coded, q)
        row = rows[(codec, processing, q)]
        np.testing.assert_allclose(row["bpp"], np.mean(bits) / (h * w), rtol=1e-6)
        np.testing.assert_allclose(row["PSNR"], np.mean(_psnr(decoded, crops)), rtol=1e-4)
        top1 = np.mean(np.asarray(predict(jnp.asarray(decoded, jnp.float32) / 255)) == labels)
        assert row["linear top-1"] == pytest.approx(top1), (codec, processing, q)
  # P read the row's quality (negative control: P at its training quality, JPEG 30, then WebP 85)
  wrong = _p(npp_run, crops / 255.0, "jpeg", 30)
  _, bits_wrong = codecs.roundtrip_batch("webp", wrong, 85)
  assert np.mean(bits_wrong) / (h * w) != pytest.approx(rows[("webp", "npp", 85)]["bpp"], rel=1e-3)

  # BD-rates from the table's own curves
  bd = {(r["processing"], r["codec"]): r for r in table.extra["bd"]}
  for codec in SWEEPS:
    anchor = [r for r in table.rows if r["codec"] == codec and r["processing"] == "codec alone"]
    test = [r for r in table.rows if r["codec"] == codec and r["processing"] == "npp"]
    row = bd[("npp", codec)]
    assert row["codec in training"] == ("yes" if codec == "jpeg" else "no")
    try:
      expected = metrics.bd_rate([r["bpp"] for r in anchor], [r["PSNR"] for r in anchor], [r["bpp"] for r in test],
                                 [r["PSNR"] for r in test], method="pchip")
    except ValueError:
      expected = float("nan")
    np.testing.assert_allclose(row["PSNR BD-rate"], expected, rtol=1e-9, equal_nan=True)
    try:
      acc = metrics.bd_rate([r["bpp"] for r in anchor], [100 * r["linear top-1"] for r in anchor],
                            [r["bpp"] for r in test], [100 * r["linear top-1"] for r in test], method="mpeg_vcm")
    except ValueError:
      acc = float("nan")
    np.testing.assert_allclose(row["linear BD-rate"], acc, rtol=1e-9, equal_nan=True)
  assert (tmp_path / "rate_curves.png").stat().st_size > 0
  assert (tmp_path / "rate_bd.md").read_text().count("| npp |") == len(SWEEPS)
  # rerun: every record from the cache
  again = evaluate.run(config, tmp_path, targets={"linear": linear})
  assert again.stats["computed"] == 0
  assert again["rate"].rows == table.rows


def test_detection_rates_count_each_images_own_pixels(npp_run, linear, tmp_path, monkeypatch):
  monkeypatch.setattr(zoo, "_FAMILIES", (*zoo._FAMILIES, "toy_detector"))
  config = _config(npp_run, detection=True)
  table = evaluate.run(config, tmp_path, targets={"linear": linear}, only=["rate_det"])["rate_det"]
  ctx = context_lib.Context(config, tmp_path / "scratch")
  data = detection_eval._data(ctx, config.evals.rate_det.detection)
  canvases, sizes = [], []
  for batch, rows in detection_eval._batches(ctx, data):
    keep = rows >= 0
    canvases.append(np.asarray(batch["target"])[keep])
    sizes.append(np.asarray(batch["image_size"])[keep])
  canvas, size = np.concatenate(canvases), np.concatenate(sizes)
  assert np.any(size.prod(-1) < 32 * 32)   # some photo does not fill its canvas: the rate is per own pixel
  det = rajax.recognizer("toy_detector", "random", num_classes=3, seed=config.seed)
  ref, _ = det_task.pseudo_targets(det(jnp.asarray(canvas, jnp.float32) / 255), score_threshold=0.5, max_boxes=8)
  for r in table.rows:
    coded = canvas if r["processing"] == "codec alone" else _p(npp_run, canvas / 255.0, "jpeg", r["quality"])
    decoded, bits = codecs.roundtrip_batch("jpeg", coded, r["quality"])
    np.testing.assert_allclose(r["bpp"], np.mean(bits / size.prod(-1)), rtol=1e-6)
    ev = det_task.Evaluator.for_detector(det, coco=False)
    ev.add(det(jnp.asarray(decoded, jnp.float32) / 255), ref)
    assert r["toy VOC07 mAP"] == pytest.approx(ev.result()["voc07_map11"], abs=1e-9), r
  bd = table.extra["bd"]
  assert [r["codec"] for r in bd] == ["jpeg"] and "PSNR BD-rate" not in bd[0]


def test_bad_rate_sections_are_refused_naming_the_fix(npp_run):
  config = _config(npp_run)
  config.evals.rate.codecs = E(dict(jpeg=(10, 30, 50)))
  with pytest.raises(evaluate.EvalError, match="3 distinct qualities; a BD-rate needs at least 4"):
    evaluate.validate(config)
  config.evals.rate.codecs = E(dict(jpeg=(10, 30, 50, 99)))
  with pytest.raises(evaluate.EvalError, match="out of range"):
    evaluate.validate(config)
  config.evals.rate.codecs = E(dict(jpeg=(10, 30, 50, 75), png=(1, 2, 3, 4)))
  with pytest.raises(evaluate.EvalError, match="'png', not one of jpeg, webp, avif, hevc"):
    evaluate.validate(config)
  config.evals.rate.codecs = E(dict(jpeg=(10, 30, 50, 75)))
  config.evals.rate.bd_method = "linear"
  with pytest.raises(evaluate.EvalError, match="bd_method='linear' is not one of"):
    evaluate.validate(config)


def test_sweeps_order_each_codec_from_the_lowest_rate():
  cfg = E(dict(codecs=E(dict(hevc=(28, 41, 34, 37), jpeg=(75, 10, 30, 50)))))
  assert rate_lib.sweeps(cfg, "r") == {"hevc": (41, 37, 34, 28), "jpeg": (10, 30, 50, 75)}
  assert rate_lib.sweeps(E(dict(codecs=("webp",))), "r") == {"webp": codecs.get("webp").sweep}


def test_npp_demo_stages_start_from_what_they_need(tmp_path):
  from rajax.demo import npp as npp_demo
  cmds = {s: npp_demo.command(tmp_path, s, quick=True) for s in npp_demo.STAGES}
  assert not any("init_" in a or "codec_weights" in a for a in cmds["proxy_rd"])
  assert f"--config.init_codec={tmp_path / 'proxy_rd' / 'codec.msgpack'}" in cmds["proxy_codec"]
  assert not any("init_processor" in a for a in cmds["fixed"])   # P starts at the identity
  assert f"--config.init_processor={tmp_path / 'fixed' / 'processor.msgpack'}" in cmds["adaptive"]
  for s in ("fixed", "adaptive"):
    assert f"--config.method.codec_weights={tmp_path / 'proxy_codec' / 'codec.msgpack'}" in cmds[s]
  # every stage waits for the files it reads
  for stage, cmd in cmds.items():
    for arg in cmd:
      for other in npp_demo.STAGES:
        if f"/{other}/" in arg and other != stage:
          assert other in npp_demo.NEEDS[stage], (stage, other)
  for stage in npp_demo.STAGES:   # the configs validate
    c = config_lib.load(f"{npp_demo.CONFIG}:stage={stage}")
    config_lib.validate(c)
    assert c.processor.identity_init
  lines = npp_demo.claim_lines({"bd": [{"processing": "npp", "codec": "webp", "codec in training": "no",
                                        "mobilenet_v2 BD-rate": -12.5, "efficientnet_lite0 BD-rate": float("nan"),
                                        "PSNR BD-rate": 8.0}]})
  assert lines[0].startswith("NPP + webp read by mobilenet_v2 (unseen codec, loss recognizer): saves 12.5%")
  assert "no BD-rate" in lines[1] and "unseen recognizer" in lines[1]
