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
conversion to float happens here, on device.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from rajax import losses, metrics
from rajax.models.recognizers import Recognizer

MODES = ("plain", "ra", "unsupervised", "transformer")
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

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"Unknown mode {self.mode!r}; one of {', '.join(MODES)}.")
    if not self.lam >= 0:
      raise ValueError(f"The recognition loss weight lam must be >= 0, got {self.lam}.")
    if self.distance not in losses.DISTANCES:
      raise ValueError(f"Unknown unsupervised distance {self.distance!r}; one of {sorted(losses.DISTANCES)}.")
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")

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
    terms = {"pixel_mse": losses.pixel_mse(pred=out, target=y)}
    logits = None
    if method.mode == "ra":
      logits = recognizer(out)
      terms["recognition"] = losses.recognition_ce(
          logits=logits, labels=batch["label"], label_smoothing=method.label_smoothing)
    elif method.mode == "unsupervised":
      logits = recognizer(out)
      target_logits = jax.lax.stop_gradient(recognizer(y))
      terms["recognition"] = losses.DISTANCES[method.distance](logits=logits, target_logits=target_logits)
    elif method.mode == "transformer":
      t_out, new_stats["transformer"] = _apply_train(
          networks["transformer"], params["transformer"], batch_stats["transformer"], jax.lax.stop_gradient(out))
      logits = recognizer(t_out)
      terms["recognition"] = losses.recognition_ce(
          logits=logits, labels=batch["label"], label_smoothing=method.label_smoothing)
    total = terms["pixel_mse"] + method.lam * terms.get("recognition", 0.0)
    return total, (terms, new_stats, logits, out)

  return loss_fn


def make_train_step(
    method: Method,
    networks: Mapping[str, nn.Module],
    optimizers: Mapping[str, optax.GradientTransformation],
) -> Callable[[TrainState, Batch, Recognizer | None], tuple[TrainState, Metrics]]:
  """step(state, batch, recognizer) -> (new_state, metrics): one update of every trainable network.

  `recognizer` may be None in "plain" mode. Metrics are scalars averaged over the global batch.
  """
  loss_fn = make_loss_fn(method, networks)
  missing = [n for n in method.networks if n not in optimizers]
  if missing:
    raise ValueError(f"Mode {method.mode!r} trains {list(method.networks)}; no optimizer given for {missing}.")

  def step(state: TrainState, batch: Batch, recognizer: Recognizer | None):
    if method.uses_recognizer and recognizer is None:
      raise ValueError(f"Mode {method.mode!r} needs a recognizer; pass one (or use mode='plain').")
    (total, (terms, new_stats, logits, out)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
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
      out_metrics["top1"] = jnp.mean(metrics.topk_correct(logits, batch["label"], ks=(1,))["top1"].astype(jnp.float32))
    return new_state, out_metrics

  return step


def make_eval_step(method: Method, networks: Mapping[str, nn.Module]) -> Callable:
  """eval_step(state, batch, recognizer) -> masked sums over the batch.

  Returns {"count", "psnr", "ssim", "pixel_mse"} and, with a recognizer, {"top1", "top5",
  "recognition_ce"}: sums over examples whose batch["mask"] is 1 (divide by "count"). Quality
  is measured on P's output; recognition on what R sees (T(P(x)) in the transformer method).
  """
  _check_networks(method, networks)

  def eval_step(state: TrainState, batch: Batch, recognizer: Recognizer | None):
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
      ks = (1, 5) if logits.shape[-1] >= 5 else (1,)
      per_example.update(metrics.topk_correct(logits, batch["label"], ks=ks))
      per_example["recognition_ce"] = losses.recognition_ce(logits=logits, labels=batch["label"], reduction="none")
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
