"""The offline demo: bundled photos as data, recognizer-made labels, and `python -m rajax.demo --quick`."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rajax import config as config_lib
from rajax.data import photos

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_photo_split_is_by_photo():
  assert not set(photos.TRAIN) & set(photos.HELDOUT)
  train = photos.PhotoSource("train", short_side=80, crop=64, repeats=3)
  held = photos.PhotoSource("heldout", short_side=80, crop=64, grid=2)
  assert len(train) == 3 * len(photos.TRAIN)
  assert len(held) == 2 * 2 * 2 * len(photos.HELDOUT)          # grid x grid crops and their mirrors
  assert {train[i]["photo"] for i in range(len(train))} == set(photos.TRAIN)
  assert {held[i]["photo"] for i in range(len(held))} == set(photos.HELDOUT)
  for i in (0, len(held) - 1):
    e = held[i]
    assert e["image"].shape == (64, 64, 3) and e["image"].dtype == np.uint8 and e["label"] == photos.NO_LABEL
  assert min(train[0]["image"].shape[:2]) == 80
  # Crops i and i + grid^2 of a photo are mirror images.
  np.testing.assert_array_equal(held[0]["image"][:, ::-1], held[4]["image"])
  with pytest.raises(IndexError):
    held[len(held)]
  with pytest.raises(ValueError, match="split"):
    photos.PhotoSource("test")


def test_photo_scales_give_each_photo_at_several_sizes():
  train = photos.PhotoSource("train", short_side=64, crop=64, repeats=2, scales=(1.0, 1.5))
  assert len(train) == 2 * 2 * len(photos.TRAIN)
  sides = {(train[i]["photo"], min(train[i]["image"].shape[:2])) for i in range(len(train))}
  assert sides == {(n, s) for n in photos.TRAIN for s in (64, 96)}
  held = photos.PhotoSource("heldout", short_side=64, crop=64, grid=2, scales=(1.25, 2.0))
  assert len(held) == 2 * 2 * 2 * 2 * len(photos.HELDOUT)     # scales x grid x grid x mirror
  assert len({held[i]["image"].tobytes() for i in range(len(held))}) == len(held)   # all distinct crops
  with pytest.raises(ValueError, match="below crop"):
    photos.PhotoSource("train", short_side=64, crop=64, scales=(0.5, 1.0))
  with pytest.raises(ValueError, match="scales is empty"):
    photos.PhotoSource("train", scales=())


def test_every_bundled_photo_loads_as_rgb():
  for name in photos.TRAIN + photos.HELDOUT:
    img = photos.photo(name)
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8 and min(img.shape[:2]) >= 256, name


def test_demo_config_needs_recognizer_labels():
  c = config_lib.load(f"{ROOT}/configs/demo.py:task=denoise,mode=ra")
  config_lib.validate(c)
  assert c.labels == "recognizer" and c.recognizer.name == "mobilenet_v2" and c.recognizer.weights is None
  c.labels = "dataset"
  with pytest.raises(config_lib.ConfigError, match="labels"):
    config_lib.validate(c)
  with pytest.raises(config_lib.ConfigError, match="stage"):
    config_lib.load(f"{ROOT}/configs/demo.py:stage=warmup")


def test_demo_quick_writes_report_results_and_figures(tmp_path):
  """CI's check of the main job: every file, the results schema. (--quick says nothing about the effect.)"""
  work = tmp_path / "demo"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  proc = subprocess.run([sys.executable, "-m", "rajax.demo", "--workdir", str(work), "--quick"],
                        capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "| 15/15 runs |" in proc.stdout and "[demo] done in" in proc.stdout
  saved = json.loads((work / "results.json").read_text())
  results = saved["results"]
  assert set(results) == {"sr", "denoise", "jpeg"}
  assert saved["heldout_crops"] == {"sr": 40, "denoise": 40, "jpeg": 40}   # 5 photos x 2x2 grid x mirror
  for task, rows in results.items():
    assert {"input", "plain", "ra", "unsupervised", "transformer", "clean"} <= set(rows), task
    for row, recs in rows.items():
      assert set(recs) == {"mobilenet_v2", "efficientnet_lite0"}
      for m in recs.values():
        assert set(m) == {"top1", "psnr", "ssim"} and 0.0 <= m["top1"] <= 1.0 and -1.0 <= m["ssim"] <= 1.0
    assert rows["clean"]["mobilenet_v2"]["top1"] == 1.0     # labels are R's own top-1 on the clean crops
    paired = saved["paired_vs_plain"][task]
    assert set(paired) == {"ra", "unsupervised", "transformer"}, task
    for mode, recs in paired.items():
      assert set(recs) == {"mobilenet_v2", "efficientnet_lite0"}
      for rname, test in recs.items():
        assert set(test) == {"gained", "lost", "p"} and 0.0 <= test["p"] <= 1.0
        # the counts are consistent with the two top-1 figures: gained - lost = crops x difference
        diff = (rows[mode][rname]["top1"] - rows["plain"][rname]["top1"]) * saved["heldout_crops"][task]
        assert test["gained"] - test["lost"] == round(diff), (task, mode, rname)
  report = (work / "report.md").read_text()
  assert "Quick mode" in report and "Which claims held" in report and "efficientnet_lite0" in report
  assert "McNemar" in report and "vs plain" in report
  for name in ("top1.png", "samples_sr.png", "samples_denoise.png", "samples_jpeg.png"):
    with Image.open(work / name) as im:
      assert im.format == "PNG" and im.size[0] > 100, name
    assert f"({name})" in report
  for task in ("sr", "denoise", "jpeg"):
    for run in ("pretrain", "plain", "ra", "unsupervised", "transformer"):
      assert (work / task / run / "processor.msgpack").is_file(), (task, run)
      assert "rajax.train:" in (work / task / run / "train.log").read_text(), (task, run)
    assert (work / task / "transformer" / "transformer.msgpack").is_file()


def _fake_runs(monkeypatch, fail=None):
  """Replaces each demo training run by a short process that records its start and end times."""
  from rajax import demo
  code = ("import sys, time, pathlib, signal; d = pathlib.Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True); "
          "signal.signal(signal.SIGINT, lambda *a: (open(d / 'signals', 'a').write('INT\\n'), time.sleep(0.5), "
          "sys.exit(130))); "
          "(d / 'start').write_text(repr(time.time())); rc = int(sys.argv[2]); time.sleep(0.1 if rc else 1.0); "
          "import os; (d / 'xla_flags').write_text(os.environ.get('XLA_FLAGS', '')); "
          "print('[train] step 1/1 | 5 img/s'); (d / 'end').write_text(repr(time.time())); sys.exit(rc)")

  def command(workdir, task, run, quick):
    return [sys.executable, "-c", code, str(workdir / task / run), "3" if (task, run) == fail else "0"]
  monkeypatch.setattr(demo, "run_command", command)
  return demo


def test_demo_runs_pretraining_first_and_at_most_jobs_at_a_time(tmp_path, monkeypatch):
  demo = _fake_runs(monkeypatch)
  demo.train_all(tmp_path, ["sr", "jpeg"], ["plain", "ra"], quick=True, jobs=2, status_every=0.1)
  times = {(t, r): (float((tmp_path / t / r / "start").read_text()), float((tmp_path / t / r / "end").read_text()))
           for t in ("sr", "jpeg") for r in ("pretrain", "plain", "ra")}
  for task in ("sr", "jpeg"):
    for mode in ("plain", "ra"):
      assert times[(task, mode)][0] >= times[(task, "pretrain")][1], (task, mode)   # starts from the pretrained P
  events = sorted([(s, 1) for s, _ in times.values()] + [(e, -1) for _, e in times.values()])
  level = np.cumsum([d for _, d in events])
  assert level.max() == 2                      # two at a time, never more
  assert "[train] step 1/1" in (tmp_path / "sr" / "ra" / "train.log").read_text()


@pytest.mark.parametrize("quick", [True, False])
def test_demo_quick_runs_compile_without_llvm_optimisation(tmp_path, monkeypatch, quick):
  """--quick trains for a few steps, so its runs trade LLVM's optimisation passes for compile time;
  the default runs keep them. The user's own XLA flags are passed on either way."""
  demo = _fake_runs(monkeypatch)
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
  demo.train_all(tmp_path, ["sr"], ["plain"], quick=quick, jobs=2, status_every=0.1)
  for run in ("pretrain", "plain"):
    flags = (tmp_path / "sr" / run / "xla_flags").read_text().split()
    assert "--xla_cpu_enable_fast_math=false" in flags
    assert ("--xla_backend_optimization_level=0" in flags) == quick
  assert demo.quick_xla_flags("--xla_backend_optimization_level=2") == "--xla_backend_optimization_level=2"


def test_demo_stops_and_names_the_failed_run_with_its_log(tmp_path, monkeypatch):
  demo = _fake_runs(monkeypatch, fail=("sr", "pretrain"))
  with pytest.raises(RuntimeError, match=r"sr/pretrain failed \(exit status 3\)[\s\S]*train.log[\s\S]*rerun the demo"):
    demo.train_all(tmp_path, ["sr"], ["plain", "ra"], quick=True, jobs=2)
  assert not (tmp_path / "sr" / "plain").exists()   # nothing started from a pretraining that failed


def test_demo_failure_stops_the_other_runs_with_one_sigint_each(tmp_path, monkeypatch):
  """rajax.train checkpoints on the first SIGINT and stops at once on a second: send exactly one."""
  demo = _fake_runs(monkeypatch, fail=("jpeg", "pretrain"))
  with pytest.raises(RuntimeError, match="jpeg/pretrain failed"):
    demo.train_all(tmp_path, ["sr", "jpeg"], ["plain"], quick=True, jobs=2)
  assert (tmp_path / "sr" / "pretrain" / "signals").read_text() == "INT\n"
  assert not (tmp_path / "sr" / "pretrain" / "end").exists()


def test_claims_state_the_paired_test_and_the_psnr_budget():
  from rajax import demo
  row = lambda top1, psnr: {r: {"top1": top1, "psnr": psnr, "ssim": 0.8} for r in demo.RECOGNIZERS}
  results = {"sr": {"plain": row(0.30, 26.0), "ra": row(0.35, 25.8)},
             "jpeg": {"plain": row(0.30, 26.0), "ra": row(0.31, 24.5)}}
  test = lambda g, l, p: {r: {"gained": g, "lost": l, "p": p} for r in demo.RECOGNIZERS}
  paired = {"sr": {"ra": test(30, 6, 6e-5)}, "jpeg": {"ra": test(10, 8, 0.81)}}
  lines = demo.claims(results, paired)
  sr = next(l for l in lines if "super-resolution" in l)
  assert "30 crops gained, 6 lost" in sr and "p = 6e-05, significant" in sr and "claim holds" in sr
  jpeg = next(l for l in lines if "JPEG" in l)
  # RA is ahead by a point, but the PSNR cost is over 1 dB and the split is within chance
  assert "within chance" in jpeg and "claim does not hold" in jpeg
  # Ahead within the PSNR budget, but by no more than chance: not shown.
  results["jpeg"]["ra"] = row(0.31, 25.9)
  jpeg = next(l for l in demo.claims(results, paired) if "JPEG" in l)
  assert "claim is not shown (RA is ahead by no more than chance)" in jpeg
  assert any("not independent" in l for l in demo.claims(results, paired))
  without = demo.claims(results)                                   # without paired tests: ahead is enough
  assert "crops gained" not in " ".join(without) and all("claim holds" in l for l in without if l.startswith("- "))
