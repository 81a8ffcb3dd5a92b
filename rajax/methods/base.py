"""What every method is made of: the train state, the method record, and the pieces steps share.

A method is a value, like an optax `GradientTransformation`: `Method(spec, init, train_step,
forward)`, a record of pure functions closed over its networks and optimizers.

    spec        the registry entry (`MethodSpec`): its name, the networks it trains and the ones it
                uses frozen, its config defaults and validation, and `make`, which builds the record;
    init        (rng, initial=None) -> TrainState: parameters and BatchNorm statistics of every
                trained network (from `initial[name]` where given, else freshly initialised) and
                fresh optimizer states;
    train_step  (state, batch, frozen) -> (state, metrics): one training step, which may hold several
                updates in turn; `frozen` maps the names of the frozen networks to their values
                (a `Recognizer`, a `FrozenNetwork`), passed as arguments and never differentiated;
    forward     (variables, frozen, x) -> {"human": ..., "machine": ...}: what a person is shown and
                what a recognizer is fed, in inference mode, both clipped to [0, 1]. The trainer's
                evaluation, the evaluation suite, the demo and the bench all call this.

Trained networks live in the TrainState, one entry per network in each of its dicts; frozen ones
are step arguments. Network names are roles: "processor" (P), "transformer" (T), "recognizer" (R),
"codec" (a learned proxy codec C standing in for a real one), built from the config sections of
the same names by `rajax.networks`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from rajax import losses, metrics as metrics_lib
from rajax import tasks as tasks_lib

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
Frozen = Mapping[str, Any]
Variables = Mapping[str, Mapping[str, Any]]   # network -> {"params": ..., "batch_stats": ...}
NETWORKS = ("processor", "transformer", "recognizer", "codec")


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; one entry per trained network in each dict."""

  step: jax.Array
  params: dict[str, Any]
  batch_stats: dict[str, Any]
  opt_state: dict[str, Any]
  rng: jax.Array

  def variables(self, name: str) -> dict[str, Any]:
    """Network `name`'s Flax variables, {"params", "batch_stats"}."""
    return {"params": self.params[name], "batch_stats": self.batch_stats[name]}

  def all_variables(self) -> dict[str, dict[str, Any]]:
    return {name: self.variables(name) for name in self.params}


class Method(NamedTuple):
  """A method, built for one configuration (see the module docstring)."""

  spec: "MethodSpec"
  init: Callable[..., TrainState]   # (rng, initial=None)
  train_step: Callable[[TrainState, Batch, Frozen], tuple[TrainState, Metrics]]
  forward: Callable[[Variables, Frozen, jax.Array], dict[str, jax.Array]]
  # (variables, frozen, x, codec, quality) -> {"human", "machine", "bpp"}: the method's own composition
  # with a standard codec (`rajax.codecs` name, quality on its axis), for a method built around one
  # (NPP: P at the codec's normalised quality, then the codec). None: the codec codes `forward`'s output
  # (`rajax.runs.Run.coded`).
  coded_forward: Callable[..., dict[str, jax.Array]] | None = None


class LossAux(NamedTuple):
  """What a method's loss function returns besides the total, by name."""

  terms: dict[str, jax.Array]        # per-term scalars: "pixel_mse", "recognition"
  batch_stats: dict[str, Any]        # the trained networks' updated BatchNorm statistics
  outputs: jax.Array | None          # R's outputs on what it was fed (None without a recognizer)
  image: jax.Array                   # P's output (unclipped), or the image R was trained on
  targets: jax.Array | None          # the labels the recognition term and top-1 used


@dataclasses.dataclass(frozen=True)
class Setup:
  """What `MethodSpec.make` builds a method from."""

  config: Any                                     # the run's ml_collections config (locked)
  modules: Mapping[str, Any]                      # trained network -> linen module (R: a Recognizer)
  optimizers: Mapping[str, optax.GradientTransformation]   # trained network -> its optimizer
  input_shape: tuple[int, ...]                    # one processor input, e.g. (56, 56, 3)
  device_stage: Callable[[Batch], Batch] | None = None     # makes a missing "input" on device
  steps_per_epoch: int | None = None              # the trainer's (None outside it: epoch settings then fail)


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """A registry entry: everything about a method that does not depend on its configuration.

  `defaults()` gives the fields of `config.method` besides `name` (each method owns its fields);
  `validate(config)` returns the problems of a config for this method, each naming the field and
  the fix; `make(setup)` builds the `Method`. `recognition_loss` is False for a method that no
  recognizer shapes (the baseline the evaluation compares others with); `forward_uses` names the
  frozen networks its `forward` reads (most read none: what they show is made by trained networks).
  """

  name: str
  title: str                                      # how reports name it ("RA with transformer")
  summary: str                                    # one line: what it optimises
  trains: tuple[str, ...]
  frozen: tuple[str, ...]
  defaults: Callable[[], dict[str, Any]]
  validate: Callable[[Any], list[str]]
  make: Callable[[Setup], Method]
  recognition_loss: bool = True
  forward_uses: tuple[str, ...] = ()              # frozen networks `forward` needs (e.g. a fixed P)

  def __post_init__(self):
    unknown = [n for n in self.trains + self.frozen if n not in NETWORKS]
    if unknown or set(self.trains) & set(self.frozen):
      raise ValueError(f"Method {self.name!r}: networks must be distinct roles among {NETWORKS}, got "
                       f"trains={self.trains}, frozen={self.frozen}.")

  @property
  def networks(self) -> tuple[str, ...]:
    return self.trains + self.frozen


# ==================================================================== batches

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


def weighted_mean(per_example: jax.Array, weight: jax.Array) -> jax.Array:
  """Mean of `per_example` with 0/1 (or any non-negative) weights; 0 when no weight is positive."""
  return jnp.sum(per_example * weight) / jnp.maximum(jnp.sum(weight), 1.0)


# ==================================================================== networks

def apply_train(net: nn.Module, params, batch_stats, x, **kwargs):
  """Runs `net` in training mode; returns (output, updated batch_stats)."""
  out, updates = net.apply({"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"],
                           **kwargs)
  return out, updates["batch_stats"]


def apply_eval(net: nn.Module, variables, x):
  """Runs `net` in inference mode on `variables` ({"params", "batch_stats"})."""
  return net.apply(variables, x, train=False)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["variables"], meta_fields=["module"])
@dataclasses.dataclass(frozen=True)
class FrozenNetwork:
  """A frozen processor (or transformer) passed to a step: its module and variables, run in inference mode."""

  module: nn.Module
  variables: Mapping[str, Any]

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.module.apply(self.variables, x, train=False)


def init_variables(module: nn.Module, key: jax.Array, x: jax.Array, **kwargs) -> dict[str, Any]:
  """{"params", "batch_stats"} of a fresh `module` (batch_stats {} when it has none); `kwargs` go to
  its call (an adaptive NPP pre-processor's quality)."""
  variables = module.init(key, x, train=False, **kwargs)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def new_state(variables: Mapping[str, Mapping[str, Any]], optimizers: Mapping[str, optax.GradientTransformation],
              rng: jax.Array) -> TrainState:
  """A TrainState at step 0 for the trained networks' `variables`, with fresh optimizer states."""
  params = {n: v["params"] for n, v in variables.items()}
  batch_stats = {n: v["batch_stats"] for n, v in variables.items()}
  missing = [n for n in params if n not in optimizers]
  if missing:
    raise ValueError(f"No optimizer for the trained network(s) {missing}; optimizers: {sorted(optimizers)}.")
  opt_state = {n: optimizers[n].init(params[n]) for n in params}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, opt_state=opt_state,
                    rng=rng)


def apply_gradients(state: TrainState, grads: Mapping[str, Any], optimizers: Mapping[str, optax.GradientTransformation],
                    names: Sequence[str]) -> tuple[dict, dict]:
  """(params, opt_state) after one update of each network in `names` with its own optimizer."""
  params, opt_state = dict(state.params), dict(state.opt_state)
  for name in names:
    with jax.named_scope(f"optimizer_{name}"):  # profiles attribute the update to its network's optimizer
      updates, opt_state[name] = optimizers[name].update(grads[name], state.opt_state[name], state.params[name])
      params[name] = optax.apply_updates(state.params[name], updates)
  return params, opt_state


def task_of(recognizer) -> Any:
  """The task module (`rajax.tasks`) a recognizer's outputs belong to."""
  return tasks_lib.get(getattr(recognizer, "task", tasks_lib.classification.NAME))


def loss_options(task, options) -> dict[str, Any]:
  """The entries of `options` (config.recognizer.loss) that `task`'s recognition_loss takes, as
  keyword arguments: a task names them in LOSS_OPTIONS (segmentation: "aux_weight"); a task
  without options takes none, so one config trains against a classifier, a detector or a segmenter."""
  options = dict(options or {})
  return {k: options[k] for k in getattr(task, "LOSS_OPTIONS", ()) if k in options}


# ==================================================================== steps that train the recognizer
# (the Appendix A alternatives, SR4IR and its baselines)

RECOGNIZER_BN = ("batch", "frozen")   # config.method.recognizer_bn


def teacher_labels(config, batch: Batch, recognizer, y: jax.Array):
  """Labels for the recognition loss: the dataset's, or the recognizer's own on the clean image.

  A method that trains R labels with R as it started (its starting weights, fixed: a teacher), not
  with the R being trained: labelled by itself, R learns to agree with whatever it predicts and
  collapses (in the offline demo its agreement with the original MobileNetV2 fell to 0%).
  """
  task = task_of(recognizer)
  if config.get("labels", "dataset") == "dataset":
    return task.dataset_targets(batch)
  return task.pseudo_targets(recognizer(y))[0]


def trained_recognizer_loss(config, task, rec, images, labels, r_vars, rng, smoothing):
  """R's task loss while R is trained: (per example, outputs, R's new batch_stats).

  config.method.recognizer_bn "batch" (the paper's fine-tuning: BatchNorm on batch statistics, its
  running statistics move) or "frozen" (BatchNorm on R's running statistics, which stay as they
  are; only the weights learn: the usual choice for small batches of data unlike R's own).
  """
  options = loss_options(task, config.recognizer.get("loss"))
  if config.method.get("recognizer_bn", "batch") == "frozen":
    per_example, outputs, _ = task.recognition_loss(rec, images, labels, variables=r_vars, rng=rng,
                                                    label_smoothing=smoothing, **options)
    return per_example, outputs, r_vars["batch_stats"]
  return task.recognition_loss(rec, images, labels, variables=r_vars, train=True, rng=rng, label_smoothing=smoothing,
                               **options)


def init_trained(setup: Setup, rng: jax.Array, initial: Mapping[str, Any] | None) -> TrainState:
  """P freshly initialised (or from `initial`), R from `initial` (its weights), fresh optimizer states."""
  initial = initial or {}
  rng, p_key = jax.random.split(rng)
  variables = {}
  if "processor" in setup.modules:
    x = jnp.zeros((1, *setup.input_shape), jnp.float32)
    variables["processor"] = initial.get("processor") or init_variables(setup.modules["processor"], p_key, x)
  if "recognizer" in setup.modules:
    if "recognizer" not in initial:
      raise ValueError("A method that trains the recognizer starts from its weights: pass initial={'recognizer': "
                       "variables} (rajax.networks.initial_variables).")
    variables["recognizer"] = initial["recognizer"]
  return new_state(variables, setup.optimizers, rng)


def train_metrics(total, terms, grads, outputs, targets, task, image=None, y=None) -> Metrics:
  """The step's metrics: the loss and its terms, P's PSNR (when `image` is given), each network's
  gradient norm, and the task's metrics of the recognizer's `outputs` against `targets`."""
  out = {"loss": total, **terms}
  if image is not None:
    out["psnr"] = jnp.mean(metrics_lib.psnr(jnp.clip(image, 0.0, 1.0), y))
  for name, g in grads.items():
    out["grad_norm" if name == "processor" else f"grad_norm_{name}"] = optax.tree.norm(g)
  out.update(task.step_metrics(outputs, targets))
  return out


# ==================================================================== evaluation

def evaluation_recognizer(spec: MethodSpec, modules: Mapping[str, Any], variables: Variables, frozen: Frozen):
  """The recognizer that reads the method's "machine" images: the trained one, else the frozen one, else None."""
  if "recognizer" in spec.trains:
    return modules["recognizer"].replace(variables=variables["recognizer"])
  return frozen.get("recognizer")


def make_predict_step(method: Method, modules: Mapping[str, Any], *, labels: str = "dataset",
                      device_stage: Callable[[Batch], Batch] | None = None) -> Callable:
  """predict_step(state, batch, frozen) -> (outputs, targets): what the evaluation recognizer makes
  of the method's "machine" images and what it is scored against, for figures that need the whole
  evaluation set (a detector's mAP: rajax.tasks.detection.Evaluator)."""

  def predict_step(state: TrainState, batch: Batch, frozen: Frozen):
    batch = with_input(batch, device_stage)
    x, y = to_float_images(batch["input"]), to_float_images(batch["target"])
    variables = state.all_variables()
    recognizer = evaluation_recognizer(method.spec, modules, variables, frozen)
    task = task_of(recognizer)
    outputs = recognizer(method.forward(variables, frozen, x)["machine"])
    targets = task.dataset_targets(batch) if labels == "dataset" else task.pseudo_targets(recognizer(y))[0]
    return outputs, targets

  return predict_step


def make_eval_step(method: Method, modules: Mapping[str, Any], *, labels: str = "dataset",
                   device_stage: Callable[[Batch], Batch] | None = None) -> Callable:
  """eval_step(state, batch, frozen) -> masked sums over the batch.

  Returns {"count", "psnr", "ssim", "pixel_mse"} of the method's "human" images against the clean
  target and, when a recognizer reads its "machine" images (`evaluation_recognizer`), its task's
  metrics ({"top1", "top5", "recognition_ce"} for classifiers): sums over examples whose
  batch["mask"] is 1 (divide by "count"). A task with `counts` (segmentation: the confusion
  matrix) adds them under "counts": integer arrays over the batch's unmasked examples, made on the
  devices (the batch's outputs never leave them), for the host to add up exactly. `labels`:
  "dataset" (batch["label"]) or "recognizer" (the recognizer's own pseudo-targets on the clean image).
  """

  def eval_step(state: TrainState, batch: Batch, frozen: Frozen):
    batch = with_input(batch, device_stage)
    x, y = to_float_images(batch["input"]), to_float_images(batch["target"])
    mask = batch["mask"].astype(jnp.float32) if "mask" in batch else jnp.ones(x.shape[0], jnp.float32)
    variables = state.all_variables()
    views = method.forward(variables, frozen, x)
    out, counts = views["human"], None
    per_example = {"psnr": metrics_lib.psnr(out, y), "ssim": metrics_lib.ssim(out, y),
                   "pixel_mse": losses.pixel_mse(pred=out, target=y, reduction="none")}
    recognizer = evaluation_recognizer(method.spec, modules, variables, frozen)
    if recognizer is not None:
      task = task_of(recognizer)
      outputs = recognizer(views["machine"])
      targets = task.dataset_targets(batch) if labels == "dataset" else task.pseudo_targets(recognizer(y))[0]
      per_example.update(task.metrics(outputs, targets))
      if hasattr(task, "counts"):   # exact integer figures of the whole set (a segmenter's confusion matrix)
        counts = task.counts(outputs, targets, mask=mask)
    if "bpp" in views:   # a method with a codec in the loop (NPP) reports its real rate
      per_example["bpp"] = views["bpp"]
    sums = {k: jnp.sum(v.astype(jnp.float32) * mask) for k, v in per_example.items()}
    sums["count"] = jnp.sum(mask)
    if counts:
      sums["counts"] = counts
    return sums

  return eval_step
