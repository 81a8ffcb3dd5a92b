"""Config files, arguments, command-line overrides and validation."""

import pathlib
import subprocess
import sys

import pytest

from rajax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.mark.parametrize("task", ["sr", "denoise", "jpeg"])
@pytest.mark.parametrize("mode,lam", [("plain", 0.0), ("ra", 1e-3), ("unsupervised", 10.0), ("transformer", 1e-2)])
def test_imagenet_configs_hold_the_paper_settings(task, mode, lam):
  c = config_lib.load(f"{CONFIGS}/{task}_imagenet.py:mode={mode},recognizer=resnet50")
  config_lib.validate(c)
  assert (c.task, c.mode, c.recognizer.name) == (task, mode, "resnet50")
  assert config_lib.method(c).lam == lam
  assert (c.processor.name, c.processor.blocks, c.processor.channels) == ("srresnet", 5, 64)
  assert (c.transformer.name, c.transformer.blocks) == ("resnet_generator", 6)
  assert (c.optim.name, c.optim.lr, tuple(c.optim.decay_epochs), c.optim.decay_factor) == ("adam", 1e-4, (4, 5), 0.1)
  assert (c.data.batch_size, c.num_epochs, c.data.resize, c.data.crop) == (20, 6, 256, 224)
  assert (c.degrade.scale, c.degrade.sigma, c.degrade.quality) == (4, 0.1, 10)
  assert (c.data.source, c.data.name) == ("tfds", "imagenet2012")


def test_overrides_are_typed_and_lam_overrides_the_default():
  c = config_lib.load(f"{CONFIGS}/smoke.py:task=jpeg,mode=unsupervised")
  config_lib.override(c, ["optim.lr=3e-4", "lam=0.5", "optim.decay_epochs=(1, 2.5)", "data.batch_size=16",
                          "recognizer.weights=/tmp/r.msgpack", "distributed=true", "unsupervised_distance=kl"])
  assert c.optim.lr == 3e-4 and isinstance(c.optim.lr, float)
  assert config_lib.method(c).lam == 0.5 and config_lib.method(c).distance == "kl"
  assert tuple(c.optim.decay_epochs) == (1, 2.5)
  assert c.data.batch_size == 16 and isinstance(c.data.batch_size, int)
  assert c.recognizer.weights == "/tmp/r.msgpack" and c.distributed is True
  assert (c.task, c.mode) == ("jpeg", "unsupervised")


@pytest.mark.parametrize("override,match", [
    ("optim.lrr=1", r"no field 'lrr' \(did you mean 'lr'\?\)"),
    ("optimizer.lr=1", "config has no field 'optimizer'"),
    ("optim.lr=fast", r"Bad value 'fast' for config.optim.lr: expected float"),
    ("data.batch_size=2.5", "expected int"),
    ("distributed=maybe", "expected bool"),
    ("optim=1", "is a section"),
    ("optim.lr", "needs a value"),
])
def test_bad_overrides_name_the_field(override, match):
  c = config_lib.load(f"{CONFIGS}/smoke.py")
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.override(c, [override])


@pytest.mark.parametrize("override,match", [
    ("mode=supervised", "config.mode='supervised' is not one of plain, ra, unsupervised, transformer"),
    ("task=deblur", "config.task='deblur'"),
    ("lam=-1.0", "config.lam=-1.0 must be >= 0"),
    ("compute_dtype=int8", "config.compute_dtype"),
    ("recognizer.name=alexnet", "config.recognizer.name='alexnet' is not one of"),
    ("data.crop=30", "not divisible by|must be divisible by config.degrade.scale"),
    ("optim.lr=0.0", "config.optim.lr=0.0 must be > 0"),
    ("optim.transformer_lr=-1e-4", r"config.optim.transformer_lr=-0.0001 must be > 0"),
    ("data.source=folder", "config.data.source='folder'"),
    ("degrade.quality=0", "config.degrade.quality=0"),
])
def test_bad_values_fail_validation_with_the_field_name(override, match):
  c = config_lib.override(config_lib.load(f"{CONFIGS}/smoke.py"), [override])
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(c)


def test_config_args_are_checked():
  assert config_lib.parse_arg("mode=ra, task=sr", mode="plain", task="x").mode == "ra"
  assert config_lib.parse_arg("n=3", n=1).n == 3
  with pytest.raises(config_lib.ConfigError, match="Unknown config argument 'recogniser'; accepted: mode, recognizer"):
    config_lib.load(f"{CONFIGS}/sr_imagenet.py:recogniser=resnet50")
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
  c = config_lib.from_command_line(f"{CONFIGS}/smoke.py", ["optim.lr=1e-2"])
  with pytest.raises(AttributeError):
    c.new_field = 1


def test_cli_reports_bad_override_without_traceback(tmp_path):
  r = subprocess.run([sys.executable, "-m", "rajax.train", "--config", "configs/smoke.py", "--workdir", str(tmp_path),
                      "--config.optim.lrr=3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2
  assert "Unknown config field 'optim.lrr'" in r.stderr and "Traceback" not in r.stderr
  r = subprocess.run([sys.executable, "-m", "rajax.train", "--config", "configs/smoke.py", "--workdir", str(tmp_path),
                      "--config.mode=foo"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2 and "config.mode='foo'" in r.stderr and "Traceback" not in r.stderr
