"""Turn an official DeepLab TFLite file into a float PyTorch state dict.

Each conv or depthwise op's weight tensor is named after its TF scope (for example
`MobilenetV2/expanded_conv_3/expand/Conv2D_Fold`); that scope, not the op order, decides which
torch module receives it. The bias is the same op's third input. Weights are dequantized with their
own (per-tensor or per-channel) scale and zero point; int32 biases with their scale.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from edgeseg.errors import EdgesegError
from edgeseg.tflite.reader import TFLiteFile

_HEAD_SCOPES = {
    "aspp0": "head.aspp0",
    "image_pooling": "head.image_pooling",
    "concat_projection": "head.projection",
    "logits/semantic": "head.classifier",
}
_BLOCK = re.compile(r"expanded_conv(?:_(\d+))?/(expand|depthwise|project)$")


def torch_module_for(tf_scope: str, backbone_scope: str = "MobilenetV2") -> str:
    """Returns the torch module path for a TF layer scope, e.g. 'backbone.blocks.3.expand'.

    `backbone_scope` is the TF name of the backbone ('MobilenetV2', 'MobilenetEdgeTPU'); both name their
    stem `Conv`, their blocks `expanded_conv_<i>/{expand,depthwise,project}` and a final 1x1 `Conv_1`.
    """
    if tf_scope in _HEAD_SCOPES:
        return _HEAD_SCOPES[tf_scope]
    prefix = backbone_scope + "/"
    local = tf_scope[len(prefix):] if tf_scope.startswith(prefix) else None
    if local == "Conv":
        return "backbone.stem"
    if local == "Conv_1":
        return "backbone.last"
    match = _BLOCK.match(local or "")
    if match is None:
        raise EdgesegError(f"unexpected layer {tf_scope!r} in the official file")
    return f"backbone.blocks.{int(match.group(1) or 0)}.{match.group(2)}"


def layer_scope(weight_name: str) -> str:
    scope = weight_name.split(";")[0]
    return re.sub(r"/(Conv2D_Fold|depthwise_Fold|Conv2D|weights)$", "", scope)


def state_dict_from_tflite(path: str | Path, backbone_scope: str = "MobilenetV2") -> dict[str, torch.Tensor]:
    """Returns {torch name: float tensor} for every conv in the file (OIHW layout, BN folded)."""
    tfl = TFLiteFile(path)
    state: dict[str, torch.Tensor] = {}
    for op in tfl.ops:
        if op.type not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        weight, bias = tfl.tensors[op.inputs[1]], tfl.tensors[op.inputs[2]]
        module = torch_module_for(layer_scope(weight.name), backbone_scope)
        w = weight.dequantized()
        # TFLite: conv OHWI, depthwise 1HWC. torch: OIHW, depthwise C1HW.
        w = w.transpose(3, 0, 1, 2) if op.type == "DEPTHWISE_CONV_2D" else w.transpose(0, 3, 1, 2)
        if f"{module}.conv.weight" in state:
            raise EdgesegError(f"{path}: layer {module} appears twice")
        state[f"{module}.conv.weight"] = torch.from_numpy(np.ascontiguousarray(w))
        state[f"{module}.conv.bias"] = torch.from_numpy(bias.dequantized().astype(np.float32))
    return state
