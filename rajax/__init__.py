"""rajax: recognition-aware image processing in JAX/Flax.

Train a processing model P (super-resolution, denoising, JPEG deblocking, ...) with a frozen,
pretrained recognizer R as an extra loss, so that P's outputs stay faithful and are recognised
correctly, and measure how far that transfers to recognizers never seen in training.

    import rajax
    P = rajax.processor("srresnet", scale=4, blocks=5)
    R = rajax.recognizer("resnet18", weights="resnet18.msgpack")
"""

from rajax.models import Recognizer, processor, recognizer

__version__ = "0.1.0"
__all__ = ["Recognizer", "processor", "recognizer", "__version__"]
