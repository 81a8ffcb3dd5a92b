"""NPP offline, on the photos: a pre-processor before JPEG, trained with MobileNetV2 as the recognizer.

    python -m rajax.demo.npp --workdir runs/npp_demo                # every stage, then the rate-accuracy report
    python -m rajax.train --config configs/npp_demo.py:stage=proxy_rd --workdir runs/npp_demo/proxy_rd

NPP's schedule (configs/npp.py) in miniature, on random crops of the training photos of
rajax.data.photos, with the real MobileNetV2 (bundled ImageNet weights) as the frozen recognizer and
its own top-1 on the clean crop as the label:

  proxy_rd     the proxy codec C (Minnen et al. 2018, narrow) trained rate-distortion on clean crops
  proxy_codec  C fine-tuned towards JPEG at the middle quality (NPP's Eq. 2)
  fixed        P at the middle (quality, lam) pair, the real JPEG in the forward pass, C in the backward;
               P starts at the identity (processor.identity_init: NPP trains P from scratch for 400k
               steps, which a few hundred steps on two cores cannot, so the miniature starts where P +
               JPEG is JPEG alone)
  adaptive     P with its quality layers, one of the five (quality, lam) pairs drawn per step

Args: stage, quick (a few steps each: checks the machinery), split (validation | test: the photos the
final evaluation of a run reads; the demo evaluates itself).
"""

from ml_collections import config_dict

from rajax import config as config_lib
from rajax.data import photos

STAGES = {"proxy_rd": "proxy_rd", "proxy_codec": "proxy_codec", "fixed": "npp", "adaptive": "npp"}
STEPS = {"proxy_rd": 150, "proxy_codec": 100, "fixed": 100, "adaptive": 150}
QUICK_STEPS = {s: 3 for s in STEPS}
CODEC = "jpeg"
# The paper's lams 0.5..8 with the task loss in nats and the rate in bits per pixel; qualities from
# high rate to low, as configs/npp.py pairs them for JPEG.
PAIRS = ((75, 0.5), (50, 1.0), (30, 2.0), (20, 4.0), (10, 8.0))
CHANNELS = (16, 32, 64, 128, 256)   # NPP's UNet at half width (the paper's 32..512: 9.4 M parameters)
PROXY = dict(name="mbt2018", N=48, M=64)
CROP = 128


def get_config(arg=None):
  a = config_lib.parse_arg(arg, stage="adaptive", quick=False, split="test")
  if a.stage not in STAGES:
    raise config_lib.ConfigError(f"configs/npp_demo.py: stage={a.stage!r} is not one of {', '.join(STAGES)}.")
  if a.split not in ("validation", "test"):
    raise config_lib.ConfigError(f"configs/npp_demo.py: split={a.split!r} is not validation or test.")
  c = config_lib.base(task="codec", method=STAGES[a.stage], recognizer="mobilenet_v2")
  c.recognizer.weights = None           # the bundled ImageNet weights
  c.labels = "recognizer"               # no ground truth: R's top-1 on the clean crop
  c.codec = config_dict.ConfigDict(dict(PROXY))
  c.processor = config_dict.ConfigDict(dict(name="npp", adaptive=a.stage == "adaptive", channels=CHANNELS,
                                                  identity_init=True))
  middle = PAIRS[2]
  if a.stage in ("proxy_codec", "fixed", "adaptive"):
    c.method.codec = CODEC
    c.method.quality = middle[0]
  if a.stage in ("fixed", "adaptive"):
    c.method.pairs = PAIRS if a.stage == "adaptive" else (middle,)

  c.data.source = "photos"
  c.data.eval_split = a.split
  c.data.crop = CROP
  c.data.photos.short_side = CROP
  c.data.photos.scales = (1.0, 1.5, 2.25, 3.375)
  c.data.photos.eval_scales = (1.5,)
  c.data.photos.grid = 2
  c.data.photos.names = photos.split_names(a.split)[:4]   # each run's own final look; the demo evaluates itself
  c.data.resize = 0
  c.data.batch_size = 8
  c.data.eval_batch_size = 16
  c.data.threads = 2

  steps = (QUICK_STEPS if a.quick else STEPS)[a.stage]
  per_repeat = len(photos.TRAIN) * len(c.data.photos.scales)
  c.data.photos.repeats = -(-steps * c.data.batch_size // per_repeat)
  c.num_epochs = 1.0
  c.total_steps = steps
  network = "codec" if a.stage.startswith("proxy") else "processor"
  # Adam as the paper's stages; the proxy's rate-distortion training at 1e-3 to converge in few steps
  c.optim[network].lr = 1e-3 if a.stage == "proxy_rd" else 1e-4
  c.optim[network].decay_epochs = (0.8,)
  c.log_every = 1 if a.quick else 10
  c.eval_every = 0
  c.ckpt_every = 50
  return c
