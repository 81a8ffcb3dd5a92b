"""The paper's Cityscapes segmentation tables: Appendix G (P trained with HRNet-W48 as R) and Table 18
(ImageNet-trained P transferred to Cityscapes segmentation), on the 500 val images.

    python -m rajax.data.prepare cityscapes --data_dir $TFDS_DIR --archives DIR
    python -m rajax.evaluate --config configs/eval/cityscapes.py:task=sr,runs=runs,weights=weights \\
        --workdir runs/eval_cityscapes_sr --config.compute_dtype=bfloat16

Processors (trainer workdirs): `cs_plain`, `cs_ra` = `<runs>/cs_<task>_plain|ra`, trained with
configs/cityscapes.py (plain, and RA with HRNet-W48 as the loss: Appendix G); `in_plain`, `in_ra` =
`<imagenet_runs>/<task>_plain|ra`, trained on ImageNet with a classifier (configs/imagenet.py: Table
18's transfer; imagenet_runs="" leaves them and Table 18 out). Target: HRNet-W48 with the official
HRNet-Semantic-Segmentation Cityscapes checkpoint, `<weights>/hrnet_w48_cityscapes.pth` (19 train ids).
Images: the whole 1024 x 2048 val images, degraded by the task; targets: the gtFine label maps (train
ids, 255 ignored). Cells: mIoU and pixel accuracy, PSNR and SSIM; per-class IoU in
`<evaluator>_per_class`; sign tests per image against the plain row; label maps drawn for `figures` images.

Args: task (sr | denoise | jpeg), runs, imagenet_runs, weights, figures, num_examples (-1: all 500).
"""

import ml_collections

from rajax import config as config_lib
from rajax import evaluate


def get_config(arg=None):
  a = config_lib.parse_arg(arg, task="sr", runs="runs", imagenet_runs="runs", weights="weights", figures=4,
                           num_examples=-1)
  c = evaluate.base_config(task=a.task)
  c.batch_size = 2                      # two 1024 x 2048 images per step
  c.processors.cs_plain = f"{a.runs}/cs_{a.task}_plain"
  c.processors.cs_ra = f"{a.runs}/cs_{a.task}_ra"
  if a.imagenet_runs:
    c.processors.in_plain = f"{a.imagenet_runs}/{a.task}_plain"
    c.processors.in_ra = f"{a.imagenet_runs}/{a.task}_ra"
  c.targets.hrnet_w48 = evaluate.segmenter("hrnet_w48", f"{a.weights}/hrnet_w48_cityscapes.pth", num_classes=19)

  E = ml_collections.ConfigDict
  # configs/cityscapes.py's evaluation images: the stored 1024 x 2048, not resized.
  cityscapes = E(dict(source="tfds", split="cityscapes:validation", data_dir="", size=(1024, 2048), resize=0,
                      num_examples=int(a.num_examples), batch_size=0))
  common = dict(type="segmentation", targets=("hrnet_w48",), labels="dataset", data=cityscapes,
                paired_metric="miou")
  c.evals.appendix_g = E(dict(common, processors=("cs_plain", "cs_ra"), figures=int(a.figures),
                              figure_processors=("cs_plain", "cs_ra"),
                              title=f"Cityscapes ({a.task}): P trained with HRNet-W48 as R, mIoU (%) (Appendix G)"))
  if a.imagenet_runs:
    c.evals.table18 = E(dict(common, processors=("in_plain", "in_ra", "cs_plain"), figures=0,
                             title=f"Transfer to Cityscapes segmentation ({a.task}): mIoU (%) of HRNet-W48 on P "
                                   "trained on ImageNet or on Cityscapes (Table 18)"))
  return c
