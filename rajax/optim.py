"""Optimizers and learning-rate schedules (optax).

The paper trains with Adam at 1e-4 for 4 of its 6 ImageNet epochs, then 1e-5, then 1e-6: a
piecewise-constant schedule with decay points given in epochs.
"""

from __future__ import annotations

import optax


def schedule(optim_cfg, steps_per_epoch: int, lr: float | None = None) -> optax.Schedule:
  """lr (default optim_cfg.lr), multiplied by decay_factor at each of decay_epochs (converted to steps)."""
  boundaries = {}
  for e in optim_cfg.decay_epochs:
    step = int(round(e * steps_per_epoch))
    if step > 0:
      boundaries[step] = boundaries.get(step, 1.0) * optim_cfg.decay_factor
  return optax.piecewise_constant_schedule(optim_cfg.lr if lr is None else lr, boundaries)


def make_optimizers(optim_cfg, names, steps_per_epoch: int) -> dict[str, optax.GradientTransformation]:
  """One optimizer per trainable network name. The transformer T gets `optim_cfg.transformer_lr` as
  its base rate when that is set (same schedule shape), every other network `optim_cfg.lr`."""
  t_lr = optim_cfg.get("transformer_lr")
  return {n: make_optimizer(optim_cfg, steps_per_epoch, lr=t_lr if n == "transformer" else None) for n in names}


def make_optimizer(optim_cfg, steps_per_epoch: int, lr: float | None = None) -> optax.GradientTransformation:
  """The optimizer a trainable network gets from the `optim` config section (base rate `lr` if given)."""
  lr = schedule(optim_cfg, steps_per_epoch, lr)
  if optim_cfg.name == "adam":
    tx = optax.adam(lr, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps)
  elif optim_cfg.name == "adamw":
    tx = optax.adamw(lr, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay)
  elif optim_cfg.name == "sgd":
    tx = optax.sgd(lr, momentum=optim_cfg.b1 or None)
  else:
    raise ValueError(f"Unknown optim.name {optim_cfg.name!r}; use 'adam', 'adamw' or 'sgd'.")
  if optim_cfg.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(optim_cfg.grad_clip), tx)
  return tx
