"""An LPIPS backbone file for tests: torchvision's AlexNet `features` keys with seeded values.

The keys and the values are those tests/test_lpips.py pins to the `lpips` package
(tests/reference/lpips.npz, tests/seeded_state_dict.py), written as a torchvision-style .pth file,
the file config.lpips.backbone names.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

import seeded_state_dict
import torch_file
from rajax.models import lpips

FIXTURE = pathlib.Path(__file__).resolve().parent / "reference" / "lpips.npz"


def backbone_file(folder: pathlib.Path, net: str = "alex") -> pathlib.Path:
  """Writes the seeded backbone of `net` under `folder` (torchvision's file name) and returns its path."""
  with np.load(FIXTURE) as ref:
    keys, digest = json.loads(str(ref[f"{net}/keys"])), str(ref[f"{net}/digest"])
  sd = seeded_state_dict.values(f"lpips-{net}", keys)
  assert seeded_state_dict.digest(sd) == digest, "the seeded weights differ from the LPIPS fixture's"
  folder.mkdir(parents=True, exist_ok=True)
  return torch_file.save(folder / lpips.BACKBONE_FILES[net], dict(sd))


def canvas_lpips(distance, shown, clean, sizes) -> float:
  """The mean LPIPS the evaluators give whole images on padded canvases: each shown image [N, H, W, 3]
  with its padding (outside `sizes`, (h, w) per image at the top left) taken from the clean image."""
  real = np.zeros(clean.shape[:3] + (1,), bool)
  for i, (h, w) in enumerate(sizes):
    real[i, :h, :w] = True
  return float(np.mean(np.asarray(distance(np.where(real, shown, clean), clean))))
