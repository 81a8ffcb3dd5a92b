"""The offline demo: bundled photos as data, recognizer-made labels, and `python -m rajax.demo --quick`."""

import io
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from rajax import config as config_lib
from rajax.data import photos

import numpy_metrics

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_photo_split_is_by_photo():
  """Train, validation and test hold different photos, every photo of the pool is in one of them, and
  the three sources give exactly their own photos (validation and test: a grid of crops and mirrors)."""
  splits = {k: set(v) for k, v in photos.SPLITS.items()}
  assert sum(map(len, splits.values())) == len(set().union(*splits.values())) == 45
  assert (len(photos.TRAIN), len(photos.VALIDATION), len(photos.TEST)) == (23, 8, 14)
  # two frames of one scene stay together (in training)
  assert {"opencv-doc/basketball1.png", "opencv-doc/basketball2.png"} <= splits["train"]
  train = photos.PhotoSource("train", short_side=80, crop=64, repeats=3)
  assert len(train) == 3 * len(photos.TRAIN)
  assert {train[i]["photo"] for i in range(len(train))} == splits["train"]
  assert min(train[0]["image"].shape[:2]) == 80
  for split in ("validation", "test"):
    held = photos.PhotoSource(split, short_side=80, crop=64, grid=2)
    assert len(held) == 2 * 2 * 2 * len(photos.SPLITS[split])          # grid x grid crops and their mirrors
    assert {held[i]["photo"] for i in range(len(held))} == splits[split]
    for i in (0, len(held) - 1):
      e = held[i]
      assert e["image"].shape == (64, 64, 3) and e["image"].dtype == np.uint8 and e["label"] == photos.NO_LABEL
    # Crops i and i + grid^2 of a photo are mirror images.
    np.testing.assert_array_equal(held[0]["image"][:, ::-1], held[4]["image"])
    with pytest.raises(IndexError):
      held[len(held)]
  with pytest.raises(ValueError, match="split"):
    photos.PhotoSource("heldout")


def test_photos_config_evaluates_on_the_split_it_names():
  """data.eval_split picks the validation or the test photos; anything else is refused with the choices."""
  from rajax.data import pipeline
  c = config_lib.load(f"{ROOT}/configs/demo.py:task=denoise,mode=plain,quick=True,split=validation")
  assert c.data.eval_split == "validation"
  names = {e["photo"] for e in pipeline.make_source(c.data, c.data.eval_split)}
  assert names == set(photos.VALIDATION[:5])            # --quick: the first five photos of the split
  c.data.photos.names = ()
  assert {e["photo"] for e in pipeline.make_source(c.data, c.data.eval_split)} == set(photos.VALIDATION)
  assert not config_lib.load(f"{ROOT}/configs/demo.py:task=denoise,mode=plain").data.photos.names
  c = config_lib.load(f"{ROOT}/configs/demo.py:task=denoise,mode=plain,quick=True")
  assert {e["photo"] for e in pipeline.make_source(c.data, c.data.eval_split)} == set(photos.TEST[:5])
  c.data.eval_split = "heldout"
  with pytest.raises(config_lib.ConfigError, match="'validation'.*'test'"):
    config_lib.validate(c)
  with pytest.raises(ValueError, match="validation.*test"):
    pipeline.make_source(c.data, "heldout")


def test_photo_scales_give_each_photo_at_several_sizes():
  train = photos.PhotoSource("train", short_side=64, crop=64, repeats=2, scales=(1.0, 1.5))
  assert len(train) == 2 * 2 * len(photos.TRAIN)
  sides = {(train[i]["photo"], min(train[i]["image"].shape[:2])) for i in range(len(train))}
  assert sides == {(n, s) for n in photos.TRAIN for s in (64, 96)}
  held = photos.PhotoSource("test", short_side=64, crop=64, grid=2, scales=(1.25, 2.0))
  assert len(held) == 2 * 2 * 2 * 2 * len(photos.TEST)     # scales x grid x grid x mirror
  assert len({held[i]["image"].tobytes() for i in range(len(held))}) == len(held)   # all distinct crops
  with pytest.raises(ValueError, match="below crop"):
    photos.PhotoSource("train", short_side=64, crop=64, scales=(0.5, 1.0))
  with pytest.raises(ValueError, match="scales is empty"):
    photos.PhotoSource("train", scales=())


def test_every_photo_loads_as_rgb():
  for name in photos.TRAIN + photos.VALIDATION + photos.TEST:
    img = photos.photo(name)
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8 and min(img.shape[:2]) >= 256, name


def test_a_fetched_photo_that_is_missing_names_the_fetch_command(tmp_path, monkeypatch):
  from rajax import assets
  monkeypatch.setenv("RAJAX_ASSETS", str(tmp_path / "empty"))
  photos.photo.cache_clear()
  try:
    with pytest.raises(assets.AssetError, match="python -m rajax.assets fetch.*opencv-doc"):
      photos.photo("opencv-doc/apple.jpg")
  finally:
    photos.photo.cache_clear()
  with pytest.raises(ValueError, match="Unknown bundled photo 'nope'"):
    photos.photo("nope")


def test_demo_config_needs_recognizer_labels():
  c = config_lib.load(f"{ROOT}/configs/demo.py:task=denoise,mode=ra")
  config_lib.validate(c)
  assert c.labels == "recognizer" and c.recognizer.name == "mobilenet_v2" and c.recognizer.weights is None
  c.labels = "dataset"
  with pytest.raises(config_lib.ConfigError, match="labels"):
    config_lib.validate(c)
  with pytest.raises(config_lib.ConfigError, match="stage"):
    config_lib.load(f"{ROOT}/configs/demo.py:stage=warmup")


def _recomputed_quality(work: pathlib.Path, task: str, modes) -> dict:
  """{row: (PSNR, SSIM)} for the degraded input and each mode's processor on the task's held-out crops,
  measured in float64 NumPy; the inputs checked against their definitions (Pillow JPEG at quality 10 with
  4:2:0, or the clean crop plus 0.1 N(0, 1) from the per-crop generator default_rng([seed, index]))."""
  import jax
  from flax import serialization

  import rajax
  from rajax import demo
  config = demo.demo_config(task, "plain", True)
  batch, _ = demo._eval_batch(config)
  y8, x = batch["target"], batch["input"]
  y = y8.astype(np.float32) / np.float32(255)
  if task == "jpeg":
    def pillow(img):
      buf = io.BytesIO()
      Image.fromarray(img).save(buf, format="JPEG", quality=10, subsampling="4:2:0")
      return np.asarray(Image.open(buf).convert("RGB"))
    np.testing.assert_array_equal(x, np.stack([pillow(img) for img in y8]))
    x = x.astype(np.float32) / np.float32(255)
  else:
    noise = np.stack([np.random.default_rng([config.seed, i]).standard_normal(img.shape, dtype=np.float32)
                      for i, img in enumerate(y8)])
    np.testing.assert_allclose(x, np.clip(y + np.float32(0.1) * noise, 0, 1), rtol=0, atol=1e-7)
  out = {"input": x}
  p = config.processor
  net = rajax.processor(p.name, scale=1, blocks=p.blocks, channels=p.channels, input_skip=p.input_skip,
                        outer_kernel=p.outer_kernel)
  apply = jax.jit(lambda v, x: net.apply(v, x, train=False))
  for mode in modes:
    variables = serialization.msgpack_restore((work / task / mode / "processor.msgpack").read_bytes())
    out[mode] = np.clip(np.asarray(apply(variables, x)), 0.0, 1.0)
  return {row: (float(np.mean(numpy_metrics.psnr(img, y))), float(np.mean(numpy_metrics.ssim(img, y))))
          for row, img in out.items()}


@pytest.mark.parametrize("detection", [False, pytest.param(True, marks=pytest.mark.heavy)],
                         ids=["classification", "with_detection"])
def test_demo_quick_writes_report_results_and_figures(tmp_path, detection):
  """The main job end to end: every file, the results schema, the choice on validation photos as links,
  figures that can be recomputed (PSNR and SSIM of the denoising and JPEG rows, McNemar's p of every paired
  test, top-1 as a count of crops). (--quick says nothing about the effect.) CI runs it for JPEG alone
  without the detection and segmentation parts (the tasks differ only in their degradation, tested on
  their own); `-m heavy` runs the whole quick demo, the README's main job."""
  work = tmp_path / "demo"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  tasks = ("sr", "denoise", "jpeg") if detection else ("jpeg",)
  proc = subprocess.run([sys.executable, "-m", "rajax.demo", "--workdir", str(work), "--quick",
                         *([] if detection else ["--no-detection", "--no-segmentation", "--tasks", ",".join(tasks)])],
                        capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  # per task: pretrain, plain, one candidate each of RA and unsupervised RA, transformer; and CenterNet's run
  runs = 5 * len(tasks) + detection
  assert f"| {runs}/{runs} runs |" in proc.stdout and "[demo] done in" in proc.stdout
  det_run = lambda task: ["ra_centernet"] if detection and task == "sr" else []
  saved = json.loads((work / "results.json").read_text())
  results = saved["results"]
  assert set(results) == set(tasks)
  assert saved["test_crops"] == {t: 40 for t in tasks}   # 5 test photos x 2x2 grid x mirror
  modes = ("plain", "ra", "unsupervised", "transformer")
  # The choice on the validation photos: each gridded mode is a link to the candidate it kept.
  selection = saved["selection"]
  for task in results:
    assert set(selection[task]) == {"plain", "ra", "unsupervised", *det_run(task)}
    for mode in set(selection[task]) - {"plain"}:
      choice = selection[task][mode]
      assert os.readlink(work / task / mode) == choice["chosen"] and choice["chosen"] in choice["candidates"]
  if detection:
    assert selection["sr"]["ra_centernet"]["score"] == "centernet_map"
  for task, rows in results.items():
    assert set(rows) == {"input", *modes, *det_run(task), "clean"}, task
    crops = saved["test_crops"][task]
    for row, recs in rows.items():
      assert set(recs) == {"mobilenet_v2", "efficientnet_lite0"}
      for m in recs.values():
        assert set(m) == {"top1", "psnr", "ssim"}
        assert m["top1"] * crops == pytest.approx(round(m["top1"] * crops), abs=1e-9)   # agreeing crops / 40
        # PSNR and SSIM measure the images shown, the same for every recognizer's column
        assert (m["psnr"], m["ssim"]) == (recs["mobilenet_v2"]["psnr"], recs["mobilenet_v2"]["ssim"])
    for m in rows["clean"].values():   # labels are each recognizer's own top-1 on the clean crops
      assert m["top1"] == 1.0 and m["psnr"] == float("inf") and m["ssim"] == pytest.approx(1.0, abs=1e-6)
    if task != "sr":
      for row, (psnr, ssim) in _recomputed_quality(work, task, modes).items():
        m = rows[row]["mobilenet_v2"]
        assert m["psnr"] == pytest.approx(psnr, rel=1e-5), (task, row)
        assert m["ssim"] == pytest.approx(ssim, abs=2e-5), (task, row)
    paired = saved["paired_vs_plain"][task]
    assert set(paired) == {"ra", "unsupervised", "transformer", *det_run(task)}, task
    for mode, recs in paired.items():
      assert set(recs) == {"mobilenet_v2", "efficientnet_lite0"}
      for rname, test in recs.items():
        assert set(test) == {"gained", "lost", "p"}
        assert test["p"] == pytest.approx(numpy_metrics.mcnemar_p(test["gained"], test["lost"]), rel=1e-9)
        # the counts are consistent with the two top-1 figures: gained - lost = crops x difference
        diff = (rows[mode][rname]["top1"] - rows["plain"][rname]["top1"]) * crops
        assert test["gained"] - test["lost"] == round(diff), (task, mode, rname)
  report = (work / "report.md").read_text()
  assert "Quick mode" in report and "Which claims held" in report and "efficientnet_lite0" in report
  assert "McNemar" in report and "vs plain" in report and "Weights chosen on the validation photos" in report
  assert ("Transfer to detection" in report) == detection and ("detection" in saved) == detection
  assert ("Transfer to segmentation" in report) == detection and ("segmentation" in saved) == detection
  if detection:
    assert "CenterNet (a detector) as the loss" in report
    seg = saved["segmentation"]["sr"]
    assert [r["view"] for r in seg["rows"]] == ["input", "plain", "ra", "ra_centernet", "clean"]
    assert seg["rows"][-1]["selfie mIoU"] == 1.0 and seg["rows"][-1]["meet mIoU"] == 1.0
    assert [r["view"] for r in saved["detection"]["sr"]["rows"]] == ["input", "plain", "ra", "ra_centernet", "clean"]
  for name in ("top1.png", *(f"samples_{t}.png" for t in tasks)):
    with Image.open(work / name) as im:
      assert im.format == "PNG" and im.size[0] > 100, name
    assert f"({name})" in report
  for task in tasks:
    for run in ("pretrain", "plain", "ra", "unsupervised", "transformer", *det_run(task)):
      assert (work / task / run / "processor.msgpack").is_file(), (task, run)
      assert "rajax.train:" in (work / task / run / "train.log").read_text(), (task, run)
    assert (work / task / "transformer" / "transformer.msgpack").is_file()


FAKE_RUN = textwrap.dedent("""
    import os, pathlib, signal, sys, time
    d, rc, wait_s = pathlib.Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[5])
    peers, hold = [pathlib.Path(p) for p in sys.argv[3].split(",") if p], sys.argv[4] == "hold"
    d.mkdir(parents=True, exist_ok=True)

    def interrupted(*_):  # records each SIGINT; a second one within 0.5 s is recorded too
      with open(d / "signals", "a") as f:
        f.write("INT\\n")
      time.sleep(0.5)
      sys.exit(130)

    signal.signal(signal.SIGINT, interrupted)
    (d / "start").write_text(repr(time.time()))      # written once the handler is in place
    deadline = time.time() + wait_s
    while not all((p / "start").exists() for p in peers) and time.time() < deadline:
      time.sleep(0.02)
    (d / "met").write_text(str(all((p / "start").exists() for p in peers)))
    (d / "xla_flags").write_text(os.environ.get("XLA_FLAGS", ""))
    print("[train] step 1/1 | 5 img/s", flush=True)
    while hold and time.time() < deadline:           # until the demo interrupts it (bounded)
      time.sleep(0.02)
    time.sleep(0.1 if rc else 1.0)                   # long enough to overlap with the runs started with it
    (d / "end").write_text(repr(time.time()))
    sys.exit(rc)
""")


def _fake_runs(monkeypatch, tmp_path, fail=None, peers=None, hold=(), wait_s=120.0):
  """Replaces each demo training run by a short process that records its start and end times.

  fail: the (task, run) that exits with status 3. peers: {(task, run): [(task, run), ...]} runs that
  must have started before this one goes on (it waits at most wait_s, then writes met=False). hold: runs
  that wait for the demo's SIGINT (at most wait_s) instead of finishing.
  """
  from rajax import demo
  script = tmp_path / "fake_run.py"
  script.write_text(FAKE_RUN)

  def command(workdir, task, run, quick, train_args=(), **kwargs):
    wait = ",".join(str(workdir / t / r) for t, r in (peers or {}).get((task, run), ()))
    return [sys.executable, str(script), str(workdir / task / run), "3" if (task, run) == fail else "0", wait,
            "hold" if (task, run) in hold else "go", str(wait_s)]
  monkeypatch.setattr(demo, "run_command", command)
  return demo


def _times(workdir, runs):
  return {run: (float((workdir / run[0] / run[1] / "start").read_text()),
                float((workdir / run[0] / run[1] / "end").read_text())) for run in runs}


# The two pretrainings, the only runs ready at the start, each wait for the other to start: two runs at
# once. sr's also waits for a jpeg run to start, so it is still running when jpeg's pretraining has ended and
# a slot is free: an sr run started then would start before its own pretraining ended.
BOTH_PRETRAININGS = {("sr", "pretrain"): [("jpeg", "pretrain"), ("jpeg", "transformer")],
                     ("jpeg", "pretrain"): [("sr", "pretrain")]}


def test_demo_runs_pretraining_first_and_at_most_jobs_at_a_time(tmp_path, monkeypatch):
  """The runs of a task start once its pretraining has ended; two run at once (see BOTH_PRETRAININGS),
  never three (each run's own start and end times lie within the time its process ran)."""
  work = tmp_path / "work"
  demo = _fake_runs(monkeypatch, tmp_path, peers=BOTH_PRETRAININGS)
  demo.train_all(work, ["sr", "jpeg"], ["plain", "transformer"], quick=True, jobs=2, status_every=0.1)
  times = _times(work, [(t, r) for t in ("sr", "jpeg") for r in ("pretrain", "plain", "transformer")])
  for task in ("sr", "jpeg"):
    for mode in ("plain", "transformer"):
      assert times[(task, mode)][0] >= times[(task, "pretrain")][1], (task, mode)   # starts from the pretrained P
    assert (work / task / "pretrain" / "met").read_text() == "True", task
  events = sorted([(s, 1) for s, _ in times.values()] + [(e, -1) for _, e in times.values()])
  assert np.cumsum([d for _, d in events]).max() <= 2
  assert "[train] step 1/1" in (work / "sr" / "transformer" / "train.log").read_text()


def test_one_run_at_a_time_fails_the_concurrency_check(tmp_path, monkeypatch):
  """The check above fails for jobs=1: the first pretraining waits for the other in vain."""
  work = tmp_path / "work"
  demo = _fake_runs(monkeypatch, tmp_path, peers={("sr", "pretrain"): [("jpeg", "pretrain")],
                                                  ("jpeg", "pretrain"): [("sr", "pretrain")]}, wait_s=1.0)
  demo.train_all(work, ["sr", "jpeg"], [], quick=True, jobs=1, status_every=0.1)
  met = {t: (work / t / "pretrain" / "met").read_text() for t in ("sr", "jpeg")}
  assert sorted(met.values()) == ["False", "True"], met


@pytest.mark.parametrize("quick", [True, False])
def test_demo_quick_runs_compile_without_llvm_optimisation(tmp_path, monkeypatch, quick):
  """--quick trains for a few steps, so its runs trade LLVM's optimisation passes for compile time;
  the default runs keep them. The user's own XLA flags are passed on either way."""
  demo = _fake_runs(monkeypatch, tmp_path)
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
  demo.train_all(tmp_path / "work", ["sr"], ["plain"], quick=quick, jobs=2, status_every=0.1)
  for run in ("pretrain", "plain"):
    flags = (tmp_path / "work" / "sr" / run / "xla_flags").read_text().split()
    assert "--xla_cpu_enable_fast_math=false" in flags
    assert ("--xla_backend_optimization_level=0" in flags) == quick
  assert demo.quick_xla_flags("--xla_backend_optimization_level=2") == "--xla_backend_optimization_level=2"


def test_demo_stops_and_names_the_failed_run_with_its_log(tmp_path, monkeypatch):
  demo = _fake_runs(monkeypatch, tmp_path, fail=("sr", "pretrain"))
  with pytest.raises(RuntimeError, match=r"sr/pretrain failed \(exit status 3\)[\s\S]*train.log[\s\S]*rerun the demo"):
    demo.train_all(tmp_path / "work", ["sr"], ["plain", "ra"], quick=True, jobs=2)
  assert not (tmp_path / "work" / "sr" / "plain").exists()   # nothing started from a pretraining that failed


def test_demo_failure_stops_the_other_runs_with_one_sigint_each(tmp_path, monkeypatch):
  """rajax.train checkpoints on the first SIGINT and stops at once on a second: send exactly one.
  The failing run fails once the other has started (its handler in place); the other runs until
  the demo interrupts it."""
  work = tmp_path / "work"
  demo = _fake_runs(monkeypatch, tmp_path, fail=("jpeg", "pretrain"), hold={("sr", "pretrain")},
                    peers={("jpeg", "pretrain"): [("sr", "pretrain")]})
  with pytest.raises(RuntimeError, match="jpeg/pretrain failed"):
    demo.train_all(work, ["sr", "jpeg"], ["plain"], quick=True, jobs=2)
  assert (work / "jpeg" / "pretrain" / "met").read_text() == "True"
  assert (work / "sr" / "pretrain" / "signals").read_text() == "INT\n"
  assert not (work / "sr" / "pretrain" / "end").exists()


def test_claims_state_the_paired_test_and_the_psnr_budget():
  from rajax import demo
  from rajax.demo import report
  row = lambda top1, psnr: {r: {"top1": top1, "psnr": psnr, "ssim": 0.8} for r in demo.RECOGNIZERS}
  results = {"sr": {"plain": row(0.30, 26.0), "ra": row(0.35, 25.8)},
             "jpeg": {"plain": row(0.30, 26.0), "ra": row(0.31, 24.5)}}
  test = lambda g, l, p: {r: {"gained": g, "lost": l, "p": p} for r in demo.RECOGNIZERS}
  paired = {"sr": {"ra": test(30, 6, 6e-5)}, "jpeg": {"ra": test(10, 8, 0.81)}}
  lines = report.claims(results, paired)
  sr = next(l for l in lines if "super-resolution" in l)
  assert "30 crops gained, 6 lost" in sr and "p = 6e-05, significant" in sr and "claim holds" in sr
  jpeg = next(l for l in lines if "JPEG" in l)
  # RA is ahead by a point, but the PSNR cost is over 1 dB and the split is within chance
  assert "within chance" in jpeg and "claim does not hold" in jpeg
  # Ahead within the PSNR budget, but by no more than chance: not shown.
  results["jpeg"]["ra"] = row(0.31, 25.9)
  jpeg = next(l for l in report.claims(results, paired) if "JPEG" in l)
  assert "claim is not shown (RA is ahead by no more than chance)" in jpeg
  assert any("not independent" in l for l in report.claims(results, paired))
  without = report.claims(results)                                   # without paired tests: ahead is enough
  assert "crops gained" not in " ".join(without) and all("claim holds" in l for l in without if l.startswith("- "))



def test_transfer_words_follow_the_paired_test():
  """The unseen recognizer's gain "carries over" only when it is ahead beyond chance (p < 0.05)."""
  from rajax import demo
  from rajax.demo import report
  unseen = demo.RECOGNIZERS[1]
  row = lambda top1: {r: {"top1": top1, "psnr": 26.0, "ssim": 0.8} for r in demo.RECOGNIZERS}
  results = {"jpeg": {"plain": row(0.335), "ra": row(0.343)}}
  transfer = lambda p: next(l for l in report.claims(results, {"jpeg": {"ra": {
      r: {"gained": 12, "lost": 8, "p": p} for r in demo.RECOGNIZERS}}}) if unseen in l)
  assert "+0.8 points" in transfer(0.45) and "carried-over gain is not shown" in transfer(0.45)
  assert "the gain carries over" not in transfer(0.45)
  assert "the gain carries over" in transfer(0.01)
  results["jpeg"]["ra"] = row(0.33)
  assert "the gain does not carry over" in transfer(0.01)


def test_runs_on_a_fixed_processor_wait_for_the_plain_run_and_read_it(tmp_path):
  """A method that trains R on a fixed P (recognizer_on_processor) starts after its task's plain run,
  which the demo adds when it is not asked for, and is pointed at that run's processor."""
  from rajax import demo
  runs = demo.schedule(["sr"], ["recognizer_on_processor", "ra_joint"])
  assert runs[0] == ("sr", "pretrain") and ("sr", "plain") in runs
  assert demo.needs("recognizer_on_processor") == ("pretrain", "plain") and demo.needs("ra") == ("pretrain",)
  cmd = demo.run_command(tmp_path, "sr", "recognizer_on_processor", quick=True)
  assert f"--config.method.processor_weights={tmp_path / 'sr' / 'plain' / 'processor.msgpack'}" in cmd
  assert not any(c.startswith("--config.init_processor") for c in cmd)   # it trains no P
  cmd = demo.run_command(tmp_path, "sr", "ra_joint", quick=True)
  assert f"--config.init_processor={tmp_path / 'sr' / 'pretrain' / 'processor.msgpack'}" in cmd
  assert not any("processor_weights" in c for c in cmd)
  # The longest runs start first: more trained networks, then more networks in all.
  order = [m for _, m in demo.schedule(["sr"], list(demo.DEFAULT_MODES))]
  assert order[0] == "pretrain" and order[1] == "transformer" and order[-1] == "plain"
  # The detection run (CenterNet's forward and backward at 512 x 512) is the longest: it starts first.
  order = [m for _, m in demo.schedule(["sr", "jpeg"], list(demo.DEFAULT_MODES), detection=True)]
  assert order[2:4] == ["ra_centernet_lam3e-4", "ra_centernet_lam3e-3"]
  assert not any(m.startswith("ra_centernet") for t, m in demo.schedule(["jpeg"], ["ra"], detection=True))


def test_weight_grid_runs_are_named_and_trained_at_their_weight(tmp_path):
  """Each gridded mode stands for one run per weight, `<mode>_lam<v>`, trained at exactly that weight
  (the config the command loads has it); the detection run trains with CenterNet as R."""
  from rajax import demo
  assert [demo.lam_tag(v) for v in (1e-4, 3e-4, 2.5e-4, 1.0, 10.0)] == ["1e-4", "3e-4", "2p5e-4", "1e0", "1e1"]
  assert demo.candidates("ra", quick=False) == ["ra_lam1e-4", "ra_lam3e-4", "ra_lam1e-3"]
  assert demo.candidates("ra", quick=True) == ["ra_lam1e-4"] and demo.candidates("transformer", False) == []
  assert demo.task_runs("sr", ["plain", "unsupervised", "transformer"], quick=False) == [
      "plain", "unsupervised_lam1e0", "unsupervised_lam1e1", "transformer"]
  for run, lam, rec in (("ra_lam2p5e-4", 2.5e-4, "mobilenet_v2"), ("unsupervised_lam1e1", 10.0, "mobilenet_v2"),
                        ("ra_centernet_lam3e-3", 3e-3, "centernet_mobilenetv3")):
    cmd = demo.run_command(tmp_path, "sr", run, quick=True, train_args=["--config.seed=3"])
    assert cmd[-1] == "--config.seed=3" and cmd[cmd.index("--workdir") + 1] == str(tmp_path / "sr" / run)
    c = config_lib.load(cmd[cmd.index("--config") + 1])
    assert c.method.lam == lam and c.recognizer.name == rec, run
  c = config_lib.load(demo.run_command(tmp_path, "sr", "ra_centernet_lam3e-4", quick=False)[4])
  assert c.data.detection.size == (192, 192) and c.recognizer.num_classes is None and c.labels == "recognizer"
  assert demo.title("ra_lam3e-4") == "RA, lambda 0.0003" and "CenterNet" in demo.title("ra_centernet")


def test_choice_keeps_the_best_candidate_within_the_psnr_budget():
  from rajax import demo
  rows = [{"top1": 0.30, "psnr": 25.0}, {"top1": 0.34, "psnr": 24.5}, {"top1": 0.40, "psnr": 23.9}]
  assert demo.choose(rows, plain_psnr=25.0, score="top1") == (1, True)     # the third is 1.1 dB below plain
  assert demo.choose(rows, plain_psnr=24.8, score="top1") == (2, True)
  assert demo.choose(rows, plain_psnr=30.0, score="top1") == (0, False)    # none within 1 dB: the smallest weight
  tie = [{"top1": 0.34, "psnr": 25.0}, {"top1": 0.34, "psnr": 25.0}]
  assert demo.choose(tie, plain_psnr=25.0, score="top1") == (0, True)     # a tie keeps the smaller weight


def test_select_links_each_mode_to_the_run_chosen_on_validation_photos(tmp_path, monkeypatch):
  """select reads the validation table only (never the test photos), links WORKDIR/<task>/<mode> to the
  chosen candidate (replacing an older link) and writes selection.json; a real directory in the
  link's place is refused."""
  from rajax import demo, evaluate
  seen = []

  class Table:
    def __init__(self, rows):
      self.rows = rows

  def run(config, where, only):
    seen.append((config.data.split, tuple(config.targets), tuple(config.evals.accuracy.processors)))
    top1 = {"plain": 0.30, "ra_lam1e-4": 0.31, "ra_lam3e-4": 0.36, "ra_lam1e-3": 0.40}
    psnr = {"plain": 25.0, "ra_lam1e-4": 25.0, "ra_lam3e-4": 24.9, "ra_lam1e-3": 23.0}
    return {"accuracy": Table([{"view": v, "mobilenet_v2 top-1": top1[v], "PSNR": psnr[v], "SSIM": 0.8}
                               for v in top1])}
  monkeypatch.setattr(evaluate, "run", run)
  work = tmp_path / "w"
  for r in ("plain", "ra_lam1e-4", "ra_lam3e-4", "ra_lam1e-3"):
    (work / "sr" / r).mkdir(parents=True)
  (work / "sr" / "ra").symlink_to("ra_lam1e-4")                       # a resumed demo's older choice
  chosen = demo.select(work, ["sr"], ["plain", "ra"], quick=False)
  assert seen == [("validation", ("mobilenet_v2",), ("plain", "ra_lam1e-4", "ra_lam3e-4", "ra_lam1e-3"))]
  assert chosen["sr"]["ra"]["chosen"] == "ra_lam3e-4" and chosen["sr"]["ra"]["lam"] == 3e-4
  assert os.readlink(work / "sr" / "ra") == "ra_lam3e-4"
  assert json.loads((work / "selection.json").read_text()) == chosen
  (work / "sr" / "ra").unlink()
  (work / "sr" / "ra").mkdir()
  with pytest.raises(RuntimeError, match="run directory.*new --workdir"):
    demo.select(work, ["sr"], ["plain", "ra"], quick=False)

# ==================================================================== task transfer to detection (--detection)

def _toy_detection_config(monkeypatch, work):
  """configs/eval/photos_detection.py as the demo loads it, with two toy detectors (tests/toy_detector.py)
  in place of CenterNet and NanoDet, three photos in a 32 x 32 canvas."""
  import ml_collections

  from rajax import evaluate
  from rajax.demo import detection as detection_demo
  from rajax.detection import zoo
  monkeypatch.setattr(zoo, "_FAMILIES", (*zoo._FAMILIES, "toy_detector"))
  load = detection_demo.eval_config

  def toy(workdir, task, modes, quick, **kwargs):
    c = load(workdir, task, modes, quick, **kwargs)
    for i, name in enumerate(("centernet", "nanodet")):
      c.targets[name] = evaluate.detector("toy_detector", "random", num_classes=3)
      c.targets[name].seed = i
    c.evals.detection.data = ml_collections.ConfigDict(dict(source="photos", photos=("coffee", "chelsea", "rocket"),
                                                            size=(32, 32), max_boxes=8))
    c.evals.detection.score_threshold = 0.5
    c.evals.detection.figures = 1
    return c

  monkeypatch.setattr(detection_demo, "eval_config", toy)


def test_detection_transfer_section_reports_the_evaluators_cells_and_sign_tests(tmp_path, monkeypatch):
  """rajax.demo.detection on demo-layout runs (WORKDIR/<task>/<mode>): the report's section holds the
  detection table's mAP cells and "vs plain" counts, each McNemar/sign-test p recomputed, the figures copied."""
  import jax
  import jax.numpy as jnp
  from flax import serialization

  from rajax import networks
  from rajax.demo import detection as detection_demo
  work = tmp_path / "demo"
  for k, mode in enumerate(("plain", "ra")):
    c = config_lib.load(f"{ROOT / 'configs/demo.py'}:task=denoise,mode={mode},quick=True")
    d = work / "denoise" / mode
    d.mkdir(parents=True)
    (d / "config.json").write_text(c.to_json_best_effort(indent=2))
    net = networks.module(c, "processor")
    v = jax.device_get(net.init(jax.random.key(k), jnp.zeros((1, 8, 8, 3)), train=False))
    v["params"]["tail"]["kernel"] = 0.3 * np.random.default_rng(k).standard_normal(v["params"]["tail"]["kernel"].shape,
                                                                                     np.float32)
    (d / "processor.msgpack").write_bytes(serialization.msgpack_serialize(v))
  _toy_detection_config(monkeypatch, work)
  det = detection_demo.evaluate_detection(work, ["denoise"], ["plain", "ra"], quick=True)
  table = det["denoise"]
  assert [r["view"] for r in table["rows"]] == ["input", "plain", "ra", "clean"]
  assert table["figures"] == ["detection_denoise_0.png"] and (work / "detection_denoise_0.png").is_file()
  saved = json.loads((work / "eval" / "detection_denoise" / "detection.json").read_text())
  lines = "\n".join(detection_demo.report_lines(det))
  assert "Transfer to detection" in lines and "sign test" in lines
  for r, s in zip(table["rows"], saved["rows"]):
    for d in ("centernet", "nanodet"):
      assert r[f"{d} VOC07 mAP"] == s[f"{d} VOC07 mAP"]
      assert f"{100 * s[f'{d} VOC07 mAP']:.1f} / {100 * s[f'{d} COCO mAP']:.1f}" in lines
  for d, test in table["extra"]["paired_vs_plain"]["ra"].items():
    assert test["p"] == pytest.approx(numpy_metrics.mcnemar_p(test["gained"], test["lost"]), rel=1e-9)
    boxes = table["extra"]["paired_boxes_vs_plain"]["ra"][d]
    assert boxes["p"] == pytest.approx(numpy_metrics.mcnemar_p(boxes["gained"], boxes["lost"]), rel=1e-9)
    assert f"photos +{test['gained']}/-{test['lost']}, p = {test['p']:.2g}; boxes +{boxes['gained']}/-{boxes['lost']}" in lines
  clean = table["rows"][-1]
  assert clean["centernet VOC07 mAP"] == 1.0 and clean["nanodet recovered"] == 1.0
  assert "RA vs plain on detectors" in lines


@pytest.mark.parametrize("flags", [[], ["--no-detection"]])
def test_demo_refuses_to_start_without_the_fetched_assets(tmp_path, monkeypatch, capsys, flags):
  """The demo checks the fetched photos (and, with the detection part, the detectors' graphs) before any
  training, naming the fetch command."""
  from rajax import demo
  from rajax.data import photos
  monkeypatch.setenv("RAJAX_ASSETS", str(tmp_path / "empty"))
  photos.photo.cache_clear()
  with pytest.raises(SystemExit) as e:
    demo.main(["--workdir", str(tmp_path / "w"), "--quick", *flags])
  assert e.value.code == 2 and "python -m rajax.assets fetch" in capsys.readouterr().err
  assert not (tmp_path / "w").exists()   # nothing trained


# ==================================================================== task transfer to segmentation

def test_segmentation_transfer_section_reports_the_evaluators_cells_and_sign_tests(tmp_path, monkeypatch):
  """rajax.demo.segmentation on demo-layout runs: the report's section holds the segmentation table's mIoU
  cells and "vs plain" sign tests (p recomputed), the figures copied; toy segmenters stand in for selfie
  and meet (tests/toy_segmenter.py), three photos in a 32 x 32 canvas."""
  import jax
  import jax.numpy as jnp
  import ml_collections
  from flax import serialization

  from rajax import evaluate, networks
  from rajax.demo import segmentation as segmentation_demo
  from rajax.segmentation import zoo
  monkeypatch.setattr(zoo, "_FAMILIES", (*zoo._FAMILIES, "toy_segmenter"))
  work = tmp_path / "demo"
  for k, mode in enumerate(("plain", "ra")):
    c = config_lib.load(f"{ROOT / 'configs/demo.py'}:task=denoise,mode={mode},quick=True")
    d = work / "denoise" / mode
    d.mkdir(parents=True)
    (d / "config.json").write_text(c.to_json_best_effort(indent=2))
    net = networks.module(c, "processor")
    v = jax.device_get(net.init(jax.random.key(k), jnp.zeros((1, 8, 8, 3)), train=False))
    v["params"]["tail"]["kernel"] = 0.3 * np.random.default_rng(k).standard_normal(v["params"]["tail"]["kernel"].shape,
                                                                                     np.float32)
    (d / "processor.msgpack").write_bytes(serialization.msgpack_serialize(v))
  load = segmentation_demo.eval_config

  def toy(workdir, task, modes, quick):
    c = load(workdir, task, modes, quick)
    for i, name in enumerate(segmentation_demo.SEGMENTERS):
      c.targets[name] = evaluate.segmenter("toy_segmenter", "random", num_classes=2)
      c.targets[name].seed = i
    c.evals.segmentation.data = ml_collections.ConfigDict(dict(source="photos", photos=("coffee", "chelsea", "rocket"),
                                                               size=(32, 32)))
    c.evals.segmentation.figures = 1
    return c

  monkeypatch.setattr(segmentation_demo, "eval_config", toy)
  seg = segmentation_demo.evaluate_segmentation(work, ["denoise"], ["plain", "ra"], quick=True)
  table = seg["denoise"]
  assert [r["view"] for r in table["rows"]] == ["input", "plain", "ra", "clean"]
  assert table["figures"] and all((work / f).is_file() for f in table["figures"])
  lines = "\n".join(segmentation_demo.report_lines(seg))
  assert "Transfer to segmentation" in lines and "sign test" in lines
  saved = json.loads((work / "eval" / "segmentation_denoise" / "segmentation.json").read_text())
  rows = {l.split(" | ")[0][2:]: l.split(" | ")[1:] for l in lines.splitlines() if l.startswith("| ")}
  for r, s in zip(table["rows"], saved["rows"]):
    cells = rows[demo_title(r["view"])]
    for i, name in enumerate(segmentation_demo.SEGMENTERS):   # the evaluator's own cells, to the report
      assert r[f"{name} mIoU"] == s[f"{name} mIoU"]
      assert cells[3 * i] == f"{100 * s[f'{name} mIoU']:.1f}" and cells[3 * i + 1] == f"{100 * s[f'{name} pixel acc']:.1f}"
  for name, test in table["paired"]["ra"].items():
    assert test["p"] == pytest.approx(numpy_metrics.mcnemar_p(test["gained"], test["lost"]), rel=1e-9)
    assert f"photos +{test['gained']}/-{test['lost']}, p = {test['p']:.2g}" in lines
  clean = table["rows"][-1]
  assert all(clean[f"{n} mIoU"] == 1.0 for n in segmentation_demo.SEGMENTERS)
  assert "RA vs plain on person segmenters" in lines


def demo_title(view):
  from rajax import demo
  return demo.title(view)
