"""Optimizers and learning-rate schedules (optax), one per trained network.

Each trained network N gets its optimizer from the config section `config.optim.N` (see
`section()`): the optimizer (adam, adamw, sgd), its rate, momentum and weight decay, and the
schedule: "step" (the paper's: Adam at 1e-4 for 4 of its 6 ImageNet epochs, then 1e-5, then 1e-6:
the rate times decay_factor at each of decay_epochs), "cosine" (to zero at the end of training)
or "constant", times a linear warm-up factor over the first warmup_epochs.
"""

from __future__ import annotations

from typing import Iterable

import jax.numpy as jnp
import ml_collections
import optax

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("step", "cosine", "constant")


def section(**overrides) -> ml_collections.ConfigDict:
  """An optimizer config section: the paper's Adam at 1e-4 with its step decay, updated by `overrides`."""
  s = dict(name="adam", lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, momentum=0.9, nesterov=False, weight_decay=0.0,
           schedule="step", decay_epochs=(4.0, 5.0), decay_factor=0.1, warmup_epochs=0.0, grad_clip=0.0)
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
  return out


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
  return tx


def make_optimizers(optim_cfg, names: Iterable[str], steps_per_epoch: int, total_steps: int | None = None
                    ) -> dict[str, optax.GradientTransformation]:
  """One optimizer per trained network, from `optim_cfg.<name>`."""
  missing = [n for n in names if n not in optim_cfg]
  if missing:
    raise ValueError(f"No optimizer section for the trained network(s) {missing}: add config.optim.<name> "
                     f"(rajax.optim.section()).")
  return {n: make_optimizer(optim_cfg[n], steps_per_epoch, total_steps) for n in names}
