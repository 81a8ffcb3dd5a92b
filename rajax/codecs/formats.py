"""The four standard codecs, each a `Codec` record: how to encode an image, decode it, and what its
quality axis means.

Every codec takes a uint8 RGB image [H, W, 3] and an integer quality and gives the bytes of a
complete file (what would be stored or sent, headers and container included, so 8 * len(bytes) is
the real bit count); `decode` gives a uint8 RGB image of the same size back. Every setting that
changes the bytes is pinned here, so the same image and quality give the same bytes on every call,
in any thread, with any number of images coded at once.

  jpeg   Pillow (libjpeg-turbo) baseline JPEG, 4:2:0 chroma (`subsampling=2`), Pillow's default
         tables and no optimisation pass: exactly what rajax.degrade.jpeg has always done.
         quality 1..95 (Pillow advises against more than 95), higher = more bits.
  webp   Pillow (libwebp) lossy WebP, method 4 (Pillow's default effort), 4:2:0 as every lossy
         WebP. quality 0..100, higher = more bits.
  avif   Pillow's AVIF plugin (libavif with the aom AV1 encoder, dav1d decoder), 4:2:0 full range,
         speed 6 (Pillow's default), one encoder thread (libavif's tiling and threading are off, so
         the bytes do not depend on the machine's core count). quality 0..100, higher = more bits;
         libavif turns quality q into aom's quantiser ((100 - q) * 63 + 50) // 100 (0..63, about
         a quarter of AV1's base_q_idx).
  hevc   HEVC intra (x265 through libheif, written by pillow-heif as a HEIF file): the stand-in for
         BPG, which no package registry carries. The quality axis is BPG's QP (bpgenc's `-q`), 0..50,
         *lower* = more bits, set the way BPG's own x265 front end sets it: constant-QP rate control
         with x265's `qp` = QP + 1 (BPG's offset for 8-bit input, "to match the JCTVC quality").
         x265 codes the single intra picture at QP + 1 - 6 log2(ipratio) rounded, ipratio being
         x265's default 1.4, i.e. at slice QP = QP - 2. Pinned: 4:2:0 chroma, preset "slow" and
         tune "ssim" (libheif's defaults; BPG's default level 8 uses "placebo", which changed the
         rate by under 1% on 224 px photos and costs ~25% more time), one x265 thread pool of one
         thread and one frame thread. Without a QP, libheif's own `quality` q would map to x265's
         constant-rate factor CRF = (100 - q) / 2 (q = 50 -> CRF 25); that axis is not offered.
         The HEIF container (ftyp/meta boxes, the colour profile, VPS/SPS/PPS) costs about 390 bytes
         per file, counted in the bits like BPG's own (smaller) header.

Each codec has a default `sweep` of five qualities for rate-accuracy curves, ordered from the lowest
rate to the highest: the paper's BPG QPs 41/37/34/31/28 for hevc, and for the others qualities that
span a similar range of rates. Measured bits per pixel on 224x224 crops of four scikit-image photos
(astronaut, chelsea, coffee, rocket), lowest to highest photo:

  jpeg  10/20/30/50/75:   0.31-0.58 / 0.40-0.82 / 0.49-1.02 / 0.65-1.32 / 0.94-1.87
  webp  5/25/50/75/85:    0.13-0.43 / 0.25-0.71 / 0.40-1.02 / 0.58-1.34 / 0.92-1.90
  avif  15/30/50/65/80:   0.14-0.28 / 0.21-0.44 / 0.45-0.81 / 0.72-1.23 / 1.15-1.96
  hevc  41/37/34/31/28:   0.15-0.42 / 0.24-0.60 / 0.32-0.78 / 0.45-1.00 / 0.59-1.28

`normalise(q)` maps a quality to [0, 1] with 0 at the lowest rate end of its range (for hevc,
QP 50 -> 0 and QP 0 -> 1): the input of a quality-adaptive network. On an array (NumPy or JAX,
traceable) it works elementwise.

Nothing is imported or started at import time: pillow-heif is loaded on the first hevc call.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Callable

import numpy as np
from PIL import Image

HEVC_PRESET = "slow"
HEVC_TUNE = "ssim"
BPG_X265_QP_OFFSET = 1  # bpgenc's x265 front end codes 8-bit images at x265 qp = its QP + 1


def check_image(img: np.ndarray, who: str) -> np.ndarray:
  """`img` as a C-contiguous uint8 RGB image [H, W, 3], or a ValueError naming what is wrong."""
  if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
    got = f"{type(img).__name__} {getattr(img, 'dtype', '')} {getattr(img, 'shape', '')}".strip()
    raise ValueError(f"{who} expects a uint8 RGB image shaped [H, W, 3], got {got}; convert it with "
                     f"np.asarray(pil_image.convert('RGB')) or (np.clip(x, 0, 1) * 255).round().astype(np.uint8).")
  if img.shape[0] < 1 or img.shape[1] < 1:
    raise ValueError(f"{who} got an empty image {img.shape}.")
  return np.ascontiguousarray(img)


def _pil_encode(img: np.ndarray, **save) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, **save)
  return buf.getvalue()


def _pil_decode(data: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert("RGB"))


def _jpeg_encode(img: np.ndarray, quality: int) -> bytes:
  return _pil_encode(img, format="JPEG", quality=quality, subsampling=2)


def _webp_encode(img: np.ndarray, quality: int) -> bytes:
  return _pil_encode(img, format="WEBP", quality=quality, method=4, lossless=False, exact=False)


def _avif_encode(img: np.ndarray, quality: int) -> bytes:
  from PIL import features

  if not features.check("avif"):
    raise ImportError("The avif codec needs a Pillow built with AVIF (libavif), as the wheels of Pillow >= 11.3 are: "
                      "pip install -U Pillow")
  return _pil_encode(img, format="AVIF", quality=quality, subsampling="4:2:0", speed=6, max_threads=1,
                     codec="aom", range="full", autotiling=False)


def _pillow_heif():
  try:
    import pillow_heif
  except ImportError as e:
    raise ImportError("The hevc codec needs pillow-heif (libheif with x265 and libde265): pip install pillow-heif") from e
  return pillow_heif


def _hevc_encode(img: np.ndarray, qp: int) -> bytes:
  heif = _pillow_heif()
  params = {  # a fresh dict per call: pillow-heif adds the chroma to it
      "x265:qp": str(qp + BPG_X265_QP_OFFSET),
      "preset": HEVC_PRESET,
      "tune": HEVC_TUNE,
      "x265:pools": "1",
      "x265:frame-threads": "1",
  }
  buf = io.BytesIO()
  heif.from_bytes("RGB", (img.shape[1], img.shape[0]), img.tobytes()).save(
      buf, format="HEIF", chroma=420, enc_params=params, tile_size=0)
  return buf.getvalue()


def _hevc_decode(data: bytes) -> np.ndarray:
  heif = _pillow_heif().open_heif(io.BytesIO(data), convert_hdr_to_8bit=True)
  return np.asarray(heif.to_pillow().convert("RGB"))


@dataclasses.dataclass(frozen=True)
class Codec:
  """One standard codec: its quality axis (`axis` from `lo` to `hi`, integers), whether a higher
  value means more bits, a default `sweep` of five values from the lowest rate to the highest, and
  `encode(img, quality) -> bytes` / `decode(bytes) -> img` on uint8 RGB images [H, W, 3]."""

  name: str
  axis: str
  lo: int
  hi: int
  higher_is_more_bits: bool
  sweep: tuple[int, ...]
  summary: str
  _encode: Callable[[np.ndarray, int], bytes] = dataclasses.field(repr=False, compare=False)
  _decode: Callable[[bytes], np.ndarray] = dataclasses.field(repr=False, compare=False)

  def check_quality(self, quality) -> int:
    """`quality` as a Python int if it is an integer in [lo, hi], else a ValueError saying so."""
    if isinstance(quality, (bool, np.bool_)) or not isinstance(quality, (int, np.integer)):
      raise ValueError(f"{self.name} {self.axis} must be an integer in [{self.lo}, {self.hi}], "
                       f"got {quality!r} ({type(quality).__name__}).")
    if not self.lo <= quality <= self.hi:
      more = "higher" if self.higher_is_more_bits else "lower"
      raise ValueError(f"{self.name} {self.axis} {int(quality)} is out of range: it must be in [{self.lo}, {self.hi}] "
                       f"({more} = more bits; default sweep {self.sweep}).")
    return int(quality)

  def normalise(self, quality):
    """`quality` on [0, 1], 0 at the lowest-rate end of [lo, hi]: a float for a number (range
    checked), elementwise float32 for an array (NumPy arrays range checked, JAX arrays traceable)."""
    span = self.hi - self.lo
    if isinstance(quality, (int, np.integer)):
      q = self.check_quality(quality)
      return (q - self.lo) / span if self.higher_is_more_bits else (self.hi - q) / span
    if isinstance(quality, np.ndarray):
      for q in np.unique(quality):
        self.check_quality(q.item() if np.issubdtype(quality.dtype, np.integer) else q)
      quality = quality.astype(np.float32)
    elif hasattr(quality, "astype"):  # a JAX array or tracer
      quality = quality.astype("float32")
    else:
      raise ValueError(f"{self.name}.normalise takes an integer or an integer array, got {type(quality).__name__}.")
    return (quality - self.lo) / span if self.higher_is_more_bits else (self.hi - quality) / span

  def identity(self) -> str:
    """What the codec's bytes depend on besides the image and quality: its name, the settings pinned
    here and the coding libraries' versions (a cache key of coded images)."""
    import PIL

    libs = f"Pillow {PIL.__version__}"
    if self.name == "hevc":
      heif = _pillow_heif()
      libs += f", pillow-heif {heif.__version__}, libheif {heif.libheif_version()}"
      libs += f", preset {HEVC_PRESET}, tune {HEVC_TUNE}, qp offset {BPG_X265_QP_OFFSET}"
    return f"{self.name}: {self.summary} ({libs})"

  def encode(self, img: np.ndarray, quality: int) -> bytes:
    """The complete file of `img` (uint8 RGB [H, W, 3]) coded at `quality`."""
    img = check_image(img, f"{self.name}.encode")
    return self._encode(img, self.check_quality(quality))

  def decode(self, data: bytes) -> np.ndarray:
    """The uint8 RGB image [H, W, 3] of a file made by `encode`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
      raise ValueError(f"{self.name}.decode takes the bytes of a file, got {type(data).__name__}.")
    try:
      return self._decode(bytes(data))
    except Exception as e:
      raise ValueError(f"{self.name}.decode could not decode {len(data)} bytes as {self.name}: {e}") from e


CODECS = {
    c.name: c for c in (
        Codec("jpeg", "quality", 1, 95, True, (10, 20, 30, 50, 75),
              "Pillow JPEG, 4:2:0 (as rajax.degrade.jpeg)", _jpeg_encode, _pil_decode),
        Codec("webp", "quality", 0, 100, True, (5, 25, 50, 75, 85),
              "Pillow lossy WebP, method 4", _webp_encode, _pil_decode),
        Codec("avif", "quality", 0, 100, True, (15, 30, 50, 65, 80),
              "Pillow AVIF (libavif + aom), 4:2:0, speed 6, one thread", _avif_encode, _pil_decode),
        Codec("hevc", "qp", 0, 50, False, (41, 37, 34, 31, 28),
              "HEVC intra in HEIF (x265 via pillow-heif) at BPG's QP, 4:2:0", _hevc_encode, _hevc_decode),
    )
}
NAMES = tuple(CODECS)


def get(name: str) -> Codec:
  """The codec called `name` (one of NAMES)."""
  if name not in CODECS:
    raise ValueError(f"Unknown codec {name!r}; one of {', '.join(NAMES)}.")
  return CODECS[name]
