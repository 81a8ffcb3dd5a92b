"""NPP's pre-processor (rajax.models.npp): the official architecture's size, its quality layers, its errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from rajax.models import processor
from rajax.models.npp import NPPProcessor


def _params(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def test_parameter_count_is_the_official_networks():
  # XingtongGe/PreprocessingICM's Preprocessor without its Scaling_Nets: 9.42 M parameters
  v = jax.eval_shape(lambda: NPPProcessor().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  assert _params(v["params"]) == 9_422_235
  va = jax.eval_shape(lambda: NPPProcessor(adaptive=True).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                                                 quality=jnp.zeros(1)))
  scales = {k: v for k, v in va["params"].items() if k.startswith("scale_")}
  assert sorted(scales) == sorted(f"scale_{p}" for p in ("branch1", "branch2", "enc2", "enc3", "enc4", "dec2", "dec3",
                                                           "dec4"))
  # the scaled widths: 3, 3 at the 1x1 layers; 32, 64, 128 into encoder levels 2-4; 256, 128, 64 out of decoder 2-4
  widths = {k[len("scale_"):]: s["fc2"]["bias"].shape[0] for k, s in scales.items()}
  assert widths == {"branch1": 3, "branch2": 3, "enc2": 32, "enc3": 64, "enc4": 128, "dec2": 256, "dec3": 128,
                    "dec4": 64}


@pytest.fixture(scope="module")
def small():
  net = processor("npp", adaptive=True, channels=(4, 4, 8, 8, 8))
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  v = net.init(jax.random.key(0), x, quality=jnp.zeros(2))
  return net, v, x


def test_adaptive_starts_as_the_fixed_quality_network(small):
  # every quality scale is exactly 1 at init, so stage 3 starts where stage 2 ended
  net, v, x = small
  fixed = NPPProcessor(channels=net.channels)
  flat = traverse_util.flatten_dict(v["params"])
  shared = traverse_util.unflatten_dict({k: a for k, a in flat.items() if not k[0].startswith("scale_")})
  want = fixed.apply({"params": shared, "batch_stats": v["batch_stats"]}, x)
  for q in (0.0, 0.3, 1.0):
    got = net.apply(v, x, quality=jnp.full((2,), q))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert float(want.min()) >= 0.0 and float(want.max()) <= 1.0 and want.shape == x.shape


def test_quality_changes_the_output_once_the_scales_learn(small):
  net, v, x = small
  flat = traverse_util.flatten_dict(v["params"])
  key = ("scale_enc2", "fc2", "kernel")
  flat[key] = jnp.ones_like(flat[key])   # scales now depend on the quality
  params = traverse_util.unflatten_dict(flat)
  a = net.apply({**v, "params": params}, x, quality=jnp.asarray([0.0, 1.0]))
  b = net.apply({**v, "params": params}, x, quality=jnp.asarray([1.0, 1.0]))
  assert not np.allclose(np.asarray(a[0]), np.asarray(b[0]))   # image 0's quality changed
  np.testing.assert_allclose(np.asarray(a[1]), np.asarray(b[1]), rtol=1e-6)   # image 1's did not


def test_errors_name_the_fix(small):
  net, v, x = small
  with pytest.raises(ValueError, match="needs quality="):
    net.apply(v, x)
  with pytest.raises(ValueError, match="adaptive=False"):
    NPPProcessor(channels=net.channels).init(jax.random.key(0), x, quality=jnp.zeros(2))
  with pytest.raises(ValueError, match="divisible by 16"):
    net.apply(v, x[:, :12, :12], quality=jnp.zeros(2))
  with pytest.raises(ValueError, match="five widths"):
    NPPProcessor(channels=(4, 8))


def test_identity_init_starts_near_the_identity_and_every_weight_gets_gradient():
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  net = NPPProcessor(channels=(4, 8, 8, 8, 8), identity_init=True)
  v = net.init(jax.random.key(0), x)
  np.testing.assert_array_equal(v["params"]["branch_conv1"]["kernel"][0, 0], np.eye(3))
  y = net.apply(v, x, train=True, mutable=["batch_stats"])[0]
  assert float(jnp.max(jnp.abs(y - x))) < 0.02          # the branch passes x through; the UNet adds ~0
  default = NPPProcessor(channels=(4, 8, 8, 8, 8))
  y0 = default.apply(default.init(jax.random.key(0), x), x)
  assert float(jnp.mean(jnp.abs(y0 - x))) > 0.05        # PyTorch's default init is far from it
  # the UNet is not dead: its first and last layers get gradient at the start
  g = jax.grad(lambda p: jnp.mean(jnp.square(
      net.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"])[0] - 0.5)))(v["params"])
  for layer in ("enc0_a", "head_out"):
    assert float(jnp.max(jnp.abs(jax.tree.leaves(g[layer])[0]))) > 0, layer
