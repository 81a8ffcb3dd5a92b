"""Image classification as a recognition task: logits [B, K] against integer labels [B].

What a method needs from a task, for a classifier (every task module provides these names):

  dataset_targets   the batch's own labels (batch["label"]);
  recognition_loss  R's training loss on images, given the recognizer: here the cross-entropy of
                    its logits, in inference mode or (trained R) training mode;
  embed             what unsupervised RA compares between P(x) and y: the logits;
  features          (outputs, named feature maps), for feature (perceptual) losses;
  step_metrics      the scalars a train step logs about R's outputs: top-1;
  loss              softmax cross-entropy (optionally label-smoothed), one value per example;
  distance          how far two outputs on the same image are (unsupervised RA): "prob_mse", "kl";
  pseudo_targets    labels made from the classifier's own output on the clean image: its top-1
                    class and that class's probability (for data without labels);
  metrics           per-example top-1 / top-5 correctness and cross-entropy, for evaluation;
  restrict          training on a subset of the classes (the paper's category transfer): logits
                    over the subset, labels as positions in it, and a 0/1 weight per example.

`class_halves` is the deterministic split of the classes into two halves that training on a
subset and the category-transfer table share.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import jax
import jax.numpy as jnp

from rajax import losses, metrics as metrics_lib

NAME = "classification"
DISTANCES = losses.DISTANCES


def loss(*, outputs: jax.Array, targets: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy of logits [B, K] against labels [B] (or soft labels [B, K])."""
  return losses.recognition_ce(logits=outputs, labels=targets, label_smoothing=label_smoothing, reduction="none")


def dataset_targets(batch) -> jax.Array:
  """The labels a dataset batch carries: batch["label"], [B] int."""
  if "label" not in batch:
    raise ValueError("This batch has no 'label': train with config.labels='recognizer' (R's own top-1 on the clean "
                     "image) or use data with labels.")
  return batch["label"]


def recognition_loss(recognizer, images: jax.Array, targets: jax.Array, *, label_smoothing: float = 0.0,
                     classes: Sequence[int] = (), variables=None, train: bool = False, rng: jax.Array | None = None):
  """(per-example loss [B], logits [B, K], batch_stats) of `recognizer` on `images` against `targets`.

  `train`: R in training mode on `variables` (BatchNorm on batch statistics, returned updated);
  otherwise inference mode on `variables` (default: R's own) and batch_stats is None. `classes`:
  the loss sees only those classes' logits, and `targets` are positions in `classes` (`restrict`).
  """
  if train:
    logits, stats = recognizer.apply_train(variables, images, rng=rng)
  else:
    logits, stats = recognizer(images) if variables is None else recognizer.apply(variables, images), None
  sub = jnp.take(logits, jnp.asarray(classes), axis=-1) if classes else logits
  return loss(outputs=sub, targets=targets, label_smoothing=label_smoothing), logits, stats


def embed(recognizer, images: jax.Array) -> jax.Array:
  """R's logits on `images`: what `distance` compares."""
  return recognizer(images)


def features(recognizer, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(logits, named feature maps) of `recognizer` on `images`: what a perceptual loss compares."""
  return recognizer(images, features=True)


def step_metrics(outputs: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
  """{"top1": mean top-1 correctness} of a train step's logits against its labels."""
  return {"top1": jnp.mean(top1(outputs, targets))}


def distance(kind: str, *, outputs: jax.Array, target_outputs: jax.Array) -> jax.Array:
  """Per-example distance `kind` ("prob_mse" | "kl") between logits and the clean image's logits."""
  if kind not in DISTANCES:
    raise ValueError(f"Unknown distance {kind!r} between classifier outputs; one of {', '.join(DISTANCES)}.")
  return DISTANCES[kind](logits=outputs, target_logits=target_outputs, reduction="none")


def pseudo_targets(outputs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(labels, confidence) from logits on the clean image: the top-1 class and its softmax probability."""
  outputs = jax.lax.stop_gradient(outputs).astype(jnp.float32)
  labels = jnp.argmax(outputs, axis=-1).astype(jnp.int32)
  return labels, jnp.max(jax.nn.softmax(outputs, axis=-1), axis=-1)


def top1(outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example top-1 correctness (float 0/1)."""
  return metrics_lib.topk_correct(outputs, targets, ks=(1,))["top1"].astype(jnp.float32)


def metrics(outputs: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
  """Per-example {"top1", "top5" (when K >= 5), "recognition_ce"} of logits against labels."""
  ks = (1, 5) if outputs.shape[-1] >= 5 else (1,)
  out = dict(metrics_lib.topk_correct(outputs, targets, ks=ks))
  out["recognition_ce"] = losses.recognition_ce(logits=outputs, labels=targets, reduction="none")
  return out


def restrict(classes: Sequence[int], outputs: jax.Array | None, targets: jax.Array):
  """(logits over `classes`, labels as positions in `classes`, weight 1.0 where the label is in `classes`)."""
  classes = jnp.asarray(classes, jnp.int32)
  hit = targets[:, None] == classes[None, :]
  sub = None if outputs is None else jnp.take(outputs, classes, axis=-1)
  return sub, jnp.argmax(hit, axis=-1).astype(jnp.int32), jnp.any(hit, axis=-1).astype(jnp.float32)


def class_halves(num_classes: int, seed: int = 0) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Splits range(num_classes) into halves A and B (each sorted), the same for the same seed everywhere.

  Classes are ordered by the SHA-256 of "seed:class"; A is the first half of that order.
  """
  if num_classes < 2:
    raise ValueError(f"Cannot split {num_classes} class(es) into two halves; need at least 2.")
  order = sorted(range(num_classes), key=lambda c: hashlib.sha256(f"{seed}:{c}".encode()).digest())
  half = num_classes // 2
  return tuple(sorted(order[:half])), tuple(sorted(order[half:]))
