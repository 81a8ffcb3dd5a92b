"""The PyTorch reference train step that `python -m rajax.bench --vs-torch` times next to rajax's.

The original implementation of the method is PyTorch; this is its training step written the way a
careful PyTorch user would: SRResNet P (the paper's layout), pix2pix ResnetGenerator T for the
transformer method, torchvision's ResNet-18 (or the same layout narrowed, for small benchmarks) as the frozen R (eval mode, no parameter gradients),
Adam, the same loss terms as `rajax.step`, synthetic batches resident on the device.

Variants (comma-separated names):
  eager_fp32        eager, float32 (TF32 matmuls/convolutions allowed on GPUs)
  amp_bf16_cl       eager, autocast bfloat16, channels_last memory format
  compile_bf16_cl   torch.compile of the whole step, autocast bfloat16, channels_last
  compile_fp32_cl   torch.compile, float32, channels_last
(any eager|compile _ fp32|bf16 [_cl] combination is accepted).

Needs torch and torchvision, which rajax itself does not depend on: `run` raises ImportError
with an explanation when they are missing.
"""

from __future__ import annotations

import time
from typing import Any

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _torch():
  try:
    import torch
    import torchvision
  except ImportError as e:
    raise ImportError(f"The PyTorch reference needs torch and torchvision ({e}); install them "
                      "(pip install torch torchvision) or run the benchmark without --vs-torch.") from None
  return torch, torchvision


def parse_variant(name: str) -> dict[str, Any]:
  """'compile_bf16_cl' -> {"compile": True, "bf16": True, "channels_last": True}."""
  parts = name.strip().split("_")
  ok = (len(parts) in (2, 3) and parts[0] in ("eager", "amp", "compile") and parts[1] in ("fp32", "bf16")
        and (len(parts) == 2 or parts[2] == "cl"))
  if not ok:
    raise ValueError(f"Unknown PyTorch reference variant {name!r}; use eager|amp|compile _ fp32|bf16 [_cl], "
                     "e.g. eager_fp32, amp_bf16_cl, compile_bf16_cl.")
  return {"compile": parts[0] == "compile", "bf16": parts[1] == "bf16", "channels_last": len(parts) == 3}


def resnet18(*, num_classes: int, width: int = 64):
  """torchvision's ResNet-18; with width != 64 the same layout with every stage scaled (as rajax's `width`)."""
  torch, torchvision = _torch()
  if width == 64:
    return torchvision.models.resnet18(num_classes=num_classes)
  nn, BasicBlock = torch.nn, torchvision.models.resnet.BasicBlock
  stages, inplanes = [], width
  for i in range(4):
    planes, stride = width * 2**i, (1 if i == 0 else 2)
    down = None
    if stride != 1 or inplanes != planes:
      down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
    stages.append(nn.Sequential(BasicBlock(inplanes, planes, stride, down), BasicBlock(planes, planes)))
    inplanes = planes
  return nn.Sequential(
      nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
      nn.MaxPool2d(3, stride=2, padding=1), *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
      nn.Linear(8 * width, num_classes))


def build_modules(*, scale: int, blocks: int, channels: int, t_blocks: int, t_channels: int, num_classes: int,
                  transformer: bool, width: int = 64):
  """(P, T or None, R) as torch modules on the CPU."""
  torch, torchvision = _torch()
  nn = torch.nn

  class ResBlock(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
      self.prelu = nn.PReLU()
      self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
      return x + self.bn2(self.conv2(self.prelu(self.bn1(self.conv1(x)))))

  class SRResNet(nn.Module):
    def __init__(self):
      super().__init__()
      c = channels
      self.head = nn.Sequential(nn.Conv2d(3, c, 9, padding=4), nn.PReLU())
      self.blocks = nn.Sequential(*[ResBlock(c) for _ in range(blocks)])
      self.mid = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.PReLU())
      up = []
      for _ in range(scale.bit_length() - 1):
        up += [nn.Conv2d(c, 4 * c, 3, padding=1), nn.PixelShuffle(2), nn.PReLU()]
      self.up = nn.Sequential(*up)
      self.tail = nn.Conv2d(c, 3, 9, padding=4)

    def forward(self, x):
      h = self.head(x)
      h = h + self.mid(self.blocks(h))
      return (torch.tanh(self.tail(self.up(h))) + 1) / 2

  class GenBlock(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.body = nn.Sequential(
          nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3, bias=False), nn.BatchNorm2d(c), nn.ReLU(True),
          nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
      return x + self.body(x)

  def generator():
    c = t_channels
    layers = [nn.ReflectionPad2d(3), nn.Conv2d(3, c, 7, bias=False), nn.BatchNorm2d(c), nn.ReLU(True)]
    for i in range(2):
      layers += [nn.Conv2d(c * 2**i, c * 2**(i + 1), 3, stride=2, padding=1, bias=False),
                 nn.BatchNorm2d(c * 2**(i + 1)), nn.ReLU(True)]
    layers += [GenBlock(4 * c) for _ in range(t_blocks)]
    for i in range(2):
      cin = c * 4 // 2**i
      layers += [nn.ConvTranspose2d(cin, cin // 2, 3, stride=2, padding=1, output_padding=1, bias=False),
                 nn.BatchNorm2d(cin // 2), nn.ReLU(True)]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, 3, 7)]
    body = nn.Sequential(*layers)

    class Generator(nn.Module):
      def __init__(self):
        super().__init__()
        self.body = body

      def forward(self, x):
        return (torch.tanh(self.body(x)) + 1) / 2

    return Generator()

  recognizer = resnet18(num_classes=num_classes, width=width).eval()
  for p in recognizer.parameters():
    p.requires_grad_(False)
  return SRResNet(), (generator() if transformer else None), recognizer


# The rajax methods this PyTorch reference implements (rajax.methods.ra), each as its own code below.
MODES = ("plain", "ra", "unsupervised", "transformer")


def run(*, mode: str, batch: int, crop: int, scale: int, blocks: int, channels: int, num_classes: int,
        lam: float, width: int = 64, t_blocks: int = 6, t_channels: int = 64,
        variants: str = "amp_bf16_cl,compile_bf16_cl",
        steps: int = 30, warmup: int = 3, device: str | None = None) -> dict[str, dict[str, Any]]:
  """Times the reference step for each variant: {variant: {img_per_s, step_ms, warmup_s, peak_memory_bytes, ...}}."""
  torch, _ = _torch()
  functional = torch.nn.functional
  if mode not in MODES:
    raise ValueError(f"Unknown mode {mode!r} for the PyTorch reference.")
  dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
  torch.backends.cudnn.benchmark = True
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  mean = torch.tensor(MEAN, device=dev).view(1, 3, 1, 1)
  std = torch.tensor(STD, device=dev).view(1, 3, 1, 1)
  results = {}
  for name in [v.strip() for v in variants.split(",") if v.strip()]:
    opts = parse_variant(name)
    torch.manual_seed(0)
    p_net, t_net, r_net = build_modules(scale=scale, blocks=blocks, channels=channels, t_blocks=t_blocks,
                                        t_channels=t_channels, num_classes=num_classes,
                                        transformer=mode == "transformer", width=width)
    nets = [m for m in (p_net, t_net, r_net) if m is not None]
    fmt = torch.channels_last if opts["channels_last"] else torch.contiguous_format
    nets = [m.to(dev, memory_format=fmt) for m in nets]
    p_net, r_net = nets[0], nets[-1]
    t_net = nets[1] if t_net is not None else None
    opt_p = torch.optim.Adam(p_net.parameters(), lr=1e-4)
    opt_t = torch.optim.Adam(t_net.parameters(), lr=1e-4) if t_net is not None else None
    lr_img = torch.rand(batch, 3, crop // scale, crop // scale, device=dev).contiguous(memory_format=fmt)
    hr_img = torch.rand(batch, 3, crop, crop, device=dev).contiguous(memory_format=fmt)
    labels = torch.randint(0, num_classes, (batch,), device=dev)

    def recognize(x):
      return r_net((x - mean) / std).float()

    def step(x, y, label):
      with torch.autocast(dev, dtype=torch.bfloat16, enabled=opts["bf16"]):
        out = p_net(x)
        loss = functional.mse_loss(out.float(), y)
        if mode == "ra":
          loss = loss + lam * functional.cross_entropy(recognize(out), label)
        elif mode == "unsupervised":
          with torch.no_grad():
            target_probs = torch.softmax(recognize(y), dim=-1)
          loss = loss + lam * functional.mse_loss(torch.softmax(recognize(out), dim=-1), target_probs)
        elif mode == "transformer":
          t_loss = lam * functional.cross_entropy(recognize(t_net(out.detach())), label)
      opt_p.zero_grad(set_to_none=True)
      loss.backward()
      opt_p.step()
      if opt_t is not None:
        opt_t.zero_grad(set_to_none=True)
        t_loss.backward()
        opt_t.step()
      return loss

    fn = torch.compile(step) if opts["compile"] else step
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    if dev == "cuda":
      torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(max(warmup, 1)):
      fn(lr_img, hr_img, labels)
    sync()
    warm = time.perf_counter() - t0
    times = []
    for _ in range(steps):
      if dev == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(lr_img, hr_img, labels)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
      else:
        t1 = time.perf_counter()
        fn(lr_img, hr_img, labels)
        times.append(time.perf_counter() - t1)
    times.sort()
    med = times[len(times) // 2]
    results[name] = {
        "img_per_s": batch / med, "step_ms": 1e3 * med, "warmup_s": warm, "steps": steps,
        "peak_memory_bytes": int(torch.cuda.max_memory_allocated()) if dev == "cuda" else None,
        "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch_version": torch.__version__,
    }
  return results
