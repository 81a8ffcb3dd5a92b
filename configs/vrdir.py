"""VRD-IR and its baselines on one mixture of degradations, on the bundled photos.

    python -m rajax.train --config configs/vrdir.py --workdir runs/vrdir/vrdir              # VRD-IR
    python -m rajax.train --config configs/vrdir.py:mode=ra --workdir runs/vrdir/ra         # RA restorer
    python -m rajax.train --config configs/vrdir.py:mode=plain --workdir runs/vrdir/plain   # plain restorer
    python -m rajax.demo.vrdir --workdir runs/vrdir_demo     # all three, evaluated (seen and unseen degradations)

Every run trains on the same mixture (task "mixture", `rajax.degrade.mixture`): each training crop
gets one of the SEEN families, drawn from the run's seed and the crop's position, so the plain and
RA restorers see exactly the degradations VRD-IR sees. UNSEEN are held out for evaluation
(`rajax.evaluate`'s `degradations` table): a noise, a blur, a haze-like loss of contrast and a
digital degradation VRD-IR and the baselines never trained on.

VRD-IR: phi = the recognizer's (MobileNetV2, real ImageNet weights) feature `phi` ("stem": 32
channels at stride 2, the default; "stage1": 16 channels at stride 2; "stage2": 24 at stride 4), SAD
pre-trained for the first sad_frac of the steps, then ISE (rajax.methods.vrdir), both with Adam at 2e-3. Plain and RA: a small SRResNet (scale 1,
starting as the identity) with the MSE, and the MSE plus lam * CE of MobileNetV2 on its output with
labels MobileNetV2's own top-1 on the clean crop (the photos have none), lam 3e-4 (configs/demo.py's),
both with Adam at 1e-3.

Args: mode (vrdir | plain | ra), phi (a feature name of the recognizer), steps (training steps of
every run; VRD-IR's first sad_frac of them pre-train SAD), sad_frac, lam (RA's weight), crop, quick (a
few steps on small crops: checks the machinery), split (the photos evaluated on: validation | test).
"""

import ml_collections

from rajax import config as config_lib
from rajax.data import photos

# (name, severity): rajax.degrade.DEGRADATION_FAMILIES (ImageNet-C corruptions, and rain and low light)
SEEN = (("gaussian_noise", 3), ("defocus_blur", 3), ("fog", 3), ("rain", 3), ("jpeg_compression", 3),
        ("low_light", 3))
UNSEEN = (("shot_noise", 3), ("motion_blur", 3), ("contrast", 3), ("pixelate", 3))
MODES = ("vrdir", "plain", "ra")
QUICK_STEPS, QUICK_CROP, QUICK_EVAL_PHOTOS = 6, 32, 3


def phi_geometry(recognizer: str, layer: str, crop: int) -> tuple[int, int]:
  """(stride, channels) of `recognizer`'s feature `layer` at `crop` (its bundled weights, cached)."""
  from rajax.methods import vrdir
  from rajax.models import recognizer as build
  return vrdir.phi_geometry(build(recognizer, None), layer, (crop, crop, 3))


def get_config(arg=None):
  a = config_lib.parse_arg(arg, mode="vrdir", phi="stem", steps=320, sad_frac=0.4, lam=3e-4, crop=96,
                           quick=False, split="test", recognizer="mobilenet_v2")
  if a.mode not in MODES:
    raise config_lib.ConfigError(f"configs/vrdir.py: mode={a.mode!r} is not one of {', '.join(MODES)}.")
  c = config_lib.base(task="mixture", method=a.mode, recognizer=a.recognizer)
  c.degrade.families = SEEN
  c.recognizer.weights = None            # the bundled ImageNet weights
  c.labels = "recognizer"                # no ground truth: R's top-1 on the clean crop
  crop = QUICK_CROP if a.quick else a.crop
  steps = QUICK_STEPS if a.quick else a.steps

  if a.mode == "vrdir":
    stride, channels = phi_geometry(a.recognizer, a.phi, crop)
    c.processor = ml_collections.ConfigDict(dict(name="vrdir", stride=stride, in_channels=channels, channels=64,
                                                 branches=len(SEEN), ise_channels=32))
    c.method.phi_layer = a.phi
    c.method.sad_steps = max(1, int(round(a.sad_frac * steps)))
    c.optim.processor.lr = 2e-3
  else:
    c.processor.blocks = 2
    c.processor.channels = 16
    c.processor.input_skip = True        # starts as the identity: short trainings converge
    c.processor.outer_kernel = 5
    c.optim.processor.lr = 1e-3
    if a.mode == "ra":
      c.method.lam = float(a.lam)
  c.optim.processor.schedule = "constant"   # VRD-IR's phases each start their own optimizer: no shared decay point

  c.data.source = "photos"
  if a.split not in ("validation", "test"):
    raise config_lib.ConfigError(f"configs/vrdir.py: split={a.split!r} is not validation or test.")
  c.data.eval_split = a.split
  c.data.crop = crop
  c.data.photos.short_side = crop
  c.data.photos.scales = (1.0, 1.5, 2.25)
  c.data.photos.eval_scales = (1.17, 1.5)
  c.data.photos.grid = 2
  if a.quick:
    c.data.photos.eval_scales = (1.17,)
    c.data.photos.grid = 1
    c.data.photos.names = photos.split_names(a.split)[:QUICK_EVAL_PHOTOS]
  c.data.resize = 0
  c.data.batch_size = 8 if a.quick else 16
  c.data.eval_batch_size = 8 if a.quick else 16
  c.data.threads = 2
  per_repeat = len(photos.TRAIN) * len(c.data.photos.scales)
  c.data.photos.repeats = max(1, -(-steps * c.data.batch_size // per_repeat))
  c.total_steps = steps
  c.log_every = 2 if a.quick else 20
  c.eval_every = 0                       # at the end only
  c.ckpt_every = 100
  return c
