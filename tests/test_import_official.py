import numpy as np
import pytest
import torch

from edgeseg.data.datasets import voc
from edgeseg.data.voc import VOC_CLASSES
from edgeseg.errors import EdgesegError
from edgeseg.evaluation.evaluate import evaluate
from edgeseg.models import deeplabv3_mobilenet_v2
from edgeseg.runtimes.litert import LiteRTRuntime
from edgeseg.runtimes.torch import TorchRuntime
from edgeseg.zoo.build import create_model, load_official_weights, official_tflite
from edgeseg.zoo.official import state_dict_from_tflite


def test_weights_are_dequantized_with_their_own_scale(dm05_official):
    from edgeseg.tflite.reader import TFLiteFile

    tfl = TFLiteFile(dm05_official)
    stem = next(op for op in tfl.ops if op.type == "CONV_2D")
    weight, bias = tfl.tensors[stem.inputs[1]], tfl.tensors[stem.inputs[2]]
    state = state_dict_from_tflite(dm05_official)
    q = weight.data[3, 1, 2, 0].astype(np.float32)  # OHWI -> element (o=3, h=1, w=2, i=0)
    expected = (q - weight.zero_point[0]) * weight.scale[0]
    assert state["backbone.stem.conv.weight"][3, 0, 1, 2].item() == pytest.approx(expected, rel=1e-6)
    assert state["backbone.stem.conv.bias"][5].item() == pytest.approx(bias.data[5] * bias.scale[0], rel=1e-6)


def test_missing_or_extra_tensors_fail_loudly(dm05_official):
    wrong_width = deeplabv3_mobilenet_v2(width_mult=1.0, num_classes=21)
    with pytest.raises(EdgesegError, match="shape"):
        load_official_weights(wrong_width, dm05_official)

    class Extra(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = deeplabv3_mobilenet_v2(width_mult=0.5, num_classes=21)

    with pytest.raises(EdgesegError, match="missing"):
        load_official_weights(Extra(), dm05_official)


def test_pretrained_weights_are_cached_as_safetensors(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path))
    create_model("deeplabv3_mnv2_dm05_voc")
    cached = list(tmp_path.glob("*.safetensors"))
    assert len(cached) == 1
    # A second build reads the cache; the numbers are the same.
    a = create_model("deeplabv3_mnv2_dm05_voc").state_dict()
    b = state_dict_from_tflite(official_tflite("deeplabv3_mnv2_dm05_voc"))
    assert all(torch.equal(a[k], b[k]) for k in b)


# The required check: float import vs the official INT8 file on the shared VOC val subset (166 images).
# Pass bars from the core issue: agreement >= 98.5% / 99.0%, mIoU >= official - 0.3.
@pytest.mark.slow
@pytest.mark.parametrize(
    "name,min_agreement,official_miou",
    [("deeplabv3_mnv2_dm05_voc", 0.985, 63.95), ("deeplabv3_mnv2_dm10_voc", 0.990, 72.65)],
)
def test_float_import_agrees_with_the_official_tflite(voc_root, name, min_agreement, official_miou):
    dataset = voc(voc_root, "val")
    assert len(dataset) == 166
    official_preds, torch_preds = [], []
    official = evaluate(LiteRTRuntime(official_tflite(name), num_threads=2), dataset, VOC_CLASSES,
                        predictions=official_preds, progress=False)
    ours = evaluate(TorchRuntime(create_model(name), num_classes=21), dataset, VOC_CLASSES,
                    predictions=torch_preds, progress=False)
    agree = sum(int((a == b).sum()) for a, b in zip(official_preds, torch_preds))
    agreement = agree / sum(a.size for a in official_preds)
    print(f"{name}: agreement {100 * agreement:.2f}%, mIoU torch {100 * ours.miou:.2f}, "
          f"official {100 * official.miou:.2f}")
    assert agreement >= min_agreement
    assert round(100 * official.miou, 2) == official_miou  # the evaluation pipeline reproduces the reference
    assert 100 * ours.miou >= official_miou - 0.3
