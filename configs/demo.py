"""The offline demo: recognition-aware processing on real photos with real ImageNet classifiers.

    python -m rajax.demo --workdir runs/demo                     # all runs, then the report
    python -m rajax.train --config configs/demo.py:task=sr,stage=pretrain --workdir runs/demo/sr/pretrain
    python -m rajax.train --config configs/demo.py:task=sr,mode=ra --workdir runs/demo/sr/ra \\
        --config.init_processor=runs/demo/sr/pretrain/processor.msgpack

P is a small SRResNet trained on random crops of the photos that ship with scikit-image,
scikit-learn and matplotlib (rajax.data.photos; held-out photos are never trained on). R is
MobileNetV2 with its real ImageNet weights; the labels are R's own top-1 classes on the clean crops.

To fit a 2-core CPU, each task first trains P with the plain loss ("pretrain" stage), and every
method (plain included, for fairness) then continues from that P for the same number of steps
("finetune" stage, the default).

Args: task (sr | denoise | jpeg), mode (plain | ra | unsupervised | transformer, or an Appendix A method),
stage (pretrain | finetune), quick (bool: a few steps, to check the machinery).
"""

from rajax import config as config_lib
from rajax.data import photos

STEPS = {"pretrain": 200, "finetune": 52}
QUICK_STEPS = {"pretrain": 4, "finetune": 4}


def get_config(arg=None):
  a = config_lib.parse_arg(arg, task="sr", mode="ra", stage="finetune", quick=False)
  if a.stage not in STEPS:
    raise config_lib.ConfigError(f"configs/demo.py: stage={a.stage!r} is not one of {', '.join(STEPS)}.")
  if a.stage == "pretrain" and a.mode != "plain":
    a.mode = "plain"                     # pretraining is plain processing whatever the mode
  c = config_lib.base(task=a.task, method=a.mode, recognizer="mobilenet_v2")
  c.recognizer.weights = None            # the bundled ImageNet weights
  c.labels = "recognizer"                # no ground truth: R's top-1 on the clean crop

  # Small enough for 15 runs in about 7 minutes on a 2-core CPU, two at a time. SR runs its body at
  # 1/4 resolution, so it can afford twice the channels of the full-resolution denoising/JPEG P.
  c.processor.blocks = 2
  c.processor.channels = 32 if a.task == "sr" else 16
  c.processor.input_skip = True          # starts as bicubic / identity: short trainings converge
  c.processor.outer_kernel = 5           # the paper's 9x9 head and tail cost a third of P's time here
  c.transformer.blocks = 2
  c.transformer.channels = 8
  c.transformer.input_skip = True

  # Recognition loss weights, the one knob set per task: RA 3e-4 for SR and denoising (the paper's
  # 1e-3 gave about the same held-out gain in the SR miniature at a larger PSNR cost), 1e-4 for JPEG
  # (3e-4 and 1e-3 lowered held-out agreement in a JPEG miniature with 9x9 head and tail). Unsupervised RA keeps the paper's ratio to RA
  # (10 : 1e-3); T, trained on the recognition loss alone with Adam, does not depend on its weight.
  ra = {"sr": 3e-4, "denoise": 3e-4, "jpeg": 1e-4}[a.task]
  # The Appendix A alternatives (opt-in: rajax.demo --modes) use RA's weight for their recognition
  # or feature term, MobileNetV2's stride-16 features ("stage4") for the perceptual loss, and fine-tune
  # R from its ImageNet weights with SGD with momentum where they train it, at 1e-4, with its BatchNorm
  # statistics frozen: in training mode (the paper's, on ImageNet batches) 52 steps on batches of 16
  # crops of ten photos replaced MobileNetV2's running statistics, and its agreement with itself on
  # clean crops fell to 3-4%.
  lams = {"plain": 0.0, "ra": ra, "unsupervised": 1e4 * ra, "transformer": 1e-2}
  if "lam" in c.method:
    c.method.lam = lams.get(a.mode, ra)
  if "layers" in c.method:
    c.method.layers = ("stage4",)
  if "recognizer_bn" in c.method:
    c.method.recognizer_bn = "frozen"

  c.data.source = "photos"
  # Training photos at four scales (short side 1x to 3.4x the crop): a crop shows a whole photo
  # or one detail of it, so the ten training photos give many different views. Pretraining uses
  # smaller crops (P is fully convolutional). Evaluation: a 4x4 grid of crops at short sides
  # 1.17x, 1.5x and 1.83x the crop, and their mirrors: 5 held-out photos x 3 x 16 x 2 = 480 crops
  # (with 180 crops one crop was 0.56 points, and differences of 1-2 points were within chance).
  small = a.quick or a.stage == "pretrain"
  c.data.crop = 48 if small else 96
  c.data.photos.short_side = c.data.crop
  c.data.photos.scales = (1.0, 1.5, 2.25, 3.375)
  c.data.photos.eval_scales = (1.17, 1.5, 1.83)
  c.data.photos.grid = 4
  if a.quick:                            # 40 held-out crops: the quick run checks the machinery only
    c.data.photos.eval_scales = (1.17,)
    c.data.photos.grid = 2
  c.data.resize = 0                      # the source already resized the photos
  c.data.batch_size = 16
  c.data.eval_batch_size = 30
  c.data.threads = 2

  # Pretraining from scratch at 1e-3; every method then continues at the paper's 1e-4. (At 1e-3 the
  # first updates from the new recognition term wreck the pretrained P: in the SR miniature RA then
  # lost agreement even on the training photos' own crops.)
  for net in ("processor", "transformer"):
    c.optim[net].lr = 1e-3 if a.stage == "pretrain" else 1e-4
  c.optim.recognizer.lr = 1e-4
  for net in ("processor", "transformer", "recognizer"):
    c.optim[net].decay_epochs = (0.7, 0.9)   # the run is one epoch: x0.1 at 70% of it, x0.01 at 90%
  steps = (QUICK_STEPS if a.quick else STEPS)[a.stage]
  per_repeat = len(photos.TRAIN) * len(c.data.photos.scales)
  c.data.photos.repeats = -(-steps * c.data.batch_size // per_repeat)   # one epoch = `steps` batches
  c.num_epochs = 1.0
  c.log_every = 2 if a.quick else 20
  c.eval_every = 0                       # once, at the end
  c.ckpt_every = 50
  return c
