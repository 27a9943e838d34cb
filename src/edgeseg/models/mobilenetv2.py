"""MobileNetV2 backbone in DeepLab's form: TF channel rounding, output stride by dilation, BN folded.

The official checkpoints ship with batch norm folded into each conv's weights and bias, so every
conv here carries a bias and there is no BatchNorm layer. Fine-tuning this is DeepLab's
`fine_tune_batch_norm=False` (BN statistics frozen), its recommended setting for small batches.
"""

from __future__ import annotations

from torch import Tensor, nn

# (expansion t, channels c, repeats n, stride s), as in the MobileNetV2 paper and TF slim.
MOBILENET_V2_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int, min_value: int | None = None) -> int:
    """Returns `value` rounded to a multiple of `divisor`, never more than 10% below it (TF's rule)."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvAct(nn.Module):
    """Conv2d with bias (BN folded), then an optional activation. SAME padding for odd input sizes."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, dilation: int = 1,
        groups: int = 1, act: type[nn.Module] | None = nn.ReLU6,
    ) -> None:
        super().__init__()
        padding = dilation * (kernel - 1) // 2
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation, groups, bias=True)
        self.act = act() if act is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))


class InvertedResidual(nn.Module):
    """expand 1x1 (skipped when t == 1) -> depthwise 3x3 -> linear project 1x1, residual if shapes match."""

    def __init__(self, in_ch: int, out_ch: int, expanded: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.expand = ConvAct(in_ch, expanded) if expanded != in_ch else None
        self.depthwise = ConvAct(expanded, expanded, 3, stride, dilation, groups=expanded)
        self.project = ConvAct(expanded, out_ch, act=None)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.use_residual else y


class MobileNetV2(nn.Module):
    """MobileNetV2 features up to the last inverted residual (DeepLab's `layer_18`), no 1280 conv."""

    def __init__(self, width_mult: float = 1.0, output_stride: int = 16) -> None:
        super().__init__()
        # DeepLab rounds channels to multiples of 8 only at width 1.0 (feature_extractor._mobilenet_v2).
        divisor = 8 if width_mult == 1.0 else 1
        in_ch = make_divisible(32 * width_mult, divisor)
        self.stem = ConvAct(3, in_ch, 3, stride=2)
        blocks: list[InvertedResidual] = []
        current_stride, dilation = 2, 1
        for expansion, channels, repeats, stage_stride in MOBILENET_V2_STAGES:
            out_ch = make_divisible(channels * width_mult, divisor)
            for i in range(repeats):
                stride = stage_stride if i == 0 else 1
                block_dilation = dilation
                if stride > 1 and current_stride == output_stride:
                    # Past the target stride, the stride becomes dilation for the layers after this one.
                    dilation *= stride
                    stride = 1
                elif stride > 1:
                    current_stride *= stride
                expanded = in_ch if expansion == 1 else make_divisible(in_ch * expansion, 8)
                blocks.append(InvertedResidual(in_ch, out_ch, expanded, stride, block_dilation))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = in_ch

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.stem(x))
