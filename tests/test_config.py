"""Config files, arguments, command-line overrides, fields that moved, and validation."""

import json
import pathlib
import subprocess
import sys

import pytest

from rajax import config as config_lib
from rajax import methods, runs, tasks
from rajax.methods import npp, ra, vrdir

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.mark.parametrize("task", ["sr", "denoise", "jpeg"])
@pytest.mark.parametrize("mode,lam", [("plain", 0.0), ("ra", 1e-3), ("unsupervised", 10.0), ("transformer", 1e-2)])
def test_imagenet_config_holds_the_paper_settings(task, mode, lam):
  c = config_lib.load(f"{CONFIGS}/imagenet.py:task={task},mode={mode},recognizer=resnet50")
  config_lib.validate(c)
  assert (c.task, c.method.name, c.recognizer.name) == (task, mode, "resnet50")
  assert ra.Settings.of(c).lam == lam
  assert (c.processor.name, c.processor.blocks, c.processor.channels) == ("srresnet", 5, 64)
  assert (c.transformer.name, c.transformer.blocks) == ("resnet_generator", 6)
  for net in ("processor", "transformer"):
    o = c.optim[net]
    assert (o.name, o.lr, tuple(o.decay_epochs), o.decay_factor, o.schedule) == ("adam", 1e-4, (4, 5), 0.1, "step")
  assert (c.data.batch_size, c.num_epochs, c.data.resize, c.data.crop) == (20, 6, 256, 224)
  assert (c.degrade.scale, c.degrade.sigma, c.degrade.quality) == (4, 0.1, 10)
  assert (c.data.source, c.data.name) == ("tfds", "imagenet2012")


# VRD-IR restores a mixture of degradations with its own networks: configs/vrdir.py (tests/test_vrdir.py)
@pytest.mark.parametrize("mode", [m for m in methods.names()
                                  if m not in ra.METHODS and m not in npp.METHODS and m not in vrdir.METHODS])
def test_imagenet_config_holds_appendix_a_settings(mode):
  c = config_lib.load(f"{CONFIGS}/imagenet.py:task=sr,mode={mode},processor=runs/sr_plain/processor.msgpack")
  config_lib.validate(c)
  spec = methods.get(mode)
  if "recognizer" in spec.trains:   # R fine-tuned with SGD with momentum from its weights
    o = c.optim.recognizer
    assert (o.name, o.lr, o.momentum, c.recognizer.weights) == ("sgd", 1e-3, 0.9, None)
    scratch = config_lib.load(f"{CONFIGS}/imagenet.py:task=sr,mode={mode},init=scratch,"
                              "processor=runs/sr_plain/processor.msgpack")
    assert scratch.recognizer.weights == "random"
    if "processor" not in spec.trains:   # R alone from scratch: torchvision's recipe
      assert (scratch.optim.recognizer.lr, scratch.data.batch_size, scratch.num_epochs) == (0.1, 256, 90.0)
  if mode == "recognizer_on_processor":
    assert c.method.processor_weights == "runs/sr_plain/processor.msgpack"
  if mode == "perceptual":
    assert tuple(c.method.layers) == ("stage5",)
  with pytest.raises(config_lib.ConfigError, match="init='later'"):
    config_lib.load(f"{CONFIGS}/imagenet.py:mode={mode},init=later")


def test_overrides_are_typed_and_lam_overrides_the_default():
  c = config_lib.load(f"{CONFIGS}/smoke.py:task=jpeg,mode=unsupervised")
  config_lib.override(c, ["optim.processor.lr=3e-4", "method.lam=0.5", "optim.processor.decay_epochs=(1, 2.5)",
                          "data.batch_size=16", "recognizer.weights=/tmp/r.msgpack", "distributed=true",
                          "method.distance=kl"])
  assert c.optim.processor.lr == 3e-4 and isinstance(c.optim.processor.lr, float)
  assert c.optim.transformer.lr == 1e-3   # each network has its own optimizer section
  assert ra.Settings.of(c).lam == 0.5 and ra.Settings.of(c).distance == "kl"
  assert tuple(c.optim.processor.decay_epochs) == (1, 2.5)
  assert c.data.batch_size == 16 and isinstance(c.data.batch_size, int)
  assert c.recognizer.weights == "/tmp/r.msgpack" and c.distributed is True
  assert (c.task, c.method.name) == ("jpeg", "unsupervised")


@pytest.mark.parametrize("old,new", [("lam=0.1", "method.lam=0.1"), ("mode=ra", "method.name=ra"),
                                     ("unsupervised_distance=kl", "method.distance=kl"),
                                     ("label_smoothing=0.1", "method.label_smoothing=0.1"),
                                     ("optim.lr=3e-4", "optim.processor.lr=3e-4"),
                                     ("optim.transformer_lr=1e-3", "optim.transformer.lr=1e-3")])
def test_moved_fields_fail_with_the_new_field(old, new):
  c = config_lib.load(f"{CONFIGS}/smoke.py:mode={'unsupervised' if 'distance' in old else 'ra'}")
  with pytest.raises(config_lib.ConfigError, match=rf"config\.{old.split('=')[0]} has moved: set --config\.{new} "):
    config_lib.override(c, [old])
  config_lib.override(c, [new])   # the new field takes the same value


def test_old_run_configs_migrate_to_the_new_fields(tmp_path):
  """A config.json written before the methods became plug-ins reads back with its settings in place."""
  old = {"task": "denoise", "mode": "transformer", "lam": 0.02, "unsupervised_distance": "kl",
         "optim": {"name": "adam", "lr": 3e-4, "decay_epochs": [1, 2], "transformer_lr": 5e-4},
         "processor": {"name": "srresnet", "blocks": 2, "channels": 8, "input_skip": True},
         "recognizer": {"name": "mobilenet_v2", "num_classes": 1000}}
  (tmp_path / "config.json").write_text(json.dumps(old))
  c = runs.read_config(tmp_path)
  assert (c.task, c.method.name, c.method.lam) == ("denoise", "transformer", 0.02)
  assert (c.optim.processor.lr, c.optim.transformer.lr, tuple(c.optim.processor.decay_epochs)) == (3e-4, 5e-4, (1, 2))
  assert c.processor.input_skip is True and c.processor.blocks == 2
  assert "mode" not in c and "lam" not in c


@pytest.mark.parametrize("override,match", [
    ("optim.processor.lrr=1", r"no field 'lrr' \(did you mean 'lr'\?\)"),
    ("optimizer.lr=1", "config has no field 'optimizer'"),
    ("optim.processor.lr=fast", r"Bad value 'fast' for config.optim.processor.lr: expected float"),
    ("data.batch_size=2.5", "expected int"),
    ("distributed=maybe", "expected bool"),
    ("optim=1", "is a section"),
    ("optim.processor.lr", "needs a value"),
])
def test_bad_overrides_name_the_field(override, match):
  c = config_lib.load(f"{CONFIGS}/smoke.py")
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.override(c, [override])


@pytest.mark.parametrize("override,match", [
    ("method.name=supervised", "config.method.name='supervised' is not one of plain, ra, unsupervised, transformer"),
    ("task=deblur", "config.task='deblur'"),
    ("method.lam=-1.0", "config.method.lam=-1.0 must be >= 0"),
    ("compute_dtype=int8", "config.compute_dtype"),
    ("recognizer.name=alexnet", "config.recognizer.name='alexnet' is not one of"),
    ("data.crop=30", "not divisible by|must be divisible by config.degrade.scale"),
    ("optim.processor.lr=0.0", "config.optim.processor.lr=0.0 must be > 0"),
    ("optim.processor.schedule=linear", "config.optim.processor.schedule='linear' is not one of step, cosine"),
    ("optim.processor.name=lamb", "config.optim.processor.name='lamb' is not one of adam, adamw, sgd"),
    ("data.source=folder", "config.data.source='folder'"),
    ("degrade.quality=0", "config.degrade.quality=0"),
    ("classes.half=C", "config.classes.half='C'"),
    ("method.min_confidence=0.5", "min_confidence applies to recognizer-made labels"),
])
def test_bad_values_fail_validation_with_the_field_name(override, match):
  c = config_lib.override(config_lib.load(f"{CONFIGS}/smoke.py"), [override])
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(c)


def test_methods_validate_their_own_settings():
  c = config_lib.load(f"{CONFIGS}/smoke.py:mode=transformer")
  config_lib.override(c, ["data.crop=30", "degrade.scale=2"])
  with pytest.raises(config_lib.ConfigError, match="divisible by 4 for the transformer"):
    config_lib.validate(c)
  c = config_lib.load(f"{CONFIGS}/smoke.py:mode=recognizer_on_processor")
  with pytest.raises(config_lib.ConfigError, match="processor_weights is not set"):
    config_lib.validate(c)
  c = config_lib.load(f"{CONFIGS}/smoke.py:mode=ra_joint")
  config_lib.override(c, ["method.lam=0.0"])
  with pytest.raises(config_lib.ConfigError, match="must be > 0 for ra_joint"):
    config_lib.validate(c)


def test_config_args_are_checked():
  assert config_lib.parse_arg("mode=ra, task=sr", mode="plain", task="x").mode == "ra"
  assert config_lib.parse_arg("n=3", n=1).n == 3
  with pytest.raises(config_lib.ConfigError, match="Unknown config argument 'recogniser'; accepted: init, mode"):
    config_lib.load(f"{CONFIGS}/imagenet.py:recogniser=resnet50")
  with pytest.raises(config_lib.ConfigError, match="not of the form key=value"):
    config_lib.parse_arg("ra", mode="plain")
  # A text value may hold commas; pieces without "=" continue it, but not a number's value.
  a = config_lib.parse_arg("modes=plain,ra,unsupervised,task=sr", modes="plain", task="x")
  assert (a.modes, a.task) == ("plain,ra,unsupervised", "sr")
  with pytest.raises(config_lib.ConfigError, match="'2' is not of the form key=value"):
    config_lib.parse_arg("n=1,2", n=1)
  with pytest.raises(config_lib.ConfigError, match="not found"):
    config_lib.load("configs/nope.py")


def test_from_command_line_locks_the_config():
  c = config_lib.from_command_line(f"{CONFIGS}/smoke.py", ["optim.processor.lr=1e-2"])
  with pytest.raises(AttributeError):
    c.new_field = 1


def test_cli_reports_bad_and_moved_overrides_without_traceback(tmp_path):
  def cli(*args):
    return subprocess.run([sys.executable, "-m", "rajax.train", "--config", "configs/smoke.py:mode=ra", "--workdir",
                           str(tmp_path), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
  r = cli("--config.optim.processor.lrr=3")
  assert r.returncode == 2
  assert "Unknown config field 'optim.processor.lrr'" in r.stderr and "Traceback" not in r.stderr
  r = cli("--config.method.name=foo")
  assert r.returncode == 2 and "config.method.name='foo'" in r.stderr and "Traceback" not in r.stderr
  r = cli("--config.lam=0.1")
  assert r.returncode == 2 and "set --config.method.lam=0.1 instead" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("arg", ["task=sr,mode=ra", "task=denoise,mode=unsupervised,detector=fasterrcnn_vgg16",
                                 "task=jpeg,mode=transformer,detector=fasterrcnn_resnet18_fpn"])
def test_voc_config_is_the_papers_detection_setting(arg):
  """configs/voc.py: Table 8's schedule (7 epochs, lr x0.1 at epochs 6 and 7, batch 1), VOC07+12
  trainval / VOC07 test, 21 outputs, the pipeline resizing (the detector does not), and unsupervised
  RA on the detector's feature maps."""
  c = config_lib.load(f"configs/voc.py:{arg}")
  config_lib.validate(c)
  assert c.num_epochs == 7.0 and tuple(c.optim.processor.decay_epochs) == (5.0, 6.0) and c.data.batch_size == 1
  assert c.data.train_split == "voc/2007:train+validation,voc/2012:train+validation"
  assert c.data.eval_split == "voc/2007:test"
  assert c.recognizer.num_classes == 21 and c.recognizer.min_size is None
  assert (c.data.detection.min_size, c.data.detection.max_size) == (600, 1000)
  assert tasks.of_recognizer(c.recognizer.name).NAME == "detection"
  if c.method.name == "unsupervised":
    assert c.method.distance == "feature_mse"
  assert c.method.lam is None   # the paper's: 1e-3 (RA), 1e-2 (with the transformer)


@pytest.mark.parametrize("arg", ["task=sr,mode=ra", "task=denoise,mode=unsupervised", "task=jpeg,mode=transformer"])
def test_cityscapes_config_is_the_papers_segmentation_setting(arg):
  """configs/cityscapes.py: Appendix G's setting (HRNet-W48 as R, 19 train ids, 18 epochs, the methods'
  default lambda), fine train / val, training crops and whole-image evaluation."""
  c = config_lib.load(f"configs/cityscapes.py:{arg}")
  config_lib.validate(c)
  assert c.recognizer.name == "hrnet_w48" and c.recognizer.num_classes == 19 and c.num_epochs == 18.0
  assert (c.data.train_split, c.data.eval_split) == ("cityscapes:train", "cityscapes:validation")
  assert tuple(c.data.segmentation.size) == (512, 1024) and tuple(c.data.segmentation.eval_size) == (1024, 2048)
  assert tasks.of_recognizer(c.recognizer.name).NAME == "segmentation"
  assert c.method.lam is None   # the paper's: 1e-3 (RA)


@pytest.mark.parametrize("arg", ["task=sr,mode=ra", "task=sr,mode=recognizer_on_clean"])
def test_voc_seg_config_is_sr4irs_segmentation_setting(arg):
  """configs/voc_seg.py: DeepLabV3-MobileNetV3-L on VOC 2012 (21 classes), SR4IR's crops and scaling, and
  the segmenter's own SGD recipe where the method trains it."""
  c = config_lib.load(f"configs/voc_seg.py:{arg}")
  config_lib.validate(c)
  assert c.recognizer.name == "deeplabv3_mobilenet_v3_large" and c.recognizer.num_classes == 21
  assert tuple(c.data.segmentation.size) == (480, 480) and tuple(c.data.segmentation.scale_range) == (0.5, 2.0)
  assert tasks.of_recognizer(c.recognizer.name).NAME == "segmentation"
  if c.method.name == "recognizer_on_clean":
    assert (c.optim.recognizer.name, c.optim.recognizer.lr, c.optim.recognizer.weight_decay) == ("sgd", 0.02, 1e-6)
