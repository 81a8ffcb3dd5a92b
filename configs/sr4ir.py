"""SR4IR's settings (Kim, Oh and Lee, CVPR 2024; the official options 0x0_*.yml): SR for recognition.

    python -m rajax.train --config configs/sr4ir.py:task=cls,dataset=stanford_cars,mode=sr4ir \\
        --workdir runs/sr4ir_cars --config.data.data_dir=$TFDS_DATA_DIR \\
        --config.init_processor=edsr_baseline_x4-6b446fab.pt --config.recognizer.weights=resnet18-f37072fd.pth

Args: task (seg | det | cls: the task network T), dataset (seg and det: voc; cls: cub200 |
stanford_cars, from `python -m rajax.data.prepare`), mode (the rows of SR4IR's tables:
  recognizer_on_clean  HR: T trained on the clean images (the oracle; T->S's fixed T)
  recognizer_on_input  LR: T trained on the bicubic-upsampled LR images (the official code upsamples
                       bilinearly)
  plain                SR: S alone on L1 (method.pixel_loss "l1"); S->T's fixed S
  sr4ir_s_then_t       S->T: T trained on a fixed S's outputs (method.processor_weights)
  sr4ir_t_then_s       T->S: S trained on L1 + L(T(S(x))), T fixed (recognizer.weights: an HR run's)
  sr4ir_joint          S+T: both on L1 + L(T(S(x)))
  sr4ir                SR4IR: TDP loss with warm-up, CQMix, S and T in turn),
scale (4 | 8), processor (edsr | swinir).
Common: LR made on the fly as torch's bicubic without antialiasing, rounded to 8 bits
(degrade.kernel "torch"); S: EDSR-baseline (16 blocks, 64 features) or SwinIR-M, AdamW 1e-4 with
no weight decay, cosine with a restart at the end of the TDP warm-up, per step, to 1e-6; T: SGD with
momentum 0.9 and the same restart to 1e-4.
  seg  DeepLabV3-MobileNetV3-Large with its auxiliary head (weight 0.5, lr x10), VOC 2012 train /
       val, short side 520, crops of 480, batch 16, 100 epochs, warm-up 10, T at 2e-2, weight decay
       1e-6; TDP on C5; CQMix 8 x 8 cells of 60 px.
  det  Faster R-CNN MobileNetV3-Large FPN, 21 classes, VOC 2012 (the voc/2012 splits), batch 16,
       30 epochs, warm-up 3, T at 2e-2 with a linear warm-up over the first epoch, weight decay 1e-4;
       TDP on the FPN levels '0' and '1' (0.5 each); CQMix 8 x 8. The official periods [2, 27] follow
       one warm-up epoch; here the warm-up is a factor on the first of periods [3, 27].
  cls  ResNet-18 from ImageNet, resize 256, crop 224, batch 128, 200 epochs, warm-up 20, T at 3e-2,
       weight decay 1e-4; TDP on layer4; CQMix 4 x 4 cells of 56 px. (The official training crop is
       torchvision's RandomResizedCrop; here a random 224 crop of the 256-resized image.)
"""

from ml_collections import config_dict

from rajax import config as config_lib
from rajax import methods, optim
from rajax.data import detection as detection_data

MODES = ("recognizer_on_clean", "recognizer_on_input", "plain", "sr4ir_s_then_t", "sr4ir_t_then_s", "sr4ir_joint",
         "sr4ir")
TASKS = {
    # task: (T, classes, epochs, warm-up epochs, T's lr, T's weight decay, T's eta_min, CQMix cells, batch)
    "seg": ("deeplabv3_mobilenet_v3_large", 21, 100, 10, 2e-2, 1e-6, 1e-4, 8, 16),
    "det": ("fasterrcnn_mobilenet_v3_large_fpn", 21, 30, 3, 2e-2, 1e-4, 1e-4, 8, 16),
    "cls": ("resnet18", None, 200, 20, 3e-2, 1e-4, 1e-4, 4, 128),
}
CLASSES = {"cub200": 200, "stanford_cars": 196}


def get_config(arg=None):
  a = config_lib.parse_arg(arg, task="cls", dataset="", mode="sr4ir", scale=4, processor="edsr")
  if a.task not in TASKS:
    raise config_lib.ConfigError(f"configs/sr4ir.py: task={a.task!r} is not one of {', '.join(TASKS)}.")
  if a.mode not in MODES:
    raise config_lib.ConfigError(f"configs/sr4ir.py: mode={a.mode!r} is not one of {', '.join(MODES)}.")
  dataset = a.dataset or ("voc" if a.task != "cls" else "stanford_cars")
  net, classes, epochs, warmup, t_lr, t_wd, t_min, cells, batch = TASKS[a.task]
  if a.task == "cls":
    if dataset not in CLASSES:
      raise config_lib.ConfigError(f"configs/sr4ir.py: dataset={dataset!r} for task cls is one of "
                                   f"{', '.join(CLASSES)}.")
    classes = CLASSES[dataset]
  elif dataset != "voc":
    raise config_lib.ConfigError(f"configs/sr4ir.py: task {a.task} trains on dataset=voc, not {dataset!r}.")
  c = config_lib.base(task="sr", method=a.mode, recognizer=net)
  c.degrade.scale = int(a.scale)
  c.degrade.kernel = "torch"
  c.recognizer.num_classes = classes
  c.data.source = "tfds"
  c.data.batch_size = batch
  c.num_epochs = float(epochs)
  if a.task == "seg":
    c.data.name = "voc_seg"
    c.data.train_split, c.data.eval_split = "voc_seg:train", "voc_seg:validation"
    c.data.segmentation = config_dict.ConfigDict(dict(size=(480, 480), eval_size=(520, 1040), resize=520,
                                                      eval_resize=520, scale_range=(0.5, 2.0), flip=0.5))
    c.data.crop, c.data.resize, c.data.eval_batch_size = 480, 0, 4
    c.recognizer.loss = config_dict.ConfigDict(dict(aux_weight=0.5))
  elif a.task == "det":
    c.data.name = "voc"
    c.data.train_split, c.data.eval_split = "voc/2012:train", "voc/2012:validation"
    c.recognizer.min_size = config_dict.placeholder(int)   # the pipeline has resized
    c.data.detection = config_dict.ConfigDict(dict(
        detection_data.config_defaults(), size=(1000, 1000), min_size=600, max_size=1000, max_boxes=64,
        label_space="contiguous"))
    c.data.crop, c.data.resize, c.data.eval_batch_size = 1000, 0, 4
  else:
    c.data.name = dataset
    c.data.train_split, c.data.eval_split = "train", "test"
    c.data.resize, c.data.crop, c.data.eval_batch_size = 256, 224, 32
  c.processor = config_dict.ConfigDict(dict(name=a.processor))
  spec = methods.get(a.mode)
  periods = (float(warmup), float(epochs - warmup))
  if "processor" in spec.trains:
    c.optim.processor = optim.section(name="adamw", lr=1e-4, weight_decay=0.0, schedule="cosine_restarts",
                                      restart_epochs=periods, restart_weights=(1.0, 1.0), min_lr=1e-6)
  if "recognizer" in spec.trains:
    c.optim.recognizer = optim.section(name="sgd", lr=t_lr, momentum=0.9, weight_decay=t_wd,
                                       schedule="cosine_restarts", restart_epochs=periods,
                                       restart_weights=(1.0, 1.0), min_lr=t_min,
                                       warmup_epochs=1.0 if a.task == "det" else 0.0,
                                       lr_scale=(("aux_classifier", 10.0),) if a.task == "seg" else ())
  if "pixel_loss" in c.method:
    c.method.pixel_loss = "l1"
  if a.mode == "sr4ir":
    c.method.warmup_epochs = float(warmup)
    c.method.cqmix_cells = cells
  c.ckpt_every = 2000
  return c
