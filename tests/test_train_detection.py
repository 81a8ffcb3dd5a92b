"""The trainer with a detector as R: detection batches in, a detector's mAP out.

R is tests/toy_detector.py; the data are the bundled photos without boxes, so the targets are
the detector's own detections on the clean image (config.labels="recognizer"), in training and
in evaluation.
"""

from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest

import toy_detector
from rajax import config as config_lib
from rajax import train
from rajax.data import detection as detection_data
from rajax.detection import zoo


@pytest.fixture(autouse=True)
def _toy_in_the_zoo(monkeypatch):
  monkeypatch.setattr(zoo, "_FAMILIES", (*zoo._FAMILIES, "toy_detector"))


def _config():
  c = config_lib.base(task="sr", method="ra", recognizer="toy_detector")
  c.degrade.scale = 2
  c.processor.update(dict(blocks=1, channels=8))
  c.recognizer.num_classes = 3
  c.recognizer.weights = "random"
  c.labels = "recognizer"
  c.data.update(dict(source="photos", batch_size=2, eval_batch_size=2, num_eval_examples=3, threads=1))
  c.data.detection = ml_collections.ConfigDict(
      dict(detection_data.config_defaults(), size=(32, 32), max_boxes=4, empty="keep"))
  c.data.crop = 32
  c.total_steps, c.log_every, c.ckpt_every, c.eval_every = 2, 1, 2, 0
  c.mesh.data = 1
  return c


def test_training_against_a_detector_logs_its_loss_and_evaluates_its_map(tmp_path):
  final = train.run(_config(), tmp_path)
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  steps = [l for l in lines if l["split"] == "train"]
  assert [l["step"] for l in steps] == [1, 2]
  assert all(np.isfinite(l["recognition"]) and l["recognition"] > 0 for l in steps)
  evals = [l for l in lines if l["split"] == "eval"]
  assert len(evals) == 1 and evals[0]["count"] == 3
  for key in ("voc07_map11", "voc_map_area", "coco_map", "recall50", "psnr"):
    assert key in final and np.isfinite(final[key]), key
  assert 0.0 < final["num_gt"]   # the detector found something on the clean held-out photos
  assert (tmp_path / "processor.msgpack").exists()
