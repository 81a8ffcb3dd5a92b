"""Collectives in compiled XLA programs: how many of each kind, and how many bytes they move.

    stats = collectives(jax.jit(f, in_shardings=...).lower(*args).compile().as_text())
    stats["all-reduce"]  ->  {"count": 3, "bytes": 2949120}

Counts every collective instruction of the module (synchronous ones and the `-start` halves of
asynchronous ones; the `-done` halves are not counted again). `bytes` is the size of the data
one device holds after the operation, summed over the operation's arrays: the reduced buffers of
an all-reduce, the gathered array of an all-gather, the scattered shard of a reduce-scatter, the
buffer sent by a collective-permute or all-to-all. `ring_all_reduce_seconds` turns all-reduce
bytes into time on a ring of n devices.
"""

from __future__ import annotations

import re

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128|f8e\w+)\[([\d,]*)\]")
_OP = re.compile(r"=\s*(.*?)\s+(" + "|".join(KINDS) + r")(-start)?\(")


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """{kind: {"count": n, "bytes": b}} for every kind in KINDS (zeros when absent)."""
  out = {k: {"count": 0, "bytes": 0} for k in KINDS}
  for line in hlo_text.splitlines():
    m = _OP.search(line)
    if not m:
      continue
    result, kind, is_async = m.group(1), m.group(2), bool(m.group(3))
    sizes = [_array_bytes(dt, dims) for dt, dims in _ARRAY.findall(result)]
    if is_async and kind != "all-reduce":
      # The -start result is (operands..., results..., [u32[] contexts]): keep the results.
      sizes = [s for s, (dt, dims) in zip(sizes, _ARRAY.findall(result)) if dims or dt not in ("u32", "s32")]
      sizes = sizes[len(sizes) // 2:]
    out[kind]["count"] += 1
    out[kind]["bytes"] += sum(sizes)
  return out


def _array_bytes(dtype: str, dims: str) -> int:
  n = 1
  for d in filter(None, dims.split(",")):
    n *= int(d)
  if dtype.startswith("f8"):
    return n
  return n * _BYTES.get(dtype, 4)


def total(stats: dict[str, dict[str, int]]) -> dict[str, int]:
  """{"count", "bytes"} over all kinds."""
  return {"count": sum(v["count"] for v in stats.values()), "bytes": sum(v["bytes"] for v in stats.values())}


def ring_all_reduce_seconds(nbytes: float, n: int, bandwidth: float, latency: float = 0.0, count: int = 1) -> float:
  """Time of all-reducing `nbytes` (in `count` separate operations) over a ring of `n` devices.

  Each device sends and receives 2(n-1)/n x nbytes at `bandwidth` bytes/s per direction, and
  each operation pays 2(n-1) hops of `latency` seconds.
  """
  if n <= 1:
    return 0.0
  return 2 * (n - 1) / n * nbytes / bandwidth + count * 2 * (n - 1) * latency
