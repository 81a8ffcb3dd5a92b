"""Makes the fixtures that pin rajax's EDSR (and SwinIR) processors to their official PyTorch code.

Run once, with torch (2.13.0 and 2.14.1 write the same tensors) and NumPy in the interpreter:

    PYTHONPATH=STUBS /tmp/torchvenv/bin/python tests/reference/make_sr_processors.py --edsr DIR [--swinir DIR]
    ... make_sr_processors.py --edsr DIR --swinir DIR --layouts-only     # sr_layouts.json alone

--edsr DIR: a folder holding the official EDSR code as `model/edsr.py` and `model/common.py`
(sanghyun-son/EDSR-PyTorch, src/model/; the script imports `model.edsr`), with common.py's
`default_conv(in_channels, out_channels, kernel_size, bias=True)` as on the master branch (a copy
whose default_conv takes a dilation before `bias` breaks the Upsampler's positional call). --swinir DIR: a folder
holding the official `network_swinir.py` (JingyunLiang/SwinIR, models/); it imports timm's
`DropPath`, `to_2tuple` and `trunc_normal_` (timm 1.0 installed with --no-deps needs torchvision to
import; a stand-in `timm/models/layers.py` on PYTHONPATH with those three names serves as well:
DropPath is the identity in eval mode and trunc_normal_ only draws the initial weights, which are
redrawn here). Neither is copied into this repository.

Every setting builds the official model with small options, draws its weights from a fixed seed
(torch.manual_seed, torch's default initialisation, then every bias and norm parameter perturbed so
that none is zero or one), saves the state dict next to this script under sr_processors/, as the
official training code saves it (EDSR: the bare state dict, a .pt file), and records
the model's output on one fixed input (2 x 12 x 12 x 3 NHWC in [0, 1], np.random.default_rng(0);
SwinIR: 2 x 8 x 8 x 3 after default_rng(1)) in float64, stored as float32 in sr_processors.npz,
keyed by setting name (SwinIR at x3, x4 and x8 in sr_processors_swinir.npz, whose x8 output alone
is 98 KB). EDSR sees the input times rgb_range and its output is divided by rgb_range,
as the official test code does; x8 is recorded on the input's top left 6 x 6 (a 2 x 48 x 48 x 3 output).
One EDSR state dict is also written in BasicSR's layout (its key names, wrapped under "params", no
MeanShift tensors) to pin that layout's reader.

The full-size models are too large to keep weights of: for EDSR-baseline (16 blocks, 64 features,
the official edsr_baseline_x{2,3,4}.pt) and SwinIR-M (classical SR, DIV2K patch 48, window 8, the
official 001_classicalSR_DIV2K_s48w8_SwinIR-M_x{2,3,4,8}.pth) at x2, x3, x4 and x8,
sr_layouts.json records the official constructor options and every state dict entry's name and
shape, in the order torch saves them (buffers included).

SwinIR fixes its upsampler's width at 64 features, so even a tiny SwinIR holds a 64 -> 256 conv
(150k weights, 600 KB as a .pth; x3 one 64 -> 576 conv, x4 and x8 two and three 64 -> 256 convs).
Its state dict (every tensor torch saves, buffers included) is therefore stored as
sr_processors/<name>_state_dict.npz instead, with the Linear weights redrawn
at unit-variance scale (N(0, 1/fan_in)) so that attention is far from uniform, the relative position
bias tables from N(0, 0.5), and those large convs kept sparse and on a coarse grid (90% zeros at
x2, 95-97% at the larger factors, the rest ten times torch's default draw, rounded to multiples of
1/64) so that each file compresses to under 150 KB; the tests wrap it under "params" as the official
checkpoints are and read it through the same converter, and also write it so as a torch .pth
(tests/torch_file.py) read by rajax.networks.load_variables.
"""

import argparse
import pathlib
import sys
import types

import numpy as np
import torch

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "sr_processors"

# name -> EDSR options (the official args fields)
EDSR_SETTINGS = {
    "edsr_x2": dict(scale=2, n_resblocks=2, n_feats=8, res_scale=1.0, rgb_range=255),
    "edsr_x3": dict(scale=3, n_resblocks=2, n_feats=8, res_scale=0.1, rgb_range=255),
    "edsr_x4": dict(scale=4, n_resblocks=2, n_feats=8, res_scale=1.0, rgb_range=255),
    "edsr_x8": dict(scale=8, n_resblocks=2, n_feats=8, res_scale=1.0, rgb_range=255),
}
# settings recorded on the input's top left 6 x 6 only (x8 on 12 x 12 would be a 221 KB output)
EDSR_SMALL_INPUT = ("edsr_x8",)
BASICSR_FROM = "edsr_x4"

SWINIR_TINY = dict(in_chans=3, img_size=8, window_size=4, img_range=1.0, depths=[2, 2], embed_dim=12,
                   num_heads=[2, 2], mlp_ratio=2, upsampler="pixelshuffle", resi_connection="1conv")
SWINIR_SETTINGS = {f"swinir_x{s}": dict(upscale=s, **SWINIR_TINY) for s in (2, 3, 4, 8)}
# name -> the fraction of the upsampler's large conv weights kept non-zero: x2 keeps a tenth, the
# larger factors fewer (x3: one 64 -> 576 conv, x4 and x8: two and three 64 -> 256 convs), so that
# every state dict file stays under 150 KB
SWINIR_KEEP = {"swinir_x2": 0.1, "swinir_x3": 0.04, "swinir_x4": 0.05, "swinir_x8": 0.03}
# the settings whose outputs go to sr_processors.npz; the others' to sr_processors_swinir.npz
SWINIR_MAIN = ("swinir_x2",)

# the official full-size models, whose state dict layouts (key names and shapes, no weights) go to
# sr_layouts.json: EDSR-baseline (16 blocks of 64 features, the edsr_baseline_x*.pt files) and
# SwinIR-M for classical SR (its 001_classicalSR_DIV2K_s48w8_SwinIR-M_x*.pth files), at every scale
EDSR_BASELINE = dict(n_resblocks=16, n_feats=64, res_scale=1.0, rgb_range=255)
SWINIR_M = dict(in_chans=3, img_size=48, window_size=8, img_range=1.0, depths=[6] * 6, embed_dim=180,
                num_heads=[6] * 6, mlp_ratio=2, upsampler="pixelshuffle", resi_connection="1conv")
SCALES = (2, 3, 4, 8)


def edsr_input() -> np.ndarray:
  return np.random.default_rng(0).random((2, 12, 12, 3)).astype(np.float32)


def swinir_input() -> np.ndarray:
  return np.random.default_rng(1).random((2, 8, 8, 3)).astype(np.float32)


def seed_weights(model: torch.nn.Module, seed: int, keep: float = 0.1) -> None:
  """Default init from `seed`, then biases and norm weights moved off 0 and 1 (buffers untouched).

  SwinIR's too-small initial values are redrawn (see the module docstring): Linear weights from
  N(0, 1/fan_in), relative position bias tables from N(0, 0.5), and convs of over 50k weights made
  sparse on a 1/64 grid, a fraction `keep` of their weights non-zero.
  """
  g = torch.Generator().manual_seed(seed + 1000)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or p.ndim == 1:
        p.add_(torch.empty(p.shape).uniform_(-0.2, 0.2, generator=g))
      elif "relative_position_bias_table" in name:
        p.copy_(torch.empty(p.shape).normal_(0.0, 0.5, generator=g))
    for module in model.modules():
      if isinstance(module, torch.nn.Linear) and hasattr(model, "layers"):  # SwinIR
        w = module.weight
        w.copy_(torch.empty(w.shape).normal_(0.0, w.shape[1] ** -0.5, generator=g))
      if isinstance(module, torch.nn.Conv2d) and module.weight.numel() > 50_000:
        w = module.weight
        keep_mask = torch.rand(w.shape, generator=g) < keep
        w.copy_(torch.where(keep_mask, torch.round(w * 64 * 10) / 64, torch.zeros(())))


def run_nhwc(model, x: np.ndarray, gain: float) -> np.ndarray:
  model = model.double().eval()
  with torch.no_grad():
    y = model(torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2) * gain) / gain
  return y.permute(0, 2, 3, 1).numpy().astype(np.float32)


def basicsr_edsr_keys(sd: dict, blocks: int) -> dict:
  """Official EDSR names -> BasicSR's (archs/edsr_arch.py), MeanShift tensors dropped."""
  out = {}
  for k, v in sd.items():
    parts = k.split(".")
    if parts[0] in ("sub_mean", "add_mean"):
      continue
    if parts[0] == "head":
      nk = f"conv_first.{parts[-1]}"
    elif parts[0] == "body" and int(parts[1]) == blocks:
      nk = f"conv_after_body.{parts[-1]}"
    elif parts[0] == "body":
      nk = f"body.{parts[1]}.{'conv1' if parts[3] == '0' else 'conv2'}.{parts[-1]}"
    elif k.startswith("tail.0."):
      nk = f"upsample.{parts[2]}.{parts[-1]}"
    elif k.startswith("tail.1."):
      nk = f"conv_last.{parts[-1]}"
    else:
      raise KeyError(k)
    out[nk] = v
  return out


def make_edsr(code_dir: str, outputs: dict) -> None:
  sys.path.insert(0, code_dir)
  from model import edsr  # the official src/model/edsr.py

  x = edsr_input()
  outputs["edsr_input"] = x
  for seed, (name, opts) in enumerate(EDSR_SETTINGS.items()):
    args = edsr_args(opts["scale"], opts)
    torch.manual_seed(seed)
    model = edsr.EDSR(args)
    seed_weights(model, seed)
    for p in ("sub_mean", "add_mean"):  # keep MeanShift exactly the constants the official code sets
      ref = edsr.common.MeanShift(args.rgb_range, sign=1 if p == "add_mean" else -1)
      getattr(model, p).load_state_dict(ref.state_dict())
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(sd, OUT / f"{name}.pt")
    if name == BASICSR_FROM:
      torch.save({"params": basicsr_edsr_keys(sd, opts["n_resblocks"])}, OUT / f"{name}_basicsr.pth")
    outputs[name] = run_nhwc(model, x[:, :6, :6] if name in EDSR_SMALL_INPUT else x, float(opts["rgb_range"]))


def make_swinir(code_dir: str, outputs: dict, swinir_outputs: dict) -> None:
  """SwinIR at x2, x3, x4 and x8: state dicts as .npz, outputs on swinir_input (x2 also on its 6x7 crop)."""
  sys.path.insert(0, code_dir)
  import network_swinir  # the official models/network_swinir.py

  x = swinir_input()
  outputs["swinir_input"] = x
  for seed, (name, opts) in enumerate(SWINIR_SETTINGS.items()):
    torch.manual_seed(100 + seed)
    model = network_swinir.SwinIR(**opts)
    seed_weights(model, 100 + seed, SWINIR_KEEP[name])
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    np.savez_compressed(OUT / f"{name}_state_dict.npz", **sd)
    out = outputs if name in SWINIR_MAIN else swinir_outputs
    out[name] = run_nhwc(model, x, 1.0)
    if name == "swinir_x2":  # a size no multiple of the window: the official forward reflect-pads, then crops
      out[f"{name}_6x7"] = run_nhwc(model, x[:, :6, :7], 1.0)


def edsr_args(scale: int, opts: dict) -> types.SimpleNamespace:
  return types.SimpleNamespace(n_resblocks=opts["n_resblocks"], n_feats=opts["n_feats"], scale=[scale],
                               rgb_range=opts["rgb_range"], n_colors=3, res_scale=opts["res_scale"])


def layout(model: torch.nn.Module) -> list:
  """[[key, shape], ...] of every tensor in the model's state dict, in its order."""
  return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def make_layouts(edsr_dir: str, swinir_dir: str) -> None:
  """sr_layouts.json: {setting: {"options": the official constructor's, "keys": layout}} for
  EDSR-baseline and SwinIR-M at x2, x3, x4 and x8 (their drawn weights are not kept)."""
  import json
  sys.path.insert(0, edsr_dir)
  sys.path.insert(0, swinir_dir)
  from model import edsr
  import network_swinir
  out = {}
  for s in SCALES:
    out[f"edsr_baseline_x{s}"] = dict(options=dict(scale=s, **EDSR_BASELINE),
                                      keys=layout(edsr.EDSR(edsr_args(s, EDSR_BASELINE))))
    out[f"swinir_m_x{s}"] = dict(options=dict(upscale=s, **SWINIR_M),
                                 keys=layout(network_swinir.SwinIR(upscale=s, **SWINIR_M)))
  # one line per state dict entry
  text = "{\n" + ",\n".join(
      f'"{name}": {{"options": {json.dumps(e["options"])}, "keys": [\n' + ",\n".join(json.dumps(k) for k in e["keys"])
      + "\n]}" for name, e in out.items()) + "\n}"
  assert json.loads(text) == out
  (HERE / "sr_layouts.json").write_text(text + "\n")
  print(f"sr_layouts.json: {len(out)} layouts, {len(text) // 1024} KB")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--edsr", required=True, help="folder with the official model/edsr.py and model/common.py")
  ap.add_argument("--swinir", help="folder with the official network_swinir.py")
  ap.add_argument("--layouts-only", action="store_true",
                  help="write sr_layouts.json only (needs --swinir), leaving the other fixtures as they are")
  a = ap.parse_args()
  if a.layouts_only:
    if not a.swinir:
      ap.error("--layouts-only needs --swinir")
    make_layouts(a.edsr, a.swinir)
    return
  OUT.mkdir(exist_ok=True)
  torch.set_num_threads(1)
  outputs, swinir_outputs = {}, {}
  make_edsr(a.edsr, outputs)
  if a.swinir:
    make_swinir(a.swinir, outputs, swinir_outputs)
    make_layouts(a.edsr, a.swinir)
    np.savez_compressed(HERE / "sr_processors_swinir.npz", **swinir_outputs)
  np.savez_compressed(HERE / "sr_processors.npz", **outputs)
  for k, v in {**outputs, **swinir_outputs}.items():
    print(f"{k}: {v.shape} max |y| {np.abs(v).max():.4f}")


if __name__ == "__main__":
  main()
