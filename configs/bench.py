"""Train-step benchmark (python -m rajax.bench): the paper's networks on synthetic batches.

    python -m rajax.bench --config configs/bench.py:task=sr,mode=ra
    python -m rajax.bench --config configs/bench.py:task=denoise,mode=ra,batch=32,dtype=bfloat16 --vs-torch
    python -m rajax.bench --config configs/bench.py:task=sr,mode=ra,tiny=true          # seconds on a CPU

Args: task (sr | denoise | jpeg), mode (plain | ra | unsupervised | transformer), batch (global;
0: 64 for sr, 32 for denoise/jpeg, the reference settings), dtype (auto: bfloat16 on GPU/TPU,
float32 on CPU), blocks (SRResNet residual blocks; 0: 5, the paper's, or 2 with tiny), recognizer (R, random weights; a detector such as
fasterrcnn_resnet50_fpn or centernet_mobilenetv3 trains P on its own loss, on random boxes), steps (timed
steps), tiny (small shapes and narrow networks that run in seconds on a CPU; figures not comparable
to the references). Every field of the trainer config can still be overridden, e.g.
--config.bn_stats=per_device, --config.processor.channels=32, --config.bench.warmup=5.
"""

from ml_collections import config_dict

from rajax import config as config_lib
from rajax import tasks


def get_config(arg=None):
  a = config_lib.parse_arg(arg, task="sr", mode="ra", batch=0, dtype="auto", blocks=0, recognizer="resnet18",
                           steps=30, tiny=False)
  c = config_lib.base(task=a.task, method=a.mode, recognizer=a.recognizer)
  if a.dtype == "auto":
    import jax
    a.dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  c.compute_dtype = a.dtype
  c.processor.blocks = a.blocks or (2 if a.tiny else 5)
  c.recognizer.weights = "random"     # throughput does not depend on the weights
  c.data.source = "synthetic"
  c.data.batch_size = a.batch or (64 if a.task == "sr" else 32)
  c.data.threads = 8
  c.mesh.data = -1
  c.bench = dict(
      steps=a.steps,          # timed steps (median reported)
      warmup=3,               # untimed steps after compilation
      torch_variants="auto",  # PyTorch reference variants for --vs-torch (comma-separated), auto: by device and dtype
      pipeline_images=64,     # ImageNet-sized photo JPEGs the --pipeline source cycles through
      prefetch=2,             # batches transferred to the device ahead of the step (--pipeline)
      hlo_devices=8,          # fake CPU devices for --hlo
  )
  detection = tasks.of_recognizer(a.recognizer).NAME == "detection"
  if detection:
    # A detector as R: its own loss on random boxes (rajax.bench.synthetic_batch), its own class count,
    # 512 x 512 images at which it runs without resizing; unsupervised RA compares its feature maps.
    c.recognizer.num_classes = config_dict.placeholder(int)
    c.data.crop = 512
    c.data.batch_size = a.batch or 8
    if "distance" in c.method:
      c.method.distance = "feature_mse"
    if a.recognizer in ("centernet_mobilenetv3", "nanodet"):
      c.recognizer.weights = None     # the TF.js graphs carry their weights (python -m rajax.assets fetch)
    else:
      c.recognizer.min_size = config_dict.placeholder(int)   # torchvision's: no resize inside the model
  if a.tiny:
    c.processor.channels = 16
    c.transformer.blocks = 1
    c.transformer.channels = 8
    if detection:   # the detector keeps its architecture; smaller images and batches
      c.data.crop = 128
      c.data.batch_size = a.batch or 2
    else:
      c.recognizer.num_classes = 10
      c.recognizer.width = 8
      c.data.crop = 32
      c.data.batch_size = a.batch or 8
    c.data.resize = c.data.crop * 3 // 2
    c.data.threads = 2
    c.bench.steps = min(a.steps, 10)
    c.bench.warmup = 2
    c.bench.pipeline_images = 16
  return c
