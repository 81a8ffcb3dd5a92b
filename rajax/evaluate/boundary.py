"""Decision-boundary analysis (the paper's Table 6 and Figure 4).

BD(R, x, d): the smallest t > 0 at which R's top-1 class at x + t d differs from its class at x,
for a unit direction d (L2 norm over all pixels). It is found on device for a whole batch at once:
a coarse grid t_k = k * max_distance / grid finds the first step whose class differs, then
`bisect` halvings of [t_{k-1}, t_k] narrow it; the returned t is the upper end of the final
interval (R's class there differs), within max_distance / grid / 2**bisect of the boundary crossed.
A boundary narrower than a grid step can be stepped over; no change up to max_distance gives inf.

IBD(R1, R2, x, d) = |BD(R1, x, d) - BD(R2, x, d)|: how far apart two recognizers' boundaries are
along d. The analysis takes x = the plain processor's output on images that the source recognizer
(the one the RA processor was trained with) and a target recognizer both misclassify *with the
same wrong class*, and compares the RA direction d = (x_RA - x_plain) / |x_RA - x_plain| with
random Gaussian directions. The 2-D decision maps colour R's class at x + a u + b v, with u the RA
direction and v a random direction orthogonal to it, for several recognizers side by side.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rajax.evaluate.context import CLEAN, Context, EvalError, log
from rajax.evaluate.report import Table, pyplot


def boundary_distance(predict: Callable[[jax.Array], jax.Array], x: jax.Array, d: jax.Array, *,
                      max_distance: float, grid: int = 16, bisect: int = 12) -> jax.Array:
  """BD for a batch: x, d [B, ...] (d of unit norm per example) -> distances [B] (inf: none found).

  `predict` maps a batch of images to top-1 classes [B]. Runs grid + bisect calls of `predict`.
  """
  if grid < 1 or bisect < 0 or not max_distance > 0:
    raise ValueError(f"boundary_distance needs grid >= 1, bisect >= 0, max_distance > 0; "
                     f"got {grid}, {bisect}, {max_distance}.")
  shape = (-1,) + (1,) * (x.ndim - 1)
  y0 = predict(x)
  ts = jnp.linspace(0.0, max_distance, grid + 1, dtype=jnp.float32)[1:]

  def probe(t):
    return predict(x + t.reshape(shape) * d) != y0

  def scan_body(carry, t):
    return carry, probe(jnp.full(x.shape[:1], t))

  _, changed = jax.lax.scan(scan_body, None, ts)            # [grid, B]
  found = jnp.any(changed, axis=0)
  k = jnp.argmax(changed, axis=0)
  hi = ts[k]
  lo = jnp.where(k > 0, ts[jnp.maximum(k - 1, 0)], 0.0)

  def bisect_body(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    ch = probe(mid)
    return jnp.where(ch, lo, mid), jnp.where(ch, mid, hi)

  lo, hi = jax.lax.fori_loop(0, bisect, bisect_body, (lo, hi))
  return jnp.where(found, hi, jnp.inf)


def inter_boundary_distance(bd_a: np.ndarray, bd_b: np.ndarray) -> np.ndarray:
  """|BD_a - BD_b| per example; NaN where either boundary was not found."""
  bd_a, bd_b = np.asarray(bd_a, np.float64), np.asarray(bd_b, np.float64)
  ok = np.isfinite(bd_a) & np.isfinite(bd_b)
  return np.where(ok, np.abs(np.where(ok, bd_a, 0) - np.where(ok, bd_b, 0)), np.nan)


def unit(v: np.ndarray) -> np.ndarray:
  """Each example of [B, ...] scaled to unit L2 norm (zero vectors stay zero)."""
  flat = v.reshape(v.shape[0], -1).astype(np.float64)
  n = np.linalg.norm(flat, axis=1, keepdims=True)
  return (flat / np.where(n > 0, n, 1.0)).reshape(v.shape).astype(np.float32)


def random_directions(shape, indices, k: int, seed: int) -> np.ndarray:
  """Unit Gaussian direction number k for each example index (the same for the same seed)."""
  out = np.stack([np.random.default_rng([seed, int(i), k]).standard_normal(shape[1:], dtype=np.float32)
                  for i in indices])
  return unit(out)


# ==================================================================== the evaluator

def _batched_bd(ctx: Context, target, x: np.ndarray, d: np.ndarray, cfg) -> np.ndarray:
  """BD of `target` for host arrays x, d, in sharded batches of config.batch_size (padded)."""
  b = ctx.config.batch_size
  m = x.shape[0]
  kw = dict(max_distance=float(cfg.get("max_distance", 20.0)), grid=int(cfg.get("grid", 16)),
            bisect=int(cfg.get("bisect", 12)))
  key = ("bd", target.name, tuple(sorted(kw.items())))
  if target.on_device:
    fn = ctx._jit(key, lambda r, xs, ds: boundary_distance(
        lambda z: jnp.argmax(target.logits(r, z), axis=-1), xs, ds, **kw),
        (ctx.replicated, ctx.batched, ctx.batched), ctx.replicated)
  out = []
  for s in range(0, m, b):
    xs, ds = x[s:s + b], d[s:s + b]
    pad = b - xs.shape[0]
    if pad:
      xs = np.concatenate([xs, np.repeat(xs[:1], pad, 0)])
      ds = np.concatenate([ds, np.repeat(ds[:1], pad, 0)])
    if target.on_device:
      with jax.set_mesh(ctx.mesh):
        res = np.asarray(jax.device_get(fn(target.recognizer, jax.device_put(xs, ctx.batched),
                                           jax.device_put(ds, ctx.batched))))
    else:  # a black box: the same search, calling it on the host
      res = _host_bd(target, xs, ds, **kw)
    out.append(res[:b - pad])
  return np.concatenate(out) if out else np.zeros((0,), np.float32)


def _host_bd(target, x, d, *, max_distance, grid, bisect) -> np.ndarray:
  """boundary_distance for a host (black-box) target, with numpy."""
  shape = (-1,) + (1,) * (x.ndim - 1)
  pred = lambda z: target.outputs(z.astype(np.float32), seed=0)["topk"][:, 0]
  y0 = pred(x)
  ts = np.linspace(0.0, max_distance, grid + 1, dtype=np.float32)[1:]
  changed = np.stack([pred(x + t * d) != y0 for t in ts])
  found = changed.any(0)
  k = changed.argmax(0)
  hi, lo = ts[k], np.where(k > 0, ts[np.maximum(k - 1, 0)], 0.0).astype(np.float32)
  for _ in range(bisect):
    mid = 0.5 * (lo + hi)
    ch = pred(x + mid.reshape(shape) * d) != y0
    lo, hi = np.where(ch, lo, mid), np.where(ch, mid, hi)
  return np.where(found, hi, np.inf)


def _collect(ctx: Context, views: list[str], wanted: set[int]) -> dict[str, dict[int, np.ndarray]]:
  """The images of `views` for the example indices in `wanted`, on the host."""
  out = {v: {} for v in views}
  if not wanted:
    return out
  with jax.set_mesh(ctx.mesh):
    for batch, rows in ctx.batches(ctx.main):
      hit = [r for r in rows if r in wanted]
      if not hit:
        continue
      pos = [int(np.nonzero(rows == r)[0][0]) for r in hit]
      for v in views:
        _, seen = ctx.view(v, batch)
        imgs = ctx.host_images(seen)
        for r, p in zip(hit, pos):
          out[v][int(r)] = imgs[p]
      if len(out[views[0]]) >= len(wanted):
        break
  return out


def boundary(ctx: Context, cfg, name: str) -> Table:
  """BD and IBD along the RA direction and random directions; decision maps as PNG."""
  plain, ra = cfg.get("plain", "plain"), cfg.get("ra", "ra")
  source = cfg.get("source")
  if not source:
    raise EvalError(f"evals.{name}.source must name the target recognizer the RA processor was trained with.")
  tnames = [t for t in ctx.target_names(cfg.get("targets")) if t != source]
  n_random = int(cfg.get("random_directions", 4))
  max_images = int(cfg.get("max_images", 64))
  seed = ctx.config.seed
  recs = ctx.records([plain, ra, CLEAN], [source] + tnames, what=name)

  # Images where the source and target give the same wrong class on the plain output.
  pred_s = recs[(plain, source)]["topk"][:, 0]
  wrong_s = pred_s != ctx.labels(recs, source)
  selected = {}
  for t in tnames:
    pred_t = recs[(plain, t)]["topk"][:, 0]
    idx = np.nonzero(wrong_s & (pred_t == pred_s) & (pred_t != ctx.labels(recs, t)))[0][:max_images]
    selected[t] = [int(i) for i in idx]
  map_cfg = cfg.get("map", {}) or {}
  pool = sorted({i for v in selected.values() for i in v})
  map_index = pool[int(map_cfg.get("image", 0)) % len(pool)] if pool else 0
  log(f"{name}: {', '.join(f'{t}: {len(v)}' for t, v in selected.items())} image(s) with the same wrong class "
      f"as {source} on the plain output")
  store = {}

  def images():  # the plain and RA outputs of the selected images, only computed when a result is not cached
    if not store:
      store.update(_collect(ctx, [plain, ra], set(pool) | {map_index}))
    return store

  search = {k: cfg.get(k, v) for k, v in (("max_distance", 20.0), ("grid", 16), ("bisect", 12))}
  base_key = [ctx.view_key(plain), ctx.view_key(ra), ctx.main.key(ctx.config.data, seed), search, n_random]

  cols = ["target", "images", "direction", f"BD {source}", "BD target", "IBD", "found"]
  table = Table(name, cfg.get("title", f"Decision boundaries along the RA and random directions (Table 6), "
                                      f"source {source}"), cols,
                {"target": "text", "images": "num", "direction": "text", f"BD {source}": "num", "BD target": "num",
                 "IBD": "num", "found": "pct"})
  per_image = {}
  for t in tnames:
    idx = selected[t]
    if not idx:
      table.rows.append({"target": t, "images": 0, "direction": "-"})
      continue
    per_image[t] = {"indices": idx}
    for dname in ("RA", "random"):
      def compute(t=t, idx=idx, dname=dname):
        x = np.stack([images()[plain][i] for i in idx])
        if dname == "RA":
          dlist = [unit(np.stack([images()[ra][i] for i in idx]) - x)]
        else:
          dlist = [random_directions(x.shape, idx, k, seed) for k in range(n_random)]
        return {"bd_source": np.concatenate([_batched_bd(ctx, ctx.target(source), x, d, cfg) for d in dlist]),
                "bd_target": np.concatenate([_batched_bd(ctx, ctx.target(t), x, d, cfg) for d in dlist])}
      res = ctx.cached("boundary", base_key + [ctx.target(source).key, ctx.target(t).key, idx, dname], compute)
      bd_s, bd_t = res["bd_source"], res["bd_target"]
      ibd = inter_boundary_distance(bd_s, bd_t)
      ok = np.isfinite(ibd)
      table.rows.append({"target": t, "images": len(idx), "direction": dname + (f" (x{n_random})" if dname == "random" else ""),
                         f"BD {source}": float(np.mean(bd_s[ok])) if ok.any() else float("nan"),
                         "BD target": float(np.mean(bd_t[ok])) if ok.any() else float("nan"),
                         "IBD": float(np.mean(ibd[ok])) if ok.any() else float("nan"), "found": float(ok.mean())})
      per_image[t][dname] = {"bd_source": bd_s.tolist(), "bd_target": bd_t.tolist()}
  table.extra["per_image"] = per_image
  table.notes.append(
      f"Images: the plain output ({plain}) where {source} and the target predict the same wrong class (at most "
      f"{max_images}). RA direction: ({ra} output - {plain} output), normalised; random: {n_random} Gaussian "
      f"directions per image. Distances in L2 over all pixels of [0, 1] images (no clipping), grid "
      f"{cfg.get('grid', 16)} steps up to {cfg.get('max_distance', 20.0)} then {cfg.get('bisect', 12)} bisections; "
      "means over images where both boundaries were found ('found').")
  if pool:
    table.figures.append(decision_map(ctx, cfg, name, images, plain, ra, map_index, [source] + tnames, base_key))
  else:
    table.notes.append("No image qualified, so no decision map was drawn.")
  return table


def decision_map(ctx: Context, cfg, name: str, images, plain: str, ra: str, index: int,
                 default_targets: list[str], base_key: list) -> str:
  """<name>_map.png: each recognizer's class over the plane (RA direction, random direction) through
  the plain output of image `index` (`images()` gives {view: {index: image}})."""
  map_cfg = cfg.get("map", {}) or {}
  size = int(map_cfg.get("size", 33))
  names = list(map_cfg.get("targets") or default_targets)

  def compute():
    x_plain, x_ra = images()[plain][index], images()[ra][index]
    ra_dist = float(np.linalg.norm((x_ra - x_plain).ravel()))
    radius = float(map_cfg.get("radius", 0.0)) or max(2.0 * ra_dist, 1e-3)
    u = unit((x_ra - x_plain)[None])[0]
    v = np.random.default_rng([ctx.config.seed, index, 10_000]).standard_normal(u.shape).astype(np.float32)
    v = unit((v - np.sum(v * u) * u)[None])[0]
    coords = np.linspace(-radius, radius, size, dtype=np.float32)
    a, b = np.meshgrid(coords, coords)                       # rows: b (random), columns: a (RA)
    points = x_plain[None] + a.reshape(-1, 1, 1, 1) * u[None] + b.reshape(-1, 1, 1, 1) * v[None]
    return {"ra_distance": ra_dist, "radius": radius,
            **{f"map_{t}": _predict_host(ctx, ctx.target(t), points).reshape(size, size) for t in names}}

  res = ctx.cached("decision_map", base_key + [index, size, float(map_cfg.get("radius", 0.0)),
                                               [ctx.target(t).key for t in names]], compute)
  ra_dist, radius = float(res["ra_distance"]), float(res["radius"])
  maps = {t: res[f"map_{t}"] for t in names}
  classes = sorted({int(c) for m in maps.values() for c in np.unique(m)})
  colour_of = {c: i for i, c in enumerate(classes)}
  plt = pyplot()
  from matplotlib.colors import ListedColormap
  base = plt.get_cmap("tab20").colors
  cmap = ListedColormap([base[i % len(base)] for i in range(max(len(classes), 1))])
  fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), squeeze=False)
  for ax, t in zip(axes[0], names):
    ax.imshow(np.vectorize(colour_of.get)(maps[t]), origin="lower", cmap=cmap, vmin=-0.5, vmax=len(classes) - 0.5,
              extent=(-radius, radius, -radius, radius), interpolation="nearest")
    ax.plot([0], [0], "ko", ms=5, label="plain output")
    ax.plot([ra_dist], [0], "w*", ms=10, mec="k", label="RA output")
    ax.set_title(t, fontsize=9)
    ax.set_xlabel("RA direction")
    ax.set_ylabel("random direction")
  axes[0][0].legend(fontsize=6, loc="lower left")
  fig.suptitle(f"Decision maps around image {index} (colour = predicted class; same colour = same class)", fontsize=9)
  fig.tight_layout()
  png = f"{name}_map.png"
  fig.savefig(ctx.workdir / png, dpi=90)
  plt.close(fig)
  np.savez(ctx.workdir / f"{name}_map.npz", radius=radius, ra_distance=ra_dist, **{f"map_{t}": m for t, m in maps.items()})
  return png


def _predict_host(ctx: Context, target, images: np.ndarray) -> np.ndarray:
  """Top-1 classes of `target` for host images, in sharded batches (padded)."""
  b = ctx.config.batch_size
  out = []
  for s in range(0, images.shape[0], b):
    xs = images[s:s + b]
    pad = b - xs.shape[0]
    if pad:
      xs = np.concatenate([xs, np.repeat(xs[:1], pad, 0)])
    with jax.set_mesh(ctx.mesh):
      res = ctx.outputs(target, jax.device_put(xs, ctx.batched) if target.on_device else xs)
    out.append(np.asarray(res["topk"])[:b - pad, 0])
  return np.concatenate(out)
