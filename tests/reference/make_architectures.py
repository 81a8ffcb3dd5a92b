"""Makes the fixtures that pin rajax's architectures to their PyTorch originals. Run once:

    PYTHONPATH=/path/to/efficientnet-lite-pytorch /tmp/torchvenv/bin/python tests/reference/make_architectures.py

with torch 2.14.1, torchvision 0.29.1, scikit-image and Pillow in that interpreter and the
efficientnet-lite-pytorch 0.1.0 port importable (`pip install --no-deps --target DIR
efficientnet-lite-pytorch==0.1.0`, then PYTHONPATH=DIR). Writes, next to this script:

  architectures.json  for every entry (a recognizer architecture, or a processor configuration):
                      the torch model's state-dict keys with shapes and dtypes in torch's order
                      (num_batches_tracked included), its options, which photos it saw, the names
                      of its recorded outputs, and a SHA-256 of the state dict torch held;
  architectures.npz   the photos (uint8, scikit-image, center-cropped and resized small, at sizes
                      whose halvings are odd so pooling and padding rules matter) and, for every
                      entry, what torch computed on them in float64 (stored as float32).

The weights are not stored: tests/seeded_state_dict.py draws them from the entry name and each key
with NumPy alone, here and in the tests, and torch loads them with load_state_dict(strict=True).

Recognizers (torchvision's ResNet-18/34/50/101/152, VGG-16(-BN), DenseNet-121, MobileNetV2, and the
efficientnet-lite-pytorch EfficientNet-Lite0, with static 224 padding and with dynamic padding) see
photos normalised as rajax.recognizer normalises them; recorded are the logits of both photos and
named intermediate features (rajax's names: `features=True`) of the first one, taken with hooks.
Processors: SRResNet x4, x2, x1 (the paper's layout) and pix2pix's ResnetGenerator with BatchNorm
(reflection padding, transposed convolutions with output_padding=1), written below in PyTorch as
their originals are; recorded are their output images in eval mode and, for SRResNet x4 and the
generator, one forward in train mode: the output, each BatchNorm's batch mean and biased batch
variance (torch's own numbers, from a hook on its input) and its updated running statistics.
"""

import json
import pathlib
import sys

import numpy as np
import torch
import torchvision
from PIL import Image

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import seeded_state_dict  # noqa: E402  (tests/seeded_state_dict.py, shared with the tests)

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
LITE = ((127 / 255,) * 3, (128 / 255,) * 3)

# name -> (height, width, photos): 45 -> 23 -> 12 -> 6 -> 3 -> 2 and 58 -> 29 -> 15 -> 8 -> 4 -> 2 along
# a ResNet; VGG's five pools leave 3x2 of 100x70 (overlapping adaptive-pool bins); 57x75 is odd for
# TF SAME padding; the processors see small crops (the generator needs multiples of 4).
PHOTOS = {
    "45x58": (45, 58, ("chelsea", "coffee")),
    "100x70": (100, 70, ("astronaut", "rocket")),
    "57x75": (57, 75, ("chelsea", "astronaut")),
    "23x19": (23, 19, ("coffee", "astronaut")),
    "30x26": (30, 26, ("chelsea", "rocket")),
    "20x28": (20, 28, ("coffee", "chelsea")),
}


def _vgg_stage_end(model, stage):
  """`features` index of the ReLU just before the stage-th max pool."""
  ends = [i - 1 for i, m in enumerate(model.features) if isinstance(m, torch.nn.MaxPool2d)]
  return f"features.{ends[stage - 1]}"


def _relu6(t):
  return torch.clamp(t, 0, 6)


# feature name -> ("out" | "in", torch module, optional function of the hooked tensor).
# "in" takes the module's input (e.g. the pooled vector entering the classifier).
_RESNET = {"stem": ("out", "relu"), **{f"layer{i}": ("out", f"layer{i}") for i in range(1, 5)},
           "pool": ("in", "fc")}
# The last BatchNorm of each residual branch scales it down (see tests/seeded_state_dict.py).
_BASIC_RULES = [[r"layer\d+\.\d+\.bn2\.weight", 0.1, 0.3]]
_BOTTLENECK_RULES = [[r"layer\d+\.\d+\.bn3\.weight", 0.1, 0.3]]
RECOGNIZERS = {
    "resnet18": dict(photos="45x58", features=("stem", "layer1", "layer2", "layer4", "pool"), rules=_BASIC_RULES),
    "resnet34": dict(photos="45x58", features=("layer3", "layer4", "pool"), rules=_BASIC_RULES),
    "resnet50": dict(photos="45x58", features=("layer1", "layer3", "layer4", "pool"), rules=_BOTTLENECK_RULES),
    "resnet101": dict(photos="45x58", features=("layer3", "layer4", "pool"), rules=_BOTTLENECK_RULES),
    "resnet152": dict(photos="45x58", features=("layer3", "layer4", "pool"), rules=_BOTTLENECK_RULES),
    "vgg16": dict(photos="100x70", features=("stage5", "pool", "fc7")),
    "vgg16_bn": dict(photos="100x70", features=("stage5", "pool", "fc6", "fc7")),
    "densenet121": dict(photos="45x58", features=("block2", "block4", "head", "pool")),
    "mobilenet_v2": dict(photos="45x58", features=("stem", "stage2", "stage3", "stage5", "head", "pool")),
    "efficientnet_lite0": dict(photos="45x58", features=("stem", "stage1", "stage3", "stage5", "head", "pool")),
    "efficientnet_lite0_dynamic": dict(arch="efficientnet_lite0", options={"image_size": None}, photos="57x75",
                                       features=("stage2", "stage4", "head", "pool")),
}
HOOKS = {
    **{n: _RESNET for n in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")},
    **{n: {"stage4": ("out", lambda m: _vgg_stage_end(m, 4)), "stage5": ("out", lambda m: _vgg_stage_end(m, 5)),
           "pool": ("out", "avgpool"), "fc6": ("out", "classifier.1"), "fc7": ("out", "classifier.4")}
       for n in ("vgg16", "vgg16_bn")},
    "densenet121": {"block2": ("out", "features.denseblock2"), "block4": ("out", "features.denseblock4"),
                    "head": ("out", "features.norm5", torch.relu), "pool": ("in", "classifier")},
    "mobilenet_v2": {"stem": ("out", "features.0"), "stage2": ("out", "features.3"), "stage3": ("out", "features.6"),
                     "stage5": ("out", "features.17"), "head": ("out", "features.18"), "pool": ("in", "classifier")},
    "efficientnet_lite0": {"stem": ("out", "_bn0", _relu6), "stage1": ("out", "_blocks.0"),
                           "stage2": ("out", "_blocks.2"), "stage3": ("out", "_blocks.4"),
                           "stage4": ("out", "_blocks.10"), "stage5": ("out", "_blocks.15"),
                           "head": ("out", "_bn1", _relu6), "pool": ("in", "_fc")},
}
# A smaller last convolution keeps most pixels off tanh's flat ends, where errors would not show.
_TAIL_RULES = [[r"tail\.weight", -0.015, 0.015]]
PROCESSORS = {
    "srresnet_x4": dict(kind="srresnet", options=dict(scale=4, blocks=2, channels=16), photos="23x19", train=True,
                        rules=_TAIL_RULES),
    "srresnet_x2": dict(kind="srresnet", options=dict(scale=2, blocks=2, channels=16), photos="23x19",
                        rules=_TAIL_RULES),
    "srresnet_x1": dict(kind="srresnet", options=dict(scale=1, blocks=2, channels=16), photos="30x26",
                        rules=_TAIL_RULES),
    "resnet_generator": dict(kind="resnet_generator", options=dict(blocks=2, channels=8), photos="20x28", train=True),
}


# --------------------------------------------------------------------------- torch originals


class SRResNet(torch.nn.Module):
  """SRResNet as in the paper's code: conv9-PReLU, residual blocks, conv3-PReLU + global skip,
  log2(scale) x (conv3 to 4C, PixelShuffle(2), PReLU), conv9, (tanh + 1) / 2."""

  class Block(torch.nn.Module):

    def __init__(self, c):
      super().__init__()
      nn = torch.nn
      self.conv1, self.bn1, self.prelu = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.PReLU()
      self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
      return x + self.bn2(self.conv2(self.prelu(self.bn1(self.conv1(x)))))

  def __init__(self, scale, blocks, channels):
    super().__init__()
    nn, c = torch.nn, channels
    n_up = scale.bit_length() - 1
    self.head, self.head_prelu = nn.Conv2d(3, c, 9, padding=4), nn.PReLU()
    self.blocks = nn.ModuleList([SRResNet.Block(c) for _ in range(blocks)])
    self.mid, self.mid_prelu = nn.Conv2d(c, c, 3, padding=1), nn.PReLU()
    self.ups = nn.ModuleList([nn.Conv2d(c, 4 * c, 3, padding=1) for _ in range(n_up)])
    self.up_prelus = nn.ModuleList([nn.PReLU() for _ in range(n_up)])
    self.shuffle = nn.PixelShuffle(2)
    self.tail = nn.Conv2d(c, 3, 9, padding=4)

  def forward(self, x):
    head = self.head_prelu(self.head(x))
    h = head
    for b in self.blocks:
      h = b(h)
    h = head + self.mid_prelu(self.mid(h))
    for conv, act in zip(self.ups, self.up_prelus):
      h = act(self.shuffle(conv(h)))
    return (torch.tanh(self.tail(h)) + 1) / 2


class ResnetBlock(torch.nn.Module):
  """pix2pix's ResnetBlock (reflect padding, BatchNorm, no dropout)."""

  def __init__(self, dim):
    super().__init__()
    nn = torch.nn
    self.conv_block = nn.Sequential(
        nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False), nn.BatchNorm2d(dim), nn.ReLU(True),
        nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False), nn.BatchNorm2d(dim))

  def forward(self, x):
    return x + self.conv_block(x)


class ResnetGenerator(torch.nn.Module):
  """pix2pix's ResnetGenerator(3, 3, ngf, norm_layer=BatchNorm2d, n_blocks): convolutions before
  BatchNorm have no bias; output tanh in [-1, 1]."""

  def __init__(self, blocks, ngf):
    super().__init__()
    nn = torch.nn
    layers = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True)]
    for i in range(2):
      m = 2**i
      layers += [nn.Conv2d(ngf * m, ngf * m * 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(ngf * m * 2),
                 nn.ReLU(True)]
    layers += [ResnetBlock(ngf * 4) for _ in range(blocks)]
    for i in range(2):
      m = 2**(2 - i)
      layers += [nn.ConvTranspose2d(ngf * m, ngf * m // 2, 3, stride=2, padding=1, output_padding=1, bias=False),
                 nn.BatchNorm2d(ngf * m // 2), nn.ReLU(True)]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
    self.model = nn.Sequential(*layers)

  def forward(self, x):
    return self.model(x)


def recognizer_model(arch, options):
  if arch == "efficientnet_lite0":
    from efficientnet_lite_pytorch import EfficientNet
    return EfficientNet.from_name("efficientnet-lite0", **options)
  return getattr(torchvision.models, arch)(weights=None, **options)


def processor_model(kind, options):
  if kind == "srresnet":
    return SRResNet(options["scale"], options["blocks"], options["channels"])
  return ResnetGenerator(options["blocks"], options["channels"])


# --------------------------------------------------------------------------- running them


def photos():
  from skimage import data
  out = {}
  for key, (h, w, names) in PHOTOS.items():
    ims = []
    for name in names:
      im = Image.fromarray(getattr(data, name)()).convert("RGB")
      iw, ih = im.size
      cw, ch = (iw, round(iw * h / w)) if iw * h / w <= ih else (round(ih * w / h), ih)
      left, top = (iw - cw) // 2, (ih - ch) // 2
      ims.append(np.asarray(im.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BICUBIC)))
    out[key] = np.stack(ims)
  return out


def keys_of(model):
  return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]


def load_seeded(model, entry, rules=()):
  """Loads the seeded values into `model` (strict) and returns the manifest keys and the digest."""
  keys = keys_of(model)
  sd = seeded_state_dict.values(entry, keys, rules)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  back = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  digest = seeded_state_dict.digest(back)
  assert digest == seeded_state_dict.digest(sd), entry
  return keys, digest


def nchw(images_nhwc):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(images_nhwc, (0, 3, 1, 2))))


def nhwc(t):
  t = t.detach()
  return (t.permute(0, 2, 3, 1) if t.ndim == 4 else t.flatten(1)).numpy().astype(np.float32)


def run_with_hooks(model, x, hooks):
  got, handles = {}, []
  modules = dict(model.named_modules())
  for feat, (where, mod, *post) in hooks.items():
    mod = mod(model) if callable(mod) else mod
    fn = post[0] if post else (lambda t: t)

    def keep(t, feat=feat, fn=fn):
      got[feat] = fn(t.detach().clone())

    if where == "out":
      handles.append(modules[mod].register_forward_hook(lambda _m, _i, out, keep=keep: keep(out)))
    else:
      handles.append(modules[mod].register_forward_pre_hook(lambda _m, inp, keep=keep: keep(inp[0])))
  with torch.no_grad():
    out = model(x)
  for h in handles:
    h.remove()
  return out, got


def recognizer_entry(name, spec, images):
  arch, options = spec.get("arch", name), spec.get("options", {})
  torch.manual_seed(0)
  model = recognizer_model(arch, options).eval()
  rules = spec.get("rules", [])
  keys, digest = load_seeded(model, name, rules)
  model = model.double()
  mean, std = LITE if arch == "efficientnet_lite0" else IMAGENET
  x = nchw(images[spec["photos"]]).double() / 255.0
  x = (x - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(std, dtype=torch.float64).view(
      1, 3, 1, 1)
  hooks = {f: HOOKS[arch][f] for f in spec["features"]}
  logits, feats = run_with_hooks(model, x, hooks)
  out = {"logits": nhwc(logits)}
  for f in spec["features"]:
    out[f] = nhwc(feats[f])[:1]  # the first photo's features (the logits are of both)
  meta = dict(kind="recognizer", arch=arch, options=options, photos=spec["photos"], normalisation=[mean, std],
              rules=rules, keys=keys, sha256=digest, outputs=list(out))
  return meta, out


def processor_entry(name, spec, images):
  torch.manual_seed(0)
  model = processor_model(spec["kind"], spec["options"]).eval()
  rules = spec.get("rules", [])
  keys, digest = load_seeded(model, name, rules)
  model = model.double()
  x = nchw(images[spec["photos"]]).double() / 255.0
  post = (lambda y: (y + 1) / 2) if spec["kind"] == "resnet_generator" else (lambda y: y)
  with torch.no_grad():
    out = {"output": nhwc(post(model(x)))}
  if spec.get("train"):
    stats, handles = {}, []
    for mod_name, m in model.named_modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        def batch_stats(_m, inp, mod_name=mod_name):
          t = inp[0].detach()
          stats[f"train/{mod_name}/batch_mean"] = t.mean(dim=(0, 2, 3))
          stats[f"train/{mod_name}/batch_var"] = t.var(dim=(0, 2, 3), unbiased=False)
        handles.append(m.register_forward_pre_hook(batch_stats))
    model.train()
    with torch.no_grad():
      out["train_output"] = nhwc(post(model(x)))
    for h in handles:
      h.remove()
    for mod_name, m in model.named_modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        for stat in ("batch_mean", "batch_var"):
          out[f"train/{mod_name}/{stat}"] = stats[f"train/{mod_name}/{stat}"].numpy().astype(np.float32)
        out[f"train/{mod_name}/running_mean"] = m.running_mean.numpy().astype(np.float32)
        out[f"train/{mod_name}/running_var"] = m.running_var.numpy().astype(np.float32)
  meta = dict(kind=spec["kind"], options=spec["options"], photos=spec["photos"], rules=rules, keys=keys,
              sha256=digest, outputs=list(out))
  return meta, out


def write_manifest(entries, path):
  """JSON with one line per state-dict key (diff-friendly)."""
  lines = ["{", ' "entries": {']
  for i, (name, meta) in enumerate(entries.items()):
    head = {k: v for k, v in meta.items() if k != "keys"}
    lines.append(f"  {json.dumps(name)}: {{")
    for k, v in head.items():
      lines.append(f"   {json.dumps(k)}: {json.dumps(v)},")
    lines.append('   "keys": [')
    lines += [f"    {json.dumps(k)}{',' if j < len(meta['keys']) - 1 else ''}" for j, k in enumerate(meta["keys"])]
    lines.append("   ]")
    lines.append("  }" + ("," if i < len(entries) - 1 else ""))
  lines += [" }", "}"]
  path.write_text("\n".join(lines) + "\n")


def main():
  torch.set_num_threads(2)
  images = photos()
  entries, arrays = {}, {f"photos/{k}": v for k, v in images.items()}
  for name, spec in RECOGNIZERS.items():
    entries[name], out = recognizer_entry(name, spec, images)
    arrays.update({f"{name}/{k}": v for k, v in out.items()})
    print(name, {k: v.shape for k, v in out.items()}, flush=True)
  for name, spec in PROCESSORS.items():
    entries[name], out = processor_entry(name, spec, images)
    arrays.update({f"{name}/{k}": v for k, v in out.items()})
    print(name, len(out), "outputs", flush=True)
  write_manifest(entries, seeded_state_dict.MANIFEST)
  assert json.loads(seeded_state_dict.MANIFEST.read_text())["entries"].keys() == entries.keys()
  np.savez_compressed(seeded_state_dict.OUTPUTS, **arrays)


if __name__ == "__main__":
  main()
