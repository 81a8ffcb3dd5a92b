"""State dicts with the real torch key names of an architecture and values drawn from a seed.

tests/reference/architectures.json lists, for every architecture the tests pin to its PyTorch
original, the state-dict keys torch itself gives (names, shapes and dtypes in torch's order,
num_batches_tracked included). `state_dict(entry)` fills them with values that depend only on
the entry's name and each key, drawn the same way by the fixture script (which loads them into the
torch model with `load_state_dict(strict=True)` and records its outputs) and by the tests (which
load them into rajax), so no weights are committed and no torch is needed to rebuild them.

The values are bit-stable across NumPy versions and machines: PCG64's raw 64-bit stream (a bit
generator's output is fixed by NumPy's compatibility policy) seeded from a SHA-256 of the name,
its top 24 bits as float32 in [0, 1), then one float32 multiply and add per value. Scales are
plausible and keep BatchNorm away from the identity, so a BatchNorm mistake changes the outputs:

    BatchNorm weight      U[0.5, 1.5)           running_var   U[0.5, 1.5)
    BatchNorm bias        U[-0.3, 0.3)          running_mean  U[-0.3, 0.3)
    conv / linear weight  U[-b, b), b = sqrt(6 / fan_in), fan_in = prod(shape[1:])  (He uniform)
    conv / linear bias    U[-0.1, 0.1)
    PReLU weight          U[0.05, 0.45)
    num_batches_tracked   an int64 scalar

An entry may name other ranges for some keys (`rules`: [regex, lo, hi], the first full match wins);
the ResNets draw the last BatchNorm weight of every residual branch from U[0.1, 0.3), so that the
activations of a 50-block network stay within a few orders of magnitude and every layer's
statistics still matter, rather than growing by ~1.7x a block (1e11 after ResNet-152).
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib
import re

import numpy as np

REFERENCE = pathlib.Path(__file__).resolve().parent / "reference"
MANIFEST = REFERENCE / "architectures.json"
OUTPUTS = REFERENCE / "architectures.npz"

_CHUNK = 1 << 22


def seed_from(*parts: str) -> int:
  """A 64-bit seed from strings, the same in every process (Python's hash() is salted)."""
  return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "little")


def uniform(seed: int, shape) -> np.ndarray:
  """float32 values in [0, 1) on a 2^-24 grid, a fixed function of `seed`."""
  n = int(np.prod(shape, dtype=np.int64))
  out = np.empty(n, np.float32)
  bits = np.random.PCG64(seed)
  for start in range(0, n, _CHUNK):
    stop = min(start + _CHUNK, n)
    out[start:stop] = bits.random_raw(stop - start) >> np.uint64(40)  # exact: < 2^24
  out *= np.float32(2.0**-24)
  return out.reshape(shape)


def _affine(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
  """u in [0, 1) -> [lo, hi), in float32."""
  u *= np.float32(hi - lo)
  u += np.float32(lo)
  return u


def values(entry: str, keys, rules=()) -> dict[str, np.ndarray]:
  """{torch key: array} for `keys` ([name, shape, dtype] triples, in order), seeded by `entry` and name;
  `rules` ([regex, lo, hi]) draw the keys they match from U[lo, hi)."""
  names = {k[0] for k in keys}
  rules = [(re.compile(r), lo, hi) for r, lo, hi in rules]
  out = {}
  for name, shape, dtype in keys:
    shape = tuple(shape)
    seed = seed_from(entry, name)
    prefix, _, leaf = name.rpartition(".")
    if leaf == "num_batches_tracked":
      if dtype != "int64" or shape != ():
        raise ValueError(f"{entry}: {name} is {dtype} {shape}, expected an int64 scalar")
      out[name] = np.array(seed % 1000 + 1, np.int64)
      continue
    if dtype != "float32":
      raise ValueError(f"{entry}: {name} has dtype {dtype}; only float32 tensors are drawn")
    u = uniform(seed, shape)
    rule = next(((lo, hi) for r, lo, hi in rules if r.fullmatch(name)), None)
    is_bn = f"{prefix}.running_mean" in names
    if rule is not None:
      out[name] = _affine(u, *rule)
    elif leaf == "running_var" or (is_bn and leaf == "weight"):
      out[name] = _affine(u, 0.5, 1.5)
    elif leaf == "running_mean" or (is_bn and leaf == "bias"):
      out[name] = _affine(u, -0.3, 0.3)
    elif leaf == "weight" and len(shape) >= 2:
      bound = float(np.sqrt(6.0 / int(np.prod(shape[1:]))))
      out[name] = _affine(u, -bound, bound)
    elif leaf == "weight" and len(shape) == 1:  # PReLU slopes
      out[name] = _affine(u, 0.05, 0.45)
    elif leaf == "bias":
      out[name] = _affine(u, -0.1, 0.1)
    else:
      raise ValueError(f"{entry}: no rule to draw {name} {shape}")
  return out


@functools.lru_cache(maxsize=None)
def manifest() -> dict:
  return json.loads(MANIFEST.read_text())


def entry(name: str) -> dict:
  """The manifest entry of `name`: its torch keys, options, photos and output names."""
  entries = manifest()["entries"]
  if name not in entries:
    raise KeyError(f"{name!r} is not in {MANIFEST.name}; entries: {', '.join(entries)}")
  return entries[name]


def state_dict(name: str) -> dict[str, np.ndarray]:
  """The seeded state dict of manifest entry `name`, keys in torch's order."""
  e = entry(name)
  return values(name, e["keys"], e.get("rules", ()))


def digest(state: dict[str, np.ndarray]) -> str:
  """SHA-256 over the keys, dtypes, shapes and bytes of a state dict, in its order."""
  h = hashlib.sha256()
  for k, v in state.items():
    v = np.ascontiguousarray(v)
    h.update(f"{k}:{v.dtype.str}:{v.shape};".encode())
    h.update(v.tobytes())
  return h.hexdigest()


@functools.lru_cache(maxsize=None)
def _outputs():
  return np.load(OUTPUTS)


def outputs(name: str) -> dict[str, np.ndarray]:
  """What torch computed for entry `name`: {output name: array} (the names in the manifest entry)."""
  data = _outputs()
  return {k: data[f"{name}/{k}"] for k in entry(name)["outputs"]}


def photos(name: str) -> np.ndarray:
  """The uint8 photos [B, H, W, 3] manifest entry `name` was run on."""
  return _outputs()[f"photos/{entry(name)['photos']}"]
