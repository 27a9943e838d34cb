"""PyTorch models (needs the `torch` extra)."""

from edgeseg.models.deeplabv3 import DeepLabV3, deeplab_edgetpu_slim, deeplabv3_mobilenet_v2
from edgeseg.models.mobilenet_edgetpu import MobileNetEdgeTPU
from edgeseg.models.mobilenetv2 import MobileNetV2, make_divisible

__all__ = ["DeepLabV3", "MobileNetEdgeTPU", "MobileNetV2", "deeplab_edgetpu_slim", "deeplabv3_mobilenet_v2",
           "make_divisible"]
