"""Makes the fixture that pins rajax.models.lpips to the `lpips` package. Run once:

    /tmp/torchvenv/bin/python tests/reference/make_lpips.py [--photos DIR]

with torch 2.14.1, torchvision 0.29.1 and lpips 0.1.4 in that interpreter. DIR holds
scikit-image's chelsea.png and astronaut.png (by default the `skimage/data` folder of an
interpreter on PATH, or of /work/main/.venv, that has scikit-image). Writes lpips.npz next to this script:

  x, y                    float32 [3, 64, 66, 3] images in [0, 1], three pairs of scikit-image photos:
                          chelsea and a noisy copy; astronaut and a blurred, noisy copy; chelsea and
                          astronaut. 64 x 66 keeps every SqueezeNet pool's partial last window
                          along the width (ceil_mode) and none along the height.
  <net>/keys              the torch keys of the backbone's `features` (JSON: [name, shape, dtype] in
                          torch's order), for net in alex, vgg, squeeze;
  <net>/digest            SHA-256 of the seeded backbone state dict torch held;
  <net>/distance          lpips.LPIPS(net=net)(x, y, normalize=True) in float64, [3];
  <net>/per_tap           its per-tap terms (retPerLayer=True), [3, taps];
  <net>/lin<k>            the lin weights as torch.load reads them from the lpips wheel.

The backbones' ImageNet weights are not available here, nor small enough to commit: the backbone
gets values drawn by tests/seeded_state_dict.py from the entry name "lpips-<net>" and each key, with
NumPy alone, here and in the tests (which write them to a .pth file and load it through rajax). The
lin layers are the package's real ones.
"""

import argparse
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import torch
from PIL import Image, ImageFilter

import lpips

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import seeded_state_dict  # noqa: E402  (tests/seeded_state_dict.py, shared with the tests)

NETS = ("alex", "vgg", "squeeze")
SIZE = (64, 66)  # height, width


def _skimage_data() -> pathlib.Path:
  for python in (shutil.which("python3"), "/work/main/.venv/bin/python"):
    if not python:
      continue
    r = subprocess.run([python, "-c", "import skimage, os; print(os.path.dirname(skimage.__file__))"],
                       capture_output=True, text=True)
    if r.returncode == 0:
      return pathlib.Path(r.stdout.strip()) / "data"
  raise SystemExit("No interpreter with scikit-image found; pass --photos DIR (skimage/data).")


def _crop(path: pathlib.Path) -> np.ndarray:
  """The photo's central crop of the target aspect, resized (bicubic) to SIZE, as float32 in [0, 1]."""
  im = Image.open(path).convert("RGB")
  h, w = SIZE
  W, H = im.size
  cw = min(W, H * w // h)
  ch = cw * h // w
  left, top = (W - cw) // 2, (H - ch) // 2
  im = im.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BICUBIC)
  return np.asarray(im, np.float32) / 255.0


def _blur(x: np.ndarray) -> np.ndarray:
  im = Image.fromarray(np.round(x * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5))
  return np.asarray(im, np.float32) / 255.0


def images(photos: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(0)
  cat, astronaut = _crop(photos / "chelsea.png"), _crop(photos / "astronaut.png")
  x = np.stack([cat, astronaut, cat])
  y = np.stack([cat + rng.normal(0, 0.05, cat.shape), _blur(astronaut) + rng.normal(0, 0.02, cat.shape), astronaut])
  return x, np.clip(y, 0, 1).astype(np.float32)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--photos", type=pathlib.Path, default=None, help="folder with chelsea.png, astronaut.png")
  args = parser.parse_args()
  x, y = images(args.photos or _skimage_data())
  out = {"x": x, "y": y}
  torch.set_grad_enabled(False)
  for net in NETS:
    model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False).double().eval()
    # lpips keeps torchvision's `features` layers in slices, in index order ("slice2.3.squeeze.weight"):
    # torch's key is the name without its slice.
    params = dict(model.net.named_parameters())
    assert len(params) == len(model.net.state_dict()), f"{net}: the trunk has buffers"
    keys = [[f"features.{n.split('.', 1)[1]}", list(p.shape), "float32"] for n, p in params.items()]
    sd = seeded_state_dict.values(f"lpips-{net}", keys)
    for (name, _, _), p in zip(keys, params.values()):
      p.copy_(torch.from_numpy(sd[name]).double())
    out[f"{net}/keys"] = np.array(json.dumps(keys))
    out[f"{net}/digest"] = np.array(seeded_state_dict.digest(sd))
    lin = torch.load(pathlib.Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth", map_location="cpu")
    for k, v in lin.items():
      out[f"{net}/{k.split('.')[0]}"] = v.numpy().astype(np.float32)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).double()
    yt = torch.from_numpy(y).permute(0, 3, 1, 2).double()
    d, per = model(xt, yt, retPerLayer=True, normalize=True)
    out[f"{net}/distance"] = d.reshape(-1).numpy()
    out[f"{net}/per_tap"] = torch.stack([p.reshape(-1) for p in per], dim=1).numpy()
    print(net, out[f"{net}/distance"], out[f"{net}/digest"])
  np.savez_compressed(HERE / "lpips.npz", **out)


if __name__ == "__main__":
  main()
