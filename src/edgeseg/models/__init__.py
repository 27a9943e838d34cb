"""PyTorch models (needs the `torch` extra)."""

from edgeseg.models.deeplabv3 import DeepLabV3, deeplabv3_mobilenet_v2
from edgeseg.models.mobilenetv2 import MobileNetV2, make_divisible

__all__ = ["DeepLabV3", "MobileNetV2", "deeplabv3_mobilenet_v2", "make_divisible"]
