"""Count parameters and arithmetic operations of a torch segmentation model.

OPS convention (TF profiler style, as used for DeepLab's published 1.76B): 2 x multiply-accumulates
of every conv and depthwise conv, plus one op per bias add, residual add and average-pool add.
The final bilinear upsample to the input size and the argmax are counted separately (`postprocess_ops`):
they depend on how a deployment resizes, and published figures leave them out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from edgeseg.models.deeplabv3 import DeepLabHead
from edgeseg.pipeline import Size, input_hw

# Bilinear interpolation: 4 multiplies and 3 adds per output value; argmax: one compare per class.
_BILINEAR_OPS = 7


@dataclass(frozen=True)
class OpsCount:
    conv_macs: int
    bias_adds: int
    residual_adds: int
    pool_adds: int
    postprocess_ops: int

    @property
    def total(self) -> int:
        """Returns the network OPS: 2 x conv MACs + bias, residual and pooling adds."""
        return 2 * self.conv_macs + self.bias_adds + self.residual_adds + self.pool_adds

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def count_params(model: nn.Module) -> int:
    """Returns the number of parameters (batch norm is folded into the convs in edgeseg models)."""
    return sum(p.numel() for p in model.parameters())


def count_ops(model: nn.Module, input_size: Size = 513) -> OpsCount:
    """Returns the OPS of one forward pass at the input size (side or (height, width)), counted with hooks."""
    counts = {"conv_macs": 0, "bias_adds": 0, "residual_adds": 0, "pool_adds": 0}

    def conv_hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        kh, kw = module.kernel_size
        counts["conv_macs"] += output.numel() * (module.in_channels // module.groups) * kh * kw
        if module.bias is not None:
            counts["bias_adds"] += output.numel()

    def residual_hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        counts["residual_adds"] += output.numel()

    def head_hook(_module: DeepLabHead, inputs, _output) -> None:
        counts["pool_adds"] += inputs[0].numel()

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(conv_hook))
        elif getattr(module, "use_residual", False):  # any family's residual block adds its input
            hooks.append(module.register_forward_hook(residual_hook))
        elif isinstance(module, DeepLabHead):
            hooks.append(module.register_forward_hook(head_hook))
    try:
        with torch.no_grad():
            logits = model(torch.zeros(1, 3, *input_hw(input_size)))
    finally:
        for hook in hooks:
            hook.remove()
    postprocess = logits.numel() * _BILINEAR_OPS + logits.numel()
    return OpsCount(**counts, postprocess_ops=postprocess)
