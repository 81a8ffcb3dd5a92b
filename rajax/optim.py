"""Optimizers and learning-rate schedules (optax), one per trained network.

Each trained network N gets its optimizer from the config section `config.optim.N` (see
`section()`): the optimizer (adam, adamw, sgd), its rate, momentum and weight decay, and the
schedule: "step" (the paper's: Adam at 1e-4 for 4 of its 6 ImageNet epochs, then 1e-5, then 1e-6:
the rate times decay_factor at each of decay_epochs), "cosine" (to zero at the end of training),
"cosine_restarts" (SR4IR's, BasicSR's CosineAnnealingRestartLR: a cosine from the rate to min_lr over
each period of restart_epochs, restarting at restart_weights times the rate; per step) or "constant",
times a linear warm-up factor over the first warmup_epochs. `lr_scale` multiplies the updates of the
parameters whose path contains a name (SR4IR's segmenter: (("aux", 10.0),), its auxiliary head at 10x).
"""

from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import ml_collections
import optax

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("step", "cosine", "cosine_restarts", "constant")


def section(**overrides) -> ml_collections.ConfigDict:
  """An optimizer config section: the paper's Adam at 1e-4 with its step decay, updated by `overrides`."""
  s = dict(name="adam", lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, momentum=0.9, nesterov=False, weight_decay=0.0,
           schedule="step", decay_epochs=(4.0, 5.0), decay_factor=0.1, warmup_epochs=0.0, grad_clip=0.0,
           restart_epochs=(), restart_weights=(), min_lr=0.0, lr_scale=())
  unknown = sorted(set(overrides) - set(s))
  if unknown:
    raise ValueError(f"Unknown optimizer field(s) {unknown}; fields: {', '.join(s)}.")
  s.update(overrides)
  return ml_collections.ConfigDict(s)


def validate(cfg, where: str) -> list[str]:
  """Problems of optimizer section `cfg` (named `where`, e.g. "config.optim.processor")."""
  out = []
  if cfg.name not in OPTIMIZERS:
    out.append(f"{where}.name={cfg.name!r} is not one of {', '.join(OPTIMIZERS)}")
  if not cfg.lr > 0:
    out.append(f"{where}.lr={cfg.lr} must be > 0")
  if cfg.schedule not in SCHEDULES:
    out.append(f"{where}.schedule={cfg.schedule!r} is not one of {', '.join(SCHEDULES)}")
  if not 0 < cfg.decay_factor <= 1:
    out.append(f"{where}.decay_factor={cfg.decay_factor} must be in (0, 1]")
  if not all(e >= 0 for e in cfg.decay_epochs):
    out.append(f"{where}.decay_epochs={cfg.decay_epochs} must be >= 0")
  if not 0 <= cfg.momentum < 1:
    out.append(f"{where}.momentum={cfg.momentum} must be in [0, 1)")
  if cfg.weight_decay < 0 or cfg.warmup_epochs < 0 or cfg.grad_clip < 0:
    out.append(f"{where}: weight_decay, warmup_epochs and grad_clip must be >= 0")
  periods, weights = tuple(cfg.get("restart_epochs", ())), tuple(cfg.get("restart_weights", ()))
  if cfg.schedule == "cosine_restarts":
    if not periods or not all(p > 0 for p in periods):
      out.append(f"{where}.restart_epochs={periods} must list the periods (> 0 epochs) of the cosine_restarts schedule")
    if weights and len(weights) != len(periods):
      out.append(f"{where}.restart_weights={weights} needs one weight per period of restart_epochs={periods}")
    if not 0 <= cfg.get("min_lr", 0.0) < cfg.lr:
      out.append(f"{where}.min_lr={cfg.min_lr} must be in [0, lr)")
  for item in cfg.get("lr_scale", ()):
    if len(item) != 2 or not isinstance(item[0], str) or not item[1] > 0:
      out.append(f"{where}.lr_scale={tuple(cfg.lr_scale)} must be (name, factor > 0) pairs, e.g. (('aux', 10.0),)")
      break
  return out


def cosine_restarts(lr: float, periods: Iterable[int], weights: Iterable[float] = (), min_lr: float = 0.0
                    ) -> optax.Schedule:
  """BasicSR's CosineAnnealingRestartLR per step t (0-based): within period i (the first whose cumulative
  end c_i has t <= c_i), min_lr + w_i * (lr - min_lr) * (1 + cos(pi * (t - c_{i-1}) / p_i)) / 2. So the
  rate reaches min_lr at t = c_i and restarts at t = c_i + 1, as there; after the last period it stays
  on the last period's curve (the original indexes past its list)."""
  periods = [int(p) for p in periods]
  weights = list(weights) or [1.0] * len(periods)
  ends = jnp.cumsum(jnp.asarray(periods, jnp.int32))
  starts = ends - jnp.asarray(periods, jnp.int32)

  def fn(step):
    t = jnp.asarray(step, jnp.int32)
    i = jnp.minimum(jnp.sum(t > ends), len(periods) - 1)
    frac = (t - starts[i]).astype(jnp.float32) / jnp.asarray(periods, jnp.float32)[i]
    w = jnp.asarray(weights, jnp.float32)[i]
    return min_lr + w * 0.5 * (lr - min_lr) * (1.0 + jnp.cos(jnp.pi * frac))
  return fn


def schedule(cfg, steps_per_epoch: int, total_steps: int | None = None) -> optax.Schedule:
  """The learning rate of section `cfg` per step (0-based)."""
  if cfg.schedule == "step":
    boundaries = {}
    for e in cfg.decay_epochs:
      step = int(round(e * steps_per_epoch))
      if step > 0:
        boundaries[step] = boundaries.get(step, 1.0) * cfg.decay_factor
    main = optax.piecewise_constant_schedule(cfg.lr, boundaries)
  elif cfg.schedule == "cosine":
    if not total_steps:
      raise ValueError("A cosine schedule needs the run's total number of steps.")
    main = optax.cosine_decay_schedule(cfg.lr, max(1, total_steps))
  elif cfg.schedule == "cosine_restarts":
    main = cosine_restarts(cfg.lr, [max(1, int(round(e * steps_per_epoch))) for e in cfg.restart_epochs],
                           cfg.restart_weights, cfg.min_lr)
  else:
    main = optax.constant_schedule(cfg.lr)
  warmup = int(round(cfg.get("warmup_epochs", 0.0) * steps_per_epoch))
  if warmup <= 0:
    return main
  # Linear warm-up as a factor on the schedule ((step + 1) / warmup for the first `warmup` steps), so the
  # decay points stay where the epochs put them.
  return lambda step: main(step) * jnp.minimum(1.0, (step + 1) / warmup)


def make_optimizer(cfg, steps_per_epoch: int, total_steps: int | None = None) -> optax.GradientTransformation:
  """The optimizer of section `cfg`. Weight decay: decoupled for adamw, added to the gradient
  (torch's `weight_decay`) for adam and sgd."""
  lr = schedule(cfg, steps_per_epoch, total_steps)
  if cfg.name == "adam":
    tx = optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  elif cfg.name == "adamw":
    tx = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  elif cfg.name == "sgd":
    tx = optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
  else:
    raise ValueError(f"Unknown optimizer {cfg.name!r}; one of {', '.join(OPTIMIZERS)}.")
  if cfg.weight_decay > 0 and cfg.name != "adamw":
    tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay), tx)
  if cfg.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  if cfg.get("lr_scale"):
    tx = optax.chain(tx, scale_by_path(tuple((str(n), float(f)) for n, f in cfg.lr_scale)))
  return tx


def scale_by_path(factors: tuple[tuple[str, float], ...]) -> optax.GradientTransformation:
  """Multiplies the update of each parameter whose path (its keys joined by "/") contains one of the
  names by that name's factor (the first that matches), e.g. a head trained at 10x the rate."""
  def factor(path) -> float:
    name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
    return next((f for n, f in factors if n in name), 1.0)

  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(lambda p, u: u * factor(p), updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizers(optim_cfg, names: Iterable[str], steps_per_epoch: int, total_steps: int | None = None
                    ) -> dict[str, optax.GradientTransformation]:
  """One optimizer per trained network, from `optim_cfg.<name>`."""
  missing = [n for n in names if n not in optim_cfg]
  if missing:
    raise ValueError(f"No optimizer section for the trained network(s) {missing}: add config.optim.<name> "
                     f"(rajax.optim.section()).")
  return {n: make_optimizer(optim_cfg[n], steps_per_epoch, total_steps) for n in names}
