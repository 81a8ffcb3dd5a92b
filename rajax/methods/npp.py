"""NPP: a neural pre-processor before a standard codec, trained through a proxy codec (Lu et al.,
"Preprocessing Enhanced Image Compression for Machine Vision"; official code XingtongGe/PreprocessingICM).

    npp           P: R + lam * L(R_rec(Y), label) + beta * MSE(P(x, q), x)
                     Y = Y_p + stop_gradient(X_hat - Y_p),  R = R_p + stop_gradient(R_t - R_p)
                     X_hat, R_t: the real codec's decoded image and bits per pixel at quality q
                     (`rajax.codecs`, on the host); Y_p, R_p: the frozen proxy codec's on P(x, q)
    proxy_rd      C: bpp(C(x)) + lam_p * 255^2 * MSE(C(x), x) + aux        (rate-distortion, CompressAI's loss)
    proxy_codec   C: bpp(C(x)) + lam_p * 255^2 * MSE(C(x), X_hat(x))      (towards the real codec: NPP's Eq. 2)

The straight-through composition is the official code's `.data` overwrite written functionally:
the step's values are the real codec's (its decoded image and its real rate, 8 x bytes / (H x W)),
its gradients the proxy's. The real codec runs inside the jitted step through a host callback
(`rajax.codecs.roundtrip_jax`): one call per step on the whole batch, deterministic, writing no
files (the official code writes temporary files named by batch index, so parallel runs clobber
each other). The recognizer is frozen and in inference mode; P's BatchNorm trains normally (the
official detection code freezes it through the detector's `norm_eval`).

Quality adaptivity: each step draws one (quality, lam) pair from `config.method.pairs` (the
paper's BPG QPs 28/31/34/37/41 with lam 0.5/1/2/4/8) and P, built with
`config.processor.adaptive=True`, reads the quality normalised by the codec
(`rajax.codecs.get(name).normalise`). A fixed-quality P (the paper's second stage) trains on a
single pair. `forward` shows and feeds recognizers the codec's output at `config.method.quality`;
`rajax.evaluate`'s rate-accuracy evaluator sweeps the codec's qualities.

The proxy C is the `codec` network (`config.codec`: `bmshj2018-hyperprior` or `mbt2018`,
`rajax.models.proxy_codec`); `proxy_rd` and `proxy_codec` train it (`config.optim.codec`), `npp`
reads it frozen from `config.method.codec_weights` (a trained run's codec.msgpack or a CompressAI
checkpoint). Inside `npp` the proxy quantises with additive uniform noise ("noise", its training
mode) or rounds with an identity gradient ("ste"): `config.method.proxy_quantize`; either way its
forward values are replaced by the real codec's.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from rajax import codecs, losses, metrics as metrics_lib
from rajax.methods import base
from rajax.tasks import classification

PROXY_QUANTIZE = ("noise", "ste")
# The paper's BPG pairs (QP, lam): QP 28/31/34/37/41 with lam 0.5/1/2/4/8.
PAPER_PAIRS = ((28, 0.5), (31, 1.0), (34, 2.0), (37, 4.0), (41, 8.0))


def straight_through(proxy: jax.Array, real: jax.Array) -> jax.Array:
  """`real`'s value with `proxy`'s gradient: proxy + stop_gradient(real - proxy)."""
  return proxy + jax.lax.stop_gradient(real - proxy)


def proxy_apply(codec: base.FrozenNetwork, x: jax.Array, *, quantize: str, key: jax.Array) -> dict[str, Any]:
  """The frozen proxy codec's {"x_hat", "likelihoods"} on `x` with differentiable quantisation (`quantize`)."""
  return codec.module.clone(quantization=quantize).apply(codec.variables, x, train=True, rngs={"noise": key})


def _settings(config) -> dict[str, Any]:
  m = config.method
  return dict(codec=m.codec, pairs=tuple((int(q), float(l)) for q, l in m.pairs), quality=int(m.quality),
              beta=float(m.beta), proxy_quantize=m.proxy_quantize, labels=config.get("labels", "dataset"),
              loss_options=tuple(sorted((config.recognizer.get("loss") or {}).items())))


def _validate_npp(config) -> list[str]:
  m, out = config.method, []
  if config.task != "codec":
    out.append(f"method npp pre-processes the clean image before a codec: set config.task='codec' (got {config.task!r})")
  if config.processor.name != "npp":
    out.append(f"method npp trains the NPP pre-processor: set config.processor.name='npp' (got "
               f"{config.processor.name!r})")
  out += _codec_problems(m.get("codec", ""), [q for q, _ in m.get("pairs", ())] + [m.get("quality", 0)])
  if not m.get("pairs"):
    out.append("config.method.pairs is empty: give (quality, lam) pairs, e.g. ((34, 2.0),)")
  elif any(float(l) < 0 for _, l in m.pairs):
    out.append(f"config.method.pairs={tuple(m.pairs)}: every lam must be >= 0")
  if m.get("pairs") and len(m.pairs) > 1 and not config.processor.get("adaptive", False):
    out.append(f"config.method.pairs has {len(m.pairs)} qualities but config.processor.adaptive=False: a "
               "fixed-quality pre-processor trains at one (quality, lam) pair; set config.processor.adaptive=True "
               "for quality adaptivity")
  if m.get("proxy_quantize") not in PROXY_QUANTIZE:
    out.append(f"config.method.proxy_quantize={m.get('proxy_quantize')!r} is not one of {', '.join(PROXY_QUANTIZE)}")
  if not m.get("beta", 0) >= 0:
    out.append(f"config.method.beta={m.get('beta')} must be >= 0")
  return out


def _codec_problems(name: str, qualities) -> list[str]:
  if name not in codecs.NAMES:
    return [f"config.method.codec={name!r} is not one of {', '.join(codecs.NAMES)}"]
  codec = codecs.get(name)
  bad = sorted({int(q) for q in qualities if not codec.lo <= int(q) <= codec.hi})
  return [f"config.method qualities {bad} are outside codec {name!r}'s range [{codec.lo}, {codec.hi}]"] if bad else []


def make_npp(setup: base.Setup) -> base.Method:
  s = _settings(setup.config)
  codec = codecs.get(s["codec"])
  modules, optimizers = {"processor": setup.modules["processor"]}, setup.optimizers
  qualities = jnp.asarray([q for q, _ in s["pairs"]], jnp.int32)
  lams = jnp.asarray([l for _, l in s["pairs"]], jnp.float32)
  normalised = jnp.asarray([codec.normalise(q) for q, _ in s["pairs"]], jnp.float32)
  spec = METHODS["npp"]

  def preprocess(params, batch_stats, x, qn, *, train: bool):
    kwargs = {"quality": jnp.broadcast_to(qn, (x.shape[0],))} if modules["processor"].adaptive else {}
    variables = {"params": params, "batch_stats": batch_stats}
    if train:
      out, updates = modules["processor"].apply(variables, x, train=True, mutable=["batch_stats"], **kwargs)
      return out, updates["batch_stats"]
    return modules["processor"].apply(variables, x, train=False, **kwargs), batch_stats

  def loss_fn(params, batch_stats, batch, frozen, index, key):
    x = base.to_float_images(batch["target"])
    recognizer = frozen["recognizer"]
    task = base.task_of(recognizer)
    pre, p_stats = preprocess(params["processor"], batch_stats["processor"], x, normalised[index], train=True)
    real, real_bpp = codecs.roundtrip_jax(s["codec"], pre, qualities[index])
    proxy_key, rec_key = jax.random.split(key)
    proxy = proxy_apply(frozen["codec"], pre, quantize=s["proxy_quantize"], key=proxy_key)
    proxy_bpp = losses.rate_bpp_per_image(likelihoods=proxy["likelihoods"], num_pixels=x.shape[1] * x.shape[2])
    y = straight_through(proxy["x_hat"], real)
    rate = straight_through(proxy_bpp, real_bpp)
    targets = (task.pseudo_targets(recognizer(x))[0] if s["labels"] == "recognizer" else task.dataset_targets(batch))
    per_example, outputs, _ = task.recognition_loss(recognizer, y, targets, rng=rec_key,
                                                    **base.loss_options(task, dict(s["loss_options"])))
    terms = {"bpp": jnp.mean(rate), "recognition": jnp.mean(per_example),
             "pixel_mse": losses.pixel_mse(pred=pre, target=x), "proxy_bpp": jnp.mean(proxy_bpp),
             "proxy_psnr": jnp.mean(metrics_lib.psnr(jnp.clip(proxy["x_hat"], 0.0, 1.0), real))}
    total = terms["bpp"] + lams[index] * terms["recognition"] + s["beta"] * terms["pixel_mse"]
    aux = base.LossAux(terms, {"processor": p_stats}, outputs, real, targets)
    return total, aux

  def train_step(state: base.TrainState, batch, frozen):
    if "codec" not in frozen or "recognizer" not in frozen:
      raise ValueError(f"Method npp needs frozen={{'recognizer': R, 'codec': proxy}}; got {sorted(frozen)}.")
    rng, pick, key = jax.random.split(state.rng, 3)
    index = jax.random.randint(pick, (), 0, len(s["pairs"]))
    (total, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.batch_stats, batch, frozen,
                                                                  index, key)
    params, opt_state = base.apply_gradients(state, grads, optimizers, ("processor",))
    y = base.to_float_images(batch["target"])
    metrics = {"loss": total, **aux.terms, "psnr": jnp.mean(metrics_lib.psnr(aux.image, y)),
               "quality": qualities[index].astype(jnp.float32), "grad_norm": optax.tree.norm(grads["processor"])}
    metrics.update(base.task_of(frozen["recognizer"]).step_metrics(aux.outputs, aux.targets))
    return state.replace(step=state.step + 1, params=params, batch_stats=aux.batch_stats, opt_state=opt_state,
                         rng=rng), metrics

  def init(rng, initial=None):
    initial = initial or {}
    rng, key = jax.random.split(rng)
    p = modules["processor"]
    variables = initial.get("processor") or base.init_variables(
        p, key, jnp.zeros((1, *setup.input_shape), jnp.float32), **p.init_kwargs(1))
    return base.new_state({"processor": variables}, optimizers, rng)

  def coded_forward(variables, frozen, x, codec_name: str, quality: int):
    """P at `codec_name`'s normalised `quality`, then that codec: the trained codec or another one (the
    quality input of an adaptive P is the position on the codec's own axis, `Codec.normalise`)."""
    target = codecs.get(codec_name)
    v = variables["processor"]
    q = jnp.asarray(quality, jnp.int32)   # may be traced: one program serves every quality
    pre, _ = preprocess(v["params"], v["batch_stats"], x, target.normalise(q), train=False)
    out, bpp = codecs.roundtrip_jax(codec_name, pre, q)
    return {"human": out, "machine": out, "bpp": bpp, "preprocessed": pre}

  def forward(variables, frozen, x, quality: int | None = None):
    return coded_forward(variables, frozen, x, s["codec"], s["quality"] if quality is None else quality)

  return base.Method(spec=spec, init=init, train_step=train_step, forward=forward, coded_forward=coded_forward)


# ==================================================================== the proxy codec's own training

def _proxy_settings(config) -> dict[str, Any]:
  m = config.method
  return dict(lam=float(m.lam_proxy), codec=m.get("codec", ""), quality=int(m.get("quality", 0)))


def _validate_proxy(config, *, real: bool) -> list[str]:
  m, out = config.method, []
  if config.task != "codec":
    out.append(f"the proxy codec learns to compress clean images: set config.task='codec' (got {config.task!r})")
  if not m.get("lam_proxy", 0) > 0:
    out.append(f"config.method.lam_proxy={m.get('lam_proxy')} must be > 0 (CompressAI's quality 3: 0.0067)")
  if real:
    out += _codec_problems(m.get("codec", ""), [m.get("quality", 0)])
  return out


def _make_proxy(setup: base.Setup, *, real: bool) -> base.Method:
  s = _proxy_settings(setup.config)
  module, optimizers = setup.modules["codec"], setup.optimizers
  spec = METHODS["proxy_codec" if real else "proxy_rd"]

  def loss_fn(params, batch, key):
    x = base.to_float_images(batch["target"])
    out = module.apply({"params": params}, x, train=True, rngs={"noise": key})
    bpp = losses.rate_bpp(likelihoods=out["likelihoods"], num_pixels=x.size // x.shape[-1])
    target = x
    if real:
      target, _ = codecs.roundtrip_jax(s["codec"], x, jnp.int32(s["quality"]))
    mse = losses.pixel_mse(pred=out["x_hat"], target=target)
    aux_loss = module.apply({"params": params}, method=module.aux_loss)
    total = bpp + s["lam"] * 255.0 ** 2 * mse + aux_loss
    return total, ({"bpp": bpp, "mse": mse, "aux": aux_loss}, out["x_hat"], target)

  def train_step(state: base.TrainState, batch, frozen):
    rng, key = jax.random.split(state.rng)
    (total, (terms, x_hat, target)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["codec"], batch,
                                                                                        key)
    params, opt_state = base.apply_gradients(state, {"codec": grads}, optimizers, ("codec",))
    metrics = {"loss": total, **terms, "psnr": jnp.mean(metrics_lib.psnr(jnp.clip(x_hat, 0.0, 1.0), target)),
               "grad_norm": optax.tree.norm(grads)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics

  def init(rng, initial=None):
    initial = initial or {}
    rng, key = jax.random.split(rng)
    if initial.get("codec"):
      variables = initial["codec"]
    else:
      x = jnp.zeros((1, *setup.input_shape), jnp.float32)
      v = module.init({"params": key, "noise": key}, x, train=False)
      variables = {"params": v["params"], "batch_stats": {}}
    return base.new_state({"codec": variables}, optimizers, rng)

  def forward(variables, frozen, x):
    out = module.apply({"params": variables["codec"]["params"]}, x, train=False)
    bpp = losses.rate_bpp_per_image(likelihoods=out["likelihoods"], num_pixels=x.shape[1] * x.shape[2])
    x_hat = jnp.clip(out["x_hat"], 0.0, 1.0)
    return {"human": x_hat, "machine": x_hat, "bpp": bpp}

  return base.Method(spec=spec, init=init, train_step=train_step, forward=forward)


_NPP_DEFAULTS = dict(codec="jpeg", pairs=((30, 2.0),), quality=30, beta=0.5, proxy_quantize="noise",
                     codec_weights="")
METHODS = {
    "npp": base.MethodSpec(
        name="npp", title="NPP",
        summary="P: rate + lam * L(R(codec(P(x, q)))) + beta * MSE(P(x, q), x); real codec forward, proxy backward",
        trains=("processor",), frozen=("recognizer", "codec"), defaults=lambda: dict(_NPP_DEFAULTS),
        validate=_validate_npp, make=make_npp),
    "proxy_rd": base.MethodSpec(
        name="proxy_rd", title="proxy codec (rate-distortion)",
        summary="C: bpp + lam_p * 255^2 * MSE(C(x), x) + aux", trains=("codec",), frozen=(),
        defaults=lambda: dict(lam_proxy=0.0067), validate=lambda c: _validate_proxy(c, real=False),
        make=lambda setup: _make_proxy(setup, real=False), recognition_loss=False),
    "proxy_codec": base.MethodSpec(
        name="proxy_codec", title="proxy codec (towards the real codec)",
        summary="C: bpp + lam_p * 255^2 * MSE(C(x), codec(x)) + aux", trains=("codec",), frozen=(),
        defaults=lambda: dict(lam_proxy=0.0067, codec="jpeg", quality=30), validate=lambda c: _validate_proxy(c, real=True),
        make=lambda setup: _make_proxy(setup, real=True), recognition_loss=False),
}
