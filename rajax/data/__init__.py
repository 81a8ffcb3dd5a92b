"""Data: random-access sources and the grain pipelines that feed the trainer."""

from rajax.data.pipeline import (Degradation, center_crop, decode_image, eval_dataset, make_source,
                                 random_crop_flip, resize_short_side, train_dataset)
from rajax.data.sources import DataError, SyntheticImages, tfds_source

__all__ = [
    "DataError", "Degradation", "SyntheticImages", "center_crop", "decode_image", "eval_dataset",
    "make_source", "random_crop_flip", "resize_short_side", "tfds_source", "train_dataset",
]
