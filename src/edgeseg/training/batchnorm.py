"""Batch norm put back into a model whose convs have it folded in, for training; folded out again to save.

The zoo weights carry batch norm folded into each conv (W_fold, b_fold). `insert_batchnorm` rescales every
conv's output channels to one row norm R (W_n = W_fold / s, s = |row| / R) and puts a BatchNorm after it whose
statistics are measured on training crops and whose affine undoes them: gamma = s * sqrt(var + eps),
beta = b_fold + s * mean. In eval mode BN(W_n x) == W_fold x + b_fold, so the network computes the same
function. `fold_batchnorm` turns it back into plain ConvAct layers (W = W_n * gamma / sqrt(var + eps),
b = beta - mean * that), the zoo architecture, so checkpoints and exports do not change. The final classifier
keeps no batch norm.

R sets how far SGD moves each channel: a step of lr on W_n moves the folded row by lr * s^2 times its
gradient. With training statistics the layer is scale invariant and R = sqrt(2) (He's norm) is the rate the
CamVid recipes were tuned at. With frozen statistics nothing renormalizes the channel: at sqrt(2) a trained
model's rows, far longer than a fresh network's, moved too far and fine-tunes at lr 1e-3 collapsed. Frozen
layers therefore put the rows at FROZEN_ROW_NORM and freeze the affine too, as torchvision's and Detectron2's
FrozenBatchNorm2d do: its scale and shift step in output units whatever R is (bench/frozen_bn_probe.py,
docs/training.md).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeseg.models.mobilenetv2 import ConvAct

ROW_NORM = math.sqrt(2.0)  # He: Var(w) = 2 / fan_in, so a row of fan_in weights has norm sqrt(2)
# With frozen statistics: steps (lr * s^2) 800x smaller than at sqrt(2); chosen by bench/frozen_bn_probe.py.
FROZEN_ROW_NORM = 40.0
EPS = 1e-3  # TF DeepLab's batch norm epsilon
MOMENTUM = 0.1  # running-statistics update per step when statistics train (PyTorch's default)
SKIP = ("head.classifier",)  # the logits layer: no batch norm, as in DeepLab


class FreezableBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that can be frozen: then it stays in eval mode whatever model.train() says, and its affine
    does not train (a fixed per-channel map, as torchvision's FrozenBatchNorm2d)."""

    def __init__(self, channels: int, *, frozen: bool) -> None:
        super().__init__(channels, eps=EPS, momentum=MOMENTUM)
        self.frozen = frozen
        self.weight.requires_grad_(not frozen)
        self.bias.requires_grad_(not frozen)

    def train(self, mode: bool = True) -> FreezableBatchNorm2d:
        return super().train(mode and not self.frozen)


class ConvBNAct(nn.Module):
    """Conv2d without bias, batch norm, optional activation: a ConvAct for training."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module, *, frozen: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, conv.groups, bias=False)
        self.bn = FreezableBatchNorm2d(conv.out_channels, frozen=frozen)
        self.act = act

    def folded(self) -> tuple[Tensor, Tensor]:
        """Returns (weight, bias) of the conv that computes conv + batch norm in eval mode."""
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        weight = self.conv.weight * scale.reshape(-1, 1, 1, 1)
        return weight, self.bn.bias - self.bn.running_mean * scale

    def forward(self, x: Tensor) -> Tensor:
        if self.bn.training:
            return self.act(self.bn(self.conv(x)))
        # With fixed statistics batch norm is a per-channel affine map: applied to the weights it is the same
        # function with the same gradients, and costs nothing per pixel.
        weight, bias = self.folded()
        c = self.conv
        return self.act(F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups))


def _convacts(model: nn.Module) -> list[tuple[str, ConvAct]]:
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, ConvAct) and not any(name == s or name.startswith(s + ".") for s in SKIP)]


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


@torch.no_grad()
def insert_batchnorm(model: nn.Module, batches: Iterable[Tensor] = (), *, frozen: bool = True) -> nn.Module:
    """Replaces, in place, every ConvAct except the classifier by a ConvBNAct computing the same function.

    Batch norm statistics are measured on `batches` (NCHW normalized pixels) as the model sees them;
    with none they start at mean 0, variance 1. `frozen` keeps the statistics fixed during training
    and the affine fixed, and puts the rows at FROZEN_ROW_NORM; otherwise training uses batch statistics and
    updates the running ones.
    """
    row_norm = FROZEN_ROW_NORM if frozen else ROW_NORM
    layers: list[tuple[ConvBNAct, Tensor]] = []
    for name, old in _convacts(model):
        weight = old.conv.weight.detach()
        bias = old.conv.bias.detach() if old.conv.bias is not None else torch.zeros(weight.shape[0])
        norm = weight.flatten(1).norm(dim=1).to(torch.float64)
        # A dead (all-zero) channel keeps scale 1: its output is 0 either way.
        scale = torch.where(norm > 0, norm / row_norm, torch.ones_like(norm))
        new = ConvBNAct(old.conv, old.act, frozen=frozen).to(weight.device)
        new.conv.weight.copy_((weight.double() / scale.reshape(-1, 1, 1, 1)).to(weight.dtype))
        new.bn.running_mean.zero_()
        new.bn.running_var.fill_(1.0)
        _set_affine(new.bn, scale, bias.double())
        _replace(model, name, new)
        layers.append((new, scale))
        new.train(model.training)

    sums: dict[int, list[Tensor]] = {}
    hooks = [layer.register_forward_hook(_stats_hook(sums, i)) for i, (layer, _) in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if sums:
        for i, (layer, scale) in enumerate(layers):
            count, total, squares = sums[i]
            mean = total / count
            var = (squares / count - mean**2).clamp_min(0.0)
            # The bias the layer had: beta with mean 0, variance 1.
            bias = layer.bn.bias.double()
            layer.bn.running_mean.copy_(mean)
            layer.bn.running_var.copy_(var)
            _set_affine(layer.bn, scale, bias + scale * mean)
    return model


def _set_affine(bn: nn.BatchNorm2d, scale: Tensor, beta: Tensor) -> None:
    # gamma / sqrt(var + eps) == scale: the normalization undone, the original channel scale restored.
    gamma = scale * torch.sqrt(bn.running_var.double() + bn.eps)
    bn.weight.copy_(gamma.to(bn.weight.dtype))
    bn.bias.copy_(beta.to(bn.bias.dtype))


def _stats_hook(sums: dict[int, list[Tensor]], index: int):
    def hook(module: ConvBNAct, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        # Eval mode never runs the bare conv (the affine is folded into its weights), so run it here.
        y = module.conv(inputs[0]).double()
        count = y.numel() // y.shape[1]
        total, squares = y.sum(dim=(0, 2, 3)), (y * y).sum(dim=(0, 2, 3))
        if index in sums:
            sums[index] = [sums[index][0] + count, sums[index][1] + total, sums[index][2] + squares]
        else:
            sums[index] = [count, total, squares]

    return hook


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Returns a copy of `model` with every ConvBNAct folded into a plain ConvAct (the zoo architecture)."""
    model = copy.deepcopy(model)
    for name, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, ConvBNAct)]:
        c = layer.conv
        plain = ConvAct(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], c.dilation[0], c.groups,
                        act=None)
        plain.act = layer.act
        weight, bias = layer.folded()
        plain.conv.weight.copy_(weight)
        plain.conv.bias.copy_(bias)
        plain.to(device=weight.device, memory_format=torch.contiguous_format)
        _replace(model, name, plain)
    return model
