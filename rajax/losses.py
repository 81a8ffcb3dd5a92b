"""Loss functions of recognition-aware processing, as pure functions of arrays.

Every function is keyword-only, holds no jit, pmap, axis names or collectives, and so drops into
any JAX codebase. Shapes: B is the batch, K the number of classes; images are [B, H, W, C].
`reduction` selects what is returned:

  "none": one value per example, shape [B];
  "mean": the mean over examples (for pixel losses this equals the mean over every element,
          as torch's MSELoss/L1Loss; for probability MSE the mean over B*K, as the reference code);
  "sum":  the sum over examples of the per-example values.

All computation is in float32 whatever the input dtype.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

REDUCTIONS = ("mean", "sum", "none")


def _reduce(per_example: jax.Array, reduction: str) -> jax.Array:
  if reduction == "mean":
    return jnp.mean(per_example)
  if reduction == "sum":
    return jnp.sum(per_example)
  if reduction == "none":
    return per_example
  raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")


def _check_same_shape(a: jax.Array, b: jax.Array, names: str) -> None:
  if a.shape != b.shape:
    raise ValueError(f"{names} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
  if a.ndim < 1:
    raise ValueError(f"{names} need a leading batch axis, got scalars.")


def _check_logits(a: jax.Array, b: jax.Array) -> None:
  _check_same_shape(a, b, "logits and target_logits")
  if a.ndim != 2:
    raise ValueError(f"logits must be [batch, classes], got shape {tuple(a.shape)}.")


def _per_example_mean(x: jax.Array) -> jax.Array:
  return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def pixel_mse(*, pred: jax.Array, target: jax.Array, reduction: str = "mean") -> jax.Array:
  """Mean squared error between images. pred, target: [B, ...]; per example: mean over pixels."""
  _check_same_shape(pred, target, "pred and target")
  d = pred.astype(jnp.float32) - target.astype(jnp.float32)
  return _reduce(_per_example_mean(d * d), reduction)


def pixel_l1(*, pred: jax.Array, target: jax.Array, reduction: str = "mean") -> jax.Array:
  """Mean absolute error between images. pred, target: [B, ...]; per example: mean over pixels."""
  _check_same_shape(pred, target, "pred and target")
  d = pred.astype(jnp.float32) - target.astype(jnp.float32)
  return _reduce(_per_example_mean(jnp.abs(d)), reduction)


def recognition_ce(
    *,
    logits: jax.Array,
    labels: jax.Array,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> jax.Array:
  """Softmax cross-entropy of a recognizer's logits (the RA loss).

  Args:
    logits: [B, K].
    labels: integer class indices [B], or soft labels [B, K] (each row a distribution).
    label_smoothing: epsilon in [0, 1): the target becomes (1 - eps) * labels + eps / K, as
      torch.nn.CrossEntropyLoss(label_smoothing=eps).
    reduction: "mean" | "sum" | "none".
  """
  if logits.ndim != 2:
    raise ValueError(f"logits must be [batch, classes], got shape {tuple(logits.shape)}.")
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
  b, k = logits.shape
  if labels.shape == (b,):
    if not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"Hard labels must be integers, got dtype {labels.dtype}; pass soft labels as [B, K].")
    target = jax.nn.one_hot(labels, k, dtype=jnp.float32)
  elif labels.shape == (b, k):
    target = labels.astype(jnp.float32)
  else:
    raise ValueError(
        f"labels must be class indices [{b}] or soft labels [{b}, {k}] to match logits {tuple(logits.shape)}, "
        f"got shape {tuple(labels.shape)}.")
  if label_smoothing:
    target = (1.0 - label_smoothing) * target + label_smoothing / k
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return _reduce(-jnp.sum(target * logp, axis=-1), reduction)


def prob_mse(*, logits: jax.Array, target_logits: jax.Array, reduction: str = "mean") -> jax.Array:
  """MSE between softmax probabilities, the unsupervised-RA distance of the reference code.

  logits, target_logits: [B, K]. Per example: mean over the K classes of (p - q)^2, so "mean"
  equals torch's MSELoss(softmax(logits), softmax(target_logits)).
  """
  _check_logits(logits, target_logits)
  p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  q = jax.nn.softmax(target_logits.astype(jnp.float32), axis=-1)
  return _reduce(jnp.mean((p - q) ** 2, axis=-1), reduction)


def prob_kl(
    *, logits: jax.Array, target_logits: jax.Array, temperature: float = 1.0, reduction: str = "mean"
) -> jax.Array:
  """KL(q || p) with q = softmax(target_logits / T) and p = softmax(logits / T).

  logits, target_logits: [B, K]. Per example: sum over classes of q (log q - log p); "mean" is the
  batch mean (torch's kl_div(reduction="batchmean")).
  """
  _check_logits(logits, target_logits)
  if temperature <= 0:
    raise ValueError(f"temperature must be positive, got {temperature}.")
  logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  logq = jax.nn.log_softmax(target_logits.astype(jnp.float32) / temperature, axis=-1)
  return _reduce(jnp.sum(jnp.exp(logq) * (logq - logp), axis=-1), reduction)


# Distances between a recognizer's outputs on P(x) and on the clean target, by config name.
DISTANCES = {"prob_mse": prob_mse, "kl": prob_kl}


def feature_loss(
    *,
    features: Mapping[str, jax.Array],
    target_features: Mapping[str, jax.Array],
    layers: Sequence[str] | None = None,
    weights: Mapping[str, float] | None = None,
    distance: str = "mse",
    reduction: str = "mean",
) -> jax.Array:
  """Weighted distance between named intermediate activations of a recognizer.

  Used by SR4IR-style feature matching and the perceptual-loss baseline.

  Args:
    features, target_features: dicts name -> [B, ...] activations (e.g. from
      `recognizer(images, features=True)[1]`), for the processed and the clean images.
    layers: names to compare; default: every name in `weights`, or else every name in `features`.
    weights: per-layer weights (default 1.0 each).
    distance: "mse" or "l1", averaged over each layer's non-batch elements.
    reduction: "mean" | "sum" | "none" over the batch of the weighted sum over layers.
  """
  per_layer = {"mse": pixel_mse, "l1": pixel_l1}
  if distance not in per_layer:
    raise ValueError(f"distance must be one of {sorted(per_layer)}, got {distance!r}.")
  weights = dict(weights or {})
  names = list(layers if layers is not None else (weights or features))
  if not names:
    raise ValueError("feature_loss needs at least one layer name.")
  missing = [n for n in names if n not in features or n not in target_features]
  if missing:
    raise ValueError(f"Layers {missing} are not in both feature dicts; available: {sorted(features)}.")
  total = 0.0
  for n in names:
    total = total + weights.get(n, 1.0) * per_layer[distance](
        pred=features[n], target=target_features[n], reduction="none")
  return _reduce(total, reduction)


# ----------------------------------------------------------------------------------------------
# Rate of learned codecs (the proxy codecs of rajax/models/proxy_codec.py)
# ----------------------------------------------------------------------------------------------


def _likelihood_leaves(likelihoods) -> list[jax.Array]:
  leaves = jax.tree.leaves(likelihoods)
  if not leaves:
    raise ValueError("likelihoods is empty: pass the codec's output['likelihoods'] ({'y': ..., 'z': ...}).")
  b = leaves[0].shape[0] if leaves[0].ndim else None
  if b is None or any(l.ndim < 1 or l.shape[0] != b for l in leaves):
    raise ValueError("Every likelihood array needs the same leading batch axis, got shapes "
                     f"{[tuple(l.shape) for l in leaves]}.")
  return leaves


def _check_num_pixels(num_pixels) -> None:
  if isinstance(num_pixels, (int, float)) and not num_pixels > 0:
    raise ValueError(f"num_pixels must be positive, got {num_pixels!r}.")


def rate_bpp(*, likelihoods, num_pixels) -> jax.Array:
  """Bits per pixel of a batch: sum over every latent of -log2(likelihood), divided by `num_pixels`
  (batch * H * W of the images, as CompressAI's RateDistortionLoss).

  likelihoods: a dict (any pytree) of arrays [B, ...], e.g. a codec's {"y": ..., "z": ...}.
  """
  _check_num_pixels(num_pixels)
  bits = sum(jnp.sum(jnp.log2(l.astype(jnp.float32))) for l in _likelihood_leaves(likelihoods))
  return -bits / num_pixels


def rate_bpp_per_image(*, likelihoods, num_pixels) -> jax.Array:
  """Bits per pixel of each image, [B]: -log2 of the likelihoods summed per image over `num_pixels`
  (H * W of one image). Its mean over the batch is `rate_bpp` with batch * H * W."""
  _check_num_pixels(num_pixels)
  bits = sum(jnp.sum(jnp.log2(l.astype(jnp.float32)).reshape(l.shape[0], -1), axis=1)
             for l in _likelihood_leaves(likelihoods))
  return -bits / num_pixels


def rate_distortion_loss(*, x_hat: jax.Array, target: jax.Array, likelihoods, lmbda: float = 0.01) -> dict:
  """CompressAI's RateDistortionLoss (metric "mse"): lmbda * 255^2 * MSE(x_hat, target) + bpp.

  x_hat, target: [B, H, W, C] in [0, 1]; likelihoods: the codec's dict. Returns {"loss", "bpp_loss",
  "mse_loss"} (scalars, as CompressAI's). CompressAI's zoo trained q1-q8 with lmbda 0.0018, 0.0035,
  0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800.
  """
  _check_same_shape(x_hat, target, "x_hat and target")
  if target.ndim != 4:
    raise ValueError(f"target must be images [B, H, W, C], got shape {tuple(target.shape)}.")
  b, h, w, _ = target.shape
  bpp = rate_bpp(likelihoods=likelihoods, num_pixels=b * h * w)
  mse = pixel_mse(pred=x_hat, target=target)
  return {"loss": lmbda * 255.0 ** 2 * mse + bpp, "bpp_loss": bpp, "mse_loss": mse}


def proxy_finetune_loss(*, x_hat: jax.Array, codec_x_hat: jax.Array, likelihoods, lmbda: float) -> dict:
  """NPP's fine-tuning loss of a proxy codec towards a real codec (paper Eq. 2):
  L_p = R_p + lambda_p * d(X_hat, Y_hat).

  R_p is the proxy's own rate (bpp, `rate_bpp`), and d the distortion between the real codec's
  reconstruction X_hat (`codec_x_hat`, e.g. BPG's decoded image of the same input) and the proxy's
  Y_hat (`x_hat`): the proxy keeps its rate-distortion objective with the real codec's output in
  place of the original image. d is CompressAI's MSE term 255^2 * MSE, so lambda_p is on the scale
  of `rate_distortion_loss`'s lmbda (the paper starts from the pretrained model whose lambda_p
  matches the real codec's quality). Returns {"loss", "bpp_loss", "mse_loss"}.
  """
  return rate_distortion_loss(x_hat=x_hat, target=jax.lax.stop_gradient(codec_x_hat), likelihoods=likelihoods,
                              lmbda=lmbda)
