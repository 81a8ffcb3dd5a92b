"""Makes the fixtures that pin rajax's Faster R-CNN to torchvision's. Run once:

    /tmp/torchvenv/bin/python tests/reference/make_faster_rcnn.py

with torch 2.14.1, torchvision 0.29.1, scikit-image and Pillow. Writes faster_rcnn.npz next to
this script. The weights are not stored: tests/seeded_state_dict.py draws them from an entry name
and each torch key (the key list, names, shapes and dtypes in torch's order, is stored as JSON),
and torch loads them with load_state_dict(strict=True).

Entries (each a torchvision FasterRCNN built as torchvision builds its detectors with weights:
FrozenBatchNorm2d in the backbone, trainable_backbone_layers=3, eps 0.0 as overwrite_eps sets for
the COCO_V1 checkpoint):
  v2     the small entry in fasterrcnn_resnet50_fpn_v2's layout: BatchNorm2d in the backbone, the FPN
         and a FastRCNNConvFCHead (4 convs of 32 + one Linear of 64), a 2-conv RPN head; its
         training forward also records the updated running statistics of three BatchNorm layers;
         v2_2048 repeats its training forward sampling up to 2048 RoIs per image (all of them);
  small  ResNet-18 body, an FPN of 32 channels (BackboneWithFPN, torchvision's key names), a
         TwoMLPHead of 64, 5 classes; min_size 96, max_size 160 on two 80x106 photos, so the
         transform resizes them to 96x127 (scale 1.2) and pads them to 96x128;
  vgg    fasterrcnn_vgg16's layout (VGG-16 conv5_3, one level of 5 sizes x 3 ratios, RoIAlign on it),
         with a TwoMLPHead of 64 and 5 classes;
  r50    fasterrcnn_resnet50_fpn's exact structure (91 classes, FPN 256, TwoMLPHead 1024) on the
         same photos (the heavy test).
Recorded for each (small in full), in eval mode: the transformed batch, the FPN maps, the anchors, the RPN's
flattened objectness and deltas, the proposals, the RoIAlign output of the first 12 proposals,
the box branch's logits and deltas, and the final detections; in training mode, with two and
three ground-truth boxes per image: torch's sampled anchors and proposals (recorded by wrapping
BalancedPositiveNegativeSampler.__call__), the training proposals and the four losses.
Also `layout/<name>`: the state-dict names and shapes torchvision gives every zoo architecture
(fasterrcnn_resnet50_fpn(_v2), ResNet-18/101 FPN backbones on FasterRCNN, VGG-16 conv5_3 with one
level of 15 anchors); `fpn`: torchvision's FeaturePyramidNetwork with each extra block (max pool,
P6/P7 from P5 and from C5) on seeded maps of odd sizes; and `roi`: torchvision.ops.MultiScaleRoIAlign
and roi_align on seeded feature maps with hand-picked boxes (inside, across the border, beyond it,
smaller than a pixel, at the level boundary sqrt(area) = 224), aligned=False and aligned=True.
Parts of the records are dropped for the larger entries to keep the file under 2 MB (see run()).
"""

import json
import pathlib
import sys

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection._utils import overwrite_eps
from torchvision.ops import misc as misc_nn_ops

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import seeded_state_dict  # noqa: E402

OUT = HERE / "faster_rcnn.npz"
H, W = 80, 106
# The last BatchNorm of each residual branch scales it down (as tests/seeded_state_dict.py explains), and
# the RPN's and the predictor's last layers are drawn small, so that objectness, deltas and class scores
# have the spread of a trained detector's (He-uniform values there give deltas of +-20 and scores of 1.0).
RULES = {"small": [[r"backbone\.body\.layer\d+\.\d+\.bn2\.weight", 0.1, 0.3],
                   [r"rpn\.head\.(cls_logits|bbox_pred)\.weight", -0.02, 0.02],
                   [r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.weight", -0.08, 0.08]],
         "v2": [[r"backbone\.body\.layer\d+\.\d+\.bn2\.weight", 0.1, 0.3],
                [r"rpn\.head\.(cls_logits|bbox_pred)\.weight", -0.02, 0.02],
                [r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.weight", -0.08, 0.08]],
         "vgg": [[r"rpn\.head\.(cls_logits|bbox_pred)\.weight", -0.005, 0.005],
                 [r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.weight", -0.08, 0.08]],
         "r50": [[r"backbone\.body\.layer\d+\.\d+\.bn3\.weight", 0.1, 0.3],
                 [r"rpn\.head\.(cls_logits|bbox_pred)\.weight", -0.005, 0.005],
                 [r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.weight", -0.02, 0.02]]}
TARGETS = [  # (x1, y1, x2, y2) in pixels of the 80x106 photos, label in 1..4
    ([[10.0, 8.0, 60.0, 50.0], [50.5, 20.25, 100.0, 78.0]], [1, 3]),
    ([[0.0, 0.0, 40.0, 30.0], [30.0, 25.0, 95.5, 70.0], [70.0, 5.0, 104.0, 40.0]], [2, 4, 1]),
]


def photos():
  from skimage import data
  ims = []
  for name in ("chelsea", "coffee"):
    im = Image.fromarray(getattr(data, name)()).convert("RGB")
    iw, ih = im.size
    cw, ch = (iw, round(iw * H / W)) if iw * H / W <= ih else (round(ih * W / H), ih)
    left, top = (iw - cw) // 2, (ih - ch) // 2
    ims.append(np.asarray(im.crop((left, top, left + cw, top + ch)).resize((W, H), Image.BICUBIC)))
  return np.stack(ims)


def build(entry):
  if entry == "small":
    body = torchvision.models.resnet18(norm_layer=misc_nn_ops.FrozenBatchNorm2d)
    for name, p in body.named_parameters():  # what _resnet_fpn_extractor does for trainable_layers=3
      if all(not name.startswith(l) for l in ["layer4", "layer3", "layer2"]):
        p.requires_grad_(False)
    backbone = BackboneWithFPN(body, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                               [64, 128, 256, 512], 32)
    model = FasterRCNN(backbone, num_classes=None, min_size=96, max_size=160,
                       box_head=TwoMLPHead(32 * 49, 64), box_predictor=FastRCNNPredictor(64, 5))
  elif entry == "v2":  # fasterrcnn_resnet50_fpn_v2's layout, small: BatchNorm everywhere, 2-conv RPN head
    body = torchvision.models.resnet18()
    backbone = BackboneWithFPN(body, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                               [64, 128, 256, 512], 32, norm_layer=torch.nn.BatchNorm2d)
    model = FasterRCNN(backbone, num_classes=None, min_size=96, max_size=160,
                       rpn_head=RPNHead(32, 3, conv_depth=2),
                       box_head=FastRCNNConvFCHead((32, 7, 7), [32] * 4, [64], norm_layer=torch.nn.BatchNorm2d),
                       box_predictor=FastRCNNPredictor(64, 5))
  elif entry == "vgg":  # fasterrcnn_vgg16's layout: conv5_3 (stride 16), one level of 15 anchors
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    vgg = torchvision.models.vgg16().features[:-1]
    vgg.out_channels = 512
    model = FasterRCNN(vgg, num_classes=None, min_size=96, max_size=160,
                       rpn_anchor_generator=AnchorGenerator(((32, 64, 128, 256, 512),), ((0.5, 1.0, 2.0),)),
                       box_roi_pool=torchvision.ops.MultiScaleRoIAlign(["0"], 7, 2),
                       box_head=TwoMLPHead(512 * 49, 64), box_predictor=FastRCNNPredictor(64, 5))
  else:
    body = torchvision.models.resnet50(norm_layer=misc_nn_ops.FrozenBatchNorm2d)
    model = FasterRCNN(_resnet_fpn_extractor(body, 3), num_classes=91, min_size=96, max_size=160)
  keys = keys_of(model)
  sd = seeded_state_dict.values(entry, keys, RULES[entry])
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
  overwrite_eps(model, 0.0)  # no FrozenBatchNorm2d in v2: nothing to overwrite there
  return model, keys


def keys_of(model):
  return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]


def layouts():
  """State-dict layouts (names, shapes) of the zoo's other architectures, as torchvision builds them."""
  from torchvision.models.detection import fasterrcnn_resnet50_fpn, fasterrcnn_resnet50_fpn_v2
  from torchvision.models.detection.anchor_utils import AnchorGenerator
  from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
  out = {"fasterrcnn_resnet50_fpn": fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None),
         "fasterrcnn_resnet50_fpn_v2": fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None)}
  for depth in (18, 101):
    bb = resnet_fpn_backbone(backbone_name=f"resnet{depth}", weights=None)
    out[f"fasterrcnn_resnet{depth}_fpn"] = FasterRCNN(bb, num_classes=91)
  vgg = torchvision.models.vgg16().features[:-1]  # conv5_3 + ReLU, stride 16
  vgg.out_channels = 512
  out["fasterrcnn_vgg16"] = FasterRCNN(
      vgg, num_classes=91, rpn_anchor_generator=AnchorGenerator(((32, 64, 128, 256, 512),), ((0.5, 1.0, 2.0),)),
      box_roi_pool=torchvision.ops.MultiScaleRoIAlign(["0"], 7, 2))
  return {f"{name}": np.array(json.dumps(keys_of(m))) for name, m in out.items()}


def run(entry, images, roi_batch=512):
  model, keys = build(entry)
  model.roi_heads.fg_bg_sampler.batch_size_per_image = roi_batch
  rec = {"keys": np.array(json.dumps(keys))}
  x = [torch.from_numpy(im).permute(2, 0, 1).float() / 255.0 for im in images]
  hooks = {}

  def grab(name):
    def hook(module, inputs, output):
      hooks[name] = (inputs, output)
    return hook

  model.rpn.head.register_forward_hook(grab("rpn_head"))
  model.roi_heads.box_roi_pool.register_forward_hook(grab("roi_pool"))
  model.roi_heads.box_predictor.register_forward_hook(grab("predictor"))
  model.backbone.register_forward_hook(grab("backbone"))
  model.transform.register_forward_hook(grab("transform"))
  model.rpn.register_forward_hook(grab("rpn"))
  model.eval()
  with torch.no_grad():
    dets = model(x)
  image_list = hooks["transform"][1][0]
  rec["image"] = image_list.tensors.permute(0, 2, 3, 1).numpy()
  rec["image_sizes"] = np.array(image_list.image_sizes)
  maps = hooks["backbone"][1]
  if isinstance(maps, torch.Tensor):  # a one-level backbone (VGG): GeneralizedRCNN names it "0"
    maps = {"0": maps}
  for k, v in maps.items():
    rec[f"fpn/{k}"] = v.permute(0, 2, 3, 1).numpy()
  logits, deltas = hooks["rpn_head"][1]
  obj, box = torchvision.models.detection.rpn.concat_box_prediction_layers(logits, deltas)
  rec["objectness"] = obj.reshape(len(x), -1).numpy()
  rec["rpn_deltas"] = box.reshape(len(x), -1, 4).numpy()
  feats = list(maps.values())
  rec["anchors"] = model.rpn.anchor_generator(image_list, feats)[0].numpy()
  props = hooks["rpn"][1][0]
  rec["proposal_counts"] = np.array([len(p) for p in props])
  rec["proposals"] = _pad([p.numpy() for p in props], 1000)
  pooled = hooks["roi_pool"][1]  # [sum n_i, C, 7, 7]
  counts = rec["proposal_counts"]
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  rec["pooled12"] = np.stack([pooled[s:s + 12].permute(0, 2, 3, 1).numpy() for s in starts])
  cls, bbox = hooks["predictor"][1]
  rec["class_logits"] = _pad([cls[s:s + n].numpy() for s, n in zip(starts, counts)], 1000)
  rec["box_deltas"] = _pad([bbox[s:s + n].numpy() for s, n in zip(starts, counts)], 1000)
  rec["det_counts"] = np.array([len(d["boxes"]) for d in dets])
  rec["det_boxes"] = _pad([d["boxes"].numpy() for d in dets], 100)
  rec["det_scores"] = _pad([d["scores"].numpy() for d in dets], 100)
  rec["det_labels"] = _pad([d["labels"].numpy() for d in dets], 100)

  # ---- training mode: the losses given torch's own samples ----
  samples = []
  original = det_utils.BalancedPositiveNegativeSampler.__call__

  def recording(self, matched_idxs):
    pos, neg = original(self, matched_idxs)
    samples.append(([p.numpy().astype(bool) for p in pos], [n.numpy().astype(bool) for n in neg]))
    return pos, neg

  det_utils.BalancedPositiveNegativeSampler.__call__ = recording
  train_props = []
  model.rpn.register_forward_hook(lambda m, i, o: train_props.append(o[0]) if m.training else None)
  targets = [{"boxes": torch.tensor(b, dtype=torch.float32), "labels": torch.tensor(l, dtype=torch.int64)}
             for b, l in TARGETS]
  model.train()
  torch.manual_seed(0)
  with torch.no_grad():
    losses = model(x, targets)
  det_utils.BalancedPositiveNegativeSampler.__call__ = original
  (rpn_pos, rpn_neg), (roi_pos, roi_neg) = samples
  rec["rpn_pos"], rec["rpn_neg"] = np.stack(rpn_pos), np.stack(rpn_neg)
  tp = train_props[-1]
  rec["train_proposal_counts"] = np.array([len(p) for p in tp])
  rec["train_proposals"] = _pad([p.numpy() for p in tp], 2000)
  # ROI sample masks over (proposals, ground truth): torch's index j < n_i is proposal j, j >= n_i
  # the ground truth j - n_i; here as [B, 2000 + 3] masks in rajax's layout (all 2000 proposal
  # slots, then the N = 3 ground-truth slots).
  n_gt = max(len(b) for b, _ in TARGETS)
  for name, masks in (("roi_pos", roi_pos), ("roi_neg", roi_neg)):
    out = np.zeros((len(x), 2000 + n_gt), bool)
    for i, m in enumerate(masks):
      n = len(tp[i])
      out[i, :n] = m[:n]
      out[i, 2000:2000 + len(m) - n] = m[n:]
    rec[name] = out
  for k, v in losses.items():
    rec[f"loss/{k}"] = np.array(float(v), np.float32)
  if entry == "v2":  # running statistics after the training forward (BatchNorm in training mode)
    sd = model.state_dict()
    for k in ("backbone.body.bn1", "backbone.fpn.layer_blocks.0.1", "roi_heads.box_head.0.1"):
      rec[f"stats/{k}/mean"] = sd[f"{k}.running_mean"].numpy()
      rec[f"stats/{k}/var"] = sd[f"{k}.running_var"].numpy()
  if entry in ("r50", "vgg"):  # keep the fixture small: no 256-channel maps, no 91-class head outputs
    for k in [k for k in rec if k.startswith("fpn/")] + ["class_logits", "box_deltas"]:
      del rec[k]
    rec["pooled12"] = rec["pooled12"][..., :8]
  if entry != "small":  # the same transformed batch as the small entry's
    del rec["image"]
  if entry == "v2":  # its eval-mode pieces are the small entry's code: detections suffice
    for k in ("fpn/0", "fpn/1", "class_logits", "box_deltas", "pooled12", "rpn_deltas"):
      rec.pop(k, None)
  if entry == "vgg":
    del rec["rpn_deltas"]
  return rec


def roi_case():
  g = np.random.default_rng(0)
  feats = {str(i): g.standard_normal((2, 3, 64 // 2**i, 80 // 2**i)).astype(np.float32) for i in range(4)}
  boxes = [np.array([[10.0, 12.0, 90.0, 70.0], [-20.0, -10.0, 30.0, 25.0], [200.0, 150.0, 330.0, 260.0],
                     [100.5, 60.25, 100.75, 60.5], [0.0, 0.0, 224.0, 224.0], [5.0, 5.0, 229.0, 229.0],
                     [300.0, 240.0, 400.0, 300.0], [40.0, 200.0, 90.0, 255.0]], np.float32),
           np.array([[0.0, 0.0, 320.0, 256.0], [150.0, 100.0, 170.0, 108.0], [1.0, 2.0, 3.0, 2.5],
                     [60.0, 30.0, 175.0, 140.0], [250.0, -5.0, 330.0, 40.0], [12.0, 80.0, 13.0, 300.0],
                     [0.0, 0.0, 111.9, 111.9], [10.0, 10.0, 122.0, 122.0]], np.float32)]
  pool = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
  tf = {k: torch.from_numpy(v) for k, v in feats.items()}
  tb = [torch.from_numpy(b) for b in boxes]
  out = pool(tf, tb, [(256, 320), (256, 320)])
  rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(tb)])
  single = torchvision.ops.roi_align(tf["1"], rois, 7, spatial_scale=0.125, sampling_ratio=2, aligned=False)
  aligned = torchvision.ops.roi_align(tf["1"], rois, 7, spatial_scale=0.125, sampling_ratio=2, aligned=True)
  rec = {f"feat/{k}": np.transpose(v, (0, 2, 3, 1)) for k, v in feats.items()}
  rec["boxes"] = np.stack(boxes)
  rec["multiscale"] = out.permute(0, 2, 3, 1).numpy().reshape(2, 8, 7, 7, 3)
  rec["single"] = single.permute(0, 2, 3, 1).numpy().reshape(2, 8, 7, 7, 3)
  rec["aligned"] = aligned.permute(0, 2, 3, 1).numpy().reshape(2, 8, 7, 7, 3)
  rec["levels"] = pool.map_levels(tb).numpy().reshape(2, 8)
  return rec


def fpn_case():
  """torchvision's FeaturePyramidNetwork on seeded maps of odd sizes (25x31 -> 13x16 -> 7x8: nearest
  upsampling at non-integer ratios), with LastLevelP6P7 from P5 (in == out channels) and from C5."""
  from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7
  g = np.random.default_rng(1)
  sizes = [(25, 31), (13, 16), (7, 8)]
  chans = [8, 16, 32]
  feats = [g.standard_normal((1, c, h, w)).astype(np.float32) for c, (h, w) in zip(chans, sizes)]
  rec = {f"c{i}": np.transpose(f, (0, 2, 3, 1)) for i, f in enumerate(feats)}
  extras = (("pool", LastLevelMaxPool()), ("p6p7_p5", LastLevelP6P7(8, 8)), ("p6p7_c5", LastLevelP6P7(32, 8)))
  for name, extra in extras:
    fpn = FeaturePyramidNetwork(chans, 8, extra_blocks=extra)
    keys = keys_of(fpn)
    sd = seeded_state_dict.values(f"fpn_{name}", keys)
    fpn.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
    with torch.no_grad():
      out = fpn({str(i): torch.from_numpy(f) for i, f in enumerate(feats)})
    rec[f"{name}/keys"] = np.array(json.dumps(keys))
    for k, v in out.items():
      rec[f"{name}/out/{k}"] = v.permute(0, 2, 3, 1).numpy()
  return rec


def _pad(arrays, n):
  shape = arrays[0].shape[1:]
  out = np.zeros((len(arrays), n) + shape, arrays[0].dtype)
  for i, a in enumerate(arrays):
    out[i, :len(a)] = a
  return out


def main():
  torch.set_num_threads(2)
  images = photos()
  data = {"photos": images}
  for entry in ("small", "v2", "vgg", "r50"):
    for k, v in run(entry, images).items():
      data[f"{entry}/{k}"] = v
  # v2 sampling up to 2048 RoIs per image: every candidate is sampled and fewer than 2048 are real,
  # so the box head's BatchNorm must take its statistics over the real ones only.
  full = run("v2", images, roi_batch=2048)
  for k in [k for k in full if k.startswith(("loss/", "stats/", "rpn_", "roi_"))]:
    data[f"v2_2048/{k}"] = full[k]
  for k, v in layouts().items():
    data[f"layout/{k}"] = v
  for k, v in roi_case().items():
    data[f"roi/{k}"] = v
  for k, v in fpn_case().items():
    data[f"fpn/{k}"] = v
  data = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in data.items()}
  np.savez_compressed(OUT, **data)
  print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")
  for e in ("small", "v2", "vgg", "r50"):
    print(e, {k: float(data[f"{e}/loss/{k}"]) for k in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier",
                                                        "loss_box_reg")},
          "proposals", data[f"{e}/proposal_counts"], "detections", data[f"{e}/det_counts"])


if __name__ == "__main__":
  main()
