"""The paper's four methods: plain processing, RA, unsupervised RA and RA with a transformer.

    plain         P: MSE(P(x), y)
    ra            P: MSE(P(x), y) + lam * L(R(P(x)), label)
    unsupervised  P: MSE(P(x), y) + lam * dist(R(P(x)), R(y))        dist: prob_mse | kl
    transformer   P: MSE(P(x), y);  T: lam * L(R(T(stop_gradient(P(x)))), label)

L and dist come from R's task (`rajax.tasks`): softmax cross-entropy and a distance between
softmax outputs for classifiers. R is frozen: a step argument in inference mode, never
differentiated (gradients are taken only with respect to the state's parameters). In the
transformer method the stop_gradient between P and T means P's update sees no recognition
gradient at all; T has its own optimizer; both are updated in one step.

Settings (`config.method`): `lam` (None: the paper's weight for the method), `distance`
(unsupervised), `label_smoothing`, `min_confidence` (with `config.labels="recognizer"`: the
recognition term counts only the examples R itself recognises on the clean image with at least this
top-1 probability). `config.labels` says where labels come from ("dataset", or "recognizer": R's
own pseudo-targets on the clean image, for data without labels); `config.classes.half` trains on
half A or B of the classes (the paper's category transfer): examples whose label is outside the
half get zero weight in every loss term, and the recognition loss sees only the half's outputs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from rajax import losses, metrics as metrics_lib
from rajax.methods import base
from rajax import tasks as tasks_lib
from rajax.tasks import classification

# The paper's loss weights (official code): RA 1e-3, unsupervised RA 10, RA with transformer 1e-2.
DEFAULT_LAMBDA = {"plain": 0.0, "ra": 1e-3, "unsupervised": 10.0, "transformer": 1e-2}
LABEL_SOURCES = ("dataset", "recognizer")
# The pixel term of P's loss, by config.method.pixel_loss: its metric name and per-example function.
PIXEL_LOSSES = {"mse": ("pixel_mse", losses.pixel_mse), "l1": ("pixel_l1", losses.pixel_l1)}


def pixel_term(kind: str, out: jax.Array, y: jax.Array, reduce=jnp.mean) -> tuple[str, jax.Array]:
  """(metric name, value) of the pixel loss `kind` ("mse" | "l1") between P's output and the clean target."""
  name, fn = PIXEL_LOSSES[kind]
  return name, reduce(fn(pred=out, target=y, reduction="none"))


@dataclasses.dataclass(frozen=True)
class Settings:
  """The objective of one of the four methods, as its config sets it."""

  mode: str = "ra"
  lam: float = 1e-3
  distance: str = "prob_mse"
  label_smoothing: float = 0.0
  labels: str = "dataset"   # "dataset": batch["label"]; "recognizer": R's pseudo-targets on the clean target
  min_confidence: float = 0.0
  classes: tuple[int, ...] = ()   # train on these classes only (empty: all classes)
  recognizer_loss: tuple[tuple[str, Any], ...] = ()   # config.recognizer.loss: options of R's task loss
  pixel_loss: str = "mse"   # the pixel term: "mse" (the paper's) or "l1" (SR4IR's)

  def __post_init__(self):
    problems = _problems(self)
    if problems:
      raise ValueError("; ".join(problems))

  @classmethod
  def of(cls, config, mode: str | None = None, default_lam: float | None = None) -> "Settings":
    """The settings `config` describes (config.method, config.labels, config.classes); `mode` and
    `default_lam` let a method of another family use one of these objectives with its own name."""
    m = config.method
    mode = mode or m.name
    lam = (DEFAULT_LAMBDA[mode] if default_lam is None else default_lam) if m.get("lam") is None else m.lam
    classes = ()
    if config.get("classes") and config.classes.half:
      if config.classes.half not in ("A", "B"):
        raise ValueError(f"config.classes.half={config.classes.half!r} must be '', 'A' or 'B'")
      halves = classification.class_halves(config.recognizer.num_classes, config.classes.seed)
      classes = halves["AB".index(config.classes.half)]
    return cls(mode=mode, lam=lam, distance=m.get("distance", "prob_mse"),
               label_smoothing=m.get("label_smoothing", 0.0), labels=config.get("labels", "dataset"),
               min_confidence=m.get("min_confidence", 0.0), classes=tuple(classes),
               recognizer_loss=tuple(sorted((config.recognizer.get("loss") or {}).items())),
               pixel_loss=m.get("pixel_loss", "mse"))

  @property
  def trains(self) -> tuple[str, ...]:
    return ("processor", "transformer") if self.mode == "transformer" else ("processor",)


def _problems(s: Settings) -> list[str]:
  out = []
  if s.mode not in DEFAULT_LAMBDA:
    out.append(f"unknown method {s.mode!r}; one of {', '.join(DEFAULT_LAMBDA)}")
  if not s.lam >= 0:
    out.append(f"config.method.lam={s.lam} must be >= 0 (or None for the method's default)")
  known = [d for task in tasks_lib.TASKS.values() for d in task.DISTANCES]
  if s.distance not in known:
    out.append(f"config.method.distance={s.distance!r} is not one of {', '.join(known)}")
  if not 0.0 <= s.label_smoothing < 1.0:
    out.append(f"config.method.label_smoothing={s.label_smoothing} must be in [0, 1)")
  if s.pixel_loss not in PIXEL_LOSSES:
    out.append(f"config.method.pixel_loss={s.pixel_loss!r} is not one of {', '.join(PIXEL_LOSSES)}")
  if s.labels not in LABEL_SOURCES:
    out.append(f"config.labels={s.labels!r} is not one of {', '.join(LABEL_SOURCES)}")
  if not 0.0 <= s.min_confidence < 1.0:
    out.append(f"config.method.min_confidence={s.min_confidence} must be in [0, 1)")
  if s.min_confidence and s.mode not in ("ra", "transformer"):
    out.append(f"config.method.min_confidence filters the recognition term of ra and transformer; method {s.mode!r} "
               "has no such filter: set it to 0")
  if s.min_confidence and s.labels != "recognizer":
    out.append("config.method.min_confidence applies to recognizer-made labels: set config.labels='recognizer' "
               "or config.method.min_confidence=0")
  if s.classes and (len(set(s.classes)) != len(s.classes) or min(s.classes) < 0):
    out.append(f"classes must be distinct non-negative class indices, got {s.classes}")
  if s.classes and s.mode == "plain" and s.labels == "recognizer":
    out.append("training plain processing on a class half needs dataset labels (config.labels='dataset'): "
               "plain processing has no recognizer to label the images")
  return out


LossAux = base.LossAux


def targets_and_confidence(settings: Settings, batch: base.Batch, recognizer, clean: jax.Array):
  """(targets, weight): the batch's labels, or R's pseudo-targets on the clean images; with
  `settings.min_confidence` a 0/1 weight per example that is 1 where R's top-1 probability on the
  clean image reaches it (None otherwise)."""
  if settings.labels != "recognizer":
    return (base.task_of(recognizer) if recognizer is not None else classification).dataset_targets(batch), None
  if recognizer is None:
    return None, None
  labels, confidence = base.task_of(recognizer).pseudo_targets(recognizer(clean))
  if not settings.min_confidence:
    return labels, None
  return labels, (confidence >= settings.min_confidence).astype(jnp.float32)


def make_loss_fn(settings: Settings, modules) -> Callable:
  """loss_fn(params, batch_stats, batch, recognizer, rng=None) -> (total, LossAux); `rng` feeds the
  recognizer's samplers (a detector's anchor and proposal sampling), where it has any.

  `LossAux.terms` holds the per-term scalars so tests and users can differentiate any one of them.
  """
  mode = settings.mode

  def loss_fn(params, batch_stats, batch: base.Batch, recognizer, rng=None):
    x, y = base.to_float_images(batch["input"]), base.to_float_images(batch["target"])
    out, p_stats = base.apply_train(modules["processor"], params["processor"], batch_stats["processor"], x)
    new_stats = {"processor": p_stats}
    task = base.task_of(recognizer) if recognizer is not None else classification
    outputs = None
    labels, confident = None, None
    if mode in ("ra", "transformer"):
      labels, confident = targets_and_confidence(settings, batch, recognizer, y)
    if mode == "unsupervised":  # needs no labels; they only feed the step's metrics
      target_outputs = jax.lax.stop_gradient(task.embed(recognizer, y))
      labels = task.pseudo_targets(recognizer(y))[0] if settings.labels == "recognizer" else task.dataset_targets(batch)
    weight = None  # per-example weights when training on a subset of the classes
    if settings.classes:
      if labels is None:  # plain processing: only the dataset labels select the examples
        labels = classification.dataset_targets(batch)
      _, sub_labels, weight = classification.restrict(settings.classes, None, labels)
    reduce = (lambda v: jnp.mean(v)) if weight is None else (lambda v: base.weighted_mean(v, weight))
    if confident is not None:  # the recognition term counts the confidently recognised examples only
      rec_weight = confident if weight is None else confident * weight
      reduce_rec = lambda v: base.weighted_mean(v, rec_weight)
    else:
      reduce_rec = reduce
    sub = (lambda z: z) if not settings.classes else (lambda z: jnp.take(z, jnp.asarray(settings.classes), axis=-1))
    rec_targets = labels if not settings.classes else sub_labels
    pixel_name, pixel = pixel_term(settings.pixel_loss, out, y, reduce)
    terms = {pixel_name: pixel}
    if mode in ("ra", "transformer"):
      seen = out
      if mode == "transformer":
        seen, new_stats["transformer"] = base.apply_train(
            modules["transformer"], params["transformer"], batch_stats["transformer"], jax.lax.stop_gradient(out))
      per_example, outputs, _ = task.recognition_loss(recognizer, seen, rec_targets, classes=settings.classes,
                                                      label_smoothing=settings.label_smoothing, rng=rng,
                                                      **base.loss_options(task, settings.recognizer_loss))
      terms["recognition"] = reduce_rec(per_example)
    elif mode == "unsupervised":
      outputs = task.embed(recognizer, out)
      terms["recognition"] = reduce(task.distance(settings.distance, outputs=sub(outputs),
                                                  target_outputs=sub(target_outputs)))
    total = pixel + settings.lam * terms.get("recognition", 0.0)
    return total, LossAux(terms, new_stats, outputs, out, labels)

  return loss_fn


def processing_metrics(total, aux: LossAux, grads, y: jax.Array, task) -> base.Metrics:
  """The step's metrics: loss, its terms, PSNR of P's clipped output, gradient norms and top-1."""
  out = {"loss": total, **aux.terms, "psnr": jnp.mean(metrics_lib.psnr(jnp.clip(aux.image, 0.0, 1.0), y)),
         "grad_norm": optax.tree.norm(grads["processor"])}
  for name in grads:
    if name != "processor":
      out[f"grad_norm_{name}"] = optax.tree.norm(grads[name])
  if aux.outputs is not None and aux.targets is not None:
    out.update(task.step_metrics(aux.outputs, aux.targets))
  return out


def forward_processor(modules, variables: base.Variables, x: jax.Array) -> dict[str, jax.Array]:
  """P's clipped output, shown and fed to recognizers alike; through T first when there is one."""
  out = jnp.clip(base.apply_eval(modules["processor"], variables["processor"], x), 0.0, 1.0)
  machine = out
  if "transformer" in modules:
    machine = jnp.clip(base.apply_eval(modules["transformer"], variables["transformer"], out), 0.0, 1.0)
  return {"human": out, "machine": machine}


def forward_of(setup: base.Setup):
  """The `forward` of a method whose trained P (and T) make what is shown and seen: forward_processor."""
  return lambda variables, frozen, x: forward_processor(setup.modules, variables, x)


def init_processing(modules, optimizers, input_shape, rng, initial=None) -> base.TrainState:
  """P (and T, fed P's output) from `initial` or freshly initialised, with their optimizer states."""
  initial = initial or {}
  rng, p_key, t_key = jax.random.split(rng, 3)
  x = jnp.zeros((1, *input_shape), jnp.float32)
  variables = {"processor": initial.get("processor") or base.init_variables(modules["processor"], p_key, x)}
  if "transformer" in modules:
    out = jax.eval_shape(lambda v: modules["processor"].apply(v, x), variables["processor"])
    variables["transformer"] = initial.get("transformer") or base.init_variables(
        modules["transformer"], t_key, jnp.zeros(out.shape, jnp.float32))
  return base.new_state(variables, optimizers, rng)


def make(setup: base.Setup) -> base.Method:
  """The method `setup.config` names, for its networks and optimizers."""
  return make_method(Settings.of(setup.config), setup.modules, setup.optimizers, setup.input_shape,
                     device_stage=setup.device_stage)


def make_method(settings: Settings, modules, optimizers, input_shape, *, device_stage=None) -> base.Method:
  """One of the four methods from its settings alone (no config): `modules` {"processor"[,
  "transformer"]}, their optimizers, P's input shape (h, w, 3)."""
  missing = [n for n in settings.trains if n not in modules or n not in optimizers and optimizers]
  if missing:
    raise ValueError(f"Method {settings.mode!r} trains {list(settings.trains)}; missing the module or optimizer of "
                     f"{missing}.")
  modules = {n: modules[n] for n in settings.trains}
  loss_fn = make_loss_fn(settings, modules)
  trains = settings.trains
  spec = METHODS[settings.mode]
  uses_recognizer = spec.recognition_loss

  def train_step(state: base.TrainState, batch: base.Batch, frozen: base.Frozen):
    recognizer = frozen.get("recognizer")
    if uses_recognizer and recognizer is None:
      raise ValueError(f"Method {settings.mode!r} needs a recognizer; pass frozen={{'recognizer': R}}.")
    batch = base.with_input(batch, device_stage)
    rng, key = jax.random.split(state.rng)   # key: the recognizer's samplers (detectors), where it has any
    (total, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.batch_stats, batch,
                                                                  recognizer, key)
    params, opt_state = base.apply_gradients(state, grads, optimizers, trains)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=aux.batch_stats, opt_state=opt_state,
                              rng=rng)
    task = base.task_of(recognizer) if recognizer is not None else classification
    return new_state, processing_metrics(total, aux, grads, base.to_float_images(batch["target"]), task)

  return base.Method(
      spec=spec,
      init=lambda rng, initial=None: init_processing(modules, optimizers, input_shape, rng, initial),
      train_step=train_step,
      forward=lambda variables, frozen, x: forward_processor(modules, variables, x))


def _defaults(*fields: str) -> Callable[[], dict[str, Any]]:
  values = {"lam": None, "distance": "prob_mse", "label_smoothing": 0.0, "min_confidence": 0.0, "pixel_loss": "mse"}
  return lambda: {f: values[f] for f in fields}


def _validate(config, mode: str | None = None, default_lam: float | None = None) -> list[str]:
  try:
    settings = Settings.of(config, mode, default_lam)
  except ValueError as e:
    return str(e).split("; ")
  problems = []
  task = tasks_lib.of_recognizer(config.recognizer.name)
  if settings.mode == "unsupervised" and settings.distance not in task.DISTANCES:
    problems.append(f"config.method.distance={settings.distance!r} is not a distance between {task.NAME} outputs "
                    f"({config.recognizer.name}); use one of {', '.join(task.DISTANCES)}")
  if settings.classes and task is not classification:
    problems.append(f"config.classes.half trains on half of a classifier's classes; {config.recognizer.name} is a "
                    f"{task.NAME} model")
  if settings.mode == "transformer" and config.data.crop % 4:
    problems.append(f"config.data.crop={config.data.crop} must be divisible by 4 for the transformer T")
  return problems


_SHARED = ("label_smoothing", "min_confidence")
METHODS = {
    "plain": base.MethodSpec(
        name="plain", title="plain", summary="P: MSE(P(x), y) (or L1: method.pixel_loss)", trains=("processor",),
        frozen=(), defaults=_defaults("lam", "pixel_loss"), validate=_validate, make=make, recognition_loss=False),
    "ra": base.MethodSpec(
        name="ra", title="RA", summary="P: MSE(P(x), y) + lam * L(R(P(x)), label)", trains=("processor",),
        frozen=("recognizer",), defaults=_defaults("lam", *_SHARED), validate=_validate, make=make),
    "unsupervised": base.MethodSpec(
        name="unsupervised", title="unsupervised RA", summary="P: MSE(P(x), y) + lam * dist(R(P(x)), R(y))",
        trains=("processor",), frozen=("recognizer",), defaults=_defaults("lam", "distance"), validate=_validate,
        make=make),
    "transformer": base.MethodSpec(
        name="transformer", title="RA with transformer",
        summary="P: MSE(P(x), y); T: lam * L(R(T(stop_gradient(P(x)))), label)",
        trains=("processor", "transformer"), frozen=("recognizer",), defaults=_defaults("lam", *_SHARED),
        validate=_validate, make=make),
}
