"""The paper's Cityscapes segmentation setting (Appendix G): P trained with a segmenter as R.

    python -m rajax.data.prepare cityscapes --data_dir $TFDS_DATA_DIR --archives DIR   # the two official zips
    python -m rajax.train --config configs/cityscapes.py:task=sr,mode=ra --workdir runs/cs_sr_ra \\
        --config.data.data_dir=$TFDS_DATA_DIR --config.recognizer.weights=hrnet_w48_cityscapes.pth

Args: task (sr | denoise | jpeg), mode (any method: ra, unsupervised, transformer, ...), segmenter (a
zoo segmenter; the paper's is HRNet-W48, `hrnet_w48`, reading the official HRNet-Semantic-Segmentation
checkpoint; torchvision's DeepLabV3 also works with 19-class weights). Cityscapes fine train (2975
images) for training, val (500) for evaluation, the 19 train ids (255 ignored). The paper: SRResNet P,
lambda 1e-3 for RA (the method's default), 18 epochs; RA raises mIoU at similar PSNR/SSIM. Training
crops of 512 x 1024 (P's input: 1/scale of that for SR), evaluation on the whole 1024 x 2048 images.
Unsupervised RA compares the segmenter's per-pixel softmax probabilities (method.distance "prob_mse").
"""

from ml_collections import config_dict

from rajax import config as config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, task="sr", mode="ra", segmenter="hrnet_w48")
  c = config_lib.base(task=a.task, method=a.mode, recognizer=a.segmenter)
  c.recognizer.num_classes = 19
  c.data.source = "tfds"
  c.data.name = "cityscapes"
  c.data.train_split = "cityscapes:train"
  c.data.eval_split = "cityscapes:validation"
  c.data.segmentation = config_dict.ConfigDict(dict(size=(512, 1024), eval_size=(1024, 2048), resize=0,
                                                    eval_resize=0, scale_range=(1.0, 1.0), flip=0.5))
  c.data.crop = 512
  c.data.resize = 0
  c.data.batch_size = 8
  c.data.eval_batch_size = 2
  c.optim.processor.decay_epochs = (12.0, 16.0)
  c.num_epochs = 18.0
  c.ckpt_every = 1000
  return c
