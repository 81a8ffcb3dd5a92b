"""The paper's PASCAL VOC detection setting (Appendix D, Table 8): P trained with a detector as R.

    python -m rajax.train --config configs/voc.py:task=sr,mode=ra,detector=fasterrcnn_resnet50_fpn \
        --workdir runs/voc_sr_ra --config.data.data_dir=$TFDS_DATA_DIR \
        --config.recognizer.weights=fasterrcnn_resnet50_fpn_voc.msgpack

Args: task (sr | denoise | jpeg), mode (any method: ra, unsupervised, transformer, ...), detector
(a zoo detector: fasterrcnn_resnet50_fpn, fasterrcnn_resnet18_fpn, fasterrcnn_resnet101_fpn,
fasterrcnn_vgg16, ...). VOC07+12 trainval for training, VOC07 test for evaluation (prepared with
`python -m rajax.data.prepare voc`), 20 classes plus background (21 outputs). The paper: SRResNet
P, lambda 1e-3 for RA and 1e-2 with the transformer (the methods' defaults), 7 epochs with the lr
x0.1 at epochs 6 and 7, batch 1, images at Faster R-CNN's scale (short side 600, long side at
most 1000), loss detectors reaching 74.2 / 76.8 / 77.9 / 72.2 mAP (ResNet-18 / 50 / 101, VGG-16) on
VOC07 test. The pipeline resizes and pads to a static 1000 x 1000 canvas, so the detector itself
does not resize (recognizer.min_size None). Unsupervised RA compares the detector's feature maps
(method.distance "feature_mse").

mode=recognizer_on_clean trains the loss detector itself on the clean VOC images, from an ImageNet
backbone (`--config.recognizer.backbone_weights=resnet50.pth`, a torchvision classifier
checkpoint), with torchvision's detection recipe: SGD 0.02 for batch 16, momentum 0.9, weight
decay 1e-4, 26 epochs with the lr x0.1 after epochs 16 and 22, a linear warm-up over the first
1000 steps, horizontal flips.
"""

from ml_collections import config_dict

from rajax import config as config_lib
from rajax import methods, optim
from rajax.data import detection as detection_data


def get_config(arg=None):
  a = config_lib.parse_arg(arg, task="sr", mode="ra", detector="fasterrcnn_resnet50_fpn")
  c = config_lib.base(task=a.task, method=a.mode, recognizer=a.detector)
  c.recognizer.num_classes = 21
  c.recognizer.min_size = config_dict.placeholder(int)   # the pipeline has resized
  if "distance" in c.method:
    c.method.distance = "feature_mse"
  c.data.source = "tfds"
  c.data.name = "voc"
  c.data.train_split = detection_data.VOC0712_TRAIN
  c.data.eval_split = detection_data.VOC07_TEST
  c.data.detection = config_dict.ConfigDict(dict(
      detection_data.config_defaults(), size=(1000, 1000), min_size=600, max_size=1000, max_boxes=64,
      label_space="contiguous"))
  c.data.crop = 1000        # P's input at the canvas size (1000 / scale for SR)
  c.data.resize = 0
  c.data.batch_size = 1
  c.data.eval_batch_size = 1
  c.optim.processor.decay_epochs = (5.0, 6.0)
  c.num_epochs = 7.0
  spec = methods.get(a.mode)
  if "recognizer" in spec.trains and "processor" not in spec.trains:   # the detector's own training
    c.recognizer.backbone_weights = config_dict.placeholder(str)
    c.data.batch_size = 16
    c.optim.recognizer = optim.section(name="sgd", lr=0.02, momentum=0.9, weight_decay=1e-4,
                                       decay_epochs=(16.0, 22.0), warmup_epochs=1000 * 16 / 16551)
    c.num_epochs = 26.0
  c.ckpt_every = 5000
  return c
