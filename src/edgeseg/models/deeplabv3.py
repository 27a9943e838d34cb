"""DeepLabV3 with a MobileNetV2 backbone, as in the TF DeepLab mobilenetv2 checkpoints.

The head is DeepLab's MobileNet variant: a 1x1 branch (`aspp0`) and an image-pooling branch,
concatenated (pooling first), projected, then classified. No atrous ASPP branches, no decoder.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeseg.models.mobilenetv2 import ConvAct, MobileNetV2


class DeepLabHead(nn.Module):
    def __init__(self, in_ch: int, num_classes: int, depth: int = 256) -> None:
        super().__init__()
        self.aspp0 = ConvAct(in_ch, depth, act=nn.ReLU)
        self.image_pooling = ConvAct(in_ch, depth, act=nn.ReLU)
        self.projection = ConvAct(2 * depth, depth, act=nn.ReLU)
        self.classifier = ConvAct(depth, num_classes, act=None)

    def forward(self, features: Tensor) -> Tensor:
        size = features.shape[-2:]
        # A fixed-size average pool (not adaptive/mean) converts to AVERAGE_POOL_2D, as in the official file.
        pooled = self.image_pooling(F.avg_pool2d(features, kernel_size=size))
        # Upsample rather than expand: expand becomes a BROADCAST_TO that LiteRT rejects.
        pooled = F.interpolate(pooled, size=size, mode="bilinear", align_corners=True)
        x = torch.cat([pooled, self.aspp0(features)], dim=1)
        return self.classifier(self.projection(x))


ClassGroups = tuple[tuple[int, ...], ...]


def merge_classes(logits: Tensor, groups: ClassGroups) -> Tensor:
    """Returns, for each group of classifier rows, the maximum of their logits (dim 1): the argmax of the result
    is the group of the rows' argmax, so a model merging classes predicts exactly what its rows predict,
    remapped. Built from SPLIT, MAXIMUM and CONCATENATION, which LiteRT's quantizer quantizes (it leaves
    REDUCE_MAX in float) and both NPUs run (the VX delegate's list; Vela's SUPPORTED_OPS)."""
    rows = logits.split(1, dim=1)
    return torch.cat([functools.reduce(torch.maximum, [rows[row] for row in group]) for group in groups], dim=1)


class DeepLabV3(nn.Module):
    """Returns logits at the input resolution (bilinear, align_corners=True, as DeepLab resizes).

    With `class_groups` set, the classifier keeps the rows of the classes it was trained for, and each output
    class is the maximum of its group of rows, taken after upsampling (merge_classes): a fine-tune that merges
    VOC's classes into background and person starts exactly at the VOC model's predictions, remapped.
    """

    def __init__(self, backbone: MobileNetV2, head: DeepLabHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.class_groups: ClassGroups | None = None

    def forward_logits(self, x: Tensor) -> Tensor:
        """Returns the classifier's logits at output stride (33x33 for a 513x513 input)."""
        return self.head(self.backbone(x))

    def forward(self, x: Tensor) -> Tensor:
        logits = self.forward_logits(x)
        up = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return up if self.class_groups is None else merge_classes(up, self.class_groups)


def deeplabv3_mobilenet_v2(*, width_mult: float, num_classes: int, output_stride: int = 16) -> DeepLabV3:
    """Builds an untrained DeepLabV3-MobileNetV2 for any number of classes."""
    backbone = MobileNetV2(width_mult=width_mult, output_stride=output_stride)
    return DeepLabV3(backbone, DeepLabHead(backbone.out_channels, num_classes))


def deeplab_edgetpu_slim(*, num_classes: int, output_stride: int = 16) -> DeepLabV3:
    """Builds an untrained EdgeTPU-DeepLab-slim: MobileNet-EdgeTPU backbone, 128-channel head."""
    from edgeseg.models.mobilenet_edgetpu import MobileNetEdgeTPU

    backbone = MobileNetEdgeTPU(output_stride=output_stride)
    return DeepLabV3(backbone, DeepLabHead(backbone.out_channels, num_classes, depth=128))
