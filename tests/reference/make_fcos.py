"""Makes the fixtures that pin rajax's FCOS to torchvision's. Run once:

    /tmp/torchvenv/bin/python tests/reference/make_fcos.py

with torch 2.14.1, torchvision 0.29.1, scikit-image and Pillow. Writes fcos.npz next to this
script. As for make_faster_rcnn.py, the weights are not stored: tests/seeded_state_dict.py draws
them from the entry name and each torch key (the key list is stored as JSON) and torch loads them
with load_state_dict(strict=True).

Entries (torchvision FCOS models built as fcos_resnet50_fpn builds one with weights: FrozenBatchNorm2d
in the ResNet, trainable_backbone_layers=3, layer2..layer4 into an FPN with LastLevelP6P7(C, C)):
  small  ResNet-18 body, FPN of 64 channels (GroupNorm(32): two channels a group), 5 classes,
         min_size 96 / max_size 160 on the two 80x106 photos of make_faster_rcnn.py (resized to
         96x127, padded to 96x128), topk_candidates 30 so that the per-level cut decides which candidates reach NMS;
  r50    fcos_resnet50_fpn's exact structure (91 classes, FPN 256) on the same photos (heavy test).
Recorded for each, in eval mode: the transformed batch (small only), the FPN maps (small only), the
head outputs (small only: cls_logits, bbox_regression, bbox_ctrness), the anchors and the final
detections; in training mode the three losses for two targets sets: `loss/` with two and three
boxes (overlapping ones, so the smallest-area rule decides), `loss_empty/` with the second image
without boxes; for the small entry also the matched box index of every anchor (hooked from
FCOSHead.compute_loss) and the losses with center_sampling_radius 1.0 (`loss_r1/`).
Also `layout`: the state-dict names and shapes of fcos_resnet50_fpn(weights=None, weights_backbone=None).
"""

import json
import pathlib
import sys

import numpy as np
import torch
import torchvision
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.fcos import FCOS, FCOSHead
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import seeded_state_dict  # noqa: E402
from make_faster_rcnn import photos  # noqa: E402

OUT = HERE / "fcos.npz"
# GroupNorm affine terms as BatchNorm's; the residual branches' last BatchNorm scaled down (see
# seeded_state_dict); the heads' last convolutions drawn small so that logits, distances and
# centreness have a trained detector's spread (scores on both sides of the 0.2 threshold).
GN = r"head\.\w+_head\.conv\.(1|4|7|10)\."
RULES = {"small": [[GN + "weight", 0.5, 1.5], [GN + "bias", -0.3, 0.3],
                   [r"backbone\.body\.layer\d+\.\d+\.bn2\.weight", 0.1, 0.3],
                   [r"head\.classification_head\.cls_logits\.weight", -0.03, 0.03],
                   [r"head\.classification_head\.cls_logits\.bias", -2.0, -1.0],
                   [r"head\.regression_head\.bbox_reg\.weight", -0.03, 0.03],
                   [r"head\.regression_head\.bbox_reg\.bias", 0.5, 1.5],
                   [r"head\.regression_head\.bbox_ctrness\.weight", -0.03, 0.03]],
         "r50": [[GN + "weight", 0.5, 1.5], [GN + "bias", -0.3, 0.3],
                 [r"backbone\.body\.layer\d+\.\d+\.bn3\.weight", 0.1, 0.3],
                 [r"head\.classification_head\.cls_logits\.weight", -0.01, 0.01],
                 [r"head\.classification_head\.cls_logits\.bias", -3.0, -1.0],
                 [r"head\.regression_head\.bbox_reg\.weight", -0.01, 0.01],
                 [r"head\.regression_head\.bbox_reg\.bias", 0.5, 1.5],
                 [r"head\.regression_head\.bbox_ctrness\.weight", -0.01, 0.01]]}
TARGETS = [  # (x1, y1, x2, y2) in pixels of the 80x106 photos, label in 1..4
    ([[10.0, 8.0, 60.0, 50.0], [20.0, 15.0, 50.0, 45.0]], [1, 3]),
    ([[0.0, 0.0, 40.0, 30.0], [30.0, 25.0, 95.5, 70.0], [70.0, 5.0, 104.0, 40.0]], [2, 4, 1]),
]


def build(entry, radius=1.5):
  if entry == "small":
    body = torchvision.models.resnet18(norm_layer=misc_nn_ops.FrozenBatchNorm2d)
    c, classes, opts = 64, 5, dict(topk_candidates=30)
    in_channels = [128, 256, 512]
  else:
    body = torchvision.models.resnet50(norm_layer=misc_nn_ops.FrozenBatchNorm2d)
    c, classes, opts = 256, 91, {}
    in_channels = [512, 1024, 2048]
  for name, p in body.named_parameters():  # what _resnet_fpn_extractor does for trainable_layers=3
    if all(not name.startswith(l) for l in ["layer4", "layer3", "layer2"]):
      p.requires_grad_(False)
  backbone = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, in_channels, c,
                             extra_blocks=LastLevelP6P7(c, c))
  model = FCOS(backbone, classes, min_size=96, max_size=160, center_sampling_radius=radius, **opts)
  keys = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
  sd = seeded_state_dict.values(entry, keys, RULES[entry])
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
  return model, keys


def _pad(arrays, n):
  shape = arrays[0].shape[1:]
  out = np.zeros((len(arrays), n) + shape, arrays[0].dtype)
  for i, a in enumerate(arrays):
    out[i, :len(a)] = a
  return out


def _targets(sets):
  return [{"boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(l, dtype=torch.int64)}
          for b, l in sets]


def losses(model, x, sets, record_matches=False):
  matches = []
  original = FCOSHead.compute_loss

  def recording(self, targets, head_outputs, anchors, matched_idxs):
    matches.append(torch.stack(matched_idxs).numpy())
    return original(self, targets, head_outputs, anchors, matched_idxs)

  FCOSHead.compute_loss = recording
  model.train()
  with torch.no_grad():
    out = model(x, _targets(sets))
  FCOSHead.compute_loss = original
  rec = {k: np.array(float(v), np.float32) for k, v in out.items()}
  if record_matches:
    rec["matched"] = matches[0].astype(np.int32)
  return rec


def run(entry, images):
  model, keys = build(entry)
  rec = {"keys": np.array(json.dumps(keys))}
  x = [torch.from_numpy(im).permute(2, 0, 1).float() / 255.0 for im in images]
  hooks = {}

  def grab(name):
    def hook(module, inputs, output):
      hooks[name] = (inputs, output)
    return hook

  model.transform.register_forward_hook(grab("transform"))
  model.backbone.register_forward_hook(grab("backbone"))
  model.head.register_forward_hook(grab("head"))
  model.eval()
  with torch.no_grad():
    dets = model(x)
  image_list = hooks["transform"][1][0]
  if entry == "small":
    rec["image"] = image_list.tensors.permute(0, 2, 3, 1).numpy()
    for k, v in hooks["backbone"][1].items():
      rec[f"fpn/{k}"] = v.permute(0, 2, 3, 1).numpy()
    head = hooks["head"][1]
    rec["cls_logits"] = head["cls_logits"].numpy()
    rec["bbox_regression"] = head["bbox_regression"].numpy()
    rec["bbox_ctrness"] = head["bbox_ctrness"][..., 0].numpy()
  feats = list(hooks["backbone"][1].values())
  rec["anchors"] = model.anchor_generator(image_list, feats)[0].numpy()
  rec["det_counts"] = np.array([len(d["boxes"]) for d in dets])
  rec["det_boxes"] = _pad([d["boxes"].numpy() for d in dets], 100)
  rec["det_scores"] = _pad([d["scores"].numpy() for d in dets], 100)
  rec["det_labels"] = _pad([d["labels"].numpy().astype(np.int32) for d in dets], 100)
  for k, v in losses(model, x, TARGETS, record_matches=entry == "small").items():
    rec[f"loss/{k}"] = v
  empty = [TARGETS[0], ([], [])]
  for k, v in losses(model, x, empty).items():
    rec[f"loss_empty/{k}"] = v
  if entry == "small":
    model_r1, _ = build(entry, radius=1.0)
    for k, v in losses(model_r1, x, TARGETS).items():
      rec[f"loss_r1/{k}"] = v
  return rec


def main():
  torch.set_num_threads(2)
  images = photos()
  data = {"photos": images}
  for entry in ("small", "r50"):
    for k, v in run(entry, images).items():
      data[f"{entry}/{k}"] = v
  from torchvision.models.detection import fcos_resnet50_fpn
  m = fcos_resnet50_fpn(weights=None, weights_backbone=None)
  data["layout"] = np.array(json.dumps([[k, list(v.shape)] for k, v in m.state_dict().items()]))
  data = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in data.items()}
  np.savez_compressed(OUT, **data)
  print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")
  for e in ("small", "r50"):
    print(e, {k[len(e) + 1:]: float(v) for k, v in data.items() if k.startswith(f"{e}/loss") and v.ndim == 0},
          "detections", data[f"{e}/det_counts"], "scores", data[f"{e}/det_scores"][:, :3])
  m = data["small/loss/matched"]
  print("positives per image", (m >= 0).sum(1), "per box", [np.bincount(r[r >= 0]) for r in m])


if __name__ == "__main__":
  main()
