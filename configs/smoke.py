"""Smoke run: tiny models on synthetic images; trains in seconds on a CPU.

    python -m rajax.train --config configs/smoke.py --workdir runs/smoke
    python -m rajax.train --config configs/smoke.py:task=denoise,mode=transformer --workdir runs/smoke_dn

Args: task (sr | denoise | jpeg), mode (plain | ra | unsupervised | transformer).
"""

from rajax import config as config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, task="sr", mode="ra")
  c = config_lib.base(task=a.task, method=a.mode, recognizer="resnet18")
  c.processor.blocks = 2
  c.processor.channels = 16
  c.transformer.blocks = 1
  c.transformer.channels = 8
  c.recognizer.num_classes = 10
  c.recognizer.width = 8              # a narrow ResNet-18 with random weights: exercises the machinery only
  c.recognizer.weights = "random"

  c.data.source = "synthetic"
  c.data.synthetic.train_size = 96
  c.data.synthetic.eval_size = 16
  c.data.synthetic.image_size = 40
  c.data.synthetic.num_classes = 10
  c.data.resize = 0
  c.data.crop = 32
  c.data.batch_size = 8
  c.data.eval_batch_size = 8
  c.data.threads = 2

  for net in ("processor", "transformer"):
    c.optim[net].lr = 1e-3
    c.optim[net].decay_epochs = (2.0, 2.5)
  c.num_epochs = 3.0                  # 12 steps per epoch, 36 steps
  c.log_every = 4
  c.eval_every = 0                    # evaluate at the end only
  c.ckpt_every = 12
  return c
