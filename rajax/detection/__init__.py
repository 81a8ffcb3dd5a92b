"""Detection building blocks shared by detectors, the detection task and its metrics."""

from rajax.detection.detector import Detector, DetectorModel
from rajax.detection.types import BoxTargets, Detections

__all__ = ["BoxTargets", "Detections", "Detector", "DetectorModel"]
