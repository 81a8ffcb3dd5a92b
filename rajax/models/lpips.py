"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric") in Flax, computing what the `lpips` package (v0.1.4, `lpips.LPIPS(net=...)` in eval mode,
`spatial=False`) computes.

    d = lpips_fn("alex", backbone_weights="alexnet-owt-7be5be79.pth")   # jitted; variables cached
    d(x, y)                                                            # [n] float32 distances

x and y are [n, H, W, 3] RGB images in [0, 1] (rajax's convention). LPIPS itself takes [-1, 1],
so the module maps v -> 2v - 1 first, as `lpips.LPIPS.forward(..., normalize=True)` does; then
  1. the scaling layer: (v - shift) / scale, shift (-0.030, -0.088, -0.188), scale (0.458, 0.448, 0.450);
  2. one backbone on both images (torchvision's ImageNet AlexNet, VGG-16 or SqueezeNet 1.1
     `features`, NHWC), tapped after the ReLUs listed in TAPS: five taps (seven for squeeze);
  3. per tap, each feature vector divided by (its L2 norm over channels + 1e-10), the squared
     difference of the two images', a 1x1 convolution to one channel without bias (the "lin" layer;
     its dropout is off at evaluation), the mean over the tap's positions;
  4. the sum over the taps.
Distances from the per-pixel map (`spatial=True`) are not provided.

Weights come from two files, neither downloaded:
  - the lin layers ship inside the `lpips` wheel (lpips/weights/v0.1/{alex,vgg,squeeze}.pth); install
    it with `pip install --no-deps lpips==0.1.4` (requirements-weights.txt; torch is not needed: the
    files are read by rajax's own torch-file reader). LIN_SHA256 pins their bytes.
  - the backbone is torchvision's ImageNet checkpoint (BACKBONE_FILES names each, as
    https://download.pytorch.org/models/ publishes it). Pass its path as `backbone_weights`, or
    leave it None to use the copy torch hub keeps in $TORCH_HOME/hub/checkpoints (by default
    ~/.cache/torch/hub/checkpoints). Only its `features.*` tensors are used (the classifier is
    ignored). A .msgpack of the backbone's Flax variables (`{"params": ...}` of `Backbone`) works too.

Flax module names carry torchvision's `features` indices ("features_3", and for SqueezeNet's Fire
modules "features_3/squeeze", "features_3/expand1x1", "features_3/expand3x3"), so `torch_key`
maps a Flax path to torch's by replacing "_" and "/" with "."; the lin layers are "lin0".."lin6"
(torch "lin{k}.model.1", index 1 because the package's layer holds its Dropout at index 0).

Max pools follow torch: no padding, floor mode for AlexNet and VGG, `ceil_mode=True` for SqueezeNet
(a last, partial window at the bottom and right edges). Each network needs a minimum input size
(`min_size(net)`: 31 for alex, 16 for vgg, 17 for squeeze) for every tap to be non-empty.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import pathlib
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from rajax import weights as rweights
from rajax.models import layers
from rajax.weights import convert
from rajax.weights.errors import WeightsError, mismatch_error

NETS = ("alex", "vgg", "squeeze")

# The scaling layer of lpips v0.1 (lpips.ScalingLayer), applied to inputs in [-1, 1].
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10  # lpips.normalize_tensor: x / (||x||_2 over channels + eps)

# torchvision `features` layers in index order: ("conv", out, kernel, stride, pad), ("relu",),
# ("pool", kernel, stride, ceil_mode), ("fire", squeeze, expand1x1, expand3x3) (its ReLUs inside).
_R = ("relu",)
_ALEX = (("conv", 64, 11, 4, 2), _R, ("pool", 3, 2, False), ("conv", 192, 5, 1, 2), _R, ("pool", 3, 2, False),
         ("conv", 384, 3, 1, 1), _R, ("conv", 256, 3, 1, 1), _R, ("conv", 256, 3, 1, 1), _R)


def _vgg16_layers() -> tuple:
  """VGG-16's `features` up to relu5_3 (index 29): each stage's 3x3 convolutions and ReLUs, then a 2x2 pool."""
  ops = []
  for widths in ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)):
    for w in widths:
      ops += [("conv", w, 3, 1, 1), _R]
    ops.append(("pool", 2, 2, False))
  return tuple(ops[:-1])  # relu5_3 is LPIPS's last tap: the fifth pool is not used


_VGG = _vgg16_layers()
_SQUEEZE = (("conv", 64, 3, 2, 0), _R, ("pool", 3, 2, True), ("fire", 16, 64, 64), ("fire", 16, 64, 64),
            ("pool", 3, 2, True), ("fire", 32, 128, 128), ("fire", 32, 128, 128), ("pool", 3, 2, True),
            ("fire", 48, 192, 192), ("fire", 48, 192, 192), ("fire", 64, 256, 256), ("fire", 64, 256, 256))
LAYERS = {"alex": _ALEX, "vgg": _VGG, "squeeze": _SQUEEZE}

# name -> (torch `features` index after which the tap is taken, its channels), in lpips's order.
TAPS = {
    "alex": {"relu1": (1, 64), "relu2": (4, 192), "relu3": (7, 384), "relu4": (9, 256), "relu5": (11, 256)},
    "vgg": {"relu1_2": (3, 64), "relu2_2": (8, 128), "relu3_3": (15, 256), "relu4_3": (22, 512),
            "relu5_3": (29, 512)},
    "squeeze": {"relu1": (1, 64), "relu2": (4, 128), "relu3": (7, 256), "relu4": (9, 384), "relu5": (10, 384),
                "relu6": (11, 512), "relu7": (12, 512)},
}

# torchvision's ImageNet checkpoints of the backbones (https://download.pytorch.org/models/<file>).
BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth",
                  "squeeze": "squeezenet1_1-b8a52dc0.pth"}
BACKBONE_URL = "https://download.pytorch.org/models/"

# The lin weights inside the lpips 0.1.4 wheel: package-relative path and sha256.
LIN_PACKAGE, LIN_REQUIREMENT = "lpips", "lpips==0.1.4"
LIN_FILES = {"alex": "weights/v0.1/alex.pth", "vgg": "weights/v0.1/vgg.pth", "squeeze": "weights/v0.1/squeeze.pth"}
LIN_SHA256 = {
    "alex": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    "vgg": "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
    "squeeze": "4a5350f23600cb79923ce65bb07cbf57dca461329894153e05a1346bd531cf76",
}


def _check_net(net: str) -> None:
  if net not in NETS:
    raise ValueError(f"Unknown LPIPS network {net!r}; use one of {', '.join(NETS)} (lpips.LPIPS(net=...)).")


# --------------------------------------------------------------------------------------------------
# Shapes

def _pool_out(n: int, k: int, s: int, ceil_mode: bool) -> int:
  """torch.nn.MaxPool2d's output length without padding (0 if none); in ceil mode the last window
  may run past the end but must start inside."""
  out = (n - k + (s - 1 if ceil_mode else 0)) // s + 1
  if ceil_mode and out > 0 and (out - 1) * s >= n:
    out -= 1
  return max(out, 0)


def _tap_sizes(net: str, n: int) -> list[int]:
  """The length, along one spatial axis of length n, of every tap of `net`."""
  sizes, taps = [], {i for i, _ in TAPS[net].values()}
  for i, op in enumerate(LAYERS[net]):
    if op[0] == "conv":
      _, _, k, s, p = op
      n = max((n + 2 * p - k) // s + 1, 0)
    elif op[0] == "pool":
      n = _pool_out(n, op[1], op[2], op[3])
    if i in taps:
      sizes.append(n)
  return sizes


@functools.lru_cache(maxsize=None)
def min_size(net: str) -> int:
  """The smallest height (or width) for which every tap of `net` has at least one position."""
  _check_net(net)
  n = 1
  while min(_tap_sizes(net, n)) < 1:
    n += 1
  return n


def _check_pair(x: jax.Array, y: jax.Array, net: str) -> None:
  layers.check_images(x, who=f"LPIPS-{net}")
  layers.check_images(y, who=f"LPIPS-{net}")
  if x.shape != y.shape:
    raise ValueError(f"LPIPS compares images of one shape; got x {tuple(x.shape)} and y {tuple(y.shape)}. "
                     "Crop or resize them to a common size first.")
  m = min_size(net)
  if min(x.shape[1:3]) < m:
    raise ValueError(f"LPIPS-{net} needs images of at least {m}x{m} pixels (every tap must keep a position), "
                     f"got {x.shape[1]}x{x.shape[2]}. Upsample them, or use net='vgg' (at least {min_size('vgg')}).")


# --------------------------------------------------------------------------------------------------
# Modules

def _max_pool(x: jax.Array, k: int, s: int, ceil_mode: bool) -> jax.Array:
  """torch.nn.MaxPool2d(k, s, ceil_mode=...) on NHWC: a partial last window is padded with -inf."""
  pads = []
  for n in x.shape[1:3]:
    out = _pool_out(n, k, s, ceil_mode)
    pads.append((0, max((out - 1) * s + k - n, 0)))
  return nn.max_pool(x, (k, k), strides=(s, s), padding=tuple(pads))


class Fire(nn.Module):
  """SqueezeNet's Fire module: relu(squeeze 1x1), then [relu(expand 1x1), relu(expand 3x3)] on channels."""

  squeeze: int
  expand1x1: int
  expand3x3: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dt = self.dtype
    h = nn.relu(layers.conv(self.squeeze, 1, in_features=x.shape[-1], dtype=dt, name="squeeze")(x))
    a = nn.relu(layers.conv(self.expand1x1, 1, in_features=self.squeeze, dtype=dt, name="expand1x1")(h))
    b = nn.relu(layers.conv(self.expand3x3, 3, in_features=self.squeeze, padding=1, dtype=dt, name="expand3x3")(h))
    return jnp.concatenate([a, b], axis=-1)


class Backbone(nn.Module):
  """torchvision's AlexNet / VGG-16 / SqueezeNet 1.1 `features` (NHWC), up to LPIPS's last tap.

  Takes the scaled images [B, H, W, 3] (LPIPS's input after its scaling layer) and returns the taps
  of TAPS[net] in order, each [B, h, w, C] in the compute dtype.
  """

  net: str = "alex"
  dtype: layers.Dtype = jnp.float32

  def __post_init__(self):
    _check_net(self.net)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
    dt = self.dtype
    taps = {i for i, _ in TAPS[self.net].values()}
    h, out = x.astype(dt), []
    for i, op in enumerate(LAYERS[self.net]):
      if op[0] == "conv":
        _, width, k, s, p = op
        h = layers.conv(width, k, in_features=h.shape[-1], stride=s, padding=p, dtype=dt, name=f"features_{i}")(h)
      elif op[0] == "relu":
        h = nn.relu(h)
      elif op[0] == "pool":
        h = _max_pool(h, op[1], op[2], op[3])
      else:
        h = Fire(*op[1:], dtype=dt, name=f"features_{i}")(h)
      if i in taps:
        out.append(h)
    return tuple(out)


def backbone_torch_key(path: str) -> str:
  """Flax module path of a Backbone -> torchvision prefix: 'features_3/squeeze' -> 'features.3.squeeze'."""
  m = re.fullmatch(r"features_(\d+)(?:/(squeeze|expand1x1|expand3x3))?", path)
  if not m:
    raise WeightsError(f"No torchvision `features` key for Flax module path {path!r}.")
  return f"features.{m[1]}" + (f".{m[2]}" if m[2] else "")


def lin_torch_key(path: str) -> str:
  """Flax module path of a lin layer -> the lpips package's prefix: 'lin2' -> 'lin2.model.1'."""
  if not re.fullmatch(r"lin\d", path):
    raise WeightsError(f"No lpips lin-layer key for Flax module path {path!r}.")
  return f"{path}.model.1"


def _unit(f: jax.Array) -> jax.Array:
  """lpips.normalize_tensor over the channel axis (last, NHWC): f / (||f|| + EPS).

  Where a feature vector is all zero (every ReLU of a position off) the value is 0 as in lpips,
  and the gradient is finite (lpips's sqrt(0) gives NaN gradients there).
  """
  s = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
  positive = s > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, s, 1.0)), 0.0)
  return f / (norm + EPS)


class LPIPS(nn.Module):
  """The LPIPS distance between images x and y, both [n, H, W, 3] in [0, 1] -> [n] float32.

  Variables: {"params": {"net": <Backbone>, "lin0": {"kernel": [1, 1, C0, 1]}, ...}}. With
  `per_tap=True` it returns (distances [n], per-tap terms [n, taps]). `dtype` is the backbone's
  compute dtype; normalisation, lin layers and means run in float32.
  """

  net: str = "alex"
  dtype: layers.Dtype = jnp.float32

  def __post_init__(self):
    _check_net(self.net)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array, *, per_tap: bool = False):
    _check_pair(x, y, self.net)
    n = x.shape[0]
    v = jnp.concatenate([x, y]).astype(jnp.float32) * 2.0 - 1.0
    v = (v - jnp.asarray(SHIFT, jnp.float32)) / jnp.asarray(SCALE, jnp.float32)
    feats = Backbone(self.net, dtype=self.dtype, name="net")(v)
    terms = []
    for k, f in enumerate(feats):
      f = f.astype(jnp.float32)
      d = jnp.square(_unit(f[:n]) - _unit(f[n:]))
      w = layers.conv(1, 1, in_features=f.shape[-1], use_bias=False, name=f"lin{k}")(d)
      terms.append(jnp.mean(w[..., 0], axis=(1, 2)))
    total = terms[0]
    for t in terms[1:]:
      total = total + t
    if per_tap:
      return total, jnp.stack(terms, axis=-1)
    return total


def torch_key(path: str) -> str:
  """Flax module path of an LPIPS module -> torch prefix ('net/features_0' -> 'features.0', 'lin0' -> 'lin0.model.1')."""
  if path.startswith("net/"):
    return backbone_torch_key(path[len("net/"):])
  return lin_torch_key(path)


# --------------------------------------------------------------------------------------------------
# Weights

def lin_weights_path(net: str) -> pathlib.Path:
  """The lin-layer file of `net` inside the installed lpips package; a WeightsError says how to install it."""
  _check_net(net)
  spec = importlib.util.find_spec(LIN_PACKAGE)  # finds the package without importing it (it imports torch)
  roots = list(spec.submodule_search_locations or []) if spec else []
  for root in roots:
    path = pathlib.Path(root) / LIN_FILES[net]
    if path.is_file():
      return path
  where = ", ".join(str(pathlib.Path(r) / LIN_FILES[net]) for r in roots) or f"the Python package {LIN_PACKAGE!r} (not installed)"
  raise WeightsError(
      f"The LPIPS lin weights of {net!r} are not installed: looked in {where}. Install them with "
      f"`pip install --no-deps {LIN_REQUIREMENT}` (or `pip install --no-deps -r requirements-weights.txt`); "
      "torch is not needed.")


def read_lin_weights(net: str, *, path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
  """The lin layers of `net` as the lpips package stores them: {"lin{k}.model.1.weight": [1, C_k, 1, 1]}.

  Without `path`, the file inside the installed lpips wheel, checked against its pinned sha256;
  with `path`, any file of the same layout (e.g. lin layers trained anew), checked for keys and shapes.
  """
  _check_net(net)
  if path is None:
    path = lin_weights_path(net)
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != LIN_SHA256[net]:
      raise WeightsError(
          f"{path} has sha256 {got}, not the pinned {LIN_SHA256[net]} of {LIN_REQUIREMENT}: the file is damaged "
          f"or from another lpips version. Reinstall it with `pip install --no-deps --force-reinstall {LIN_REQUIREMENT}`.")
  sd = rweights.read_state_dict(path)
  want = {f"lin{k}.model.1.weight": (1, c, 1, 1) for k, (_, c) in enumerate(TAPS[net].values())}
  missing = sorted(set(want) - set(sd))
  unexpected = sorted(set(sd) - set(want))
  bad = sorted(f"{k}: file {tuple(sd[k].shape)}, model {want[k]}" for k in set(want) & set(sd)
               if tuple(sd[k].shape) != want[k])
  if missing or unexpected or bad:
    raise mismatch_error(str(path), missing=missing, unexpected=unexpected, bad_shape=bad,
                         hint=f"Pass the lpips v0.1 lin weights of net={net!r} (lpips/weights/v0.1/{net}.pth).")
  return {k: np.asarray(sd[k], np.float32) for k in want}


def torch_hub_checkpoints() -> pathlib.Path:
  """Where torch hub keeps downloaded checkpoints: $TORCH_HOME/hub/checkpoints, by default
  $XDG_CACHE_HOME/torch/hub/checkpoints (~/.cache/torch/hub/checkpoints), as torch.hub.get_dir()."""
  home = os.environ.get("TORCH_HOME")
  if not home:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    home = os.path.join(cache, "torch")
  return pathlib.Path(home).expanduser() / "hub" / "checkpoints"


def backbone_weights_path(net: str, backbone_weights: str | os.PathLike | None = None) -> pathlib.Path:
  """The backbone file to read: `backbone_weights`, else torchvision's file in the torch hub cache."""
  _check_net(net)
  name = BACKBONE_FILES[net]
  if backbone_weights is not None:
    path = pathlib.Path(backbone_weights).expanduser()
    if not path.is_file():
      raise WeightsError(f"No backbone weights file for LPIPS-{net} at {path.resolve()}. Pass the path of "
                         f"torchvision's ImageNet checkpoint {name} ({BACKBONE_URL}{name}).")
    return path
  path = torch_hub_checkpoints() / name
  if path.is_file():
    return path
  raise WeightsError(
      f"LPIPS-{net} needs the ImageNet weights of its backbone, torchvision's {name} ({BACKBONE_URL}{name}; "
      "no download is attempted). Pass its path as backbone_weights=PATH, or put the file at "
      f"{path} (the torch hub cache: $TORCH_HOME/hub/checkpoints) where it is found without a path.")


def _features_only(state_dict: dict) -> dict:
  """A torchvision state dict without its classifier (LPIPS uses `features` alone)."""
  feats = {k: v for k, v in state_dict.items() if k.startswith("features.")}
  if not feats:
    raise WeightsError(f"The backbone file holds no torchvision `features.*` tensors (keys: {list(state_dict)[:8]}). "
                       "Pass torchvision's own checkpoint (torch.save(model.state_dict())).")
  return feats


def _template(net: str) -> dict:
  m = min_size(net)
  x = jax.ShapeDtypeStruct((1, m, m, 3), jnp.float32)
  return jax.eval_shape(LPIPS(net).init, jax.random.key(0), x, x)


def load_variables(*, net: str, backbone_weights: str | os.PathLike | None = None,
                   lin_weights: str | os.PathLike | None = None) -> dict:
  """LPIPS variables (numpy) from the backbone file and the lin weights (the lpips wheel's by default)."""
  _check_net(net)
  template = _template(net)["params"]
  path = backbone_weights_path(net, backbone_weights)
  net_vars = rweights.load(path, {"params": template["net"]}, what=f"the LPIPS-{net} backbone",
                           torch_key=backbone_torch_key, rename_torch_keys=_features_only)
  lin_template = {"params": {k: v for k, v in template.items() if k != "net"}}
  lin = convert.from_torch(read_lin_weights(net, path=lin_weights), lin_template, lin_torch_key,
                           source=str(lin_weights or lin_weights_path(net)))
  return {"params": {"net": net_vars["params"], **lin["params"]}}


@functools.lru_cache(maxsize=None)
def _cached_variables(net: str, backbone: str, lin: str | None) -> dict:
  variables = load_variables(net=net, backbone_weights=backbone, lin_weights=lin)
  return jax.tree.map(jnp.asarray, variables)


@functools.lru_cache(maxsize=None)
def _jitted(net: str, dtype: Any) -> Callable:
  model = LPIPS(net, dtype=dtype)
  return jax.jit(lambda variables, x, y: model.apply(variables, x, y))


def lpips_fn(net: str = "alex", *, backbone_weights: str | os.PathLike | None = None,
             lin_weights: str | os.PathLike | None = None,
             dtype: Any = jnp.float32) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """A jitted `distance(x, y) -> [n]` LPIPS of images in [0, 1] ([n, H, W, 3] each).

  The variables are read once per (net, backbone file, lin file) and kept on the device; they are
  passed to the compiled function as arguments, so every call with the same shapes reuses one
  program. See the module docstring for where the weights come from.
  """
  _check_net(net)
  backbone = str(backbone_weights_path(net, backbone_weights).resolve())
  lin = None if lin_weights is None else str(pathlib.Path(lin_weights).expanduser().resolve())
  variables = _cached_variables(net, backbone, lin)
  apply = _jitted(net, layers.as_dtype(dtype))

  def distance(x: jax.Array, y: jax.Array) -> jax.Array:
    return apply(variables, x, y)

  return distance


__all__ = ["BACKBONE_FILES", "Backbone", "Fire", "LIN_SHA256", "LPIPS", "NETS", "TAPS", "backbone_torch_key",
           "backbone_weights_path", "lin_weights_path", "load_variables", "lpips_fn", "min_size",
           "read_lin_weights", "torch_key"]
