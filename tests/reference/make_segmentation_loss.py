"""Makes tests/reference/segmentation_loss.npz: torch's segmentation loss and confusion-matrix figures. Run once:

    /tmp/torchref/bin/python tests/reference/make_segmentation_loss.py

with torch 2.13 (CPU). torchvision's segmentation reference (references/segmentation/train.py and
utils.py) is not a package module, so its two pieces are written out here with torch ops as it
defines them:

  criterion(inputs, target) = cross_entropy(inputs["out"], target, ignore_index=255)
                              + 0.5 * cross_entropy(inputs["aux"], target, ignore_index=255)
  ConfusionMatrix.update    = bincount(n * target + pred) over pixels with 0 <= target < n;
  ConfusionMatrix.compute   = acc_global (trace / total), iu (diag / (row + col - diag)).

Inputs are drawn with NumPy from fixed seeds (logits NHWC, as rajax gives them; torch sees NCHW):

  equal/*     2 images with 10 ignored pixels each (equal labelled counts): torchvision's batch
              criterion, and each image's cross_entropy alone (also with label_smoothing=0.1);
  unequal/*   the same logits with most of image 1 ignored: the batch cross_entropy of "out" and
              each image's own;
  confusion/* 4 images' logits and labels: the matrix of all of them and its acc_global / iu.
"""

import pathlib

import numpy as np
import torch
import torch.nn.functional as F

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "segmentation_loss.npz"
B, H, W, K, IGNORE = 2, 8, 8, 3, 255


def labels(rng, b, ignored):
  t = rng.integers(0, K, (b, H, W)).astype(np.int64)
  for i in range(b):
    flat = t[i].reshape(-1)
    flat[rng.choice(H * W, ignored, replace=False)] = IGNORE
  return t


def nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).double()


def ce(logits, target, **kw):
  return F.cross_entropy(nchw(logits), torch.from_numpy(target), ignore_index=IGNORE, **kw).item()


def main():
  rng = np.random.default_rng(0)
  out = {}
  logits = rng.normal(size=(B, H, W, K)).astype(np.float32)
  aux = rng.normal(size=(B, H, W, K)).astype(np.float32)
  t = labels(rng, B, 10)
  out.update({"equal/out": logits, "equal/aux": aux, "equal/labels": t.astype(np.int32),
              "equal/criterion": np.float64(ce(logits, t) + 0.5 * ce(aux, t)),
              "equal/per_image": np.array([ce(logits[i:i + 1], t[i:i + 1]) + 0.5 * ce(aux[i:i + 1], t[i:i + 1])
                                           for i in range(B)]),
              "equal/per_image_smoothed": np.array([ce(logits[i:i + 1], t[i:i + 1], label_smoothing=0.1)
                                                    for i in range(B)])})
  u = t.copy()
  u[1, :6] = IGNORE
  out.update({"unequal/labels": u.astype(np.int32), "unequal/batch": np.float64(ce(logits, u)),
              "unequal/per_image": np.array([ce(logits[i:i + 1], u[i:i + 1]) for i in range(B)])})
  z = rng.normal(size=(4, H, W, K)).astype(np.float32)
  c = labels(rng, 4, 7)
  a, p = torch.from_numpy(c).flatten(), nchw(z).argmax(1).flatten()
  k = (a >= 0) & (a < K)
  mat = torch.bincount(K * a[k] + p[k], minlength=K ** 2).reshape(K, K).double()
  out.update({"confusion/logits": z, "confusion/labels": c.astype(np.int32), "confusion/matrix": mat.numpy(),
              "confusion/acc_global": (torch.diag(mat).sum() / mat.sum()).numpy(),
              "confusion/iu": (torch.diag(mat) / (mat.sum(1) + mat.sum(0) - torch.diag(mat))).numpy()})
  np.savez_compressed(OUT, **out)
  print(f"wrote {OUT} ({len(out)} arrays) with torch {torch.__version__}")


if __name__ == "__main__":
  main()
