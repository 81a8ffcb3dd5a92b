"""The `degradations` evaluator: restorers for unknown degradations, per degradation, seen and unseen.

    c.evals.degradations = ConfigDict(dict(type="degradations",
        seen=(("gaussian_noise", 3), ("fog", 3)), unseen=(("shot_noise", 3),), reference="ra"))

For every degradation ((name, severity) of `rajax.degrade.DEGRADATION_FAMILIES`: the ImageNet-C
corruptions, rain and low light), listed under `seen` (in the restorers' training mixture) or
`unseen` (held out), the evaluation images are degraded by it alone (a mixture of that one family,
the randomness of image i fixed by (config.seed, i)), and each row gives, for the degraded input
and each processor applied to it, PSNR and SSIM against the clean image and every target's top-1.
Rows "mean (seen)" and "mean (unseen)" pool the examples of each set. With `reference` (a processor,
e.g. the RA restorer), every other processor's top-1 is compared with it example by example
(`rajax.metrics.paired_test`: examples gained, lost, McNemar's exact p), per degradation and pooled
per set; the JSON holds every test under extra["paired"].
"""

from __future__ import annotations

import numpy as np

from rajax import data as data_lib
from rajax import degrade, metrics
from rajax.evaluate.context import CLEAN, INPUT, Context, DataSpec, EvalError
from rajax.evaluate.report import Table
from rajax.evaluate.tables import _labels_note, _row_title

SETS = ("seen", "unseen")


def _families(cfg, field: str, name: str) -> list[tuple[str, int]]:
  families = [tuple(f) for f in (cfg.get(field) or ())]
  problems = degrade.family_problems(families, f"evals.{name}.{field}") if families else []
  if problems:
    raise EvalError("; ".join(problems) + ".")
  return [(str(n), int(s)) for n, s in families]


def degradations(ctx: Context, cfg, name: str) -> Table:
  """PSNR, SSIM and top-1 per degradation (seen and unseen) for the input and each processor (module docstring)."""
  procs = ctx.processor_names(cfg.get("processors"))
  tnames = ctx.target_names(cfg.get("targets"))
  sets = {s: _families(cfg, s, name) for s in SETS}
  if not sets["seen"] and not sets["unseen"]:
    raise EvalError(f"evals.{name}: list the degradations to evaluate in evals.{name}.seen and/or .unseen, as "
                    "(name, severity) pairs, e.g. (('gaussian_noise', 3), ('fog', 3)).")
  reference = cfg.get("reference") or None
  if reference is not None and reference not in procs:
    raise EvalError(f"evals.{name}.reference={reference!r} is not one of its processors ({', '.join(procs)}).")
  for v in procs:
    if ctx.processor(v).task == "sr":
      raise EvalError(f"Processor {v!r} is a super-resolution model; evals.{name} degrades full-size images: use "
                      "restorers trained at scale 1 (task mixture, denoise or jpeg).")
  views = [INPUT] + procs
  others = [v for v in views if v != reference]
  cols = ["set", "degradation", "processing", "PSNR", "SSIM"] + [f"{t} top-1" for t in tnames]
  if reference:
    cols += [f"{t} vs {reference}" for t in tnames]
  formats = {"set": "text", "degradation": "text", "processing": "text", "PSNR": "db", "SSIM": "ssim"}
  formats |= {f"{t} top-1": "pct" for t in tnames} | {f"{t} vs {reference}": "text" for t in tnames}
  table = Table(name, cfg.get("title", "Restoration of seen and unseen degradations: PSNR, SSIM, top-1 (%)"), cols,
                formats)
  pooled = {}    # (set, view) -> {"psnr": [...], "ssim": [...], target: [correct arrays]}
  paired = {}
  recs = None
  for group in SETS:
    for family, severity in sets[group]:
      spec = DataSpec(data_lib.Degradation(task="mixture", families=((family, severity),)))
      recs = ctx.records(views + [CLEAN], tnames, spec, what=f"{name} {family}/{severity}")
      deg = f"{family} {severity}"
      for v in views:
        q = recs[(v, "quality")]
        row = {"set": group, "degradation": deg, "processing": _row_title(ctx, v), "view": v,
               "PSNR": float(np.mean(q["psnr"])), "SSIM": float(np.mean(q["ssim"]))}
        store = pooled.setdefault((group, v), {"psnr": [], "ssim": []})
        store["psnr"].append(q["psnr"])
        store["ssim"].append(q["ssim"])
        for t in tnames:
          correct = ctx.top1_correct(recs, v, t)
          row[f"{t} top-1"] = float(np.mean(correct))
          store.setdefault(t, []).append(correct)
          if reference and v != reference:
            test = metrics.paired_test(ctx.top1_correct(recs, reference, t), correct)
            paired.setdefault(deg, {}).setdefault(v, {})[t] = test
            row[f"{t} vs {reference}"] = metrics.paired_summary(test)
        table.rows.append(row)
  for group in SETS:
    if not sets[group]:
      continue
    for v in views:
      store = pooled[(group, v)]
      row = {"set": group, "degradation": f"mean ({group})", "processing": _row_title(ctx, v), "view": v,
             "PSNR": float(np.mean(np.concatenate(store["psnr"]))), "SSIM": float(np.mean(np.concatenate(store["ssim"])))}
      for t in tnames:
        correct = np.concatenate(store[t])
        row[f"{t} top-1"] = float(np.mean(correct))
        if reference and v != reference:
          test = metrics.paired_test(np.concatenate(pooled[(group, reference)][t]), correct)
          paired.setdefault(f"mean ({group})", {}).setdefault(v, {})[t] = test
          row[f"{t} vs {reference}"] = metrics.paired_summary(test)
      table.rows.append(row)
  table.notes.append("Seen: in the restorers' training mixture; unseen: held out. "
                     + ", ".join(f"{g}: " + ", ".join(f"{n} {s}" for n, s in sets[g]) for g in SETS if sets[g]) + ". "
                     + _labels_note(ctx, recs))
  if reference:
    table.notes.append(f"\"vs {reference}\": examples a row's images are recognised correctly on (top-1) and "
                       f"{reference}'s are not (+), the reverse (-), and McNemar's exact p-value; the mean rows pool "
                       f"the examples of every degradation of the set. Rows compared: {', '.join(others)}.")
  table.extra["paired"] = paired
  table.extra["sets"] = {g: [list(f) for f in sets[g]] for g in SETS}
  return table
