"""The paper's ImageNet settings, for every task and method: SRResNet (5 blocks) trained with recognizer R.

    python -m rajax.train --config configs/imagenet.py:task=sr,mode=ra,recognizer=resnet18 \
        --workdir runs/sr_ra_r18 --config.data.data_dir=$TFDS_DATA_DIR \
        --config.recognizer.weights=resnet18.msgpack --config.compute_dtype=bfloat16

Args: task (sr | denoise | jpeg), mode (any rajax method: plain | ra | unsupervised | transformer, and
the Appendix A alternatives ra_joint | recognizer_on_processor | recognizer_on_input | ra_no_pixel |
perceptual), recognizer (a rajax recognizer name), init (pretrained | scratch: where a method that
trains R starts), processor (recognizer_on_processor: the plain run's processor.msgpack it trains R on).

P: Adam 1e-4 (x0.1 after epochs 4 and 5), batch 20, 6 epochs; lambda 1e-3 (RA and its
alternatives), 10 (unsupervised), 1e-2 (transformer) unless --config.method.lam is given. The
perceptual loss compares VGG features ("stage5", conv5_3; use recognizer=vgg16). Appendix A's R:
fine-tuned jointly with SGD with momentum (lr 1e-3); trained on P's outputs or on the inputs from
scratch with torchvision's recipe (SGD 0.1, momentum 0.9, weight decay 1e-4, batch 256, 90 epochs,
x0.1 at 30 and 60) or fine-tuned from its weights (SGD 1e-3, the 6 epochs of P's schedule).
"""

from rajax import config as config_lib
from rajax import methods


def get_config(arg=None):
  a = config_lib.parse_arg(arg, task="sr", mode="ra", recognizer="resnet18", init="pretrained", processor="")
  if a.init not in ("pretrained", "scratch"):
    raise config_lib.ConfigError(f"configs/imagenet.py: init={a.init!r} is not 'pretrained' or 'scratch'.")
  c = config_lib.base(task=a.task, method=a.mode, recognizer=a.recognizer)
  spec = methods.get(a.mode)
  if "processor_weights" in c.method:
    c.method.processor_weights = a.processor
  if "layers" in c.method:
    c.method.layers = ("stage5",)
  if "recognizer" in spec.trains:
    c.optim.recognizer.lr = 1e-3
    c.optim.recognizer.decay_epochs = (4.0, 5.0)
    if a.init == "scratch":
      c.recognizer.weights = "random"
      if "processor" not in spec.trains:   # R alone, from scratch: the standard ImageNet recipe
        c.optim.recognizer.lr = 0.1
        c.optim.recognizer.decay_epochs = (30.0, 60.0)
        c.data.batch_size = 256
        c.num_epochs = 90.0
  return c
