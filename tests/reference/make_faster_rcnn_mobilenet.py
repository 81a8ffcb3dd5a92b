"""Makes the fixture that pins rajax's fasterrcnn_mobilenet_v3_large_fpn to torchvision's. Run once:

    /tmp/torchvenv/bin/python tests/reference/make_faster_rcnn_mobilenet.py

with torch 2.14.1, torchvision 0.29.1, scikit-image and Pillow. Writes faster_rcnn_mobilenet.npz next
to this script. It reuses make_faster_rcnn.py's recording (`run`: eval-mode stages and detections,
training losses given torch's own samples) on one entry, "mobilenet": fasterrcnn_mobilenet_v3_large_fpn's
exact structure as torchvision builds it with weights (MobileNetV3-Large with FrozenBatchNorm2d,
_mobilenet_extractor(fpn=True, trainable_layers=3): features 13 and 16 into an FPN of 256 with
LastLevelMaxPool, anchors ((32, 64, 128, 256, 512),) * 3 x 3 ratios, rpn_score_thresh 0.05, 91
classes), min_size 96 / max_size 160 on the two 80x106 photos. Seeded weights (tests/seeded_state_dict.py)
are not stored (the body's BatchNorm shifts drawn small, so that its deep features still depend on the
image); the large per-RoI outputs are dropped to keep the file small. Also `layout`: the
state-dict names and shapes of fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None).
"""

import json
import pathlib
import sys

import numpy as np
import torch
import torchvision
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _mobilenet_extractor
from torchvision.models.detection.faster_rcnn import FasterRCNN
from torchvision.ops import misc as misc_nn_ops

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import make_faster_rcnn  # noqa: E402
import seeded_state_dict  # noqa: E402

OUT = HERE / "faster_rcnn_mobilenet.npz"
RULES = [[r"backbone\.body\..*\.(bias|running_mean)", -0.05, 0.05],
         [r"backbone\.body\.\d+\.block\.\d+\.1\.weight", 0.6, 1.0],
         [r"rpn\.head\.(cls_logits|bbox_pred)\.weight", -0.1, 0.1],
         [r"roi_heads\.box_predictor\.cls_score\.bias", -3.0, 4.0],
         [r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.weight", -0.05, 0.05]]


def build(entry):
  body = torchvision.models.mobilenet_v3_large(norm_layer=misc_nn_ops.FrozenBatchNorm2d)
  backbone = _mobilenet_extractor(body, True, 3)
  anchors = AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
  model = FasterRCNN(backbone, 91, rpn_anchor_generator=anchors, rpn_score_thresh=0.05, min_size=96, max_size=160)
  keys = make_faster_rcnn.keys_of(model)
  sd = seeded_state_dict.values(entry, keys, RULES)
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
  return model, keys


def main():
  torch.set_num_threads(2)
  make_faster_rcnn.build = build  # run() builds through this module-level name
  images = make_faster_rcnn.photos()
  rec = make_faster_rcnn.run("mobilenet", images)
  for k in [k for k in rec if k.startswith("fpn/")] + ["class_logits", "box_deltas", "image"]:
    rec.pop(k, None)
  rec["pooled12"] = rec["pooled12"][..., :8]
  data = {f"mobilenet/{k}": v for k, v in rec.items()}
  from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn
  m = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None)
  data["layout"] = np.array(json.dumps([[k, list(v.shape)] for k, v in m.state_dict().items()]))
  data = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in data.items()}
  np.savez_compressed(OUT, **data)
  print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")
  print({k: float(v) for k, v in data.items() if "/loss/" in k}, "proposals", data["mobilenet/proposal_counts"],
        "detections", data["mobilenet/det_counts"], data["mobilenet/det_scores"][:, :3])


if __name__ == "__main__":
  main()
