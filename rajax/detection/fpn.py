"""torchvision's FeaturePyramidNetwork (with its extra blocks) as a Flax module, NHWC.

For inputs C_1..C_n (increasing stride) it computes, as torchvision.ops.FeaturePyramidNetwork:
    last = inner_n(C_n);                        P_n = layer_n(last)
    last = inner_i(C_i) + nearest(last, size of C_i);  P_i = layer_i(last)   for i = n-1 .. 1
with 1x1 `inner_blocks` and 3x3 `layer_blocks` (out_channels each; with `norm` a BatchNorm after
each conv and the conv without bias, as Conv2dNormActivation builds them for the v2 detectors).
`nearest` is F.interpolate(mode="nearest", size=...): source index floor(i * in / out).

Extra blocks (`extra`):
  "pool"  LastLevelMaxPool (Faster R-CNN): max_pool2d(P_n, kernel 1, stride 2), named "pool";
  "p6p7"  LastLevelP6P7 (RetinaNet, FCOS): P6 = conv3x3/2(P_n or C_n), P7 = conv3x3/2(relu(P6)),
          named "p6", "p7". torchvision takes P_n when the block's in_channels equals out_channels
          (FCOS and RetinaNet v1 build LastLevelP6P7(256, 256): P5) and C_n otherwise (RetinaNet
          v2: LastLevelP6P7(2048, 256)): `p6_from` "p5" or "c5";
  None    nothing.
Outputs are named as torchvision names them: the inputs' names ("0", "1", ... from `names`) and
the extra blocks' names.

Flax names -> torch keys (below the FPN's prefix, e.g. `backbone.fpn`): `inner_blocks_i` ->
`inner_blocks.i.0`, `inner_norm_i` -> `inner_blocks.i.1`, `layer_blocks_i` -> `layer_blocks.i.0`,
`layer_norm_i` -> `layer_blocks.i.1`, `p6`/`p7` -> `extra_blocks.p6`/`extra_blocks.p7`.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from rajax.models import layers

EXTRA_BLOCKS = ("pool", "p6p7", None)

# torchvision: kaiming_uniform_(a=1) (gain sqrt(2 / (1 + 1)) = 1, bound sqrt(3 / fan_in)), zero bias.
_fpn_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def nearest_resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """F.interpolate(x, size, mode="nearest") on NHWC: out[i] = x[floor(i * in / out)]."""
  h, w = x.shape[1:3]
  oh, ow = size
  if (oh, ow) == (h, w):
    return x
  if oh % h == 0 and ow % w == 0:
    return jnp.repeat(jnp.repeat(x, oh // h, axis=1), ow // w, axis=2)
  # torch: min(floorf(i * (float)in / out), in - 1) in float32
  iy = np.minimum(np.floor(np.arange(oh, dtype=np.float32) * np.float32(h / oh)).astype(np.int64), h - 1)
  ix = np.minimum(np.floor(np.arange(ow, dtype=np.float32) * np.float32(w / ow)).astype(np.int64), w - 1)
  return x[:, iy][:, :, ix]


class FPN(nn.Module):
  in_channels: Sequence[int]
  out_channels: int = 256
  extra: str | None = "pool"
  norm: Callable[..., nn.Module] | None = None   # norm(train=, dtype=, name=) after each conv (v2)
  names: Sequence[str] | None = None              # input names; default "0", "1", ...
  p6_from: str = "p5"                             # "p5" or "c5": the input of P6 (extra="p6p7")
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, feats: Sequence[jax.Array], *, train: bool = False) -> dict[str, jax.Array]:
    if self.extra not in EXTRA_BLOCKS:
      raise ValueError(f"Unknown FPN extra block {self.extra!r}; use one of {EXTRA_BLOCKS}.")
    if len(feats) != len(self.in_channels):
      raise ValueError(f"FPN built for {len(self.in_channels)} inputs got {len(feats)}.")
    names = list(self.names) if self.names is not None else [str(i) for i in range(len(feats))]
    dt, c = self.dtype, self.out_channels

    def block(x, kind, i, kernel):
      use_norm = self.norm is not None
      y = nn.Conv(c, (kernel, kernel), padding=((kernel // 2,) * 2,) * 2, use_bias=not use_norm, dtype=dt,
                  param_dtype=jnp.float32, kernel_init=_fpn_init, bias_init=nn.initializers.zeros,
                  name=f"{kind}_blocks_{i}")(x)
      if use_norm:
        y = self.norm(train=train, dtype=dt, name=f"{kind}_norm_{i}")(y)
      return y

    n = len(feats)
    last = block(feats[-1], "inner", n - 1, 1)
    results = [block(last, "layer", n - 1, 3)]
    for i in range(n - 2, -1, -1):
      lateral = block(feats[i], "inner", i, 1)
      last = lateral + nearest_resize(last, lateral.shape[1:3])
      results.insert(0, block(last, "layer", i, 3))
    out = dict(zip(names, results))
    if self.extra == "pool":
      out["pool"] = results[-1][:, ::2, ::2, :]  # max_pool2d(kernel_size=1, stride=2)
    elif self.extra == "p6p7":
      if self.p6_from not in ("p5", "c5"):
        raise ValueError(f"p6_from must be 'p5' or 'c5', got {self.p6_from!r}.")
      src = results[-1] if self.p6_from == "p5" else feats[-1]
      conv = lambda name: nn.Conv(c, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=dt,
                                  param_dtype=jnp.float32, kernel_init=_fpn_init,
                                  bias_init=nn.initializers.zeros, name=name)
      p6 = conv("p6")(src)
      out["p6"] = p6
      out["p7"] = conv("p7")(nn.relu(p6))
    return out


def torch_key(path: str) -> str:
  """FPN module path -> torch prefix below the FPN: 'inner_blocks_0' -> 'inner_blocks.0.0'."""
  m = re.fullmatch(r"(inner|layer)_(blocks|norm)_(\d+)", path)
  if m:
    return f"{m[1]}_blocks.{m[3]}.{0 if m[2] == 'blocks' else 1}"
  if path in ("p6", "p7"):
    return f"extra_blocks.{path}"
  raise ValueError(f"No torchvision FPN key for Flax module path {path!r}.")
