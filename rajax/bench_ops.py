"""Where the RA step's time goes, op by op, in rajax and in PyTorch on the same device.

    python -m rajax.bench_ops --config configs/bench.py:task=sr,mode=ra,steps=5,batch=4 \\
        --config.data.crop=64 --config.data.resize=72 [--vs-torch] [--repeats 20] [--json FILE]

Each row is one piece of the paper-network RA step (SRResNet P, frozen ResNet-18 R, Adam) at the
step's own shapes, timed alone: jitted and blocked on in rajax; eager, float32, the same shapes
(NCHW) in PyTorch (`--vs-torch`; torch and torchvision installed next to rajax). Median of
`--repeats` calls after two warm-up calls. "fwd" is the forward pass; "fwd+bwd" adds the backward
pass the step takes: the gradient of sum(output * a fixed random cotangent) with respect to the
layer's parameters and, where the step needs it, its input (P's first layer gets no input gradient;
R gets only its input gradient, its parameters frozen). The rows:

  head conv 9x9 3->C        P's first layer, at the low-resolution input
  body conv 3x3 C->C        one of P's 2 * blocks + 1 body convolutions
  BatchNorm (train) C       one of P's 2 * blocks BatchNorms, batch statistics
  PReLU C                   one of P's activations
  up conv 3x3 C->4C + shuffle   one upsampling stage (the first, at the input's size)
  tail conv 9x9 C->3        P's last layer, at the output's size
  P                         the whole SRResNet (training mode)
  R fwd / R input grad      ResNet-18 in inference mode on P's output; CE's gradient w.r.t. the image
  Adam                      one update of P's parameters

Sums of rows are not the step: XLA fuses across them, PyTorch does not.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _median_s(fn: Callable[[], Any], repeats: int, block: Callable[[Any], Any]) -> float:
  for _ in range(2):
    block(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    block(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


# ==================================================================== rajax

def _jax_rows(config, repeats: int) -> dict[str, float]:
  from flax import linen as nn

  from rajax import bench
  from rajax.models import layers

  setup = bench.Setup(config)
  state = setup.init_state()
  b, crop = config.data.batch_size, config.data.crop
  s = setup.scale
  h, c = crop // s, config.processor.channels
  rng = np.random.default_rng(0)
  arr = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32))
  block = jax.block_until_ready
  out: dict[str, float] = {}

  def layer_rows(name, module, x, *, input_grad: bool = True, train_bn: bool = False):
    kwargs = {"use_running_average": False} if train_bn else {}
    variables = module.init(jax.random.key(0), x, **kwargs)
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}

    def apply(p, x):
      y = module.apply({"params": p, **rest}, x, **kwargs, **({"mutable": ["batch_stats"]} if train_bn else {}))
      return y[0] if train_bn else y

    ct = arr(*jax.eval_shape(apply, params, x).shape)
    fwd = jax.jit(apply)
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(apply(p, x) * ct), argnums=(0, 1) if input_grad else 0))
    out[f"{name} fwd"] = _median_s(lambda: fwd(params, x), repeats, block)
    out[f"{name} fwd+bwd"] = _median_s(lambda: grad(params, x), repeats, block)

  lr = arr(b, h, h, 3)
  feat = arr(b, h, h, c)
  layer_rows(f"head conv 9x9 3->{c}", layers.conv(c, 9, in_features=3, padding=4), lr, input_grad=False)
  layer_rows(f"body conv 3x3 {c}->{c}", layers.conv(c, 3, in_features=c, padding=1), feat)
  layer_rows(f"BatchNorm (train) {c}", nn.BatchNorm(momentum=0.9, epsilon=1e-5), feat, train_bn=True)
  layer_rows(f"PReLU {c}", layers.prelu(), feat)

  class _Up(nn.Module):
    @nn.compact
    def __call__(self, x):
      return layers.prelu()(layers.pixel_shuffle(layers.conv(4 * c, 3, in_features=c, padding=1)(x), 2))

  layer_rows(f"up conv 3x3 {c}->{4 * c} + shuffle", _Up(), feat)
  layer_rows(f"tail conv 9x9 {c}->3", layers.conv(3, 9, in_features=c, padding=4), arr(b, crop, crop, c))

  # the whole P, in training mode, as the step runs it
  net, pvars = setup.modules["processor"], state.variables("processor")
  lr01 = jnp.asarray(rng.random((b, h, h, 3), np.float32))

  def p_apply(p, x):
    return net.apply({**pvars, "params": p}, x, train=True, mutable=["batch_stats"])[0]

  ct = arr(b, crop, crop, 3)
  p_fwd = jax.jit(p_apply)
  p_grad = jax.jit(jax.grad(lambda p, x: jnp.sum(p_apply(p, x) * ct)))
  out["P fwd"] = _median_s(lambda: p_fwd(pvars["params"], lr01), repeats, block)
  out["P fwd+bwd"] = _median_s(lambda: p_grad(pvars["params"], lr01), repeats, block)

  # R, frozen, on P's output
  r = setup.recognizer
  img = jnp.asarray(rng.random((b, crop, crop, 3), np.float32))
  labels = jnp.asarray(rng.integers(0, config.recognizer.num_classes, (b,)), jnp.int32)
  r_fwd = jax.jit(lambda r, x: r(x))
  def ce(x, r):
    logp = jax.nn.log_softmax(r(x).astype(jnp.float32))
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))

  r_grad = jax.jit(jax.grad(ce, argnums=0))
  out["R fwd"] = _median_s(lambda: r_fwd(r, img), repeats, block)
  out["R input grad"] = _median_s(lambda: r_grad(img, r), repeats, block)

  # Adam over P's parameters
  params = pvars["params"]
  opt = optax.adam(1e-4)
  opt_state = opt.init(params)
  grads = jax.tree.map(lambda a: jnp.ones_like(a) * 1e-3, params)

  @jax.jit
  def adam(params, opt_state, grads):
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  out["Adam (P)"] = _median_s(lambda: adam(params, opt_state, grads), repeats, block)
  return out


# ==================================================================== PyTorch

def _torch_rows(config, repeats: int) -> dict[str, float]:
  from rajax import bench_torch
  torch, _ = bench_torch._torch()
  nn = torch.nn
  b, crop = config.data.batch_size, config.data.crop
  s = config.degrade.scale if config.task == "sr" else 1
  h, c = crop // s, config.processor.channels
  torch.manual_seed(0)
  t = lambda *shape: torch.randn(*shape)
  out: dict[str, float] = {}
  noop = lambda _: None

  def layer_rows(name, module, x, *, input_grad: bool = True):
    with torch.no_grad():
      ct = torch.randn_like(module(x))

    def fwd():
      with torch.no_grad():
        return module(x)

    def fwd_bwd():
      for p in module.parameters():
        p.grad = None
      xi = x.detach().requires_grad_(input_grad)
      (module(xi) * ct).sum().backward()

    out[f"{name} fwd"] = _median_s(fwd, repeats, noop)
    out[f"{name} fwd+bwd"] = _median_s(fwd_bwd, repeats, noop)

  lr, feat = t(b, 3, h, h), t(b, c, h, h)
  layer_rows(f"head conv 9x9 3->{c}", nn.Conv2d(3, c, 9, padding=4), lr, input_grad=False)
  layer_rows(f"body conv 3x3 {c}->{c}", nn.Conv2d(c, c, 3, padding=1), feat)
  layer_rows(f"BatchNorm (train) {c}", nn.BatchNorm2d(c).train(), feat)
  layer_rows(f"PReLU {c}", nn.PReLU(), feat)
  layer_rows(f"up conv 3x3 {c}->{4 * c} + shuffle", nn.Sequential(nn.Conv2d(c, 4 * c, 3, padding=1),
                                                                  nn.PixelShuffle(2), nn.PReLU()), feat)
  layer_rows(f"tail conv 9x9 {c}->3", nn.Conv2d(c, 3, 9, padding=4), t(b, c, crop, crop))

  p_net, _, r_net = bench_torch.build_modules(
      scale=s, blocks=config.processor.blocks, channels=c, t_blocks=1, t_channels=8,
      num_classes=config.recognizer.num_classes, transformer=False, width=config.recognizer.get("width", 64))
  p_net.train()
  lr01 = torch.rand(b, 3, h, h)
  layer_rows("P", p_net, lr01, input_grad=False)

  r_net.eval()
  for p in r_net.parameters():
    p.requires_grad_(False)
  mean = torch.tensor(bench_torch.MEAN).view(1, 3, 1, 1)
  std = torch.tensor(bench_torch.STD).view(1, 3, 1, 1)
  img = torch.rand(b, 3, crop, crop)
  labels = torch.randint(0, config.recognizer.num_classes, (b,))

  def r_fwd():
    with torch.no_grad():
      return r_net((img - mean) / std)

  def r_grad():
    x = img.detach().requires_grad_(True)
    torch.nn.functional.cross_entropy(r_net((x - mean) / std), labels).backward()
    return x.grad

  out["R fwd"] = _median_s(r_fwd, repeats, noop)
  out["R input grad"] = _median_s(r_grad, repeats, noop)

  opt = torch.optim.Adam(p_net.parameters(), lr=1e-4)
  for p in p_net.parameters():
    p.grad = torch.full_like(p, 1e-3)
  out["Adam (P)"] = _median_s(opt.step, repeats, noop)
  return out


# ==================================================================== the table

def run(config, *, vs_torch: bool = False, repeats: int = 20) -> dict[str, Any]:
  """{"rows": [{"op", "rajax_ms", "torch_ms", "ratio"}], "machine": ...}; ratio = PyTorch time / rajax time
  (above 1: rajax is faster)."""
  from rajax import bench
  jx = _jax_rows(config, repeats)
  th = _torch_rows(config, repeats) if vs_torch else {}
  rows = []
  for op, sec in jx.items():
    row = {"op": op, "rajax_ms": 1e3 * sec}
    if op in th:
      row |= {"torch_ms": 1e3 * th[op], "ratio": th[op] / sec}
    rows.append(row)
  record = {"rows": rows, "batch": config.data.batch_size, "crop": config.data.crop,
            "channels": config.processor.channels, "blocks": config.processor.blocks, "host": bench._host(),
            "jax_version": jax.__version__, "backend": jax.default_backend(), "repeats": repeats}
  if vs_torch:
    import torch
    record["torch_version"] = torch.__version__
    record["torch_threads"] = torch.get_num_threads()
  return record


def markdown(record: dict[str, Any]) -> str:
  has_torch = any("torch_ms" in r for r in record["rows"])
  lines = ["| op | rajax ms | " + ("PyTorch ms | PyTorch / rajax |" if has_torch else ""),
           "|---|---:|" + ("---:|---:|" if has_torch else "")]
  for r in record["rows"]:
    cells = [r["op"], f"{r['rajax_ms']:.2f}"]
    if has_torch:
      cells += [f"{r['torch_ms']:.2f}", f"{r['ratio']:.2f}x"] if "torch_ms" in r else ["-", "-"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def cli(argv: Sequence[str] | None = None) -> int:
  from rajax import config as config_lib
  parser = argparse.ArgumentParser(prog="python -m rajax.bench_ops", description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True, help="configs/bench.py:ARGS, as python -m rajax.bench takes it")
  parser.add_argument("--vs-torch", action="store_true", help="also time each op in PyTorch (eager, float32)")
  parser.add_argument("--repeats", type=int, default=20, help="timed calls per op (median)")
  parser.add_argument("--json", default=None, help="also write the record to this file")
  args, rest = parser.parse_known_args(argv)
  overrides = config_lib.overrides_from_args(parser, rest, "data.batch_size=4")
  logging.basicConfig(level=logging.INFO, format="[bench_ops] %(message)s")
  config = config_lib.from_command_line(args.config, overrides)
  record = run(config, vs_torch=args.vs_torch, repeats=args.repeats)
  print(markdown(record))
  print(json.dumps(record))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(record, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(cli())
