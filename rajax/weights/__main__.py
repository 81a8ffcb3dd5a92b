"""Command line for weights files.

    python -m rajax.weights convert ARCH IN OUT [--num-classes N]
        Reads IN (a torchvision-layout .pth/.pt, zip or legacy format, or a .safetensors file),
        converts it to the Flax variables of recognizer ARCH with every key and shape checked, and
        writes OUT as Flax msgpack, so later runs load it directly: rajax.recognizer(ARCH, weights=OUT).

    python -m rajax.weights inspect FILE
        Lists the tensors in a checkpoint (name, shape, dtype) without torch.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _convert(args) -> int:
  import jax

  from rajax import weights
  from rajax.models import recognizer

  t0 = time.perf_counter()
  try:
    rec = recognizer(args.arch, weights=args.input, num_classes=args.num_classes)
  except (weights.WeightsError, ValueError) as e:
    print(f"rajax.weights convert: {e}", file=sys.stderr)
    return 1
  out = weights.save(args.output, jax.device_get(rec.variables))
  n = sum(int(np.size(v)) for v in jax.tree.leaves(rec.variables))
  print(f"rajax.weights convert: {args.arch} from {args.input} -> {out} ({n:,} values, "
        f"{time.perf_counter() - t0:.1f}s)")
  return 0


def _inspect(args) -> int:
  from rajax import weights

  try:
    if args.file.endswith(weights.NATIVE_SUFFIXES):
      from flax import serialization, traverse_util
      with open(args.file, "rb") as f:
        tree = traverse_util.flatten_dict(serialization.msgpack_restore(f.read()), sep="/")
    else:
      tree = weights.read_state_dict(args.file)
  except (weights.WeightsError, OSError) as e:
    print(f"rajax.weights inspect: {e}", file=sys.stderr)
    return 1
  for k, v in tree.items():
    print(f"{k}\t{tuple(np.shape(v))}\t{np.asarray(v).dtype}")
  print(f"{len(tree)} tensors, {sum(int(np.size(v)) for v in tree.values()):,} values", file=sys.stderr)
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m rajax.weights", description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  c = sub.add_parser("convert", help="convert a PyTorch/safetensors checkpoint to Flax msgpack")
  c.add_argument("arch", help="recognizer architecture, e.g. resnet50")
  c.add_argument("input", help="checkpoint file (.pth, .pt, .bin, .safetensors)")
  c.add_argument("output", help="output file (.msgpack)")
  c.add_argument("--num-classes", type=int, default=1000)
  i = sub.add_parser("inspect", help="list the tensors of a checkpoint")
  i.add_argument("file")
  args = parser.parse_args(argv)
  if args.command == "convert" and not args.output.endswith(".msgpack"):
    parser.error(f"output {args.output!r} must end in .msgpack")
  return {"convert": _convert, "inspect": _inspect}[args.command](args)


if __name__ == "__main__":
  sys.exit(main())
