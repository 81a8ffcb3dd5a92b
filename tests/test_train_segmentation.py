"""The trainer with a segmenter as R: label-map batches in, the segmenter's mIoU out.

R is tests/toy_segmenter.py; the data are photos without label maps, so the targets are the
segmenter's own label maps on the clean image (config.labels="recognizer"), in training and in
evaluation.
"""

from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest

import toy_segmenter  # noqa: F401  (the family module the zoo imports)
from rajax import config as config_lib
from rajax import train
from rajax.segmentation import zoo


@pytest.fixture(autouse=True)
def _toy_in_the_zoo(monkeypatch):
  monkeypatch.setattr(zoo, "_FAMILIES", (*zoo._FAMILIES, "toy_segmenter"))


def _config():
  c = config_lib.base(task="denoise", method="ra", recognizer="toy_segmenter")
  c.processor.update(dict(blocks=1, channels=8))
  c.recognizer.num_classes = 3
  c.recognizer.weights = "random"
  c.labels = "recognizer"
  c.data.update(dict(source="photos", batch_size=2, eval_batch_size=2, num_eval_examples=3, threads=1,
                     noise="host"))
  c.data.segmentation = ml_collections.ConfigDict(dict(size=(24, 24), resize=24, eval_size=(24, 40)))
  c.data.crop = 24
  c.total_steps, c.log_every, c.ckpt_every, c.eval_every = 2, 1, 2, 0
  c.mesh.data = 1
  return c


def test_training_against_a_segmenter_logs_its_loss_and_evaluates_its_miou(tmp_path):
  final = train.run(_config(), tmp_path)
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  steps = [l for l in lines if l["split"] == "train"]
  assert [l["step"] for l in steps] == [1, 2]
  assert all(np.isfinite(l["recognition"]) and l["recognition"] > 0 for l in steps)
  evals = [l for l in lines if l["split"] == "eval"]
  assert len(evals) == 1 and evals[0]["count"] == 3
  # mIoU of the processed images against the segmenter's own maps on the clean ones: a real figure,
  # below 1 (the noisy input changes some pixels' classes) and above 0.
  for key in ("miou", "pixel_accuracy", "psnr"):
    assert key in final and np.isfinite(final[key]), key
  assert 0.0 < final["miou"] < 1.0 and 0.0 < final["pixel_accuracy"] <= 1.0
  assert (tmp_path / "processor.msgpack").exists()


def test_a_segmentation_run_stopped_and_rerun_ends_in_the_uninterrupted_state(tmp_path):
  """Resume with label-map batches: a run trained to step 2 and rerun to step 4 checkpoints the same
  state (parameters, BatchNorm statistics, optimizer state, step, rng) as one trained to step 4 at
  once, so the rerun also read the same batches; a state from an earlier step is told apart
  (negative control)."""
  from test_train import _saved_state, _state_differences
  c = _config()
  c.total_steps, c.ckpt_every, c.final_eval = 4, 2, False
  train.run(c, tmp_path / "once")
  c.total_steps = 2
  train.run(c, tmp_path / "twice")
  c.total_steps = 4
  train.run(c, tmp_path / "twice")
  final = _saved_state(tmp_path / "once", 4)
  assert any("batch_stats" in k for k in final)
  assert _state_differences(_saved_state(tmp_path / "twice", 4), final) == []
  assert _state_differences(_saved_state(tmp_path / "once", 2), final)
