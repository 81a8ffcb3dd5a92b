"""The offline demo: recognition-aware processing on real photos with real ImageNet classifiers.

    python -m rajax.demo --workdir runs/demo                     # all runs, then the report
    python -m rajax.train --config configs/demo.py:task=sr,stage=pretrain --workdir runs/demo/sr/pretrain
    python -m rajax.train --config configs/demo.py:task=sr,mode=ra --workdir runs/demo/sr/ra \\
        --config.init_processor=runs/demo/sr/pretrain/processor.msgpack

P is a small SRResNet trained on random crops of the training photos of rajax.data.photos (those
that ship with scikit-image, scikit-learn, matplotlib and two Debian packages, split by photo into
train / validation / test). R is MobileNetV2 with its real ImageNet weights; the labels are R's own
top-1 classes on the clean crops. `recognizer=centernet_mobilenetv3` trains P with the real COCO
detector CenterNet as R instead (detection RA: whole training photos on a canvas, the targets
CenterNet's own detections on the clean photo).

To fit a 2-core CPU, each task first trains P with the plain loss ("pretrain" stage), and every
method (plain included, for fairness) then continues from that P for the same number of steps
("finetune" stage, the default).

Args: task (sr | denoise | jpeg), mode (plain | ra | unsupervised | transformer, or an Appendix A method),
stage (pretrain | finetune), quick (bool: a few steps, to check the machinery), lam (the recognition
weight; negative: the mode's default below; the demo trains RA and unsupervised RA at each value of
rajax.demo.LAM_GRID and keeps the one that does best on the validation photos), recognizer (mobilenet_v2 |
centernet_mobilenetv3), split (the photos a run evaluates on: validation | test), min_confidence (RA's
recognition term only on crops R recognises on the clean crop with at least this top-1 probability).
"""

from rajax import config as config_lib
from rajax.data import photos

STEPS = {"pretrain": 200, "finetune": 52}
QUICK_STEPS = {"pretrain": 4, "finetune": 4}
QUICK_EVAL_PHOTOS = 5                    # --quick evaluates on the first five photos of the split
DETECTOR = "centernet_mobilenetv3"
DETECTION_CANVAS = {False: 192, True: 128}   # the detection run's whole photos, resized and padded (CenterNet reads 512)
DETECTION_STEPS = {False: 24, True: 2}
DETECTION_BATCH = {False: 4, True: 2}


def get_config(arg=None):
  a = config_lib.parse_arg(arg, task="sr", mode="ra", stage="finetune", quick=False, lam=-1.0,
                           recognizer="mobilenet_v2", split="test", min_confidence=0.0)
  if a.stage not in STEPS:
    raise config_lib.ConfigError(f"configs/demo.py: stage={a.stage!r} is not one of {', '.join(STEPS)}.")
  if a.recognizer not in ("mobilenet_v2", DETECTOR):
    raise config_lib.ConfigError(f"configs/demo.py: recognizer={a.recognizer!r} is not mobilenet_v2 or {DETECTOR}.")
  if a.stage == "pretrain" and a.mode != "plain":
    a.mode = "plain"                     # pretraining is plain processing whatever the mode
  c = config_lib.base(task=a.task, method=a.mode, recognizer=a.recognizer)
  c.recognizer.weights = None            # the bundled ImageNet weights (the fetched COCO graph for CenterNet)
  c.labels = "recognizer"                # no ground truth: R's top-1 on the clean crop

  # Small enough for the demo's 27 runs on a 2-core CPU, two at a time. SR runs its body at 1/4
  # resolution, so it can afford twice the channels of the full-resolution denoising/JPEG P.
  c.processor.blocks = 2
  c.processor.channels = 32 if a.task == "sr" else 16
  c.processor.input_skip = True          # starts as bicubic / identity: short trainings converge
  c.processor.outer_kernel = 5           # the paper's 9x9 head and tail cost a third of P's time here
  c.transformer.blocks = 2
  c.transformer.channels = 8
  c.transformer.input_skip = True

  # Recognition loss weights: the demo trains RA and unsupervised RA at each weight of its grid
  # (rajax.demo.LAM_GRID) and keeps the best on the validation photos, so these defaults, the middle of
  # the grids, serve only runs outside the demo and the Appendix A alternatives. Unsupervised RA keeps
  # the paper's ratio to RA (10 : 1e-3); T, trained on the recognition loss alone with Adam, does not
  # depend on its weight.
  ra = 3e-4
  # The Appendix A alternatives (opt-in: rajax.demo --modes) use RA's weight for their recognition
  # or feature term, MobileNetV2's stride-16 features ("stage4") for the perceptual loss, and fine-tune
  # R from its ImageNet weights with SGD with momentum where they train it, at 1e-4, with its BatchNorm
  # statistics frozen: in training mode (the paper's, on ImageNet batches) 52 steps on batches of 16
  # crops of ten photos replaced MobileNetV2's running statistics, and its agreement with itself on
  # clean crops fell to 3-4%.
  lams = {"plain": 0.0, "ra": ra, "unsupervised": 1e4 * ra, "transformer": 1e-2}
  if "lam" in c.method:
    c.method.lam = float(a.lam) if a.lam >= 0 else lams.get(a.mode, ra)
  if "layers" in c.method:
    c.method.layers = ("stage4",)
  if "min_confidence" in c.method:       # the recognition term only on crops R recognises this confidently
    c.method.min_confidence = float(a.min_confidence)
  if "recognizer_bn" in c.method:
    c.method.recognizer_bn = "frozen"

  c.data.source = "photos"
  if a.split not in ("validation", "test"):
    raise config_lib.ConfigError(f"configs/demo.py: split={a.split!r} is not validation or test.")
  c.data.eval_split = a.split
  # Training photos at four scales (short side 1x to 3.4x the crop): a crop shows a whole photo
  # or one detail of it, so the 23 training photos give many different views. Pretraining uses
  # smaller crops (P is fully convolutional). Evaluation: a 3x3 grid of crops at short sides
  # 1.17x, 1.5x and 1.83x the crop, and their mirrors: 14 test photos x 3 x 9 x 2 = 756 crops
  # (8 validation photos: 432). Crops of one photo overlap; more photos, not more crops of each,
  # are what makes a difference measurable.
  small = a.quick or a.stage == "pretrain"
  c.data.crop = 48 if small else 96
  c.data.photos.short_side = c.data.crop
  c.data.photos.scales = (1.0, 1.5, 2.25, 3.375)
  c.data.photos.eval_scales = (1.17, 1.5, 1.83)
  c.data.photos.grid = 3
  if a.quick:                            # 40 test crops: the quick run checks the machinery only
    c.data.photos.eval_scales = (1.17,)
    c.data.photos.grid = 2
    c.data.photos.names = photos.split_names(a.split)[:QUICK_EVAL_PHOTOS]
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
  if "tdp_layers" in c.method and a.recognizer == "mobilenet_v2":
    c.method.tdp_layers = ("head",)      # SR4IR's TDP on the last feature map before pooling (ResNet's layer4)
  if "warmup_epochs" in c.method:
    c.method.warmup_epochs = 0.1         # SR4IR's TDP warm-up: the first tenth of training, as in its settings
  if a.recognizer == DETECTOR:
    detection_run(c, a)
  return c


def detection_run(c, a):
  """P trained with CenterNet as R: whole training photos resized into a DETECTION_CANVAS canvas
  (padded, flipped), the targets CenterNet's detections on the clean canvas scoring >= 0.5."""
  from ml_collections import config_dict

  from rajax.data import detection as detection_data
  if a.stage != "finetune":
    raise config_lib.ConfigError("configs/demo.py: the detection run fine-tunes the classification demo's "
                                 "pretrained P (stage=finetune).")
  c.recognizer.num_classes = None       # the detector's own (COCO's 80)
  canvas = DETECTION_CANVAS[bool(a.quick)]
  c.data.detection = config_dict.ConfigDict(dict(
      detection_data.config_defaults(), size=(canvas, canvas), max_boxes=32))
  c.data.crop = canvas
  c.data.batch_size = c.data.eval_batch_size = DETECTION_BATCH[bool(a.quick)]
  steps = DETECTION_STEPS[bool(a.quick)]
  c.data.photos.repeats = -(-steps * c.data.batch_size // len(photos.TRAIN))
  c.num_epochs = 1.0
  if a.quick:   # the quick run checks the machinery: `steps` steps, not the epoch of whole photos
    c.total_steps = steps

