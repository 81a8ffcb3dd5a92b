"""The paper's ImageNet setting for JPEG deblocking, quality 10 (task 'jpeg'): SRResNet (5 blocks) trained with recognizer R.

    python -m rajax.train --config configs/jpeg_imagenet.py:mode=ra,recognizer=resnet18 \
        --workdir runs/jpeg_ra_r18 --config.data.data_dir=$TFDS_DATA_DIR \
        --config.recognizer.weights=resnet18.msgpack --config.compute_dtype=bfloat16

Args: mode (plain | ra | unsupervised | transformer), recognizer (a rajax recognizer name).
Adam 1e-4 (x0.1 after epochs 4 and 5), batch 20, 6 epochs; lambda 1e-3 (RA), 10 (unsupervised),
1e-2 (transformer) unless --config.lam is given.
"""

from rajax import config as config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, mode="ra", recognizer="resnet18")
  return config_lib.base(task="jpeg", mode=a.mode, recognizer=a.recognizer)
