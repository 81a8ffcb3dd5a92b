"""torchvision's semantic segmenters in Flax (NHWC), reading torchvision checkpoints: a `Segmenter` family.

    seg = build("deeplabv3_resnet50", "deeplabv3_resnet50_coco-cd0a2569.pth")
    seg(images)                       # [B, H, W, 21] logits at the images' size (VOC labels)
    seg.heads(images)                 # ({"out": ..., "aux": ...}, batch_stats) with the aux FCN head

The architectures of torchvision 0.29 (models/segmentation), layer for layer:
  deeplabv3_resnet50 / _resnet101   ResNet with replace_stride_with_dilation [False, True, True]
                                    (output stride 8); DeepLabHead on layer4: ASPP (1x1, 3x3 at
                                    rates 12/24/36, image pooling; 256 channels each; concat, 1x1
                                    projection, Dropout 0.5), 3x3 conv + BN + ReLU, 1x1 classifier;
                                    aux FCNHead(1024) on layer3
  fcn_resnet50                      the same ResNet; FCNHead(2048) (3x3 conv to in/4 + BN + ReLU,
                                    Dropout 0.1, 1x1 classifier); aux FCNHead(1024) on layer3
  deeplabv3_mobilenet_v3_large      mobilenet_v3_large(dilated=True).features (last three blocks
                                    dilated: output stride 16); DeepLabHead on features 16 (960
                                    channels); aux FCNHead(40) on features 4 (stride 8)
  lraspp_mobilenet_v3_large         the same dilated backbone; LRASPPHead: high = features 16,
                                    low = features 4; cbr (1x1 to 128 + BN + ReLU) times scale
                                    (global mean, 1x1 to 128, sigmoid), upsampled to the low map's
                                    size, through a 1x1 classifier, plus a 1x1 classifier of low
Every head's logits are upsampled to the input size bilinearly with align_corners=False (torch's
F.interpolate rule, as rajax.detection.faster_rcnn.resize_bilinear). Inputs are images in [0, 1];
the model normalises them with ImageNet mean/std itself (torchvision's SemanticSegmentation preset
does it outside the model). BatchNorm is ordinary trainable BatchNorm (params scale/bias,
batch_stats mean/var; eps 1e-5 and momentum 0.1 in the ResNets and the heads, eps 1e-3 and
momentum 0.01 in MobileNetV3, as torchvision); `train=True` uses batch statistics and returns the
updated running averages (the variance averaged is the biased batch variance, Flax's rule, where
torch averages the unbiased one: a factor n / (n - 1) on the new term, n the values per channel),
and Dropout runs only when an `rng` is given.

Weights: a torchvision segmentation state dict (.pth/.pt, .safetensors) or rajax .msgpack
variables. torchvision's checkpoints carry the aux head (they were trained with aux_loss=True);
`aux_loss=None` (default) takes the head when the checkpoint has it, `aux_loss=False` leaves its
weights out, `aux_loss=True` requires them. A checkpoint of another architecture (or of other
num_classes) is refused with one error naming the missing, unexpected and misshapen keys.
Module paths -> torch keys: `torch_key_fn`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from rajax.detection import backbones as backbones_lib
from rajax.detection.faster_rcnn import IMAGENET_MEAN, IMAGENET_STD, resize_bilinear
from rajax.models import layers, mobilenet_v3
from rajax.segmentation.segmenter import IGNORE_LABEL, Segmenter

# torchvision's _VOC_CATEGORIES: the 21 labels of its COCO_WITH_VOC_LABELS_V1 weights.
VOC_CATEGORIES = (
    "__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

_RESNET_STAGES = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that defines one of these segmenters (hashable: it is static under jit)."""

  head: str = "deeplabv3"           # "deeplabv3", "fcn" or "lraspp"
  backbone: str = "resnet50"        # "resnet50", "resnet101" or "mobilenet_v3_large"
  num_classes: int = 21
  aux_loss: bool = False
  atrous_rates: tuple[int, ...] = (12, 24, 36)
  lraspp_channels: int = 128
  mean: tuple[float, float, float] = IMAGENET_MEAN
  std: tuple[float, float, float] = IMAGENET_STD
  dtype: str = "float32"

  @property
  def channels(self) -> tuple[int, int]:
    """(channels of the main head's input, channels of the aux / low-level input)."""
    return (960, 40) if self.backbone == "mobilenet_v3_large" else (2048, 1024)


def _bn(train: bool, dtype, name: str) -> nn.Module:
  return layers.batch_norm(train=train, dtype=dtype, name=name)


def mobilenet_norm(*, train: bool, dtype, name: str) -> nn.Module:
  """MobileNetV3's BatchNorm2d(eps=0.001, momentum=0.01) (torchvision's mobilenet_v3 norm_layer)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3, dtype=dtype,
                      param_dtype=jnp.float32, name=name)


def _conv(features: int, kernel: int, in_features: int, *, dtype, name: str, dilation: int = 1,
          use_bias: bool = False) -> layers.Conv:
  """torch.nn.Conv2d(padding=(kernel - 1) // 2 * dilation) with PyTorch's default initialisation."""
  return layers.conv(features, kernel, in_features=in_features, padding=(kernel - 1) // 2 * dilation,
                     dilation=dilation, use_bias=use_bias, dtype=dtype, name=name)


class ConvBNReLU(nn.Module):
  features: int
  kernel: int = 1
  dilation: int = 1
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = _conv(self.features, self.kernel, x.shape[-1], dilation=self.dilation, dtype=self.dtype, name="conv")(x)
    return nn.relu(_bn(train, self.dtype, "bn")(x))


class ASPP(nn.Module):
  """torchvision's ASPP: `convs_0` 1x1, `convs_1..n` 3x3 at the rates, `convs_{n+1}` image pooling,
  each to 256 channels with BN + ReLU; concatenated, `project` 1x1 + BN + ReLU, Dropout(0.5)."""

  rates: tuple[int, ...]
  out_channels: int = 256
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool, dropout: bool):
    c, dt = self.out_channels, self.dtype
    branches = [ConvBNReLU(c, 1, dtype=dt, name="convs_0")(x, train=train)]
    for i, rate in enumerate(self.rates, start=1):
      branches.append(ConvBNReLU(c, 3, rate, dtype=dt, name=f"convs_{i}")(x, train=train))
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(dt)
    pooled = ConvBNReLU(c, 1, dtype=dt, name=f"convs_{len(self.rates) + 1}")(pooled, train=train)
    branches.append(jnp.broadcast_to(pooled, x.shape[:3] + (c,)))  # bilinear from 1x1: a constant
    y = ConvBNReLU(c, 1, dtype=dt, name="project")(jnp.concatenate(branches, axis=-1), train=train)
    return nn.Dropout(0.5, deterministic=not dropout)(y)


class DeepLabHead(nn.Module):
  """ASPP, 3x3 conv (256) + BN + ReLU, 1x1 classifier (with bias)."""

  num_classes: int
  rates: tuple[int, ...] = (12, 24, 36)
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool, dropout: bool):
    y = ASPP(self.rates, dtype=self.dtype, name="aspp")(x, train=train, dropout=dropout)
    y = ConvBNReLU(256, 3, dtype=self.dtype, name="block")(y, train=train)
    return _conv(self.num_classes, 1, 256, use_bias=True, dtype=self.dtype, name="classifier")(y)


class FCNHead(nn.Module):
  """3x3 conv to in/4 channels + BN + ReLU, Dropout(0.1), 1x1 classifier (with bias)."""

  num_classes: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool, dropout: bool):
    inter = x.shape[-1] // 4
    y = ConvBNReLU(inter, 3, dtype=self.dtype, name="block")(x, train=train)
    y = nn.Dropout(0.1, deterministic=not dropout)(y)
    return _conv(self.num_classes, 1, inter, use_bias=True, dtype=self.dtype, name="classifier")(y)


class LRASPPHead(nn.Module):
  """low_classifier(low) + high_classifier(upsample(cbr(high) * sigmoid(scale(mean(high)))))."""

  num_classes: int
  inter_channels: int = 128
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, low, high, *, train: bool):
    dt, c = self.dtype, self.inter_channels
    x = ConvBNReLU(c, 1, dtype=dt, name="cbr")(high, train=train)
    s = jnp.mean(high.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(dt)
    s = jax.nn.sigmoid(_conv(c, 1, high.shape[-1], dtype=dt, name="scale")(s))
    x = resize_bilinear((x * s).astype(jnp.float32), low.shape[1:3]).astype(dt)
    return (_conv(self.num_classes, 1, low.shape[-1], use_bias=True, dtype=dt, name="low_classifier")(low)
            + _conv(self.num_classes, 1, c, use_bias=True, dtype=dt, name="high_classifier")(x))


class Net(nn.Module):
  """`backbone`, `classifier` and (with aux_loss) `aux_classifier`, as torchvision names them.

  Returns ({"out": logits, "aux": logits} at the feature maps' resolution, the backbone's maps)."""

  cfg: Config

  @nn.compact
  def __call__(self, x, *, train: bool = False, dropout: bool = False):
    cfg = self.cfg
    dt = layers.as_dtype(cfg.dtype)
    if cfg.backbone == "mobilenet_v3_large":
      body = mobilenet_v3.MobileNetV3LargeBody(norm=mobilenet_norm, dtype=dt, dilated=True,
                                               name="backbone")(x, train=train)
      high, low = body["16"], body["4"]
    else:
      body = backbones_lib.ResNetBody(stage_sizes=_RESNET_STAGES[cfg.backbone], norm=backbones_lib.trainable_norm,
                                      dtype=dt, dilate=(False, True, True), name="backbone")(x, train=train)
      high, low = body["layer4"], body["layer3"]
    if cfg.head == "lraspp":
      out = {"out": LRASPPHead(cfg.num_classes, cfg.lraspp_channels, dtype=dt, name="classifier")(low, high,
                                                                                                  train=train)}
      return out, {"low": low, "high": high}
    if cfg.head == "deeplabv3":
      main = DeepLabHead(cfg.num_classes, cfg.atrous_rates, dtype=dt, name="classifier")
    else:
      main = FCNHead(cfg.num_classes, dtype=dt, name="classifier")
    out = {"out": main(high, train=train, dropout=dropout)}
    if cfg.aux_loss:
      out["aux"] = FCNHead(cfg.num_classes, dtype=dt, name="aux_classifier")(low, train=train, dropout=dropout)
    return out, ({"out": high, "aux": low} if cfg.aux_loss else {"out": high})


@dataclasses.dataclass(frozen=True)
class TorchvisionSegmenter:
  """The SegmenterModel of a Config (hashable; pure functions of variables)."""

  cfg: Config
  class_names: tuple[str, ...] = VOC_CATEGORIES

  ignore_label = IGNORE_LABEL

  @property
  def num_classes(self) -> int:
    return self.cfg.num_classes

  @property
  def net(self) -> Net:
    return Net(self.cfg)

  def normalise(self, images: jax.Array) -> jax.Array:
    layers.check_images(images, who=f"{self.cfg.head} segmenter")
    x = images.astype(jnp.float32)
    x = (x - jnp.asarray(self.cfg.mean, jnp.float32)) / jnp.asarray(self.cfg.std, jnp.float32)
    return x.astype(layers.as_dtype(self.cfg.dtype))

  def run(self, variables: Mapping[str, Any], images: jax.Array, *, train: bool = False,
          rng: jax.Array | None = None) -> tuple[dict[str, jax.Array], dict[str, jax.Array], Mapping[str, Any]]:
    """(low-resolution head logits, backbone maps, updated batch_stats or {})."""
    x = self.normalise(images)
    kwargs = dict(train=train, dropout=rng is not None)
    if rng is not None:
      kwargs["rngs"] = {"dropout": rng}
    if train:
      (out, maps), upd = self.net.apply(variables, x, mutable=["batch_stats"], **kwargs)
      return out, maps, upd["batch_stats"]
    out, maps = self.net.apply(variables, x, **kwargs)
    return out, maps, {}

  def logits(self, variables: Mapping[str, Any], images: jax.Array, *, train: bool = False,
             rng: jax.Array | None = None) -> tuple[dict[str, jax.Array], Mapping[str, Any]]:
    out, _, stats = self.run(variables, images, train=train, rng=rng)
    return self.upsample(out, images.shape[1:3]), stats

  @staticmethod
  def upsample(out: Mapping[str, jax.Array], size: tuple[int, int]) -> dict[str, jax.Array]:
    """`run`'s head logits -> float32 logits at `size` (F.interpolate, bilinear, align_corners=False)."""
    return {k: resize_bilinear(v.astype(jnp.float32), tuple(size)) for k, v in out.items()}

  def features(self, variables: Mapping[str, Any], images: jax.Array) -> dict[str, jax.Array]:
    """The backbone maps the heads read ("out", "aux"; "low", "high" for LR-ASPP), the same under
    SR4IR's names ("C5": the last stage, the main head's input; "C2": the auxiliary head's), and the
    heads' logits before upsampling ("logits/out", "logits/aux")."""
    out, maps, _ = self.run(variables, images)
    high, low = maps.get("out", maps.get("high")), maps.get("aux", maps.get("low"))
    names = {"C5": high, **({"C2": low} if low is not None else {})}
    return {**maps, **names, **{f"logits/{k}": v for k, v in out.items()}}

  def init(self, rng: jax.Array) -> dict:
    """Random variables (torchvision's initialisers); their shapes do not depend on the image size."""
    return self.net.init(rng, jnp.zeros((1, 64, 64, 3), jnp.float32))


# ---- torch key names ------------------------------------------------------------------------------
def torch_key_fn(cfg: Config):
  """Flax module path -> torchvision state-dict prefix ('classifier/aspp/convs_1/conv' -> 'classifier.0.convs.1.0')."""
  pool = len(cfg.atrous_rates) + 1

  def body_key(rest: str) -> str:
    if cfg.backbone == "mobilenet_v3_large":
      return mobilenet_v3.torch_key(rest)
    return backbones_lib.resnet_torch_key(rest)

  def torch_key(path: str) -> str:
    head, _, rest = path.partition("/")
    if head == "backbone":
      return f"backbone.{body_key(rest)}"
    leaf = {"conv": "0", "bn": "1"}
    if head == "aux_classifier" or (head == "classifier" and cfg.head == "fcn"):
      m = re.fullmatch(r"block/(conv|bn)|classifier", rest)
      if m:
        return f"{head}.{leaf[m[1]] if m[1] else '4'}"
    elif head == "classifier" and cfg.head == "deeplabv3":
      m = re.fullmatch(r"aspp/convs_(\d+)/(conv|bn)", rest)
      if m:
        shift = 1 if int(m[1]) == pool else 0  # ASPPPooling's Sequential starts with its pool
        return f"classifier.0.convs.{m[1]}.{int(leaf[m[2]]) + shift}"
      m = re.fullmatch(r"aspp/project/(conv|bn)", rest)
      if m:
        return f"classifier.0.project.{leaf[m[1]]}"
      m = re.fullmatch(r"block/(conv|bn)|classifier", rest)
      if m:
        return f"classifier.{ {'conv': '1', 'bn': '2'}[m[1]] if m[1] else '4'}"
    elif head == "classifier" and cfg.head == "lraspp":
      m = {"cbr/conv": "cbr.0", "cbr/bn": "cbr.1", "scale": "scale.1", "low_classifier": "low_classifier",
           "high_classifier": "high_classifier"}.get(rest)
      if m:
        return f"classifier.{m}"
    raise ValueError(f"No torchvision segmentation key for Flax module path {path!r}.")

  return torch_key


# ---- the zoo ----------------------------------------------------------------------------------------
ARCHS: dict[str, dict] = {
    "deeplabv3_resnet50": dict(head="deeplabv3", backbone="resnet50"),
    "deeplabv3_resnet101": dict(head="deeplabv3", backbone="resnet101"),
    "deeplabv3_mobilenet_v3_large": dict(head="deeplabv3", backbone="mobilenet_v3_large"),
    "lraspp_mobilenet_v3_large": dict(head="lraspp", backbone="mobilenet_v3_large"),
    "fcn_resnet50": dict(head="fcn", backbone="resnet50"),
}

_OPTIONS = ("atrous_rates", "lraspp_channels", "mean", "std")


def build(name: str, weights: str | None = None, *, num_classes: int = 21, dtype: Any = "float32",
          seed: int | None = 0, aux_loss: bool | None = None, **options: Any) -> Segmenter:
  """A torchvision segmenter as a `Segmenter`.

  `weights`: a torchvision segmentation state dict of this architecture (.pth / .safetensors, read
  by rajax's safe reader) or rajax .msgpack variables; None / "random" for seeded random weights
  (torchvision's initialisers). `aux_loss`: None takes the aux FCN head when the checkpoint has one
  (random weights: no aux head, torchvision's default without weights); False drops a checkpoint's
  aux head; True requires it. LR-ASPP has no aux head. `num_classes`: 21 (VOC labels) by default;
  class names are VOC's for 21 classes, "class_i" otherwise. `options`: atrous_rates, lraspp_channels,
  mean, std.
  """
  from rajax import weights as weights_lib
  from rajax.weights import convert

  dtype = "float32" if dtype is None else dtype
  seed = 0 if seed is None else seed
  if name not in ARCHS:
    raise ValueError(f"Unknown torchvision segmenter {name!r}; available: {', '.join(sorted(ARCHS))}.")
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
  unknown = sorted(set(options) - set(_OPTIONS))
  if unknown:
    raise ValueError(f"Unknown options {unknown} for {name}; known: {', '.join(_OPTIONS)}, aux_loss.")
  opts = {**ARCHS[name], **options}
  for k in ("atrous_rates", "mean", "std"):
    if k in opts:
      opts[k] = tuple(int(v) if k == "atrous_rates" else float(v) for v in opts[k])
  if opts["head"] == "lraspp" and aux_loss:
    raise ValueError(f"{name} has no auxiliary head (torchvision's LR-ASPP has none): leave aux_loss unset.")
  loaded = weights not in (None, "random")
  if loaded:
    checkpoint, is_flax = _read(weights)
    if is_flax:
      has_aux = "aux_classifier" in checkpoint.get("params", {})
      drop = lambda tree: {c: {k: v for k, v in t.items() if k != "aux_classifier"} for c, t in tree.items()}
    else:
      has_aux = any(k.startswith("aux_classifier.") for k in checkpoint)
      drop = lambda sd: {k: v for k, v in sd.items() if not k.startswith("aux_classifier.")}
    if aux_loss is None:
      aux_loss = has_aux
    elif not aux_loss and has_aux:
      checkpoint = drop(checkpoint)
  dt = layers.as_dtype(dtype)
  cfg = Config(num_classes=num_classes, aux_loss=bool(aux_loss) and opts["head"] != "lraspp",
               dtype=jnp.dtype(dt).name, **opts)
  names = VOC_CATEGORIES if num_classes == len(VOC_CATEGORIES) else tuple(f"class_{i}" for i in range(num_classes))
  model = TorchvisionSegmenter(cfg, class_names=names)
  if not loaded:
    return Segmenter(name=name, model=model, variables=jax.jit(model.init)(jax.random.key(seed)))
  template = jax.eval_shape(lambda: model.init(jax.random.key(seed)))
  hint = (f"{name} reads torchvision {name} state dicts (keys backbone.*, classifier.*, and aux_classifier.* "
          f"where it has the aux head) with num_classes={num_classes}; a checkpoint of another segmenter, or "
          "an ImageNet classifier, does not fit.")
  try:
    if is_flax:
      variables = weights_lib.check_variables(checkpoint, template, source=str(weights))
    else:
      variables = convert.from_torch(checkpoint, template, torch_key_fn(cfg), source=str(weights))
  except weights_lib.WeightsError as e:
    raise weights_lib.WeightsError(f"{e}\n{hint}") from None
  return Segmenter(name=name, model=model, variables=jax.tree.map(jnp.asarray, variables))


def _read(weights) -> tuple[dict, bool]:
  """(the checkpoint's contents, whether they are Flax variables): a .msgpack file's nested
  variables, or any torch / safetensors file's flat state dict (rajax's safe reader)."""
  from flax import serialization

  from rajax import weights as weights_lib

  path = pathlib.Path(weights).expanduser()
  if path.suffix in weights_lib.NATIVE_SUFFIXES and path.is_file():
    try:
      tree = serialization.msgpack_restore(path.read_bytes())
    except Exception as e:  # msgpack raises several unrelated types on corrupt input
      raise weights_lib.WeightsError(f"{path} is not a readable Flax msgpack weights file ({type(e).__name__}: {e}).") from e
    if not isinstance(tree, Mapping):
      raise weights_lib.WeightsError(f"{path} does not hold Flax variables (a mapping of collections).")
    return dict(tree), True
  return weights_lib.read_state_dict(path), False  # also the error for a missing file or an unknown suffix


__all__ = ["ARCHS", "Config", "TorchvisionSegmenter", "VOC_CATEGORIES", "build", "torch_key_fn"]
