"""Makes the fixtures that pin rajax's proxy codecs (rajax/models/proxy_codec.py) to CompressAI.

Run once, with torch and CompressAI 1.2.8 in the interpreter:

    /tmp/torchvenv/bin/python tests/reference/make_proxy_codecs.py

Builds CompressAI's `bmshj2018-hyperprior` (ScaleHyperprior) and `mbt2018`
(JointAutoregressiveHierarchicalPriors) at a small size (N=8, M=12), draws their weights from a
fixed seed (torch's default initialisation) and then moves every parameter off its trivial start:

    conv / deconv biases           + U(-0.1, 0.1)
    GDN beta                       reparametrised U(0.5, 1.5); two raw values set below the bound
    GDN gamma                      reparametrised 0.1 I + U(0, 0.05); a few raw values negative
    entropy bottleneck matrices    + N(0, 0.3);  factors U(-0.5, 0.5)
    entropy bottleneck quantiles   medians U(-0.8, 0.8), lower/upper median -/+ U(4, 10)

(the raw GDN values below the bound exercise the non-negative reparametrisation's clamp, the
non-integer medians the rounding around medians in evaluation). It saves each state dict under
proxy_codecs/: the hyperprior as a bare `torch.save(model.state_dict())` .pth, mbt2018 after
its entropy bottleneck's `update()` (so those CDF buffers are filled, as in CompressAI's released
files; the Gaussian conditional's table would add 800 KB and stays empty) wrapped as
CompressAI's training script saves a checkpoint ({"epoch", "state_dict", "loss"}) in a .pth.tar.

For one fixed input (2 x 64 x 64 x 3 NHWC in [0, 1], np.random.default_rng(0); 64 is both
codecs' downsampling factor) it records the eval-mode forward pass, computed in float64 and
stored as float32 NHWC in proxy_codecs.npz: `<name>/x_hat`, `<name>/likelihoods_y`,
`<name>/likelihoods_z`, the latents `<name>/y`, `<name>/z`, and `<name>/bpp` (sum of -log2 of both
likelihoods over batch * H * W, as CompressAI's RateDistortionLoss), `<name>/aux_loss` (the
entropy bottleneck's quantile loss, `model.aux_loss()`), plus the shared `input`.
"""

import pathlib

import numpy as np
import torch
from compressai.models import JointAutoregressiveHierarchicalPriors, ScaleHyperprior
from compressai.layers import GDN

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "proxy_codecs"

N, M = 8, 12
SETTINGS = {
    "bmshj2018-hyperprior": (ScaleHyperprior, 0, "bmshj2018_hyperprior.pth"),
    "mbt2018": (JointAutoregressiveHierarchicalPriors, 1, "mbt2018.pth.tar"),
}


def fixed_input() -> np.ndarray:
  return np.random.default_rng(0).random((2, 64, 64, 3)).astype(np.float32)


def perturb(model: torch.nn.Module, seed: int) -> None:
  g = torch.Generator().manual_seed(seed + 100)

  def u(shape, lo, hi):
    return torch.empty(shape).uniform_(lo, hi, generator=g)

  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith(".bias") and not name.startswith("entropy_bottleneck"):
        p.add_(u(p.shape, -0.1, 0.1))
    for module in model.modules():
      if isinstance(module, GDN):
        c = module.beta.shape[0]
        beta = module.beta_reparam.init(u((c,), 0.5, 1.5))
        beta[:2] = -0.01  # below the lower bound: the reparametrisation clamps it to beta_min
        module.beta.copy_(beta)
        gamma = module.gamma_reparam.init(0.1 * torch.eye(c) + u((c, c), 0.0, 0.05))
        gamma[0, 1] = -0.2
        gamma[2, 0] = -0.05
        module.gamma.copy_(gamma)
    eb = model.entropy_bottleneck
    for m in eb.matrices:
      m.add_(torch.empty(m.shape).normal_(0.0, 0.3, generator=g))
    for f in eb.factors:
      f.copy_(u(f.shape, -0.5, 0.5))
    c = eb.quantiles.shape[0]
    med = u((c,), -0.8, 0.8)
    eb.quantiles[:, 0, 1] = med
    eb.quantiles[:, 0, 0] = med - u((c,), 4.0, 10.0)
    eb.quantiles[:, 0, 2] = med + u((c,), 4.0, 10.0)


def nhwc(t: torch.Tensor) -> np.ndarray:
  return t.permute(0, 2, 3, 1).numpy().astype(np.float32)


def main() -> None:
  OUT.mkdir(exist_ok=True)
  x = fixed_input()
  outputs = {"input": x}
  for name, (cls, seed, filename) in SETTINGS.items():
    torch.manual_seed(seed)
    model = cls(N, M)
    perturb(model, seed)
    model.eval()
    if name == "mbt2018":
      model.entropy_bottleneck.update()
      state = {"epoch": 3, "state_dict": model.state_dict(), "loss": 1.25}
    else:
      state = model.state_dict()
    torch.save(state, OUT / filename)
    ref = model.double()
    with torch.no_grad():
      xt = torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2)
      out = ref(xt)
      y = ref.g_a(xt)
      z = ref.h_a(torch.abs(y) if name == "bmshj2018-hyperprior" else y)
    lik = out["likelihoods"]
    bpp = sum(torch.log2(v).sum() for v in lik.values()) / -(x.shape[0] * x.shape[1] * x.shape[2])
    outputs[f"{name}/x_hat"] = nhwc(out["x_hat"])
    outputs[f"{name}/likelihoods_y"] = nhwc(lik["y"])
    outputs[f"{name}/likelihoods_z"] = nhwc(lik["z"])
    outputs[f"{name}/y"] = nhwc(y)
    outputs[f"{name}/z"] = nhwc(z)
    outputs[f"{name}/bpp"] = np.float32(bpp.item())
    outputs[f"{name}/aux_loss"] = np.float32(ref.aux_loss().item())
    print(name, "bpp", bpp.item(), "x_hat range", out["x_hat"].min().item(), out["x_hat"].max().item(),
          "min lik y", lik["y"].min().item())
  np.savez_compressed(HERE / "proxy_codecs.npz", **outputs)


if __name__ == "__main__":
  main()
