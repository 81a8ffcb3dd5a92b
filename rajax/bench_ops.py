"""Where the RA step's time goes, op by op, in rajax and in PyTorch on the same device.

    python -m rajax.bench_ops --config configs/bench.py:task=sr,mode=ra,steps=5,batch=4 \\
        --config.data.crop=64 --config.data.resize=72 [--vs-torch] [--repeats 20] [--trace] [--json FILE]

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

`--trace` profiles the whole step instead (`config.bench.steps` steps after two warm-up steps):
jax.profiler records every thunk XLA's CPU runtime runs, each is attributed through its
instruction's name stack (`jit(train_step)/transpose(jvp(SRResNet))/blocks_0/bn1/...`) to a part of
the step (P's layers forward and backward, R forward, R's input gradient, Adam, the rest), and
torch.profiler does the same for PyTorch's eager step, its layers annotated and each backward
node attributed to the layer that made it. A fused XLA instruction counts for the op at its root
(a BatchNorm fused into the PReLU after it counts as PReLU). Times are busy time per step summed
over threads; the step's wall time (untraced) is the last row.
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import re
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


# ==================================================================== whole-step profiles

# Rows of the profile of the whole step, in order. P's rows are split by the layer the time belongs
# to; "loss and the rest" is everything outside P, R and the optimizer (the loss, the random keys,
# copies, and for PyTorch the autograd engine's own bookkeeping).
P_PARTS = ("head conv 9x9", "body convs 3x3", "BatchNorm", "PReLU", "up convs 3x3", "pixel shuffle",
           "tail conv 9x9", "other")
TRACE_ROWS = (*(f"P fwd: {p}" for p in P_PARTS), *(f"P bwd: {p}" for p in P_PARTS),
              "R fwd", "R input grad", "Adam (P)", "loss and the rest")


def p_part(layer: str, kind: str) -> str:
  """The P row of a layer of SRResNet, named as in either implementation: `layer` is its name
  ("head", "blocks_0/conv1", "up_1_prelu" in rajax; "head.0", "blocks.0.conv1", "up.2" in PyTorch)
  and `kind` what it is ("conv", "bn", "prelu", "shuffle" or "" for P's own elementwise ops)."""
  top = re.split(r"[/.]", layer)[0] if layer else ""
  if kind == "conv":
    return {"head": "head conv 9x9", "tail": "tail conv 9x9"}.get(top, "up convs 3x3" if top.startswith("up")
                                                                  else "body convs 3x3")
  return {"bn": "BatchNorm", "prelu": "PReLU", "shuffle": "pixel shuffle"}.get(kind, "other")


def _jax_kind(module: str, primitive: str) -> str:
  leaf = module.rsplit("/", 1)[-1]
  if leaf.endswith("prelu"):
    return "prelu"
  if re.fullmatch(r"bn\d*|batch_?norm\w*", leaf):
    return "bn"
  if module and (leaf in ("head", "mid", "tail") or re.fullmatch(r"up_\d+|conv\d*", leaf)):
    return "conv"
  if not module and primitive in ("reshape", "transpose", "copy"):
    return "shuffle"  # depth_to_space, called at SRResNet's top level between up_i and up_i_prelu
  return ""


def jax_trace_row(op_name: str, processor: str, recognizer: str) -> str:
  """The profile row of one XLA instruction, from its `op_name` metadata (JAX's name stack:
  "jit(train_step)/transpose(jvp(SRResNet))/blocks_0/bn1/mul")."""
  if "/optimizer_processor" in op_name:
    return "Adam (P)"
  for net, fwd, bwd in ((processor, None, None), (recognizer, "R fwd", "R input grad")):
    m = re.search(rf"(transpose\()?jvp\({re.escape(net)}\)\)?/(.*)$", op_name)
    if m is None:
      continue
    backward, rest = m.group(1) is not None, m.group(2)
    if fwd is not None:
      return bwd if backward else fwd
    module, _, primitive = rest.rpartition("/")
    # keep the layers' names, not transformations' or einsums' ("jit(_where)", "vmap()", "bhwk,bhwo->ko")
    module = "/".join(c for c in module.split("/") if re.fullmatch(r"\w+", c))
    primitive = re.sub(r"\W.*", "", primitive)
    return f"P {'bwd' if backward else 'fwd'}: {p_part(module, _jax_kind(module, primitive))}"
  return "loss and the rest"


def _hlo_op_names(hlo_text: str) -> tuple[str, dict[str, str]]:
  """(module name, {instruction name: op_name metadata}) of an optimized HLO module's text."""
  module = re.search(r"^HloModule (\S+?),?\s", hlo_text, re.M)
  names = {}
  for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = [^\n]*?op_name=\"([^\"]*)\"", hlo_text, re.M):
    names.setdefault(m.group(1), m.group(2))
  return (module.group(1) if module else ""), names


def _thunk_times(xspace_path: str, module: str) -> dict[str, float]:
  """{hlo instruction: total ns} over the thunks XLA's CPU runtime ran for `module` in a trace; a thunk
  that runs inside another (a loop's body) is counted in its parent only."""
  from jax.profiler import ProfileData
  totals: dict[str, float] = {}
  for plane in ProfileData.from_file(xspace_path).planes:
    for line in plane.lines:
      end = -1
      for ev in sorted(line.events, key=lambda e: e.start_ns):
        stats = dict(ev.stats)
        if "hlo_op" not in stats or stats.get("hlo_module") != module or ev.start_ns < end:
          continue
        end = ev.end_ns
        totals[stats["hlo_op"]] = totals.get(stats["hlo_op"], 0.0) + ev.duration_ns
  return totals


def trace_jax(config, steps: int) -> dict[str, Any]:
  """Profiles `steps` runs of the compiled train step with jax.profiler: {"step_ms": median wall time
  of untraced steps, "busy_ms": {row: ms per step of the thunks attributed to it, summed over
  threads}, "top": the ten most expensive instructions}."""
  import glob
  import tempfile

  from rajax import bench
  setup = bench.Setup(config)
  state = setup.init_state()
  compiled, _, _ = setup.compile(state)
  module, op_names = _hlo_op_names(compiled.as_text())
  state, times, _ = bench._time_steps(compiled, state, setup.batch, setup.frozen, steps=steps, warmup=2)
  processor = type(setup.modules["processor"]).__name__
  recognizer = type(getattr(setup.recognizer, "module", setup.recognizer)).__name__
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      for _ in range(steps):
        state, metrics = compiled(state, setup.batch, setup.frozen)
        jax.block_until_ready((state, metrics))
    paths = glob.glob(f"{d}/**/*.xplane.pb", recursive=True)
    if len(paths) != 1:
      raise RuntimeError(f"jax.profiler wrote {len(paths)} xplane files under {d}, expected one")
    per_op = _thunk_times(paths[0], module)
  if not per_op:
    raise RuntimeError(f"the trace holds no thunk of {module}: this jaxlib's CPU runtime does not trace thunks")
  busy = dict.fromkeys(TRACE_ROWS, 0.0)
  for op, ns in per_op.items():
    busy[jax_trace_row(op_names.get(op, ""), processor, recognizer)] += ns / 1e6 / steps
  top = sorted(per_op.items(), key=lambda kv: -kv[1])[:10]
  return {"step_ms": 1e3 * times[len(times) // 2], "busy_ms": busy,
          "top": [{"op": op, "op_name": op_names.get(op, ""), "ms": ns / 1e6 / steps} for op, ns in top]}


_NODE = "autograd::engine::evaluate_function:"


def _inside(event, prefix: str) -> bool:
  """Whether `event` or one of its ancestors is named `prefix...`."""
  while event is not None:
    if event.name.startswith(prefix):
      return True
    event = event.cpu_parent
  return False


def trace_torch(config, steps: int) -> dict[str, Any]:
  """The same profile of PyTorch's eager float32 step (rajax.bench_torch's networks, RA or plain) with
  torch.profiler: each of P's layers and R run inside a record_function named after them, and each
  backward node is attributed to the layer whose forward op created it (the autograd sequence number)."""
  from rajax import bench_torch
  torch, _ = bench_torch._torch()
  f = torch.nn.functional
  mode = config.method.name
  if mode not in ("plain", "ra"):
    raise ValueError(f"trace_torch profiles the plain and RA steps; method {mode!r} is not one of them.")
  b, crop = config.data.batch_size, config.data.crop
  s = config.degrade.scale if config.task == "sr" else 1
  if config.processor.name != "srresnet":
    raise ValueError(f"trace_torch profiles SRResNet; config.processor.name is {config.processor.name!r}.")
  from rajax.methods import ra
  lam = ra.Settings.of(config).lam
  torch.manual_seed(0)
  p_net, _, r_net = bench_torch.build_modules(
      scale=s, blocks=config.processor.blocks, channels=config.processor.channels, t_blocks=1, t_channels=8,
      num_classes=config.recognizer.num_classes, transformer=False, width=config.recognizer.get("width", 64))
  opt = torch.optim.Adam(p_net.parameters(), lr=1e-4)
  mean = torch.tensor(bench_torch.MEAN).view(1, 3, 1, 1)
  std = torch.tensor(bench_torch.STD).view(1, 3, 1, 1)
  x, y = torch.rand(b, 3, crop // s, crop // s), torch.rand(b, 3, crop, crop)
  labels = torch.randint(0, config.recognizer.num_classes, (b,))
  kinds = {torch.nn.Conv2d: "conv", torch.nn.BatchNorm2d: "bn", torch.nn.PReLU: "prelu", torch.nn.PixelShuffle: "shuffle"}
  ranges: list[Any] = []

  def annotate(module, label):
    module.register_forward_pre_hook(lambda *_: ranges.append(torch.profiler.record_function(label).__enter__()))
    module.register_forward_hook(lambda *_: ranges.pop().__exit__(None, None, None))

  for name, m in p_net.named_modules():
    if type(m) in kinds:
      annotate(m, f"P fwd: {p_part(name, kinds[type(m)])}")
  annotate(r_net, "R fwd")

  def step():
    with torch.profiler.record_function("P fwd: other"):
      out = p_net(x)
    with torch.profiler.record_function("loss and the rest"):
      loss = f.mse_loss(out, y)
      if mode == "ra":
        loss = loss + lam * f.cross_entropy(r_net((out - mean) / std), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    with torch.profiler.record_function("Adam (P)"):
      opt.step()

  times = []
  for i in range(2 + steps):
    t0 = time.perf_counter()
    step()
    if i >= 2:
      times.append(time.perf_counter() - t0)
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      step()
  events = list(prof.events())
  busy = dict.fromkeys(TRACE_ROWS, 0.0)
  # The autograd sequence number an op records on entry is that of the next backward node created, so
  # the top-level ops inside each annotation name the rows of the nodes they create; a node made by
  # a nested op (a second node of one top-level op) belongs to the closest top-level op before it.
  first_seq: dict[int, str] = {}
  for ev in events:
    if ev.name in busy:
      for child in ev.cpu_children:
        if child.name not in busy and child.sequence_nr >= 0:
          first_seq.setdefault(child.sequence_nr, ev.name)
  seqs = sorted(first_seq)
  for ev in events:
    if ev.name in busy:  # the annotation's own time: its total less the annotations nested in it
      inner = sum(c.cpu_time_total for c in ev.cpu_children if c.name in busy)
      busy[ev.name] += (ev.cpu_time_total - inner) / 1e3 / steps
    elif ev.name.startswith(_NODE) and not _inside(ev.cpu_parent, _NODE):
      i = bisect.bisect_right(seqs, ev.sequence_nr) - 1
      fwd = first_seq[seqs[i]] if i >= 0 and ev.sequence_nr >= 0 else "loss and the rest"
      row = {"R fwd": "R input grad"}.get(fwd, fwd.replace("P fwd:", "P bwd:"))
      busy[row] += ev.cpu_time_total / 1e3 / steps
  return {"step_ms": 1e3 * statistics.median(times), "busy_ms": busy}


def trace(config, *, vs_torch: bool = False) -> dict[str, Any]:
  """{"trace_rows": [{"row", "rajax_ms", "torch_ms"}], "rajax_step_ms", "torch_step_ms", ...}: the whole step profiled."""
  from rajax import bench
  steps = config.bench.steps
  jx = trace_jax(config, steps)
  th = trace_torch(config, steps) if vs_torch else None
  rows = []
  for row in TRACE_ROWS:
    r = {"row": row, "rajax_ms": jx["busy_ms"][row]}
    if th is not None:
      r["torch_ms"] = th["busy_ms"][row]
    rows.append(r)
  record = {"trace_rows": rows, "rajax_step_ms": jx["step_ms"], "rajax_top": jx["top"],
            "batch": config.data.batch_size, "crop": config.data.crop, "steps": steps, "host": bench._host(),
            "jax_version": jax.__version__, "backend": jax.default_backend()}
  if th is not None:
    import torch
    record |= {"torch_step_ms": th["step_ms"], "torch_version": torch.__version__,
               "torch_threads": torch.get_num_threads()}
  return record


def trace_markdown(record: dict[str, Any]) -> str:
  has_torch = "torch_step_ms" in record
  lines = ["| part of the step | rajax ms | " + ("PyTorch ms |" if has_torch else ""),
           "|---|---:|" + ("---:|" if has_torch else "")]
  rows = [(r["row"], r["rajax_ms"], r.get("torch_ms")) for r in record["trace_rows"]]
  rows.append(("sum of the rows (busy time, all threads)", sum(r[1] for r in rows),
               sum(r[2] for r in rows) if has_torch else None))
  rows.append(("step, wall time (untraced median)", record["rajax_step_ms"], record.get("torch_step_ms")))
  for name, a, t in rows:
    lines.append(f"| {name} | {a:.2f} | " + (f"{t:.2f} |" if has_torch else ""))
  return "\n".join(lines)


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
  parser.add_argument("--trace", action="store_true",
                      help="profile the whole step instead (jax.profiler; torch.profiler with --vs-torch): "
                           "config.bench.steps steps, time per part of the step")
  parser.add_argument("--json", default=None, help="also write the record to this file")
  args, rest = parser.parse_known_args(argv)
  overrides = config_lib.overrides_from_args(parser, rest, "data.batch_size=4")
  logging.basicConfig(level=logging.INFO, format="[bench_ops] %(message)s")
  config = config_lib.from_command_line(args.config, overrides)
  if args.trace:
    record = trace(config, vs_torch=args.vs_torch)
    print(trace_markdown(record))
  else:
    record = run(config, vs_torch=args.vs_torch, repeats=args.repeats)
    print(markdown(record))
  print(json.dumps(record))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(record, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(cli())
