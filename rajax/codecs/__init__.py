"""Standard image codecs with their real bit counts: JPEG, WebP, AVIF and HEVC intra (BPG's stand-in).

Coding for machines compares a processor + codec against the codec alone by rate (bits per pixel
of the real files) against recognition accuracy; NPP trains its pre-processor with the codec in the
loop. This package gives both uses one set of pinned, deterministic codecs:

  get(name) -> Codec            the codec record (rajax.codecs.formats): its quality axis `lo`..`hi`,
                                `higher_is_more_bits`, a default `sweep` of five qualities,
                                `normalise(q)` in [0, 1], `encode(img, q) -> bytes`, `decode(bytes)`;
  NAMES                         ("jpeg", "webp", "avif", "hevc");
  roundtrip(name, img, q)       -> (decoded uint8 [H, W, 3], bits int) on the host;
  roundtrip_batch(name, imgs, qualities, *, threads=None)
                                -> (decoded uint8 [N, H, W, 3], bits int64 [N]), images on host threads;
  bpp(bits, height, width)      bits per pixel;
  roundtrip_jax(name, x, quality, *, threads=None)
                                -> (x_hat float32 [N, H, W, 3], bpp float32 [N]) inside a jitted
                                program through jax.pure_callback, no gradient (rajax.codecs.device).

rajax.degrade.jpeg is the "jpeg" codec's round trip. The hevc codec's quality axis is BPG's QP
(lower = more bits); the others use their library's quality (higher = more bits).
"""

from rajax.codecs.batch import bpp, default_threads, roundtrip, roundtrip_batch
from rajax.codecs.device import quantize_uint8, roundtrip_jax
from rajax.codecs.formats import CODECS, NAMES, Codec, get

__all__ = ["CODECS", "NAMES", "Codec", "bpp", "default_threads", "get", "quantize_uint8", "roundtrip",
           "roundtrip_batch", "roundtrip_jax"]
