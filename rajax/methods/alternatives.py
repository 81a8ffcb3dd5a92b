"""The paper's Appendix A: the alternatives to a fixed recognition loss that it compares against.

    ra_joint                 P: MSE + lam * L(R(P(x))), and R fine-tuned jointly on w * L(R(P(x)))
                             with its own optimizer (SGD with momentum: config.optim.recognizer), in
                             training mode (its BatchNorm statistics move; config.method.recognizer_bn
                             ="frozen" keeps them, for small batches)
    recognizer_on_processor  R trained on L(R(P(x))) with P fixed (a plain run's processor,
                             config.method.processor_weights); from scratch (recognizer.weights=random)
                             or fine-tuned from its weights
    recognizer_on_input      R trained on L(R(up(x))), the degraded input itself (bicubic-upsampled
                             to the clean size for SR), from scratch or fine-tuned
    recognizer_on_clean      R trained on L(R(y)), the clean images: R's own training (the paper's loss
                             detectors on VOC from ImageNet backbones); it shows the upsampled input
    ra_no_pixel              P: lam * L(R(P(x))) alone, without the pixel loss
    perceptual               P: MSE + lam * sum_l MSE(phi_l(P(x)), phi_l(y)), the feature ("perceptual")
                             loss of Ledig et al. on a frozen recognizer's named features
                             (config.method.layers, e.g. VGG-16's "stage5", its conv5_3 activations)

L is R's task loss (cross-entropy for classifiers); labels as for RA (`config.labels`). What each
shows and feeds a recognizer (`forward`): P's output for the methods that train P; the fixed P's
output or the upsampled input for the methods that train only R, where the trained R is the
recognizer that reads them (`rajax.methods.evaluation_recognizer`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rajax import losses
from rajax.methods import base, ra


# ==================================================================== R fine-tuned jointly with P

def make_joint(setup: base.Setup) -> base.Method:
  config, modules = setup.config, setup.modules
  lam = config.method.get("lam")
  lam = 1e-3 if lam is None else lam
  r_weight = config.method.recognizer_weight
  pixel_loss = config.method.get("pixel_loss", "mse")
  smoothing = config.method.label_smoothing
  rec = modules["recognizer"]
  task = base.task_of(rec)

  def loss_fn(params, batch_stats, batch, rng):
    x, y = base.to_float_images(batch["input"]), base.to_float_images(batch["target"])
    out, p_stats = base.apply_train(modules["processor"], params["processor"], batch_stats["processor"], x)
    r_vars = {"params": params["recognizer"], "batch_stats": batch_stats["recognizer"]}
    labels = base.teacher_labels(config, batch, rec, y)   # R as it started: a fixed teacher
    per_example, logits, r_stats = base.trained_recognizer_loss(config, task, rec, out, labels, r_vars, rng, smoothing)
    pixel_name, pixel = ra.pixel_term(pixel_loss, out, y)
    terms = {pixel_name: pixel, "recognition": jnp.mean(per_example)}
    total = pixel + lam * terms["recognition"]
    return total, base.LossAux(terms, {"processor": p_stats, "recognizer": r_stats}, logits, out, labels)

  def train_step(state, batch, frozen):
    batch = base.with_input(batch, setup.device_stage)
    rng, key = jax.random.split(state.rng)
    (total, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.batch_stats, batch, key)
    # One backward pass: d(total)/dR = lam * dL/dR, so R's own objective w * L has gradient (w / lam) * that.
    grads = dict(grads, recognizer=jax.tree.map(lambda g: g * (r_weight / lam), grads["recognizer"]))
    params, opt_state = base.apply_gradients(state, grads, setup.optimizers, ("processor", "recognizer"))
    new = state.replace(step=state.step + 1, params=params, batch_stats=aux.batch_stats, opt_state=opt_state, rng=rng)
    return new, base.train_metrics(total, aux.terms, grads, aux.outputs, aux.targets, task, aux.image,
                                   base.to_float_images(batch["target"]))

  return base.Method(spec=METHODS["ra_joint"], init=lambda rng, initial=None: base.init_trained(setup, rng, initial),
                     train_step=train_step, forward=ra.forward_of(setup))


# ==================================================================== R trained on fixed images

def forward_fixed_processor(variables, frozen, x):
  """The `forward` of a method that trains R on a fixed P's outputs: the frozen P's, clipped."""
  out = jnp.clip(frozen["processor"](x), 0.0, 1.0)
  return {"human": out, "machine": out}


def _upsampled_input(scale: int):
  def forward(variables, frozen, x):
    if scale > 1:
      b, h, w, c = x.shape
      x = jax.image.resize(x, (b, h * scale, w * scale, c), "bicubic")
    x = jnp.clip(x, 0.0, 1.0)
    return {"human": x, "machine": x}
  return forward


def make_recognizer_training(name: str, forward, *, on_clean: bool = False):
  """R trained alone on `forward`'s "machine" images (or, `on_clean`, on the clean targets)."""
  def make(setup: base.Setup) -> base.Method:
    config, rec = setup.config, setup.modules["recognizer"]
    task = base.task_of(rec)
    smoothing = config.method.label_smoothing

    def loss_fn(params, batch_stats, batch, frozen, rng):
      x, y = base.to_float_images(batch["input"]), base.to_float_images(batch["target"])
      images = y if on_clean else jax.lax.stop_gradient(forward({}, frozen, x)["machine"])
      r_vars = {"params": params["recognizer"], "batch_stats": batch_stats["recognizer"]}
      labels = base.teacher_labels(config, batch, rec, y)   # R as it started: a fixed teacher
      per_example, logits, r_stats = base.trained_recognizer_loss(config, task, rec, images, labels, r_vars, rng,
                                                                  smoothing)
      loss = jnp.mean(per_example)
      return loss, base.LossAux({"recognition": loss}, {"recognizer": r_stats}, logits, images, labels)

    def train_step(state, batch, frozen):
      batch = base.with_input(batch, setup.device_stage)
      rng, key = jax.random.split(state.rng)
      (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.batch_stats, batch, frozen,
                                                                     key)
      params, opt_state = base.apply_gradients(state, grads, setup.optimizers, ("recognizer",))
      new = state.replace(step=state.step + 1, params=params, batch_stats=aux.batch_stats, opt_state=opt_state, rng=rng)
      return new, base.train_metrics(loss, aux.terms, grads, aux.outputs, aux.targets, task,
                                     None if on_clean else aux.image, base.to_float_images(batch["target"]))

    return base.Method(spec=METHODS[name], init=lambda rng, initial=None: base.init_trained(setup, rng, initial),
                       train_step=train_step, forward=forward)
  return make


def _make_on_input(setup: base.Setup) -> base.Method:
  scale = setup.config.degrade.scale if setup.config.task == "sr" else 1
  return make_recognizer_training("recognizer_on_input", _upsampled_input(scale))(setup)


def _make_on_clean(setup: base.Setup) -> base.Method:
  scale = setup.config.degrade.scale if setup.config.task == "sr" else 1
  return make_recognizer_training("recognizer_on_clean", _upsampled_input(scale), on_clean=True)(setup)


# ==================================================================== P without the pixel loss

def make_no_pixel(setup: base.Setup) -> base.Method:
  settings = ra.Settings.of(setup.config, mode="ra", default_lam=1e-3)
  loss_fn = ra.make_loss_fn(settings, setup.modules)

  def recognition_only(params, batch_stats, batch, recognizer, rng=None):
    _, aux = loss_fn(params, batch_stats, batch, recognizer, rng)
    return settings.lam * aux.terms["recognition"], aux

  return _processor_method("ra_no_pixel", setup, recognition_only)


# ==================================================================== the perceptual (feature) loss

def make_perceptual(setup: base.Setup) -> base.Method:
  config = setup.config
  lam = config.method.get("lam")
  lam = 1e-3 if lam is None else lam
  layers = tuple(config.method.layers)
  modules = setup.modules

  def loss_fn(params, batch_stats, batch, recognizer, rng=None):
    del rng
    x, y = base.to_float_images(batch["input"]), base.to_float_images(batch["target"])
    out, p_stats = base.apply_train(modules["processor"], params["processor"], batch_stats["processor"], x)
    task = base.task_of(recognizer)
    logits, feats = task.features(recognizer, out)
    _, target_feats = task.features(recognizer, y)
    target_feats = jax.lax.stop_gradient(target_feats)
    terms = {"pixel_mse": losses.pixel_mse(pred=out, target=y),
             "recognition": losses.feature_loss(features=feats, target_features=target_feats, layers=layers)}
    labels = base.teacher_labels(config, batch, recognizer, y)
    total = terms["pixel_mse"] + lam * terms["recognition"]
    return total, base.LossAux(terms, {"processor": p_stats}, logits, out, labels)

  return _processor_method("perceptual", setup, loss_fn)


def _processor_method(name: str, setup: base.Setup, loss_fn) -> base.Method:
  """A method that trains P alone on `loss_fn` (ra.make_loss_fn's signature) with R frozen."""

  def train_step(state, batch, frozen):
    recognizer = frozen["recognizer"]
    batch = base.with_input(batch, setup.device_stage)
    rng, key = jax.random.split(state.rng)
    (total, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.batch_stats, batch, recognizer,
                                                                    key)
    params, opt_state = base.apply_gradients(state, grads, setup.optimizers, ("processor",))
    new = state.replace(step=state.step + 1, params=params, batch_stats=aux.batch_stats, opt_state=opt_state, rng=rng)
    return new, ra.processing_metrics(total, aux, grads, base.to_float_images(batch["target"]),
                                      base.task_of(recognizer))

  return base.Method(spec=METHODS[name], init=lambda rng, initial=None: base.init_trained(setup, rng, initial),
                     train_step=train_step, forward=ra.forward_of(setup))


# ==================================================================== config and validation

def validate(config) -> list[str]:
  """The problems of a config for these methods (and SR4IR's, which build on them)."""
  m, problems = config.method, []
  if config.get("labels", "dataset") not in ra.LABEL_SOURCES:
    problems.append(f"config.labels={config.labels!r} is not one of {', '.join(ra.LABEL_SOURCES)}")
  if "lam" in m and m.lam is not None and not m.lam >= 0:
    problems.append(f"config.method.lam={m.lam} must be >= 0 (or None for the method's default)")
  if "recognizer_weight" in m:   # ra_joint and the methods built on it
    if m.get("lam") is not None and not m.lam > 0:
      problems.append(f"config.method.lam must be > 0 for {m.name} (R's gradient is recovered from P's loss)")
    if not m.get("recognizer_weight", 1.0) > 0:
      problems.append(f"config.method.recognizer_weight={m.recognizer_weight} must be > 0")
  if ("recognizer_weight" in m or m.name.startswith("recognizer_on")) and config.get("labels") == "recognizer" \
      and config.recognizer.get("weights") == "random":
    problems.append("config.labels='recognizer' labels with R as it starts, and R starts from random weights "
                    "(config.recognizer.weights='random'): use dataset labels, or start R from trained weights")
  if "recognizer_bn" in m and m.recognizer_bn not in base.RECOGNIZER_BN:
    problems.append(f"config.method.recognizer_bn={m.recognizer_bn!r} is not one of {', '.join(base.RECOGNIZER_BN)}")
  if "label_smoothing" in m and not 0.0 <= m.label_smoothing < 1.0:
    problems.append(f"config.method.label_smoothing={m.label_smoothing} must be in [0, 1)")
  if "processor_weights" in m and not m.processor_weights:
    problems.append(f"config.method.processor_weights is not set: {m.name} trains R on a fixed P's "
                    "outputs; set it to a plain run's processor.msgpack")
  if m.get("pixel_loss", "mse") not in ra.PIXEL_LOSSES:
    problems.append(f"config.method.pixel_loss={m.pixel_loss!r} is not one of {', '.join(ra.PIXEL_LOSSES)}")
  if m.name == "perceptual" and not m.get("layers"):
    problems.append("config.method.layers is empty: name the recognizer features to compare, e.g. ('stage5',)")
  return problems


def _defaults(**fields: Any):
  return lambda: dict(fields)


METHODS = {
    "ra_joint": base.MethodSpec(
        name="ra_joint", title="RA, R fine-tuned jointly",
        summary="P: MSE + lam * L(R(P(x))); R: w * L(R(P(x))), trained with P",
        trains=("processor", "recognizer"), frozen=(), validate=validate, make=make_joint,
        defaults=_defaults(lam=None, recognizer_weight=1.0, label_smoothing=0.0, recognizer_bn="batch")),
    "recognizer_on_processor": base.MethodSpec(
        name="recognizer_on_processor", title="R trained on a fixed P's outputs",
        summary="R: L(R(P(x))), P fixed", trains=("recognizer",), frozen=("processor",), validate=validate,
        make=make_recognizer_training("recognizer_on_processor", forward_fixed_processor),
        defaults=_defaults(processor_weights="", label_smoothing=0.0, recognizer_bn="batch"),
        forward_uses=("processor",)),
    "recognizer_on_input": base.MethodSpec(
        name="recognizer_on_input", title="R trained on the (upsampled) inputs",
        summary="R: L(R(up(x)))", trains=("recognizer",), frozen=(), validate=validate, make=_make_on_input,
        defaults=_defaults(label_smoothing=0.0, recognizer_bn="batch")),
    "recognizer_on_clean": base.MethodSpec(
        name="recognizer_on_clean", title="R trained on clean images",
        summary="R: L(R(y)), R's own training (e.g. the paper's loss detectors on VOC)", trains=("recognizer",),
        frozen=(), validate=validate, make=_make_on_clean, defaults=_defaults(label_smoothing=0.0, recognizer_bn="batch")),
    "ra_no_pixel": base.MethodSpec(
        name="ra_no_pixel", title="RA without the pixel loss", summary="P: lam * L(R(P(x)))",
        trains=("processor",), frozen=("recognizer",), validate=validate, make=make_no_pixel,
        defaults=_defaults(lam=None, label_smoothing=0.0, min_confidence=0.0)),
    "perceptual": base.MethodSpec(
        name="perceptual", title="perceptual loss",
        summary="P: MSE + lam * sum_l MSE(phi_l(P(x)), phi_l(y))", trains=("processor",), frozen=("recognizer",),
        validate=validate, make=make_perceptual, defaults=_defaults(lam=None, layers=("stage5",))),
}
