"""A space-to-depth stem: the first 3x3 stride-2 conv, rewritten as an exact 2x2 stride-1 conv on packed pixels.

NPUs that store feature maps in channel bricks (the Ethos-U65 reads 16 channels at a time) run a 3-channel
first conv at a few percent of their MACs, and it is the most expensive layer of a 513x513 DeepLab on the
i.MX 93. The host instead packs each 2x2 pixel block into 12 channels, padded to 16
(`pipeline.pack_space_to_depth`), and the graph starts with a 2x2 VALID conv whose weights are the 3x3
kernel's taps moved to their block positions (the fourth row and column of the 2x2 blocks, and the 4 spare
channels, get zero weights). In float this is the same sum,
term by term, so the model's outputs do not change.

Geometry: the 3x3 conv with padding 1 and stride 2 reads input rows -1..2i+1 for output row i. Shifting the
image one pixel down and right on a canvas of the pad value (which is 0.0 after scaling, as the conv's
zero padding is) makes output i read canvas rows 2i..2i+2: blocks i and i+1 of the packed canvas.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeseg.pipeline import BLOCK, PACKED_CHANNELS


class SpaceToDepthConv(nn.Module):
    """The 2x2 VALID conv on packed input that equals `conv` (3x3, stride 2, padding 1) on the image."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.stride != (2, 2) or conv.padding != (1, 1) or conv.groups != 1 \
                or conv.dilation != (1, 1):
            raise ValueError(f"a space-to-depth stem needs a 3x3 stride-2 conv with padding 1, got {conv}")
        out_ch, in_ch = conv.out_channels, conv.in_channels
        weight = torch.zeros(out_ch, BLOCK, BLOCK, in_ch, BLOCK, BLOCK, dtype=conv.weight.dtype)
        for ky in range(3):
            for kx in range(3):
                # tap (ky, kx) reads canvas row 2i + ky: block i + ky // 2, row ky % 2 inside it
                weight[:, ky % 2, kx % 2, :, ky // 2, kx // 2] = conv.weight.detach()[:, :, ky, kx]
        weight = weight.reshape(out_ch, BLOCK * BLOCK * in_ch, BLOCK, BLOCK)
        spare = torch.zeros(out_ch, PACKED_CHANNELS - weight.shape[1], BLOCK, BLOCK, dtype=weight.dtype)
        self.weight = nn.Parameter(torch.cat([weight, spare], dim=1))  # the spare channels are ignored
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias)


def with_space_to_depth_stem(model: nn.Module) -> nn.Module:
    """Returns `model` with its backbone's stem conv replaced by a SpaceToDepthConv (in place)."""
    stem = getattr(getattr(model, "backbone", None), "stem", None)
    conv = getattr(stem, "conv", None)
    if not isinstance(conv, nn.Conv2d) or conv.in_channels != 3:
        raise ValueError("this model has no backbone.stem.conv taking 3 channels: no space-to-depth stem")
    stem.conv = SpaceToDepthConv(conv)
    return model
