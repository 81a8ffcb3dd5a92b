"""Makes tests/reference/torch_bicubic.npz: SR4IR's on-the-fly LR images, by torch itself. Run once:

    /tmp/torchvenv/bin/python tests/reference/make_torch_bicubic.py

with torch 2.13 (CPU). SR4IR makes its LR input from a batch of HR crops (ToTensor: uint8 / 255) as
`quantize(interpolate(hr, scale_factor=1 / scale, mode="bicubic"))` (align_corners False, no
antialiasing), quantize(x) = clamp(round(x * 255), 0, 255) / 255. Inputs: four uint8 images drawn with
NumPy from a fixed seed (noise, a smooth ramp with noise, a checkerboard, saturated blocks), 48 x 40;
outputs for scales 2, 4 and 8 as uint8 (round(quantized * 255)).
"""

import pathlib

import numpy as np
import torch
import torch.nn.functional as F

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "torch_bicubic.npz"


def inputs() -> np.ndarray:
  rng = np.random.default_rng(0)
  h, w = 48, 40
  noise = rng.integers(0, 256, (h, w, 3))
  yy, xx = np.mgrid[0:h, 0:w]
  ramp = np.stack([xx * 6, yy * 5, (xx + yy) * 3], -1) % 256 + rng.integers(-8, 9, (h, w, 3))
  checker = np.where(((yy // 3) + (xx // 3))[..., None] % 2 == 0, 255, 0) * np.ones((1, 1, 3))
  blocks = np.where(rng.random((h // 8, w // 8, 3)) < 0.5, 255, 0).repeat(8, 0).repeat(8, 1)
  return np.clip(np.stack([noise, ramp, checker, blocks]), 0, 255).astype(np.uint8)


def main() -> None:
  x = inputs()
  hr = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
  out = {"hr": x, "torch_version": np.array(torch.__version__)}
  for scale in (2, 4, 8):
    lr = F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", align_corners=False)
    q = torch.clamp((lr * 255.0).round(), 0, 255.0) / 255.0
    out[f"lr_x{scale}"] = (q * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
  np.savez_compressed(OUT, **out)
  print(f"wrote {OUT}: " + ", ".join(f"{k} {v.shape}" for k, v in out.items()))


if __name__ == "__main__":
  main()
