"""SR4IR (Kim, Oh and Lee, CVPR 2024): an SR network S and a task network T trained in turn.

    sr4ir   S: L1(S(x), y) + [step >= warmup] * sum_k w_k mean|T_k(S(x)) - T_k(y)|   (T frozen, inference mode)
            T: 0.34 * (L(T(sr)) + L(T(y)) + L(T(cqmix(sr, y))))   sr = stop_gradient(S_new(x)), T in training mode

S is the processor, T the recognizer (trained, with its own optimizer `config.optim.recognizer`).
Both updates run in one step: S first, then T on the outputs of the updated S. CQMix mixes the
SR and clean images on a coarse grid of `cqmix_cells` x `cqmix_cells` cells, each cell taken
from the SR image with probability 1/2 (a Bernoulli mask upsampled by nearest neighbour).
The TDP (task-driven perceptual) term compares T's named features (`tdp_layers`, weighted by
`tdp_weights`) and is gated off during the first `warmup_steps` steps, or `warmup_epochs` epochs of
the trainer's data (SR4IR's setting; a gate inside the step).

SR4IR's baselines (its Table 1 rows) are registered here too, as rajax's methods with its objective:

    sr4ir_s_then_t   T: L(T(S(x))), S fixed (recognizer_on_processor's step)
    sr4ir_t_then_s   S: L1(S(x), y) + lam * L(T(S(x))), T fixed: trained on clean images (ra's step)
    sr4ir_joint      S and T: L1(S(x), y) + lam * L(T(S(x))), one backward pass (ra_joint's step)

with lam 1 (the official options' loss weights).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rajax.methods import alternatives, base, ra

# The features the TDP term compares, per task (the names rajax's recognizers expose in task.features).
DEFAULT_TDP = {"segmentation": (("C5",), (1.0,)), "detection": (("0", "1"), (0.5, 0.5)),
               "classification": (("layer4",), (1.0,))}


def cqmix_mask(key: jax.Array, shape, cells: int) -> jax.Array:
  """A [B, H, W, 1] 0/1 mask: Bernoulli(0.5) per cell of a cells x cells grid, nearest-upsampled."""
  b, h, w = shape[0], shape[1], shape[2]
  if h % cells or w % cells:
    raise ValueError(f"config.method.cqmix_cells={cells} must divide the image size {h}x{w}.")
  grid = jax.random.bernoulli(key, 0.5, (b, cells, cells)).astype(jnp.float32)
  mask = jnp.repeat(jnp.repeat(grid, h // cells, axis=1), w // cells, axis=2)
  return mask[..., None]


def cqmix(sr: jax.Array, hr: jax.Array, mask: jax.Array) -> jax.Array:
  return sr * mask + hr * (1.0 - mask)


def tdp_loss(features, target_features, layers, weights) -> jax.Array:
  """sum_k w_k mean|f_k - g_k| over the named features."""
  missing = [k for k in layers if k not in features]
  if missing:
    raise ValueError(f"config.method.tdp_layers names {missing}, which the recognizer does not expose; "
                     f"it has {sorted(features)}.")
  return sum(w * jnp.mean(jnp.abs(features[k] - target_features[k])) for k, w in zip(layers, weights))


def _tdp_settings(config, task):
  layers, weights = config.method.get("tdp_layers"), config.method.get("tdp_weights")
  d_layers, d_weights = DEFAULT_TDP[task.NAME]
  layers = tuple(layers) if layers else d_layers
  weights = tuple(weights) if weights else (d_weights if not config.method.get("tdp_layers") else
                                            (1.0,) * len(layers))
  return layers, weights


def warmup_steps(config, steps_per_epoch: int | None) -> int:
  """The steps the TDP term is off: config.method.warmup_epochs (SR4IR's setting, in epochs of the
  trainer's data) when set, else config.method.warmup_steps."""
  epochs = float(config.method.get("warmup_epochs", 0.0) or 0.0)
  if epochs:
    if not steps_per_epoch:
      raise ValueError("config.method.warmup_epochs needs the trainer's steps per epoch (Setup.steps_per_epoch); "
                       "outside rajax.train set config.method.warmup_steps instead.")
    return int(round(epochs * steps_per_epoch))
  return int(config.method.warmup_steps)


def make_sr4ir(setup: base.Setup) -> base.Method:
  config, modules = setup.config, setup.modules
  rec, proc = modules["recognizer"], modules["processor"]
  task = base.task_of(rec)
  layers, weights = _tdp_settings(config, task)
  cells = int(config.method.cqmix_cells)
  smoothing = config.method.label_smoothing

  def s_loss(p_params, p_stats, r_vars, x, y, step, warmup):
    sr, new_stats = base.apply_train(proc, p_params, p_stats, x)
    t = rec.replace(variables=r_vars)   # T frozen, inference mode
    l1 = jnp.mean(jnp.abs(sr - y))
    _, f_sr = task.features(t, sr)
    _, f_hr = task.features(t, y)
    tdp = tdp_loss(f_sr, jax.lax.stop_gradient(f_hr), layers, weights)
    gate = (step >= warmup).astype(jnp.float32)
    return l1 + gate * tdp, ({"pixel_l1": l1, "tdp": tdp, "tdp_gate": gate}, new_stats, sr)

  def t_loss(r_params, r_stats, sr, y, labels, mask, rng):
    mixed = cqmix(sr, y, mask)
    total, stats, terms, outputs = 0.0, r_stats, {}, None
    for name, images, key in zip(("sr", "hr", "cqmix"), (sr, y, mixed), jax.random.split(rng, 3)):
      # the task's loss with config.method.recognizer_bn, label_smoothing and config.recognizer.loss
      per_example, out, stats = base.trained_recognizer_loss(
          config, task, rec, images, labels, {"params": r_params, "batch_stats": stats}, key, smoothing)
      terms[f"recognition_{name}"] = jnp.mean(per_example)
      total = total + terms[f"recognition_{name}"]
      outputs = out if name == "sr" else outputs
    return 0.34 * total, (terms, stats, outputs)

  def train_step(state, batch, frozen):
    # Read when the step is traced, not when the method is built: a run loaded back for its forward
    # (rajax.runs) has no steps per epoch and needs no warm-up.
    warmup = warmup_steps(config, setup.steps_per_epoch)
    batch = base.with_input(batch, setup.device_stage)
    x, y = base.to_float_images(batch["input"]), base.to_float_images(batch["target"])
    rng, mask_key, t_key = jax.random.split(state.rng, 3)
    r_vars = state.variables("recognizer")
    # 1. S with T frozen.
    (s_total, (s_terms, p_stats, _)), p_grads = jax.value_and_grad(s_loss, has_aux=True)(
        state.params["processor"], state.batch_stats["processor"], jax.lax.stop_gradient(r_vars), x, y, state.step, warmup)
    s_updates, p_opt = setup.optimizers["processor"].update(p_grads, state.opt_state["processor"],
                                                             state.params["processor"])
    p_params = optax.apply_updates(state.params["processor"], s_updates)
    # 2. T on the new S's outputs, stopped.
    sr = jax.lax.stop_gradient(base.apply_eval(proc, {"params": p_params, "batch_stats": p_stats}, x))
    labels = base.teacher_labels(config, batch, rec, y)
    mask = cqmix_mask(mask_key, y.shape, cells)
    (t_total, (t_terms, r_stats, outputs)), r_grads = jax.value_and_grad(t_loss, has_aux=True)(
        state.params["recognizer"], state.batch_stats["recognizer"], sr, y, labels, mask, t_key)
    r_updates, r_opt = setup.optimizers["recognizer"].update(r_grads, state.opt_state["recognizer"],
                                                              state.params["recognizer"])
    r_params = optax.apply_updates(state.params["recognizer"], r_updates)
    new = state.replace(step=state.step + 1, params={"processor": p_params, "recognizer": r_params},
                        batch_stats={"processor": p_stats, "recognizer": r_stats},
                        opt_state={"processor": p_opt, "recognizer": r_opt}, rng=rng)
    metrics = base.train_metrics(s_total, {**s_terms, **t_terms, "loss_recognizer": t_total},
                                 {"processor": p_grads, "recognizer": r_grads}, outputs, labels, task, sr, y)
    return new, metrics

  return base.Method(spec=METHODS["sr4ir"], init=lambda rng, initial=None: base.init_trained(setup, rng, initial),
                     train_step=train_step, forward=ra.forward_of(setup))


def _validate(config) -> list[str]:
  m, problems = config.method, alternatives.validate(config)
  if not int(m.get("cqmix_cells", 1)) >= 1:
    problems.append(f"config.method.cqmix_cells={m.cqmix_cells} must be a positive number of cells per side")
  if int(m.get("warmup_steps", 0)) < 0 or float(m.get("warmup_epochs", 0.0) or 0.0) < 0:
    problems.append(f"config.method.warmup_steps={m.warmup_steps} and warmup_epochs={m.get('warmup_epochs')} must "
                    "be >= 0")
  if m.get("warmup_epochs") and m.get("warmup_steps"):
    problems.append("config.method sets both warmup_steps and warmup_epochs: set one (the other 0)")
  if m.get("tdp_weights") and len(m.tdp_weights) != len(m.get("tdp_layers") or ()):
    problems.append(f"config.method.tdp_weights={tuple(m.tdp_weights)} needs one weight per layer of "
                    f"config.method.tdp_layers={tuple(m.get('tdp_layers') or ())}")
  if m.get("tdp_weights") and not all(w >= 0 for w in m.tdp_weights):
    problems.append(f"config.method.tdp_weights={tuple(m.tdp_weights)} must be >= 0")
  return problems


# ==================================================================== the paper's baselines (its Table 1 rows)
# Each is one of rajax's methods with SR4IR's objective: an L1 pixel term, the task loss at weight 1.

def _with_spec(name: str, make):
  return lambda setup: make(setup)._replace(spec=METHODS[name])


def _make_t_then_s(setup: base.Setup) -> base.Method:
  settings = ra.Settings.of(setup.config, mode="ra", default_lam=1.0)
  return ra.make_method(settings, setup.modules, setup.optimizers, setup.input_shape, device_stage=setup.device_stage)


METHODS = {
    "sr4ir_s_then_t": base.MethodSpec(
        name="sr4ir_s_then_t", title="SR then task (S->T)",
        summary="T: L(T(S(x))), S fixed (an SR run's processor, config.method.processor_weights)",
        trains=("recognizer",), frozen=("processor",), validate=alternatives.validate,
        make=_with_spec("sr4ir_s_then_t", alternatives.make_recognizer_training(
            "recognizer_on_processor", alternatives.forward_fixed_processor)),
        defaults=lambda: dict(processor_weights="", label_smoothing=0.0, recognizer_bn="batch"),
        forward_uses=("processor",)),
    "sr4ir_t_then_s": base.MethodSpec(
        name="sr4ir_t_then_s", title="task then SR (T->S)",
        summary="S: L1(S(x), y) + lam * L(T(S(x))), T fixed (trained on clean images: config.recognizer.weights)",
        trains=("processor",), frozen=("recognizer",), validate=lambda c: ra._validate(c, "ra", 1.0),
        make=_with_spec("sr4ir_t_then_s", _make_t_then_s), defaults=lambda: dict(lam=None, pixel_loss="l1", label_smoothing=0.0,
                                                   min_confidence=0.0)),
    "sr4ir_joint": base.MethodSpec(
        name="sr4ir_joint", title="SR and task jointly (S+T)",
        summary="S and T: L1(S(x), y) + lam * L(T(S(x))), one backward pass into both",
        trains=("processor", "recognizer"), frozen=(), validate=alternatives.validate,
        make=_with_spec("sr4ir_joint", alternatives.make_joint),
        defaults=lambda: dict(lam=1.0, recognizer_weight=1.0, pixel_loss="l1", label_smoothing=0.0,
                              recognizer_bn="batch")),
    "sr4ir": base.MethodSpec(
        name="sr4ir", title="SR4IR",
        summary="S: L1 + TDP(T); T: 0.34 * (L(T(sr)) + L(T(hr)) + L(T(cqmix))), in turn",
        trains=("processor", "recognizer"), frozen=(), validate=_validate, make=make_sr4ir,
        defaults=lambda: dict(tdp_layers=(), tdp_weights=(), warmup_steps=0, warmup_epochs=0.0, cqmix_cells=4,
                              label_smoothing=0.0, recognizer_bn="batch")),
}
