"""Semantic segmentation: segmenters as recognizers (rajax.segmentation.segmenter), their zoo
(rajax.segmentation.zoo) and the families it registers."""
