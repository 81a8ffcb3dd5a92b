"""Makes the fixtures that pin rajax's torchvision segmenters to torchvision's. Run once:

    /tmp/torchvenv/bin/python tests/reference/make_segmenters.py

with torch 2.14.1, torchvision 0.29.1, scikit-image and Pillow. Writes segmenters.npz next to this
script. No weights are stored: tests/seeded_state_dict.py draws them from the entry name and each
torch key (the key list is stored as JSON), torch loads them with load_state_dict(strict=True), and
the tests draw the same values and load them through rajax's torch-key map.

Entries (torchvision 0.29's builders, weights=None, weights_backbone=None), on the two 80x106
photos of make_faster_rcnn.py, normalised with ImageNet mean/std as torchvision's
SemanticSegmentation preset does:
  lraspp              lraspp_mobilenet_v3_large(num_classes=21)
  deeplabv3_mobilenet deeplabv3_mobilenet_v3_large(num_classes=21, aux_loss=True)
  deeplabv3_rates     the same backbone with DeepLabHead(960, 5, atrous_rates=(1, 2, 3)) and no aux
                      head: at 80x106 the stride-16 map is 5x7, where rates 12/24/36 only reach
                      padding, so this entry checks the dilated ASPP taps
  deeplabv3_resnet50  deeplabv3_resnet50(num_classes=21, aux_loss=True)
  fcn_resnet50        fcn_resnet50(num_classes=21, aux_loss=True)
  deeplabv3_resnet101 deeplabv3_resnet101(num_classes=21, aux_loss=True), first photo only (heavy test)
Recorded, in eval mode: the heads' logits before the final upsampling (`out_lo`, `aux_lo`, NHWC) and,
for the MobileNetV3 entries, the upsampled outputs (`out`, `aux`, NHWC at the photo size); for
lraspp and deeplabv3_mobilenet also one training-mode forward with Dropout off (its heads' logits
before upsampling, `train_out_lo`, `train_aux_lo`) and the running statistics it leaves in the classifier heads and the stem
(`stats/<torch key>`).
"""

import json
import pathlib
import sys

import numpy as np
import torch
from torchvision.models import segmentation as seg
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import seeded_state_dict  # noqa: E402
from make_faster_rcnn import photos  # noqa: E402

OUT = HERE / "segmenters.npz"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# The last BatchNorm of every ResNet residual branch drawn small (see seeded_state_dict), and the
# MobileNetV3 biases and means small, so that activations stay within a few orders of magnitude.
RULES = {
    "resnet": [[r"backbone\.layer\d+\.\d+\.bn3\.weight", 0.1, 0.3]],
    "mobilenet": [[r"backbone\..*\.(bias|running_mean)", -0.05, 0.05],
                  [r"backbone\.\d+\.block\.\d+\.1\.weight", 0.6, 1.0]],
}
ENTRIES = {
    "lraspp": ("mobilenet", lambda: seg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)),
    "deeplabv3_mobilenet": ("mobilenet", lambda: seg.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True)),
    "deeplabv3_rates": ("mobilenet", lambda: _rates()),
    "deeplabv3_resnet50": ("resnet", lambda: seg.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True)),
    "fcn_resnet50": ("resnet", lambda: seg.fcn_resnet50(weights=None, weights_backbone=None, num_classes=21,
                                                        aux_loss=True)),
    "deeplabv3_resnet101": ("resnet", lambda: seg.deeplabv3_resnet101(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True)),
}
TRAIN = ("lraspp", "deeplabv3_mobilenet")


def _rates():
  m = seg.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5, aux_loss=False)
  return DeepLabV3(m.backbone, DeepLabHead(960, 5, atrous_rates=(1, 2, 3)), None)


def build(entry):
  kind, make = ENTRIES[entry]
  model = make()
  keys = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
  sd = seeded_state_dict.values(entry, keys, RULES[kind])
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
  return model, keys


def nhwc(t):
  return t.permute(0, 2, 3, 1).numpy()


def run(entry, x):
  model, keys = build(entry)
  rec = {"keys": np.array(json.dumps(keys))}
  grabbed = {}
  for name in ("classifier", "aux_classifier"):
    head = getattr(model, name, None)
    if head is not None:
      head.register_forward_hook(lambda mod, inp, out, name=name: grabbed.__setitem__(name, out))
  model.eval()
  with torch.no_grad():
    out = model(x)
  rec["out_lo"] = nhwc(grabbed["classifier"])
  if "aux_classifier" in grabbed:
    rec["aux_lo"] = nhwc(grabbed["aux_classifier"])
  if ENTRIES[entry][0] == "mobilenet":
    for k, v in out.items():
      rec[k] = nhwc(v)
  if entry in TRAIN:
    model.train()
    for m in model.modules():
      if isinstance(m, torch.nn.Dropout):
        m.eval()
    with torch.no_grad():
      model(x)
    for k, v in grabbed.items():
      rec[f"train_{'out' if k == 'classifier' else 'aux'}_lo"] = nhwc(v)
    for k, v in model.state_dict().items():
      if "running_" in k and (k.startswith(("classifier.", "aux_classifier.")) or k.startswith("backbone.0.1.")):
        rec[f"stats/{k}"] = v.numpy()
  return rec


def main():
  torch.set_num_threads(2)
  images = photos()
  data = {"photos": images}
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
  x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
  for entry in ENTRIES:
    xe = x[:1] if entry == "deeplabv3_resnet101" else x
    for k, v in run(entry, xe).items():
      data[f"{entry}/{k}"] = v
    print(entry, {k: (v.shape, float(np.abs(v).max())) for k, v in data.items()
                  if k.startswith(entry + "/") and k.split("/")[1] in ("out_lo", "aux_lo")}, flush=True)
  data = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in data.items()}
  np.savez_compressed(OUT, **data)
  print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
  main()
