"""The proxy codecs (rajax/models/proxy_codec.py, rajax/models/entropy.py) against CompressAI 1.2.8.

The reference outputs and state dicts come from tests/reference/make_proxy_codecs.py (CompressAI's
own models at N=8, M=12 with perturbed seeded weights, eval mode, float64). One compiled forward
per codec is shared by the tests.
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from rajax import losses
from rajax.models import entropy
from rajax.models import proxy_codec as pc
from rajax.weights import WeightsError, read_state_dict
import torch_file

REF = pathlib.Path(__file__).parent / "reference"
FILES = {"bmshj2018-hyperprior": REF / "proxy_codecs" / "bmshj2018_hyperprior.pth",
         "mbt2018": REF / "proxy_codecs" / "mbt2018.pth.tar"}
ARCHS = tuple(FILES)


@functools.lru_cache(maxsize=None)
def reference() -> dict:
  with np.load(REF / "proxy_codecs.npz") as f:
    return dict(f)


@functools.lru_cache(maxsize=None)
def codec(arch: str, quantization: str = "noise") -> pc.ProxyCodec:
  return pc.proxy_codec(arch, N=8, M=12, quantization=quantization)


@functools.lru_cache(maxsize=None)
def variables(arch: str) -> dict:
  return pc.load_compressai(FILES[arch], codec(arch))


@functools.lru_cache(maxsize=None)
def forward(arch: str, quantization: str = "noise"):
  """(variables, x, key, train) -> outputs, jitted once per codec and mode."""
  model = codec(arch, quantization)
  return jax.jit(lambda v, x, key, train: model.apply(v, x, train=train, rngs={"noise": key}),
                 static_argnames="train")


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_outputs_and_likelihoods_equal_compressai_for_the_same_weights(arch):
  ref = reference()
  out = forward(arch)(variables(arch), ref["input"], jax.random.key(0), train=False)
  np.testing.assert_allclose(out["x_hat"], ref[f"{arch}/x_hat"], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(out["likelihoods"]["y"], ref[f"{arch}/likelihoods_y"], rtol=1e-4, atol=1e-9)
  np.testing.assert_allclose(out["likelihoods"]["z"], ref[f"{arch}/likelihoods_z"], rtol=1e-4, atol=1e-9)
  bpp = losses.rate_bpp(likelihoods=out["likelihoods"], num_pixels=2 * 64 * 64)
  np.testing.assert_allclose(bpp, ref[f"{arch}/bpp"], rtol=1e-4)
  aux = codec(arch).apply(variables(arch), method="aux_loss")
  np.testing.assert_allclose(aux, ref[f"{arch}/aux_loss"], rtol=1e-4)


def test_gaussian_likelihood_of_integer_latents_is_the_normal_cdf_difference_with_compressai_bounds():
  values = np.array([0.0, 1.0, -2.0, 3.0, 0.0, 40.0], np.float32)
  means = np.array([0.0, 0.3, -1.5, 1.0, 0.2, 0.0], np.float32)
  scales = np.array([1.0, 0.5, 2.0, 0.05, 3.0, 1.0], np.float32)  # 0.05 is raised to the 0.11 bound
  got = entropy.gaussian_likelihood(values=values, scales=scales, means=means)
  s = np.maximum(scales.astype(np.float64), 0.11)
  want = scipy.stats.norm.cdf((values + 0.5 - means) / s) - scipy.stats.norm.cdf((values - 0.5 - means) / s)
  want = np.maximum(want, 1e-9)  # 40 sigma away: the likelihood bound
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert got[-1] == np.float32(1e-9)


def test_lower_bound_gradient_passes_above_the_bound_or_where_it_raises_the_value():
  lb = lambda x: entropy.lower_bound(x, 1.0)
  x = jnp.asarray([0.5, 2.0], jnp.float32)
  np.testing.assert_array_equal(lb(x), [1.0, 2.0])
  np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(lb(x)))(x), [0.0, 1.0])  # below: no pull further down
  np.testing.assert_array_equal(jax.grad(lambda x: -jnp.sum(lb(x)))(x), [-1.0, -1.0])  # raising it passes


def test_rate_bpp_sums_minus_log2_likelihoods_over_batch_pixels_and_per_image():
  rng = np.random.default_rng(0)
  lik = {"y": rng.uniform(0.01, 1.0, (2, 2, 2, 3)).astype(np.float32),
         "z": rng.uniform(0.01, 1.0, (2, 1, 1, 4)).astype(np.float32)}
  bits = [-(np.log2(lik["y"][i].astype(np.float64)).sum() + np.log2(lik["z"][i].astype(np.float64)).sum())
          for i in range(2)]
  np.testing.assert_allclose(losses.rate_bpp(likelihoods=lik, num_pixels=2 * 32 * 32), sum(bits) / 2048, rtol=1e-6)
  np.testing.assert_allclose(losses.rate_bpp_per_image(likelihoods=lik, num_pixels=32 * 32),
                             np.array(bits) / 1024, rtol=1e-6)
  # a likelihood of 1/2 is one bit
  half = {"y": np.full((1, 4, 4, 2), 0.5, np.float32)}
  np.testing.assert_allclose(losses.rate_bpp(likelihoods=half, num_pixels=16), 2.0, rtol=1e-6)
  with pytest.raises(ValueError, match="likelihoods is empty"):
    losses.rate_bpp(likelihoods={}, num_pixels=16)
  with pytest.raises(ValueError, match="num_pixels must be positive"):
    losses.rate_bpp(likelihoods=half, num_pixels=0)


def test_rate_distortion_loss_is_lambda_255_squared_mse_plus_bpp_and_proxy_loss_targets_the_codec_output():
  rng = np.random.default_rng(1)
  x = rng.random((2, 8, 8, 3)).astype(np.float32)
  x_hat = (x + rng.normal(0, 0.05, x.shape)).astype(np.float32)
  real = (x + rng.normal(0, 0.05, x.shape)).astype(np.float32)
  lik = {"y": rng.uniform(0.1, 1.0, (2, 1, 1, 5)).astype(np.float32)}
  bpp = -np.log2(lik["y"].astype(np.float64)).sum() / (2 * 8 * 8)
  out = losses.rate_distortion_loss(x_hat=x_hat, target=x, likelihoods=lik, lmbda=0.013)
  mse = np.mean((x_hat.astype(np.float64) - x) ** 2)
  np.testing.assert_allclose(out["mse_loss"], mse, rtol=1e-5)
  np.testing.assert_allclose(out["bpp_loss"], bpp, rtol=1e-5)
  np.testing.assert_allclose(out["loss"], 0.013 * 255 ** 2 * mse + bpp, rtol=1e-5)
  # Eq. 2: the proxy's rate plus its distortion to the real codec's reconstruction (not to x)
  fit = losses.proxy_finetune_loss(x_hat=x_hat, codec_x_hat=real, likelihoods=lik, lmbda=0.013)
  mse_real = np.mean((x_hat.astype(np.float64) - real) ** 2)
  np.testing.assert_allclose(fit["loss"], 0.013 * 255 ** 2 * mse_real + bpp, rtol=1e-5)
  g = jax.grad(lambda r: losses.proxy_finetune_loss(x_hat=x_hat, codec_x_hat=r, likelihoods=lik, lmbda=1.0)["loss"])
  assert not np.any(g(real))  # the real codec's output is a target, never differentiated


def test_training_noise_is_uniform_on_the_half_open_unit_interval_and_depends_on_the_rng():
  z = jnp.zeros((20000,), jnp.float32)
  a = np.asarray(entropy.quantize(z, mode="noise", rng=jax.random.key(1)))
  b = np.asarray(entropy.quantize(z, mode="noise", rng=jax.random.key(2)))
  assert a.min() >= -0.5 and a.max() < 0.5
  counts, _ = np.histogram(a, bins=10, range=(-0.5, 0.5))
  assert np.all(np.abs(counts / a.size - 0.1) < 0.01), counts
  assert abs(a.var() - 1 / 12) < 0.003
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, entropy.quantize(z, mode="noise", rng=jax.random.key(1)))
  # inside a codec the noise comes from the 'noise' rng stream
  ref = reference()
  arch = "bmshj2018-hyperprior"
  fwd, v = forward(arch), variables(arch)
  o1 = fwd(v, ref["input"], jax.random.key(1), train=True)
  o2 = fwd(v, ref["input"], jax.random.key(2), train=True)
  o1b = fwd(v, ref["input"], jax.random.key(1), train=True)
  assert not np.allclose(o1["x_hat"], o2["x_hat"])
  np.testing.assert_array_equal(o1["x_hat"], o1b["x_hat"])
  with pytest.raises(ValueError, match="'noise' rng stream"):
    codec(arch).apply(v, ref["input"], train=True)


def test_evaluation_rounds_around_medians_and_means_and_ste_rounds_with_identity_gradient():
  x = jnp.asarray([0.2, 0.7, -1.4, 2.6], jnp.float32)
  m = jnp.asarray([0.3, 0.3, -0.3, 0.5], jnp.float32)
  np.testing.assert_allclose(entropy.quantize(x, mode="dequantize", means=m), [0.3, 0.3, -1.3, 2.5], rtol=1e-6)
  np.testing.assert_allclose(entropy.quantize(x, mode="ste", means=m), [0.3, 0.3, -1.3, 2.5], rtol=1e-6)
  g = jax.grad(lambda x: jnp.sum(entropy.quantize(x, mode="ste", means=m) * jnp.arange(1.0, 5.0)))(x)
  np.testing.assert_array_equal(g, [1.0, 2.0, 3.0, 4.0])
  assert not np.any(jax.grad(lambda x: jnp.sum(entropy.quantize(x, mode="dequantize")))(x))
  with pytest.raises(ValueError, match="Unknown quantization mode"):
    entropy.quantize(x, mode="round")


@pytest.mark.parametrize("quantization", ["noise", "ste"])
def test_training_gradients_reach_the_input_and_every_parameter_but_the_quantiles(quantization):
  arch = "mbt2018"
  model, v = codec(arch, quantization), variables(arch)
  x = jnp.asarray(reference()["input"][:1])

  def loss(params, x):
    out = model.apply({"params": params}, x, train=True, rngs={"noise": jax.random.key(3)})
    return losses.rate_distortion_loss(x_hat=out["x_hat"], target=x, likelihoods=out["likelihoods"])["loss"]

  g_params, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(v["params"], x)
  assert np.all(np.isfinite(g_x)) and np.abs(g_x).max() > 0
  flat = {"/".join(k): np.asarray(a) for k, a in jax.tree_util.tree_flatten_with_path(g_params)[0]
          for k in [[getattr(p, "key", str(p)) for p in k]]}
  dead = sorted(k for k, a in flat.items() if not np.any(a) and not k.endswith("quantiles"))
  assert not dead, f"no gradient reaches {dead}"
  assert not np.any(flat["entropy_bottleneck/quantiles"])
  # the auxiliary loss reaches the quantiles and nothing else
  g_aux = jax.grad(lambda p: model.apply({"params": p}, method="aux_loss"))(v["params"])
  assert np.abs(g_aux["entropy_bottleneck"]["quantiles"]).max() > 0
  others = [a for k, a in jax.tree_util.tree_flatten_with_path(g_aux)[0]
            if "quantiles" not in jax.tree_util.keystr(k)]
  assert not any(np.any(a) for a in others)
  if quantization == "ste":  # straight-through rounding: the training forward is the evaluation one
    out = forward(arch, "ste")(v, reference()["input"], jax.random.key(0), train=True)
    np.testing.assert_allclose(out["x_hat"], reference()[f"{arch}/x_hat"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["likelihoods"]["y"], reference()[f"{arch}/likelihoods_y"], rtol=1e-4, atol=1e-9)


def test_masked_context_convolution_sees_only_earlier_latents_in_raster_order():
  conv = entropy.MaskedConv(4, 5, "A")
  y = jax.random.normal(jax.random.key(0), (1, 6, 6, 3))
  v = conv.init(jax.random.key(1), y)
  base = conv.apply(v, y)
  i, j = 3, 2
  moved = conv.apply(v, y.at[0, i, j, :].add(5.0))
  changed = np.any(np.asarray(moved != base), axis=(0, 3))
  raster = np.arange(36).reshape(6, 6)
  assert not changed[raster <= raster[i, j]].any()  # the latent itself and every one before it
  assert changed[i, j + 1] and changed[i + 1, j]  # later neighbours within reach do see it


def test_loader_reads_older_entropy_bottleneck_names_and_infers_the_codec(tmp_path):
  sd = read_state_dict(FILES["bmshj2018-hyperprior"])
  want = variables("bmshj2018-hyperprior")
  for style in ("_matrices.{i}", "_matrix{i}"):
    old = {}
    for k, a in sd.items():
      for kind, single in (("matrices", "matrix"), ("biases", "bias"), ("factors", "factor")):
        prefix = f"entropy_bottleneck.{kind}."
        if k.startswith(prefix):
          i = k[len(prefix):]
          k = "entropy_bottleneck." + (f"_{kind}.{i}" if style.startswith("_matrices") else f"_{single}{i}")
      old[k] = a
    path = torch_file.save(tmp_path / f"old{len(style)}.pth", old)
    got = pc.load_compressai(path, codec("bmshj2018-hyperprior"))
    jax.tree.map(np.testing.assert_array_equal, got, want)
  model = pc.codec_for_state_dict(read_state_dict(FILES["mbt2018"]))
  assert (model.ARCH, model.N, model.M) == ("mbt2018", 8, 12)


def test_loader_errors_name_the_keys_and_what_the_file_and_the_model_are(tmp_path):
  with pytest.raises(WeightsError, match=r"wrong shapes.*g_a\.0\.weight[\s\S]*model is bmshj2018-hyperprior, "
                                         r"N=16, M=12; the file holds bmshj2018-hyperprior, N=8, M=12"):
    pc.load_compressai(FILES["bmshj2018-hyperprior"], pc.proxy_codec("bmshj2018-hyperprior", N=16, M=12))
  with pytest.raises(WeightsError, match=r"unexpected keys.*context_prediction\.weight[\s\S]*the file holds mbt2018"):
    pc.load_compressai(FILES["mbt2018"], codec("bmshj2018-hyperprior"))
  sd = read_state_dict(FILES["mbt2018"])
  del sd["entropy_parameters.2.bias"]
  with pytest.raises(WeightsError, match=r"missing keys \(1\): entropy_parameters\.2\.bias"):
    pc.compressai_variables(sd, codec("mbt2018"))
  sd = read_state_dict(FILES["mbt2018"])
  sd["gaussian_conditional.lower_bound_scale.bound"] = np.array([0.2], np.float32)
  with pytest.raises(WeightsError, match=r"other constants.*lower_bound_scale\.bound"):
    pc.compressai_variables(sd, codec("mbt2018"))
  with pytest.raises(WeightsError, match="No weights file"):
    pc.load_compressai(tmp_path / "absent.pth", codec("mbt2018"))


def test_codec_settings_and_inputs_are_checked():
  assert (pc.proxy_codec("bmshj2018-hyperprior", quality=5).N, pc.proxy_codec("bmshj2018-hyperprior", quality=5).M) \
      == (128, 192)
  assert pc.proxy_codec("bmshj2018-hyperprior", quality=6).M == 320
  assert (pc.proxy_codec("mbt2018", quality=4).N, pc.proxy_codec("mbt2018", quality=4).M) == (192, 192)
  assert pc.proxy_codec("mbt2018", quality=5).M == 320
  with pytest.raises(ValueError, match="qualities"):
    pc.proxy_codec("mbt2018", quality=9)
  with pytest.raises(ValueError, match="Unknown proxy codec"):
    pc.proxy_codec("cheng2020", quality=1)
  with pytest.raises(ValueError, match="quantization must be one of"):
    pc.proxy_codec("mbt2018", quality=1, quantization="round")
  with pytest.raises(ValueError, match="multiples of 64"):
    codec("mbt2018").apply(variables("mbt2018"), jnp.zeros((1, 48, 64, 3)), train=False)
  with pytest.raises(ValueError, match="NHWC"):
    codec("mbt2018").apply(variables("mbt2018"), jnp.zeros((1, 3, 64, 64)), train=False)
