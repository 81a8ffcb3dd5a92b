"""NPP's settings (Lu et al., "Preprocessing Enhanced Image Compression for Machine Vision"): a
pre-processor before a standard codec, trained through a proxy codec, in the paper's three stages.

    python -m rajax.train --config configs/npp.py:task=cls,stage=proxy_rd --workdir runs/npp_proxy_rd
    python -m rajax.train --config configs/npp.py:task=cls,stage=proxy_codec --workdir runs/npp_proxy \\
        --config.init_codec=runs/npp_proxy_rd/codec.msgpack
    python -m rajax.train --config configs/npp.py:task=cls,stage=fixed --workdir runs/npp_fixed \\
        --config.method.codec_weights=runs/npp_proxy/codec.msgpack
    python -m rajax.train --config configs/npp.py:task=cls,stage=adaptive --workdir runs/npp \\
        --config.method.codec_weights=runs/npp_proxy/codec.msgpack \\
        --config.init_processor=runs/npp_fixed/processor.msgpack

Args: task (cls: ResNet-50 on ImageNet; det: FCOS ResNet-50 FPN on COCO 2017), stage, codec (a
`rajax.codecs` name; "hevc", HEVC intra through libheif, stands in for BPG, which no registry here
has), proxy (mbt2018, the paper's, or bmshj2018-hyperprior).

Stages (the paper's schedule, Adam 1e-4 dropping to 1e-5 near the end of each):
  proxy_rd     the proxy C trained rate-distortion on clean images (CompressAI's loss; the paper
               starts from a pretrained Minnen 2018 model instead: pass one as config.init_codec)
  proxy_codec  C fine-tuned towards the real codec at the middle quality (paper Eq. 2), 400k steps
  fixed        P (no quality layers) at the middle quality and its lam (QP 34, lam 2), 120k steps
  adaptive     P with its quality layers, one (quality, lam) pair drawn per step, 100k steps, from
               the fixed stage's processor (its file has no quality layers: they start fresh, every
               scale exactly 1, so the adaptive P starts as the fixed one)
The (quality, lam) pairs: the paper's QP 28/31/34/37/41 with lam 0.5/1/2/4/8 for HEVC; for the
codecs whose quality rises with the rate, five qualities from high to low with the same lams.
"""

from ml_collections import config_dict

from rajax import config as config_lib
from rajax import optim

STAGES = {"proxy_rd": "proxy_rd", "proxy_codec": "proxy_codec", "fixed": "npp", "adaptive": "npp"}
STEPS = {"proxy_rd": (400_000, 320_000), "proxy_codec": (400_000, 320_000), "fixed": (120_000, 80_000),
         "adaptive": (100_000, 60_000)}
LAMS = (0.5, 1.0, 2.0, 4.0, 8.0)
QUALITIES = {"hevc": (28, 31, 34, 37, 41), "jpeg": (75, 50, 30, 20, 10), "webp": (75, 50, 30, 20, 10),
             "avif": (75, 60, 45, 30, 15)}
TASKS = {"cls": ("resnet50", 1000), "det": ("fcos_resnet50_fpn", 91)}
BATCH = 16


def get_config(arg: str | None = None):
  a = config_lib.parse_arg(arg, task="cls", stage="adaptive", codec="hevc", proxy="mbt2018")
  if a.stage not in STAGES:
    raise config_lib.ConfigError(f"configs/npp.py: stage={a.stage!r} is not one of {', '.join(STAGES)}.")
  if a.task not in TASKS:
    raise config_lib.ConfigError(f"configs/npp.py: task={a.task!r} is not one of {', '.join(TASKS)}.")
  if a.codec not in QUALITIES:
    raise config_lib.ConfigError(f"configs/npp.py: codec={a.codec!r} is not one of {', '.join(QUALITIES)}.")
  net, classes = TASKS[a.task]
  c = config_lib.base(task="codec", method=STAGES[a.stage], recognizer=net)
  c.recognizer.num_classes = classes
  c.codec = config_dict.ConfigDict(dict(name=a.proxy, N=192, M=192))
  pairs = tuple(zip(QUALITIES[a.codec], LAMS))
  middle = pairs[2]
  c.method.codec = a.codec
  if a.stage in ("fixed", "adaptive"):
    c.method.pairs = pairs if a.stage == "adaptive" else (middle,)
    c.method.quality = middle[0]
    c.processor = config_dict.ConfigDict(dict(name="npp", adaptive=a.stage == "adaptive"))
  elif a.stage == "proxy_codec":
    c.method.quality = middle[0]
  c.data.source = "tfds"
  c.data.batch_size = BATCH
  if a.task == "cls":
    c.data.name, c.data.train_split, c.data.eval_split = "imagenet2012", "train", "validation"
    c.data.resize, c.data.crop = 256, 256
    examples = 1_281_167
  else:
    c.data.name, c.data.train_split, c.data.eval_split = "coco/2017", "train", "validation"
    c.data.resize, c.data.crop = 0, 512
    examples = 118_287
  steps, drop = STEPS[a.stage]
  per_epoch = examples / BATCH
  c.total_steps = steps
  network = "processor" if a.stage in ("fixed", "adaptive") else "codec"
  c.optim[network] = optim.section(name="adam", lr=1e-4, schedule="step", decay_epochs=(drop / per_epoch,),
                                   decay_factor=0.1)
  c.ckpt_every = 5000
  return c
