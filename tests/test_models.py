import pytest
import torch

from edgeseg.models import deeplabv3_mobilenet_v2, make_divisible
from edgeseg.models.mobilenetv2 import ConvAct
from edgeseg.tflite.reader import TFLiteFile
from edgeseg.zoo.build import official_tflite
from edgeseg.zoo.official import layer_scope, torch_module_for


def test_make_divisible_follows_tf():
    assert make_divisible(12, 8) == 16
    assert make_divisible(32 * 0.75, 8) == 24
    assert make_divisible(12, 1) == 12
    assert make_divisible(3, 8) == 8  # min value is the divisor


@pytest.mark.parametrize("name,width", [("deeplabv3_mnv2_dm05_voc", 0.5), ("deeplabv3_mnv2_dm10_voc", 1.0)])
def test_every_conv_matches_the_official_graph(name, width):
    modules = dict(deeplabv3_mobilenet_v2(width_mult=width, num_classes=21).named_modules())
    official = TFLiteFile(official_tflite(name))
    seen = set()
    for op in official.ops:
        if op.type not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        weight = official.tensors[op.inputs[1]]
        module = torch_module_for(layer_scope(weight.name))
        conv = modules[module].conv
        out_ch, kh, kw, in_ch = weight.shape
        expected = (in_ch, 1, kh, kw) if op.type == "DEPTHWISE_CONV_2D" else (out_ch, in_ch, kh, kw)
        assert tuple(conv.weight.shape) == expected, module
        assert conv.stride == (op.options["strideH"], op.options["strideW"]), module
        assert conv.dilation == (op.options["dilationHFactor"], op.options["dilationWFactor"]), module
        seen.add(module)
    assert seen == {n for n, m in modules.items() if isinstance(m, ConvAct)}


def test_output_stride_16_and_any_class_count():
    model = deeplabv3_mobilenet_v2(width_mult=0.5, num_classes=3).eval()
    with torch.no_grad():
        x = torch.zeros(1, 3, 513, 513)
        assert model.forward_logits(x).shape == (1, 3, 33, 33)
        assert model(x).shape == (1, 3, 513, 513)
