"""VRD-IR (Visual Recognition-Driven Image Restoration for Multiple Degradation, CVPR 2023).

One restorer for images degraded in unknown ways, trained in the feature space of a frozen
encoder phi: the early layers of a pretrained recognizer (the frozen "recognizer" network,
`config.recognizer`, up to its named feature `config.method.phi_layer`, e.g. MobileNetV2's "stem",
32 channels at stride 2). The processor (`rajax.models.vrdir.VRDIR`, config.processor.name="vrdir")
holds the two trained networks, the Semantic Aware Decoder SAD and the Intrinsic Semantics
Enhancement ISE. With c the clean image, d the degraded one:

    phase 1, steps [0, sad_steps):    SAD pre-training with the similarity ranking loss
        L1(SAD(phi(c)), c) + w_d * L1(SAD(phi(d)), d) + relu(m - (cos(SAD(phi(c)), c) - cos(SAD(phi(d)), d)))
        (w_d = config.method.degraded_weight, 0.1; m = config.method.margin, 1)
    phase 2, steps [sad_steps, end):  ISE training, SAD frozen
        L1(SAD(ISE(phi(d))), c) + w_s * (1 - cos(GMP(ISE(phi(d))), GMP(phi(c))))
        (w_s = config.method.semantic_weight, 1; GMP: global max pooling over the spatial positions)

    restored image (forward): SAD(ISE(phi(x))), clipped to [0, 1], shown and fed to any recognizer.

cos is the cosine similarity of two flattened per-example arrays (an image pair, or two pooled
feature vectors); each term is a per-example value (L1: the mean absolute difference over the
example's pixels) and the loss is their mean over the batch.

The phases are one method with a step-count switch inside the jitted step: state.step < sad_steps
weighs the phase's loss 1 and the other's 0 and selects which network the step updates (rather than
a `lax.cond`, inside which XLA's CPU backend runs convolutions ~30x more slowly). The train state
holds SAD and ISE and an optimizer state for each (both from config.optim.processor; each counts
its own updates, so its schedule starts when its phase does), so a run resumes exactly from any
checkpoint, the phase boundary included, and one config trains both phases (a two-method design
would need a second run reading the first's SAD; sad_steps=0 with config.init_processor does that). A phase updates only its network: the other network's parameters and
optimizer state pass through unchanged. phi is never differentiated (its features are stopped and
the gradients are taken with respect to one network's parameters only); in phase 2 SAD's
parameters enter the loss through `stop_gradient` (and SAD's own term is weighed 0), so their
gradient is exactly zero, as ISE's is in phase 1.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from rajax import metrics as metrics_lib
from rajax.methods import base

# MobileNetV2's first block (32 channels at stride 2), the nearest to VGG-16 features[:8] (128 at stride 2):
# SAD decodes it to 23.8 dB on the photos in 100 steps, "stage1" (16 channels at stride 2) to 17 dB.
DEFAULT_LAYER = "stem"


# ==================================================================== losses (pure functions of arrays)

def cosine_similarity(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Per-example cosine similarity [B] of `a` and `b` ([B, ...]), flattened: a.b / (max(|a|, eps) max(|b|, eps))."""
  a = a.reshape(a.shape[0], -1).astype(jnp.float32)
  b = b.reshape(b.shape[0], -1).astype(jnp.float32)
  dot = jnp.sum(a * b, axis=-1)
  return dot / (jnp.maximum(jnp.linalg.norm(a, axis=-1), eps) * jnp.maximum(jnp.linalg.norm(b, axis=-1), eps))


def _l1(a, b):
  return jnp.mean(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)).reshape(a.shape[0], -1), axis=-1)


def _reduce(x, reduction):
  if reduction == "none":
    return x
  if reduction == "mean":
    return jnp.mean(x)
  raise ValueError(f"reduction={reduction!r} must be 'mean' or 'none'.")


def similarity_ranking_terms(*, restored_clean, clean, restored_degraded, degraded, margin: float = 1.0
                             ) -> dict[str, jax.Array]:
  """The ranking loss's per-example terms [B]: "l1_clean", "l1_degraded" and "ranking" =
  relu(margin - (cos(restored_clean, clean) - cos(restored_degraded, degraded)))."""
  ranking = jax.nn.relu(margin - (cosine_similarity(restored_clean, clean) -
                                  cosine_similarity(restored_degraded, degraded)))
  return {"l1_clean": _l1(restored_clean, clean), "l1_degraded": _l1(restored_degraded, degraded), "ranking": ranking}


def similarity_ranking_loss(*, restored_clean, clean, restored_degraded, degraded, degraded_weight: float = 0.1,
                            margin: float = 1.0, reduction: str = "mean") -> jax.Array:
  """SAD's pre-training loss: l1_clean + degraded_weight * l1_degraded + ranking per example
  (`similarity_ranking_terms`), averaged over the batch ("mean") or per example ("none")."""
  t = similarity_ranking_terms(restored_clean=restored_clean, clean=clean, restored_degraded=restored_degraded,
                               degraded=degraded, margin=margin)
  return _reduce(t["l1_clean"] + degraded_weight * t["l1_degraded"] + t["ranking"], reduction)


def global_max_pool(f: jax.Array) -> jax.Array:
  """[B, h, w, C] -> [B, C]: the maximum over the spatial positions."""
  return jnp.max(f.astype(jnp.float32), axis=(1, 2))


def semantic_terms(*, restored, clean, enhanced_features, clean_features) -> dict[str, jax.Array]:
  """ISE's per-example terms [B]: "pixel_l1" = L1(restored, clean) and "semantic" =
  1 - cos(GMP(enhanced_features), GMP(clean_features))."""
  return {"pixel_l1": _l1(restored, clean),
          "semantic": 1.0 - cosine_similarity(global_max_pool(enhanced_features), global_max_pool(clean_features))}


def ise_loss(*, restored, clean, enhanced_features, clean_features, semantic_weight: float = 1.0,
             reduction: str = "mean") -> jax.Array:
  """ISE's loss: pixel_l1 + semantic_weight * semantic per example (`semantic_terms`), reduced."""
  t = semantic_terms(restored=restored, clean=clean, enhanced_features=enhanced_features, clean_features=clean_features)
  return _reduce(t["pixel_l1"] + semantic_weight * t["semantic"], reduction)


# ==================================================================== phi

def phi_layers(recognizer, image_shape) -> dict[str, tuple[int, ...]]:
  """The named feature maps ([B, h, w, C]) `recognizer` exposes for images of `image_shape` (H, W, 3):
  name -> (h, w, C), computed abstractly (no FLOPs)."""
  task = base.task_of(recognizer)
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  shapes = jax.eval_shape(lambda r, x: task.features(r, x)[1], recognizer, x)
  return {k: tuple(v.shape[1:]) for k, v in shapes.items() if hasattr(v, "shape") and len(v.shape) == 4}


def phi_geometry(recognizer, layer: str, image_shape) -> tuple[int, int]:
  """(stride, channels) of `recognizer`'s feature `layer` for images of `image_shape`; a ValueError
  listing the layers it has if it has no such feature map."""
  layers = phi_layers(recognizer, image_shape)
  if layer not in layers:
    raise ValueError(f"config.method.phi_layer={layer!r} is not a feature map of recognizer "
                     f"{getattr(recognizer, 'name', '?')!r}; it has: "
                     + ", ".join(f"{k} {v[0]}x{v[1]}x{v[2]}" for k, v in layers.items())
                     + f" (for {image_shape[0]}x{image_shape[1]} images).")
  h, _, c = layers[layer]
  return image_shape[0] // h, c


def phi(recognizer, layer: str, x: jax.Array) -> jax.Array:
  """phi(x): `recognizer`'s feature map `layer` of images x in [0, 1], stopped (phi is frozen).
  Under jit the layers after `layer` are dead code, which XLA removes."""
  task = base.task_of(recognizer)
  feats = task.features(recognizer, x)[1]
  if layer not in feats:
    phi_geometry(recognizer, layer, x.shape[1:])   # raises, listing the layers
  return jax.lax.stop_gradient(feats[layer])


# ==================================================================== the method

def settings(config) -> dict[str, Any]:
  m = config.method
  return dict(layer=str(m.phi_layer), sad_steps=int(m.sad_steps), degraded_weight=float(m.degraded_weight),
              margin=float(m.margin), semantic_weight=float(m.semantic_weight))


def features_fn(proc, layer: str):
  """features(recognizer, x) -> phi(x) for the processor `proc`, checked against what it reads."""

  def features(rec, x):
    if rec is None:
      raise ValueError("VRD-IR's encoder phi is the frozen recognizer's early layers: pass frozen={'recognizer': R}.")
    f = phi(rec, layer, x)
    if f.shape[-1] != proc.in_channels or x.shape[1] != f.shape[1] * proc.stride:
      raise ValueError(f"phi = {rec.name!r} up to {layer!r} gives {f.shape[-1]} channels at stride "
                       f"{x.shape[1] // f.shape[1]}, but the processor reads {proc.in_channels} at stride {proc.stride}: "
                       f"set config.processor.in_channels={f.shape[-1]} and config.processor.stride="
                       f"{x.shape[1] // f.shape[1]} (configs/vrdir.py sets them from the layer).")
    return f

  return features


def make_loss_fn(proc, s: dict[str, Any]):
  """loss_fn(params, recognizer, d, c, ise_phase) -> (total, (terms, restored image)): the phase's loss
  for the processor's params {"sad", "ise"}, phi = `recognizer` up to s["layer"], degraded images d
  and clean ones c in [0, 1], and ise_phase 0.0 (SAD's pre-training) or 1.0 (ISE's training).

  The loss is (1 - p) * SAD's + p * ISE's with p = ise_phase: the other phase's term is multiplied by
  exactly 0, and so is its gradient; phi's features are stopped, and ISE's term reads SAD through
  stop_gradient. Its `terms` are the phase's per-term batch means (the other phase's are 0).
  """
  features = features_fn(proc, s["layer"])

  def sad_apply(p, f):
    return proc.apply({"params": p}, f, method="decode")

  def sad_loss(sad, fc, fd, c, d):
    rc, rd = sad_apply({"sad": sad}, fc), sad_apply({"sad": sad}, fd)
    t = similarity_ranking_terms(restored_clean=rc, clean=c, restored_degraded=rd, degraded=d, margin=s["margin"])
    total = jnp.mean(t["l1_clean"] + s["degraded_weight"] * t["l1_degraded"] + t["ranking"])
    return total, ({k: jnp.mean(v) for k, v in t.items()}, rd)

  def ise_phase_loss(ise, sad, fc, fd, c):
    params = {"sad": jax.lax.stop_gradient(sad), "ise": ise}   # SAD frozen: exactly zero gradient
    enhanced = proc.apply({"params": params}, fd, method="enhance")
    restored = sad_apply(params, enhanced)
    t = semantic_terms(restored=restored, clean=c, enhanced_features=enhanced, clean_features=fc)
    total = jnp.mean(t["pixel_l1"] + s["semantic_weight"] * t["semantic"])
    return total, ({k: jnp.mean(v) for k, v in t.items()}, restored)

  def loss_fn(params, recognizer, d, c, ise_phase):
    fd, fc = features(recognizer, d), features(recognizer, c)
    l_sad, (t_sad, img_sad) = sad_loss(params["sad"], fc, fd, c, d)
    l_ise, (t_ise, img_ise) = ise_phase_loss(params["ise"], params["sad"], fc, fd, c)
    total = (1.0 - ise_phase) * l_sad + ise_phase * l_ise
    terms = {k: (1.0 - ise_phase) * v for k, v in t_sad.items()} | {k: ise_phase * v for k, v in t_ise.items()}
    image = jnp.where(ise_phase > 0, img_ise, img_sad)
    return total, (terms, image)

  return loss_fn


def make_vrdir(setup: base.Setup) -> base.Method:
  s = settings(setup.config)
  proc = setup.modules["processor"]
  tx = setup.optimizers.get("processor")
  spec = METHODS["vrdir"]
  features = features_fn(proc, s["layer"])
  loss_fn = make_loss_fn(proc, s)

  def restore(params, f):
    return proc.apply({"params": params}, f)

  def select(flag, a, b):
    return jax.tree.map(lambda x, y: jnp.where(flag, x, y), a, b)

  def train_step(state: base.TrainState, batch: base.Batch, frozen: base.Frozen):
    if tx is None:
      raise ValueError("VRD-IR trains its processor: build it with optimizers={'processor': ...}.")
    batch = base.with_input(batch, setup.device_stage)
    d, c = base.to_float_images(batch["input"]), base.to_float_images(batch["target"])
    if d.shape != c.shape:
      raise ValueError(f"VRD-IR restores images at their own size: input {d.shape} and target {c.shape} differ "
                       "(use a scale-1 task: mixture, denoise, jpeg).")
    params, opt = state.params["processor"], state.opt_state["processor"]
    in_sad_phase = state.step < s["sad_steps"]
    ise_phase = 1.0 - in_sad_phase.astype(jnp.float32)
    # Both phases' terms are computed every step and weighed 0/1, rather than branched with lax.cond:
    # XLA's CPU backend runs the convolutions inside a conditional ~30x more slowly (measured here).
    # gradients with respect to the processor's parameters only: phi (the recognizer) is an argument, never differentiated
    (total, (terms, image)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, frozen.get("recognizer"), d, c,
                                                                              ise_phase)
    new_params, new_opt = dict(params), dict(opt)
    for name, active in (("sad", in_sad_phase), ("ise", ~in_sad_phase)):
      updates, o = tx.update(grads[name], opt[name], params[name])
      # the other phase's network, and its optimizer state, pass through unchanged
      new_params[name] = select(active, optax.apply_updates(params[name], updates), params[name])
      new_opt[name] = select(active, o, opt[name])
    # what the step restored: SAD(phi(d)) in phase 1, SAD(ISE(phi(d))) in phase 2, against the clean image
    metrics = {"loss": total, **terms, "psnr": jnp.mean(metrics_lib.psnr(jnp.clip(image, 0.0, 1.0), c)),
               "grad_norm": jnp.where(in_sad_phase, optax.tree.norm(grads["sad"]), optax.tree.norm(grads["ise"])),
               "phase": ise_phase}
    new_state = state.replace(step=state.step + 1, params={"processor": new_params},
                              opt_state={"processor": new_opt})
    return new_state, metrics

  def init(rng, initial=None):
    initial = initial or {}
    rng, key = jax.random.split(rng)
    variables = initial.get("processor") or base.init_variables(
        proc, key, jnp.zeros((1, *proc.feature_input(setup.input_shape)), jnp.float32))
    params = variables["params"]
    opt_state = {"processor": {n: tx.init(params[n]) for n in ("sad", "ise")}} if tx is not None else {"processor": {}}
    return base.TrainState(step=jnp.zeros((), jnp.int32), params={"processor": params},
                           batch_stats={"processor": variables.get("batch_stats", {})}, opt_state=opt_state, rng=rng)

  def forward(variables, frozen, x):
    out = jnp.clip(restore(variables["processor"]["params"], features(frozen.get("recognizer"), x)), 0.0, 1.0)
    return {"human": out, "machine": out}

  return base.Method(spec=spec, init=init, train_step=train_step, forward=forward)


def _validate(config) -> list[str]:
  m, out = config.method, []
  if config.task in ("sr", "codec"):
    out.append(f"config.task={config.task!r}: VRD-IR restores degraded images at their own size; use task 'mixture' "
               "(config.degrade.families), 'denoise' or 'jpeg'")
  if config.processor.name != "vrdir":
    out.append(f"config.processor.name={config.processor.name!r}: VRD-IR trains its own networks (SAD and ISE): set "
               "config.processor.name='vrdir' (configs/vrdir.py)")
  if int(m.get("sad_steps", 0)) < 0:
    out.append(f"config.method.sad_steps={m.sad_steps} must be >= 0 (the steps of SAD's pre-training)")
  if int(m.get("sad_steps", 0)) == 0 and not config.get("init_processor"):
    out.append("config.method.sad_steps=0 skips SAD's pre-training, so SAD must come from a trained run: set "
               "config.init_processor to its processor.msgpack, or sad_steps > 0")
  if config.get("total_steps", -1) > 0 and int(m.get("sad_steps", 0)) > config.total_steps:
    out.append(f"config.method.sad_steps={m.sad_steps} is more than config.total_steps={config.total_steps}, so ISE "
               "would never train: make sad_steps at most total_steps (equal: a run of SAD's pre-training alone, "
               "which a longer run resumes into ISE's phase)")
  for field in ("degraded_weight", "margin", "semantic_weight"):
    if not float(m.get(field, 0.0)) >= 0:
      out.append(f"config.method.{field}={m.get(field)} must be >= 0")
  if config.processor.name == "vrdir" and not out:
    out += _phi_problems(config)
  return out


def _phi_problems(config) -> list[str]:
  """The mismatches between config.method.phi_layer of config.recognizer and config.processor."""
  from rajax import networks   # the recognizer is built (and cached) as the trainer builds it
  from rajax.models import vrdir as vrdir_models
  try:
    rec = networks.module(config, "recognizer")
    stride, channels = phi_geometry(rec, config.method.phi_layer, (config.data.crop, config.data.crop, 3))
    vrdir_models.up_steps(stride)   # a power of two: SAD's up-steps
  except ValueError as e:
    return [str(e).rstrip(".")]
  p = config.processor
  if p.get("stride") != stride or p.get("in_channels") != channels:
    return [f"config.processor (stride={p.get('stride')}, in_channels={p.get('in_channels')}) does not read phi = "
            f"{config.recognizer.name!r} up to {config.method.phi_layer!r} ({channels} channels at stride {stride}): "
            f"set config.processor.stride={stride} and config.processor.in_channels={channels}"]
  if config.data.crop % stride:
    return [f"config.data.crop={config.data.crop} must be divisible by phi's stride {stride}"]
  return []


METHODS = {
    "vrdir": base.MethodSpec(
        name="vrdir", title="VRD-IR",
        summary="SAD: L1 + similarity ranking on phi(c), phi(d); then ISE: L1(SAD(ISE(phi(d))), c) + "
                "(1 - cos(GMP(ISE(phi(d))), GMP(phi(c)))), SAD and phi frozen",
        trains=("processor",), frozen=("recognizer",), validate=_validate, make=make_vrdir,
        defaults=lambda: dict(phi_layer=DEFAULT_LAYER, sad_steps=100, degraded_weight=0.1, margin=1.0,
                              semantic_weight=1.0),
        forward_uses=("recognizer",)),
}
