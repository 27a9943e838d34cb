"""MobileNet-EdgeTPU backbone as in TF DeepLab's EdgeTPU-DeepLab-slim (Cityscapes), BN folded.

The early stages use "fused" inverted residuals (one full 3x3 expansion conv instead of 1x1 + depthwise,
which suits edge accelerators); later stages are MobileNetV2-style. Activations are ReLU, not ReLU6.
The block list below is read off the official file layer by layer (`expanded_conv_<i>`): channels,
kernels, strides, and which blocks add their input. Past output stride 16 the stride turns into
dilation, as in MobileNetV2 here. The backbone ends with `Conv_1` (1x1 to 1280 channels).
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from edgeseg.models.mobilenetv2 import ConvAct


class BlockSpec(NamedTuple):
    kind: str  # "project": 1x1 only; "fused": 3x3 expand + 1x1 project; "ibn": 1x1 expand + depthwise + 1x1
    expanded: int
    out_ch: int
    kernel: int
    stride: int
    residual: bool


def _repeat(spec: BlockSpec, times: int) -> list[BlockSpec]:
    return [spec] * times


EDGETPU_SLIM_BLOCKS: tuple[BlockSpec, ...] = (
    BlockSpec("project", 24, 16, 1, 1, False),
    BlockSpec("fused", 128, 24, 3, 2, False),
    *_repeat(BlockSpec("fused", 96, 24, 3, 1, True), 3),
    BlockSpec("fused", 192, 40, 3, 2, False),
    *_repeat(BlockSpec("fused", 160, 40, 3, 1, True), 3),
    BlockSpec("ibn", 320, 72, 3, 2, False),
    *_repeat(BlockSpec("ibn", 288, 72, 3, 1, True), 3),
    BlockSpec("ibn", 576, 72, 3, 1, False),
    *_repeat(BlockSpec("ibn", 288, 72, 3, 1, True), 3),
    BlockSpec("ibn", 576, 120, 5, 2, False),
    *_repeat(BlockSpec("ibn", 480, 120, 5, 1, True), 3),
    BlockSpec("ibn", 960, 144, 3, 1, False),
)


class EdgeTPUBlock(nn.Module):
    """One `expanded_conv_<i>`: modules named expand / depthwise / project as the TF scopes are."""

    def __init__(self, spec: BlockSpec, in_ch: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.expand = self.depthwise = None
        if spec.kind == "fused":
            self.expand = ConvAct(in_ch, spec.expanded, spec.kernel, stride, dilation, act=nn.ReLU)
        elif spec.kind == "ibn":
            self.expand = ConvAct(in_ch, spec.expanded, act=nn.ReLU)
            self.depthwise = ConvAct(spec.expanded, spec.expanded, spec.kernel, stride, dilation,
                                     groups=spec.expanded, act=nn.ReLU)
        self.project = ConvAct(spec.expanded if spec.kind != "project" else in_ch, spec.out_ch, act=None)
        self.use_residual = spec.residual

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.depthwise(y) if self.depthwise is not None else y
        y = self.project(y)
        return x + y if self.use_residual else y


class MobileNetEdgeTPU(nn.Module):
    """Stem 3x3/2 -> blocks -> Conv_1 (1x1, 1280): features at the output stride (16: 33x33 for 513)."""

    def __init__(self, blocks: tuple[BlockSpec, ...] = EDGETPU_SLIM_BLOCKS, output_stride: int = 16,
                 stem_channels: int = 24, last_channels: int = 1280) -> None:
        super().__init__()
        self.stem = ConvAct(3, stem_channels, 3, stride=2, act=nn.ReLU)
        layers, in_ch, current_stride, dilation = [], stem_channels, 2, 1
        for spec in blocks:
            stride, block_dilation = spec.stride, dilation
            if stride > 1 and current_stride == output_stride:
                dilation *= stride  # past the target stride: dilate the layers after this one
                stride = 1
            elif stride > 1:
                current_stride *= stride
            layers.append(EdgeTPUBlock(spec, in_ch, stride, block_dilation))
            in_ch = spec.out_ch
        self.blocks = nn.Sequential(*layers)
        self.last = ConvAct(in_ch, last_channels, act=nn.ReLU)
        self.out_channels = last_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.last(self.blocks(self.stem(x)))
