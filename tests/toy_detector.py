"""A tiny detector of the `rajax.detection.DetectorModel` contract, for specifying how methods,
the trainer and evaluation treat detectors without compiling a real one.

A stride-2 convolution, BatchNorm and ReLU give the features ("conv"); a 1x1 convolution gives one
logit per cell and class (class 0 is background and never predicted). The loss is the per-image
mean binary cross-entropy of those logits against a map that is 1 where a cell's centre lies in a
valid target box of that class; detections are the K best cells, each a square box of 2 cells.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from rajax.detection import Detections, Detector

K = 8
STRIDE = 2


class _Net(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    h = nn.Conv(8, (3, 3), strides=(STRIDE, STRIDE), padding=1, name="conv")(images * 2.0 - 1.0)
    h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(h))
    return nn.Conv(self.num_classes, (1, 1), name="head")(h), h


@dataclasses.dataclass(frozen=True)
class ToyModel:
  num_classes: int = 3
  background: bool = True

  @property
  def class_names(self):
    return ("background",) + tuple(f"class{i}" for i in range(1, self.num_classes))

  @property
  def net(self):
    return _Net(self.num_classes)

  def logits(self, variables, images, train=False):
    if train:
      (logits, feats), updates = self.net.apply(variables, images, train=True, mutable=["batch_stats"])
      return logits, feats, updates["batch_stats"]
    logits, feats = self.net.apply(variables, images)
    return logits, feats, None

  def target_map(self, targets, shape):
    b, h, w, c = shape
    cy = (jnp.arange(h) + 0.5) * STRIDE
    cx = (jnp.arange(w) + 0.5) * STRIDE
    bx = targets.boxes[:, :, None, None, :]
    inside = ((cx[None, None, None, :] >= bx[..., 0]) & (cx[None, None, None, :] < bx[..., 2])
              & (cy[None, None, :, None] >= bx[..., 1]) & (cy[None, None, :, None] < bx[..., 3])
              & targets.valid[:, :, None, None])                                      # [B, N, h, w]
    onehot = jax.nn.one_hot(targets.labels, c) * targets.valid[..., None]              # [B, N, C]
    return jnp.minimum(jnp.einsum("bnhw,bnc->bhwc", inside.astype(jnp.float32), onehot), 1.0)

  def loss(self, variables, images, targets, *, rng=None, train=False):
    del rng
    logits, _, stats = self.logits(variables, images, train)
    per = jnp.mean(optax.sigmoid_binary_cross_entropy(logits[..., 1:], self.target_map(targets, logits.shape)[..., 1:]),
                   axis=(1, 2, 3))
    return per, {"bce": per}, stats

  def features(self, variables, images):
    return {"conv": self.logits(variables, images)[1]}

  def detect(self, variables, images):
    logits, _, _ = self.logits(variables, images)
    b, h, w, c = logits.shape
    scores = jax.nn.sigmoid(logits[..., 1:]).reshape(b, -1)
    top, idx = jax.lax.top_k(scores, K)
    cell, label = idx // (c - 1), idx % (c - 1) + 1
    y, x = (cell // w).astype(jnp.float32), (cell % w).astype(jnp.float32)
    boxes = jnp.stack([x * STRIDE - STRIDE / 2, y * STRIDE - STRIDE / 2, x * STRIDE + 1.5 * STRIDE,
                       y * STRIDE + 1.5 * STRIDE], -1)
    boxes = jnp.clip(boxes, 0.0, jnp.asarray([w * STRIDE, h * STRIDE] * 2, jnp.float32))
    return Detections(boxes, top, label.astype(jnp.int32), top > 0.05)


ARCHS = {"toy_detector": {}}


def build(name, weights=None, *, num_classes=3, dtype=None, seed=0, **options):
  del dtype, options
  if weights not in (None, "random"):
    raise ValueError("toy_detector has random weights only")
  model = ToyModel(num_classes=num_classes)
  variables = model.net.init(jax.random.PRNGKey(seed), jnp.zeros((1, 16, 16, 3)))
  return Detector(name=name, model=model, variables=variables)
