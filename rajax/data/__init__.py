"""Data: random-access sources, the grain pipelines that feed the trainer, dataset preparation."""

from rajax.data.classes import class_name, imagenet_classes, imagenet_wnids
from rajax.data.pipeline import (Degradation, bad_data_counts, center_crop, decode_image, eval_dataset,
                                 make_source, random_crop_flip, reset_bad_data_counts, resize_short_side,
                                 train_dataset)
from rajax.data.sources import DataError, SyntheticImages, tfds_source

__all__ = [
    "class_name", "imagenet_classes", "imagenet_wnids",
    "DataError", "Degradation", "SyntheticImages", "bad_data_counts", "center_crop", "decode_image",
    "eval_dataset", "make_source", "random_crop_flip", "reset_bad_data_counts", "resize_short_side",
    "tfds_source", "train_dataset",
]
