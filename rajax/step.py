"""The recognition-aware train and eval steps, for all four methods, as pure functions.

    plain         P: MSE(P(x), y)
    ra            P: MSE(P(x), y) + lam * CE(R(P(x)), label)
    unsupervised  P: MSE(P(x), y) + lam * dist(R(P(x)), R(y))        dist: prob_mse | kl
    transformer   P: MSE(P(x), y);  T: lam * CE(R(T(stop_gradient(P(x)))), label)

R is a `Recognizer` passed to the step as an argument: it runs in inference mode and is never
differentiated (gradients are taken only with respect to `state.params`, the trainable tree).
In the transformer method the stop_gradient between P and T means P's update sees no
recognition gradient at all, and T has its own optimizer state; both are updated in one step.

Batches hold "input" and "target" images as uint8 (or float in [0, 1]) and integer "label"s;
conversion to float happens here, on device. A batch without "input" (denoising with the noise
drawn on the device: clean "target" and example "index") is completed first by the step's
`device_stage` (`rajax.degrade.DeviceNoise`, from `rajax.data.Degradation.device_stage(seed)`).
With `Method(labels="recognizer")` the labels are R's own top-1 classes on the clean targets,
computed in the step (for data without labels: the recognition loss then asks P's output to be
recognised as the clean image is).

`Method(classes=...)` trains on a subset of the classes (the paper's category transfer): examples
whose label is outside the subset get zero weight in every loss term (as if the training data had
been filtered to those labels), and the recognition loss sees only the subset's logits.
`class_halves` is the deterministic split of the classes into two halves that the evaluation uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from rajax import losses, metrics
from rajax.models.recognizers import Recognizer

MODES = ("plain", "ra", "unsupervised", "transformer")
LABEL_SOURCES = ("dataset", "recognizer")
# The paper's loss weights (official code): RA 1e-3, unsupervised RA 10, RA with transformer 1e-2.
DEFAULT_LAMBDA = {"plain": 0.0, "ra": 1e-3, "unsupervised": 10.0, "transformer": 1e-2}

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; one entry per trainable network in each dict."""

  step: jax.Array
  params: dict[str, Any]
  batch_stats: dict[str, Any]
  opt_state: dict[str, Any]
  rng: jax.Array


@dataclasses.dataclass(frozen=True)
class Method:
  """Which recognition-aware objective to train, and its weights."""

  mode: str = "ra"
  lam: float = 1e-3
  distance: str = "prob_mse"
  label_smoothing: float = 0.0
  labels: str = "dataset"   # "dataset": batch["label"]; "recognizer": R's top-1 on the clean target
  # With labels="recognizer": the recognition term of "ra"/"transformer" counts only the examples R
  # itself recognises with at least this top-1 probability on the clean target (0: all of them).
  min_confidence: float = 0.0
  classes: tuple[int, ...] = ()   # train on these classes only (empty: all classes)

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"Unknown mode {self.mode!r}; one of {', '.join(MODES)}.")
    if not self.lam >= 0:
      raise ValueError(f"The recognition loss weight lam must be >= 0, got {self.lam}.")
    if self.distance not in losses.DISTANCES:
      raise ValueError(f"Unknown unsupervised distance {self.distance!r}; one of {sorted(losses.DISTANCES)}.")
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")
    if self.labels not in LABEL_SOURCES:
      raise ValueError(f"Unknown label source {self.labels!r}; one of {', '.join(LABEL_SOURCES)}.")
    if not 0.0 <= self.min_confidence < 1.0:
      raise ValueError(f"min_confidence must be in [0, 1), got {self.min_confidence}.")
    if self.min_confidence and self.labels != "recognizer":
      raise ValueError("min_confidence applies to recognizer-made labels; set labels='recognizer' or "
                       "min_confidence=0.")
    if self.classes and (len(set(self.classes)) != len(self.classes) or min(self.classes) < 0):
      raise ValueError(f"classes must be distinct non-negative class indices, got {self.classes}.")
    if self.classes and self.mode == "plain" and self.labels == "recognizer":
      raise ValueError("Restricting plain training to classes needs dataset labels (labels='dataset'): "
                       "plain mode has no recognizer to label the images.")

  @property
  def networks(self) -> tuple[str, ...]:
    """Names of the trainable networks."""
    return ("processor", "transformer") if self.mode == "transformer" else ("processor",)

  @property
  def uses_recognizer(self) -> bool:
    return self.mode != "plain"


def to_float_images(x: jax.Array) -> jax.Array:
  """uint8 images -> float32 in [0, 1]; float images are cast to float32 unchanged."""
  if x.dtype == jnp.uint8:
    return x.astype(jnp.float32) / 255.0
  return x.astype(jnp.float32)


def with_input(batch: Batch, device_stage: Callable[[Batch], Batch] | None) -> Batch:
  """The batch with its processor "input": made by `device_stage` on device if the batch has none."""
  if device_stage is not None:
    batch = device_stage(batch)
  if "input" not in batch:
    raise ValueError(f"The batch has no 'input' (keys: {sorted(batch)}): its degradation is left to the device, "
                     "so build the step with device_stage=degradation.device_stage(seed) "
                     "(e.g. rajax.degrade.DeviceNoise(sigma, seed)).")
  return batch


def class_halves(num_classes: int, seed: int = 0) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Splits range(num_classes) into halves A and B (each sorted), the same for the same seed everywhere.

  Classes are ordered by the SHA-256 of "seed:class"; A is the first half of that order.
  """
  if num_classes < 2:
    raise ValueError(f"Cannot split {num_classes} class(es) into two halves; need at least 2.")
  order = sorted(range(num_classes), key=lambda c: hashlib.sha256(f"{seed}:{c}".encode()).digest())
  half = num_classes // 2
  return tuple(sorted(order[:half])), tuple(sorted(order[half:]))


def restrict_to_classes(classes, logits: jax.Array | None, labels: jax.Array):
  """(logits over `classes`, labels as positions in `classes`, weight 1.0 where the label is in `classes`)."""
  classes = jnp.asarray(classes, jnp.int32)
  hit = labels[:, None] == classes[None, :]
  sub_logits = None if logits is None else jnp.take(logits, classes, axis=-1)
  return sub_logits, jnp.argmax(hit, axis=-1).astype(jnp.int32), jnp.any(hit, axis=-1).astype(jnp.float32)


def _weighted_mean(per_example: jax.Array, weight: jax.Array) -> jax.Array:
  return jnp.sum(per_example * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def batch_labels(method: Method, batch: Batch, recognizer: Recognizer | None, clean: jax.Array) -> jax.Array | None:
  """The labels the recognition terms use: the batch's, or R's top-1 on the clean images."""
  return labels_and_confidence(method, batch, recognizer, clean)[0]


def labels_and_confidence(method: Method, batch: Batch, recognizer: Recognizer | None,
                          clean: jax.Array) -> tuple[jax.Array | None, jax.Array | None]:
  """(labels, weight): `batch_labels`, and with `method.min_confidence` a 0/1 weight per example
  that is 1 where R's top-1 probability on the clean image reaches it (None otherwise)."""
  if method.labels != "recognizer":
    return batch["label"], None
  if recognizer is None:
    return None, None
  logits = jax.lax.stop_gradient(recognizer(clean)).astype(jnp.float32)
  labels = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if not method.min_confidence:
    return labels, None
  confidence = jnp.max(jax.nn.softmax(logits, axis=-1), axis=-1)
  return labels, (confidence >= method.min_confidence).astype(jnp.float32)


def _apply_train(net: nn.Module, params, batch_stats, x):
  """Runs `net` in training mode; returns (output, updated batch_stats)."""
  out, updates = net.apply({"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"])
  return out, updates["batch_stats"]


def _apply_eval(net: nn.Module, params, batch_stats, x):
  return net.apply({"params": params, "batch_stats": batch_stats}, x, train=False)


def make_loss_fn(method: Method, networks: Mapping[str, nn.Module]) -> Callable:
  """loss_fn(params, batch_stats, batch, recognizer) -> (total, (terms, new_batch_stats, logits)).

  `terms` holds the per-term scalars ("pixel_mse", "recognition") so tests and users can
  differentiate any one of them.
  """
  _check_networks(method, networks)

  def loss_fn(params, batch_stats, batch: Batch, recognizer: Recognizer | None):
    x, y = to_float_images(batch["input"]), to_float_images(batch["target"])
    out, new_stats = _apply_train(networks["processor"], params["processor"], batch_stats["processor"], x)
    new_stats = {"processor": new_stats}
    logits = None
    labels, confident = None, None
    if method.mode in ("ra", "transformer"):
      labels, confident = labels_and_confidence(method, batch, recognizer, y)
    if method.mode == "unsupervised":  # needs no labels; they only feed the top-1 metric
      target_logits = jax.lax.stop_gradient(recognizer(y))
      labels = jnp.argmax(target_logits, axis=-1) if method.labels == "recognizer" else batch["label"]
    weight = None  # per-example weights when training on a subset of the classes
    if method.classes:
      if labels is None:  # plain mode: only the dataset labels select the examples
        labels = batch["label"]
      _, sub_labels, weight = restrict_to_classes(method.classes, None, labels)
    reduce = (lambda v: jnp.mean(v)) if weight is None else (lambda v: _weighted_mean(v, weight))
    if confident is not None:  # the recognition term counts the confidently recognised examples only
      rec_weight = confident if weight is None else confident * weight
      reduce_rec = lambda v: _weighted_mean(v, rec_weight)
    else:
      reduce_rec = reduce
    sub = (lambda z: z) if not method.classes else (lambda z: jnp.take(z, jnp.asarray(method.classes), axis=-1))
    ce_labels = labels if not method.classes else sub_labels
    terms = {"pixel_mse": reduce(losses.pixel_mse(pred=out, target=y, reduction="none"))}
    if method.mode == "ra":
      logits = recognizer(out)
      terms["recognition"] = reduce_rec(losses.recognition_ce(
          logits=sub(logits), labels=ce_labels, label_smoothing=method.label_smoothing, reduction="none"))
    elif method.mode == "unsupervised":
      logits = recognizer(out)
      terms["recognition"] = reduce(losses.DISTANCES[method.distance](
          logits=sub(logits), target_logits=sub(target_logits), reduction="none"))
    elif method.mode == "transformer":
      t_out, new_stats["transformer"] = _apply_train(
          networks["transformer"], params["transformer"], batch_stats["transformer"], jax.lax.stop_gradient(out))
      logits = recognizer(t_out)
      terms["recognition"] = reduce_rec(losses.recognition_ce(
          logits=sub(logits), labels=ce_labels, label_smoothing=method.label_smoothing, reduction="none"))
    total = terms["pixel_mse"] + method.lam * terms.get("recognition", 0.0)
    return total, (terms, new_stats, logits, out, labels)

  return loss_fn


def make_train_step(
    method: Method,
    networks: Mapping[str, nn.Module],
    optimizers: Mapping[str, optax.GradientTransformation],
    *,
    device_stage: Callable[[Batch], Batch] | None = None,
) -> Callable[[TrainState, Batch, Recognizer | None], tuple[TrainState, Metrics]]:
  """step(state, batch, recognizer) -> (new_state, metrics): one update of every trainable network.

  `recognizer` may be None in "plain" mode. Metrics are scalars averaged over the global batch.
  `device_stage` (batch -> batch) runs first and makes a missing "input" (see `with_input`).
  """
  loss_fn = make_loss_fn(method, networks)
  missing = [n for n in method.networks if n not in optimizers]
  if missing:
    raise ValueError(f"Mode {method.mode!r} trains {list(method.networks)}; no optimizer given for {missing}.")

  def step(state: TrainState, batch: Batch, recognizer: Recognizer | None):
    if method.uses_recognizer and recognizer is None:
      raise ValueError(f"Mode {method.mode!r} needs a recognizer; pass one (or use mode='plain').")
    batch = with_input(batch, device_stage)
    (total, (terms, new_stats, logits, out, labels)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, batch, recognizer)
    params, opt_state = dict(state.params), dict(state.opt_state)
    for name in method.networks:
      updates, opt_state[name] = optimizers[name].update(grads[name], state.opt_state[name], state.params[name])
      params[name] = optax.apply_updates(state.params[name], updates)
    rng, _ = jax.random.split(state.rng)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state, rng=rng)
    y = to_float_images(batch["target"])
    out_metrics = {"loss": total, **terms,
                   "psnr": jnp.mean(metrics.psnr(jnp.clip(out, 0.0, 1.0), y)),
                   "grad_norm": optax.tree.norm(grads["processor"])}
    if "transformer" in grads:
      out_metrics["grad_norm_transformer"] = optax.tree.norm(grads["transformer"])
    if logits is not None:
      out_metrics["top1"] = jnp.mean(metrics.topk_correct(logits, labels, ks=(1,))["top1"].astype(jnp.float32))
    return new_state, out_metrics

  return step


def make_eval_step(method: Method, networks: Mapping[str, nn.Module], *,
                   device_stage: Callable[[Batch], Batch] | None = None) -> Callable:
  """eval_step(state, batch, recognizer) -> masked sums over the batch.

  Returns {"count", "psnr", "ssim", "pixel_mse"} and, with a recognizer, {"top1", "top5",
  "recognition_ce"}: sums over examples whose batch["mask"] is 1 (divide by "count"). Quality
  is measured on P's output; recognition on what R sees (T(P(x)) in the transformer method).
  `device_stage` as in make_train_step.
  """
  _check_networks(method, networks)

  def eval_step(state: TrainState, batch: Batch, recognizer: Recognizer | None):
    batch = with_input(batch, device_stage)
    x, y = to_float_images(batch["input"]), to_float_images(batch["target"])
    mask = batch["mask"].astype(jnp.float32) if "mask" in batch else jnp.ones(x.shape[0], jnp.float32)
    out = _apply_eval(networks["processor"], state.params["processor"], state.batch_stats["processor"], x)
    out = jnp.clip(out, 0.0, 1.0)
    per_example = {"psnr": metrics.psnr(out, y), "ssim": metrics.ssim(out, y),
                   "pixel_mse": losses.pixel_mse(pred=out, target=y, reduction="none")}
    if recognizer is not None:
      seen = out
      if method.mode == "transformer":
        seen = _apply_eval(networks["transformer"], state.params["transformer"], state.batch_stats["transformer"], out)
      logits = recognizer(seen)
      labels = batch_labels(method, batch, recognizer, y)
      ks = (1, 5) if logits.shape[-1] >= 5 else (1,)
      per_example.update(metrics.topk_correct(logits, labels, ks=ks))
      per_example["recognition_ce"] = losses.recognition_ce(logits=logits, labels=labels, reduction="none")
    sums = {k: jnp.sum(v.astype(jnp.float32) * mask) for k, v in per_example.items()}
    sums["count"] = jnp.sum(mask)
    return sums

  return eval_step


def init_state(
    method: Method,
    networks: Mapping[str, nn.Module],
    optimizers: Mapping[str, optax.GradientTransformation],
    *,
    rng: jax.Array,
    input_shape: tuple[int, ...],
) -> TrainState:
  """A fresh TrainState; `input_shape` is one processor input, e.g. (56, 56, 3)."""
  _check_networks(method, networks)
  rng, p_key, t_key = jax.random.split(rng, 3)
  x = jnp.zeros((1, *input_shape), jnp.float32)
  variables = {"processor": networks["processor"].init(p_key, x, train=False)}
  if method.mode == "transformer":
    out_shape = jax.eval_shape(lambda v: networks["processor"].apply(v, x), variables["processor"]).shape
    variables["transformer"] = networks["transformer"].init(t_key, jnp.zeros(out_shape, jnp.float32), train=False)
  params = {n: v["params"] for n, v in variables.items()}
  batch_stats = {n: v.get("batch_stats", {}) for n, v in variables.items()}
  opt_state = {n: optimizers[n].init(params[n]) for n in method.networks}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=opt_state, rng=rng)


def _check_networks(method: Method, networks: Mapping[str, nn.Module]) -> None:
  missing = [n for n in method.networks if n not in networks]
  if missing:
    raise ValueError(f"Mode {method.mode!r} needs networks {list(method.networks)}; missing {missing}.")
