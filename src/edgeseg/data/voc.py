"""PASCAL VOC 2012 class names and palette."""

import numpy as np

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
IGNORE_INDEX = 255
# Labels are uint8 everywhere (palette PNGs, masks) and IGNORE_INDEX means "ignore": 255 classes at most.
MAX_CLASSES = IGNORE_INDEX


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """Returns the VOC colour map as a (num_colors, 3) uint8 array (the bit-shift construction VOC uses)."""
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        label, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((label >> 0) & 1) << shift
            g |= ((label >> 1) & 1) << shift
            b |= ((label >> 2) & 1) << shift
            label >>= 3
        palette[index] = (r, g, b)
    return palette
