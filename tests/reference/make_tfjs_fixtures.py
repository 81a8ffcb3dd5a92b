"""Makes tests/reference/tfjs_detectors.npz: the TF.js runtime's outputs of the human-models graphs on real photos.

    # once: a throwaway folder with the pure-JS TF.js runtime (no native download)
    mkdir /tmp/tfjs_node && cd /tmp/tfjs_node && npm init -y && \
      npm install @tensorflow/tfjs-core@4.22.0 @tensorflow/tfjs-converter@4.22.0 @tensorflow/tfjs-backend-cpu@4.22.0
    python -m rajax.assets fetch human-models darknet
    python tests/reference/make_tfjs_fixtures.py --node-dir /tmp/tfjs_node

Photos (`PHOTOS`): darknet's dog.jpg and scikit-image's astronaut, coffee and chelsea, each
resized with Pillow (bicubic) to 640x480 (`prepare`), so the four form one batch; the fixture
records the sha256 of each prepared uint8 array, and the test checks it before comparing.
make_tfjs_fixtures.mjs runs the four graphs on them under TF.js as @vladmandic/human does (resize
to the model's input, the model's normalisation) and decodes NanoDet's detections with TF.js ops.
Stored (float32 unless said), per photo P:
  P/centernet/kp_max      [128, 128]  the class heatmap's maximum over the 80 classes
  P/centernet/kp_rows     [R, 80]     the heatmap at R cells: SEED-random ones plus the 100 detections' cells
  P/centernet/wh_rows     [R, 4]      the size head (distances to the box sides, input pixels) there
  P/centernet/rows        [R]         those cells (y * 128 + x)
  P/centernet/detections  [100, 6]    the graph's final detections: x1, y1, x2, y2 (512-pixel input), score, class
  P/nanodet/score_max_L   [n*n]       per level L in (8, 16, 32): class scores' maximum over classes
  P/nanodet/rows_L        [R_L]       SEED-random cells plus the 32 best-scored ones
  P/nanodet/scores_L, dist_L, boxes_L [R_L, 80 | 44 | 4]   scores, raw distribution logits, decoded boxes
  P/nanodet/detections    [100, 6]    TF.js-decoded detections (416-pixel input; class -1 = padding)
  P/selfie/mask [64, 64, 1], P/meet/mask [36, 64, 2]   the segmenters' raw outputs at every 4th pixel
  resize/*                            tf.image.resizeBilinear of a seeded tensor under its three rules
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "tfjs_detectors.npz"
PHOTOS = ("dog", "astronaut", "coffee", "chelsea")
SIZE = (640, 480)   # Pillow's (width, height)
SEED = 0


def photo_original(name: str) -> np.ndarray:
  if name == "dog":
    from rajax import assets
    with Image.open(assets.path("darknet/dog.jpg")) as im:
      return np.asarray(im.convert("RGB"))
  from rajax.data import photos
  return photos.photo(name)


def prepare(name: str) -> np.ndarray:
  """Photo `name` as uint8 [480, 640, 3]: Pillow bicubic resize of the original."""
  return np.asarray(Image.fromarray(photo_original(name)).resize(SIZE, Image.BICUBIC))


def digest(img: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()


def peak_cells(kp: np.ndarray, k: int) -> np.ndarray:
  """The cells (y * W + x) of CenterNet's k best heatmap peaks (3x3 max-pool NMS), as the graph picks them."""
  h, w, _ = kp.shape
  padded = np.pad(kp, ((1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  pooled = np.max([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)
  flat = np.where(kp == pooled, kp, 0).reshape(-1)
  top = np.argsort(-flat, kind="stable")[:k]
  return top // kp.shape[-1]


def main() -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--node-dir", required=True, help="folder whose node_modules holds @tensorflow/tfjs-*")
  args = parser.parse_args()
  from rajax import assets
  models = assets.path("human-models/centernet.json").parent
  rng = np.random.default_rng(SEED)
  arrays: dict[str, np.ndarray] = {}
  with tempfile.TemporaryDirectory() as tmp:
    work = pathlib.Path(tmp)
    listing = []
    for name in PHOTOS:
      img = prepare(name)
      (work / f"{name}.rgb").write_bytes(img.tobytes())
      listing.append({"name": name, "h": img.shape[0], "w": img.shape[1]})
      arrays[f"{name}/sha256"] = np.asarray(digest(img))
    (work / "inputs.json").write_text(json.dumps(listing))
    subprocess.run(["node", str(HERE / "make_tfjs_fixtures.mjs"), str(models), str(work)], cwd=args.node_dir, check=True)
    meta = json.loads((work / "out" / "index.json").read_text())

    def get(key):
      data = np.fromfile(work / "out" / (key.replace("/", "__") + ".f32"), dtype="<f4")
      return data.reshape(meta["shapes"][key])

    for name in PHOTOS:
      kp, wh, det = get(f"{name}/centernet/keypoints")[0], get(f"{name}/centernet/wh")[0], get(f"{name}/centernet/detections")[0]
      arrays[f"{name}/centernet/kp_max"] = kp.max(-1)
      rows = np.unique(np.concatenate([rng.choice(128 * 128, 192, replace=False), peak_cells(kp, 100)]))
      arrays[f"{name}/centernet/rows"] = rows.astype(np.int32)
      arrays[f"{name}/centernet/kp_rows"] = kp.reshape(-1, 80)[rows]
      arrays[f"{name}/centernet/wh_rows"] = wh.reshape(-1, 4)[rows]
      arrays[f"{name}/centernet/detections"] = det
      boxes = get(f"{name}/nanodet/boxes")
      start = 0
      for stride, sk, dk in ((8, "Identity", "Identity_3"), (16, "Identity_1", "Identity_4"), (32, "Identity_2", "Identity_5")):
        scores, dist = get(f"{name}/nanodet/{sk}")[0], get(f"{name}/nanodet/{dk}")[0]
        n = scores.shape[0]
        best = np.argsort(-scores.max(-1), kind="stable")[:32]
        rows = np.unique(np.concatenate([rng.choice(n, 64, replace=False), best]))
        arrays[f"{name}/nanodet/score_max_{stride}"] = scores.max(-1)
        arrays[f"{name}/nanodet/rows_{stride}"] = rows.astype(np.int32)
        arrays[f"{name}/nanodet/scores_{stride}"] = scores[rows]
        arrays[f"{name}/nanodet/dist_{stride}"] = dist[rows]
        arrays[f"{name}/nanodet/boxes_{stride}"] = boxes[start:start + n][rows]
        start += n
      arrays[f"{name}/nanodet/detections"] = get(f"{name}/nanodet/detections")
      arrays[f"{name}/selfie/mask"] = get(f"{name}/selfie/mask")[0, ::4, ::4]
      arrays[f"{name}/meet/mask"] = get(f"{name}/meet/mask")[0, ::4, ::4]
    for key in meta["shapes"]:
      if key.startswith("resize/"):
        arrays[key] = get(key)
  arrays["tfjs_version"] = np.asarray(meta["tfjs"])
  np.savez_compressed(OUT, **arrays)
  print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB, {len(arrays)} arrays, TF.js {meta['tfjs']})")
  for name in PHOTOS:
    d = arrays[f"{name}/centernet/detections"]
    print(name, "centernet:", [(int(c), round(float(s), 2)) for *_, s, c in d[:5]])
    d = arrays[f"{name}/nanodet/detections"]
    print(name, "nanodet:", [(int(c), round(float(s), 2)) for *_, s, c in d[:5]])
  return 0


if __name__ == "__main__":
  sys.exit(main())
