"""PASCAL VOC 2012 semantic segmentation with a torchvision segmenter as R (SR4IR's segmentation task).

    python -m rajax.data.prepare voc_seg --data_dir $TFDS_DATA_DIR --archives DIR   # VOCtrainval_11-May-2012.tar
    python -m rajax.train --config configs/voc_seg.py:task=sr,mode=ra --workdir runs/vocseg_sr_ra \\
        --config.data.data_dir=$TFDS_DATA_DIR --config.recognizer.weights=deeplabv3_mobilenet_v3_large_voc.pth

Args: task (sr | denoise | jpeg), mode (any method), segmenter (a zoo segmenter; SR4IR's is
`deeplabv3_mobilenet_v3_large` with its auxiliary head). VOC 2012 train (1464; `train_split=
voc_seg:train_aug` for the 10582 SBD-augmented images) for training and val (1449) for evaluation,
21 classes with 255 ignored. SR4IR's data settings: short side 520 with random scaling 0.5-2, crops
of 480, flips; evaluation on the whole image resized to short side 520, padded into a 520 x 1040 canvas.

mode=recognizer_on_clean trains the segmenter itself on the clean images (SR4IR's HR oracle and the
baseline of a segmenter trained on processed images with recognizer_on_processor), with SR4IR's
recipe: SGD 2e-2 with momentum 0.9, weight decay 1e-6, batch 16, 100 epochs (a cosine decay here: rajax
has no polynomial schedule; SR4IR's ten-times rate for the auxiliary head is not separated either).
"""

from ml_collections import config_dict

from rajax import config as config_lib
from rajax import methods, optim


def get_config(arg=None):
  a = config_lib.parse_arg(arg, task="sr", mode="ra", segmenter="deeplabv3_mobilenet_v3_large")
  c = config_lib.base(task=a.task, method=a.mode, recognizer=a.segmenter)
  c.recognizer.num_classes = 21
  c.data.source = "tfds"
  c.data.name = "voc_seg"
  c.data.train_split = "voc_seg:train"
  c.data.eval_split = "voc_seg:validation"
  c.data.segmentation = config_dict.ConfigDict(dict(size=(480, 480), eval_size=(520, 1040), resize=520,
                                                    eval_resize=520, scale_range=(0.5, 2.0), flip=0.5))
  c.data.crop = 480
  c.data.resize = 0
  c.data.batch_size = 16
  c.data.eval_batch_size = 4
  c.num_epochs = 100.0
  spec = methods.get(a.mode)
  if "recognizer" in spec.trains and "processor" not in spec.trains:   # the segmenter's own training
    c.optim.recognizer = optim.section(name="sgd", lr=0.02, momentum=0.9, weight_decay=1e-6, schedule="cosine")
  c.ckpt_every = 2000
  return c
