"""A codec round trip inside a jitted JAX program: `roundtrip_jax(name, x, quality) -> (x_hat, bpp)`.

The codec itself runs on the host through `jax.pure_callback`: the program quantises `x` (float
NHWC in [0, 1]) to the 8-bit image the codec sees (clip to [0, 1], times 255, round half to even),
ships the uint8 batch to the host, where `roundtrip_batch` codes the images on host threads, and
gets back the decoded uint8 images and each file's bit count. `x_hat` is the decoded image as
float32 in [0, 1]; `bpp` the bits per pixel (file bits / (H * W)) as float32 [N].

Gradients: the codec has none. Both outputs are wrapped in `stop_gradient` (and the uint8
quantisation has none anyway), so the derivative of anything through `roundtrip_jax` is exactly
zero and differentiating never reaches the callback. A method that needs a gradient composes it
around this function (NPP's straight-through step: forward with the codec's x_hat and bpp, backward
through a proxy network).

Batching: `vmap_method="broadcast_all"`, so `jax.vmap` of a function calling it works (the host
gets every mapped image at once, [..., N, H, W, 3], and codes them as one batch).

Sharding: under a mesh with a "data" axis (`jax.set_mesh`, as rajax.train and rajax.evaluate set
it) and a batch that divides over it, the callback runs per device through `jax.shard_map`: each
device ships its own shard to the host (concurrent calls; on several hosts each process codes its
own devices' shards), instead of XLA gathering the whole batch onto one device for a single call.
Inside a caller's own shard_map it codes that shard; without a mesh, the whole batch in one call.
The results are the same either way: each image is coded on its own.

`quality` is an int32 scalar or [N] array; it may be traced (a per-example quality drawn inside the
step). A concrete quality is range-checked at once; a traced one on the host, where an
out-of-range value raises the codec's ValueError through the runtime.
"""

from __future__ import annotations

import numpy as np

from rajax.codecs.batch import roundtrip_batch
from rajax.codecs.formats import get


def _host_roundtrip(name: str, threads: int | None):
  def call(u8: np.ndarray, q: np.ndarray):
    u8 = np.asarray(u8)
    q = np.asarray(q)
    lead = u8.shape[:-3]
    flat = u8.reshape((-1,) + u8.shape[-3:])
    decoded, bits = roundtrip_batch(name, flat, np.broadcast_to(q, lead).reshape(-1), threads=threads)
    if bits.size and bits.max() > np.iinfo(np.int32).max:
      raise ValueError(f"{name}: a file of {bits.max()} bits does not fit the int32 bit count of roundtrip_jax.")
    return decoded.reshape(u8.shape), bits.astype(np.int32).reshape(lead)

  return call


DATA = "data"   # the batch axis of rajax's meshes (rajax.sharding)


def _data_devices(n: int) -> int:
  """The size of the current mesh's "data" axis when a batch of `n` can be split over it per device (a
  jax.set_mesh context, as the trainer and the evaluation suite set, outside shard_map); else 1."""
  import jax

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or DATA not in mesh.shape or DATA in mesh.manual_axes:
    return 1
  size = mesh.shape[DATA]
  return size if size > 1 and n % size == 0 else 1


def quantize_uint8(x):
  """The 8-bit image a codec sees of float `x` in [0, 1]: round-half-even(clip(x, 0, 1) * 255) as uint8."""
  import jax.numpy as jnp

  return jnp.round(jnp.clip(x.astype(jnp.float32), 0.0, 1.0) * 255.0).astype(jnp.uint8)


def roundtrip_jax(name: str, x, quality, *, threads: int | None = None):
  """(x_hat float32 [N, H, W, 3] in [0, 1], bpp float32 [N]) of float images `x` [N, H, W, 3]
  coded by codec `name` at `quality` (int scalar or [N]); traceable, jit-able, no gradient.

  `threads`: host threads per call (default: one per image up to the usable cores).
  """
  import jax
  import jax.numpy as jnp

  codec = get(name)
  x = jnp.asarray(x)
  if x.ndim != 4 or x.shape[-1] != 3 or not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"roundtrip_jax expects float RGB images in [0, 1] shaped [N, H, W, 3], got {x.dtype} {x.shape}; "
                     f"for uint8 images on the host use roundtrip_batch.")
  n, h, w, _ = x.shape
  if not isinstance(quality, jax.core.Tracer):
    concrete = np.asarray(quality)
    if concrete.ndim == 0:
      codec.check_quality(concrete.item() if np.issubdtype(concrete.dtype, np.integer) else quality)
    elif np.issubdtype(concrete.dtype, np.integer):
      for v in np.unique(concrete).tolist():
        codec.check_quality(v)
  q = jnp.asarray(quality)
  if not jnp.issubdtype(q.dtype, jnp.integer):
    raise ValueError(f"roundtrip_jax takes an integer {codec.axis} (int32 scalar or [N]), got {q.dtype}.")
  if q.ndim == 0:
    q = jnp.broadcast_to(q, (n,))
  if q.shape != (n,):
    raise ValueError(f"roundtrip_jax takes one {codec.axis} for the batch or one per image ({n}), got shape {q.shape}.")
  u8 = quantize_uint8(x)

  def call(u8, q):
    out_types = (jax.ShapeDtypeStruct(u8.shape, jnp.uint8), jax.ShapeDtypeStruct(q.shape, jnp.int32))
    return jax.pure_callback(_host_roundtrip(name, threads), out_types, u8, q, vmap_method="broadcast_all")

  devices = _data_devices(n)
  if devices > 1:   # one host call per device, on its own shard, instead of the batch gathered onto one
    from jax.sharding import PartitionSpec as P
    call = jax.shard_map(call, in_specs=(P(DATA), P(DATA)), out_specs=(P(DATA), P(DATA)))
  decoded, bits = call(u8, q.astype(jnp.int32))
  x_hat = decoded.astype(jnp.float32) / jnp.float32(255.0)
  rate = bits.astype(jnp.float32) / jnp.float32(h * w)
  return jax.lax.stop_gradient(x_hat), jax.lax.stop_gradient(rate)
