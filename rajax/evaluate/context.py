"""What every evaluator shares: the mesh, the evaluation data, trained processors, targets, the cache.

Images flow in batches: the host pipeline (`rajax.data.eval_dataset`, last batch padded with mask
0) -> global arrays sharded over the mesh's "data" axis (denoising inputs drawn there, from the clean
images and example indices, unless config.data.noise="host") -> a *view* of them on device:

  "input"   the degraded input (SR inputs upscaled bicubically to the clean size);
  "clean"   the clean image;
  NAME      the output of trained processor NAME (and what its recognizers see: T(P(x)) for a
            processor trained with a transformer T);
  "clean+CODEC@Q", "NAME+CODEC@Q"  (`coded_view`) the clean image or processor NAME's output coded by a
            standard codec (`rajax.codecs`) at quality Q and decoded, for rate-accuracy curves: their
            quality records hold each file's real bits per pixel ("bpp") too. A processor built
            around a codec composes it itself (NPP's P reads Q; `rajax.runs.Run.coded`).

For each (view, target) the evaluator records per-example predictions (`targets.summarise`), and
for each view PSNR and SSIM against the clean image. Records are cached in
`<workdir>/cache/<sha256>.npz`, keyed by the processor's weight files and architecture, the
target's identity (weights file hash, ONNX file hash, callable name) and the data config, so a
re-run of any table reads them instead of recomputing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import time
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rajax import data as data_lib
from rajax import distributed, metrics, sharding
from rajax import runs as runs_lib
from rajax.evaluate import targets as targets_lib
from rajax.methods import to_float_images

CACHE_VERSION = 1
INPUT, CLEAN = "input", "clean"


class EvalError(ValueError):
  """The evaluation config or its inputs (processor runs, targets, data) are wrong."""


def coded_view(base: str, codec: str, quality: int) -> str:
  """The view of `base` ("clean" or a processor's name) coded by `codec` at `quality`: "BASE+CODEC@Q"."""
  from rajax import codecs
  codecs.get(codec).check_quality(quality)
  return f"{base}+{codec}@{int(quality)}"


def parse_coded(view: str) -> tuple[str, str, int] | None:
  """(base, codec, quality) of a `coded_view` name; None for any other view."""
  base, plus, rest = view.rpartition("+")
  codec, at, q = rest.partition("@")
  if not plus or not at or not q.isdigit():
    return None
  return base, codec, int(q)


def log(msg: str) -> None:
  if jax.process_index() == 0:
    print(f"[evaluate] {msg}", flush=True)


# ==================================================================== processors

@dataclasses.dataclass
class Processor:
  """A trained processor: a finished run (`rajax.runs.Run`) under the name the evaluation gives it."""

  name: str
  run: runs_lib.Run
  placed: Any = None   # `arguments()` on the evaluation's devices (set by the Context)

  @property
  def workdir(self) -> pathlib.Path:
    return self.run.workdir

  @property
  def train_config(self) -> ml_collections.ConfigDict:
    return self.run.config

  @property
  def key(self) -> str:
    return self.run.key

  @property
  def task(self) -> str:
    return self.run.task

  @property
  def method(self) -> str:
    return self.run.spec.name

  @property
  def title(self) -> str:
    return self.run.spec.title

  @property
  def is_baseline(self) -> bool:
    """Whether no recognizer shaped this processor (the plain processing other rows are compared with)."""
    return not self.run.spec.recognition_loss

  @property
  def lam(self) -> float | None:
    return self.run.lam

  @property
  def loss_recognizer(self) -> str | None:
    return self.run.loss_recognizer

  @property
  def class_half(self) -> str:
    return self.run.class_half

  def arguments(self) -> dict[str, Any]:
    """What `apply` reads besides the images: the trained variables and the frozen networks."""
    return {"trained": self.run.variables, "frozen": self.run.frozen}

  def apply(self, variables, x):
    """(shown, seen): the method's "human" and "machine" images (what a person sees, what recognizers see)."""
    views = self.run.forward(x, variables["trained"], variables["frozen"])
    return views["human"], views["machine"]


def load_processor(name: str, workdir: str | os.PathLike, *, compute_dtype: str | None = None) -> Processor:
  """The processor trained in `workdir`, as saved when its run finished."""
  try:
    return Processor(name=name, run=runs_lib.load(workdir, compute_dtype=compute_dtype))
  except runs_lib.RunError as e:
    raise EvalError(f"Processor {name!r}: {e}") from None


# ==================================================================== data

@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Which images: the data config's evaluation split, degraded by `degradation`."""

  degradation: data_lib.Degradation

  def key(self, data_cfg, seed: int, *, clean: bool = False) -> str:
    d = json.loads(data_cfg.to_json_best_effort(sort_keys=True))
    d.pop("threads", None)
    d.pop("workers", None)
    d.pop("noise", None)  # the degradation says where its noise is drawn, when it has any
    deg = "none" if clean else dataclasses.asdict(self.degradation)
    if not clean and self.degradation.task != "denoise":
      deg.pop("noise")
    return json.dumps([d, deg, seed], sort_keys=True)


# ==================================================================== the evaluator context

class Context:
  """Mesh, data, processors, targets and the prediction cache of one evaluation run."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | os.PathLike,
               extra_targets: Mapping[str, Any] | None = None):
    self.config = config
    self.workdir = pathlib.Path(workdir)
    self.mesh = sharding.make_mesh(config.mesh.data)
    sharding.check_batch_size(config.batch_size, self.mesh, "batch_size")
    self.replicated = sharding.replicated(self.mesh)
    self.batched = sharding.batch_sharded(self.mesh)
    self.cache_dir = self.workdir / "cache"
    self.stats = {"computed": 0, "cached": 0}   # records computed vs read from the cache
    self._processors: dict[str, Processor] = {}
    self._targets: dict[str, Any] = {n: targets_lib.wrap(n, t) for n, t in (extra_targets or {}).items()}
    self._jitted: dict[Any, Any] = {}
    self._digests: dict[tuple[str, str], str] = {}
    self._source = None
    d = config.degrade
    self.main = DataSpec(data_lib.Degradation(task=config.task, scale=d.scale, sigma=d.sigma, quality=d.quality,
                                              noise=config.data.get("noise", "device"), kernel=d.get("kernel", "pil"),
                                              families=tuple(d.get("families", ()))))

  # ------------------------------------------------------------------ lookups
  def processor(self, name: str) -> Processor:
    if name not in self._processors:
      if name not in self.config.processors:
        raise EvalError(f"Unknown processor {name!r}; the config's processors are: "
                        f"{', '.join(self.config.processors.keys()) or '(none)'}.")
      p = load_processor(name, self.config.processors[name], compute_dtype=self.config.compute_dtype)
      p.placed = jax.device_put(p.arguments(), self.replicated)
      self._processors[name] = p
    return self._processors[name]

  def target(self, name: str):
    if name not in self._targets:
      if name not in self.config.targets:
        known = list(self.config.targets.keys()) + list(self._targets)
        raise EvalError(f"Unknown target {name!r}; the config's targets are: {', '.join(known) or '(none)'}.")
      t = targets_lib.build(name, self.config.targets[name], compute_dtype=self.config.compute_dtype,
                            seed=self.config.seed)
      if t.on_device:
        t.recognizer = jax.device_put(t.recognizer, self.replicated)
      self._targets[name] = t
    return self._targets[name]

  def target_names(self, names: Sequence[str] | None, task: str = "classification") -> list[str]:
    """`names`, or by default every target of `task` (classifiers for the classification tables,
    detectors for the detection table, segmenters for the segmentation table)."""
    if names:
      return list(names)
    configured = [n for n, spec in self.config.targets.items() if targets_lib.task_of(spec) == task]
    extra = [n for n, t in self._targets.items() if n not in self.config.targets
             and targets_lib.object_task(t) == task]
    return configured + extra

  def processor_names(self, names: Sequence[str] | None) -> list[str]:
    return list(names) if names else list(self.config.processors.keys())

  @property
  def source(self):
    if self._source is None:
      self._source = data_lib.make_source(self.config.data, self.config.data.split)
    return self._source

  @property
  def num_examples(self) -> int:
    n = len(self.source)
    return n if self.config.data.num_examples < 0 else min(n, self.config.data.num_examples)

  # ------------------------------------------------------------------ batches
  def batches(self, spec: DataSpec):
    """(global batch, example indices of its rows (-1: padding)) over the evaluation images.

    Every batch has its "input": one the pipeline left to the device is made here, once per batch.
    """
    c = self.config
    ds = data_lib.eval_dataset(
        self.source, spec.degradation, resize=c.data.resize, crop=c.data.crop, global_batch=c.batch_size,
        seed=c.seed, num_examples=c.data.num_examples, process_index=jax.process_index(),
        process_count=jax.process_count(), threads=c.data.threads)
    n, pc = self.num_examples, jax.process_count()
    local_b = c.batch_size // pc
    stage = spec.degradation.device_stage(c.seed)
    for j, local in enumerate(ds):
      positions = j * local_b + np.arange(local_b)
      rows = np.concatenate([h + pc * positions for h in range(pc)])
      rows = np.where(rows < n, rows, -1)
      batch = sharding.global_batch(local, self.mesh)
      if stage is not None:
        batch = self._jit(("device_stage", stage), stage, (self.batched,), self.batched)(batch)
      yield batch, rows

  def num_batches(self) -> int:
    per_host = -(-self.num_examples // jax.process_count())
    return -(-per_host // (self.config.batch_size // jax.process_count()))

  # ------------------------------------------------------------------ jitted pieces
  def _jit(self, key, fn, in_shardings, out_shardings):
    if key not in self._jitted:
      self._jitted[key] = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings)
    return self._jitted[key]

  def view(self, name: str, batch) -> tuple[jax.Array, jax.Array]:
    """(shown, seen) images of view `name` for a global batch, sharded along "data"."""
    return self.view_outputs(name, batch)[:2]

  def view_outputs(self, name: str, batch) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """(shown, seen, extra) of view `name`: extra holds a coded view's per-image "bpp" ({} otherwise)."""
    coded = parse_coded(name)
    if coded is not None:
      return self._coded_view(*coded, batch)
    return (*self._plain_view(name, batch), {})

  def _coded_view(self, base: str, codec: str, quality: int, batch):
    from rajax import codecs
    codecs.get(codec).check_quality(quality)
    rep, bat = self.replicated, self.batched
    q = np.int32(quality)   # an argument, not a constant: one program per (view, codec) serves every quality
    if base == CLEAN:
      def code(y, q):
        return codecs.roundtrip_jax(codec, to_float_images(y), q)
      decoded, bpp = self._jit(("coded", base, codec), code, (bat, rep), (bat, bat))(batch["target"], q)
      return decoded, decoded, {"bpp": bpp}
    if base == INPUT:
      raise EvalError(f"View {base}+{codec}@{quality}: code the clean image ('clean+{codec}@{quality}') or a "
                      "processor's output; the degraded input is not a coded view.")
    p = self.processor(base)
    fn = self._jit(("coded", base, codec),
                   lambda v, x, q: p.run.coded(to_float_images(x), codec, q, v["trained"], v["frozen"]),
                   (rep, bat, rep), bat)
    out = fn(p.placed, batch["input"], q)
    return out["human"], out["machine"], {"bpp": out["bpp"]}

  def _plain_view(self, name: str, batch) -> tuple[jax.Array, jax.Array]:
    rep, bat = self.replicated, self.batched
    if name == CLEAN:
      y = self._jit("clean", to_float_images, (bat,), bat)(batch["target"])
      return y, y
    if name == INPUT:
      def up(x, y):
        x, y = to_float_images(x), to_float_images(y)
        if x.shape != y.shape:
          x = jnp.clip(jax.image.resize(x, y.shape, "bicubic"), 0.0, 1.0)
        return x
      x = self._jit("input", up, (bat, bat), bat)(batch["input"], batch["target"])
      return x, x
    p = self.processor(name)
    fn = self._jit(("proc", name), lambda v, x: p.apply(v, to_float_images(x)), (rep, bat), (bat, bat))
    return fn(p.placed, batch["input"])

  def lpips_settings(self) -> tuple[str, str] | None:
    """(net, backbone weights file) when the config asks for LPIPS (config.lpips.backbone), else None."""
    cfg = self.config.get("lpips") or {}
    return (cfg.get("net", "alex"), cfg["backbone"]) if cfg.get("backbone") else None

  def quality(self, shown, batch) -> dict[str, np.ndarray]:
    """Per-example PSNR and SSIM of `shown` against the clean images (and LPIPS when configured)."""
    bat, rep = self.batched, self.replicated
    lp = self.lpips_settings()
    distance = None
    if lp is not None:
      from rajax.models import lpips as lpips_lib
      distance = lpips_lib.lpips_fn(net=lp[0], backbone_weights=lp[1])

    def quality(a, y):
      y = to_float_images(y)
      out = {"psnr": metrics.psnr(a, y), "ssim": metrics.ssim(a, y)}
      if distance is not None:
        out["lpips"] = distance(a, y)
      return out

    fn = self._jit(("quality", lp), quality, (bat, bat), rep)
    return jax.device_get(fn(shown, batch["target"]))

  def lpips_distance(self):
    """The LPIPS `distance(x, y) -> [n]` the config asks for (config.lpips.backbone), else None."""
    lp = self.lpips_settings()
    if lp is None:
      return None
    from rajax.models import lpips as lpips_lib
    return lpips_lib.lpips_fn(net=lp[0], backbone_weights=lp[1])

  def lpips_key(self) -> list | None:
    """["lpips", net, the backbone file's digest]: the part of a record key that tells records holding
    LPIPS (from those weights) from records without; None when the config asks for no LPIPS."""
    lp = self.lpips_settings()
    if lp is None:
      return None
    if lp not in self._digests:
      self._digests[lp] = _digest(lp[1])
    return ["lpips", lp[0], self._digests[lp]]

  def outputs(self, target, images) -> dict[str, np.ndarray]:
    """targets.summarise of `target` on a sharded image batch, as host arrays for every row."""
    seed = self.config.classes.seed
    if target.on_device:
      fn = self._jit(("target", target.name),
                     lambda r, x: targets_lib.summarise(target.logits(r, x), seed=seed),
                     (self.replicated, self.batched), self.replicated)
      return jax.device_get(fn(target.recognizer, images))
    return target.outputs(self.host_images(images), seed=seed)

  def host_images(self, images) -> np.ndarray:
    return distributed.gather_hosts(images)

  # ------------------------------------------------------------------ cache
  def _cache_file(self, key: str) -> pathlib.Path:
    return self.cache_dir / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".npz")

  def _cache_read(self, key: str):
    if not self.config.cache:
      return None
    f = self._cache_file(key)
    if not f.is_file():
      return None
    try:
      with np.load(f, allow_pickle=False) as z:
        if str(z["__key__"]) != key:
          return None
        return {k: z[k] for k in z.files if k != "__key__"}
    except (OSError, ValueError, KeyError):  # a damaged cache file is recomputed
      return None

  def _cache_write(self, key: str, record: dict) -> None:
    if not self.config.cache or jax.process_index() != 0:
      return
    self.cache_dir.mkdir(parents=True, exist_ok=True)
    f = self._cache_file(key)
    tmp = f.with_name(f".{f.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, __key__=np.asarray(key), **record)
    os.replace(tmp, f)

  def cached(self, kind: str, parts, compute) -> dict[str, np.ndarray]:
    """compute() -> {name: array}, or its cached result for the same (kind, parts)."""
    key = json.dumps([CACHE_VERSION, kind, parts], sort_keys=True)
    rec = self._cache_read(key)
    if rec is not None:
      self.stats["cached"] += 1
      return rec
    rec = {k: np.asarray(v) for k, v in compute().items()}
    self._cache_write(key, rec)
    self.stats["computed"] += 1
    return rec

  def view_key(self, view: str) -> str:
    coded = parse_coded(view)
    if coded is not None:
      from rajax import codecs
      base, codec, quality = coded
      return json.dumps(["coded", self.view_key(base), codecs.get(codec).identity(), quality])
    return view if view in (INPUT, CLEAN) else self.processor(view).key

  @staticmethod
  def reads_clean(view: str) -> bool:
    """Whether `view` is made from the clean image alone (so its records do not depend on the degradation)."""
    coded = parse_coded(view)
    return (coded[0] if coded else view) == CLEAN

  def _record_key(self, kind: str, view: str, spec: DataSpec, target: str | None = None) -> str:
    data = spec.key(self.config.data, self.config.seed, clean=self.reads_clean(view))
    t = self.target(target).key if target else ""
    seed = self.config.classes.seed if target else 0
    parts = [CACHE_VERSION, kind, self.view_key(view), t, data, seed]
    lp = self.lpips_settings() if kind == "quality" else None
    if lp is not None:   # quality records with LPIPS are other records than those without
      if lp not in self._digests:
        self._digests[lp] = _digest(lp[1])
      parts.append(["lpips", lp[0], self._digests[lp]])
    return json.dumps(parts)

  # ------------------------------------------------------------------ records
  def records(self, views: Iterable[str], target_names: Iterable[str], spec: DataSpec | None = None,
              what: str = "") -> dict:
    """{"labels": [N] dataset labels, (view, "quality"): {psnr, ssim}, (view, target): outputs}.

    Reads cached records and computes the missing ones in one pass over the data.
    """
    spec = spec or self.main
    views, target_names = list(dict.fromkeys(views)), list(dict.fromkeys(target_names))
    if self.config.labels == "recognizer" and CLEAN not in views:  # the labels are the clean predictions
      views.append(CLEAN)
    wanted = [(v, "quality") for v in views] + [(v, t) for v in views for t in target_names]
    wanted.append((CLEAN, "labels"))
    out, missing = {}, []
    for v, t in wanted:
      kind = t if t in ("quality", "labels") else "pred"
      key = self._record_key(kind, v, spec, None if kind != "pred" else t)
      rec = self._cache_read(key)
      if rec is None:
        missing.append((v, t, key))
      else:
        out[(v, t)] = rec
        self.stats["cached"] += 1
    if missing:
      out.update(self._compute(missing, spec, what))
    out["labels"] = out.pop((CLEAN, "labels"))["label"]
    return out

  def _compute(self, missing, spec: DataSpec, what: str) -> dict:
    n = self.num_examples
    parts: dict[tuple, dict[str, list]] = {(v, t): {} for v, t, _ in missing}
    rows_all = []
    needed_views = list(dict.fromkeys(v for v, t, _ in missing if t != "labels"))
    total = self.num_batches()
    desc = f"{what}: " if what else ""
    log(f"{desc}computing {len(missing)} record(s) over {n} images ({total} batches of {self.config.batch_size}) "
        f"for {', '.join(needed_views) or 'labels'}")
    t0 = time.perf_counter()
    with jax.set_mesh(self.mesh):
      for j, (batch, rows) in enumerate(self.batches(spec)):
        rows_all.append(rows)
        labels = np.asarray(jax.device_get(batch["label"])) if jax.process_count() == 1 else \
            self.host_images(batch["label"])
        if (CLEAN, "labels") in parts:
          parts[(CLEAN, "labels")].setdefault("label", []).append(labels)
        for v in needed_views:
          shown, seen, extra = self.view_outputs(v, batch)
          for (pv, pt), store in parts.items():
            if pv != v or pt == "labels":
              continue
            if pt == "quality":
              res = self.quality(shown, batch) | {k: self.host_images(a) for k, a in extra.items()}
            else:
              res = self.outputs(self.target(pt), seen)
            for k, a in res.items():
              store.setdefault(k, []).append(np.asarray(a))
        done = j + 1
        if done == total or done == 1 or done % max(1, total // 10) == 0:
          dt = time.perf_counter() - t0
          rate = done * self.config.batch_size / dt
          eta = (total - done) * dt / done
          log(f"{desc}batch {done}/{total} | {rate:.1f} img/s | ETA {eta:.0f}s")
    rows = np.concatenate(rows_all)
    order = np.argsort(np.where(rows < 0, np.iinfo(np.int64).max, rows), kind="stable")[:n]
    out = {}
    for v, t, key in missing:
      rec = {k: np.concatenate(a)[order] for k, a in parts[(v, t)].items()}
      self._cache_write(key, rec)
      self.stats["computed"] += 1
      out[(v, t)] = rec
    return out

  # ------------------------------------------------------------------ labels and accuracy
  def labels(self, recs: dict, target: str, reference: str | None = None) -> np.ndarray:
    """Per-example labels for `target`: the dataset's, or (config.labels="recognizer") a recognizer's
    own top-1 on the clean image: the target's, or `reference`'s when given (e.g. a trained R measured
    against the recognizer it started from)."""
    if self.config.labels == "dataset":
      if np.any(recs["labels"] < 0):
        raise EvalError("The evaluation data has no labels (label -1, e.g. data.source='photos'): "
                        "set config.labels='recognizer'.")
      return recs["labels"]
    return recs[(CLEAN, reference or target)]["topk"][:, 0]

  def top1_correct(self, recs: dict, view: str, target: str, reference: str | None = None) -> np.ndarray:
    """Per example, whether `target`'s top-1 class on `view` is the label (boolean [N])."""
    return recs[(view, target)]["topk"][:, 0] == self.labels(recs, target, reference)

  def accuracy(self, recs: dict, view: str, target: str, reference: str | None = None) -> dict[str, float]:
    """Top-1 and top-5 (NaN where the target gives fewer than 5 classes) of `target` on `view`."""
    labels = self.labels(recs, target, reference)
    topk = recs[(view, target)]["topk"]
    top1 = float(np.mean(topk[:, 0] == labels))
    top5 = float(np.mean(np.any(topk == labels[:, None], axis=1))) if topk.shape[1] >= 5 else float("nan")
    return {"top1": top1, "top5": top5}

  def trained_recognizer(self, view: str) -> str | None:
    """The name of a target for the recognizer processor `view`'s run trained (None if it trained none)."""
    p = self.processor(view)
    if p.run.recognizer is None:
      return None
    return self._run_recognizer(view, lambda: p.run.recognizer, ["run", p.key])

  def fixed_recognizer(self, view: str) -> str | None:
    """The name of a target for the fixed loss recognizer of processor `view`'s run when the run read it
    from a weights file (SR4IR's T->S: a task network trained on clean images); None when the run
    trained its recognizer, has none, or used the zoo's own weights (the config's targets stand for those)."""
    p = self.processor(view)
    cfg = p.run.config
    weights = cfg.recognizer.get("weights")
    if "recognizer" not in p.run.spec.frozen or not weights or weights == "random":
      return None
    from rajax import networks
    return self._run_recognizer(view, lambda: networks.module(cfg, "recognizer"),
                                ["fixed", cfg.recognizer.name, _digest(weights)])

  def _run_recognizer(self, view: str, build, key: list) -> str:
    """Target "<view>:R", the recognizer `build()` makes, registered once (a run has one such recognizer)."""
    name = f"{view}:R"
    if name not in self._targets:
      rec = jax.device_put(build(), self.replicated)
      self._targets[name] = targets_lib.ZooTarget(name=name, recognizer=rec, key=json.dumps(key))
    return name


def _digest(path: str) -> str:
  """A file's SHA-256 (the cache key of a recognizer read from it)."""
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def dataset_labels_ok(recs: dict) -> bool:
  return bool(np.all(recs["labels"] >= 0))
